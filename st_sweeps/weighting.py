"""Weightings λ(t) of the denoising score-matching integral ½ ∫ λ(t) E‖s_θ − ∇log p_{0t}‖² dt.

All are written for the score parameterisation. A weighting given for ε-prediction,
w(t) ‖ε_θ − ε‖², becomes λ(t) = w(t) σ²(t) here, because ‖ε_θ − ε‖² = σ² ‖s_θ + z/σ‖².
SNR(t) = μ²(t)/σ²(t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from st_sweeps.config import Registry
from st_sweeps.errors import require


def _require_finite_at_least(value: float, field: str, low: float, *, strict: bool) -> None:
    ok = (value > low if strict else value >= low) and value < float("inf")
    require(ok, field, f"got {value!r}", f"a finite number {'>' if strict else '>='} {low}")


class Weighting:
    """λ(t) [B] for an SDE; ``time_sampler_name`` names the t sampler it requires (or None)."""

    registry: ClassVar[Registry["Weighting"]] = Registry("weighting")
    time_sampler_name: ClassVar[str | None] = None

    def __call__(self, sde, t: Tensor) -> Tensor:  # noqa: ANN001 (an SDE)
        raise NotImplementedError


@Weighting.registry.register("variance")
@dataclass(frozen=True)
class VarianceWeighting(Weighting):
    """λ = σ² (Song et al. 2021): the constant weight on ‖ε_θ − ε‖² of DDPM."""

    def __call__(self, sde, t: Tensor) -> Tensor:  # noqa: ANN001
        return sde.std(t) ** 2


@Weighting.registry.register("likelihood")
@dataclass(frozen=True)
class LikelihoodWeighting(Weighting):
    """λ = g² (Song et al. 2021, Thm. 1): the loss plus a residual bounds the NLL; uniform t."""

    def __call__(self, sde, t: Tensor) -> Tensor:  # noqa: ANN001
        return sde.g2(t)


@Weighting.registry.register("likelihood_is")
@dataclass(frozen=True)
class ImportanceLikelihoodWeighting(Weighting):
    """λ = g² with t from p(t) ∝ g²/σ² (Kim et al. 2022, Sec. 3): λ/p = Z σ², a low-variance estimate."""

    time_sampler_name: ClassVar[str | None] = "importance"

    def __call__(self, sde, t: Tensor) -> Tensor:  # noqa: ANN001
        return sde.g2(t)


@Weighting.registry.register("debiased")
@dataclass(frozen=True)
class DebiasedWeighting(Weighting):
    """w = 1/√SNR = σ/μ on ‖ε_θ − ε‖² (Yu et al., "Unmasking Bias", ECCV 2024): λ = σ² · σ/μ."""

    def __call__(self, sde, t: Tensor) -> Tensor:  # noqa: ANN001
        sigma = sde.std(t)
        return sigma ** 3 / sde.mean_scale(t)


@Weighting.registry.register("p2")
@dataclass(frozen=True)
class P2Weighting(Weighting):
    """w = 1/(k + SNR)^γ on ‖ε_θ − ε‖² (Choi et al., CVPR 2022): λ = σ² / (k + SNR)^γ."""

    k: float = 1.0
    gamma: float = 1.0

    def __post_init__(self) -> None:
        _require_finite_at_least(self.k, "k", 0.0, strict=False)
        _require_finite_at_least(self.gamma, "gamma", 0.0, strict=False)

    def __call__(self, sde, t: Tensor) -> Tensor:  # noqa: ANN001
        return sde.std(t) ** 2 * torch.pow(self.k + sde.snr(t), -self.gamma)


@Weighting.registry.register("min_snr")
@dataclass(frozen=True)
class MinSNRWeighting(Weighting):
    """w = min(1, γ/SNR) on ‖ε_θ − ε‖² (Hang et al., ICCV 2023): λ = σ² min(1, γ/SNR)."""

    gamma: float = 5.0

    def __post_init__(self) -> None:
        _require_finite_at_least(self.gamma, "gamma", 0.0, strict=True)

    def __call__(self, sde, t: Tensor) -> Tensor:  # noqa: ANN001
        # γ/SNR = γ exp(neg_log_snr); clamping keeps exp's overflow (inf) harmless
        return sde.std(t) ** 2 * torch.clamp(self.gamma * torch.exp(sde.neg_log_snr(t)), max=1.0)
