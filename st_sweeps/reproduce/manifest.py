"""The manifest schema: the rows of a paper table, their configs at paper scale and the numbers the paper
reported, loaded strictly from ``reproductions/manifests/<dataset>.yaml``."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from st_sweeps.config import load_dataclass, read_yaml, to_dict
from st_sweeps.data import Dataset
from st_sweeps.errors import ConfigError, require
from st_sweeps.experiment import ExperimentConfig, experiment_from_dict
from st_sweeps.metrics import get as declared_metric


REPO_ROOT = Path(__file__).resolve().parents[2]


MANIFEST_DIR = REPO_ROOT / "reproductions" / "manifests"


RESULTS_DIR = REPO_ROOT / "reproductions" / "results"


# the registered data sets that have a manifest: a new one needs its loader and its YAML, nothing else
DATASETS = tuple(name for name in Dataset.registry.names() if (MANIFEST_DIR / f"{name}.yaml").exists())


SCALES = ("smoke", "paper")


EXIT_MISSING = 2  # missing data or weights, or a bad manifest / argument


SMOKE_BANNER = "SMOKE SCALE — not a reproduction"


Metric = Literal["nll_bpd", "nll_bpd_vardeq", "nelbo_bpd", "fid", "inception_score"]


Dequantization = Literal["uniform", "variational", "not_stated"]


@dataclass(frozen=True)
class MetricInfo:
    """A column of the paper's table and the declared metric (``st_sweeps.metrics``) it reads."""

    label: str
    key: str  # the evaluation's metric key
    decimals: int
    # the one dequantization this metric is measured with (its label names it), so a paper figure
    # under it must be that one; None: the paper figure says which (bits/dim metrics) or has none
    dequantization: Dequantization | None = None

    def __post_init__(self) -> None:
        declared_metric(self.key)  # an undeclared key is a bug here, not a user error

    @property
    def bits_per_dim(self) -> bool:
        return declared_metric(self.key).unit == "bpd"


METRICS: dict[str, MetricInfo] = {
    "nll_bpd": MetricInfo("NLL (bpd)", "eval/nll_bpd", 3),
    # only rows whose eval config has dequantization: variational measure it
    "nll_bpd_vardeq": MetricInfo("NLL, var. deq. (bpd)", "eval/nll_bpd_vardeq", 3, "variational"),
    "nelbo_bpd": MetricInfo("NELBO (bpd)", "eval/nelbo_bpd", 3),
    "fid": MetricInfo("FID", "eval/fid", 2),
    "inception_score": MetricInfo("IS", "eval/inception_score", 2),
}


@dataclass(frozen=True)
class PaperValue:
    """One number the paper reported (or null with a note saying why there is none)."""

    value: float | None = None
    note: str = ""
    dequantization: Dequantization | None = None  # bits/dim metrics only

    def __post_init__(self) -> None:
        require(self.value is not None or bool(self.note.strip()), "note",
                "a null value needs a note saying why", "e.g. 'not reported here'")
        if self.value is not None:
            require(math.isfinite(self.value), "value", f"got {self.value!r}", "a finite number or null")


@dataclass(frozen=True)
class AlsoReported:
    """A second figure the paper gave for a metric under another protocol: recorded, not compared."""

    metric: Metric
    value: float
    note: str
    dequantization: Dequantization | None = None

    def __post_init__(self) -> None:
        require(bool(self.note.strip()), "note", "say why this figure is not the compared one",
                "a non-empty string")


@dataclass(frozen=True)
class PaperNumbers:
    nll_bpd: PaperValue  # compared with our uniform-dequantization NLL
    nll_bpd_vardeq: PaperValue  # compared with our variational-dequantization NLL
    nelbo_bpd: PaperValue
    fid: PaperValue
    inception_score: PaperValue
    also_reported: tuple[AlsoReported, ...] = ()

    def __post_init__(self) -> None:
        for name in ("fid", "inception_score"):
            require(getattr(self, name).dequantization is None, f"{name}.dequantization",
                    "only bits/dim metrics have a dequantization", "null (leave it out)")
        require(self.nll_bpd.dequantization != "variational", "nll_bpd.dequantization",
                "a variational-dequantization figure is compared under nll_bpd_vardeq",
                "uniform, not_stated (or move the figure to nll_bpd_vardeq)")
        require(self.nll_bpd_vardeq.dequantization in (None, "variational"), "nll_bpd_vardeq.dequantization",
                f"got {self.nll_bpd_vardeq.dequantization!r}: this metric is variational dequantization",
                "variational, or null")
        for i, extra in enumerate(self.also_reported):
            if not METRICS[extra.metric].bits_per_dim:
                require(extra.dequantization is None, f"also_reported[{i}].dequantization",
                        "only bits/dim metrics have a dequantization", "null (leave it out)")

    def get(self, metric: str) -> PaperValue:
        return getattr(self, metric)


@dataclass(frozen=True)
class Protocol:
    """How the paper measured, in words for the table notes, plus the FID protocol's name."""

    fid_num_samples: int
    fid_reference: str
    paper_fid: Literal["tf_inception", "clean_fid"]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require(self.fid_num_samples >= 1, "fid_num_samples", f"got {self.fid_num_samples!r}", "an integer >= 1")


