"""Likelihoods against analytic truth: Gaussian mixtures (exact score and density at every t),
box-uniform data (8-bit offsets with a known answer), and the variational bound's algebra.

Tolerances: ODE log-likelihoods within 0.01 bits/dim of the exact marginal at ε with the SDE's
own prior (the prior mismatch at T is part of that), within 1e-3 bits/dim with the exact marginal
at T as prior (then only the solver's error is left: rtol = atol = 1e-5). Monte-Carlo statements
(Hutchinson means, NELBO bounds) are checked at 4 standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from st_sweeps.config import load_dataclass
from st_sweeps.errors import ConfigError
from st_sweeps.gaussian_mixture import GaussianMixture
from st_sweeps.likelihood import (
    LikelihoodConfig,
    NelboResult,
    NllResult,
    bin_offset_bits,
    dequantize,
    divergence_fn,
    importance_times,
    nelbo_bits_per_dim,
    nll_bits_per_dim,
    ode_log_likelihood,
    residual_nats,
    resolve_config,
    sample_probes,
    to_bits_per_dim,
)
from st_sweeps.sde import SDE, ReciprocalVESDE, SubVPSDE, VESDE, VPSDE

SDES = {
    "vp": VPSDE(),
    "subvp": SubVPSDE(),
    "ve": VESDE(sigma_min=0.01, sigma_max=50.0),
    "rve": ReciprocalVESDE(sigma_min=1e-3, sigma_max=50.0, t_sigma_min=1e-5),
}
EPS = 1e-5
F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: thread start-up costs more than it saves (and the CI box has 2 cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bpd(nats: torch.Tensor, d: int) -> torch.Tensor:
    return nats / (d * math.log(2))


def _mixture(event: tuple[int, ...], seed: int = 1) -> GaussianMixture:
    g = _gen(seed)
    means = 0.5 * torch.randn((3, *event), generator=g, dtype=F64)
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=F64), means, torch.tensor([0.15, 0.3, 0.5], dtype=F64))


def _gaussian(event: tuple[int, ...], seed: int = 2) -> GaussianMixture:
    return GaussianMixture.gaussian(0.3 * torch.randn(event, generator=_gen(seed), dtype=F64), 0.4)


def _at(sde: SDE, t: float, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tt = torch.full((x.shape[0],), t, dtype=x.dtype)
    return sde.mean_scale(tt), sde.std(tt)


def _marginal_prior(data: GaussianMixture, sde: SDE):
    """The exact p_T of the data (instead of π): isolates the solver's and the divergence's error."""
    return lambda x: data.log_prob(x, *_at(sde, sde.T, x))


def _noisy(data: GaussianMixture, sde: SDE, n: int, g: torch.Generator) -> torch.Tensor:
    x0 = data.sample(n, g)
    return sde.perturb(x0, torch.full((n,), EPS, dtype=F64), torch.randn(x0.shape, generator=g, dtype=F64))


# --- divergence --------------------------------------------------------------------------------
def test_divergence_of_a_linear_map() -> None:
    g = _gen()
    a = torch.randn(5, 5, generator=g, dtype=F64)
    fn = lambda x: x @ a.T  # noqa: E731
    x = torch.randn(3, 5, generator=g, dtype=F64)
    out, div = divergence_fn(fn, x, trace="exact")
    assert torch.allclose(out, fn(x)) and torch.allclose(div, torch.full((3,), float(a.trace()), dtype=F64))
    # Hutchinson: unbiased; with Rademacher probes the diagonal part is exact (v_i² = 1)
    diag = torch.diag(torch.diagonal(a))
    probes = sample_probes(x.shape, "hutchinson_rademacher", 2, g, x)
    _, div_diag = divergence_fn(lambda x: x @ diag.T, x, trace="hutchinson_rademacher", probes=probes)
    assert torch.allclose(div_diag, torch.full((3,), float(a.trace()), dtype=F64))
    for trace in ["hutchinson_rademacher", "hutchinson_gaussian"]:
        probes = sample_probes((20000, 5), trace, 1, g, x)
        _, est = divergence_fn(fn, torch.zeros(20000, 5, dtype=F64), trace=trace, probes=probes)
        se = float(est.std()) / math.sqrt(est.numel())
        assert abs(float(est.mean()) - float(a.trace())) < 4 * se


def test_probes_are_rademacher_or_gaussian() -> None:
    like = torch.zeros(1, dtype=torch.float32)
    r = sample_probes((4, 3), "hutchinson_rademacher", 2, _gen(), like)
    assert r.shape == (2, 4, 3) and r.dtype == torch.float32 and set(r.unique().tolist()) == {-1.0, 1.0}
    assert sample_probes((4, 3), "exact", 1, _gen(), like) is None
    with pytest.raises(ConfigError, match="trace"):
        sample_probes((4, 3), "hutch", 1, _gen(), like)


# --- ODE log-likelihood against the exact marginal ----------------------------------------------
CASES = {  # data, event shape, trace
    "gaussian_image": (_gaussian, (1, 8, 8), "hutchinson_rademacher"),  # Jacobian ∝ I: Rademacher is exact
    "mixture_2d": (_mixture, (2,), "exact"),
    "mixture_image": (_mixture, (1, 4, 4), "exact"),
}


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("case", ["gaussian_image", "mixture_2d",
                                  pytest.param("mixture_image", marks=pytest.mark.slow)])
def test_ode_log_likelihood_equals_exact_marginal(sde_name: str, case: str) -> None:
    sde = SDES[sde_name]
    make, event, trace = CASES[case]
    data = make(event)
    g = _gen(3)
    x = _noisy(data, sde, 6, g)
    exact = data.log_prob(x, *_at(sde, EPS, x))
    d = x[0].numel()
    logp, x_T, nfe = ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, trace=trace, generator=g)
    assert logp.shape == (6,) and x_T.shape == x.shape and nfe > 0
    assert _bpd(logp - exact, d).abs().max() < 0.01
    # with the exact p_T as prior only the integration error remains
    logp_T, _, _ = ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, trace=trace, generator=g,
                                      prior_logp=_marginal_prior(data, sde))
    assert _bpd(logp_T - exact, d).abs().max() < 1e-3


@pytest.mark.parametrize("trace", ["hutchinson_rademacher", "hutchinson_gaussian"])
def test_hutchinson_is_unbiased_against_the_exact_trace(trace: str) -> None:
    sde, data = SDES["vp"], _mixture((2,))
    g = _gen(4)
    x = _noisy(data, sde, 256, g)
    exact, _, _ = ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, trace="exact")
    est, _, _ = ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, trace=trace, n_probes=2, generator=g)
    diff = est - exact
    se = float(diff.std()) / math.sqrt(diff.numel())
    assert abs(float(diff.mean())) < 4 * se + 1e-4
    assert float(diff.abs().max()) > 0  # the estimator is really random here (non-diagonal Jacobian)


def test_dtype_and_float64_state() -> None:
    sde, data = SDES["vp"], _gaussian((1, 4, 4))
    g = _gen(5)
    x64 = _noisy(data, sde, 4, g)
    x32 = x64.float()
    score32 = lambda x, t: data.score(x, *(v.float() for v in (sde.mean_scale(t), sde.std(t)))).float()  # noqa: E731
    lp32, xT32, _ = ode_log_likelihood(score32, sde, x32, eps=EPS, generator=_gen(0))
    lp64, xT64, _ = ode_log_likelihood(score32, sde, x32, eps=EPS, generator=_gen(0), ode_float64=True)
    assert lp32.dtype == torch.float32 and xT32.dtype == torch.float32 and lp64.dtype == F64
    exact = data.log_prob(x64, *_at(sde, EPS, x64))
    assert _bpd(lp32.double() - exact, 16).abs().max() < 0.01
    assert _bpd(lp64 - exact, 16).abs().max() < 0.01


def test_probes_are_fixed_per_solve_and_seeded() -> None:
    sde, data = SDES["ve"], _mixture((2,))
    x = _noisy(data, sde, 8, _gen(6))
    a, _, _ = ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, generator=_gen(7))
    b, _, _ = ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, generator=_gen(7))
    probes = sample_probes(x.shape, "hutchinson_rademacher", 1, _gen(7), x)
    c, _, _ = ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, probes=probes)
    assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(ConfigError, match="probes"):
        ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, trace="exact", probes=probes)
    with pytest.raises(ConfigError, match="eps"):
        ode_log_likelihood(data.score_fn(sde), sde, x, eps=2.0, generator=_gen(7))


# --- residual term --------------------------------------------------------------------------------
def test_residual_is_decoder_nll_minus_log_q() -> None:
    """R̂ = −log N(x0; (x_ε + σ²s)/μ, (σ/μ)² I) + log N(x_ε; μ x0, σ² I), by torch.distributions."""
    sde = VPSDE()
    eps = 0.05  # a visible μ < 1
    data = _mixture((3,))
    g = _gen(8)
    x0 = data.sample(5, g)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    mu, sigma = _at(sde, eps, x0)
    x_eps = mu[:, None] * x0 + sigma[:, None] * z
    s = data.score_fn(sde)(x_eps, torch.full((5,), eps, dtype=F64))
    dec = torch.distributions.Normal((x_eps + sigma[:, None] ** 2 * s) / mu[:, None], (sigma / mu)[:, None])
    q = torch.distributions.Normal(mu[:, None] * x0, sigma[:, None])
    expected = -dec.log_prob(x0).sum(1) + q.log_prob(x_eps).sum(1)
    assert torch.allclose(residual_nats(data.score_fn(sde), sde, x0, z, eps), expected, atol=1e-10)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_nll_protocols_on_continuous_data(sde_name: str) -> None:
    """With the exact score at small ε all three protocols give −log p_0(x0) (here p_ε ≈ p_0): on
    average within 0.01 bits/dim; per example within 0.05 (R̂_ε is a one-sample estimate, and VE's
    σ(ε) ≈ σ_min = 0.01 smooths p_0 visibly)."""
    sde, data = SDES[sde_name], _mixture((2,))
    g = _gen(9)
    x0 = data.sample(16, g)
    exact_bpd = _bpd(-data.log_prob(x0), 2)
    res = nll_bits_per_dim(data.score_fn(sde), sde, x0, eps=EPS, discrete=False, centered=False, generator=g,
                           n_repeats=2, trace="exact")
    assert res.with_residual.shape == (2, 16) and res.n_solves == 4 and res.n_examples == 16
    for v in (res.with_residual, res.score_sde):
        assert abs(float((v - exact_bpd).mean())) < 0.01 and float((v - exact_bpd).abs().max()) < 0.05
    # settings from a LikelihoodConfig (as st_sweeps.evaluate passes them) or as keywords: the same
    by_config = nll_bits_per_dim(data.score_fn(sde), sde, x0, LikelihoodConfig(eps=EPS, trace="exact"),
                                 discrete=False, centered=False, generator=_gen(21))
    by_keywords = nll_bits_per_dim(data.score_fn(sde), sde, x0, eps=EPS, trace="exact", discrete=False,
                                   centered=False, generator=_gen(21))
    assert torch.equal(by_config.with_residual, by_keywords.with_residual)
    m = res.as_metrics()
    assert abs(m["eval/nll_bpd"] - float(exact_bpd.mean())) < 0.01
    assert m["eval/nfe_nll"] == res.nfe > 0


# --- bits/dim offsets and dequantization ------------------------------------------------------------
def test_offsets() -> None:
    assert bin_offset_bits(True, False) == 8 and bin_offset_bits(True, True) == 7 and bin_offset_bits(False, True) == 0
    # the uniform density on [0, 1]^D (log p = 0) is 8 bits/dim; on [−1, 1]^D it is 2^{−D}: 1 + 7
    d = 12
    assert to_bits_per_dim(torch.zeros(1), d, discrete=True, centered=False).item() == pytest.approx(8.0)
    assert to_bits_per_dim(torch.full((1,), d * math.log(2)), d, discrete=True, centered=True).item() == pytest.approx(8.0)
    assert to_bits_per_dim(torch.full((1,), d * math.log(2)), d, discrete=False, centered=True).item() == pytest.approx(1.0)


@pytest.mark.parametrize("centered", [False, True])
def test_dequantization_stays_in_its_bin(centered: bool) -> None:
    k = torch.arange(256, dtype=F64).repeat(40).reshape(-1, 1, 16, 16)
    x = 2 * k / 255 - 1 if centered else k / 255
    y = dequantize(x, centered=centered, generator=_gen(10))
    y01 = (y + 1) / 2 if centered else y
    assert torch.all(y01 >= k / 256) and torch.all(y01 < (k + 1) / 256)
    u = y01 * 256 - k  # the noise itself: uniform on [0, 1)
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    with pytest.raises(ValueError, match="8-bit"):
        dequantize(y, centered=centered, generator=_gen(10))  # already dequantized


def _box_score(sde: SDE, lo: float, hi: float):
    """Exact score of Uniform[lo, hi]^D pushed through the kernel: per dim
    p_t(x) ∝ Φ((x − μ lo)/σ) − Φ((x − μ hi)/σ)."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mu = sde.mean_scale(t).reshape(-1, *[1] * (x.ndim - 1))
        sig = sde.std(t).reshape(-1, *[1] * (x.ndim - 1))
        ua, ub = (x - mu * lo) / sig, (x - mu * hi) / sig
        mass = torch.where(ub > 0, torch.special.ndtr(-ub) - torch.special.ndtr(-ua),
                           torch.special.ndtr(ua) - torch.special.ndtr(ub))
        dens = torch.exp(-0.5 * ua ** 2) - torch.exp(-0.5 * ub ** 2)
        return dens / (math.sqrt(2 * math.pi) * sig * mass)

    return fn


