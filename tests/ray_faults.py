"""Faults that Ray Train tests inject into workers through ``run_ray_train(before_step=...)``.

Each fires once per run, on one rank (-1: the last): the marker file it writes first stops the
attempts after a restart from firing again. ``CrashOnce`` exits the worker process at once (no
exception handling, no report: like a crash); ``HoldOnce`` writes its Ray node id into the marker
and waits (for the test to remove that node), going on by itself after ``limit_s``.

The workers cannot import this file (it is not part of the package), so Ray pickles these
classes by value.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.cloudpickle

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _chosen(rank: int, world_size: int, wanted: int) -> bool:
    return rank == wanted % world_size


@dataclass(frozen=True)
class CrashOnce:
    step: int
    marker: Path
    rank: int = -1

    def __call__(self, rank: int, world_size: int, step: int) -> None:
        if step != self.step or not _chosen(rank, world_size, self.rank) or self.marker.exists():
            return
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(f"worker exited at step {step}\n")
        os._exit(1)


@dataclass(frozen=True)
class HoldOnce:
    step: int
    marker: Path
    rank: int = -1
    limit_s: float = 600.0  # a held worker goes on by itself after this long (a test that forgot it)

    def __call__(self, rank: int, world_size: int, step: int) -> None:
        if step != self.step or not _chosen(rank, world_size, self.rank) or self.marker.exists():
            return
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(ray.get_runtime_context().get_node_id() + "\n")
        deadline = time.monotonic() + self.limit_s
        while time.monotonic() < deadline:
            time.sleep(0.2)
