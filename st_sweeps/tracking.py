"""Where metrics go: one protocol, with null, JSONL, MLflow and fan-out implementations.

Metric keys are fixed strings shared by every sink (``train/loss``, ``eval/nll_bpd``,
``eval/fid``...). Only this module imports mlflow, and only when an MLflow tracker is made.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class JsonlTracker(NullTracker):
    """Appends one JSON line per ``log_metrics`` call.

    Each line is handed to the OS before the call returns, so a killed or crashed process loses
    none. Forcing lines onto the disk (fsync, against an OS crash or power loss) waits for the
    device, ~3 ms here, 1 % of a 30 ms training step at the default log cadence; it is done for
    the first line and then at most every ``sync_every_s`` seconds, which bounds what a power loss
    can take to that window.
    """

    def __init__(self, path: str | Path, sync_every_s: float = 10.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sync_every_s = sync_every_s
        self._last_sync = -math.inf

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        record = {"step": step, "time": time.time(), **{k: _finite_or_none(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            now = time.monotonic()
            if now - self._last_sync >= self.sync_every_s:
                os.fsync(f.fileno())
                self._last_sync = now


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a kill mid-write; every earlier line is intact
    return out


class MultiTracker(NullTracker):
    def __init__(self, *trackers: Tracker):
        self.trackers = trackers

    def log_params(self, params: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for t in self.trackers:
            t.log_metrics(metrics, step)

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        for t in self.trackers:
            t.log_artifact(path, subdir)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for t in self.trackers:
            t.set_tags(tags)

    def close(self, status: str = "FINISHED") -> None:
        for t in self.trackers:
            t.close(status)


class LatestMetrics(NullTracker):
    """A tracker that keeps the latest value of every numeric metric logged (only those whose key
    starts with one of ``prefixes``, when given): what a report sends along with an evaluation."""

    def __init__(self, prefixes: tuple[str, ...] | None = None) -> None:
        self.prefixes = prefixes
        self.values: dict[str, float] = {}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.values.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))
                            and (self.prefixes is None or k.startswith(self.prefixes))})


def mlflow_safe_key(key: str) -> str:
    """MLflow allows alphanumerics, _ - . space : / in names; we keep our keys within that."""
    return "".join(c if (c.isalnum() or c in "_-. :/") else "_" for c in key)


class MlflowTracker(NullTracker):
    """Logs into one MLflow run (created, or resumed by id so a resumed trial keeps its run)."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str | None = None,
                 run_id: str | None = None, parent_run_id: str | None = None,
                 tags: Mapping[str, str] | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        self._mlflow = mlflow
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp_id = training_experiment(self.client, experiment)
        self.reopened = run_id is not None  # an existing run, resumed
        if run_id is None:
            all_tags = dict(tags or {})
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            if run_name:
                all_tags["mlflow.runName"] = run_name
            run = self.client.create_run(exp_id, tags=all_tags, run_name=run_name)
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.experiment_id = exp_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        batch = []
        for k, v in params.items():
            key, val = mlflow_safe_key(k), str(v)[:6000]
            if key in existing:
                continue  # params are immutable in MLflow; a resumed run already has them
            batch.append(Param(key, val))
        for i in range(0, len(batch), 100):
            self.client.log_batch(self.run_id, params=batch[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_safe_key(k), float(v), now, int(step)) for k, v in metrics.items()
                 if v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), subdir)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), subdir)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def delete(self) -> None:
        """Move the run to MLflow's trash (restorable; hidden from the UI and from searches)."""
        self.client.delete_run(self.run_id)

    def last_logged_step(self, keys: Sequence[str] | None = None) -> int:
        """The last step at which this run holds a value of one of ``keys`` (all its metrics when
        None); -1 when it holds none."""
        if keys is None:
            keys = list(self.client.get_run(self.run_id).data.metrics)
        steps = [m.step for k in keys for m in self.client.get_metric_history(self.run_id, mlflow_safe_key(k))]
        return max(steps, default=-1)

    def last_logged_steps(self) -> dict[str, int]:
        """Each metric of the run -> the last step at which it holds a value."""
        keys = list(self.client.get_run(self.run_id).data.metrics)
        history = {k: self.client.get_metric_history(self.run_id, k) for k in keys}
        return {k: max(m.step for m in h) for k, h in history.items() if h}


