"""Data-parallel training on Ray Train (V2): the standalone ``Trainer`` on N workers.

Each worker runs ``train_loop_per_worker``: it builds a ``Trainer`` whose model is wrapped by
``ray.train.torch.prepare_model`` (DDP over gloo on CPU, NCCL on GPU) and reports every
evaluation with ``ray.train.report``, rank 0 attaching the checkpoint file it just wrote. Ray
keeps the reported checkpoints under ``<storage_path>/<run_name>/step_XXXXXXXXX/`` and restarts
the workers from the latest one after a failure (``max_failures``), or when the same run name and
storage path are used again: Train V2 reloads its checkpoint index
(``checkpoint_manager_snapshot.json``) from the run directory and hands the latest checkpoint to
``ray.train.get_checkpoint()``. On several nodes the storage path must be shared; a lost node
is a worker failure like any other, and a cluster that can no longer fit the workers stops the
run after ``resource_wait_s`` with ``ClusterTooSmallError`` (docs/CLUSTER.md).

Layout of a run (local or shared storage):

    <storage_path>/<run_name>/
        checkpoint_manager_snapshot.json   Ray's index of reported checkpoints
        step_000000040/step_000000040.pt   one directory per reported checkpoint
        run/                               rank 0's Trainer directory: config.yaml, metrics.jsonl,
                                           samples/, diagnostics/, checkpoints/ (working copies)

This module and ``tune`` are the only ones that import ray.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

# Lines that Ray 2.60 forwards to the driver on every run or every second, none of them
# actionable here: the State API warning comes once a second from Train's placement-group
# cleaner when the dashboard (which serves that API) is off; the per-report INFO line is logged
# under a file-path logger name that LoggingConfig(log_level) does not reach; the
# PreemptionWatcher line is a Ray-internal note about its own actor. The driver drops matching
# lines when this is set before ray is imported (ray._private.ray_constants reads it once).
os.environ.setdefault(
    "RAY_DEDUP_LOGS_SKIP_REGEX",
    r"State API may be temporarily unavailable|Reporting training result \d+: TrainingReport"
    r"|'PreemptionWatcher' and ID: '\w+' has constructor arguments")

import ray  # noqa: E402
import ray.train  # noqa: E402
import ray.train.torch  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

from st_sweeps import checkpoint as ckpt  # noqa: E402
from st_sweeps.config import flatten, to_dict  # noqa: E402
from st_sweeps.errors import ConfigError  # noqa: E402
from st_sweeps.experiment import ExperimentConfig, config_yaml, experiment_from_dict  # noqa: E402
from st_sweeps.files import link_or_copy, write_atomic  # noqa: E402
from st_sweeps.tracking import (LatestMetrics, MlflowTracker, MultiTracker, NullTracker, RunIdFile,  # noqa: E402
                                Tracker, open_remembered_run, skip_logged_steps)
from st_sweeps.trainer import RunPaths, Trainer  # noqa: E402

# How often the Train controller polls the workers. Every ``ray.train.report`` waits for the next
# poll (2 s by default), so tests set it low. The driver's value reaches the controller and the
# workers because Train V2 copies this variable into their runtime environments when ``fit()``
# starts the controller (``ray.train.v2._internal.constants.ENV_VARS_TO_PROPAGATE``).
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
# How long Train waits for its workers' placement group before it gives up on one attempt (60 s
# by default) and, under its default FailureConfig(controller_failure_limit=-1), tries again,
# forever: a run that the cluster can no longer fit would hang. ``resource_wait_s`` bounds it.
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
DEFAULT_START_TIMEOUT_S = 60.0
DEFAULT_RESOURCE_WAIT_S = 600.0
RUN_SUBDIR = "run"
MLFLOW_RUN_ID_FILE = "mlflow_run_id"

logger = logging.getLogger(__name__)


class ClusterTooSmallError(RuntimeError):
    """The cluster could not place the run's workers within ``resource_wait_s`` (e.g. after a
    node was lost). The reported checkpoints are kept: the same run name and storage path
    continue from the last one once the cluster has room again."""


@dataclass(frozen=True)
class MlflowTarget:
    """Where rank 0 logs: one MLflow run for the whole Ray run, kept across restarts."""

    tracking_uri: str
    experiment: str
    run_id: str | None = None  # log into this run; None: create one (or reuse the run's saved id)
    parent_run_id: str | None = None


@dataclass(frozen=True)
class RunSettings:
    """Everything a worker needs besides the experiment config (pickled by Ray with cloudpickle)."""

    run_dir: str  # rank 0's Trainer directory; other ranks use a private temporary directory
    data_root: str | None = None
    mlflow: dict[str, Any] | None = None  # MlflowTarget fields, with run_id filled in
    progress: bool = False
    # called on every rank as before_step(rank, world_size, step) just before each optimiser step
    # (the tests inject worker crashes and hangs through it; a profiler could hook in the same way)
    before_step: Callable[[int, int, int], None] | None = None


def _shallow_dict(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, values as they are (``asdict`` would also turn a dataclass
    held in a field, such as a ``before_step`` callable, into a dict)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


# ---------------------------------------------------------------------------------------- worker
class _Reporter:
    """``on_evaluation`` hook: one ``ray.train.report`` per evaluation on every rank.

    Metrics need no reduction here: the Trainer all-reduces the logged train metrics, and
    ``evaluate_model`` shards the NLL over ranks and all-reduces it, and broadcasts rank 0's
    sample metrics, so every figure is global. Ray attaches rank 0's metrics to the checkpoint.
    """

    def __init__(self, latest: LatestMetrics):
        self.latest = latest

    def __call__(self, step: int, metrics: dict[str, float], path: Path | None) -> None:
        payload = {**self.latest.values, **{k: float(v) for k, v in metrics.items()}, "step": step}
        name = f"step_{step:09d}"  # deterministic: a retried step overwrites its unregistered twin
        if path is None:
            # report is a barrier: ranks without a checkpoint still call it, with none
            ray.train.report(payload, checkpoint=None, checkpoint_dir_name=name)
        else:
            # Ray copies a directory into storage; give it one holding just this file, so that
            # the working copies next to it (and their pruning) stay the Trainer's business.
            with tempfile.TemporaryDirectory(prefix="st_sweeps_report_") as tmp:
                link_or_copy(Path(path), Path(tmp) / Path(path).name)
                ray.train.report(payload, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=name)
        # report() returns once the files are in storage, but the controller registers the
        # checkpoint only when its next poll has collected the report of every rank; a rank
        # that dies before that poll loses the report, and the restart would begin from the
        # previous checkpoint (measured: from step 0). Wait, on every rank, until it is committed.
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


class RayTrainer(Trainer):
    """The Trainer as a Ray Train worker: resumes only from Ray's checkpoint; ``before_step`` runs
    before every optimiser step.

    Ray's latest reported checkpoint is the one resume point: every rank must load the same
    state, and a rank's run directory may hold newer working copies (written just before a
    crash, never reported) or none at all (ranks other than 0, a new node).
    """

    def __init__(self, *args: Any, restore_from: Path | None = None,
                 before_step: Callable[[int, int, int], None] | None = None, rank: int = 0, world_size: int = 1,
                 **kwargs: Any):
        self._restore_from = restore_from
        self._before_step = before_step
        self._rank, self._world_size = rank, world_size
        self.start_step = 0
        super().__init__(*args, **kwargs)

    def resume_if_possible(self, path: str | Path | None = None) -> bool:
        chosen = path or self._restore_from
        resumed = chosen is not None and super().resume_if_possible(chosen)
        self.start_step = self.step
        return resumed

    def train_step(self) -> dict[str, float]:
        if self._before_step is not None:
            self._before_step(self._rank, self._world_size, self.step)
        return super().train_step()


def restore_checkpoint(checkpoint: ray.train.Checkpoint | None, run_dir: Path) -> Path | None:
    """Copy the checkpoint file of a Ray checkpoint into ``run_dir/checkpoints`` (downloading it
    first if storage is remote) and return the copy's path; None when there is no checkpoint.

    Working copies newer than it are deleted: Ray never registered them (a crash came between
    writing and committing, or they were ``checkpoint_every_steps`` saves, which are not
    reported), and left in place they would count as the newest files when the Trainer prunes
    to ``keep_checkpoints``, deleting the checkpoint it has just written."""
    step, dst = -1, None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            found = ckpt.list_checkpoints(directory)
            if not found:
                raise FileNotFoundError(f"Ray checkpoint {checkpoint.path} holds no step_*.pt file")
            step, src = found[-1]
            dst = ckpt.checkpoint_path(RunPaths(run_dir).checkpoints, step)
            write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))
    stale = [p for s, p in ckpt.list_checkpoints(RunPaths(run_dir).checkpoints) if s > step]
    if stale:
        logger.warning("deleting unreported working checkpoints newer than the resume point (step %d): %s",
                       max(step, 0), ", ".join(p.name for p in stale))
        for p in stale:
            p.unlink(missing_ok=True)
    return dst


@contextlib.contextmanager
def _worker_dir(rank: int, run_dir: str) -> Iterator[Path]:
    """Rank 0 works in the run directory; the others write nothing worth keeping (the Trainer
    logs, saves and samples on rank 0 only) but need a place for the checkpoint they resume from."""
    if rank == 0:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix=f"st_sweeps_rank{rank}_") as tmp:
            yield Path(tmp)


def _prepare_model(model: nn.Module) -> nn.Module:
    # DDP for more than one worker (gloo on CPU, NCCL on GPU: TorchConfig picks the backend
    # from ScalingConfig.use_gpu); the model itself as is for one worker.
    # DDP compares gradient strides literally; a 1x1 convolution's weight gradient can come back
    # with other strides on its size-1 dimensions (same memory layout), which it reports as a
    # layout mismatch once per process. Nothing to fix, so not worth a warning in every run.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return ray.train.torch.prepare_model(model)


def _worker_tracker(rank: int, settings: RunSettings) -> Tracker:
    if rank != 0 or not settings.mlflow:
        return NullTracker()
    m = settings.mlflow
    # a restarted attempt redoes the steps after its checkpoint; some may already be logged
    return skip_logged_steps(MlflowTracker(m["tracking_uri"], m["experiment"], run_id=m["run_id"]))


def _gather_node_ids(world: int) -> list[str]:
    """The Ray node id of every rank, in rank order (where the workers were placed)."""
    mine = ray.get_runtime_context().get_node_id()
    if world == 1 or not torch.distributed.is_initialized():
        return [mine]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, mine)
    return [str(x) for x in out]


def train_loop_per_worker(loop_config: Mapping[str, Any]) -> dict[str, Any]:
    """The function every Ray Train worker runs. ``loop_config``: ``{"config": <experiment as a
    dict>, "settings": <RunSettings as a dict>}``. Returns (to the driver, from rank 0) where
    training started and ended and the last evaluation.

    No DistributedSampler: the Trainer splits each global batch into chunks keyed by their global
    index (data order and noise from (seed, step, chunk)), and rank r takes chunks r, r+N, ...,
    so the shards are disjoint and N workers see exactly what one worker accumulating all the
    chunks sees.
    """
    config = experiment_from_dict(loop_config["config"])
    settings = RunSettings(**loop_config["settings"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    node_ids = _gather_node_ids(world)

    latest = LatestMetrics()
    mlflow_tracker = _worker_tracker(rank, settings)
    with _worker_dir(rank, settings.run_dir) as run_dir:
        restore_from = restore_checkpoint(ray.train.get_checkpoint(), run_dir)
        trainer = RayTrainer(config, run_dir, device=str(device), data_root=settings.data_root,
                             tracker=MultiTracker(mlflow_tracker, latest), wrap_model=_prepare_model,
                             on_evaluation=_Reporter(latest), progress=settings.progress and rank == 0,
                             restore_from=restore_from, before_step=settings.before_step, rank=rank,
                             world_size=world)
        t0 = time.perf_counter()
        final = trainer.fit()
        fit_s = time.perf_counter() - t0
    return {"start_step": trainer.start_step, "final_step": trainer.step, "world_size": world,
            "node_ids": node_ids, "fit_seconds": fit_s, "torch_threads": torch.get_num_threads(),
            "metrics": {k: float(v) for k, v in final.items()}, "run_dir": settings.run_dir}


# ---------------------------------------------------------------------------------------- driver
def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Connect to a cluster (``address``, e.g. "auto" or "ray://host:10001") or start a local
    one without the dashboard; quiet logs. A no-op when Ray is already initialised."""
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if address is None:
        kwargs["include_dashboard"] = False
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)


