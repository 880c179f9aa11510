"""The four forward SDEs against their own definitions: simulated paths, inverses, derivatives."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from st_sweeps.config import load_dataclass
from st_sweeps.errors import ConfigError
from st_sweeps.sde import SDE, ReciprocalVESDE, VESDE, VPSDE, SubVPSDE

SDES = {
    "vp": VPSDE(),
    "subvp": SubVPSDE(),
    "ve": VESDE(sigma_min=0.01, sigma_max=50.0),
    "rve": ReciprocalVESDE(sigma_min=1e-3, sigma_max=50.0, t_sigma_min=1e-5),
}
NAMES = list(SDES)
CHECK_TIMES = [0.05, 0.2, 0.5, 1.0]


@dataclass(frozen=True)
class _Holder:
    sde: SDE = field(default_factory=VPSDE)


def _time_grid(sde: SDE) -> torch.Tensor:
    """Steps of 1e-3, refined log-spaced below 1e-2 (down to 1e-7): the RVE's σ moves only at small
    t, where its g² is huge. The check times are grid points."""
    lin = torch.linspace(0, sde.T, 1001, dtype=torch.float64)
    geo = torch.logspace(-7, -2, 200, dtype=torch.float64)
    return torch.unique(torch.cat([lin, geo, torch.tensor(CHECK_TIMES, dtype=torch.float64)]))  # sorted


def _euler_maruyama(sde: SDE, x0: torch.Tensor, paths: int, gen: torch.Generator) -> dict[float, torch.Tensor]:
    """Euler–Maruyama for dx = a(t) x dt + g(t) dw, coefficients at mid-step, on ``_time_grid``:
    x_{k+1} = m_k x_k + s_k ξ_k with m_k = 1 + a_k dt_k, s_k = g_k √dt_k. The recursion is linear,
    so between check times it is evaluated unrolled, x_n = (Π m) x_i + Σ_k (Π_{j>k} m_j) s_k ξ_k,
    with the noise sums as one matrix product per chunk of steps (same random variable, much
    faster than a Python loop over steps). Returns the paths [paths, D] at each check time."""
    grid = _time_grid(sde)
    mid = (grid[:-1] + grid[1:]) / 2
    dt = grid[1:] - grid[:-1]
    log_m = torch.log1p(sde.drift_coef(mid) * dt)  # [S]
    s = sde.diffusion(mid) * dt.sqrt()  # [S]
    x = x0.expand(paths, -1).clone()
    if isinstance(sde, VESDE):  # the VE kernel std is σ(t) itself: the process starts at x0 + σ_min z
        x = x + sde.sigma_min * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    stops = [int(torch.nonzero((grid - tc).abs() < 1e-12)[0]) for tc in CHECK_TIMES]
    out, start = {}, 0
    for tc, stop in zip(CHECK_TIMES, stops):
        seg = slice(start, stop)  # steps start .. stop-1 take x from grid[start] to grid[stop]
        tail = torch.flip(torch.cumsum(torch.flip(log_m[seg], [0]), 0), [0])  # Σ_{j>=k} log m_j
        w = torch.exp(tail - log_m[seg]) * s[seg]  # Π_{j>k} m_j · s_k, [S_seg]
        noise_sum = torch.zeros(x.numel(), dtype=torch.float64)
        for c in range(0, stop - start, 250):
            xi = torch.randn(min(250, stop - start - c), x.numel(), generator=gen)  # float32: half the cost
            noise_sum += (w[c:c + 250].float() @ xi).double()
        x = torch.exp(tail[0]) * x + noise_sum.reshape(x.shape)
        out[tc], start = x.clone(), stop
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_euler_maruyama_matches_the_perturbation_kernel(name: str) -> None:
    """Simulated paths of the SDE from a fixed x0 have mean μ(t) x0 and variance σ(t)² at several t.

    20,000 paths × 4 coordinates. Tolerances: each coordinate's mean within 4 standard errors
    σ/√20000 plus 0.5% of |μ x0| (the O(dt) bias of the Euler drift); the pooled variance within
    4·√(2/80000) = 2% relative plus 0.5% (Euler's stationary-variance bias ≈ β dt/4 for VP).
    """
    sde = SDES[name]
    gen = torch.Generator().manual_seed(1)
    paths = 20_000
    x0 = torch.tensor([-2.0, -0.5, 0.7, 3.0], dtype=torch.float64)
    checked = _euler_maruyama(sde, x0, paths, gen)
    for tc, xs in checked.items():
        t = torch.tensor([tc], dtype=torch.float64)
        mu, sigma = float(sde.mean_scale(t)), float(sde.std(t))
        mean_err = (xs.mean(0) - mu * x0).abs()
        se = sigma / math.sqrt(paths)
        assert torch.all(mean_err < 4 * se + 5e-3 * abs(mu) * x0.abs()), (tc, mean_err, se)
        var_ratio = float(((xs - mu * x0) ** 2).mean()) / sigma ** 2
        assert abs(var_ratio - 1) < 4 * math.sqrt(2 / xs.numel()) + 5e-3, (tc, var_ratio)


def test_euler_maruyama_helper_detects_a_wrong_diffusion() -> None:
    """The simulation has power: a VP SDE whose g² is 10% too large fails the variance check."""

    class LoudVP(VPSDE):
        def g2(self, t: torch.Tensor) -> torch.Tensor:
            return 1.1 * super().g2(t)

    sde = LoudVP()
    xs = _euler_maruyama(sde, torch.zeros(4, dtype=torch.float64), 5_000, torch.Generator().manual_seed(2))[0.5]
    var_ratio = float((xs ** 2).mean()) / float(sde.std(torch.tensor([0.5], dtype=torch.float64))) ** 2
    assert var_ratio - 1 > 4 * math.sqrt(2 / xs.numel()) + 5e-3


@pytest.mark.parametrize("name", NAMES)
def test_neg_log_snr_is_log_sigma2_over_mu2_and_inverts(name: str) -> None:
    sde = SDES[name]
    t = torch.logspace(-5, 0, 200, dtype=torch.float64) * sde.T
    lam = sde.neg_log_snr(t)
    direct = torch.log(sde.std(t) ** 2 / sde.mean_scale(t) ** 2)
    torch.testing.assert_close(lam, direct, rtol=1e-9, atol=1e-9)
    assert torch.all(lam[1:] > lam[:-1])  # increasing: the inverse exists
    torch.testing.assert_close(sde.time_from_neg_log_snr(lam), t, rtol=1e-8, atol=0)
    torch.testing.assert_close(sde.snr(t), sde.mean_scale(t) ** 2 / sde.std(t) ** 2, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_g2_over_sigma2_is_the_derivative_of_neg_log_snr(name: str) -> None:
    """The identity behind importance sampling: g²/σ² = d/dt log(σ²/μ²) (autograd, float64)."""
    sde = SDES[name]
    t = (torch.logspace(-5, 0, 50, dtype=torch.float64) * sde.T).requires_grad_()
    (grad,) = torch.autograd.grad(sde.neg_log_snr(t).sum(), t)
    torch.testing.assert_close(sde.g2(t) / sde.std(t) ** 2, grad, rtol=1e-8, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_g2_is_the_variance_growth_rate(name: str) -> None:
    """For a linear SDE, d/dt σ² = 2 a(t) σ² + g² (the kernel's variance ODE), by autograd."""
    sde = SDES[name]
    t = (torch.linspace(0.01, 1.0, 50, dtype=torch.float64) * sde.T).requires_grad_()
    var = sde.std(t) ** 2
    (dvar,) = torch.autograd.grad(var.sum(), t)
    torch.testing.assert_close(dvar, 2 * sde.drift_coef(t) * var + sde.g2(t), rtol=1e-8, atol=1e-10)
    log_mu = torch.log(sde.mean_scale(t))
    if log_mu.requires_grad:  # d/dt log μ = a(t)
        (dlogmu,) = torch.autograd.grad(log_mu.sum(), t)
        torch.testing.assert_close(dlogmu, sde.drift_coef(t), rtol=1e-8, atol=1e-12)
    else:  # VE, RVE: μ ≡ 1 and no drift
        assert torch.all(log_mu == 0) and torch.all(sde.drift_coef(t) == 0)


@pytest.mark.parametrize("name", NAMES)
def test_prior_logp_matches_torch_distributions(name: str) -> None:
    sde = SDES[name]
    gen = torch.Generator().manual_seed(0)
    x = sde.prior_sample((5, 3, 4, 4), gen, dtype=torch.float64)
    scale = torch.tensor(sde.prior_std, dtype=torch.float64)
    expected = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), scale).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(sde.prior_logp(x), expected, rtol=1e-10, atol=1e-8)
    big = sde.prior_sample((20_000, 2), gen, dtype=torch.float64)
    assert abs(float(big.std()) / sde.prior_std - 1) < 0.02  # SE of a std estimate ≈ 1/√(2N) = 0.005


