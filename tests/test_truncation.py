"""τ priors and t samplers against their distributions; soft truncation reaches every SDE."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, stats

from st_sweeps.config import load_dataclass, to_dict
from st_sweeps.errors import ConfigError
from st_sweeps.objectives import DSM
from st_sweeps.sde import ReciprocalVESDE, VESDE, VPSDE, SubVPSDE
from st_sweeps.truncation import (MAX_POWER_LAW_K, FixedPrior, ImportanceSampler, PowerLawPrior, ReciprocalSampler,
                                  TauPrior, TimeSampler, Truncation, UniformSampler)
from st_sweeps.weighting import ImportanceLikelihoodWeighting

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(), "rve": ReciprocalVESDE()}
EPS = 1e-5
# KS tests: samples from a fixed generator, so a p-value is a deterministic number. A threshold of
# 1e-3 would wrongly fail a correct sampler one time in a thousand seeds; the negative controls
# below show that the same test rejects a wrong distribution with p far below it.
P_MIN = 1e-3


def _f64(x: float | list[float]) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


# --------------------------------------------------------------------------------------- τ priors
@pytest.mark.parametrize("T", [1.0, 0.5])
@pytest.mark.parametrize("k", [0.0, 0.5, 1.0, 1.5, 2.0, 5.0])
def test_power_law_samples_pass_a_ks_test(k: float, T: float) -> None:
    prior = PowerLawPrior(k)
    gen = torch.Generator().manual_seed(int(10 * k) + int(100 * T))
    taus = [prior.sample(EPS, T, gen) for _ in range(1000)]
    assert min(taus) >= EPS and max(taus) <= T
    p = stats.kstest(taus, lambda x: prior.cdf(_f64(x), EPS, T).numpy()).pvalue
    assert p > P_MIN


def test_power_law_ks_test_rejects_the_wrong_k() -> None:
    gen = torch.Generator().manual_seed(0)
    taus = [PowerLawPrior(1.0).sample(EPS, 1.0, gen) for _ in range(1000)]
    assert stats.kstest(taus, lambda x: PowerLawPrior(1.3).cdf(_f64(x), EPS, 1.0).numpy()).pvalue < 1e-6


@pytest.mark.parametrize("k", [0.0, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("T", [1.0, 0.3])
def test_power_law_cdf_is_the_normalised_integral_of_tau_pow_minus_k(k: float, T: float) -> None:
    """F(τ) = ∫_ε^τ s^{−k} ds / ∫_ε^T s^{−k} ds, by quadrature (in log τ, where the integrand is smooth)."""
    def mass(hi: float) -> float:
        return integrate.quad(lambda s: math.exp((1 - k) * s), math.log(EPS), math.log(hi), epsabs=0, epsrel=1e-12)[0]

    prior = PowerLawPrior(k)
    for tau in (2e-5, 1e-3, 0.05, 0.29):
        assert float(prior.cdf(_f64([tau]), EPS, T)) == pytest.approx(mass(tau) / mass(T), rel=1e-9)


def test_power_law_matches_the_papers_closed_forms_for_T_1() -> None:
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(PowerLawPrior(1.0).icdf(u, EPS, 1.0), EPS ** (1 - u), rtol=1e-12, atol=0)
    k = 2.5
    expected = EPS * (1 - u * (1 - EPS ** (k - 1))) ** (-1 / (k - 1))
    torch.testing.assert_close(PowerLawPrior(k).icdf(u, EPS, 1.0), expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("k", [0.0, 0.3, 1.0 - 1e-9, 1.0, 1.0 + 1e-9, 1.7, 2.0, 5.0, 50.0])
@pytest.mark.parametrize("T", [1.0, 0.5])
def test_icdf_and_cdf_are_inverses(k: float, T: float) -> None:
    prior = PowerLawPrior(k)
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(prior.cdf(prior.icdf(u, EPS, T), EPS, T), u, rtol=0, atol=1e-9)
    tau = torch.logspace(math.log10(EPS), math.log10(T), 101, dtype=torch.float64)
    back = prior.icdf(prior.cdf(tau, EPS, T), EPS, T)
    keep = prior.cdf(tau, EPS, T) < 1 - 1e-6  # where F saturates at 1 (large k) τ is not recoverable
    torch.testing.assert_close(back[keep], tau[keep], rtol=1e-6, atol=0)


def test_k_near_one_is_continuous() -> None:
    """No 0/0 at k = 1: neighbours within 1e-9 give the log-uniform values to ~1e-8."""
    u = torch.linspace(0, 1, 51, dtype=torch.float64)
    ref = PowerLawPrior(1.0).icdf(u, EPS, 1.0)
    for k in (1 - 1e-9, 1 + 1e-9, 1 - 1e-14, 1 + 1e-14):
        torch.testing.assert_close(PowerLawPrior(k).icdf(u, EPS, 1.0), ref, rtol=1e-7, atol=0)


@pytest.mark.parametrize("k", [100.0, 1e3, MAX_POWER_LAW_K])
def test_large_k_concentrates_at_eps(k: float) -> None:
    """P(τ > ε(1 + δ)) = F-tail ≈ (1 + δ)^{1−k}: for k ≥ 100 and δ = 0.1 that is < 1e-4; also no
    NaN or inf at u = 1 where exp((1−k) log(T/ε)) underflows."""
    prior = PowerLawPrior(k)
    u = torch.cat([torch.linspace(0, 1 - 1e-6, 1000, dtype=torch.float64), _f64([1.0])])
    tau = prior.icdf(u, EPS, 1.0)
    assert torch.all(torch.isfinite(tau)) and float(tau[-1]) == pytest.approx(1.0)
    assert float(tau[:-1].max()) < EPS * (1 + 0.2)
    gen = torch.Generator().manual_seed(0)
    taus = torch.tensor([prior.sample(EPS, 1.0, gen) for _ in range(200)])
    assert float(taus.max()) < EPS * 1.1
    assert float(prior.cdf(_f64([EPS * 1.1]), EPS, 1.0)) == pytest.approx(1.0, abs=1e-4)


def test_fixed_prior_is_eps() -> None:
    gen = torch.Generator().manual_seed(0)
    assert all(FixedPrior().sample(1e-3, 1.0, gen) == pytest.approx(1e-3) for _ in range(5))
    torch.testing.assert_close(FixedPrior().cdf(_f64([1e-4, 1e-3, 0.5]), 1e-3, 1.0), _f64([0.0, 1.0, 1.0]))


def test_sample_uses_only_the_generator() -> None:
    prior = PowerLawPrior(2.0)
    a = [prior.sample(EPS, 1.0, torch.Generator().manual_seed(7)) for _ in range(2)]
    torch.manual_seed(123)  # the global RNG plays no part
    b = prior.sample(EPS, 1.0, torch.Generator().manual_seed(7))
    assert a[0] == a[1] == b


@pytest.mark.parametrize("k", [-0.5, MAX_POWER_LAW_K * 2, float("nan"), float("inf")])
def test_bad_k_names_the_field_and_range(k: float) -> None:
    with pytest.raises(ConfigError) as err:
        load_dataclass(Truncation, {"prior": {"name": "power_law", "k": k}})
    assert err.value.field == "prior.k"
    assert "[0.0, 10000.0]" in str(err.value)


def test_truncation_config() -> None:
    cfg = load_dataclass(Truncation, {"eps": "1e-3", "prior": {"name": "power_law", "k": 2}})
    assert cfg == Truncation(1e-3, PowerLawPrior(2.0))
    assert load_dataclass(Truncation, to_dict(cfg)) == cfg
    assert load_dataclass(Truncation, {}) == Truncation(1e-5, FixedPrior())
    assert load_dataclass(Truncation, {"prior": "fixed"}).prior == FixedPrior()
    for bad in (0.0, -1e-5):
        with pytest.raises(ConfigError) as err:
            load_dataclass(Truncation, {"eps": bad})
        assert err.value.field == "eps"
    with pytest.raises(ConfigError) as err:
        load_dataclass(Truncation, {"prior": {"name": "powerlaw"}})
    assert err.value.field == "prior.name" and "power_law" in str(err.value) and "fixed" in str(err.value)
    with pytest.raises(ConfigError) as err:  # ε must lie below the SDE's T
        Truncation(eps=0.6).sample_tau(VPSDE(T=0.5), torch.Generator())
    assert err.value.field == "eps"
    assert sorted(TauPrior.registry.names()) == ["fixed", "power_law"]


# --------------------------------------------------------------------------------------- t samplers
def _importance_cdf(sde, tau: float):  # noqa: ANN001, ANN202
    lam = lambda t: sde.neg_log_snr(_f64(t)).numpy()  # noqa: E731
    lo, hi = lam([tau])[0], lam([sde.T])[0]
    return lambda t: (lam(t) - lo) / (hi - lo)


@pytest.mark.parametrize("tau", [EPS, 0.05])
@pytest.mark.parametrize("name", list(SDES))
def test_importance_sampler_matches_g2_over_sigma2(name: str, tau: float) -> None:
    """KS against F(t) = (λ(t) − λ(τ))/Z; 1/inv_density equals (g²/σ²)/Z with Z = ∫_τ^T g²/σ² dt
    by quadrature (independent of neg_log_snr), to 1e-6 relative."""
    sde = SDES[name]
    gen = torch.Generator().manual_seed(3)
    t, inv_p = ImportanceSampler().sample(sde, tau, 2000, gen, dtype=torch.float64)
    assert t.dtype == inv_p.dtype == torch.float64 and t.shape == (2000,)
    assert float(t.min()) >= tau and float(t.max()) <= sde.T
    assert stats.kstest(t.numpy(), _importance_cdf(sde, tau)).pvalue > P_MIN
    rate = lambda s: float(sde.g2(_f64([s])) / sde.std(_f64([s])) ** 2)  # noqa: E731
    # integrate in log t: the rate varies over decades near τ = 1e-5
    z = integrate.quad(lambda u: rate(math.exp(u)) * math.exp(u), math.log(tau), math.log(sde.T),
                       epsabs=0, epsrel=1e-10, limit=200)[0]
    p = sde.g2(t) / sde.std(t) ** 2 / z
    torch.testing.assert_close(inv_p * p, torch.ones_like(p), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["vp", "subvp", "rve"])
def test_importance_ks_rejects_uniform_times(name: str) -> None:
    sde = SDES[name]
    t, _ = UniformSampler().sample(sde, EPS, 2000, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert stats.kstest(t.numpy(), _importance_cdf(sde, EPS)).pvalue < 1e-6


def test_importance_sampling_is_uniform_for_ve() -> None:
    """For VE, g²/σ² = 2 log(σ_max/σ_min) is constant: importance sampling is uniform in t."""
    sde, tau = SDES["ve"], 1e-3
    t, inv_p = ImportanceSampler().sample(sde, tau, 100, torch.Generator().manual_seed(0), dtype=torch.float64)
    u, inv_u = UniformSampler().sample(sde, tau, 100, torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(t, u, rtol=1e-10, atol=0)
    torch.testing.assert_close(inv_p, inv_u, rtol=1e-10, atol=0)


@pytest.mark.parametrize("sampler", [UniformSampler(), ImportanceSampler(), ReciprocalSampler()])
@pytest.mark.parametrize("name", list(SDES))
def test_inv_density_integrates_to_the_interval_length(name: str, sampler: TimeSampler) -> None:
    """E_p[1/p(t)] = ∫_τ^T dt = T − τ: the Monte-Carlo mean of inv_density within 4 standard errors."""
    sde, tau = SDES[name], 1e-3
    t, inv_p = sampler.sample(sde, tau, 20_000, torch.Generator().manual_seed(5), dtype=torch.float64)
    assert float(t.min()) >= tau and float(t.max()) <= sde.T
    se = float(inv_p.std()) / math.sqrt(len(inv_p))
    assert abs(float(inv_p.mean()) - (sde.T - tau)) < 4 * se + 1e-12


def test_uniform_and_reciprocal_distributions() -> None:
    sde, tau = VPSDE(T=0.5), 1e-3
    gen = torch.Generator().manual_seed(6)
    t, inv_p = UniformSampler().sample(sde, tau, 2000, gen, dtype=torch.float64)
    assert stats.kstest(t.numpy(), stats.uniform(tau, 0.5 - tau).cdf).pvalue > P_MIN
    torch.testing.assert_close(inv_p, torch.full_like(t, 0.5 - tau))
    t, inv_p = ReciprocalSampler().sample(sde, tau, 2000, gen, dtype=torch.float64)
    assert stats.kstest(1 / t.numpy(), stats.uniform(2.0, 1 / tau - 2.0).cdf).pvalue > P_MIN
    torch.testing.assert_close(inv_p, t ** 2 * (1 / tau - 1 / 0.5))


def test_sampler_dtype_device_and_bad_tau() -> None:
    t, inv_p = UniformSampler().sample(VPSDE(), 0.1, 7, torch.Generator().manual_seed(0))
    assert t.dtype == inv_p.dtype == torch.float32 and t.shape == inv_p.shape == (7,)
    for bad in (0.0, -1.0, 1.5):
        with pytest.raises(ConfigError) as err:
            ImportanceSampler().sample(VPSDE(), bad, 3, torch.Generator())
        assert err.value.field == "tau"


# --------------------------------------------------------------------------------------- soft truncation end to end
@pytest.mark.parametrize("weighting", ["variance", "likelihood_is"])
@pytest.mark.parametrize("name", list(SDES))
def test_soft_truncation_reaches_every_sde(name: str, weighting: str) -> None:
    """Through the objective, as the trainer calls it: each step draws τ from a power law and every
    t the score function sees lies in [τ, T]. With k = 0.5 most τ exceed 0.05, where an objective
    that ignored τ (the official code's VE/RVE path) would put some of 64 t's below τ; k = 2 gives
    the small τ's of the authors' VE/RVE setting.
    """
    sde = SDES[name]
    objective = DSM(weighting=ImportanceLikelihoodWeighting()) if weighting == "likelihood_is" else DSM()
    seen: list[torch.Tensor] = []

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        return torch.zeros_like(x)

    gen = torch.Generator().manual_seed(11)
    for k in (0.5, 2.0):
        truncation = Truncation(eps=EPS, prior=PowerLawPrior(k))
        taus, mins = [], []
        for _ in range(20):
            tau = truncation.sample_tau(sde, gen)
            objective.loss(sde, score_fn, torch.zeros(64, 2), tau, gen)
            taus.append(tau)
            mins.append(float(seen[-1].min()))
            assert mins[-1] >= tau * (1 - 1e-6) and float(seen[-1].max()) <= sde.T * (1 + 1e-6)
        assert len(set(taus)) == len(taus)  # a new τ each step
        if k == 0.5:
            assert max(mins) > 0.3  # the t's follow τ up
        else:
            assert min(taus) < 1e-3