@pytest.mark.parametrize("centered", [False, True])
def test_uniform_8bit_data_is_8_bits_per_dim(centered: bool) -> None:
    """Data uniform over the 256 bins: the dequantized density is uniform on the box, so every
    protocol must give 8 bits/dim in [0, 1] and in [−1, 1] coordinates (offsets 8 and 7)."""
    sde = VPSDE()
    g = _gen(11)
    k = torch.randint(10, 246, (4, 1, 4, 4), generator=g).double()  # away from the box's edges
    x0 = 2 * k / 255 - 1 if centered else k / 255
    lo, hi = (-1.0, 1.0) if centered else (0.0, 1.0)
    res = nll_bits_per_dim(_box_score(sde, lo, hi), sde, x0, eps=EPS, discrete=True, centered=centered,
                           generator=g, n_repeats=2)
    for v in (res.with_residual, res.without_residual, res.score_sde):
        assert (v - 8.0).abs().max() < 0.01
    nelbo = nelbo_bits_per_dim(_box_score(sde, lo, hi), sde, x0.repeat(500, 1, 1, 1), eps=EPS, discrete=True,
                               centered=centered, generator=g)
    assert abs(nelbo.bpd_with_residual - 8.0) < 4 * nelbo.stderr + 0.01


# --- NELBO --------------------------------------------------------------------------------------------
def test_importance_times_density() -> None:
    sde = VPSDE()
    t, inv_p = importance_times(sde, 1e-3, 200_000, _gen(12), torch.zeros(1, dtype=F64))
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1.0
    # E_p[1/p] over [ε, T] = T − ε
    assert float(inv_p.mean()) == pytest.approx(1.0 - 1e-3, rel=0.01)


