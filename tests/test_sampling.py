"""Samplers against analytic truth: with the exact score of Gaussian-mixture data every sampler
must return the data's mean and covariance.

Tolerance. Errors are measured whitened by the true covariance C = L Lᵀ: the mean error
max_i |L⁻¹(x̄ − m)|_i and the covariance error max_ij |L⁻¹ Ĉ L⁻ᵀ − I|_ij. For 4,000 *exact* i.i.d.
draws of this mixture, over 300 seeds, these reached at most 0.049 and 0.080 (medians 0.016 and
0.026; the mean's standard error is 1/√4000 = 0.016). The samplers' discretisation bias at 500
steps is below that noise (measured: all samplers within the exact-draw range), so the tolerances
are 0.07 and 0.12, about 1.5× the worst exact draw: a wrong drift, noise scale, grid or a missing
denoising step gives errors of order 1 or more (the RVE's linear-in-t grid gives ~10⁴).
"""

from __future__ import annotations

import math

import pytest
import torch

from st_sweeps.errors import ConfigError
from st_sweeps.gaussian_mixture import GaussianMixture
from st_sweeps.sampling import (CountedScore, EulerMaruyamaSampler, ODESampler, PCSampler, Sampler, denoise_step, sample,
                                sample_ode, sample_pc, time_grid)
from st_sweeps.sde import ReciprocalVESDE, SubVPSDE, VESDE, VPSDE

N_SAMPLES = 4000
MEAN_TOL = 0.07
COV_TOL = 0.12
SDES = {"vp": VPSDE(), "ve": VESDE(sigma_min=0.01, sigma_max=50.0), "rve": ReciprocalVESDE()}


def _mixture() -> GaussianMixture:
    f64 = torch.float64
    return GaussianMixture(torch.tensor([0.3, 0.7], dtype=f64), torch.tensor([[1.0, -1.0], [-0.5, 0.8]], dtype=f64),
                           torch.tensor([0.5, 0.3], dtype=f64))