def worker_resources(gpus_per_worker: float = 0, cpus_per_worker: float | None = None,
                     custom: Mapping[str, float] | None = None) -> dict[str, float]:
    """Ray resources of one worker. The Train V2 controller itself takes no CPU, so on a
    machine with C cores C one-CPU workers fit (2 on 2 cores); set ``cpus_per_worker`` below 1
    where something else holds a share (a Tune trial's driver function, for example).
    ``custom``: node resources each worker needs besides (``ray start --resources``), e.g. to
    keep workers on the nodes that declare them."""
    res: dict[str, float] = {"CPU": 1.0 if cpus_per_worker is None else float(cpus_per_worker)}
    if gpus_per_worker:
        res["GPU"] = float(gpus_per_worker)
    for key, amount in (custom or {}).items():
        if key in ("CPU", "GPU") or not amount > 0:
            raise ConfigError("resources", f"custom resource {key}={amount!r}",
                              "names other than CPU/GPU, amounts > 0")
        res[key] = float(amount)
    return res


def start_timeout_s() -> float:
    """Train's wait for a worker group's placement group, per attempt (its environment variable)."""
    return float(os.environ.get(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT_S))


def controller_failure_limit(resource_wait_s: float | None, per_attempt_s: float) -> int:
    """Train's ``controller_failure_limit`` for waiting about ``resource_wait_s`` in all for
    workers that do not fit, in attempts of ``per_attempt_s`` (None or < 0: wait forever, as on
    an autoscaling cluster). The count is over the whole run, not per node loss."""
    if resource_wait_s is None or resource_wait_s < 0:
        return -1
    return max(0, math.ceil(resource_wait_s / per_attempt_s - 1e-9) - 1)


