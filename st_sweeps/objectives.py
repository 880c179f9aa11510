"""Training objectives: per-example estimates of the truncated score-matching integral.

Every objective estimates, with one diffusion time per example,

    L(θ; λ, τ) = ½ ∫_τ^T λ(t) E_{x_0, z} ‖s_θ(x_t, t) − target(x_t, t)‖² dt,   x_t = μ(t) x_0 + σ(t) z

(Kim et al. 2022, eq. 3), as ½ λ(t) / p(t) ‖s_θ(x_t, t) − target‖² with t ~ p on [τ, T] drawn by a
``TimeSampler``. ``loss`` returns the unreduced vector [B]; the trainer averages and scales it.

Three settings choose the scale of that estimate, and with gradient clipping and soft truncation
the scale changes training, not only the loss's units:

- ``normalization: integral`` keeps the estimate of the integral above (the paper's form);
  ``average`` divides it by the sampler's normaliser Z_τ (p(t) = q(t)/Z_τ), i.e. it estimates the
  *average* of λ‖·‖² under the sampler: ½ λ(t)/q(t) ‖·‖². With uniform t and a random τ the two
  differ by the factor (T − τ) that changes from step to step; the official Soft Truncation code
  uses ``average`` wherever its time sampler returns Z = 1 (uniform t on VP, 1/t-uniform on RVE),
  and ``integral`` for importance-sampled likelihood weighting (it returns Z_τ).
- ``reduction: sum`` sums ‖·‖² over the data dimensions (the ELBO's scale); ``mean`` averages it
  (the official ``reduce_mean = True``; 1/D of ``sum``).
- ``multiplier`` is a constant factor (the official ``reduce_mean = False`` is ``0.5 * sum`` inside
  a ``0.5 * Z * ...``, i.e. ``reduction: sum`` with ``multiplier: 0.5``).

Random draws, in order, all from the ``generator`` passed in (on the generator's own device, then
moved to x_0's device, so a CPU generator can drive a model on an accelerator): the B uniforms of
the time sampler, then z with x_0's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal

import torch
from torch import Tensor

from st_sweeps.config import Registry
from st_sweeps.errors import require
from st_sweeps.sde import broadcast_to, perturb_with
from st_sweeps.truncation import TimeSampler, UniformSampler
from st_sweeps.weighting import ImportanceLikelihoodWeighting, VarianceWeighting, Weighting

ScoreFn = Callable[[Tensor, Tensor], Tensor]

REDUCTIONS: tuple[str, ...] = ("sum", "mean")
NORMALIZATIONS: tuple[str, ...] = ("integral", "average")


def standard_normal(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None,
                    device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """N(0, I) of ``shape``, drawn on the generator's device and moved to ``device``."""
    where = generator.device if generator is not None else torch.device(device)
    return torch.randn(shape, generator=generator, device=where, dtype=dtype).to(device)


