"""Exact sample quality on Gaussian-mixture data (``gmm_image``, ``gmm2d``): no learned features.

The data density p = Σ_k π_k N(m_k, s_k² I) is known (``st_sweeps.gaussian_mixture``), so
generated samples x_1..x_n are scored against it directly (``eval.sample_quality: gmm_exact``):

- ``eval/gmm_sample_logp``: (1/n) Σ_i log p(x_i) / D, nats per dimension, with its standard error
  ``eval/gmm_sample_logp_stderr``; beside it ``eval/gmm_data_logp``, the same mean over fresh
  draws from p (what a perfect sampler scores; its expectation is −H(p)/D). Not a score to push
  up on its own: samples collapsed onto the component means score *higher* than data.
- ``eval/gmm_energy_distance``: the energy distance (Székely & Rizzo 2013) between the samples X
  and fresh draws Y from p, as the unbiased U-statistic
      E = 2·mean_{i,j} ‖x_i − y_j‖ − mean_{i≠i'} ‖x_i − x_i'‖ − mean_{j≠j'} ‖y_j − y_j'‖,
  whose expectation is 0 exactly when X ~ p (and > 0 otherwise); ``eval/gmm_energy_pvalue`` is
  its permutation p-value (1 + #{permuted E ≥ E}) / (1 + B) over B relabellings of X ∪ Y.
- ``eval/gmm_occupancy_chi2`` / ``eval/gmm_occupancy_pvalue``: mode coverage. Each point goes to
  its most probable component; the 2×K table of counts (samples, fresh draws) gets Pearson's
  chi-square test of homogeneity (df = number of non-empty components − 1; p-value from the
  χ² survival function). Dropped or over-filled modes show here even when E is small.

The fresh draws come from the caller's generator, so successive evaluations of one run can share
them (common random numbers). Cost: the (n + m)² distance matrix and B matrix-vector products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from st_sweeps.gaussian_mixture import GaussianMixture

DEFAULT_PERMUTATIONS = 500


def _flat(x: Tensor) -> Tensor:
    return x.detach().cpu().to(torch.float64).flatten(1)


def mean_log_density(mixture: GaussianMixture, x: Tensor) -> tuple[float, float]:
    """(mean of log p(x_i)/D, its standard error) for x [n, *event_shape], in float64."""
    if x.shape[0] < 2 or tuple(x.shape[1:]) != mixture.event_shape:
        raise ValueError(f"mean_log_density: need x [n >= 2, {', '.join(map(str, mixture.event_shape))}], "
                         f"got {tuple(x.shape)}")
    mix64 = GaussianMixture(mixture.weights.double(), mixture.means.double(), mixture.stds.double())
    lp = mix64.log_prob(x.detach().cpu().double()) / mixture.dim  # [n]
    return float(lp.mean()), float(lp.std(unbiased=True) / lp.shape[0] ** 0.5)


def _within_and_cross_sums(dist: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For label rows A [P, N] (1 = first set): (Σ_XX d, Σ_YY d, Σ_XY d) each [P]; dist [N, N]."""
    a = labels
    b = 1.0 - a
    da = a @ dist  # [P, N]
    xx = (da * a).sum(1)
    xy = (da * b).sum(1)
    total = dist.sum()
    yy = total - xx - 2.0 * xy
    return xx, yy, xy


def _energy_from_sums(xx: Tensor, yy: Tensor, xy: Tensor, n: int, m: int) -> Tensor:
    return 2.0 * xy / (n * m) - xx / (n * (n - 1)) - yy / (m * (m - 1))


def energy_distance(x: Tensor, y: Tensor) -> float:
    """The unbiased energy distance between samples x [n, ...] and y [m, ...] (n, m >= 2)."""
    return energy_test(x, y, torch.Generator().manual_seed(0), permutations=0)[0]