def placeable_workers(per_worker: Mapping[str, float]) -> tuple[int, dict[str, float]]:
    """How many workers of ``per_worker`` the live nodes can hold (each whole, on one node),
    and the cluster's total of each resource a worker needs."""
    fit, total = 0, {k: 0.0 for k in per_worker}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        for k in per_worker:
            total[k] += res.get(k, 0.0)
        fit += min(int(res.get(k, 0.0) / a + 1e-9) for k, a in per_worker.items())
    return fit, total


def _too_small_message(workers: int, per_worker: Mapping[str, float], waited_s: float, run_name: str) -> str:
    fit, total = placeable_workers(per_worker)
    need = {k: workers * a for k, a in per_worker.items()}
    missing = {k: need[k] - total[k] for k in need if need[k] > total[k] + 1e-9}

    def fmt(d: Mapping[str, float]) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in d.items())

    if missing:
        lack = f"missing {fmt(missing)}"
    elif fit < workers:
        lack = "no node has room for a whole worker"
    else:  # Ray marks a lost node dead only after its health checks fail
        lack = "though it lists room for them: a node may have gone away and not yet be marked dead"
    return (f"the Ray cluster cannot place the {workers} workers of run {run_name!r} (each {fmt(per_worker)}): "
            f"its live nodes hold {fit} of them, with {fmt(total)} in all ({lack}); gave up after waiting "
            f"{waited_s:g} s. The reported checkpoints are kept: add nodes and run the same command again "
            f"(same --name and --storage-path) to continue from the last one, or lower --workers")