def sum_except_batch(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


def stf_target(x_t: Tensor, mean_scale: Tensor, std: Tensor, references: Tensor) -> Tensor:
    """Stable Target Field score target (Xu et al., ICLR 2023, eq. 5), without gradients.

        target(x_t) = Σ_i w_i (μ y_i − x_t) / σ²,  w = softmax_i(−‖x_t − μ y_i‖² / (2σ²)),

    the exact score of the noised empirical distribution of ``references`` {y_i}. x_t [B, ...],
    mean_scale and std [B], references [N, ...]. Computed in float64 (the logits divide squared
    distances by σ², which is ~1e-6 at t = ε) and returned in x_t's dtype.
    """
    with torch.no_grad(), torch.autocast(x_t.device.type, enabled=False):
        x = x_t.detach().flatten(1).double()  # [B, D]
        y = references.detach().flatten(1).double().to(x.device)  # [N, D]
        mu = mean_scale.detach().double()[:, None]  # [B, 1]
        var = std.detach().double()[:, None] ** 2  # [B, 1]
        # ‖x − μ y‖² = ‖x‖² − 2μ x·y + μ²‖y‖² (one matmul instead of a [B, N, D] difference)
        d2 = (x.pow(2).sum(1, keepdim=True) - 2 * mu * (x @ y.T) + mu ** 2 * y.pow(2).sum(1)[None]).clamp_min(0)
        w = torch.softmax(-d2 / (2 * var), dim=1)  # [B, N]
        target = (mu * (w @ y) - x) / var  # [B, D]
    return target.to(x_t.dtype).reshape(x_t.shape)


class Objective:
    """``loss(sde, score_fn, x0, tau, generator, reference=None) -> [B]``."""

    registry: ClassVar[Registry["Objective"]] = Registry("objective")

    @property
    def reference_batch_size(self) -> int:
        """How many extra data examples the trainer passes as ``reference`` (0: none)."""
        return 0

    def loss(self, sde, score_fn: ScoreFn, x0: Tensor, tau: float,  # noqa: ANN001 (an SDE)
             generator: torch.Generator | None, reference: Tensor | None = None) -> Tensor:
        raise NotImplementedError


def _check_scale_fields(reduction: str, multiplier: float) -> None:
    require(reduction in REDUCTIONS, "reduction", f"got {reduction!r}", REDUCTIONS)
    require(0 < multiplier < float("inf"), "multiplier", f"got {multiplier!r}", "a finite number > 0")


@dataclass(frozen=True)
class _WeightedScoreMatching(Objective):
    """Shared fields: a weighting λ, the t sampler (None: the weighting's own, else uniform) and
    the scale of the estimate (``normalization``, ``reduction``, ``multiplier``; module docstring)."""

    weighting: Weighting = field(default_factory=VarianceWeighting)
    time_sampler: TimeSampler | None = None
    normalization: Literal["integral", "average"] = "integral"
    reduction: Literal["sum", "mean"] = "sum"
    multiplier: float = 1.0

    def __post_init__(self) -> None:
        needed = self.weighting.time_sampler_name
        if needed is not None and self.time_sampler is not None:
            chosen = type(self.time_sampler).registry_name  # type: ignore[attr-defined]
            weighting = type(self.weighting).registry_name  # type: ignore[attr-defined]
            require(chosen == needed, "time_sampler",
                    f"weighting {weighting!r} needs the {needed!r} sampler, got {chosen!r}",
                    [needed, "null (the weighting's own)"])
        require(self.normalization in NORMALIZATIONS, "normalization", f"got {self.normalization!r}",
                NORMALIZATIONS)
        _check_scale_fields(self.reduction, self.multiplier)

    @property
    def sampler(self) -> TimeSampler:
        """The t sampler actually used."""
        if self.time_sampler is not None:
            return self.time_sampler
        needed = self.weighting.time_sampler_name
        return TimeSampler.registry.get(needed)() if needed else UniformSampler()

    def example_weight(self, sde, tau: float, t: Tensor, inv_density: Tensor, dims: int) -> Tensor:  # noqa: ANN001
        """The factor [B] that multiplies Σ_d (s_θ − target)² for each example:
        ½ · multiplier · λ(t)/p(t) [/ Z_τ for ``average``] [/ D for ``mean``]."""
        w = 0.5 * self.multiplier * self.weighting(sde, t) * inv_density
        if self.normalization == "average":
            w = w / self.sampler.normalizer(sde, tau)
        return w / dims if self.reduction == "mean" else w

    def _target(self, x_t: Tensor, z: Tensor, mu: Tensor, sigma: Tensor, x0: Tensor,
                reference: Tensor | None) -> Tensor:
        raise NotImplementedError

    def loss(self, sde, score_fn: ScoreFn, x0: Tensor, tau: float,  # noqa: ANN001
             generator: torch.Generator | None, reference: Tensor | None = None) -> Tensor:
        t, inv_density = self.sampler.sample(sde, tau, x0.shape[0], generator, x0.device, x0.dtype)  # [B]
        z = standard_normal(x0.shape, generator, x0.device, x0.dtype)
        return self._loss(sde, score_fn, x0, tau, t, inv_density, z, reference)

    def loss_at(self, sde, score_fn: ScoreFn, x0: Tensor, tau: float, t: Tensor, z: Tensor,  # noqa: ANN001
                reference: Tensor | None = None) -> Tensor:
        """``loss`` at given times t [B] and noise z (x_0's shape) instead of drawn ones, with
        1/p(t) from the sampler's density: for checking the estimator against other code."""
        inv_density = 1.0 / self.sampler.density(sde, tau, t.double()).to(x0.dtype)
        return self._loss(sde, score_fn, x0, tau, t.to(x0.dtype), inv_density, z, reference)

    def _loss(self, sde, score_fn: ScoreFn, x0: Tensor, tau: float, t: Tensor,  # noqa: ANN001
              inv_density: Tensor, z: Tensor, reference: Tensor | None) -> Tensor:
        mu, sigma = sde.mean_scale(t), sde.std(t)  # [B]
        x_t = perturb_with(x0, z, mu, sigma)  # sde.perturb without evaluating μ and σ again
        target = self._target(x_t, z, mu, sigma, x0, reference)
        sq = sum_except_batch((score_fn(x_t, t) - target) ** 2)  # [B]
        return self.example_weight(sde, tau, t, inv_density, x0[0].numel()) * sq


@Objective.registry.register("dsm")
@dataclass(frozen=True)
class DSM(_WeightedScoreMatching):
    """Denoising score matching (Vincent 2011; Song et al. 2021, eq. 7):

        ½ λ(t)/p(t) ‖s_θ(x_t, t) + z/σ(t)‖²,   target ∇log p_{0t}(x_t | x_0) = −z/σ(t).
    """

    def _target(self, x_t: Tensor, z: Tensor, mu: Tensor, sigma: Tensor, x0: Tensor,
                reference: Tensor | None) -> Tensor:
        require(reference is None, "reference", "dsm takes no reference batch", "None")
        return -z / broadcast_to(sigma, z)


@Objective.registry.register("stf")
@dataclass(frozen=True)
class STF(_WeightedScoreMatching):
    """Stable Target Field (Xu et al., ICLR 2023): DSM with the target replaced by

        Σ_i w_i (μ y_i − x_t)/σ²,  w = softmax_i(−‖x_t − μ y_i‖²/(2σ²)),  {y_i} = cat(x_0, reference),

    so every example's own x_0 is in its reference set (``stf_target``). ``reference`` must hold
    exactly ``reference_batch_size`` extra data examples; 0 uses the batch alone.
    """

    reference_batch_size: int = 256  # type: ignore[assignment]  (a field here, a property on Objective)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.reference_batch_size >= 0, "reference_batch_size", f"got {self.reference_batch_size!r}",
                "an integer >= 0")

    def _target(self, x_t: Tensor, z: Tensor, mu: Tensor, sigma: Tensor, x0: Tensor,
                reference: Tensor | None) -> Tensor:
        n = 0 if reference is None else reference.shape[0]
        require(n == self.reference_batch_size, "reference",
                f"expected {self.reference_batch_size} reference examples, got {n}",
                f"a tensor of shape [{self.reference_batch_size}, ...]")
        refs = x0 if reference is None else torch.cat([x0, reference.to(x0)])
        return stf_target(x_t, mu, sigma, refs)


