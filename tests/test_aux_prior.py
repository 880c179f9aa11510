"""Auxiliary terminal priors: fitted moments, mixture likelihood, the standard prior, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from st_sweeps.errors import ConfigError
from st_sweeps.gaussian_mixture import GaussianMixture
from st_sweeps.aux_prior import AuxPrior, FittedPrior, GMMPrior, GaussianPrior, StandardPrior
from st_sweeps.sde import ReciprocalVESDE, VESDE, VPSDE, SubVPSDE

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(), "rve": ReciprocalVESDE()}


def _correlated_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [-0.3, 0.2, 0.3]], dtype=torch.float64)
    x = mean + torch.randn(n, 3, generator=gen, dtype=torch.float64) @ a.T
    return x, mean, a @ a.T


def test_full_gaussian_recovers_the_forward_marginal() -> None:
    """x_T = μ x_0 + σ z has mean μ m and covariance μ² Σ + σ² I. N = 20,000: each mean within 4
    SE √(C_ii/N); each covariance entry within 4 SE √((C_ii C_jj + C_ij²)/N) of a sample covariance."""
    sde = VPSDE(T=0.3)
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    x0, m, cov = _correlated_data(n, gen)
    t = torch.tensor([sde.T], dtype=torch.float64)
    mu, sigma = float(sde.mean_scale(t)), float(sde.std(t))
    true_mean, true_cov = mu * m, mu ** 2 * cov + sigma ** 2 * torch.eye(3, dtype=torch.float64)
    fitted = GaussianPrior("full").fit(sde, x0, gen)
    fit_cov = fitted.scale_tril @ fitted.scale_tril.T
    d = torch.diagonal(true_cov)
    assert torch.all((fitted.mean - true_mean).abs() < 4 * (d / n).sqrt())
    se = ((d[:, None] * d[None] + true_cov ** 2) / n).sqrt()
    assert torch.all((fit_cov - true_cov).abs() < 4 * se)
    # its density is that of N(mean, Σ) as torch.distributions computes it
    x = fitted.sample(50, torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = torch.distributions.MultivariateNormal(fitted.mean, scale_tril=fitted.scale_tril).log_prob(x)
    torch.testing.assert_close(fitted.log_prob(x), ref, rtol=1e-10, atol=1e-10)


def test_diagonal_gaussian_recovers_the_variances_of_image_shaped_data() -> None:
    sde = VESDE(sigma_min=0.01, sigma_max=2.0, T=0.5)
    gen = torch.Generator().manual_seed(2)
    n = 20_000
    scales = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    x0 = 2.0 + scales * torch.randn(n, 3, 2, 2, generator=gen, dtype=torch.float64)
    fitted = GaussianPrior("diagonal").fit(sde, x0, gen)
    sigma2 = float(sde.std(torch.tensor([0.5], dtype=torch.float64))) ** 2
    true_var = (scales ** 2 + sigma2).expand(1, 3, 2, 2).flatten()
    assert torch.all((fitted.mean - 2.0).abs() < 4 * (true_var / n).sqrt())
    assert torch.all((fitted.std ** 2 / true_var - 1).abs() < 4 * math.sqrt(2 / n))
    x = fitted.sample(7, torch.Generator().manual_seed(3))
    assert x.shape == (7, 3, 2, 2) and x.dtype == torch.float32
    ref = torch.distributions.Normal(fitted.mean, fitted.std).log_prob(x.double().flatten(1)).sum(1)
    torch.testing.assert_close(fitted.log_prob(x.double()), ref)
    assert fitted.log_prob(x).dtype == torch.float32


def test_full_covariance_stays_positive_definite_with_few_examples() -> None:
    """N < D: the sample covariance is singular; the jitter keeps the Cholesky factor finite."""
    x0 = torch.randn(5, 12, generator=torch.Generator().manual_seed(0))
    fitted = GaussianPrior("full").fit(VPSDE(T=0.1), x0, torch.Generator().manual_seed(1))
    assert torch.all(torch.isfinite(fitted.log_prob(x0)))


def test_gmm_fits_a_2d_mixture_nearly_as_well_as_the_truth() -> None:
    """At T = 0.1 (VP) p_T is still a clear 3-component mixture, known exactly. On 4,000 held-out
    points the fitted 8-component diagonal GMM's mean log-likelihood is within 0.03 nats of the
    true density's (the difference estimates KL(p_T ‖ fit) ≥ 0, with an SE of ~0.002)."""
    sde = VPSDE(T=0.1)
    gmm = GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
                          torch.tensor([[-2.0, 0.0], [1.5, 1.5], [1.5, -1.5]], dtype=torch.float64),
                          torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    fitted = GMMPrior().fit(sde, gmm.sample(4000, gen), gen)
    t = torch.tensor([sde.T], dtype=torch.float64)
    mu, sigma = sde.mean_scale(t), sde.std(t)
    z = torch.randn(4000, 2, generator=gen, dtype=torch.float64)
    held_out = sde.perturb(gmm.sample(4000, gen), t.expand(4000), z)
    gap = gmm.log_prob(held_out, mu, sigma) - fitted.log_prob(held_out)
    se = float(gap.std()) / math.sqrt(4000)
    assert -4 * se < float(gap.mean()) < 0.03, (float(gap.mean()), se)
    single = GaussianPrior("full").fit(sde, gmm.sample(4000, gen), gen)  # a single Gaussian is far worse
    assert float((gmm.log_prob(held_out, mu, sigma) - single.log_prob(held_out)).mean()) > 0.3
    samples = fitted.sample(4000, torch.Generator().manual_seed(5), dtype=torch.float64)
    reverse_kl = gmm.log_prob(samples, mu, sigma) - fitted.log_prob(samples)  # estimates −KL(fit ‖ p_T)
    assert float(reverse_kl.mean()) > -0.03


