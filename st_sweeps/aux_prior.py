"""Auxiliary terminal priors for a short diffusion time ("How Much is Enough?", Franzese et al. 2023).

With T < 1 the forward marginal p_T is not the SDE's Gaussian prior. An ``AuxPrior`` fits a density
to forward samples x_T = μ(T) x_0 + σ(T) z; the ELBO's prior term −log N(x_T) becomes −log p_aux(x_T)
and sampling starts from p_aux. ``standard`` keeps the SDE's own N(0, prior_std² I).

``fit(sde, x0, generator) -> FittedPrior``; a FittedPrior has ``log_prob(x) -> [B]``,
``sample(n, generator) -> [n, ...]`` and ``state_dict()`` (tensors only, for checkpoints), rebuilt by
``FittedPrior.from_state_dict``. Fitting and evaluation run in float64; ``log_prob`` returns x's
dtype, ``sample`` float32 unless asked otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from st_sweeps.config import Registry
from st_sweeps.errors import require

_LOG_2PI = math.log(2 * math.pi)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    where = generator.device if generator is not None else torch.device(device)
    return torch.randn(shape, generator=generator, device=where, dtype=torch.float64).to(device)


def forward_samples(sde, x0: Tensor, generator: torch.Generator | None) -> Tensor:  # noqa: ANN001 (an SDE)
    """x_T = μ(T) x_0 + σ(T) z, flattened to [N, D] float64."""
    x = x0.detach().flatten(1).double()
    t = torch.full((x.shape[0],), sde.T, dtype=torch.float64, device=x.device)
    return sde.perturb(x, t, _normal(tuple(x.shape), generator, x.device))


# --------------------------------------------------------------------------------------- fitted
class FittedPrior:
    """A fitted density of x_T. Subclasses set ``kind`` (stored as a tensor code in state dicts)."""

    kind: ClassVar[int]
    event_shape: tuple[int, ...]

    def log_prob(self, x: Tensor) -> Tensor:  # [B, ...] -> [B]
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None, dtype: torch.dtype = torch.float32) -> Tensor:
        raise NotImplementedError

    def _tensors(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor]:
        out = {"kind": torch.tensor(self.kind), "event_shape": torch.tensor(self.event_shape, dtype=torch.int64)}
        out.update({k: v.detach().cpu().clone() for k, v in self._tensors().items()})
        return out

    @staticmethod
    def from_state_dict(state: dict[str, Tensor]) -> "FittedPrior":
        kinds = {c.kind: c for c in (StandardFitted, GaussianFitted, MixtureFitted)}
        kind = int(state["kind"])
        require(kind in kinds, "terminal_prior.kind", f"unknown fitted prior code {kind}", sorted(kinds))
        shape = tuple(int(s) for s in state["event_shape"].tolist())
        return kinds[kind]._from_tensors(shape, {k: v for k, v in state.items() if k not in ("kind", "event_shape")})

    @classmethod
    def _from_tensors(cls, event_shape: tuple[int, ...], tensors: dict[str, Tensor]) -> "FittedPrior":
        return cls(event_shape, **tensors)  # type: ignore[call-arg]

    def _flat(self, x: Tensor) -> Tensor:
        require(tuple(x.shape[1:]) == self.event_shape, "x", f"expected [B, {self.event_shape}], got {tuple(x.shape)}")
        return x.flatten(1).double()

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)


class StandardFitted(FittedPrior):
    """N(0, std² I): the SDE's own prior (same formula as ``SDE.prior_logp``)."""

    kind = 0

    def __init__(self, event_shape: tuple[int, ...], std: Tensor):
        self.event_shape = tuple(event_shape)
        self.std = torch.as_tensor(std, dtype=torch.float64)

    def _tensors(self) -> dict[str, Tensor]:
        return {"std": self.std}

    def log_prob(self, x: Tensor) -> Tensor:
        xf = self._flat(x)
        s2 = float(self.std) ** 2
        return (-0.5 * self.dim * math.log(2 * math.pi * s2) - 0.5 * xf.pow(2).sum(1) / s2).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None, dtype: torch.dtype = torch.float32) -> Tensor:
        z = _normal((n, self.dim), generator, self.std.device)
        return (float(self.std) * z).to(dtype).reshape(n, *self.event_shape)