@Objective.registry.register("mixed")
@dataclass(frozen=True)
class Mixed(Objective):
    """The "deepest" CIFAR-10 objective of the Soft Truncation code: the batch split in two.

    The first ⌈B/2⌉ examples get importance-sampled likelihood weighting (λ = g², p ∝ g²/σ², the
    integral form ½ Z_τ σ² ‖s_θ + z/σ‖²), the other ⌊B/2⌋ uniform-t variance weighting in the
    average form (½ σ² ‖s_θ + z/σ‖², no (T − τ) factor), each with its own t and z (drawn in that
    order), both with this objective's ``reduction`` and ``multiplier``: the official code's two
    halves (its importance sampler returns Z_τ, its uniform one Z = 1). The combined objective is

        L = mean(L_lik) + w · mean(L_var),   w = weight                                   (balanced: false)
                                             w = weight · sg[mean_i(L_lik,i / L_var,i)]   (balanced: true)

    where sg is stop-gradient and the ratio pairs the i-th example of each half, as the official
    code does (its mean of per-example ratios, not the ratio of the halves' means; B must then be
    even): the two parts enter with comparable magnitude whatever their scales, which drift apart
    by orders of magnitude during training. The returned vector [B] is scaled so that its mean is
    L: entries of the first part are B/n_lik · L_lik,i, those of the second B/n_var · w · L_var,i
    (a factor 2 for an even B). B must be at least 2.
    """

    weight: float = 1.0
    balanced: bool = False
    reduction: Literal["sum", "mean"] = "sum"
    multiplier: float = 1.0

    def __post_init__(self) -> None:
        require(0 <= self.weight < float("inf"), "weight", f"got {self.weight!r}", "a finite number >= 0")
        _check_scale_fields(self.reduction, self.multiplier)

    @property
    def likelihood_part(self) -> DSM:
        return DSM(weighting=ImportanceLikelihoodWeighting(), normalization="integral",
                   reduction=self.reduction, multiplier=self.multiplier)

    @property
    def variance_part(self) -> DSM:
        return DSM(weighting=VarianceWeighting(), time_sampler=UniformSampler(), normalization="average",
                   reduction=self.reduction, multiplier=self.multiplier)

    def loss(self, sde, score_fn: ScoreFn, x0: Tensor, tau: float,  # noqa: ANN001
             generator: torch.Generator | None, reference: Tensor | None = None) -> Tensor:
        require(reference is None, "reference", "mixed takes no reference batch", "None")
        b = x0.shape[0]
        require(b >= 2, "batch", f"mixed splits the batch in two and needs at least 2 examples, got {b}")
        require(not self.balanced or b % 2 == 0, "batch",
                f"balanced mixed pairs the examples of its two halves and needs an even batch (chunk), got {b}",
                "an even train.batch_size (or train.micro_batch_size)")
        n_lik = (b + 1) // 2
        lik = self.likelihood_part.loss(sde, score_fn, x0[:n_lik], tau, generator)
        var = self.variance_part.loss(sde, score_fn, x0[n_lik:], tau, generator)
        return self.combine(lik, var)

    def combine(self, lik: Tensor, var: Tensor) -> Tensor:
        """The returned vector [B] from the halves' per-example losses (``loss``'s docstring)."""
        b, n_lik = lik.shape[0] + var.shape[0], lik.shape[0]
        w = self.weight
        if self.balanced:
            tiny = torch.finfo(var.dtype).tiny
            w = w * (lik.detach() / var.detach().clamp_min(tiny)).mean()
        return torch.cat([lik * (b / n_lik), var * (w * b / (b - n_lik))])
