"""What a claim's part measures, one value per seed (registry keyed by the manifest's names).

Two kinds:

- from trained runs (``RunStatistic.per_seed(runs)``): ``contrast`` (a linear combination of one
  evaluation metric over configurations, paired by seed) and ``loss_by_time`` (how many decades
  the trainer's per-example loss at the smallest diffusion times exceeds that at the largest);
- measured without training (``MeasuredStatistic.measure(context, replicate)``): ``stf_target_variance``
  and ``tau_expectation``; their "seeds" are independent replicates of the measurement.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal, Mapping, Sequence

import torch

from st_sweeps.claims.target_variance import target_variance
from st_sweeps.claims.tau_expectation import GaussianProbe, exact_expectation, monte_carlo_expectation
from st_sweeps.config import Registry
from st_sweeps.errors import require
from st_sweeps.objectives import Objective, _WeightedScoreMatching
from st_sweeps.truncation import PowerLawPrior, TauPrior


# ======================================================================================= inputs
@dataclass(frozen=True)
class Evaluation:
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class RunResult:
    """One finished (configuration, seed): every evaluation and the last loss-by-time window."""

    config_id: str
    seed: int
    evaluations: tuple[Evaluation, ...]  # in step order
    loss_by_time: tuple[dict[str, Any], ...] = ()  # LossByTime.table() rows of the last window
    mlflow_run_id: str | None = None
    wall_s: float | None = None

    @property
    def final(self) -> Mapping[str, float]:
        return self.evaluations[-1].metrics

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RunResult":
        evaluations = tuple(Evaluation(int(e["step"]), dict(e["metrics"])) for e in data["evaluations"])
        return cls(config_id=data["config_id"], seed=int(data["seed"]), evaluations=evaluations,
                   loss_by_time=tuple(data.get("loss_by_time") or ()), mlflow_run_id=data.get("mlflow_run_id"),
                   wall_s=data.get("wall_s"))


Runs = Mapping[str, Mapping[int, RunResult]]  # configuration id -> seed -> result


class MeasureContext:
    """What measurements need from the study's base config: the SDE and the training data."""

    def __init__(self, base: Any, data_root: str | None = None):
        self.base = base  # an ExperimentConfig
        self.data_root = data_root

    @property
    def sde(self) -> Any:
        return self.base.sde

    @cached_property
    def train_data(self) -> torch.Tensor:
        """The training split in model space, without dequantization noise [N, C, H, W]."""
        from st_sweeps.data import resolve_data_root
        from st_sweeps.data.transforms import to_model_space

        ds = self.base.data.dataset
        root = None if ds.registry_name in ("digits", "gmm2d", "gmm_image") else resolve_data_root(self.data_root)
        images = ds.load(root, "train").images
        return to_model_space(images, None, centered=self.base.data.centered, flip=False, dequantize=False)


@dataclass(frozen=True)
class Measurement:
    value: float
    details: dict[str, Any] = field(default_factory=dict)


# ======================================================================================= base
class Statistic:
    registry: ClassVar[Registry["Statistic"]] = Registry("statistic")
    trained: ClassVar[bool] = True

    def configurations(self) -> tuple[str, ...]:
        """The trained configurations this statistic reads (none for a measurement)."""
        return ()

    def metrics(self) -> tuple[str, ...]:
        return ()

    def shown_configurations(self) -> tuple[str, ...]:
        """The configurations its figure draws (those it reads, and any shown for context)."""
        return self.configurations() + tuple(getattr(self, "also_show", ()))

    def describe(self) -> str:
        raise NotImplementedError


class RunStatistic(Statistic):
    def per_seed(self, runs: Runs) -> dict[int, float]:
        raise NotImplementedError


class MeasuredStatistic(Statistic):
    trained: ClassVar[bool] = False

    def measure(self, context: MeasureContext, generator: torch.Generator) -> Measurement:
        raise NotImplementedError

    def shrink(self, fraction: float) -> "MeasuredStatistic":
        """The same measurement with its Monte-Carlo sizes times ``fraction`` (smoke scale)."""
        raise NotImplementedError


def _common_seeds(runs: Runs, configs: Sequence[str]) -> list[int]:
    sets = [set(runs.get(c, {})) for c in configs]
    return sorted(set.intersection(*sets)) if sets else []