def _is_uri(path: str | os.PathLike[str]) -> bool:
    return "://" in str(path)


def _local_storage(storage_path: str | os.PathLike[str]) -> str:
    return str(storage_path) if _is_uri(storage_path) else str(Path(storage_path).expanduser().resolve())


def default_run_dir(storage_path: str | os.PathLike[str], run_name: str) -> Path:
    """``<storage>/<run_name>/run`` for a filesystem storage path; for cloud storage (a URI),
    a local directory on rank 0's node (only Ray's checkpoints then live in the bucket)."""
    if _is_uri(storage_path):
        return Path(tempfile.gettempdir()) / "st_sweeps" / run_name / RUN_SUBDIR
    return Path(_local_storage(storage_path)) / run_name / RUN_SUBDIR


def check_worker_split(config: ExperimentConfig, workers: int) -> None:
    """The global batch must split into equal chunks, the same number on every worker (the rule
    ``Trainer`` enforces on each worker; checked here so a bad split fails once, up front)."""
    t = config.train
    chunk = t.micro_batch_size or t.batch_size // workers
    if chunk < 1 or t.batch_size % chunk or (t.batch_size // chunk) % workers:
        raise ConfigError("train.micro_batch_size",
                          f"batch_size={t.batch_size} with micro_batch_size={t.micro_batch_size} cannot be split "
                          f"into equal chunks over {workers} workers",
                          "a chunk size (0: batch_size / workers) whose chunk count is a multiple of the workers")


def check_same_config(run_dir: Path, config: ExperimentConfig, run_name: str) -> None:
    """A run continued under the same name must keep its config (the checkpoint would refuse
    it later, on every worker and every retry); say so before starting anything."""
    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.exists():
        return
    saved = flatten(yaml.safe_load(saved_path.read_text()) or {})
    current = flatten(yaml.safe_load(config_yaml(config)))
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        raise ConfigError("--name", f"run {run_name!r} in {saved_path.parent.parent} was started with a different "
                          f"config (differs at {', '.join(diff[:8])}); resuming it needs the same config",
                          "a new run name, or the config in " + str(saved_path))


def _warn_if_too_small(workers: int, per_worker: Mapping[str, float], resource_wait_s: float | None) -> None:
    """Train waits for workers that do not fit (``resource_wait_s``); an autoscaling cluster
    may still grow, so only warn."""
    fit, _ = placeable_workers(per_worker)
    if fit < workers:
        wait = "indefinitely" if resource_wait_s is None or resource_wait_s < 0 else f"up to {resource_wait_s:g} s"
        logger.warning("the cluster's live nodes hold %d of the %d workers (each %s): waiting %s for it to grow "
                       "(or lower --workers or --cpus-per-worker)", fit, workers, dict(per_worker), wait)


def _mlflow_run(target: MlflowTarget, run_name: str, experiment_dir: Path | None) -> tuple[MlflowTarget, Tracker]:
    """The MLflow run of this Ray run: the given id, else the id saved by an earlier attempt of
    the same run, else a new run (whose id is saved beside Ray's checkpoints)."""
    memory = RunIdFile(experiment_dir / MLFLOW_RUN_ID_FILE) if experiment_dir is not None else None
    tracker = open_remembered_run(target.tracking_uri, target.experiment, memory, run_id=target.run_id,
                                  run_name=run_name, parent_run_id=target.parent_run_id)
    return MlflowTarget(target.tracking_uri, target.experiment, tracker.run_id, target.parent_run_id), tracker


def make_torch_trainer(config: ExperimentConfig, *, run_name: str, storage_path: str | os.PathLike[str],
                       workers: int = 1, gpus_per_worker: float = 0, cpus_per_worker: float | None = None,
                       max_failures: int = 0, num_to_keep: int | None = None,
                       data_root: str | os.PathLike[str] | None = None, tracking: MlflowTarget | None = None,
                       run_dir: str | os.PathLike[str] | None = None, progress: bool = False,
                       log_level: str = "WARNING", callbacks: Sequence[Any] = (),
                       custom_resources: Mapping[str, float] | None = None,
                       resource_wait_s: float | None = DEFAULT_RESOURCE_WAIT_S, per_attempt_s: float | None = None,
                       before_step: Callable[[int, int, int], None] | None = None) -> ray.train.torch.TorchTrainer:
    """The ``TorchTrainer`` for one run, not started (``run_ray_train`` starts it; a Tune
    function can add its report callback through ``callbacks``). ``tracking`` must carry a
    ``run_id`` here (``run_ray_train`` creates the run). Workers that do not fit are waited
    for about ``resource_wait_s`` in all (in attempts of ``per_attempt_s``, by default the
    ``START_TIMEOUT_ENV`` the controller will see), then
    the run fails with Train's ``ControllerError`` (``run_ray_train`` turns it into
    ``ClusterTooSmallError``)."""
    if workers < 1:
        raise ConfigError("--workers", f"got {workers!r}", "an integer >= 1")
    check_worker_split(config, workers)
    storage = _local_storage(storage_path)
    run_dir = Path(run_dir).expanduser().resolve() if run_dir else default_run_dir(storage, run_name)
    settings = RunSettings(run_dir=str(run_dir), data_root=str(data_root) if data_root else None,
                           mlflow=asdict(tracking) if tracking else None, progress=progress, before_step=before_step)
    per_worker = worker_resources(gpus_per_worker, cpus_per_worker, custom_resources)
    scaling = ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                      resources_per_worker=per_worker)
    run_config = ray.train.RunConfig(
        name=run_name, storage_path=storage,
        failure_config=ray.train.FailureConfig(
            max_failures=max_failures,
            controller_failure_limit=controller_failure_limit(resource_wait_s, per_attempt_s or start_timeout_s())),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=num_to_keep),
        logging_config=ray.train.LoggingConfig(log_level=log_level),
        callbacks=list(callbacks))
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker, train_loop_config={"config": to_dict(config), "settings": _shallow_dict(settings)},
        scaling_config=scaling, run_config=run_config)


