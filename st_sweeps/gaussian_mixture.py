"""Isotropic Gaussian mixtures: data with exact log-density and exact score at every noise level.

p(x) = Σ_k π_k N(x; m_k, s_k² I). Under a kernel x_t = μ x_0 + σ z the marginal stays a mixture,
p_t = Σ_k π_k N(x; μ m_k, (μ² s_k² + σ²) I), so densities and scores are closed-form at every t
(the analytic truth that tests of DSM, STF, samplers and NLL compare against).
Shapes: x [B, *event_shape]; means [K, *event_shape]; weights, stds [K].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GaussianMixture:
    weights: Tensor  # [K], sums to 1
    means: Tensor  # [K, *event_shape]
    stds: Tensor  # [K]

    def __post_init__(self) -> None:
        if self.weights.ndim != 1 or self.stds.shape != self.weights.shape or self.means.shape[0] != self.weights.shape[0]:
            raise ValueError("GaussianMixture: weights [K], means [K, ...], stds [K] must agree on K")
        if not torch.all(self.stds > 0):
            raise ValueError("GaussianMixture: stds must be > 0")
        if abs(float(self.weights.sum()) - 1.0) > 1e-5 or not torch.all(self.weights >= 0):
            raise ValueError("GaussianMixture: weights must be >= 0 and sum to 1")

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    @property
    def dim(self) -> int:
        return int(math.prod(self.event_shape))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=self.means.dtype)
        return self.means[k] + self.stds[k].reshape(-1, *([1] * len(self.event_shape))) * z

    def _component_logp(self, x: Tensor, mean_scale: Tensor, var: Tensor) -> Tensor:
        """log π_k + log N(x; μ m_k, var_k I) -> [B, K]; mean_scale [B], var [B, K]."""
        xf = x.flatten(1)  # [B, D]
        m = self.means.flatten(1).to(x)  # [K, D]
        centred = xf[:, None, :] - mean_scale[:, None, None] * m[None]  # [B, K, D]
        sq = centred.pow(2).sum(-1)  # [B, K]
        d = xf.shape[1]
        return torch.log(self.weights.to(x))[None] - 0.5 * d * torch.log(2 * math.pi * var) - 0.5 * sq / var

    def _marginal_var(self, x: Tensor, mean_scale: Tensor | None, std: Tensor | None) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        mu = torch.ones(b, dtype=x.dtype, device=x.device) if mean_scale is None else mean_scale.to(x).expand(b)
        sig = torch.zeros(b, dtype=x.dtype, device=x.device) if std is None else std.to(x).expand(b)
        var = mu[:, None] ** 2 * self.stds.to(x)[None] ** 2 + sig[:, None] ** 2  # [B, K]
        return mu, var

    def log_prob(self, x: Tensor, mean_scale: Tensor | None = None, std: Tensor | None = None) -> Tensor:
        """log p_t(x) for the marginal under x_t = μ x_0 + σ z (defaults: the data itself), [B]."""
        mu, var = self._marginal_var(x, mean_scale, std)
        return torch.logsumexp(self._component_logp(x, mu, var), dim=1)

    def score(self, x: Tensor, mean_scale: Tensor | None = None, std: Tensor | None = None) -> Tensor:
        """∇_x log p_t(x) = Σ_k r_k(x) (μ m_k − x) / var_k with responsibilities r_k, [B, ...]."""
        mu, var = self._marginal_var(x, mean_scale, std)
        resp = torch.softmax(self._component_logp(x, mu, var), dim=1)  # [B, K]
        xf = x.flatten(1)
        m = self.means.flatten(1).to(x)
        per_k = (mu[:, None, None] * m[None] - xf[:, None, :]) / var[:, :, None]  # [B, K, D]
        return (resp[:, :, None] * per_k).sum(1).reshape(x.shape)

    def score_fn(self, sde):  # noqa: ANN001 (an st_sweeps.sde.SDE)
        """The exact score s(x, t) of this data pushed through ``sde``: a drop-in for a network."""

        def fn(x: Tensor, t: Tensor) -> Tensor:
            return self.score(x, sde.mean_scale(t), sde.std(t))

        return fn

    @staticmethod
    def gaussian(mean: Tensor, std: float) -> "GaussianMixture":
        """A single isotropic Gaussian N(mean, std² I)."""
        return GaussianMixture(torch.ones(1, dtype=mean.dtype), mean[None], torch.full((1,), float(std), dtype=mean.dtype))