# ======================================================================================= from runs
@Statistic.registry.register("contrast")
@dataclass(frozen=True)
class Contrast(RunStatistic):
    """Σ_c w_c · f(metric of configuration c), per seed; f = identity or natural log. With
    ``evaluations: mean`` the mean of that over the evaluation steps the runs share (a curve's
    average gap), else at the final evaluation."""

    metric: str
    weights: dict[str, float]
    transform: Literal["identity", "log"] = "identity"
    evaluations: Literal["final", "mean"] = "final"

    def __post_init__(self) -> None:
        require(len(self.weights) >= 1, "weights", "is empty", "{configuration: weight, ...}")
        for k, w in self.weights.items():
            require(isinstance(w, (int, float)) and math.isfinite(w) and w != 0, f"weights.{k}",
                    f"got {w!r}", "a finite non-zero number")

    def configurations(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def metrics(self) -> tuple[str, ...]:
        return (self.metric,)

    def _f(self, v: float) -> float:
        return math.log(v) if self.transform == "log" else v

    def _value(self, results: Mapping[str, RunResult], step: int | None) -> float:
        total = 0.0
        for c, w in self.weights.items():
            ev = results[c].final if step is None else {e.step: e.metrics for e in results[c].evaluations}[step]
            if self.metric not in ev:
                raise KeyError(f"{c} seed {results[c].seed}: no {self.metric} at step {step or 'final'}")
            total += w * self._f(float(ev[self.metric]))
        return total

    def per_seed(self, runs: Runs) -> dict[int, float]:
        out = {}
        for seed in _common_seeds(runs, self.configurations()):
            results = {c: runs[c][seed] for c in self.weights}
            if self.evaluations == "final":
                out[seed] = self._value(results, None)
                continue
            steps = set.intersection(*({e.step for e in r.evaluations if self.metric in e.metrics}
                                       for r in results.values()))
            require(bool(steps), "evaluations", f"seed {seed}: the runs share no evaluation step")
            out[seed] = sum(self._value(results, s) for s in sorted(steps)) / len(steps)
        return out

    def describe(self) -> str:
        f = (lambda c: f"ln {self.metric}[{c}]") if self.transform == "log" else (lambda c: f"{self.metric}[{c}]")
        terms = " ".join(f"{'+' if w > 0 else '−'} {_coef(abs(w))}{f(c)}" for c, w in self.weights.items())
        terms = terms[2:] if terms.startswith("+ ") else terms
        return terms + (" (mean over shared evaluation steps)" if self.evaluations == "mean" else "")


def _coef(w: float) -> str:
    return "" if w == 1 else f"{w:g}·"


@Statistic.registry.register("loss_by_time")
@dataclass(frozen=True)
class LossByTimeRatio(RunStatistic):
    """log10( mean per-example loss over the ``low_bins`` smallest-t bins / the same over the
    ``high_bins`` largest-t bins ), from the trainer's loss-by-time diagnostics (its last window;
    log-spaced bins of t over [ε, T]; means weighted by the examples in each bin)."""

    config: str
    low_bins: int = 4
    high_bins: int = 4
    also_show: tuple[str, ...] = ()  # configurations drawn beside it in the figure (not in the value)

    def __post_init__(self) -> None:
        require(self.low_bins >= 1, "low_bins", f"got {self.low_bins!r}", "an integer >= 1")
        require(self.high_bins >= 1, "high_bins", f"got {self.high_bins!r}", "an integer >= 1")

    def configurations(self) -> tuple[str, ...]:
        return (self.config,)

    @staticmethod
    def _mean(rows: Sequence[Mapping[str, Any]]) -> float:
        n = sum(r["count"] for r in rows if r["mean_loss"] is not None)
        require(n > 0, "loss_by_time", "no examples in the bins compared", "more training steps or fewer bins")
        return sum(r["mean_loss"] * r["count"] for r in rows if r["mean_loss"] is not None) / n

    def per_seed(self, runs: Runs) -> dict[int, float]:
        out = {}
        for seed, result in sorted(runs.get(self.config, {}).items()):
            rows = list(result.loss_by_time)
            require(len(rows) >= self.low_bins + self.high_bins, "loss_by_time",
                    f"{self.config} seed {seed} has {len(rows)} bins", f">= {self.low_bins + self.high_bins}")
            low, high = self._mean(rows[: self.low_bins]), self._mean(rows[-self.high_bins:])
            out[seed] = math.log10(low / high)
        return out

    def describe(self) -> str:
        return (f"log10(mean loss in the {self.low_bins} smallest-t bins / in the {self.high_bins} largest-t bins) "
                f"[{self.config}]")


# ======================================================================================= measured
@Statistic.registry.register("stf_target_variance")
@dataclass(frozen=True)
class STFTargetVariance(MeasuredStatistic):
    """ln(σ² tr Cov[target | x_t] at the largest reference set / the same for DSM) at the time
    where SNR = ``snr`` (``st_sweeps.claims.target_variance``)."""

    snr: float = 1.0
    batch: int = 64
    extra_sizes: tuple[int, ...] = (0, 64, 256, 1024)
    x_batches: int = 4
    repeats: int = 32

    def __post_init__(self) -> None:
        require(self.snr > 0 and math.isfinite(self.snr), "snr", f"got {self.snr!r}", "a number > 0")
        for name in ("batch", "x_batches"):
            require(getattr(self, name) >= 1, name, f"got {getattr(self, name)!r}", "an integer >= 1")
        require(self.repeats >= 2, "repeats", f"got {self.repeats!r}", "an integer >= 2")
        require(len(self.extra_sizes) >= 1 and all(m >= 0 for m in self.extra_sizes), "extra_sizes",
                f"got {self.extra_sizes!r}", "a non-empty list of integers >= 0")

    def time(self, sde: Any) -> float:
        rho = torch.tensor([-math.log(self.snr)], dtype=torch.float64)
        return float(sde.time_from_neg_log_snr(rho)[0])

    def measure(self, context: MeasureContext, generator: torch.Generator) -> Measurement:
        sde = context.sde
        t = self.time(sde)
        tt = torch.tensor([t], dtype=torch.float64)
        result = target_variance(context.train_data, float(sde.mean_scale(tt)[0]), float(sde.std(tt)[0]), t,
                                 self.batch, self.extra_sizes, self.x_batches, self.repeats, generator)
        return Measurement(result.log_ratio(), {"t": t, "sigma": result.sigma, "mean_scale": result.mean_scale,
                                                "trace_by_reference_size": {str(k): v for k, v in result.by_size.items()}})

    def shrink(self, fraction: float) -> "STFTargetVariance":
        return dataclasses.replace(self, x_batches=max(1, round(self.x_batches * fraction)),
                                   repeats=max(4, round(self.repeats * fraction)))

    def describe(self) -> str:
        return (f"ln(tr Cov of the target with {self.batch}+{max(self.extra_sizes)} references / with 1 (DSM)) "
                f"at SNR {self.snr:g}")


@Statistic.registry.register("tau_expectation")
@dataclass(frozen=True)
class TauExpectation(MeasuredStatistic):
    """(Monte-Carlo mean of the objective's loss over τ ~ prior − ½ ∫ λ W f dt) / the latter
    (``st_sweeps.claims.tau_expectation``): 0 when soft truncation equals the fixed weighting λ·W."""

    objective: Objective = field(default_factory=lambda: Objective.registry.build("dsm", "objective"))
    prior: TauPrior = field(default_factory=PowerLawPrior)
    eps: float = 1e-5
    tau_draws: int = 2000
    batch: int = 64
    dim: int = 64
    data_std: float = 0.5
    model_std: float = 0.6

    def __post_init__(self) -> None:
        require(isinstance(self.objective, _WeightedScoreMatching), "objective",
                f"got {type(self.objective).registry_name!r}", ["dsm", "stf"])  # type: ignore[attr-defined]
        require(self.objective.reduction == "sum", "objective.reduction", "the check integrates the summed loss", ["sum"])
        require(0 < self.eps < 1, "eps", f"got {self.eps!r}", "a number in (0, 1)")
        for name in ("tau_draws", "batch", "dim"):
            require(getattr(self, name) >= 1, name, f"got {getattr(self, name)!r}", "an integer >= 1")
        require(self.data_std > 0 and self.model_std > 0, "data_std", "stds must be > 0", "numbers > 0")

    @property
    def probe(self) -> GaussianProbe:
        return GaussianProbe(self.dim, self.data_std, self.model_std)

    def exact(self, sde: Any) -> float:
        return exact_expectation(self.objective, sde, self.prior, self.eps, self.probe)  # type: ignore[arg-type]

    def measure(self, context: MeasureContext, generator: torch.Generator) -> Measurement:
        sde = context.sde
        exact = self.exact(sde)
        mc = monte_carlo_expectation(self.objective, sde, self.prior, self.eps, self.probe,  # type: ignore[arg-type]
                                     self.tau_draws, self.batch, generator)
        return Measurement((mc - exact) / exact, {"monte_carlo": mc, "exact": exact})

    def shrink(self, fraction: float) -> "TauExpectation":
        return dataclasses.replace(self, tau_draws=max(10, round(self.tau_draws * fraction)))

    def describe(self) -> str:
        form = "λ(t)·P(τ ≤ t)" if self.objective.normalization == "integral" else "λ(t)·E_τ[1{τ ≤ t}/Z_τ]"  # type: ignore[attr-defined]
        return f"(MC over τ − exact with the fixed weight {form}) / exact"
