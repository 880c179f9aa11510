"""Rebuild the paper's tables: ``python reproductions/<dataset>.py [--scale smoke|paper] ...``.

A manifest (``reproductions/manifests/<dataset>.yaml``, loaded strictly into ``Manifest``) pins,
for every row of the paper's table, the experiment config at paper scale and the numbers the paper
reported. This module trains and evaluates each (row, seed) — in-process with the ``Trainer``, or
over Ray workers with ``st_sweeps.ray_train`` — and writes a table of paper vs. ours (Markdown, CSV,
LaTeX) and a figure.

Scales:
- ``paper``: the manifest's configs as pinned. Before anything trains, the data files are counted
  against ``st_sweeps.data.prepare``'s expectations and the Inception weights are looked up; if
  something is missing the command stops with exit status 2 and says what goes where.
- ``smoke``: every row shrunk by one rule (``smoke_config``) to run in seconds on a CPU: the same
  SDE, truncation, objective, network family, optimiser and sampler, with a tiny network, tiny
  images, a few steps and a tiny evaluation. Its numbers check the pipeline; the tables say so in
  their header and in every cell ("[smoke]"), and never present them as a reproduction.

Layout of the output folder (default ``reproductions/results/<dataset>/<scale>/``)::

    <row_id>/seed_<n>/         the Trainer's run folder (config.yaml, metrics.jsonl, checkpoints/)
    <row_id>/seed_<n>/result.json   written when the (row, seed) is finished: final metrics and
                                    the reasons for missing ones
    <row_id>/seed_<n>_ray/     Ray Train's checkpoint index (only with --workers > 1)
    table.md, table.csv, table.tex, figure.png
    mlflow_runs.json           the MLflow run ids, so a rerun logs into the same runs
    gpu_hours.json             the measured step time behind the GPU-hours estimate

Resuming: a (row, seed) with ``result.json`` and the checkpoint of its last step is finished and
is not trained again; an interrupted one resumes from its latest checkpoint (the Trainer does
that). The tables are a pure function of the manifest and the files above, so a rerun writes them
byte for byte the same.

MLflow: one experiment per data set (``st_sweeps-reproduce-<dataset>``); per invocation scale one
parent run (tag ``kind=reproduction``) holding the tables as artifacts; under it one run per row
(tags ``kind=row``, ``row_id``, ``scale``) with the paper numbers as params and the seed
aggregates as metrics; under each row run one child run per seed (tag ``kind=seed``) with the
training curves.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import io
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from st_sweeps.config import apply_overrides, load_dataclass, read_yaml, to_dict
from st_sweeps.errors import ConfigError, require
from st_sweeps.experiment import ExperimentConfig, config_params, config_yaml, experiment_from_dict
from st_sweeps.inception_score import DEFAULT_SPLITS
from st_sweeps.tracking import NullTracker

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST_DIR = REPO_ROOT / "reproductions" / "manifests"
RESULTS_DIR = REPO_ROOT / "reproductions" / "results"
DATASETS = ("cifar10", "celeba", "celebahq", "stl10", "imagenet32")
SCALES = ("smoke", "paper")
EXIT_MISSING = 2  # missing data or weights, or a bad manifest / argument
SMOKE_BANNER = "SMOKE SCALE — not a reproduction"

Metric = Literal["nll_bpd", "nll_bpd_vardeq", "nelbo_bpd", "fid", "inception_score"]
Dequantization = Literal["uniform", "variational", "not_stated"]


@dataclass(frozen=True)
class MetricInfo:
    label: str
    key: str  # the evaluation's metric key
    decimals: int
    bits_per_dim: bool
    # the one dequantization this metric is measured with (its label names it), so a paper figure
    # under it must be that one; None: the paper figure says which (bits/dim metrics) or has none
    dequantization: Dequantization | None = None


METRICS: dict[str, MetricInfo] = {
    "nll_bpd": MetricInfo("NLL (bpd)", "eval/nll_bpd", 3, True),
    # only rows whose eval config has dequantization: variational measure it
    "nll_bpd_vardeq": MetricInfo("NLL, var. deq. (bpd)", "eval/nll_bpd_vardeq", 3, True, "variational"),
    "nelbo_bpd": MetricInfo("NELBO (bpd)", "eval/nelbo_bpd", 3, True),
    "fid": MetricInfo("FID", "eval/fid", 2, False),
    "inception_score": MetricInfo("IS", "eval/inception_score", 2, False),
}


# ================================================================================ manifest schema
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
    dataset: Literal["cifar10", "celeba", "celebahq", "stl10", "imagenet32"]
    title: str
    protocol: Protocol
    rows: tuple[Row, ...]
    smoke: SmokeScale = field(default_factory=SmokeScale)

    def __post_init__(self) -> None:
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


# ================================================================================ configs per scale
def _has_fid(config: ExperimentConfig) -> bool:
    return config.eval.sample_quality in ("fid", "both")


def smoke_config(row: Row, smoke: SmokeScale, dataset: str, seed: int, fid_available: bool) -> ExperimentConfig:
    """The row shrunk to seconds on a CPU. Kept: SDE, truncation (ε and the τ prior), objective and
    weighting, network family and its switches, time input, optimiser, EMA rate, sampler kind.
    Changed: image size; network width, levels (attention at the lowest level if the row's network
    has attention, else none), blocks and time-embedding width; steps, batch, warm-up; evaluation
    size and ODE tolerances (NLL examples and sampler steps capped at the row's own); with
    variational dequantization, a few dequantizer steps on small batches (capped at the row's
    own), so its NLL line is measured, not skipped; sample quality: FID (and the pixel Fréchet
    distance) when Inception weights exist, else the pixel distance only. Kept in the evaluation:
    the dequantization, the Inception Score's splits (any sample count ≥ splits works; the paper
    rows' 1 split always does). Then ``smoke.overrides``."""
    s = smoke
    data = row.experiment_dict(seed, dataset)
    paper_eval = data.get("eval", {})
    data["data"]["dataset"]["image_size"] = s.image_size
    net = data["model"]["network"]
    lowest = s.image_size // 2 ** (len(s.channel_multipliers) - 1)
    net.update(channels=s.channels, channel_multipliers=list(s.channel_multipliers),
               blocks_per_resolution=s.blocks_per_resolution, time_embedding_dim=None,
               attention_resolutions=[lowest] if net.get("attention_resolutions") else [])
    data["train"] = {**data.get("train", {}), "steps": s.steps, "batch_size": s.batch_size, "micro_batch_size": 0,
                     "eval_every_steps": 0, "checkpoint_every_steps": 0, "log_every_steps": s.log_every_steps}
    data["optim"] = {**data.get("optim", {}), "warmup_steps": s.warmup_steps}
    defaults = ExperimentConfig().eval
    data["eval"] = {
        **paper_eval,
        "nll_examples": min(s.nll_examples, paper_eval.get("nll_examples", defaults.nll_examples)),
        "nll_rtol": s.nll_tolerance, "nll_atol": s.nll_tolerance, "nelbo_repeats": s.nelbo_repeats,
        "num_samples": s.num_samples, "batch_size": s.eval_batch_size,
        "sampler_steps": min(s.sampler_steps, paper_eval.get("sampler_steps", defaults.sampler_steps)),
        "sample_quality": "both" if fid_available else "pixel_fd",
    }
    if paper_eval.get("dequantization") == "variational":
        data["eval"].update(
            dequantizer_steps=min(s.dequantizer_steps, paper_eval.get("dequantizer_steps", defaults.dequantizer_steps)),
            dequantizer_batch_size=min(s.dequantizer_batch_size,
                                       paper_eval.get("dequantizer_batch_size", defaults.dequantizer_batch_size)))
    data = apply_overrides(data, s.overrides, ExperimentConfig)
    try:
        return experiment_from_dict(data)
    except ConfigError as e:
        raise e.at(f"smoke config of row {row.id}") from None


def row_config(manifest: Manifest, row: Row, scale: str, seed: int, fid_available: bool) -> ExperimentConfig:
    if scale == "paper":
        return row.experiment(seed, manifest.dataset)
    return smoke_config(row, manifest.smoke, manifest.dataset, seed, fid_available)


def expected_nfe(config: ExperimentConfig) -> str:
    """The sampler's NFE from its config (the ODE sampler's is adaptive)."""
    ev = config.eval
    if ev.sampler == "ode":
        return "adaptive (RK45)"
    if ev.sampler == "euler_maruyama":
        return str(ev.sampler_steps + 1)
    p = 0 if ev.predictor == "none" else 1
    c = 0 if ev.corrector == "none" else ev.corrector_steps
    return str(ev.sampler_steps * (p + c) + 1)


def describe_config(config: ExperimentConfig) -> str:
    """One line naming what a row trains and how it is evaluated."""
    c = config
    net = c.model.network
    sde = ", ".join(f"{k}={v}" for k, v in to_dict(c.sde).items() if k != "name")
    prior = to_dict(c.truncation.prior)
    eps = c.truncation.eps
    trunc = (f"hard, τ = ε = {eps:g}" if prior["name"] == "fixed"
             else f"soft, τ ~ {_short(prior)} on [ε = {eps:g}, T]")
    obj = to_dict(c.objective)
    obj_text = obj.pop("name") + "(" + ", ".join(f"{k}={_short(v)}" for k, v in obj.items()) + ")"
    ev = c.eval
    sampler = ev.sampler if ev.sampler != "pc" else f"pc({ev.predictor}+{ev.corrector}" + (
        f", snr {ev.snr:g}" if ev.corrector != "none" else "") + ")"
    deq = "uniform dequantization" + (
        f", and variational (q fitted {ev.dequantizer_steps} steps at batch {ev.dequantizer_batch_size}, "
        f"lr {ev.dequantizer_lr:g}, hidden {ev.dequantizer_hidden})" if ev.dequantization == "variational" else "")
    nll = (f"NLL/NELBO on {ev.nll_examples} test images ({deq}, rtol=atol={ev.nll_rtol:g}, "
           f"{ev.nll_repeats} pass(es), NELBO {ev.nelbo_repeats})" if ev.nll_examples else "no NLL")
    quality = ev.sample_quality + (f", IS over {_splits(ev.inception_score_splits)}" if _has_fid(c) else "")
    return (f"{c.data.dataset.shape[1]}px, {type(c.sde).registry_name}({sde}); {type(net).registry_name} "  # type: ignore[attr-defined]
            f"nf={getattr(net, 'channels', '?')} mult={list(getattr(net, 'channel_multipliers', []))} "
            f"blocks={getattr(net, 'blocks_per_resolution', '?')}; truncation {trunc}; objective {obj_text}; "
            f"batch {c.train.batch_size} × {c.train.steps} steps, lr {c.optim.lr:g}, warm-up {c.optim.warmup_steps}, "
            f"EMA {c.optim.ema_decay:g}; sampler {sampler}, {ev.sampler_steps} steps, NFE {expected_nfe(c)}; "
            f"{ev.num_samples} samples ({quality}); {nll}")


def _splits(n: int) -> str:
    return f"{n} split" + ("s" if n != 1 else "")


def _short(v: Any) -> str:
    if v is None:
        return "auto"
    if isinstance(v, Mapping):
        inner = ", ".join(f"{k}={_short(x)}" for k, x in v.items() if k != "name")
        return f"{v.get('name', '')}({inner})" if inner else str(v.get("name", ""))
    return str(v)


# ================================================================================ prerequisites
def inception_weights_status() -> tuple[bool, str]:
    """(available, the weights file or why there is none), as the FID evaluation will see it."""
    from st_sweeps.evaluate import INCEPTION_WEIGHTS_ENV, inception_weights_path
    from st_sweeps.fid import missing_weights_message, resolve_weights_path

    given = inception_weights_path()
    missing = missing_weights_message(given)
    if missing is not None:
        how = f" (${INCEPTION_WEIGHTS_ENV} is {given})" if given else \
            f" Here: set ${INCEPTION_WEIGHTS_ENV} to the weights file, or copy it to torch-fidelity's cache."
        return False, missing.removeprefix("FID not computed: ") + how
    return True, str(resolve_weights_path(given))


def missing_data(dataset: str, root: Path, scale: str, release: str | None = None) -> list[str]:
    """Problems with the data files under ``root``: at paper scale every file is counted against
    ``st_sweeps.data.prepare``'s expectations; at smoke scale the files must only exist.
    ``release``: the data set's ``source`` field where it has several releases (ImageNet32)."""
    from st_sweeps.data import prepare

    source = prepare.select(dataset, release)
    if scale == "paper":
        _, problems = prepare.check(source, root)
    else:
        problems = [f"missing  {root / f.path}" for f in source.files if not (root / f.path).exists()]
    if problems:
        problems.append(source.manual.format(root=root))
    return problems


# ================================================================================ results on disk
@dataclass(frozen=True)
class SeedResult:
    row_id: str
    seed: int
    scale: str
    step: int
    metrics: dict[str, float]  # finite values only
    missing: dict[str, str]  # metric key -> why there is no value
    wall_s: float  # training + evaluation time of the invocation that finished it

    @staticmethod
    def read(path: Path) -> "SeedResult":
        data = json.loads(path.read_text())
        return SeedResult(row_id=data["row_id"], seed=data["seed"], scale=data["scale"], step=data["step"],
                          metrics=data["metrics"], missing=data["missing"], wall_s=data["wall_s"])


def run_dir(out: Path, row_id: str, seed: int) -> Path:
    return out / row_id / f"seed_{seed}"


def result_path(out: Path, row_id: str, seed: int) -> Path:
    return run_dir(out, row_id, seed) / "result.json"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def finished_result(out: Path, row_id: str, seed: int, config: ExperimentConfig) -> SeedResult | None:
    """The stored result when (row, seed) is finished: result.json written for this very config and
    the checkpoint of the last step present. A result for another config is an error, not a rerun."""
    from st_sweeps import checkpoint as ckpt

    path = result_path(out, row_id, seed)
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    if stored.get("config") != to_dict(config):
        raise ConfigError(str(path), "was written for a different config (the manifest, the scale or the "
                          "availability of Inception weights changed)",
                          f"delete {path.parent} to train it again, or use another --out")
    if not ckpt.checkpoint_path(path.parent / "checkpoints", config.train.steps).exists():
        return None
    return SeedResult.read(path)


def save_result(out: Path, config: ExperimentConfig, row_id: str, seed: int, scale: str, step: int,
                final: Mapping[str, float], missing: Mapping[str, str], wall_s: float) -> SeedResult:
    metrics = {k: float(v) for k, v in sorted(final.items())
               if isinstance(v, (int, float)) and math.isfinite(float(v))}
    result = SeedResult(row_id, seed, scale, step, metrics, dict(sorted(missing.items())), round(wall_s, 3))
    payload = {**dataclasses.asdict(result), "config": to_dict(config)}
    _write_atomic(result_path(out, row_id, seed), json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return result


# ================================================================================ MLflow runs
class RunIds:
    """``mlflow_runs.json``: the run ids per tracking URI, so a rerun logs into the same runs."""

    def __init__(self, path: Path, tracking_uri: str):
        self.path = path
        self.uri = tracking_uri
        self.all: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.ids: dict[str, Any] = self.all.setdefault(tracking_uri, {})

    def get(self, *keys: str) -> str | None:
        node: Any = self.ids
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node if isinstance(node, str) else None

    def set(self, run_id: str, *keys: str) -> None:
        node = self.ids
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = run_id
        _write_atomic(self.path, json.dumps(self.all, indent=1, sort_keys=True) + "\n")


def open_run(ids: RunIds, keys: tuple[str, ...], experiment: str, name: str, tags: Mapping[str, str],
             parent: str | None) -> Any:
    """The MLflow run stored under ``keys`` (reopened), or a new one (its id stored)."""
    from st_sweeps.tracking import MlflowTracker

    known = ids.get(*keys)
    if known:
        try:
            tracker = MlflowTracker(ids.uri, experiment, run_id=known)
            tracker.set_tags(tags)
            return tracker
        except Exception as e:  # deleted, or another store behind the same URI: start a new run
            print(f"warning: MLflow run {known} for {'/'.join(keys)} could not be reopened "
                  f"({type(e).__name__}: {e}); creating a new one", file=sys.stderr)
    tracker = MlflowTracker(ids.uri, experiment, run_name=name, parent_run_id=parent, tags=tags)
    ids.set(tracker.run_id, *keys)
    return tracker


def log_changed_metrics(tracker: Any, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log only values that differ from the run's latest ones, so a rerun adds no duplicate points."""
    latest = tracker.client.get_run(tracker.run_id).data.metrics
    from st_sweeps.tracking import mlflow_safe_key

    changed = {k: v for k, v in metrics.items() if latest.get(mlflow_safe_key(k)) != v}
    if changed:
        tracker.log_metrics(changed, step)


class TagRecorder(NullTracker):
    """A tracker that only remembers tags (the evaluation reports missing-FID reasons as tags)."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})


# ================================================================================ training one seed
@dataclass(frozen=True)
class Launch:
    """How to run the training: in-process, or over Ray workers."""

    workers: int = 1
    gpus_per_worker: float = 0.0
    address: str | None = None
    local: bool = False
    data_root: Path | None = None
    device: str | None = None  # in-process only; None: cuda if available
    progress: bool = True

    @property
    def use_ray(self) -> bool:
        return self.workers > 1 and not self.local


def missing_reasons(config: ExperimentConfig, tags: Mapping[str, str], weights_status: str) -> dict[str, str]:
    """Why a metric will have no value, as known from the config and the evaluation's tags."""
    reasons: dict[str, str] = {}
    if config.eval.nll_examples == 0:
        why = "not evaluated: eval.nll_examples = 0 for this row (the paper reports no likelihood here)"
        reasons["eval/nll_bpd"] = reasons["eval/nelbo_bpd"] = reasons["eval/nll_bpd_vardeq"] = why
    elif config.eval.dequantization != "variational":
        reasons["eval/nll_bpd_vardeq"] = ("not evaluated: this row's eval.dequantization is "
                                          f"{config.eval.dequantization!r} (variational is opt-in)")
    if config.eval.num_samples == 0:
        reasons["eval/fid"] = "not evaluated: eval.num_samples = 0"
    elif not _has_fid(config):
        reasons["eval/fid"] = f"not computed: {weights_status}"
    elif "eval/fid_missing_reason" in tags:
        reasons["eval/fid"] = f"not computed: {tags['eval/fid_missing_reason']}"
    if "eval/fid" in reasons:  # the IS comes from FID's Inception pass: missing with it, for its reason
        reasons["eval/inception_score"] = reasons["eval/fid"]
    elif "eval/inception_score_missing_reason" in tags:
        reasons["eval/inception_score"] = f"not computed: {tags['eval/inception_score_missing_reason']}"
    return reasons


def train_local(config: ExperimentConfig, directory: Path, launch: Launch, tracker: Any) -> dict[str, float]:
    """Train (resuming from ``directory``) and evaluate in this process; returns the final metrics."""
    from st_sweeps.trainer import Trainer

    trainer = Trainer(config, directory, device=launch.device, data_root=launch.data_root, tracker=tracker,
                      progress=launch.progress)
    final = trainer.fit()
    if not final:
        # the run had reached its last step and saved it, but was stopped before its result was
        # written: evaluate the restored model again
        final = trainer.evaluate()
    return final


def train_ray(config: ExperimentConfig, directory: Path, launch: Launch, tracking_uri: str, experiment: str,
              run_id: str) -> tuple[dict[str, float], dict[str, str]]:
    """Train over ``launch.workers`` Ray workers (``st_sweeps.ray_train``), rank 0 writing its
    Trainer folder to ``directory`` and logging into MLflow run ``run_id``; Ray's own checkpoint
    index lives beside it in ``<directory>_ray/``. Returns (final metrics, the run's tags)."""
    try:
        from st_sweeps import ray_train
    except ImportError as e:
        raise RuntimeError(f"--workers {launch.workers} needs st_sweeps.ray_train, which cannot be imported "
                           f"({e}); run with --workers 1 or --local") from None
    from st_sweeps.tracking import MlflowTracker

    # a local Ray cluster's workers inherit this environment: let them import st_sweeps from this
    # checkout even when it is not installed (a remote cluster needs it installed on every node)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    result = ray_train.run_ray_train(
        config, run_name=f"{directory.name}_ray", storage_path=directory.parent, workers=launch.workers,
        gpus_per_worker=launch.gpus_per_worker, data_root=launch.data_root, address=launch.address,
        tracking=ray_train.MlflowTarget(tracking_uri, experiment, run_id=run_id), run_dir=directory,
        progress=launch.progress)
    final = {k: float(v) for k, v in (result.metrics or {}).items()
             if k.startswith("eval/") and isinstance(v, (int, float))}
    if not final:  # finished earlier but stopped before its result was written: evaluate here
        final = train_local(config, directory, dataclasses.replace(launch, workers=1), None)
    tags = dict(MlflowTracker(tracking_uri, experiment, run_id=run_id).client.get_run(run_id).data.tags)
    return final, tags


# ================================================================================ aggregation
@dataclass(frozen=True)
class Cell:
    """One (row, metric) line of the table."""

    row: Row
    metric: str
    paper: float | None
    paper_note: str
    paper_dequantization: str | None
    values: tuple[float, ...]  # ours, one per seed (empty when missing)
    missing_reason: str
    n_seeds: int
    comparable: bool = True  # False for figures recorded under a protocol we do not implement

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    @property
    def diff(self) -> float | None:
        m = self.mean
        return None if m is None or self.paper is None or not self.comparable else m - self.paper


def aggregate(row: Row, results: Sequence[SeedResult], seeds: Sequence[int], not_run: str) -> list[Cell]:
    cells = []
    for metric, info in METRICS.items():
        pv = row.paper.get(metric)
        values: tuple[float, ...] = ()
        reason = ""
        if len(results) < len(seeds):
            done = {r.seed for r in results}
            reason = not_run.format(seeds=", ".join(str(s) for s in seeds if s not in done))
        else:
            lacking = [r for r in results if info.key not in r.metrics]
            if lacking:
                r = lacking[0]
                why = r.missing.get(info.key, "the evaluation returned no value")
                reason = why if len(lacking) == len(results) else f"seed {r.seed}: {why}"
            else:
                values = tuple(r.metrics[info.key] for r in results)
        cells.append(Cell(row, metric, pv.value, pv.note, pv.dequantization, values, reason, len(seeds)))
        for extra in row.paper.also_reported:
            if extra.metric == metric:
                cells.append(Cell(row, metric, extra.value, extra.note, extra.dequantization, (),
                                  f"not comparable: {extra.note}", len(seeds), comparable=False))
    return cells


# ================================================================================ tables
def _fmt(v: float | None, decimals: int) -> str:
    return "" if v is None else f"{v:.{decimals}f}"


def format_paper(v: float) -> str:
    """The reported figure as printed in the paper (2 decimals), exact for every manifest number."""
    text = f"{v:.2f}"
    return text if float(text) == v else repr(v)


def metric_label(cell: Cell) -> str:
    label = METRICS[cell.metric].label
    if METRICS[cell.metric].dequantization is not None:  # the label names it already
        return label
    if cell.paper_dequantization and cell.paper_dequantization != "not_stated":
        label += f", {cell.paper_dequantization} deq."
    return label


def paper_text(cell: Cell) -> str:
    return format_paper(cell.paper) if cell.paper is not None else cell.paper_note


def ours_texts(cell: Cell, scale: str) -> tuple[str, str, str]:
    """(ours, ours − paper, spread) cells, each naming the scale that produced it."""
    tag = f" [{scale}]"
    d = METRICS[cell.metric].decimals
    if not cell.values:
        return f"missing — {short_reason(cell.missing_reason)}", "—", "—"
    mean = _fmt(cell.mean, d) + tag
    diff = "—" if cell.diff is None else f"{cell.diff:+.{d}f}{tag}"
    if len(cell.values) >= 2:
        spread = f"sd {_fmt(cell.std, d)}, {_fmt(min(cell.values), d)}–{_fmt(max(cell.values), d)}{tag}"
    else:
        spread = f"one seed{tag}"
    return mean, diff, spread


def short_reason(reason: str, limit: int = 120) -> str:
    """The first sentence of a long reason (the CSV keeps it whole)."""
    if len(reason) <= limit:
        return reason
    head = reason.split(". ", 1)[0].rstrip(".")
    return f"{head} (details: table.csv, missing_reason)"


def header_lines(manifest: Manifest, scale: str) -> list[str]:
    if scale == "smoke":
        return [f"# {manifest.title}: Soft Truncation — {SMOKE_BANNER}", "",
                f"**{SMOKE_BANNER}.** Every \"ours\" value comes from a tiny network trained for a few steps on "
                f"{manifest.smoke.image_size}×{manifest.smoke.image_size} images; it checks the pipeline end to end "
                "and says nothing about the paper's numbers. Run `--scale paper` for the reproduction."]
    return [f"# {manifest.title}: Soft Truncation — paper scale", "",
            "Ours: the manifest's paper-scale configs, EMA weights at the last step."]


def notes_lines(manifest: Manifest, scale: str, configs: Mapping[str, ExperimentConfig],
                estimate: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Notes", ""]
    lines.append(f"- FID protocol here: torch-fidelity (TF-Inception path), {manifest.protocol.fid_num_samples:,} "
                 f"samples at paper scale, against {manifest.protocol.fid_reference}. The paper's: "
                 + ("TF Inception against the training images — the same protocol."
                    if manifest.protocol.paper_fid == "tf_inception"
                    else "a clean-fid variant in 'clean' mode (PIL bicubic resizing) — a different protocol."))
    splits = sorted({c.eval.inception_score_splits for c in configs.values()})
    if splits:
        how = (_splits(splits[0]) if len(splits) == 1
               else " or ".join(map(str, splits)) + " splits (per row: see its config line)")
        lines.append(f"- Inception Score here: from the logits ('logits_unbiased') of the FID pass, exp of the mean "
                     f"KL over {how} of the samples (eval.inception_score_splits; 1 is the paper's protocol, all "
                     f"samples scored together; torch-fidelity's isc default is {DEFAULT_SPLITS}); missing whenever "
                     "FID is.")
    lines.append("- NLL here: `NLL (bpd)` is uniform dequantization, compared with the paper's uniform (or unstated) "
                 "figure. `NLL, var. deq. (bpd)` is variational dequantization, measured only for rows whose config "
                 "sets eval.dequantization = variational: a small q(u|x) of our own (a network with a per-pixel "
                 "logistic output, not the paper's dequantizer) fitted on training images against the frozen EMA "
                 "model's SDE bound, then the ODE bound E_q[−log p + log q]; compared with the paper's variational "
                 "figure.")
    lines.extend(f"- {n}" for n in manifest.protocol.notes)
    lines += ["", "### Rows", ""]
    for row in manifest.rows:
        lines.append(f"- **{row.label}** (`{row.id}`, network preset `{row.network_preset}`)")
        if row.id in configs:
            lines.append(f"  - config at {scale} scale: {describe_config(configs[row.id])}")
        lines.extend(f"  - {n}" for n in row.notes)
    lines += ["", "### Estimated compute at paper scale", ""]
    lines.extend(estimate_lines(manifest, estimate))
    return lines


def markdown_table(manifest: Manifest, scale: str, cells: Sequence[Cell], configs: Mapping[str, ExperimentConfig],
                   estimate: Mapping[str, Any] | None) -> str:
    ours_head = "ours (smoke scale — not a reproduction)" if scale == "smoke" else "ours (paper scale)"
    out = header_lines(manifest, scale) + [""]
    out.append(f"| row | metric | paper | {ours_head} | ours − paper | spread over seeds | seeds | scale |")
    out.append("|---|---|---|---|---|---|---|---|")
    for c in cells:
        ours, diff, spread = ours_texts(c, scale)
        out.append("| " + " | ".join(_md(x) for x in (c.row.label, metric_label(c), paper_text(c), ours, diff, spread,
                                                        str(c.n_seeds), scale)) + " |")
    out.append("")
    out += notes_lines(manifest, scale, configs, estimate)
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


CSV_COLUMNS = ("dataset", "row_id", "row", "metric", "paper", "paper_note", "paper_dequantization", "comparable",
               "scale", "ours_mean", "ours_std", "ours_min", "ours_max", "n_seeds_with_value", "n_seeds",
               "ours_minus_paper", "missing_reason")


def csv_table(manifest: Manifest, scale: str, cells: Sequence[Cell]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in cells:
        num = (lambda v: "" if v is None else repr(float(v)))
        w.writerow([manifest.dataset, c.row.id, c.row.label, c.metric, num(c.paper), c.paper_note,
                    c.paper_dequantization or "", "yes" if c.comparable else "no", scale, num(c.mean), num(c.std),
                    num(min(c.values) if c.values else None), num(max(c.values) if c.values else None),
                    len(c.values), c.n_seeds, num(c.diff), c.missing_reason])
    return buf.getvalue()


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "−": "$-$", "–": "--", "—": "---",
          "×": r"$\times$", "±": r"$\pm$", "ε": r"$\varepsilon$", "τ": r"$\tau$", "σ": r"$\sigma$",
          "≈": r"$\approx$", "…": r"\dots{}", "’": "'", "²": r"\textsuperscript{2}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def latex_table(manifest: Manifest, scale: str, cells: Sequence[Cell]) -> str:
    caption = f"{manifest.title}: Soft Truncation, paper vs.\\ ours"
    if scale == "smoke":
        caption += f" --- {latex_escape(SMOKE_BANNER)}: ours from tiny smoke-scale runs"
    lines = [r"% written by st_sweeps.reproduce; needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             r"\small", r"\begin{tabular}{llllll}", r"\toprule",
             r"Row & Metric & Paper & Ours (" + scale + r" scale) & Ours $-$ paper & Spread \\", r"\midrule"]
    for c in cells:
        ours, diff, spread = ours_texts(c, scale)
        lines.append(" & ".join(latex_escape(x) for x in (c.row.label, metric_label(c), paper_text(c), ours, diff,
                                                          spread)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}",
              rf"\label{{tab:st-{manifest.dataset}-{scale}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_figure(manifest: Manifest, scale: str, cells: Sequence[Cell], path: Path) -> Path:
    """Grouped bars per metric: the paper's figure and ours (bar: mean over seeds; whisker: min–max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if any(c.metric == m and c.comparable and (c.paper is not None or c.values)
                                         for c in cells)]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.2 * max(len(metrics), 1), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = [c for c in cells if c.metric == metric and c.comparable]
        xs = range(len(rows))
        labelled: set[str] = set()

        def label(name: str) -> str | None:  # each series once in the legend
            if name in labelled:
                return None
            labelled.add(name)
            return name

        for i, c in enumerate(rows):
            if c.paper is not None:
                ax.bar(i - 0.2, c.paper, 0.4, color="0.7", hatch="//", label=label("paper"))
            else:
                ax.text(i - 0.2, 0, "not\nreported", ha="center", va="bottom", fontsize=7)
            if c.values:
                lo, hi = min(c.values), max(c.values)
                ax.bar(i + 0.2, c.mean, 0.4, color="tab:orange" if scale == "smoke" else "tab:blue",
                       yerr=[[c.mean - lo], [hi - c.mean]], capsize=3, label=label(f"ours ({scale})"))
            else:
                ax.text(i + 0.2, 0, "missing", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_xticks(list(xs), [c.row.label for c in rows], rotation=20, ha="right", fontsize=7)
        ax.set_title(METRICS[metric].label)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7)
    title = f"{manifest.title}: paper vs. ours ({scale} scale)"
    if scale == "smoke":
        title += f"\n{SMOKE_BANNER}"
    fig.suptitle(title, fontsize=10, color="tab:red" if scale == "smoke" else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


@dataclass(frozen=True)
class TableFiles:
    markdown: Path
    csv: Path
    latex: Path
    figure: Path
    weights: Path | None = None  # the rows' loss weight over noise levels, ours vs official


def write_tables(manifest: Manifest, scale: str, out: Path, cells: Sequence[Cell],
                 configs: Mapping[str, ExperimentConfig], estimate: Mapping[str, Any] | None) -> TableFiles:
    files = TableFiles(out / "table.md", out / "table.csv", out / "table.tex", out / "figure.png")
    _write_atomic(files.markdown, markdown_table(manifest, scale, cells, configs, estimate))
    _write_atomic(files.csv, csv_table(manifest, scale, cells))
    _write_atomic(files.latex, latex_table(manifest, scale, cells))
    write_figure(manifest, scale, cells, files.figure)
    from st_sweeps.parity import manifest_weight_figure

    weights = manifest_weight_figure(manifest, out / "weights.png")
    return dataclasses.replace(files, weights=weights)


# ================================================================================ compute estimate
# The authors' figure (shared/reference/soft-truncation.md): CIFAR-10 runs of about 1.3M steps at
# batch 128 took "a few days on 4 V100s" — read here as 2 to 4 days.
AUTHORS_STEPS, AUTHORS_BATCH, AUTHORS_GPUS, AUTHORS_DAYS = 1_300_000, 128, 4, (2.0, 4.0)
ANCHOR_PRESET = "ddpmpp_cifar10"  # the network we assume behind that figure (DDPM++/NCSN++ cost about the same)


def time_training_steps(config: ExperimentConfig, device: str | None = None, batch_size: int | None = None,
                        steps: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Seconds per optimiser step of ``config``'s network and objective at ``batch_size`` on
    ``device``: random inputs of the data set's shape, a τ draw, the loss, backward, Adam. The
    fastest of ``steps`` timed steps (after ``warmup``) counts, so that other load on a shared
    machine inflates the figure as little as possible. Returns {device, batch_size,
    seconds_per_step, seconds_per_step_median, steps_timed}."""
    import torch

    from st_sweeps.networks import ScoreModel
    from st_sweeps.trainer import build_adam, select_device

    dev = select_device(device)
    b = batch_size or config.train.batch_size
    gen = torch.Generator().manual_seed(0)
    net = config.model.network.build(tuple(config.data.dataset.shape), gen)
    model = ScoreModel(net, config.sde, config.model.time_input, eps=config.truncation.eps).to(dev)
    opt = build_adam(model.parameters(), lr=config.optim.lr)  # the trainer's implementation
    x0 = (torch.rand((b, *config.data.dataset.shape), generator=gen) * 2 - 1).to(dev)
    n_ref = config.objective.reference_batch_size
    ref = torch.rand((n_ref, *config.data.dataset.shape), generator=gen).to(dev) if n_ref else None

    def one_step() -> None:
        tau = config.truncation.prior.sample(config.truncation.eps, config.sde.T, gen)
        opt.zero_grad(set_to_none=True)
        loss = config.objective.loss(config.sde, model, x0, tau, gen, reference=ref).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip_norm or math.inf)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    model.train()
    for _ in range(warmup):
        one_step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - start)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} thread(s))"
    return {"device": name, "batch_size": b, "seconds_per_step": min(times),
            "seconds_per_step_median": statistics.median(times), "steps_timed": steps}


def measure_estimate(manifest: Manifest, device: str | None, batch_size: int | None) -> dict[str, Any]:
    """Time every row's paper-size network (and the anchor network of the authors' figure)."""
    from st_sweeps.networks import PRESETS
    from st_sweeps.trainer import select_device

    dev = select_device(device)
    rows: dict[str, Any] = {}
    for row in manifest.rows:
        config = row.experiment(0, manifest.dataset)
        b = batch_size or (config.train.batch_size if dev.type == "cuda" else min(2, config.train.batch_size))
        print(f"timing {manifest.dataset}/{row.id}: paper network, batch {b} on {dev} …", flush=True)
        rows[row.id] = time_training_steps(config, str(dev), b)
    anchor_row = {"data": {"dataset": {"name": "cifar10"}}, "sde": {"name": "vp"},
                  "objective": {"name": "dsm", "weighting": "variance"},
                  "model": {"network": to_dict(PRESETS[ANCHOR_PRESET][0]())}}
    anchor_cfg = experiment_from_dict(anchor_row)
    b = batch_size or (AUTHORS_BATCH if dev.type == "cuda" else 2)
    print(f"timing the anchor network ({ANCHOR_PRESET}, 32 px), batch {b} …", flush=True)
    return {"rows": rows, "anchor": {"preset": ANCHOR_PRESET, **time_training_steps(anchor_cfg, str(dev), b)}}


def estimate_rows(manifest: Manifest, measured: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per row: hours on the measuring device (linear in batch), and V100-hours from the authors'
    figure scaled by images processed and by the measured cost per image relative to the anchor."""
    out: dict[str, dict[str, float]] = {}
    anchor = measured["anchor"]
    anchor_per_image = anchor["seconds_per_step"] / anchor["batch_size"]
    authors_images = AUTHORS_STEPS * AUTHORS_BATCH
    for row in manifest.rows:
        m = measured["rows"].get(row.id)
        if m is None:
            continue
        config = row.experiment(0, manifest.dataset)
        images = config.train.steps * config.train.batch_size
        per_image = m["seconds_per_step"] / m["batch_size"]
        relative = per_image / anchor_per_image
        lo, hi = (AUTHORS_GPUS * 24 * d * images / authors_images * relative for d in AUTHORS_DAYS)
        out[row.id] = {"device_hours": images * per_image / 3600, "relative_cost_per_image": relative,
                       "v100_hours_low": lo, "v100_hours_high": hi}
    return out


def estimate_lines(manifest: Manifest, measured: Mapping[str, Any] | None) -> list[str]:
    if not measured:
        return ["- Not measured in this output folder: run with `--estimate` (times a few training steps of each "
                "paper-size network on this machine) to add it."]
    est = estimate_rows(manifest, measured)
    any_row = next(iter(measured["rows"].values()))
    lines = [f"- Measured on {any_row['device']}: the fastest of a few optimiser steps of each paper-size network "
             f"at a reduced batch, scaled linearly to the paper's batch and steps (assumption: time grows linearly with batch; "
             "accelerators are usually faster per image at larger batches, so this overestimates there).",
             f"- V100-hours: the authors' figure (about {AUTHORS_STEPS:,} steps at batch {AUTHORS_BATCH} in 2–4 days "
             f"on {AUTHORS_GPUS} V100s, i.e. {AUTHORS_GPUS * 24 * AUTHORS_DAYS[0]:.0f}–"
             f"{AUTHORS_GPUS * 24 * AUTHORS_DAYS[1]:.0f} V100-hours, assumed for the `{ANCHOR_PRESET}` network at "
             "32 px) scaled by images processed and by each network's measured cost per image relative to that "
             "network (assumption: relative costs carry over from the measuring device to a V100).", ""]
    lines.append("| row | paper batch × steps | measured s/step (batch) | hours on the measuring device | "
                 "cost per image vs. anchor | est. V100-hours |")
    lines.append("|---|---|---|---|---|---|")
    for row in manifest.rows:
        if row.id not in est:
            continue
        e, m = est[row.id], measured["rows"][row.id]
        config = row.experiment(0, manifest.dataset)
        lines.append(f"| {row.label} | {config.train.batch_size} × {config.train.steps:,} | "
                     f"{m['seconds_per_step']:.2f} ({m['batch_size']}) | {e['device_hours']:,.0f} | "
                     f"{e['relative_cost_per_image']:.2f}× | {e['v100_hours_low']:,.0f}–{e['v100_hours_high']:,.0f} |")
    return lines


# ================================================================================ the command
def build_parser(dataset: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python reproductions/{dataset}.py",
        description=f"Rebuild the Soft Truncation paper's {dataset} table: train and evaluate every row of "
                    f"reproductions/manifests/{dataset}.yaml, then write paper-vs-ours tables and a figure. "
                    f"Exit status 2: missing data or weights (nothing trained), or a bad manifest or argument.")
    p.add_argument("--scale", choices=SCALES, default="smoke",
                   help="smoke: tiny CPU-sized runs that check the pipeline (default); paper: the paper's configs")
    p.add_argument("--rows", nargs="+", metavar="ROW_ID", help="only these rows (default: all)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1 per row (default: the manifest's smoke.seeds at smoke scale, 1 at paper scale)")
    p.add_argument("--data-root", default=None,
                   help="data root (default: $ST_SWEEPS_DATA_ROOT, else ~/.cache/st_sweeps/data)")
    p.add_argument("--out", default=None, help=f"output folder (default: reproductions/results/{dataset}/<scale>/)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers per run (1: in-process)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--local", action="store_true", help="train in this process even with --workers > 1")
    p.add_argument("--device", default=None, help="torch device for in-process runs (default: cuda if available)")
    p.add_argument("--estimate", action="store_true",
                   help="time a few training steps of each paper-size network here and add the GPU-hours "
                        "estimate to the tables (done once automatically at paper scale)")
    p.add_argument("--estimate-batch", type=int, default=None,
                   help="batch for that timing (default: the paper's on a GPU, 2 on a CPU; scaled linearly)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configs and the checks; train nothing")
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_MISSING


def main(dataset: str, argv: Sequence[str] | None = None) -> int:
    """The command behind ``reproductions/<dataset>.py``; returns the exit status."""
    args = build_parser(dataset).parse_args(argv)
    try:
        manifest = load_manifest(manifest_path(dataset))
        rows = [manifest.row(r) for r in args.rows] if args.rows else list(manifest.rows)
    except ConfigError as e:
        return _fail(str(e))
    scale = args.scale
    n_seeds = args.seeds if args.seeds is not None else (manifest.smoke.seeds if scale == "smoke" else 1)
    for flag, value in (("--seeds", n_seeds), ("--workers", args.workers)):
        if value < 1:
            return _fail(f"{flag}: got {value} (allowed: an integer >= 1)")
    seeds = list(range(n_seeds))
    out = Path(args.out) if args.out else RESULTS_DIR / dataset / scale
    from st_sweeps.data import resolve_data_root

    data_root = resolve_data_root(args.data_root)
    fid_ok, weights_status = inception_weights_status()
    try:
        configs = {(r.id, s): row_config(manifest, r, scale, s, fid_ok) for r in rows for s in seeds}
    except ConfigError as e:
        return _fail(str(e))
    if scale == "smoke" and "OMP_NUM_THREADS" not in os.environ:
        # the tiny smoke networks gain little from more CPU threads and lose a lot (10–50× measured
        # on 2 cores) when other processes compete for the cores; OMP_NUM_THREADS overrides this
        import torch

        torch.set_num_threads(1)
    launch = Launch(workers=args.workers, gpus_per_worker=args.gpus_per_worker, address=args.address,
                    local=args.local, data_root=data_root, device=args.device, progress=sys.stderr.isatty())

    problems = preflight(dataset, data_root, scale, configs.values(), fid_ok, weights_status, launch)
    if args.dry_run:
        for (rid, s), c in configs.items():
            print(f"# {dataset} / {rid} / seed {s} ({scale} scale)\n{config_yaml(c)}")
        print("\n".join(problems) if problems else "checks: data, weights and launcher OK")
        return EXIT_MISSING if problems else 0
    if problems:
        print(f"error: cannot start the {scale}-scale {dataset} reproduction; nothing was trained.", file=sys.stderr)
        for line in problems:
            print(line, file=sys.stderr)
        return EXIT_MISSING
    if args.workers > 1 and args.local:
        print(f"note: --local: training in this process; --workers {args.workers} ignored", file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    estimate_file = out / "gpu_hours.json"
    if args.estimate or (scale == "paper" and not estimate_file.exists()):
        measured = measure_estimate(manifest, args.device, args.estimate_batch)
        _write_atomic(estimate_file, json.dumps(measured, indent=1, sort_keys=True) + "\n")

    from st_sweeps.tracking import default_tracking_uri

    uri = args.mlflow_uri or default_tracking_uri()
    try:
        files = reproduce(manifest, rows, seeds, scale, out, uri, launch, fid_ok, weights_status)
    except ConfigError as e:
        return _fail(str(e))
    print(files.markdown.read_text())
    print(f"wrote {files.markdown}, {files.csv}, {files.latex} and {files.figure}"
          + (f", and the loss weights ours vs official in {files.weights}" if files.weights else ""))
    return 0


def preflight(dataset: str, data_root: Path, scale: str, configs: Iterable[ExperimentConfig], fid_ok: bool,
              weights_status: str, launch: Launch) -> list[str]:
    """Everything that would stop a run part-way, checked before the first step: data files, the
    Inception weights (paper scale), the Ray launcher (workers > 1)."""
    configs = list(configs)
    releases = sorted({getattr(c.data.dataset, "source", None) for c in configs} - {None})
    problems = [p for release in (releases or [None]) for p in missing_data(dataset, data_root, scale, release)]
    if scale == "paper" and not fid_ok and any(_has_fid(c) for c in configs):
        problems.append(f"FID at paper scale needs the Inception weights: {weights_status}")
    if launch.use_ray:
        try:
            import st_sweeps.ray_train  # noqa: F401
        except ImportError as e:
            problems.append(f"--workers {launch.workers} needs st_sweeps.ray_train, which cannot be imported "
                            f"({e}); use --workers 1 or --local")
    return problems


def reproduce(manifest: Manifest, rows: Sequence[Row], seeds: Sequence[int], scale: str, out: Path, uri: str,
              launch: Launch, fid_ok: bool, weights_status: str) -> TableFiles:
    """Train and evaluate every (row, seed) not finished yet, log rows and seeds to MLflow, write the
    tables from what is on disk and attach them to the reproduction run."""
    ids = RunIds(out / "mlflow_runs.json", uri)
    experiment = f"st_sweeps-reproduce-{manifest.dataset}"
    parent = open_run(ids, ("reproduction", scale), experiment, f"reproduction {manifest.dataset} ({scale})",
                      {"kind": "reproduction", "dataset": manifest.dataset, "scale": scale}, None)
    status = "FAILED"
    try:
        parent.log_params({"dataset": manifest.dataset, "scale": scale,
                           "manifest": str(manifest_path(manifest.dataset).relative_to(REPO_ROOT))})
        for row in rows:
            run_row(manifest, row, seeds, scale, out, ids, experiment, parent.run_id, launch, fid_ok, weights_status)
        configs = {r.id: row_config(manifest, r, scale, seeds[0], fid_ok) for r in manifest.rows}
        cells = collect_cells(manifest, out, seeds)
        estimate_file = out / "gpu_hours.json"
        estimate = json.loads(estimate_file.read_text()) if estimate_file.exists() else None
        files = write_tables(manifest, scale, out, cells, configs, estimate)
        for path in (files.markdown, files.csv, files.latex, files.figure, files.weights):
            if path is not None:
                parent.log_artifact(path, "tables")
        status = "FINISHED"
    finally:
        parent.close(status)
    return files


def run_row(manifest: Manifest, row: Row, seeds: Sequence[int], scale: str, out: Path, ids: RunIds, experiment: str,
            parent_id: str, launch: Launch, fid_ok: bool, weights_status: str) -> list[SeedResult]:
    tracker = open_run(ids, ("rows", row.id, scale), experiment, f"{row.id} ({scale})",
                       {"kind": "row", "row_id": row.id, "dataset": manifest.dataset, "scale": scale,
                        "label": row.label, "seeds": ",".join(map(str, seeds))}, parent_id)
    status = "FAILED"
    try:
        base = row_config(manifest, row, scale, seeds[0], fid_ok)
        params: dict[str, Any] = {k: v for k, v in config_params(base).items() if k != "seed"}
        params.update(paper_params(row), network_preset=row.network_preset)
        tracker.log_params(params)
        results = [run_seed(manifest, row, seed, scale, out, ids, experiment, tracker.run_id, launch, fid_ok,
                            weights_status) for seed in seeds]
        log_changed_metrics(tracker, row_metrics(row, results, seeds))
        status = "FINISHED"
    finally:
        tracker.close(status)
    return results


def run_seed(manifest: Manifest, row: Row, seed: int, scale: str, out: Path, ids: RunIds, experiment: str,
             row_run_id: str, launch: Launch, fid_ok: bool, weights_status: str) -> SeedResult:
    """One (row, seed): the stored result when finished, else train (resuming) and evaluate."""
    config = row_config(manifest, row, scale, seed, fid_ok)
    where = f"{manifest.dataset}/{row.id}/seed {seed}"
    done = finished_result(out, row.id, seed, config)
    if done is not None:
        print(f"{where}: finished earlier (took {done.wall_s:.1f} s); not trained again", flush=True)
        return done
    directory = run_dir(out, row.id, seed)
    tracker = open_run(ids, ("seeds", row.id, scale, str(seed)), experiment, f"{row.id} seed {seed} ({scale})",
                       {"kind": "seed", "seed": str(seed), "scale": scale, "parent_row_id": row.id}, row_run_id)
    print(f"{where}: training {config.train.steps} steps ({scale} scale) in {directory}", flush=True)
    start = time.perf_counter()
    recorder = TagRecorder()
    status = "FAILED"
    try:
        if launch.use_ray:
            final, tags = train_ray(config, directory, launch, ids.uri, experiment, tracker.run_id)
            recorder.set_tags(tags)
        else:
            from st_sweeps.tracking import MultiTracker

            final = train_local(config, directory, launch, MultiTracker(tracker, recorder))
        status = "FINISHED"
    finally:
        tracker.close(status)
    wall = time.perf_counter() - start
    result = save_result(out, config, row.id, seed, scale, config.train.steps, final,
                         missing_reasons(config, recorder.tags, weights_status), wall)
    print(f"{where}: done in {wall:.1f} s", flush=True)
    return result


def paper_params(row: Row) -> dict[str, str]:
    """The paper's numbers as MLflow params (the note where there is no number)."""
    params = {}
    for metric in METRICS:
        pv = row.paper.get(metric)
        params[f"paper/{metric}"] = format_paper(pv.value) if pv.value is not None else pv.note
        if pv.dequantization:
            params[f"paper/{metric}/dequantization"] = pv.dequantization
    for i, extra in enumerate(row.paper.also_reported):
        params[f"paper/also_reported_{i}/{extra.metric}"] = format_paper(extra.value)
        if extra.dequantization:
            params[f"paper/also_reported_{i}/dequantization"] = extra.dequantization
    return params


def row_metrics(row: Row, results: Sequence[SeedResult], seeds: Sequence[int]) -> dict[str, float]:
    """Per-seed values and the aggregates over seeds, for the row's MLflow run."""
    metrics: dict[str, float] = {}
    for r in results:
        for k in (*(info.key for info in METRICS.values()), "eval/dequantizer_fit_bpd", "eval/pixel_fd",
                  "eval/nfe_sampling"):
            if k in r.metrics:
                metrics[f"seed_{r.seed}/{k}"] = r.metrics[k]
    for c in aggregate(row, results, seeds, "not run: seeds {seeds}"):
        if not c.comparable or not c.values:
            continue
        metrics[f"ours/{c.metric}/mean"] = float(c.mean)  # type: ignore[arg-type]
        metrics[f"ours/{c.metric}/min"] = min(c.values)
        metrics[f"ours/{c.metric}/max"] = max(c.values)
        if c.std is not None:
            metrics[f"ours/{c.metric}/std"] = c.std
        if c.diff is not None:
            metrics[f"ours_minus_paper/{c.metric}"] = c.diff
    return metrics


def collect_cells(manifest: Manifest, out: Path, seeds: Sequence[int]) -> list[Cell]:
    """The table's lines for every manifest row, from the result files in ``out``."""
    cells: list[Cell] = []
    for row in manifest.rows:
        results = [SeedResult.read(p) for s in seeds if (p := result_path(out, row.id, s)).exists()]
        cells += aggregate(row, results, seeds, "not run yet: no result for seed(s) {seeds}")
    return cells


def entry_point(dataset: str) -> None:
    """What ``reproductions/<dataset>.py`` runs."""
    sys.exit(main(dataset, sys.argv[1:]))
