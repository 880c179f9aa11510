"""The sweep file: what to search, how, and where results go — loaded strictly, checked before Ray starts.

A sweep file is YAML with these top-level keys (only ``space`` and ``objectives`` are required)::

    name: null                       # sweep name (default: <file stem>-<timestamp>)
    base: {...}                      # an experiment config (st_sweeps.experiment.ExperimentConfig)
    space:                           # dotted experiment key -> distribution
      truncation.prior.name: {type: categorical, choices: [fixed, power_law]}
      truncation.prior.k: {type: float, low: 0.5, high: 3.0, when: {truncation.prior.name: power_law}}
      truncation.eps: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
      train.batch_size: {type: int, low: 32, high: 128, step: 32}
    objectives: [{metric: eval/nll_bpd, mode: min}]
    searcher: {name: tpe, seed: 0, n_startup_trials: 10}       # tpe | nsga2 | random | grid
    scheduler: {name: asha, metric: null, mode: null, grace_period: null, reduction_factor: 2, max_t: null}
    trials: 8
    max_concurrent: null             # trials at once (null: as many as the resources allow)
    resources: {cpus: 1, gpus: 0, workers: 1}
    mlflow: {experiment: null, tracking_uri: null}
    storage_path: ./ray_results
    baseline:                        # optional: the usual setting, run first, on several training seeds
      params: {truncation.prior.name: fixed, truncation.eps: 1.0e-5}
      seeds: 3

The baseline is a point of the space (every dimension it activates, none other, each value inside
its dimension). It is enqueued as the first ``seeds`` trials (training seeds base seed, +1, ...),
which the scheduler never stops early, so that the report compares the best trial with it and
measures the seed-to-seed spread of one configuration within the sweep itself.

Every problem is a ``ConfigError`` naming the file, the key path and what is allowed. The base
config is loaded as an ``ExperimentConfig`` with the space's values applied — the first point
(each dimension's low value or first choice), then each dimension's extremes and every choice —
so a key that does not exist in the experiment config, or a value it refuses, fails here.

The space becomes an Optuna define-by-run function (``SearchSpace.define_by_run``) that only
calls ``trial.suggest_*``; a dimension with ``when: {key: value}`` is suggested only when the
earlier categorical dimension ``key`` took ``value``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

from st_sweeps.config import apply_overrides, load_dataclass, parse_override, read_yaml, to_dict
from st_sweeps.errors import ConfigError, require
from st_sweeps.experiment import ExperimentConfig
from st_sweeps.metrics import OBJECTIVES, produced

# Metrics that may serve as objectives: the declared ones with a direction (st_sweeps.metrics).
# Tune and Optuna need each in every report, so the base config must compute it (checked below).
OBJECTIVE_METRICS: tuple[str, ...] = OBJECTIVES
Mode = Literal["min", "max"]
SEARCHERS: tuple[str, ...] = ("tpe", "nsga2", "random", "grid")
SCHEDULERS: tuple[str, ...] = ("asha", "none")
DEFAULT_STORAGE_PATH = "./ray_results"

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
Scalar = (str, int, float, bool, type(None))


# ------------------------------------------------------------------------------------ dimensions
@dataclass(frozen=True)
class Dimension:
    """One searched key. ``when``: suggest only if each earlier categorical key took that value."""

    kind: ClassVar[str]
    key: str
    when: dict[str, Any]

    def suggest(self, trial: Any) -> Any:
        raise NotImplementedError

    def probe_values(self) -> list[Any]:
        """Values checked against the experiment config at load time (first = the default)."""
        raise NotImplementedError

    def grid_values(self) -> list[Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this dimension (a value Optuna could suggest)."""
        raise NotImplementedError


MAX_GRID_VALUES = 10_000


def _check_grid_size(steps: float, step: Any) -> None:
    ok = (isinstance(steps, int) or math.isfinite(steps)) and steps + 1 <= MAX_GRID_VALUES
    require(ok, "step",
            f"{step!r} gives more than {MAX_GRID_VALUES} grid values", "a larger step")


