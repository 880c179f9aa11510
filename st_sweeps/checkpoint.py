"""Atomic checkpoints: state dicts and plain data only (loaded with weights_only=True).

A checkpoint that cannot be read (truncated by a crash or a full disk, or some other file under
a checkpoint's name) raises CheckpointError naming the file and what is wrong with it;
``load_latest`` then resumes from the newest one that loads, setting the damaged ones aside.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from st_sweeps.files import write_atomic

_NAME = re.compile(r"^step_(\d{9})\.pt$")
DAMAGED_SUFFIX = ".damaged"
# what every Trainer checkpoint holds (Trainer.state_dict); a file without them is not one
REQUIRED_KEYS: tuple[str, ...] = ("step", "model", "ema", "optimizer", "scaler", "config", "last_finite",
                                  "diagnostics", "rng")
_EXPECTED = "a torch.save zip archive of a training checkpoint (a mapping with step, model, config, ...)"


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be used: ``path`` and ``problem`` say which and why."""

    def __init__(self, path: Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"checkpoint {path}: {problem}")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:09d}.pt"


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write to a temporary file in the same directory, fsync, then rename over the target:
    a crash, a kill or a full disk mid-write leaves the previous checkpoint intact (a failed
    write raises OSError naming the checkpoint, with the original errno)."""
    path = Path(path)
    try:
        write_atomic(path, lambda tmp: torch.save(state, tmp), durable=True)
    except OSError as e:
        if e.errno is None:
            raise
        raise OSError(e.errno, f"checkpoint not written ({e.strerror or e}); the earlier checkpoints "
                      "in its folder are untouched", str(path)) from e
    return path


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    ckpts = list_checkpoints(directory)
    return ckpts[-1][1] if ckpts else None


def load(path: str | Path, map_location: str | torch.device = "cpu",
         required: Iterable[str] = REQUIRED_KEYS) -> dict[str, Any]:
    """The state in ``path``; CheckpointError if the file is damaged or not a training checkpoint
    (a missing file is FileNotFoundError, as for any file)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError, MemoryError):
        raise
    except Exception as e:  # torch reports damage as EOFError, RuntimeError, KeyError, OSError, UnpicklingError...
        raise CheckpointError(path, _diagnose(path, e)) from e
    if not isinstance(state, Mapping):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not {_EXPECTED}")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(path, f"is not a training checkpoint: no {', '.join(missing)} "
                              f"(it has {', '.join(map(str, list(state)[:8])) or 'no keys'}); expected {_EXPECTED}")
    named = _NAME.match(path.name)
    if named and "step" in state and state["step"] != int(named.group(1)):
        raise CheckpointError(path, f"holds step {state['step']!r}, but its name says step {int(named.group(1))}")
    return dict(state)


def _diagnose(path: Path, error: Exception) -> str:
    """What is wrong with a file torch.load refused, from the file itself (torch's messages vary)."""
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes): its write never finished"
    with open(path, "rb") as f:
        head = f.read(8)
    detail = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else 'no message'}"
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return (f"is truncated ({size} bytes, and its zip archive has no end record): the write was cut "
                    f"short, e.g. by a full disk or a crash ({detail})")
        return ("is a zip archive that torch cannot read as a checkpoint: damaged, or holding objects other "
                f"than tensors and plain data ({detail})")
    return f"is not {_EXPECTED}: it starts with {head!r} ({detail})"


def load_latest(directory: str | Path, map_location: str | torch.device = "cpu", *,
                set_aside: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` that loads, and its state; None when there is none.

    Newer ones that are damaged are reported with a warning and, with ``set_aside``, renamed to
    ``<name>.damaged`` (kept for inspection; no longer counted as checkpoints, so pruning never
    deletes a good checkpoint to keep a damaged one). When none loads, the newest one's
    CheckpointError is raised: a run never silently starts over."""
    damaged: list[CheckpointError] = []
    for _, path in reversed(list_checkpoints(directory)):
        try:
            state = load(path, map_location)
        except CheckpointError as e:
            damaged.append(e)
            continue
        except FileNotFoundError:  # gone since the listing: set aside by another rank, or pruned
            continue
        for e in damaged:
            moved = ""
            if set_aside:
                target = e.path.with_name(e.path.name + DAMAGED_SUFFIX)
                try:
                    os.replace(e.path, target)
                    moved = f"; renamed to {target.name}"
                except FileNotFoundError:  # another rank set it aside first
                    pass
            warnings.warn(f"{e}; resuming from the earlier {path.name}{moved}", stacklevel=2)
        return path, state
    if damaged:
        first = damaged[0]
        raise CheckpointError(first.path, f"{first.problem}; no earlier checkpoint in {Path(directory)} loads "
                              f"either ({len(damaged)} tried): delete the damaged files to start over") from first
    return None


def prune(directory: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return
    for _, p in list_checkpoints(directory)[:-keep]:
        p.unlink(missing_ok=True)
