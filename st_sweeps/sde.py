"""Forward SDEs dx = f(x, t) dt + g(t) dw with Gaussian perturbation kernels.

One signature for every SDE (the seam shared by training, sampling and likelihood):
``x_t = mean_scale(t) * x_0 + std(t) * z``. Times ``t`` are tensors of shape [B]; images are
[B, ...]; per-example scalars broadcast over the trailing dimensions.

Every SDE also exposes the noise level as ``neg_log_snr(t) = log(std² / mean_scale²)`` and its
inverse. For all four SDEs here ``g²(t) / std²(t) = d/dt neg_log_snr(t)``, so the importance
density of likelihood weighting, p(t) ∝ g²/σ² (Song et al. 2021; Kim et al. 2022, Sec. 3), is
"neg_log_snr uniform" and is sampled exactly by inverting neg_log_snr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from st_sweeps.config import Registry
from st_sweeps.errors import require, require_positive


def broadcast_to(v: Tensor, x: Tensor) -> Tensor:
    """[B] -> [B, 1, ..., 1] matching x's rank."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def perturb_with(x0: Tensor, noise: Tensor, mean_scale: Tensor, std: Tensor) -> Tensor:
    """x_t = μ x_0 + σ z for μ, σ [B] already evaluated at t (``SDE.perturb`` evaluates them)."""
    return broadcast_to(mean_scale, x0) * x0 + broadcast_to(std, x0) * noise


