"""The claims manifest (``reproductions/claims/claims.yaml``), loaded strictly into dataclasses.

::

    title: ...
    notes: [...]                        # printed above the table: the metric's noise floor, ...
    report_metric: eval/digits_fd       # reported at every evaluation of every run (Tune's progress column)
    base: {...}                         # an experiment config shared by every configuration
    configurations:
      - {id: hard_small_eps, label: "...", overrides: {truncation.eps: 1.0e-5, ...},
         at_scale: {smoke: {...}}}      # dotted experiment keys; at_scale adds keys at one scale
    scales:
      smoke: {seeds: 3, replicates: 3, measure_fraction: 0.1, overrides: {train.steps: 20, ...}}
      cpu:   {seeds: 4, replicates: 5, overrides: {}}
    claims:
      - id: "1"
        title: ...
        paper: the paper's statement       source: where it stands (reference sections)
        parts:
          - {id: 1a, statement: ..., units: bpd,
             statistic: {name: contrast, metric: eval/nll_bpd, weights: {hard_small_eps: 1, hard_large_eps: -1}},
             rule: {name: below, threshold: 0}}

A configuration at a scale is ``base`` + the scale's ``overrides`` + the configuration's
``overrides`` + its ``at_scale[scale]`` + ``seed``; ``seed`` and ``name`` may not be overridden
(seeds are 0 … seeds − 1, paired across configurations). Every configuration is resolved at every
scale when the manifest loads, so a bad key fails before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from st_sweeps.claims.statistics import MeasuredStatistic, Statistic
from st_sweeps.claims.verdict import Rule
from st_sweeps.config import load_dataclass, read_yaml, to_dict
from st_sweeps.errors import ConfigError, require
from st_sweeps.experiment import ExperimentConfig
from st_sweeps.search_space import apply_params

SCALES = ("smoke", "cpu")
MIN_SEEDS = 3
_ID = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_FORBIDDEN = {"seed": "seeds are 0 … seeds − 1 (scales.<scale>.seeds)", "name": "the study names its runs"}


def _check_overrides(overrides: Mapping[str, Any], where: str) -> None:
    for key in overrides:
        require(isinstance(key, str) and bool(re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", key)), where,
                f"{key!r} is not a dotted experiment key", "keys like truncation.eps")
        require(key not in _FORBIDDEN, f"{where}.{key}", f"must not be set: {_FORBIDDEN.get(key)}", "leave it out")


@dataclass(frozen=True)
class Configuration:
    id: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    at_scale: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(bool(_ID.match(self.id)), "id", f"got {self.id!r}", "lower-case letters, digits and _")
        _check_overrides(self.overrides, "overrides")
        for scale, extra in self.at_scale.items():
            require(scale in SCALES, f"at_scale.{scale}", "unknown scale", SCALES)
            require(isinstance(extra, Mapping), f"at_scale.{scale}", f"expected a mapping, got {extra!r}")
            _check_overrides(extra, f"at_scale.{scale}")


@dataclass(frozen=True)
class Part:
    id: str
    statement: str
    statistic: Statistic
    rule: Rule
    units: str = ""

    def __post_init__(self) -> None:
        require(bool(re.match(r"^[0-9]+[a-z]?$", self.id)), "id", f"got {self.id!r}", "like 1a, 2, 4b")
        require(bool(self.statement.strip()), "statement", "is empty", "what this part tests, in words")


@dataclass(frozen=True)
class Claim:
    id: str
    title: str
    paper: str  # the paper's statement, in our words
    source: str  # where it stands: paper section, table or figure, and our reference notes
    parts: tuple[Part, ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require(bool(re.match(r"^[0-9]+$", self.id)), "id", f"got {self.id!r}", "a number as a string, e.g. '1'")
        require(len(self.parts) >= 1, "parts", "no parts", "one or more parts")
        ids = [p.id for p in self.parts]
        for i, pid in enumerate(ids):
            require(pid.startswith(self.id) and pid[len(self.id):] in ("",) + tuple("abcdefgh"), f"parts[{i}].id",
                    f"{pid!r} does not belong to claim {self.id}", f"{self.id}a, {self.id}b, ...")
            require(pid not in ids[:i], f"parts[{i}].id", f"{pid!r} is repeated", "unique ids")


@dataclass(frozen=True)
class Scale:
    seeds: int = MIN_SEEDS  # trained runs per configuration
    replicates: int = MIN_SEEDS  # independent repeats of each measurement that needs no training
    measure_fraction: float = 1.0  # Monte-Carlo sizes of measurements times this
    concurrency: int = 2  # trials at once (one CPU each)
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys over the base, every configuration

    def __post_init__(self) -> None:
        require(self.seeds >= MIN_SEEDS, "seeds", f"got {self.seeds!r}", f"an integer >= {MIN_SEEDS}")
        require(self.replicates >= MIN_SEEDS, "replicates", f"got {self.replicates!r}", f"an integer >= {MIN_SEEDS}")
        require(0 < self.measure_fraction <= 1, "measure_fraction", f"got {self.measure_fraction!r}", "a number in (0, 1]")
        require(self.concurrency >= 1, "concurrency", f"got {self.concurrency!r}", "an integer >= 1")
        _check_overrides(self.overrides, "overrides")


@dataclass(frozen=True)
class Scales:
    smoke: Scale
    cpu: Scale

    def get(self, name: str) -> Scale:
        require(name in SCALES, "--scale", f"got {name!r}", SCALES)
        return getattr(self, name)


@dataclass(frozen=True)
class Point:
    """One trained run of the grid: a configuration at a seed, as dotted experiment params."""

    config_id: str
    seed: int
    params: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.config_id}-s{self.seed}"


@dataclass(frozen=True)
class Manifest:
    title: str
    report_metric: str
    base: dict[str, Any]
    configurations: tuple[Configuration, ...]
    scales: Scales
    claims: tuple[Claim, ...]
    notes: tuple[str, ...] = ()  # shown above the table (e.g. the metric's noise floor)
    mlflow_experiment: str = "st_sweeps-claims"

    def __post_init__(self) -> None:
        ids = [c.id for c in self.configurations]
        for i, cid in enumerate(ids):
            require(cid not in ids[:i], f"configurations[{i}].id", f"{cid!r} is repeated", "unique ids")
        cids = [c.id for c in self.claims]
        for i, cid in enumerate(cids):
            require(cid not in cids[:i], f"claims[{i}].id", f"{cid!r} is repeated", "unique ids")
        for i, claim in enumerate(self.claims):
            for j, part in enumerate(claim.parts):
                for c in part.statistic.shown_configurations():
                    require(c in ids, f"claims[{i}].parts[{j}].statistic", f"unknown configuration {c!r}", ids)
        used = {c for claim in self.claims for p in claim.parts for c in p.statistic.configurations()}
        for i, c in enumerate(ids):
            require(c in used, f"configurations[{i}]", f"{c!r} is used by no claim", "remove it")
        for scale in SCALES:
            base = self.resolved_base()
            for i, conf in enumerate(self.configurations):
                try:
                    self.experiment(conf, scale, seed=0, base=base)
                except ConfigError as e:
                    raise e.at(f"configurations[{i}] ({conf.id}) at scale {scale}") from None

    # ------------------------------------------------------------------ configurations
    def configuration(self, config_id: str) -> Configuration:
        for c in self.configurations:
            if c.id == config_id:
                return c
        raise ConfigError("configuration", f"unknown {config_id!r}", [c.id for c in self.configurations])

    def resolved_base(self) -> dict[str, Any]:
        """The base experiment with every default filled in (what each trial's params go over)."""
        try:
            return to_dict(load_dataclass(ExperimentConfig, self.base, "base"))
        except ConfigError as e:
            raise e.at("base") from None

    def params(self, conf: Configuration, scale: str, seed: int) -> dict[str, Any]:
        return {**self.scales.get(scale).overrides, **conf.overrides, **conf.at_scale.get(scale, {}), "seed": seed}

    def experiment(self, conf: Configuration, scale: str, seed: int,
                   base: Mapping[str, Any] | None = None) -> ExperimentConfig:
        data = apply_params(base if base is not None else self.resolved_base(), self.params(conf, scale, seed))
        data["name"] = f"claims-{scale}-{conf.id}-s{seed}"
        return load_dataclass(ExperimentConfig, data)

    def points(self, scale: str) -> list[Point]:
        """The grid: every configuration a claim reads × seeds 0 … seeds − 1."""
        n = self.scales.get(scale).seeds
        return [Point(c.id, s, self.params(c, scale, s)) for s in range(n) for c in self.configurations]

    def measured_parts(self) -> list[Part]:
        return [p for c in self.claims for p in c.parts if isinstance(p.statistic, MeasuredStatistic)]


def load_manifest(path: str | Path) -> Manifest:
    """Strictly: unknown keys, wrong types and bad values raise ConfigError naming file and key."""
    path = Path(path)
    try:
        return load_dataclass(Manifest, read_yaml(path))
    except ConfigError as e:
        raise e.at(str(path)) from None