def _moments(mix: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    w, m, s = mix.weights, mix.means, mix.stds
    mean = (w[:, None] * m).sum(0)
    second = sum(w[k] * (s[k] ** 2 * torch.eye(m.shape[1], dtype=m.dtype) + torch.outer(m[k], m[k]))
                 for k in range(len(w)))
    return mean, second - torch.outer(mean, mean)


def _whitened_errors(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    chol = torch.linalg.cholesky(cov)
    e = torch.linalg.solve_triangular(chol, (x.mean(0) - mean)[:, None], upper=False)[:, 0]
    c = torch.cov(x.T)
    w = torch.linalg.solve_triangular(chol, torch.linalg.solve_triangular(chol, c, upper=False).T, upper=False)
    return float(e.abs().max()), float((w - torch.eye(len(mean), dtype=x.dtype)).abs().max())


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These loops run thousands of ops on tiny tensors: extra intra-op threads only add
    synchronisation (30x slower on a loaded 2-core machine). Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SAMPLERS = {
    "euler_maruyama": EulerMaruyamaSampler(n_steps=500),
    "pc": PCSampler(n_steps=500, predictor="reverse_diffusion", corrector="langevin", snr=0.16, n_corrector_steps=1),
    "ode": ODESampler(rtol=1e-5, atol=1e-5),
}


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_samples_match_data_moments(sde_name: str, sampler: str) -> None:
    mix, sde, cfg = _mixture(), SDES[sde_name], SAMPLERS[sampler]
    res = sample(cfg, mix.score_fn(sde), sde, (N_SAMPLES, 2), _gen(), dtype=torch.float64)
    mean_err, cov_err = _whitened_errors(res.x, *_moments(mix))
    assert mean_err < MEAN_TOL and cov_err < COV_TOL, (sde_name, sampler, mean_err, cov_err, res.nfe)
    if cfg.expected_nfe() is not None:
        assert res.nfe == cfg.expected_nfe()
    else:  # adaptive: reported, and at least one DOPRI step (7 stages incl. the initial-step probe) + denoise
        print(f"ODE sampler NFE ({sde_name}): {res.nfe}")
        assert 8 <= res.nfe < 2000


@pytest.mark.slow
def test_per_example_langevin_step_is_biased_by_about_4_over_d() -> None:
    """Why ``langevin_norm="batch"`` is the default: an x-dependent step (per-example norms) inflates
    the variance by ≈ 4/D (measured 4.1/D for D = 16…1024). Pooled variance of N(0, 0.25 I), D = 64:
    its standard error is √(2/(n·D)) ≈ 0.6 %, the predicted excess 6.4 %."""
    d, n = 64, 1000
    mix = GaussianMixture.gaussian(torch.zeros(d, dtype=torch.float64), 0.5)
    sde = SDES["ve"]
    ratio = {}
    for norm in ("batch", "example"):
        res = sample_pc(mix.score_fn(sde), sde, (n, d), n_steps=300, predictor="reverse_diffusion",
                        corrector="langevin", snr=0.16, generator=_gen(), dtype=torch.float64, langevin_norm=norm)
        ratio[norm] = float(res.x.pow(2).mean() / 0.25)
    assert abs(ratio["batch"] - 1) < 0.05, ratio  # ULA + 300-step bias ≈ 2 %
    assert 2 / d < ratio["example"] - ratio["batch"] < 8 / d, ratio


@pytest.mark.slow
def test_rve_linear_grid_fails_reciprocal_grid_works() -> None:
    mix, sde = _mixture(), SDES["rve"]
    errs = {}
    for spacing in ("linear", "reciprocal"):
        res = sample_pc(mix.score_fn(sde), sde, (N_SAMPLES, 2), n_steps=500, predictor="reverse_diffusion",
                        corrector="none", generator=_gen(), dtype=torch.float64, spacing=spacing)
        errs[spacing] = _whitened_errors(res.x, *_moments(mix))
    assert errs["reciprocal"][0] < MEAN_TOL and errs["reciprocal"][1] < COV_TOL
    assert errs["linear"][1] > 100  # the last step jumps from σ ≈ σ_max to σ_min: samples stay at scale σ_max


def test_rve_grid_fraction_near_sigma_max() -> None:
    sde = ReciprocalVESDE(sigma_min=1e-3, sigma_max=50.0, t_sigma_min=1e-5)
    near_max = {}
    for spacing in ("linear", "reciprocal"):
        sigma = sde.std(time_grid(sde, 1000, 1e-5, spacing=spacing))
        near_max[spacing] = float((sigma > 0.9 * sde.sigma_max).double().mean())
    # linear in t: σ(t) > 0.9 σ_max for every t > ~1e-3, i.e. 99.9 % of the points
    assert near_max["linear"] > 0.99
    # linear in 1/t is uniform in log σ: the share is log(1/0.9)/log(σ_max/σ_min) ≈ 1 %
    assert near_max["reciprocal"] < 0.02
    log_sigma = torch.log(sde.std(time_grid(sde, 1000, 1e-5)))
    steps = log_sigma[:-1] - log_sigma[1:]
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-6)


def test_time_grid_endpoints_and_spacing() -> None:
    vp = VPSDE()
    g = time_grid(vp, 10, 1e-3)
    assert g.dtype == torch.float64 and g.shape == (11,)
    assert g[0] == 1.0 and g[-1] == 1e-3 and torch.all(g[:-1] > g[1:])
    assert torch.allclose(g[:-1] - g[1:], torch.full((10,), (1 - 1e-3) / 10, dtype=torch.float64))
    assert time_grid(ReciprocalVESDE(), 10, 1e-5)[1] == pytest.approx(1 / (1 + (1e5 - 1) / 10))
    assert time_grid(VPSDE(T=0.5), 4, 1e-3)[0] == 0.5


@pytest.mark.parametrize("predictor,corrector,n_corr,denoise", [
    ("reverse_diffusion", "langevin", 1, True),
    ("reverse_diffusion", "langevin", 2, True),
    ("euler_maruyama", "none", 0, False),
    ("none", "langevin", 3, True),
    ("euler_maruyama", "langevin", 0, True),
])
def test_pc_nfe_is_exact(predictor: str, corrector: str, n_corr: int, denoise: bool) -> None:
    mix, sde = _mixture(), VPSDE()
    calls = []
    score = mix.score_fn(sde)

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        return score(x, t)

    cfg = PCSampler(n_steps=7, predictor=predictor, corrector=corrector, n_corrector_steps=n_corr, denoise=denoise)
    res = sample(cfg, counted, sde, (5, 2), _gen())
    predicted = 7 * (int(predictor != "none") + (n_corr if corrector != "none" else 0)) + int(denoise)
    assert res.nfe == len(calls) == predicted == cfg.expected_nfe()
    if predictor != "none" and corrector != "none" and n_corr == 1:
        assert res.nfe == 7 * (1 + 1) + 1  # the brief's n_steps·(1 + n_corrector) + denoise


def test_ode_nfe_counts_every_call() -> None:
    mix, sde = _mixture(), VESDE()
    calls = []
    score = mix.score_fn(sde)

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(float(t[0]))
        return score(x, t)

    res = sample_ode(counted, sde, (64, 2), eps=1e-5, rtol=1e-4, atol=1e-4, denoise=True, generator=_gen())
    assert res.nfe == len(calls) > 1
    assert calls[-1] == pytest.approx(1e-5)  # the denoising call at eps
    assert max(calls) == pytest.approx(sde.T)


@pytest.mark.parametrize("cfg", [
    PCSampler(n_steps=20, predictor="reverse_diffusion", corrector="langevin", n_corrector_steps=1),
    EulerMaruyamaSampler(n_steps=20),
    ODESampler(rtol=1e-3, atol=1e-3),
], ids=["pc", "em", "ode"])
def test_fixed_generator_is_deterministic(cfg: Sampler) -> None:
    mix, sde = _mixture(), VESDE()
    a = sample(cfg, mix.score_fn(sde), sde, (32, 2), _gen(3)).x
    b = sample(cfg, mix.score_fn(sde), sde, (32, 2), _gen(3)).x
    c = sample(cfg, mix.score_fn(sde), sde, (32, 2), _gen(4)).x
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_samplers_build_no_autograd_graph() -> None:
    w = torch.nn.Parameter(torch.ones(()))
    sde = VPSDE()

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -w * x

    for cfg in (PCSampler(n_steps=3), ODESampler(rtol=1e-2, atol=1e-2)):
        assert not sample(cfg, score, sde, (4, 2), _gen()).x.requires_grad


def test_prior_sample_for_short_T() -> None:
    """An exact p_T sampler (here: data pushed through the SDE) replaces N(0, prior_std²)."""
    mix = _mixture()
    sde = VPSDE(T=0.3)
    t_end = torch.tensor([sde.T], dtype=torch.float64)
    used = []

    def prior(n: int, generator: torch.Generator) -> torch.Tensor:
        used.append(n)
        x0 = mix.sample(n, generator)
        return sde.perturb(x0, t_end.expand(n), torch.randn(x0.shape, generator=generator, dtype=x0.dtype))

    res = sample_pc(mix.score_fn(sde), sde, (N_SAMPLES, 2), n_steps=150, predictor="euler_maruyama",
                    corrector="none", generator=_gen(), dtype=torch.float64, prior_sample=prior)
    assert used == [N_SAMPLES]
    mean_err, cov_err = _whitened_errors(res.x, *_moments(mix))
    assert mean_err < MEAN_TOL and cov_err < COV_TOL


def test_denoise_is_tweedie() -> None:
    """(x + σ² s(x))/μ at eps for N(m, s²) data is m + (x − μ m) μ s²/(μ² s² + σ²), for each SDE."""
    m, s = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.7
    mix = GaussianMixture.gaussian(m, s)
    x = torch.randn(6, 2, generator=_gen(), dtype=torch.float64)
    eps = 0.3
    for sde in (VPSDE(), SubVPSDE(), VESDE(), ReciprocalVESDE()):
        out = denoise_step(CountedScore(mix.score_fn(sde)), sde, x, eps)
        t = torch.tensor([eps], dtype=torch.float64)
        mu, sig = float(sde.mean_scale(t)), float(sde.std(t))
        expected = m + (x - mu * m) * mu * s ** 2 / (mu ** 2 * s ** 2 + sig ** 2)
        assert torch.allclose(out, expected, atol=1e-12), type(sde).__name__


@pytest.mark.parametrize("cls,field,value", [
    (PCSampler, "predictor", "heun"), (PCSampler, "corrector", "ald"), (PCSampler, "n_steps", 0),
    (PCSampler, "n_corrector_steps", -1), (PCSampler, "snr", 0.0), (PCSampler, "eps", 0.0),
    (PCSampler, "langevin_norm", "max"), (PCSampler, "denoise", "yes"), (EulerMaruyamaSampler, "n_steps", 0),
    (ODESampler, "rtol", -1.0), (ODESampler, "atol", 0.0), (ODESampler, "eps", 0.0),
])
def test_bad_config_names_the_field(cls: type, field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        cls(**{field: value})
    assert info.value.field == field


def test_config_loader_and_pc_without_steps() -> None:
    with pytest.raises(ConfigError) as info:
        Sampler.registry.build({"name": "pc", "predictor": "heun"}, "sampler")
    assert info.value.field == "sampler.predictor" and "reverse_diffusion" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Sampler.registry.build({"name": "ddim"}, "sampler")
    assert info.value.field == "sampler.name" and "euler_maruyama" in str(info.value)
    with pytest.raises(ConfigError) as info:
        PCSampler(predictor="none", corrector="none")
    assert info.value.field == "predictor"
    with pytest.raises(ConfigError) as info:  # eps must lie below the SDE's T
        sample(PCSampler(eps=0.5), lambda x, t: x, VPSDE(T=0.4), (2, 2), _gen())
    assert info.value.field == "eps"
    assert math.isclose(Sampler.registry.build({"name": "pc", "snr": "0.17"}, "sampler").snr, 0.17)