def _gap(result_rows: torch.Tensor, truth_bpd: torch.Tensor) -> tuple[float, float]:
    diff = (result_rows[0] - truth_bpd).double()
    return float(diff.mean()), float(diff.std()) / math.sqrt(diff.numel())


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_nelbo_is_an_upper_bound_that_tightens_as_eps_shrinks(sde_name: str) -> None:
    """Exact score on Gaussian data (D = 16): paired differences NELBO − exact NLL over 50,000
    draws, checked at 4 standard errors (about 0.03 bits/dim at ε = 1e-3, 0.004-0.01 at the large ε).
    With the exact score the bound is tight as ε → 0 (the model's path posterior is the forward
    one); the decoder step from a large ε loosens it."""
    sde = SDES[sde_name]
    data = GaussianMixture.gaussian(0.3 * torch.randn((1, 4, 4), generator=_gen(13), dtype=F64), 0.1)
    g = _gen(14)
    n, d = 50_000, 16
    x0 = data.sample(n, g)
    truth = _bpd(-data.log_prob(x0), d)
    small, large = 1e-3, (0.1 if sde_name == "vp" else 0.3)
    r_small = nelbo_bits_per_dim(data.score_fn(sde), sde, x0, eps=small, discrete=False, centered=False, generator=g)
    r_large = nelbo_bits_per_dim(data.score_fn(sde), sde, x0, eps=large, discrete=False, centered=False, generator=g)
    gap_small, se_small = _gap(r_small.with_residual, truth)
    gap_large, se_large = _gap(r_large.with_residual, truth)
    assert gap_small > -4 * se_small and gap_large > -4 * se_large  # upper bounds
    assert abs(gap_small) < 4 * se_small + 0.01  # tight for the exact score
    assert gap_large - gap_small > 4 * math.hypot(se_small, se_large)  # and it tightens as ε shrinks
    # without the residual it bounds E_q[−log p_ε(x_ε)] instead
    tt = torch.full((n,), large, dtype=F64)
    x_eps = sde.perturb(x0, tt, torch.randn(x0.shape, generator=g, dtype=F64))
    truth_eps = _bpd(-data.log_prob(x_eps, sde.mean_scale(tt), sde.std(tt)), d)
    gap_eps, se_eps = _gap(r_large.without_residual, truth_eps)
    assert gap_eps > -4 * se_eps and abs(gap_eps) < 4 * se_eps + 0.01


