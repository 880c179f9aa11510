"""Truncation of the diffusion-time integral: τ priors (Soft Truncation) and t samplers.

Soft Truncation (Kim et al., ICML 2022, Sec. 4) trains on ½ ∫_τ^T λ(t) E‖s_θ − ∇log p_{0t}‖² dt with
the lower end τ redrawn once per optimiser step from P_k(τ) ∝ τ^{−k} on [ε, T]; ``fixed`` (τ = ε)
is the usual hard truncation. Given τ, a ``TimeSampler`` draws one t per example in [τ, T] with
density p(t) and returns ``inv_density = 1/p(t)``, so that ``λ(t) · inv_density · ‖·‖²`` is an
unbiased estimate of ∫_τ^T λ(t) E‖·‖² dt.

Uniform draws are made on the generator's device in float64 (times near ε = 1e-5 and the
inversion of neg_log_snr need the precision) and then moved to the requested device and dtype, so
a CPU generator can drive a model on an accelerator and the draws do not depend on where it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from st_sweeps.config import Registry
from st_sweeps.errors import require, require_range

# P_k with k above this is numerically indistinguishable from a fixed τ = ε: τ/ε − 1 is then
# about 1/(k − 1) ≤ 1e-4 in distribution. Use the ``fixed`` prior instead of a larger k.
MAX_POWER_LAW_K = 1e4


def uniform(n: int, generator: torch.Generator | None, device: torch.device | str = "cpu") -> Tensor:
    """n draws of U(0, 1) in float64 on ``device``, made on the generator's own device, [n]."""
    where = generator.device if generator is not None else torch.device(device)
    return torch.rand(n, generator=generator, device=where, dtype=torch.float64).to(device)


def _check_interval(eps: float, T: float) -> None:
    require(0 < eps < T, "eps", f"must lie in (0, T={T}), got {eps!r}", f"0 < eps < {T}")


# --------------------------------------------------------------------------------------- τ priors
class TauPrior:
    """Distribution of the truncation time τ on [ε, T]; one τ per optimiser step."""

    registry: ClassVar[Registry["TauPrior"]] = Registry("tau prior")

    def cdf(self, tau: Tensor, eps: float, T: float) -> Tensor:
        raise NotImplementedError

    def icdf(self, u: Tensor, eps: float, T: float) -> Tensor:
        raise NotImplementedError

    def sample(self, eps: float, T: float, generator: torch.Generator | None) -> float:
        """One τ by inversion of a single uniform drawn with ``generator``."""
        _check_interval(eps, T)
        return float(self.icdf(uniform(1, generator)[0], eps, T))


@TauPrior.registry.register("fixed")
@dataclass(frozen=True)
class FixedPrior(TauPrior):
    """τ = ε always (hard truncation; the k → ∞ limit of ``power_law``)."""

    def cdf(self, tau: Tensor, eps: float, T: float) -> Tensor:
        return (tau >= eps).to(tau.dtype)

    def icdf(self, u: Tensor, eps: float, T: float) -> Tensor:
        return torch.full_like(u, eps)


@TauPrior.registry.register("power_law")
@dataclass(frozen=True)
class PowerLawPrior(TauPrior):
    """P_k(τ) ∝ τ^{−k} on [ε, T] (Kim et al. 2022, Sec. 4.1); k = 1 is log-uniform.

    With s = log(τ/ε) ∈ [0, L], L = log(T/ε) and a = 1 − k the density of s is ∝ e^{a s}, so

        F(τ) = (e^{a s} − 1) / (e^{a L} − 1)       (s/L at a = 0),
        F⁻¹(u): s = log1p(u · expm1(a L)) / a      (a < 0),
                s = L + log1p((1 − u) · expm1(−a L)) / a   (a > 0; the mirror image s ↦ L − s),

    i.e. for T = 1 the paper's τ = ε [1 − u (1 − ε^{k−1})]^{−1/(k−1)} and τ = ε^{1−u} at k = 1.
    Written with expm1/log1p so that k near 1 is smooth and large k (exp(a L) → 0) does not overflow.
    k is limited to [0, MAX_POWER_LAW_K]; beyond that use ``fixed``.
    """

    k: float = 1.0

    def __post_init__(self) -> None:
        require_range(self.k, "k", 0.0, MAX_POWER_LAW_K)

    def cdf(self, tau: Tensor, eps: float, T: float) -> Tensor:
        a = 1.0 - self.k
        L = math.log(T / eps)
        s = (torch.log(tau) - math.log(eps)).clamp(0.0, L)
        if a == 0:
            return s / L
        if a < 0:
            return torch.expm1(a * s) / math.expm1(a * L)
        # a > 0: divide through by e^{aL} so nothing overflows for a large L
        return torch.exp(a * (s - L)) * torch.expm1(-a * s) / math.expm1(-a * L)

    def icdf(self, u: Tensor, eps: float, T: float) -> Tensor:
        a = 1.0 - self.k
        L = math.log(T / eps)
        if a == 0:
            s = u * L
        elif a < 0:
            s = torch.log1p(u * math.expm1(a * L)) / a
        else:
            s = L + torch.log1p((1.0 - u) * math.expm1(-a * L)) / a
        # u = 1 with a very negative a gives log1p(−1) = −inf: the exact answer is s = L
        s = torch.nan_to_num(s, posinf=L).clamp(0.0, L)
        return torch.exp(s + math.log(eps)).clamp(eps, T)


