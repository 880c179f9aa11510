"""Soft Truncation in expectation over τ: a Monte-Carlo check of the fixed weighting it amounts to.

For a fixed τ the objective's estimator (``Objective.loss``) has expectation ½ ∫_τ^T λ(t) f(t) c(τ) dt,
with f(t) = E‖s_θ(x_t, t) − target‖², c(τ) = 1 for ``normalization: integral`` (the paper's form)
and c(τ) = 1/Z_τ for ``average`` (divided by the time sampler's normaliser, Z_τ = T − τ for
uniform t: the official code's uniform-t estimator). Averaging over τ ~ P (Kim et al. 2022,
"maximum perturbed likelihood"):

    E_τ L = ½ ∫_ε^T λ(t) W(t) f(t) dt,   W(t) = E_τ[1{τ ≤ t} c(τ)]
          = P(τ ≤ t)                               (integral)
          = ∫_ε^t dP(τ) / Z_τ                      (average),

i.e. training with one fixed weighting λ(t) W(t) on [ε, T]. Checked on a problem with a known f:
data N(0, s² I_D) and a deliberately wrong model score s_θ(x, t) = −x / v(t), v = μ² s_θ² + σ², for
which

    f(t) = E‖s_θ(x_t, t) + z/σ‖² = D [μ² s² / v² + (1/σ − σ/v)²].

The Monte-Carlo side runs the objective's own ``loss`` (its τ-independent time sampler, its
importance weights, its normalisation) with τ drawn from the prior once per "step"; the exact side
integrates the formula above on a fine log-spaced grid (trapezoid in log t, float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from st_sweeps.objectives import _WeightedScoreMatching
from st_sweeps.truncation import TauPrior

GRID_POINTS = 20001


@dataclass(frozen=True)
class GaussianProbe:
    """Data N(0, data_std² I_dim) scored by the exact score of N(0, model_std² I_dim) noised."""

    dim: int = 64
    data_std: float = 0.5
    model_std: float = 0.6

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.data_std * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)

    def _v(self, sde, t: Tensor) -> Tensor:  # noqa: ANN001 (an SDE)
        return sde.mean_scale(t) ** 2 * self.model_std ** 2 + sde.std(t) ** 2

    def score_fn(self, sde):  # noqa: ANN001, ANN201
        def score(x: Tensor, t: Tensor) -> Tensor:
            return -x / self._v(sde, t)[:, None]

        return score

    def expected_sq_error(self, sde, t: Tensor) -> Tensor:  # noqa: ANN001
        """f(t) [n] (module docstring)."""
        mu, sigma, v = sde.mean_scale(t), sde.std(t), self._v(sde, t)
        return self.dim * (mu ** 2 * self.data_std ** 2 / v ** 2 + (1 / sigma - sigma / v) ** 2)


def log_grid(eps: float, T: float, n: int = GRID_POINTS) -> Tensor:
    return torch.exp(torch.linspace(math.log(eps), math.log(T), n, dtype=torch.float64))


def tau_weight(objective: _WeightedScoreMatching, sde, prior: TauPrior, eps: float, t: Tensor) -> Tensor:  # noqa: ANN001
    """W(t) on the increasing grid ``t`` (module docstring); ``t[0]`` must be ε."""
    cdf = prior.cdf(t, eps, sde.T).double()
    if objective.normalization == "integral":
        return cdf
    # ∫_ε^t dP(τ) / Z_τ: the mass of each grid cell over Z at the cell's midpoint, accumulated
    mid = torch.sqrt(t[1:] * t[:-1])
    z = torch.tensor([objective.sampler.normalizer(sde, float(m)) for m in mid], dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum((cdf[1:] - cdf[:-1]) / z, 0)])


def effective_weight(objective: _WeightedScoreMatching, sde, prior: TauPrior, eps: float, t: Tensor) -> Tensor:  # noqa: ANN001
    """The fixed weighting λ(t) W(t) that soft truncation amounts to, times the objective's constants."""
    return 0.5 * objective.multiplier * objective.weighting(sde, t) * tau_weight(objective, sde, prior, eps, t)


def exact_expectation(objective: _WeightedScoreMatching, sde, prior: TauPrior, eps: float,  # noqa: ANN001
                      probe: GaussianProbe) -> float:
    """½ ∫_ε^T λ W f dt by the trapezoid rule in log t (``reduction: sum``)."""
    t = log_grid(eps, sde.T)
    integrand = effective_weight(objective, sde, prior, eps, t) * probe.expected_sq_error(sde, t) * t
    return float(torch.trapezoid(integrand, torch.log(t)))


def monte_carlo_expectation(objective: _WeightedScoreMatching, sde, prior: TauPrior, eps: float,  # noqa: ANN001
                            probe: GaussianProbe, tau_draws: int, batch: int, generator: torch.Generator) -> float:
    """Mean of the objective's per-example loss over ``tau_draws`` steps of ``batch`` examples, one τ
    per step. τ goes through the prior's inverse CDF as in training, from stratified uniforms
    u_i = (i + U_i)/n (one per stratum, in random order): still unbiased, with far less of the
    variance that one τ per step brings (Z_τ changes by orders of magnitude over [ε, T])."""
    score = probe.score_fn(sde)
    u = (torch.arange(tau_draws, dtype=torch.float64) + torch.rand(tau_draws, generator=generator,
                                                                   dtype=torch.float64)) / tau_draws
    taus = prior.icdf(u[torch.randperm(tau_draws, generator=generator)], eps, sde.T)
    total = 0.0
    for tau in taus.tolist():
        x0 = probe.sample(batch, generator)
        total += float(objective.loss(sde, score, x0, tau, generator).mean())
    return total / tau_draws