class SkipLoggedSteps:
    """A resumed run's tracker: a metric at a step the run already holds for it is dropped.

    A run killed between logging and saving the checkpoint it resumes from redoes those steps;
    training is deterministic from (seed, step), so what is dropped is what was already logged,
    and each metric's history keeps one point per step. The check is per metric (``last``: key ->
    its last logged step): a run killed after logging ``train/loss`` at step 25 but resuming from
    step 10 still logs its evaluation at step 20. Without ``last``, every metric up to ``upto``
    is dropped."""

    def __init__(self, tracker: Any, upto: int, last: Mapping[str, int] | None = None):
        self.tracker, self.upto = tracker, upto
        self.last = dict(last) if last is not None else None
        self.run_id = getattr(tracker, "run_id", None)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.tracker.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.last is None:
            new = dict(metrics) if step > self.upto else {}
        else:
            new = {k: v for k, v in metrics.items() if step > self.last.get(mlflow_safe_key(k), -1)}
        if new:
            self.tracker.log_metrics(new, step)

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        self.tracker.log_artifact(path, subdir)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tracker.set_tags(tags)

    def close(self, status: str = "FINISHED") -> None:
        self.tracker.close(status)


def skip_logged_steps(tracker: Any) -> Any:
    """``tracker``, wrapped to drop steps its run already holds when it is a resumed MLflow run."""
    last = tracker.last_logged_steps() if isinstance(tracker, MlflowTracker) else {}
    return SkipLoggedSteps(tracker, max(last.values()), last) if last else tracker


# MLflow 3 sorts experiments into GenAI development and model training by this experiment tag
# (the values of the UI's experiment-kind selector, in its JS bundle). Its 3.17 UI reads the kind
# from the GenAI / Model training switch instead (a ``workflowType`` URL parameter, else the
# browser's last choice, else GenAI), so links to the runs table carry the parameter as well.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def training_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name`` (created if missing), marked as model training unless
    someone already gave it a kind."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
        except Exception:  # another trial created it concurrently: read it back
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return exp.experiment_id


def runs_page_url(server: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI at ``server`` (training view, not the GenAI
    overview that MLflow 3.17 opens by default)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def find_runs(tracking_uri: str, experiment: str, tags: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """run id -> tags of the active runs of ``experiment`` that carry all of ``tags`` (none if the
    experiment does not exist)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp.experiment_id], filter_string=where, max_results=50000)
    return {r.info.run_id: dict(r.data.tags) for r in runs}


class RunIdMemory(Protocol):
    """Where a caller remembers the id of its MLflow run between invocations."""

    def get(self) -> str | None: ...

    def set(self, run_id: str) -> None: ...


class RunIdFile:
    """A run id in a one-line text file (written atomically)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def get(self) -> str | None:
        return (self.path.read_text().strip() or None) if self.path.exists() else None

    def set(self, run_id: str) -> None:
        from st_sweeps.files import write_text_atomic

        write_text_atomic(self.path, run_id + "\n")


def open_remembered_run(tracking_uri: str, experiment: str, memory: RunIdMemory | None = None, *,
                        run_id: str | None = None, run_name: str | None = None, parent_run_id: str | None = None,
                        tags: Mapping[str, str] | None = None,
                        find_tags: Mapping[str, str] | None = None) -> MlflowTracker:
    """The MLflow run a resumed or repeated command logs into, so that it never makes a second one.

    In order: ``run_id`` when given (it must exist); the id ``memory`` holds; the active run of
    ``experiment`` carrying ``find_tags`` (a caller killed between creating its run and
    remembering the id left one); else a new run with ``run_name``, ``parent_run_id`` and ``tags``.
    The id is remembered before this returns. A remembered run that cannot be reopened (deleted,
    or another store behind the same URI) is replaced by a new one, with a warning. The returned
    tracker's ``reopened`` says whether the run existed before.
    """
    known = run_id or (memory.get() if memory is not None else None)
    if known is None and find_tags:
        known = next(iter(find_runs(tracking_uri, experiment, find_tags)), None)
    tracker: MlflowTracker | None = None
    if known is not None:
        try:
            tracker = MlflowTracker(tracking_uri, experiment, run_id=known)
        except Exception as e:  # noqa: BLE001 - any MLflow failure to reopen: start afresh, say so
            if run_id is not None:
                raise
            print(f"warning: MLflow run {known} could not be reopened ({type(e).__name__}: {e}); "
                  "creating a new one", file=sys.stderr)
    if tracker is None:
        tracker = MlflowTracker(tracking_uri, experiment, run_name=run_name, parent_run_id=parent_run_id, tags=tags)
    if memory is not None and memory.get() != tracker.run_id:
        memory.set(tracker.run_id)
    return tracker


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """MLflow 3's default store, made absolute so Ray workers in other directories agree."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    base = Path(cwd or os.getcwd()).resolve()
    return f"sqlite:///{base / 'mlflow.db'}"