class SDE:
    """Base class; subclasses are frozen dataclasses registered by name."""

    registry: ClassVar[Registry["SDE"]] = Registry("SDE")
    T: float
    # How a fixed-step sampler spaces its times from T down to ε: "linear" in t, or "reciprocal"
    # (linear in 1/t) where the noise scale changes fastest near 0 in t.
    sampling_time_spacing: ClassVar[str] = "linear"

    # --- to implement -----------------------------------------------------------------
    def mean_scale(self, t: Tensor) -> Tensor:  # μ(t), [B]
        raise NotImplementedError

    def std(self, t: Tensor) -> Tensor:  # σ(t), [B]
        raise NotImplementedError

    def g2(self, t: Tensor) -> Tensor:  # g(t)², [B]
        raise NotImplementedError

    def drift_coef(self, t: Tensor) -> Tensor:
        """a(t) with f(x, t) = a(t) x (every SDE here has a linear drift), [B]."""
        return torch.zeros_like(t)

    def neg_log_snr(self, t: Tensor) -> Tensor:  # log(σ²/μ²), increasing in t, [B]
        raise NotImplementedError

    def time_from_neg_log_snr(self, lam: Tensor) -> Tensor:  # inverse of neg_log_snr
        raise NotImplementedError

    @property
    def prior_std(self) -> float:
        return 1.0

    # --- shared -----------------------------------------------------------------------
    def diffusion(self, t: Tensor) -> Tensor:
        return self.g2(t).sqrt()

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return broadcast_to(self.drift_coef(t), x) * x

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = μ(t) x_0 + σ(t) z."""
        return perturb_with(x0, noise, self.mean_scale(t), self.std(t))

    def snr(self, t: Tensor) -> Tensor:
        return torch.exp(-self.neg_log_snr(t))

    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the reverse-time SDE, f − g² ∇log p_t (Anderson 1982)."""
        return self.drift(x, t) - broadcast_to(self.g2(t), x) * score

    def probability_flow_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """dx/dt of the probability-flow ODE, f − ½ g² ∇log p_t (Song et al. 2021, eq. 13)."""
        return self.drift(x, t) - 0.5 * broadcast_to(self.g2(t), x) * score

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        return self.prior_std * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, x: Tensor) -> Tensor:
        """log N(x; 0, prior_std² I) summed over all but the batch dimension, [B]."""
        d = x[0].numel()
        s2 = self.prior_std ** 2
        sq = x.flatten(1).pow(2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * sq / s2

    def check_time_range(self, eps: float, field: str = "eps") -> None:
        require(0 < eps < self.T, field, f"must lie in (0, T={self.T}), got {eps!r}", f"0 < {field} < {self.T}")


def _require_T(T: float) -> None:
    require(T > 0, "T", f"must be > 0, got {T!r}", "a number > 0 (1.0 is the usual end time)")


@SDE.registry.register("vp")
@dataclass(frozen=True)
class VPSDE(SDE):
    """Variance preserving: β(t) = β_min + t (β_max − β_min), f = −½β x, g² = β."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0

    def __post_init__(self) -> None:
        require_positive(self.beta_min, "beta_min")
        require(self.beta_max > self.beta_min, "beta_max", f"must exceed beta_min={self.beta_min}, got {self.beta_max!r}",
                "a number > beta_min")
        _require_T(self.T)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Tensor) -> Tensor:  # B(t) = ∫_0^t β
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def time_from_integrated_beta(self, b: Tensor) -> Tensor:
        # root of ½Δ t² + β_min t − B = 0, written to avoid cancellation when Δ t ≪ β_min
        delta = self.beta_max - self.beta_min
        return 2 * b / (self.beta_min + torch.sqrt(self.beta_min ** 2 + 2 * delta * b))

    def mean_scale(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.integrated_beta(t))

    def std(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))

    def g2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def neg_log_snr(self, t: Tensor) -> Tensor:  # σ²/μ² = e^B − 1
        return torch.log(torch.expm1(self.integrated_beta(t)))

    def time_from_neg_log_snr(self, lam: Tensor) -> Tensor:
        return self.time_from_integrated_beta(torch.nn.functional.softplus(lam))


@SDE.registry.register("subvp")
@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """Sub-VP (Song et al. 2021): f = −½β x, g² = β (1 − e^{−2B}), σ = 1 − e^{−B}."""

    def std(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.integrated_beta(t))

    def g2(self, t: Tensor) -> Tensor:
        return self.beta(t) * -torch.expm1(-2 * self.integrated_beta(t))

    def neg_log_snr(self, t: Tensor) -> Tensor:  # σ²/μ² = (1 − e^{−B})² e^{B}
        b = self.integrated_beta(t)
        return 2 * torch.log(-torch.expm1(-b)) + b

    def time_from_neg_log_snr(self, lam: Tensor) -> Tensor:
        # y = e^B solves (y − 1)² = y e^λ; the larger root, written as log1p for small e^λ
        e = torch.exp(lam)
        b = torch.log1p(0.5 * e + torch.sqrt(e * (1 + 0.25 * e)))
        return self.time_from_integrated_beta(b)


@SDE.registry.register("ve")
@dataclass(frozen=True)
class VESDE(SDE):
    """Variance exploding: σ(t) = σ_min (σ_max/σ_min)^t, f = 0, g² = dσ²/dt.

    As in NCSN++ the kernel std is σ(t) itself, i.e. the process starts at t = 0 from data
    already perturbed by N(0, σ_min²); with σ_min = 0.01 on [0, 1] images that is below a pixel.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0

    def __post_init__(self) -> None:
        require_positive(self.sigma_min, "sigma_min")
        require(self.sigma_max > self.sigma_min, "sigma_max",
                f"must exceed sigma_min={self.sigma_min}, got {self.sigma_max!r}", "a number > sigma_min")
        _require_T(self.T)

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def mean_scale(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def std(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def g2(self, t: Tensor) -> Tensor:
        return 2 * self._log_ratio * self.std(t) ** 2

    def neg_log_snr(self, t: Tensor) -> Tensor:
        return 2 * (math.log(self.sigma_min) + t * self._log_ratio)

    def time_from_neg_log_snr(self, lam: Tensor) -> Tensor:
        return (0.5 * lam - math.log(self.sigma_min)) / self._log_ratio

    @property
    def prior_std(self) -> float:
        return self.sigma_max


@SDE.registry.register("rve")
@dataclass(frozen=True)
class ReciprocalVESDE(SDE):
    """Reciprocal VE (Kim et al. 2022): log σ is linear in 1/t,

    σ(t) = σ_max (σ_min/σ_max)^{(1/t − 1)/(1/t_sigma_min − 1)}, so σ(1) = σ_max,
    σ(t_sigma_min) = σ_min and σ(t) → 0 as t → 0 (the kernel is exact from clean data).
    f = 0, g² = dσ²/dt = σ² · 2 log(σ_max/σ_min) / ((1/t_sigma_min − 1) t²).
    """

    sigma_min: float = 1e-3
    sigma_max: float = 50.0
    t_sigma_min: float = 1e-5
    T: float = 1.0
    # log σ is linear in 1/t: steps even in 1/t are even in log σ (linear steps would spend nearly
    # all of them at σ ≈ σ_max)
    sampling_time_spacing: ClassVar[str] = "reciprocal"

    def __post_init__(self) -> None:
        require_positive(self.sigma_min, "sigma_min")
        require(self.sigma_max > self.sigma_min, "sigma_max",
                f"must exceed sigma_min={self.sigma_min}, got {self.sigma_max!r}", "a number > sigma_min")
        require(0 < self.t_sigma_min < 1, "t_sigma_min", f"got {self.t_sigma_min!r}", "a number in (0, 1)")
        _require_T(self.T)

    @property
    def _rate(self) -> float:  # d log σ / d(1/t), negative
        return math.log(self.sigma_min / self.sigma_max) / (1.0 / self.t_sigma_min - 1.0)

    def mean_scale(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def log_std(self, t: Tensor) -> Tensor:
        return math.log(self.sigma_max) + (1.0 / t - 1.0) * self._rate

    def std(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_std(t))

    def g2(self, t: Tensor) -> Tensor:
        return -2 * self._rate / (t * t) * self.std(t) ** 2

    def neg_log_snr(self, t: Tensor) -> Tensor:
        return 2 * self.log_std(t)

    def time_from_neg_log_snr(self, lam: Tensor) -> Tensor:
        inv_t = 1.0 + (0.5 * lam - math.log(self.sigma_max)) / self._rate
        return 1.0 / inv_t

    @property
    def prior_std(self) -> float:
        return self.sigma_max
