"""The weight an objective puts on each noise level, in the units of the ε-prediction loss.

A score-matching term ‖s_θ(x_t, t) + z/σ(t)‖² equals ‖σ s_θ + z‖²/σ², and ‖σ s_θ + z‖² = ‖ε_θ − ε‖²
is the same number at every noise level for a network that is equally good everywhere. So how much
an objective cares about a noise level is the ε-loss weight it gives an example there, times how
often its time sampler draws that level. Over ρ = −log SNR(t) = log(σ²/μ²) (whose derivative is
dρ/dt = g²/σ² for every SDE here) that density is

    w(ρ) = p(t) · c(t) · σ²(t)/g²(t),   c(t) = the factor on ‖σ s_θ + z‖² of one example at t,

and two objectives train the same loss (up to a constant) iff their w agree up to a constant.
Hard truncation at τ: t ∈ [τ, T]; soft truncation averages these curves over τ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from st_sweeps.objectives import Mixed, Objective, _WeightedScoreMatching


def epsilon_loss_weight(objective: _WeightedScoreMatching, sde, tau: float, t: Tensor,  # noqa: ANN001
                        dims: int = 1) -> Tensor:
    """c(t) [n]: the factor on ‖σ s_θ + z‖² for one example at t (``reduction: mean`` over ``dims``)."""
    inv_density = 1.0 / objective.sampler.density(sde, tau, t)
    return objective.example_weight(sde, tau, t, inv_density, dims) / sde.std(t) ** 2


def log_snr_density(objective: Objective, sde, tau: float, t: Tensor, dims: int = 1) -> Tensor:  # noqa: ANN001
    """w(ρ(t)) [n] (module docstring). For ``mixed`` the sum of its halves' curves with the variance
    half scaled by ``weight`` (the nominal one when ``balanced``, whose factor depends on the data)."""
    if isinstance(objective, Mixed):
        return (log_snr_density(objective.likelihood_part, sde, tau, t, dims)
                + objective.weight * log_snr_density(objective.variance_part, sde, tau, t, dims))
    if not isinstance(objective, _WeightedScoreMatching):
        raise TypeError(f"no weight curve for {type(objective).__name__}")
    density = objective.sampler.density(sde, tau, t)
    return density * epsilon_loss_weight(objective, sde, tau, t, dims) * sde.std(t) ** 2 / sde.g2(t)


def log_snr_grid(sde, tau: float, n: int = 200) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    """(t, ρ) [n], float64: times whose ρ = −log SNR is evenly spaced over [ρ(τ), ρ(T)]."""
    ends = sde.neg_log_snr(torch.tensor([tau, sde.T], dtype=torch.float64))
    # stay a hair inside the ends, where the inversion of ρ is exact to rounding
    rho = torch.linspace(float(ends[0]), float(ends[1]), n + 2, dtype=torch.float64)[1:-1]
    return sde.time_from_neg_log_snr(rho).clamp(tau, sde.T), rho