class GaussianFitted(FittedPrior):
    """N(mean, Σ) with Σ = L Lᵀ (``scale_tril`` [D, D]) or diagonal (``std`` [D])."""

    kind = 1

    def __init__(self, event_shape: tuple[int, ...], mean: Tensor, std: Tensor | None = None,
                 scale_tril: Tensor | None = None):
        require((std is None) != (scale_tril is None), "gaussian", "give exactly one of std, scale_tril")
        self.event_shape = tuple(event_shape)
        self.mean = mean.double()
        self.std = None if std is None else std.double()
        self.scale_tril = None if scale_tril is None else scale_tril.double()

    def _tensors(self) -> dict[str, Tensor]:
        out = {"mean": self.mean}
        if self.std is not None:
            out["std"] = self.std
        else:
            out["scale_tril"] = self.scale_tril
        return out

    def _whiten(self, x: Tensor) -> Tensor:  # [B, D] -> L⁻¹ (x − m)
        centred = x - self.mean.to(x.device)
        if self.std is not None:
            return centred / self.std.to(x.device)
        return torch.linalg.solve_triangular(self.scale_tril.to(x.device), centred.T, upper=False).T

    def _log_det(self) -> Tensor:  # log |Σ|^{1/2}
        diag = self.std if self.std is not None else torch.diagonal(self.scale_tril)
        return diag.log().sum()

    def log_prob(self, x: Tensor) -> Tensor:
        w = self._whiten(self._flat(x))
        logp = -0.5 * self.dim * _LOG_2PI - self._log_det().to(w.device) - 0.5 * w.pow(2).sum(1)
        return logp.to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None, dtype: torch.dtype = torch.float32) -> Tensor:
        z = _normal((n, self.dim), generator, self.mean.device)
        x = self.mean + (z * self.std if self.std is not None else z @ self.scale_tril.T)
        return x.to(dtype).reshape(n, *self.event_shape)


class MixtureFitted(FittedPrior):
    """Σ_k π_k N(m_k, diag(s_k²)): ``weights`` [K], ``means`` [K, D], ``stds`` [K, D]."""

    kind = 2

    def __init__(self, event_shape: tuple[int, ...], weights: Tensor, means: Tensor, stds: Tensor):
        self.event_shape = tuple(event_shape)
        self.weights, self.means, self.stds = weights.double(), means.double(), stds.double()

    def _tensors(self) -> dict[str, Tensor]:
        return {"weights": self.weights, "means": self.means, "stds": self.stds}

    def component_log_prob(self, xf: Tensor) -> Tensor:
        """log π_k + log N(x; m_k, diag s_k²) -> [B, K] for xf [B, D] float64."""
        return _diag_mixture_logp(xf, self.weights.to(xf.device), self.means.to(xf.device), self.stds.to(xf.device))

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self.component_log_prob(self._flat(x)), dim=1).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None, dtype: torch.dtype = torch.float32) -> Tensor:
        where = generator.device if generator is not None else self.weights.device
        k = torch.multinomial(self.weights.to(where), n, replacement=True, generator=generator).to(self.means.device)
        z = _normal((n, self.dim), generator, self.means.device)
        return (self.means[k] + self.stds[k] * z).to(dtype).reshape(n, *self.event_shape)


def _diag_mixture_logp(x: Tensor, weights: Tensor, means: Tensor, stds: Tensor) -> Tensor:
    """[B, D], [K], [K, D], [K, D] -> log π_k N(x; m_k, diag s_k²) [B, K]."""
    inv_var = stds.pow(-2)  # [K, D]
    # Σ_d (x_d − m_kd)² / s_kd², expanded as three matmuls to avoid a [B, K, D] tensor
    maha = x.pow(2) @ inv_var.T - 2 * x @ (means * inv_var).T + (means.pow(2) * inv_var).sum(1)[None]
    log_norm = -0.5 * x.shape[1] * _LOG_2PI - stds.log().sum(1)  # [K]
    return weights.log()[None] + log_norm[None] - 0.5 * maha.clamp_min(0)


# --------------------------------------------------------------------------------------- configs
class AuxPrior:
    """How to model p_T: ``fit(sde, x0, generator) -> FittedPrior``."""

    registry: ClassVar[Registry["AuxPrior"]] = Registry("auxiliary prior")

    def fit(self, sde, x0: Tensor, generator: torch.Generator | None) -> FittedPrior:  # noqa: ANN001 (an SDE)
        raise NotImplementedError


