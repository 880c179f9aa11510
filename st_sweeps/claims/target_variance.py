"""Stable Target Field (Xu et al., ICLR 2023): how much the training target varies given x_t.

Denoising score matching regresses s_θ(x_t, t) on the target (μ y − x_t)/σ², where y is the clean
example that x_t came from. Given x_t that target is random — y is a draw from the posterior
p(y | x_t) — and its covariance is what makes the loss noisy at intermediate noise. STF replaces it
by Σ_i w_i (μ y_i − x_t)/σ² over a reference set {y_i} that contains y, w = softmax_i(−‖x_t − μ y_i‖²/(2σ²))
(``st_sweeps.objectives.stf_target``). The STF paper's claim: the trace of the target's covariance
shrinks as the reference set grows (its eq. 6–8).

Measured here exactly as training draws it, on a finite data set {y_j} (the empirical distribution,
whose posterior is known): a batch of B examples y_b ~ uniform, x_b = μ y_b + σ z_b, held fixed; then
``repeats`` times, each example's own y is redrawn from its exact posterior softmax_j(−‖x_b − μ y_j‖²/(2σ²))
over the whole data set, m extra references are drawn uniformly, and the target is computed with the
reference set {own y of every batch example} ∪ {m extras} (reference size B + m), as the trainer does.
The per-example trace of the covariance over repeats, averaged over the batch and over ``x_batches``
batches, is reported in ε-units (σ² · tr Cov / D, dimensionless). Reference size 1 is plain DSM
(the target built from the example's own y alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from st_sweeps.objectives import stf_target

DSM_SIZE = 1  # the reference size that stands for plain denoising score matching


@dataclass(frozen=True)
class TargetVariance:
    """Trace of the target's conditional covariance (ε-units, per dimension) by reference size."""

    t: float
    sigma: float
    mean_scale: float
    by_size: dict[int, float]  # reference size -> σ² tr Cov / D (size 1 = DSM)

    def log_ratio(self) -> float:
        """ln(trace at the largest reference / trace of DSM): < 0 when the target is steadier."""
        largest = max(self.by_size)
        return float(torch.log(torch.tensor(self.by_size[largest] / self.by_size[DSM_SIZE])))


def _per_example_trace(targets: Tensor) -> Tensor:
    """targets [R, B, D] -> unbiased trace of the covariance over R, per example [B]."""
    return targets.var(dim=0, unbiased=True).sum(-1)


def target_variance(data: Tensor, mean_scale: float, sigma: float, t: float, batch: int,
                    extra_sizes: Sequence[int], x_batches: int, repeats: int,
                    generator: torch.Generator) -> TargetVariance:
    """``data`` [N, ...] in model space (float). Returns the traces for DSM (size 1) and for STF with
    reference sizes ``batch + m`` for m in ``extra_sizes`` (module docstring)."""
    y_all = data.flatten(1).double()  # [N, D]
    n, dim = y_all.shape
    mu, var = float(mean_scale), float(sigma) ** 2
    mu_b = torch.full((batch,), mu, dtype=torch.float64)
    sigma_b = torch.full((batch,), float(sigma), dtype=torch.float64)
    sums: dict[int, float] = {DSM_SIZE: 0.0, **{batch + m: 0.0 for m in extra_sizes}}
    for _ in range(x_batches):
        y0 = y_all[torch.randint(n, (batch,), generator=generator)]  # [B, D]
        x = mu * y0 + float(sigma) * torch.randn(y0.shape, generator=generator, dtype=torch.float64)
        # exact posterior over the data set: p(j | x_b) = softmax_j(−‖x_b − μ y_j‖² / (2σ²))   [B, N]
        d2 = (x.pow(2).sum(1, keepdim=True) - 2 * mu * (x @ y_all.T) + mu ** 2 * y_all.pow(2).sum(1)[None])
        posterior = torch.softmax(-d2.clamp_min(0) / (2 * var), dim=1)
        draws: dict[int, list[Tensor]] = {size: [] for size in sums}
        for _ in range(repeats):
            own = y_all[torch.multinomial(posterior, 1, generator=generator).squeeze(1)]  # [B, D]
            draws[DSM_SIZE].append((mu * own - x) / var)
            for m in extra_sizes:
                extra = y_all[torch.randint(n, (m,), generator=generator)]  # [m, D]
                draws[batch + m].append(stf_target(x, mu_b, sigma_b, torch.cat([own, extra])))
        for size, targets in draws.items():
            trace = _per_example_trace(torch.stack(targets))  # [B]
            sums[size] += float(trace.mean()) * var / dim
    return TargetVariance(t=t, sigma=float(sigma), mean_scale=mu,
                          by_size={size: s / x_batches for size, s in sorted(sums.items())})