@pytest.mark.parametrize("name", NAMES)
def test_reverse_and_probability_flow_drifts(name: str) -> None:
    sde = SDES[name]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    score = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    t = torch.linspace(0.1, 1.0, 6, dtype=torch.float64)
    f = sde.drift_coef(t)[:, None] * x
    torch.testing.assert_close(sde.drift(x, t), f)
    torch.testing.assert_close(sde.reverse_drift(x, t, score), f - sde.g2(t)[:, None] * score)
    torch.testing.assert_close(sde.probability_flow_drift(x, t, score), f - 0.5 * sde.g2(t)[:, None] * score)
    torch.testing.assert_close(sde.diffusion(t) ** 2, sde.g2(t))
    z = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(sde.perturb(x, t, z), sde.mean_scale(t)[:, None] * x + sde.std(t)[:, None] * z)


def test_known_closed_forms() -> None:
    t = torch.tensor([0.3], dtype=torch.float64)
    vp = SDES["vp"]
    b = 0.1 * 0.3 + 0.5 * 19.9 * 0.09
    torch.testing.assert_close(vp.mean_scale(t), torch.tensor([math.exp(-b / 2)], dtype=torch.float64))
    torch.testing.assert_close(vp.std(t) ** 2, torch.tensor([1 - math.exp(-b)], dtype=torch.float64))
    ve = SDES["ve"]
    torch.testing.assert_close(ve.std(t), torch.tensor([0.01 * 5000 ** 0.3], dtype=torch.float64))
    rve = SDES["rve"]
    one = torch.tensor([1.0, 1e-5], dtype=torch.float64)
    torch.testing.assert_close(rve.std(one), torch.tensor([50.0, 1e-3], dtype=torch.float64))


@pytest.mark.parametrize("name, field, value", [
    ("vp", "beta_min", -0.1), ("vp", "beta_max", 0.05), ("vp", "T", 0.0),
    ("subvp", "beta_min", 0.0), ("ve", "sigma_min", 0.0), ("ve", "sigma_max", 0.001),
    ("rve", "t_sigma_min", 1.5), ("rve", "sigma_max", 1e-4), ("rve", "T", -1.0),
])
def test_bad_parameters_name_the_field(name: str, field: str, value: float) -> None:
    with pytest.raises(ConfigError) as err:
        SDE.registry.build({"name": name, field: value}, "sde")
    assert err.value.field == f"sde.{field}"


def test_check_time_range() -> None:
    sde = VPSDE(T=0.5)
    sde.check_time_range(1e-5)
    for bad in (0.0, 0.5, 0.7):
        with pytest.raises(ConfigError) as err:
            sde.check_time_range(bad, "truncation.eps")
        assert err.value.field == "truncation.eps"


def test_unknown_sde_lists_the_names() -> None:
    with pytest.raises(ConfigError) as err:
        load_dataclass(_Holder, {"sde": {"name": "vpp"}})
    assert err.value.field == "sde.name"
    assert all(n in str(err.value) for n in NAMES)