@pytest.mark.parametrize("name", list(SDES))
def test_standard_is_the_sdes_prior(name: str) -> None:
    sde = SDES[name]
    x0 = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    fitted = StandardPrior().fit(sde, x0, torch.Generator())
    x = sde.prior_sample((6, 3, 4, 4), torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(fitted.log_prob(x), sde.prior_logp(x), rtol=1e-12, atol=1e-9)
    s = fitted.sample(20_000, torch.Generator().manual_seed(2))
    assert s.shape == (20_000, 3, 4, 4)
    assert abs(float(s.double().std()) / sde.prior_std - 1) < 0.01  # SE ≈ 1/√(2 · 960,000)


@pytest.mark.parametrize("prior", [StandardPrior(), GaussianPrior("diagonal"), GaussianPrior("full"),
                                   GMMPrior(components=3, iterations=10)])
def test_state_dict_round_trip(prior: AuxPrior) -> None:
    x0 = torch.randn(200, 2, 3, generator=torch.Generator().manual_seed(0))
    fitted = prior.fit(VPSDE(T=0.2), x0, torch.Generator().manual_seed(1))
    state = fitted.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    rebuilt = FittedPrior.from_state_dict({k: v.clone() for k, v in state.items()})
    assert type(rebuilt) is type(fitted) and rebuilt.event_shape == (2, 3)
    x = torch.randn(9, 2, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(rebuilt.log_prob(x), fitted.log_prob(x), rtol=0, atol=0)
    torch.testing.assert_close(rebuilt.sample(5, torch.Generator().manual_seed(3)),
                               fitted.sample(5, torch.Generator().manual_seed(3)), rtol=0, atol=0)


def test_fit_depends_only_on_the_generator() -> None:
    x0 = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    a = GMMPrior(components=4).fit(VPSDE(T=0.2), x0, torch.Generator().manual_seed(1)).state_dict()
    torch.manual_seed(99)
    b = GMMPrior(components=4).fit(VPSDE(T=0.2), x0, torch.Generator().manual_seed(1)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("spec, field", [
    ({"name": "gaussian", "covariance": "dense"}, "terminal_prior.covariance"),
    ({"name": "gmm", "components": 0}, "terminal_prior.components"),
    ({"name": "gmm", "iterations": 0}, "terminal_prior.iterations"),
    ({"name": "gmm", "components": 2.5}, "terminal_prior.components"),
    ({"name": "flow"}, "terminal_prior.name"),
    ({"name": "standard", "std": 1.0}, "terminal_prior.std"),
])
def test_bad_configs_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        AuxPrior.registry.build(spec, "terminal_prior")
    assert err.value.field == field


def test_gmm_needs_as_many_examples_as_components() -> None:
    with pytest.raises(ConfigError) as err:
        GMMPrior(components=8).fit(VPSDE(), torch.zeros(5, 2), torch.Generator())
    assert err.value.field == "components"
