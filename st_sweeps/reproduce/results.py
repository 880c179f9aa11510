"""One (row, seed)'s result on disk: ``<row_id>/seed_<n>/result.json``, written when it is finished."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from st_sweeps.config import to_dict
from st_sweeps.errors import ConfigError
from st_sweeps.experiment import ExperimentConfig
from st_sweeps.files import write_text_atomic


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
    write_text_atomic(result_path(out, row_id, seed), json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return result