@AuxPrior.registry.register("standard")
@dataclass(frozen=True)
class StandardPrior(AuxPrior):
    """The SDE's own N(0, prior_std² I); the data only give the event shape."""

    def fit(self, sde, x0: Tensor, generator: torch.Generator | None) -> FittedPrior:  # noqa: ANN001
        return StandardFitted(tuple(x0.shape[1:]), torch.tensor(float(sde.prior_std), dtype=torch.float64))


@AuxPrior.registry.register("gaussian")
@dataclass(frozen=True)
class GaussianPrior(AuxPrior):
    """N(m, Σ) fitted by maximum likelihood to x_T: Σ diagonal, or full plus a jitter of
    1e-6 · mean variance on the diagonal (keeps Σ positive definite when N ≤ D)."""

    covariance: Literal["diagonal", "full"] = "diagonal"

    def __post_init__(self) -> None:
        require(self.covariance in ("diagonal", "full"), "covariance", f"got {self.covariance!r}",
                ["diagonal", "full"])

    def fit(self, sde, x0: Tensor, generator: torch.Generator | None) -> FittedPrior:  # noqa: ANN001
        x = forward_samples(sde, x0, generator)  # [N, D]
        require(x.shape[0] >= 2, "x0", f"need at least 2 examples to fit, got {x.shape[0]}")
        mean = x.mean(0)
        centred = x - mean
        var = centred.pow(2).mean(0)
        floor = 1e-12 * float(var.mean()) + torch.finfo(torch.float64).tiny
        shape = tuple(x0.shape[1:])
        if self.covariance == "diagonal":
            return GaussianFitted(shape, mean, std=var.clamp_min(floor).sqrt())
        cov = centred.T @ centred / x.shape[0]
        cov = cov + (1e-6 * float(var.mean()) + floor) * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        return GaussianFitted(shape, mean, scale_tril=torch.linalg.cholesky(cov))


@AuxPrior.registry.register("gmm")
@dataclass(frozen=True)
class GMMPrior(AuxPrior):
    """A K-component diagonal-covariance Gaussian mixture fitted to x_T by EM (Dempster et al. 1977).

    Initialisation: K distinct data points (chosen with the generator) as means, the pooled
    per-dimension variance for every component, equal weights. Variances are floored at 1e-6 of
    the pooled variance so that no component collapses onto a single point.
    """

    components: int = 8
    iterations: int = 50

    def __post_init__(self) -> None:
        require(1 <= self.components <= 4096, "components", f"got {self.components!r}", "an integer in [1, 4096]")
        require(self.iterations >= 1, "iterations", f"got {self.iterations!r}", "an integer >= 1")

    def fit(self, sde, x0: Tensor, generator: torch.Generator | None) -> FittedPrior:  # noqa: ANN001
        x_t = forward_samples(sde, x0, generator)  # [N, D]
        centre = x_t.mean(0)
        x = x_t - centre  # centred, so E[x²] − m² below loses little to cancellation
        n, _ = x.shape
        require(n >= self.components, "components", f"{self.components} components need at least as many "
                f"examples, got {n}", f"an integer <= {n}")
        where = generator.device if generator is not None else x.device
        pick = torch.randperm(n, generator=generator, device=where)[: self.components].to(x.device)
        pooled = x.var(0, unbiased=False)
        floor = 1e-6 * pooled + torch.finfo(torch.float64).tiny
        means = x[pick].clone()  # [K, D]
        stds = pooled.sqrt().expand_as(means).clone()
        weights = torch.full((self.components,), 1.0 / self.components, dtype=x.dtype, device=x.device)
        for _ in range(self.iterations):
            resp = torch.softmax(_diag_mixture_logp(x, weights, means, stds), dim=1)  # E step [N, K]
            nk = resp.sum(0) + 1e-12  # M step
            weights = nk / n
            means = (resp.T @ x) / nk[:, None]
            var = (resp.T @ x.pow(2)) / nk[:, None] - means.pow(2)
            stds = torch.maximum(var, floor[None]).sqrt()
        return MixtureFitted(tuple(x0.shape[1:]), weights / weights.sum(), means + centre, stds)