def energy_test(x: Tensor, y: Tensor, generator: torch.Generator,
                permutations: int = DEFAULT_PERMUTATIONS) -> tuple[float, float]:
    """(energy distance, permutation p-value) of x [n, ...] vs y [m, ...]; ``permutations`` = 0
    gives p-value NaN. Relabellings are drawn from ``generator``."""
    fx, fy = _flat(x), _flat(y)
    n, m = fx.shape[0], fy.shape[0]
    if n < 2 or m < 2 or fx.shape[1] != fy.shape[1]:
        raise ValueError(f"energy_test: need [n >= 2, D] and [m >= 2, D], got {tuple(x.shape)}, {tuple(y.shape)}")
    z = torch.cat([fx, fy])
    dist = torch.cdist(z, z)  # [N, N], zero diagonal
    dist.fill_diagonal_(0.0)
    observed = torch.cat([torch.ones(n), torch.zeros(m)]).to(torch.float64)[None]  # [1, N]
    stat = float(_energy_from_sums(*_within_and_cross_sums(dist, observed), n, m)[0])
    if permutations == 0:
        return stat, float("nan")
    keys = torch.rand((permutations, n + m), generator=generator)
    labels = (keys.argsort(dim=1) < n).to(torch.float64)  # each row: a uniform relabelling, n ones
    perm = torch.cat([_energy_from_sums(*_within_and_cross_sums(dist, labels[i:i + 256]), n, m)
                      for i in range(0, permutations, 256)])
    # ties at rounding level count as "at least as large"
    exceed = int((perm >= stat - 1e-12 * max(abs(stat), 1.0)).sum())
    return stat, (1 + exceed) / (1 + permutations)


def component_assignments(mixture: GaussianMixture, x: Tensor) -> Tensor:
    """Index [n] of each point's most probable component: argmax_k log π_k + log N(x; m_k, s_k² I)."""
    xf = _flat(x)  # [n, D]
    means = mixture.means.detach().cpu().double().flatten(1)  # [K, D]
    var = mixture.stds.detach().cpu().double() ** 2  # [K]
    sq = torch.cdist(xf, means) ** 2  # [n, K]
    logp = torch.log(mixture.weights.double()) - 0.5 * xf.shape[1] * torch.log(var) - 0.5 * sq / var
    return logp.argmax(dim=1)


def chi2_survival(stat: float, df: int) -> float:
    """P(χ²_df ≥ stat) = Q(df/2, stat/2), the regularised upper incomplete gamma function."""
    if df <= 0:
        return float("nan")
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def occupancy_test(mixture: GaussianMixture, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(Pearson chi-square, p-value) of homogeneity of the component counts of x and y."""
    k = mixture.weights.shape[0]
    counts = torch.stack([torch.bincount(component_assignments(mixture, s), minlength=k) for s in (x, y)])
    counts = counts.to(torch.float64)[:, counts.sum(0) > 0]  # [2, K'] non-empty components
    if counts.shape[1] < 2:
        return 0.0, float("nan")  # one component: nothing to compare
    expected = counts.sum(1, keepdim=True) * counts.sum(0, keepdim=True) / counts.sum()
    stat = float(((counts - expected) ** 2 / expected).sum())
    return stat, chi2_survival(stat, counts.shape[1] - 1)


@dataclass(frozen=True)
class GmmQuality:
    sample_logp: float
    sample_logp_stderr: float
    data_logp: float
    data_logp_stderr: float
    energy_distance: float
    energy_pvalue: float
    occupancy_chi2: float
    occupancy_pvalue: float
    n_samples: int
    n_reference: int

    def as_metrics(self) -> dict[str, float]:
        out = {"eval/gmm_sample_logp": self.sample_logp, "eval/gmm_sample_logp_stderr": self.sample_logp_stderr,
               "eval/gmm_data_logp": self.data_logp, "eval/gmm_energy_distance": self.energy_distance,
               "eval/gmm_energy_pvalue": self.energy_pvalue, "eval/gmm_occupancy_chi2": self.occupancy_chi2,
               "eval/gmm_occupancy_pvalue": self.occupancy_pvalue}
        return {k: v for k, v in out.items() if v == v}  # NaN (undefined) is a missing value, not a number


def gmm_quality(mixture: GaussianMixture, samples: Tensor, generator: torch.Generator, *,
                n_reference: int | None = None, permutations: int = DEFAULT_PERMUTATIONS) -> GmmQuality:
    """All of the above for ``samples`` [n, *event_shape] against ``n_reference`` (default n)
    fresh draws from ``mixture`` (drawn first from ``generator``, then the permutations)."""
    n = int(samples.shape[0])
    if n < 2 or tuple(samples.shape[1:]) != mixture.event_shape:
        raise ValueError(f"gmm_quality: need samples [n >= 2, {', '.join(map(str, mixture.event_shape))}], "
                         f"got {tuple(samples.shape)}")
    fresh = mixture.sample(n_reference or n, generator)
    s_mean, s_se = mean_log_density(mixture, samples)
    d_mean, d_se = mean_log_density(mixture, fresh)
    e_stat, e_p = energy_test(samples, fresh, generator, permutations)
    c_stat, c_p = occupancy_test(mixture, samples, fresh)
    return GmmQuality(s_mean, s_se, d_mean, d_se, e_stat, e_p, c_stat, c_p, n, int(fresh.shape[0]))
