"""The 95 % confidence interval of a mean over seeds: Student's t on the per-seed values.

With 3–5 seeds a bootstrap interval is too narrow (it cannot see beyond the few values it
resamples), so every interval of the study is the two-sided t-interval

    x̄ ± t_{1−α/2, n−1} · s / √n,    s² = Σ (x_i − x̄)² / (n − 1),

on one value per seed. Comparisons of configurations are paired by seed (the per-seed value is
already the difference or contrast), which removes what the configurations share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

LEVEL = 0.95
METHOD = "two-sided 95 % Student-t interval over per-seed values (paired by seed)"


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int
    sd: float  # standard deviation of the per-seed values (n − 1 in the denominator)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_quantile(p: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, dof))


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and t-interval of ``values`` (at least 2, all finite)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n < 2:
        raise ValueError(f"an interval needs at least 2 values, got {n}")
    if not all(math.isfinite(v) for v in xs):
        raise ValueError(f"non-finite value among {xs}")
    mean = sum(xs) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)