@dataclass(frozen=True)
class SmokeScale:
    """How every row is shrunk at ``--scale smoke`` (see ``smoke_config``)."""

    image_size: int = 16
    seeds: int = 2
    channels: int = 16
    channel_multipliers: tuple[int, ...] = (1, 2)
    blocks_per_resolution: int = 1
    steps: int = 12
    batch_size: int = 8
    warmup_steps: int = 4
    log_every_steps: int = 4
    nll_examples: int = 8  # capped at the row's own (0 stays 0)
    nll_tolerance: float = 1e-3
    nelbo_repeats: int = 1
    num_samples: int = 16
    sampler_steps: int = 20  # capped at the row's own
    eval_batch_size: int = 16
    dequantizer_steps: int = 2  # rows with variational dequantization; capped at the row's own
    dequantizer_batch_size: int = 8  # capped at the row's own
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted experiment keys, applied last

    def __post_init__(self) -> None:
        for name in ("image_size", "seeds", "channels", "blocks_per_resolution", "steps", "batch_size",
                     "log_every_steps", "nelbo_repeats", "sampler_steps", "eval_batch_size", "dequantizer_steps",
                     "dequantizer_batch_size"):
            require(getattr(self, name) >= 1, name, f"got {getattr(self, name)!r}", "an integer >= 1")
        for name in ("warmup_steps", "nll_examples", "num_samples"):
            require(getattr(self, name) >= 0, name, f"got {getattr(self, name)!r}", "an integer >= 0")
        require(self.nll_tolerance > 0, "nll_tolerance", f"got {self.nll_tolerance!r}", "a number > 0")
        require(len(self.channel_multipliers) >= 1, "channel_multipliers", "must not be empty", "e.g. [1, 2]")


FORBIDDEN_ROW_KEYS = {
    "seed": "seeds come from --seeds (0 … N−1)",
    "name": "the run name is <dataset>-<row id>",
}


@dataclass(frozen=True)
class Row:
    """One line of the paper's table: its experiment at paper scale and its reported numbers."""

    id: str
    label: str
    network_preset: str
    config: dict[str, Any]  # an experiment config without seed, name and model.network
    paper: PaperNumbers
    network_overrides: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from st_sweeps.networks import PRESETS

        require(bool(re.fullmatch(r"[a-z0-9_]+", self.id)), "id", f"got {self.id!r}",
                "lower-case letters, digits and _")
        require(self.network_preset in PRESETS, "network_preset", f"unknown preset {self.network_preset!r}",
                sorted(PRESETS))
        for key, why in FORBIDDEN_ROW_KEYS.items():
            require(key not in self.config, f"config.{key}", f"must not be set: {why}", "leave it out")
        require("network" not in (self.config.get("model") or {}), "config.model.network",
                "must not be set: the network comes from network_preset (+ network_overrides)",
                "network_preset, network_overrides")
        self.network_spec()  # strict: unknown override keys name network_overrides
        try:
            self.experiment(seed=0, dataset_name="check")
        except ConfigError as e:
            raise e.at("config") from None

    def network_spec(self) -> dict[str, Any]:
        """The network's YAML mapping: the preset's fields with ``network_overrides`` on top."""
        from st_sweeps.networks import PRESETS, Network

        factory, _ = PRESETS[self.network_preset]
        spec = {**to_dict(factory()), **self.network_overrides}
        Network.registry.build(spec, "network_overrides")
        return spec

    def experiment_dict(self, seed: int, dataset_name: str) -> dict[str, Any]:
        data = copy.deepcopy(self.config)
        data.setdefault("model", {})
        data["model"] = {**data["model"], "network": self.network_spec()}
        data["seed"] = seed
        data["name"] = f"{dataset_name}-{self.id}"
        return data

    def experiment(self, seed: int, dataset_name: str) -> ExperimentConfig:
        return experiment_from_dict(self.experiment_dict(seed, dataset_name))


@dataclass(frozen=True)
class Manifest:
    dataset: str  # one of DATASETS
    title: str
    protocol: Protocol
    rows: tuple[Row, ...]
    smoke: SmokeScale = field(default_factory=SmokeScale)

    def __post_init__(self) -> None:
        require(self.dataset in DATASETS, "dataset", f"got {self.dataset!r}", DATASETS)
        require(len(self.rows) >= 1, "rows", "no rows", "one or more rows")
        seen: set[str] = set()
        for i, row in enumerate(self.rows):
            require(row.id not in seen, f"rows[{i}].id", f"duplicate row id {row.id!r}", "unique ids")
            seen.add(row.id)
            got = row.config.get("data", {}).get("dataset", {})
            got = got.get("name") if isinstance(got, Mapping) else got
            require(got == self.dataset, f"rows[{i}].config.data.dataset.name",
                    f"{got!r} is not the manifest's data set", [self.dataset])

    def row(self, row_id: str) -> Row:
        for r in self.rows:
            if r.id == row_id:
                return r
        raise ConfigError("--rows", f"unknown row {row_id!r} in {self.dataset}", [r.id for r in self.rows])


def manifest_path(dataset: str) -> Path:
    require(dataset in DATASETS, "dataset", f"got {dataset!r}", DATASETS)
    return MANIFEST_DIR / f"{dataset}.yaml"


def load_manifest(path: str | Path) -> Manifest:
    """Strictly: unknown keys, wrong types and bad values raise ConfigError naming file and key."""
    path = Path(path)
    data = read_yaml(path)
    try:
        return load_dataclass(Manifest, data)
    except ConfigError as e:
        raise e.at(str(path)) from None