def _finite(value: float, name: str) -> None:
    require(math.isfinite(value), name, f"must be finite, got {value!r}", "a finite number")


@dataclass(frozen=True)
class FloatDimension(Dimension):
    kind: ClassVar[str] = "float"
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    step: float | None = None  # a discretisation step (not with log)

    def __post_init__(self) -> None:
        _finite(self.low, "low")
        _finite(self.high, "high")
        require(self.low <= self.high, "low", f"low={self.low!r} is above high={self.high!r}", "low <= high")
        if self.log:
            require(self.low > 0, "low", f"log: true needs low > 0, got {self.low!r}", "a number > 0 (or log: false)")
            require(self.step is None, "step", "step cannot be combined with log: true", "null (or log: false)")
        if self.step is not None:
            _finite(self.step, "step")
            require(self.step > 0, "step", f"must be > 0, got {self.step!r}", "a number > 0, or null")

    def suggest(self, trial: Any) -> float:
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)

    def probe_values(self) -> list[Any]:
        return [self.low, self.high] if self.high != self.low else [self.low]

    def grid_values(self) -> list[Any]:
        require(self.step is not None, "step", "a float dimension needs a step for grid search",
                "a number > 0 (grid values low, low + step, ... <= high)")
        count = (self.high - self.low) / self.step + 1e-9  # type: ignore[operator]
        _check_grid_size(count, self.step)
        return [self.low + i * self.step for i in range(int(count) + 1)]  # type: ignore[operator]

    def describe(self) -> str:
        scale = "log-uniform" if self.log else ("uniform" if self.step is None else f"step {self.step:g}")
        return f"float [{self.low:g}, {self.high:g}] {scale}"

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step
        return abs(k - round(k)) < 1e-9