def test_nelbo_with_a_sampled_prior_term_agrees_with_the_closed_form() -> None:
    sde, data = SDES["vp"], _gaussian((1, 4, 4))
    x0 = data.sample(20_000, _gen(15))
    closed = nelbo_bits_per_dim(data.score_fn(sde), sde, x0, eps=1e-3, discrete=False, centered=False,
                                generator=_gen(16))
    sampled = nelbo_bits_per_dim(data.score_fn(sde), sde, x0, eps=1e-3, discrete=False, centered=False,
                                 generator=_gen(16), prior_logp=sde.prior_logp)
    diff = sampled.with_residual - closed.with_residual
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(diff.numel())


# --- results and config ---------------------------------------------------------------------------------
def test_results_merge_and_metric_keys() -> None:
    a = NllResult(torch.ones(2, 3), torch.zeros(2, 3), None, nfe=10, n_solves=2)
    b = NllResult(torch.full((2, 2), 3.0), torch.zeros(2, 2), None, nfe=20, n_solves=2)
    m = NllResult.concat([a, b]).as_metrics()
    assert set(m) == {"eval/nll_bpd", "eval/nll_bpd_no_residual", "eval/nll_bpd_score_sde", "eval/nll_bpd_stderr",
                      "eval/nll_bpd_mc_stderr", "eval/nll_bpd_no_residual_stderr", "eval/nll_bpd_score_sde_stderr",
                      "eval/nll_bpd_probe_stderr", "eval/nfe_nll", "eval/nfe_nll_per_solve", "eval/nll_examples"}
    assert m["eval/nll_bpd"] == pytest.approx(9 / 5) and m["eval/nfe_nll"] == 30 and m["eval/nll_examples"] == 5
    assert math.isnan(m["eval/nll_bpd_score_sde"]) and m["eval/nll_bpd_mc_stderr"] == 0.0
    assert math.isnan(m["eval/nll_bpd_probe_stderr"])  # no per-example probe spread (one probe, scipy_exact)
    # with one: the error of a mean of R·B independent estimates, sqrt(Σ se²) / (R·B)
    se = torch.tensor([[0.3, 0.4, 1.2], [0.0, 0.5, 0.1]])
    probed = NllResult(torch.ones(2, 3), torch.zeros(2, 3), None, nfe=10, n_solves=2, probe_stderr=se)
    assert probed.as_metrics()["eval/nll_bpd_probe_stderr"] == pytest.approx(
        math.sqrt(0.09 + 0.16 + 1.44 + 0.0 + 0.25 + 0.01) / 6)
    n = NelboResult.concat([NelboResult(torch.ones(1, 2), torch.zeros(1, 2))]).as_metrics()
    assert {"eval/nelbo_bpd", "eval/nelbo_bpd_no_residual", "eval/nelbo_bpd_stderr"} <= set(n)
    assert math.isnan(n["eval/nelbo_bpd_mc_stderr"])  # one repeat: no Monte-Carlo spread to report


def test_config_validation_names_fields() -> None:
    cfg = load_dataclass(LikelihoodConfig, {"trace": "exact", "n_repeats": 5})
    assert resolve_config(cfg, {"eps": 1e-3}) == LikelihoodConfig(eps=1e-3, trace="exact", n_repeats=5)
    with pytest.raises(ConfigError, match="not a likelihood setting"):
        resolve_config(cfg, {"epsilon": 1e-3})
    for bad, field in [({"trace": "hutch"}, "likelihood.trace"), ({"eps": 0.0}, "likelihood.eps"),
                       ({"trace": "exact", "n_probes": 4}, "likelihood.n_probes"),
                       ({"n_repeats": 0}, "likelihood.n_repeats"), ({"rtol": -1.0}, "likelihood.rtol")]:
        with pytest.raises(ConfigError) as info:
            load_dataclass(LikelihoodConfig, bad, "likelihood")
        assert info.value.field == field