# --------------------------------------------------------------------------------------- t samplers
class TimeSampler:
    """Draws t ∈ [τ, T] with density p(t); returns (t [n], 1/p(t) [n])."""

    registry: ClassVar[Registry["TimeSampler"]] = Registry("time sampler")

    def sample(self, sde, tau: float, n: int, generator: torch.Generator | None,  # noqa: ANN001 (an SDE)
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        require(0 < tau <= sde.T, "tau", f"must lie in (0, T={sde.T}], got {tau!r}", f"0 < tau <= {sde.T}")
        t, inv_density = self._sample(sde, float(tau), uniform(n, generator, device))
        return t.to(dtype), inv_density.to(dtype)

    def _sample(self, sde, tau: float, u: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        """u: U(0,1) float64 [n] -> (t, 1/p(t)) in float64."""
        raise NotImplementedError

    def normalizer(self, sde, tau: float) -> float:  # noqa: ANN001
        """Z_τ, the normaliser of the density: p(t) = q(t)/Z_τ on [τ, T] with the τ-free shape q."""
        raise NotImplementedError

    def density(self, sde, tau: float, t: Tensor) -> Tensor:  # noqa: ANN001
        """p(t) on [τ, T], [n] (in t's dtype)."""
        raise NotImplementedError


@TimeSampler.registry.register("uniform")
@dataclass(frozen=True)
class UniformSampler(TimeSampler):
    """p(t) = 1/(T − τ)."""

    def _sample(self, sde, tau: float, u: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        width = sde.T - tau
        return tau + width * u, torch.full_like(u, width)

    def normalizer(self, sde, tau: float) -> float:  # noqa: ANN001
        return sde.T - tau

    def density(self, sde, tau: float, t: Tensor) -> Tensor:  # noqa: ANN001
        return torch.full_like(t, 1.0 / (sde.T - tau))


@TimeSampler.registry.register("importance")
@dataclass(frozen=True)
class ImportanceSampler(TimeSampler):
    """p(t) = g²(t)/σ²(t) / Z with Z = ∫_τ^T g²/σ² dt = λ(T) − λ(τ), λ = neg_log_snr.

    Since dλ/dt = g²/σ² for every SDE here, λ(t) is uniform on [λ(τ), λ(T)] and t is obtained
    exactly by ``sde.time_from_neg_log_snr`` (Song et al. 2021, Sec. 5; Kim et al. 2022, Sec. 3).
    With likelihood weighting λ = g², λ(t)/p(t) = Z σ²(t).
    """

    def _sample(self, sde, tau: float, u: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        ends = sde.neg_log_snr(torch.tensor([tau, sde.T], dtype=torch.float64, device=u.device))
        z = ends[1] - ends[0]
        t = sde.time_from_neg_log_snr(ends[0] + z * u).clamp(tau, sde.T)
        return t, z * sde.std(t) ** 2 / sde.g2(t)

    def normalizer(self, sde, tau: float) -> float:  # noqa: ANN001
        ends = sde.neg_log_snr(torch.tensor([tau, sde.T], dtype=torch.float64))
        return float(ends[1] - ends[0])

    def density(self, sde, tau: float, t: Tensor) -> Tensor:  # noqa: ANN001
        return sde.g2(t) / sde.std(t) ** 2 / self.normalizer(sde, tau)


@TimeSampler.registry.register("reciprocal")
@dataclass(frozen=True)
class ReciprocalSampler(TimeSampler):
    """1/t uniform on [1/T, 1/τ]: p(t) = t^{−2} / (1/τ − 1/T) (log σ uniform for the RVE SDE)."""

    def _sample(self, sde, tau: float, u: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        width = 1.0 / tau - 1.0 / sde.T
        t = (1.0 / (1.0 / sde.T + width * u)).clamp(tau, sde.T)
        return t, t * t * width

    def normalizer(self, sde, tau: float) -> float:  # noqa: ANN001
        return 1.0 / tau - 1.0 / sde.T

    def density(self, sde, tau: float, t: Tensor) -> Tensor:  # noqa: ANN001
        return 1.0 / (t * t * self.normalizer(sde, tau))


# --------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class Truncation:
    """The smallest diffusion time ε and the prior of τ ∈ [ε, T] (``fixed``: τ = ε).

    Whether ε < T is checked against the SDE with ``sde.check_time_range(eps)``.
    """

    eps: float = 1e-5
    prior: TauPrior = field(default_factory=FixedPrior)

    def __post_init__(self) -> None:
        require(0 < self.eps < math.inf, "eps", f"got {self.eps!r}", "a finite number > 0 (1e-5 is usual)")

    def sample_tau(self, sde, generator: torch.Generator | None) -> float:  # noqa: ANN001 (an SDE)
        """One τ for an optimiser step (checks ε against the SDE's T first)."""
        sde.check_time_range(self.eps)
        return self.prior.sample(self.eps, sde.T, generator)