@dataclass(frozen=True)
class IntDimension(Dimension):
    kind: ClassVar[str] = "int"
    low: int = 0
    high: int = 1
    log: bool = False
    step: int = 1

    def __post_init__(self) -> None:
        require(self.low <= self.high, "low", f"low={self.low!r} is above high={self.high!r}", "low <= high")
        require(self.step >= 1, "step", f"must be >= 1, got {self.step!r}", "an integer >= 1")
        if self.log:
            require(self.low >= 1, "low", f"log: true needs low >= 1, got {self.low!r}", "an integer >= 1 (or log: false)")
            require(self.step == 1, "step", f"log: true needs step 1, got {self.step!r}", "1 (or log: false)")

    def suggest(self, trial: Any) -> int:
        return trial.suggest_int(self.key, self.low, self.high, step=self.step, log=self.log)

    def probe_values(self) -> list[Any]:
        top = self.low + (self.high - self.low) // self.step * self.step
        return [self.low, top] if top != self.low else [self.low]

    def grid_values(self) -> list[Any]:
        _check_grid_size((self.high - self.low) // self.step, self.step)
        return list(range(self.low, self.high + 1, self.step))

    def describe(self) -> str:
        scale = "log-uniform" if self.log else ("uniform" if self.step == 1 else f"step {self.step}")
        return f"int [{self.low}, {self.high}] {scale}"

    def contains(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high
                and (value - self.low) % self.step == 0)


@dataclass(frozen=True)
class CategoricalDimension(Dimension):
    kind: ClassVar[str] = "categorical"
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        require(len(self.choices) >= 1, "choices", "must not be empty", "a non-empty list of scalars")
        for i, c in enumerate(self.choices):
            require(isinstance(c, Scalar) and not (isinstance(c, float) and not math.isfinite(c)),
                    f"choices[{i}]", f"got {c!r}", "a string, number, true/false or null (Optuna stores scalars only)")
        seen: list[Any] = []
        for i, c in enumerate(self.choices):
            require(not any(type(c) is type(s) and c == s for s in seen), f"choices[{i}]", f"{c!r} is repeated",
                    "distinct values")
            seen.append(c)

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_categorical(self.key, list(self.choices))

    def probe_values(self) -> list[Any]:
        return list(self.choices)

    def grid_values(self) -> list[Any]:
        return list(self.choices)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def contains(self, value: Any) -> bool:
        return any(_same(value, c) for c in self.choices)


DIMENSION_TYPES: dict[str, type[Dimension]] = {
    cls.kind: cls for cls in (FloatDimension, IntDimension, CategoricalDimension)
}


# ------------------------------------------------------------------------------------ the rest
@dataclass(frozen=True)
class ObjectiveSpec:
    metric: str
    mode: Mode = "min"

    def __post_init__(self) -> None:
        require(self.metric in OBJECTIVE_METRICS, "metric", f"unknown metric {self.metric!r}", OBJECTIVE_METRICS)


@dataclass(frozen=True)
class SearcherConfig:
    name: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    seed: int = 0
    n_startup_trials: int = 10  # tpe: random trials before the model is used (Optuna's default)
    population_size: int = 50  # nsga2: trials per generation (Optuna's default)

    def __post_init__(self) -> None:
        require(self.n_startup_trials >= 0, "n_startup_trials", f"got {self.n_startup_trials!r}", "an integer >= 0")
        require(self.population_size >= 2, "population_size", f"got {self.population_size!r}", "an integer >= 2")


@dataclass(frozen=True)
class SchedulerConfig:
    """ASHA stops trials whose ``metric`` is in the worse part of their rung. Times count
    training steps: rungs at grace_period · reduction_factor^i, up to max_t."""

    name: Literal["asha", "none"] = "asha"
    metric: str | None = None  # default: the first objective's metric
    mode: Mode | None = None  # default: the first objective's mode (or min for another metric)
    grace_period: int | None = None  # steps before a trial can be stopped (default: base train.eval_every_steps)
    reduction_factor: float = 2.0
    max_t: int | None = None  # default: base train.steps

    def __post_init__(self) -> None:
        if self.metric is not None:
            require(self.metric in OBJECTIVE_METRICS, "metric", f"unknown metric {self.metric!r}", OBJECTIVE_METRICS)
        require(math.isfinite(self.reduction_factor) and self.reduction_factor > 1, "reduction_factor",
                f"got {self.reduction_factor!r}", "a number > 1")
        for name in ("grace_period", "max_t"):
            v = getattr(self, name)
            require(v is None or v >= 1, name, f"got {v!r}", "an integer >= 1 (training steps), or null")


@dataclass(frozen=True)
class Resources:
    """Per trial. workers = 1: the Trainer in the trial's own process with ``cpus``/``gpus``;
    workers > 1: a Ray Train job of ``workers`` workers, each with ``cpus``/``gpus``."""

    cpus: float = 1.0
    gpus: float = 0.0
    workers: int = 1

    def __post_init__(self) -> None:
        require(math.isfinite(self.cpus) and self.cpus > 0, "cpus", f"got {self.cpus!r}", "a number > 0")
        require(math.isfinite(self.gpus) and self.gpus >= 0, "gpus", f"got {self.gpus!r}", "a number >= 0")
        require(self.workers >= 1, "workers", f"got {self.workers!r}", "an integer >= 1")


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str | None = None  # default: st_sweeps-<file stem>
    tracking_uri: str | None = None  # default: sqlite:////<cwd>/mlflow.db ($MLFLOW_TRACKING_URI if set)

    def __post_init__(self) -> None:
        if self.experiment is not None:
            require(self.experiment.strip() != "", "experiment", "must not be empty", "a name, or null")
        if self.tracking_uri is not None:
            require(self.tracking_uri.strip() != "", "tracking_uri", "must not be empty",
                    "a URI (http://host:5000, sqlite:////abs/path.db), or null")


@dataclass(frozen=True)
class BaselineConfig:
    """The usual setting, a point of the space (dotted key -> value), run as the sweep's first
    ``seeds`` trials on training seeds base seed, base seed + 1, ...; never stopped early."""

    params: dict = field(default_factory=dict)
    seeds: int = 1

    def __post_init__(self) -> None:
        require(isinstance(self.params, dict) and len(self.params) >= 1, "params",
                f"got {self.params!r}", "a mapping of searched keys to values, e.g. {truncation.eps: 1.0e-5}")
        require(self.seeds >= 1, "seeds", f"got {self.seeds!r}", "an integer >= 1")


@dataclass(frozen=True)
class _FileFields:
    """The top-level keys (``base`` and ``space`` are checked by hand: they are open mappings)."""

    name: str | None = None
    base: dict = field(default_factory=dict)
    space: dict = field(default_factory=dict)
    objectives: tuple[ObjectiveSpec, ...] = ()
    searcher: SearcherConfig = field(default_factory=SearcherConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trials: int = 8
    max_concurrent: int | None = None
    resources: Resources = field(default_factory=Resources)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    storage_path: str = DEFAULT_STORAGE_PATH
    baseline: BaselineConfig | None = None


TOP_LEVEL_KEYS: tuple[str, ...] = tuple(f.name for f in fields(_FileFields))


@dataclass(frozen=True)
class SearchSpace:
    """A loaded, checked sweep file (see the module docstring)."""

    source: str  # the file it came from
    data: dict[str, Any]  # the file's mapping after overrides (saved with the sweep, compared on resume)
    name: str | None
    base: dict[str, Any]  # the base experiment config with every default filled in
    dimensions: tuple[Dimension, ...]
    objectives: tuple[ObjectiveSpec, ...]
    searcher: SearcherConfig
    scheduler: SchedulerConfig
    trials: int
    max_concurrent: int | None
    resources: Resources
    mlflow: MlflowConfig
    storage_path: str
    reference: ExperimentConfig  # the base at the first point of the space
    baseline: BaselineConfig | None = None

    # -- objectives
    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    # -- scheduler, resolved against the objectives and the base config
    @property
    def scheduler_metric(self) -> str:
        return self.scheduler.metric or self.objectives[0].metric

    @property
    def scheduler_mode(self) -> str:
        if self.scheduler.mode is not None:
            return self.scheduler.mode
        for o in self.objectives:
            if o.metric == self.scheduler_metric:
                return o.mode
        return "min"

    @property
    def max_t(self) -> int:
        return self.scheduler.max_t or self.reference.train.steps

    @property
    def grace_period(self) -> int:
        return self.scheduler.grace_period or self.reference.train.eval_every_steps or self.reference.train.steps

    # -- points of the space
    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def define_by_run(self) -> "DefineByRun":
        """Optuna define-by-run function: only ``trial.suggest_*`` calls, in file order."""
        return DefineByRun(self.dimensions)

    def grid(self) -> dict[str, list[Any]]:
        return {d.key: d.grid_values() for d in self.dimensions}

    def experiment_data(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The base mapping with ``params`` (dotted key -> value) applied."""
        return apply_params(self.base, params)

    def experiment(self, params: Mapping[str, Any], name: str | None = None) -> ExperimentConfig:
        data = self.experiment_data(params)
        if name is not None:
            data["name"] = name
        return _build_experiment(data, "base")

    def first_point(self) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for d in self.dimensions:
            if active(d, chosen):
                chosen[d.key] = d.probe_values()[0]
        return chosen


@dataclass(frozen=True)
class DefineByRun:
    """``space(trial)`` for Optuna: suggests each active dimension in file order and nothing
    else. A plain picklable object (Ray pickles the searcher, and with it this, to resume)."""

    dimensions: tuple[Dimension, ...]

    def __call__(self, trial: Any) -> None:
        chosen: dict[str, Any] = {}
        for d in self.dimensions:
            if active(d, chosen):
                chosen[d.key] = d.suggest(trial)


def active(d: Dimension, chosen: Mapping[str, Any]) -> bool:
    """Whether ``d`` is suggested, given the values chosen so far."""
    return all(k in chosen and _same(chosen[k], v) for k, v in d.when.items())


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted params over a base mapping. Registry switches (``...name``) go first, shallowest
    first, so that switching ``truncation.prior.name`` never drops a field set in the same point."""
    ordered = sorted(params.items(), key=lambda kv: (0, kv[0].count(".")) if kv[0].endswith(".name")
                     or kv[0] == "name" else (1, 0))
    return apply_overrides(dict(base), dict(ordered), ExperimentConfig)


# ------------------------------------------------------------------------------------ loading
def load_search_space(path: str | Path, overrides: Sequence[str] = ()) -> SearchSpace:
    """Read, override (``--set key=value``) and check a sweep file. Raises ConfigError only."""
    path = Path(path)
    where = str(path)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(where, "not a YAML file", "a path ending in .yaml or .yml")
    try:
        data = read_yaml(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(where, f"cannot read it ({type(e).__name__}: {e})") from None
    try:
        data = apply_sweep_overrides(data, overrides)
    except ConfigError as e:
        raise e.at(where) from None
    except _UNFORESEEN as e:
        raise ConfigError(where, f"--set could not be applied ({type(e).__name__}: {e})") from None
    return search_space_from_dict(data, where, stem=path.stem)


def apply_sweep_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``--set`` on a sweep file. ``space.<dotted key>.<field>`` addresses a dimension's field
    (the longest existing dimension key wins); everything else is a plain dotted path."""
    out = apply_overrides(dict(data), {})
    for text in overrides:
        key, value = parse_override(text)
        space = out.get("space")
        if key.startswith("space.") and isinstance(space, dict):
            rest = key[len("space."):]
            match = max((k for k in space if isinstance(k, str) and (rest == k or rest.startswith(k + "."))),
                        key=len, default=None)
            if match is not None and rest != match:
                entry = space.get(match)
                if not isinstance(entry, dict):
                    raise ConfigError(f"space.{match}", f"is {entry!r}, not a mapping: cannot set {key}")
                entry[rest[len(match) + 1:]] = value
                continue
            if match is not None or "." in rest:
                space[rest] = value
                continue
        baseline = out.get("baseline")
        if key.startswith("baseline.params.") and isinstance(baseline, dict) \
                and isinstance(baseline.get("params", {}), dict):
            # the baseline's params are dotted dimension keys, like the space's: one flat key each
            baseline.setdefault("params", {})[key[len("baseline.params."):]] = value
            continue
        if key.startswith("base.") and isinstance(out.get("base", {}), dict):
            # the base is an experiment: its schema tells registry nodes from plain fields
            out["base"] = apply_overrides(out.get("base", {}), {key[len("base."):]: value}, ExperimentConfig)
            continue
        out = apply_overrides(out, {key: value})
    return out


def search_space_from_dict(data: Any, where: str = "", stem: str = "sweep") -> SearchSpace:
    """Check a sweep mapping (``where`` names its file in errors)."""
    try:
        return _from_dict(data, stem, where)
    except ConfigError as e:
        raise (e.at(where) if where else e) from None
    except _UNFORESEEN as e:  # e.g. a self-referencing YAML alias
        raise ConfigError(where or "(top level)", f"cannot be read as a sweep file ({type(e).__name__}: {e})") from None


def _from_dict(data: Any, stem: str, where: str) -> SearchSpace:
    if not isinstance(data, Mapping):
        raise ConfigError("(top level)", f"expected a mapping, got {type(data).__name__}", TOP_LEVEL_KEYS)
    _check_string_keys(data, "")
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(str(unknown[0]), "unknown key", TOP_LEVEL_KEYS)
    for required in ("space", "objectives"):
        if required not in data:
            raise ConfigError(required, "missing required key")
    for open_mapping in ("base", "space"):
        v = data.get(open_mapping, {})
        if v is not None and not isinstance(v, Mapping):
            raise ConfigError(open_mapping, f"expected a mapping, got {type(v).__name__}", "a mapping")
    objectives = data.get("objectives")
    if not isinstance(objectives, list) or not objectives:
        raise ConfigError("objectives", f"expected a non-empty list, got {objectives!r}",
                          "a list like [{metric: eval/nll_bpd, mode: min}]")
    plain = {k: v for k, v in data.items() if k not in ("base", "space")}
    top = _load(_FileFields, plain, "")
    metrics = [o.metric for o in top.objectives]
    for i, m in enumerate(metrics):
        require(m not in metrics[:i], f"objectives[{i}].metric", f"{m!r} is listed twice", "distinct metrics")
    require(top.trials >= 1, "trials", f"got {top.trials!r}", "an integer >= 1")
    require(top.max_concurrent is None or top.max_concurrent >= 1, "max_concurrent", f"got {top.max_concurrent!r}",
            "an integer >= 1, or null")
    require(top.storage_path.strip() != "", "storage_path", "must not be empty", "a directory path")
    if top.name is not None:
        require(bool(_NAME.match(top.name)), "name", f"got {top.name!r}",
                "letters, digits and _ . = + - (no '/'), starting with a letter or digit")

    base = dict(data.get("base") or {})
    dims = _load_dimensions(data.get("space") or {})
    require(len(dims) >= 1, "space", "is empty", "at least one dimension, e.g. {truncation.eps: {type: float, ...}}")
    reference, resolved_base = _check_against_experiment(base, dims)
    space = SearchSpace(
        source=where, data=dict(data), name=top.name, base=resolved_base, dimensions=dims, objectives=top.objectives,
        searcher=top.searcher, scheduler=top.scheduler, trials=top.trials, max_concurrent=top.max_concurrent,
        resources=top.resources, mlflow=top.mlflow if top.mlflow.experiment else MlflowConfig(
            f"st_sweeps-{stem}", top.mlflow.tracking_uri), storage_path=top.storage_path, reference=reference,
        baseline=top.baseline)
    _check_metrics_available(space)
    _check_scheduler(space)
    _check_searcher(space)
    _check_baseline(space)
    return space


def _check_string_keys(data: Any, path: str) -> None:
    if isinstance(data, Mapping):
        for k, v in data.items():
            if not isinstance(k, str):
                raise ConfigError(path or "(top level)", f"key {k!r} is not a string", "string keys")
            _check_string_keys(v, f"{path}.{k}" if path else k)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _check_string_keys(v, f"{path}[{i}]")


def _load_dimensions(space: Mapping[str, Any]) -> tuple[Dimension, ...]:
    dims: list[Dimension] = []
    categorical: dict[str, CategoricalDimension] = {}
    for key, spec in space.items():
        path = f"space.{key}"
        require(bool(_KEY.match(key)), path, "not a dotted experiment key", "keys like truncation.prior.k")
        if not isinstance(spec, Mapping):
            raise ConfigError(path, f"expected a distribution mapping, got {spec!r}",
                              "{type: float|int|categorical, ...}")
        kind = spec.get("type")
        if not isinstance(kind, str) or kind not in DIMENSION_TYPES:
            raise ConfigError(f"{path}.type", f"unknown distribution type {kind!r}", list(DIMENSION_TYPES))
        when = spec.get("when", {})
        if "when" in spec and (not isinstance(when, Mapping) or not when):
            raise ConfigError(f"{path}.when", f"expected a non-empty mapping, got {when!r}",
                              "{earlier_categorical_key: value}")
        for wk, wv in when.items():
            if wk not in categorical:
                raise ConfigError(f"{path}.when.{wk}", "not an earlier categorical dimension",
                                  list(categorical) or "none yet: list the condition's dimension first")
            if not any(_same(wv, c) for c in categorical[wk].choices):
                raise ConfigError(f"{path}.when.{wk}", f"{wv!r} is not one of its choices",
                                  categorical[wk].choices)
        params = {k: v for k, v in spec.items() if k not in ("type", "when")}
        dim = _load(DIMENSION_TYPES[kind], {"key": key, "when": dict(when), **params}, path)
        dims.append(dim)
        if isinstance(dim, CategoricalDimension):
            categorical[key] = dim
    return tuple(dims)


# What a config class may raise on input its checks did not foresee (float() of a huge integer,
# a comparison of a string with a number...): still bad input, so still a ConfigError.
_UNFORESEEN = (TypeError, ValueError, ArithmeticError, AttributeError, KeyError, IndexError, RecursionError)


def _load(cls: type, data: Any, path: str) -> Any:
    try:
        return load_dataclass(cls, data, path)
    except ConfigError:
        raise
    except _UNFORESEEN as e:
        raise ConfigError(path or "(top level)", f"invalid value ({type(e).__name__}: {e})") from None


def _build_experiment(data: Mapping[str, Any], where: str) -> ExperimentConfig:
    """Load an ExperimentConfig; any failure (whatever a config class raises) is a ConfigError."""
    try:
        return _load(ExperimentConfig, data, "")
    except ConfigError as e:
        raise (e.at(where) if where else e) from None


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def _point_error(e: ConfigError, point: Mapping[str, Any], blame: str | None) -> ConfigError:
    """An experiment-config error at ``point`` (the base alone being valid). While probing one
    dimension (``blame``) the error is that value's doing; at the first point, blame the
    dimension the error names, else the one sharing most of its path."""
    field_ = e.field
    if blame is None:
        named = [k for k in point if field_ == k or field_.startswith((k + ".", k + "["))]
        near = max(point, key=lambda k: _common_prefix(k, field_), default=None)
        blame = named[0] if named else (near if near and _common_prefix(near, field_) else None)
    if blame is None:
        shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
        return ConfigError("space", f"its first point ({shown}) makes {field_} invalid: {e.problem}", e.allowed)
    if field_ == blame or field_.startswith((blame + ".", blame + "[")):
        allowed = e.allowed or ("nothing: the entry at this path has no fields (switch its name first, "
                                "e.g. with a 'when' condition on a name dimension)")
        return ConfigError(f"space.{blame}", f"value {point[blame]!r}: {e.problem}", allowed)
    return ConfigError(f"space.{blame}", f"value {point[blame]!r} makes {field_} invalid: {e.problem}", e.allowed)


def _check_against_experiment(base: dict[str, Any], dims: tuple[Dimension, ...]
                              ) -> tuple[ExperimentConfig, dict[str, Any]]:
    """Check the base alone, then at the first point, then each dimension's extremes and choices
    (with the conditions that activate it). Returns the first point's config and the resolved base."""
    resolved = to_dict(_build_experiment(base, "base"))

    def load(point: Mapping[str, Any], blame: str | None) -> ExperimentConfig:
        try:
            return _build_experiment(apply_params(resolved, point), "")
        except ConfigError as e:
            raise _point_error(e, point, blame) from None

    first: dict[str, Any] = {}
    for d in dims:
        if active(d, first):
            first[d.key] = d.probe_values()[0]
    reference = load(first, None)
    for d in dims:
        point: dict[str, Any] = {}
        for other in dims:
            if other is d:
                break
            if other.key in d.when:
                point[other.key] = d.when[other.key]
            elif active(other, point):
                point[other.key] = other.probe_values()[0]
        for value in d.probe_values():
            load({**point, d.key: value}, d.key)
    return reference, resolved


def _check_metrics_available(space: SearchSpace) -> None:
    wanted = [(f"objectives[{i}].metric", o.metric) for i, o in enumerate(space.objectives)]
    if space.scheduler.name == "asha":
        wanted.append(("scheduler.metric", space.scheduler_metric))
    for where, metric in wanted:
        why = produced(metric, space.reference)
        require(why is None, where, f"{metric} is not computed by the base config: {why}",
                "a metric the evaluation computes")


def _check_scheduler(space: SearchSpace) -> None:
    if space.scheduler.name != "asha":
        return
    train = space.reference.train
    require(space.grace_period <= space.max_t, "scheduler.grace_period",
            f"{space.grace_period} is above max_t={space.max_t}", f"an integer in [1, {space.max_t}]")
    evaluations = train.steps // train.eval_every_steps if train.eval_every_steps else 1
    require(evaluations >= 2, "scheduler.name",
            f"asha needs several evaluations per trial, but base train.eval_every_steps={train.eval_every_steps} "
            f"and train.steps={train.steps} give {evaluations}",
            "none, or base train.eval_every_steps well below train.steps")


def _check_searcher(space: SearchSpace) -> None:
    if space.searcher.name != "grid":
        return
    for d in space.dimensions:
        require(not d.when, f"space.{d.key}.when", "grid search cannot take conditional dimensions",
                "no 'when' (or searcher tpe, nsga2, random)")
        try:
            d.grid_values()
        except ConfigError as e:
            raise e.at(f"space.{d.key}") from None
    size = math.prod(len(v) for v in space.grid().values())
    require(space.trials <= size, "trials", f"{space.trials} trials exceed the grid's {size} points",
            f"an integer in [1, {size}]")


def _check_baseline(space: SearchSpace) -> None:
    """The baseline is one point of the space, and a valid experiment there."""
    b = space.baseline
    if b is None:
        return
    require(space.searcher.name != "grid", "baseline", "cannot be enqueued into a grid search",
            "no baseline (the grid holds its points already), or searcher tpe, nsga2, random")
    dims = {d.key: d for d in space.dimensions}
    for key, value in b.params.items():
        require(key in dims, f"baseline.params.{key}", "not a dimension of the space", list(dims))
    point: dict[str, Any] = {}
    for d in space.dimensions:
        where = f"baseline.params.{d.key}"
        if not active(d, point):
            require(d.key not in b.params, where, f"is inactive at this point (it needs {d.when})",
                    "leave it out, or set the condition")
            continue
        require(d.key in b.params, "baseline.params", f"misses {d.key!r}, active at this point",
                f"a value for {d.key}: {d.describe()}")
        value = b.params[d.key]
        require(d.contains(value), where, f"{value!r} is outside the dimension", d.describe())
        point[d.key] = value
    try:
        _build_experiment(apply_params(space.base, point), "")
    except ConfigError as e:
        raise ConfigError("baseline.params", f"makes {e.field} invalid: {e.problem}", e.allowed) from None


def summary(space: SearchSpace) -> str:
    """A few lines describing the sweep (for --dry-run and the parent run's description)."""
    lines = ["objectives: " + ", ".join(f"{o.metric} ({o.mode})" for o in space.objectives),
             f"searcher:   {space.searcher.name} (seed {space.searcher.seed})",
             "scheduler:  " + (f"asha on {space.scheduler_metric} ({space.scheduler_mode}), grace_period "
                               f"{space.grace_period} steps, reduction_factor {space.scheduler.reduction_factor:g}, "
                               f"max_t {space.max_t} steps" if space.scheduler.name == "asha" else "none"),
             f"trials:     {space.trials} (at most {space.max_concurrent or 'as resources allow'} at once; "
             f"{space.resources.cpus:g} CPU, {space.resources.gpus:g} GPU, {space.resources.workers} worker(s) each)",
             "space:"]
    for d in space.dimensions:
        cond = f"  when {', '.join(f'{k}={v!r}' for k, v in d.when.items())}" if d.when else ""
        lines.append(f"  {d.key}: {d.describe()}{cond}")
    if space.baseline is not None:
        point = ", ".join(f"{k}={v!r}" for k, v in space.baseline.params.items())
        lines.append(f"baseline:   {point}, run first on {space.baseline.seeds} training seed(s), never stopped early")
    return "\n".join(lines)


__all__ = [
    "OBJECTIVE_METRICS", "SEARCHERS", "SCHEDULERS", "Dimension", "FloatDimension", "IntDimension",
    "CategoricalDimension", "ObjectiveSpec", "BaselineConfig", "SearcherConfig", "SchedulerConfig", "Resources", "MlflowConfig",
    "SearchSpace", "DefineByRun", "load_search_space", "search_space_from_dict", "apply_sweep_overrides", "apply_params",
    "active", "summary",
]