def run_ray_train(config: ExperimentConfig, *, run_name: str, storage_path: str | os.PathLike[str],
                  workers: int = 1, gpus_per_worker: float = 0, cpus_per_worker: float | None = None,
                  max_failures: int = 0, num_to_keep: int | None = None,
                  data_root: str | os.PathLike[str] | None = None, tracking: MlflowTarget | None = None,
                  run_dir: str | os.PathLike[str] | None = None, progress: bool = False,
                  health_check_interval_s: float | None = None, log_level: str = "WARNING",
                  address: str | None = None, custom_resources: Mapping[str, float] | None = None,
                  resource_wait_s: float | None = DEFAULT_RESOURCE_WAIT_S,
                  before_step: Callable[[int, int, int], None] | None = None) -> ray.train.Result:
    """Train ``config`` data-parallel on ``workers`` Ray workers and return Ray's ``Result``
    (``metrics``: the last evaluation plus train metrics; ``checkpoint``; ``return_value`` with
    ``start_step``/``final_step`` from rank 0). Started again with the same ``run_name`` and
    ``storage_path``, it resumes from the last reported checkpoint (after completion it loads the
    final checkpoint and returns at once). Raises ``ray.train.TrainingFailedError`` when workers
    fail more than ``max_failures`` times, ``ConfigError`` when the run exists with another config,
    ``ClusterTooSmallError`` when the workers (``custom_resources`` included) do not fit the
    cluster's live nodes for ``resource_wait_s`` (None or < 0: wait for ever), at the start or
    after a node is lost.

    ``before_step(rank, world_size, step)``, if given, runs on every worker before each optimiser
    step (it must pickle: tests inject crashes and hangs through it, see tests/ray_faults.py).

    A lost node is a worker failure like any other: within ``max_failures``, Train starts all
    ``workers`` again (no elastic shrinking) as soon as the cluster fits them, and they continue
    from the last committed checkpoint.
    """
    storage = _local_storage(storage_path)
    resolved_run_dir = Path(run_dir).expanduser().resolve() if run_dir else default_run_dir(storage, run_name)
    check_same_config(resolved_run_dir, config, run_name)
    check_worker_split(config, workers)
    init_ray(address)
    per_worker = worker_resources(gpus_per_worker, cpus_per_worker, custom_resources)
    _warn_if_too_small(workers, per_worker, resource_wait_s)
    # one attempt never waits longer than the whole allowance
    per_attempt_s = start_timeout_s()
    if resource_wait_s is not None and 0 <= resource_wait_s < per_attempt_s:
        per_attempt_s = max(resource_wait_s, 1.0)
    mlflow_tracker: Tracker | None = None
    if tracking is not None:
        experiment_dir = None if _is_uri(storage) else Path(storage) / run_name
        tracking, mlflow_tracker = _mlflow_run(tracking, run_name, experiment_dir)
    trainer = make_torch_trainer(config, run_name=run_name, storage_path=storage, workers=workers,
                                 gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                                 max_failures=max_failures, num_to_keep=num_to_keep, data_root=data_root,
                                 tracking=tracking, run_dir=resolved_run_dir, progress=progress,
                                 log_level=log_level, custom_resources=custom_resources,
                                 resource_wait_s=resource_wait_s, per_attempt_s=per_attempt_s,
                                 before_step=before_step)
    env = {START_TIMEOUT_ENV: str(per_attempt_s)}
    if health_check_interval_s is not None:
        env[HEALTH_CHECK_ENV] = str(health_check_interval_s)
    status = "FAILED"
    try:
        with _environment(env):  # read when fit() starts the controller, which passes them on
            result = trainer.fit()
        status = "FINISHED"
        return result
    except ray.train.ControllerError as e:
        if type(e.controller_failure).__name__ != "WorkerGroupStartupTimeoutError":
            raise
        waited = (controller_failure_limit(resource_wait_s, per_attempt_s) + 1) * per_attempt_s
        raise ClusterTooSmallError(_too_small_message(workers, per_worker, waited, run_name)) from e
    finally:
        if mlflow_tracker is not None:
            mlflow_tracker.close(status)


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
