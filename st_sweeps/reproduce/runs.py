"""The MLflow runs of a reproduction, reopened by the ids stored in ``mlflow_runs.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from st_sweeps.files import write_text_atomic
from st_sweeps.tracking import NullTracker


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

    def slot(self, *keys: str) -> "_Slot":
        """The place of one run's id, as ``st_sweeps.tracking.open_remembered_run`` reads it."""
        return _Slot(self, keys)

    def set(self, run_id: str, *keys: str) -> None:
        node = self.ids
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = run_id
        write_text_atomic(self.path, json.dumps(self.all, indent=1, sort_keys=True) + "\n")


class _Slot:
    def __init__(self, ids: RunIds, keys: tuple[str, ...]):
        self.ids, self.keys = ids, keys

    def get(self) -> str | None:
        return self.ids.get(*self.keys)

    def set(self, run_id: str) -> None:
        self.ids.set(run_id, *self.keys)


def open_run(ids: RunIds, keys: tuple[str, ...], experiment: str, name: str, tags: Mapping[str, str],
             parent: str | None) -> Any:
    """The MLflow run stored under ``keys`` (reopened, its tags brought up to date), or a new one
    (its id stored)."""
    from st_sweeps.tracking import open_remembered_run

    tracker = open_remembered_run(ids.uri, experiment, ids.slot(*keys), run_name=name, parent_run_id=parent,
                                  tags=tags)
    if tracker.reopened:
        tracker.set_tags(tags)
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
