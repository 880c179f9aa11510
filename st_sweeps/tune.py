"""The sweep front door: ``python -m st_sweeps.tune FILE.yaml [--set k=v ...] [--resume] [--dry-run]``.

A Ray Tune run whose trials each train one experiment config (the sweep file's base config with
the point Optuna suggested), report every evaluation to Tune, and log into an MLflow child run
nested under the sweep's parent run. ASHA stops poor trials early; those reach the Optuna study
as PRUNED (``PruningAwareOptunaSearch``), not as COMPLETE with a low-budget value. At the end: a
ranked table, ``best_config.yaml``, and for several objectives the Pareto front (table and plot),
all also logged to the parent run with the sweep file and the best values.

Layout of a sweep, ``<storage_path>/<name>/``::

    sweep.json           parent MLflow run id, Optuna study name, tracking URI (reused by --resume)
    search_space.yaml    the sweep file as run (after --set); --resume refuses a different one
    mlflow_runs/<trial>  each trial's MLflow run id (a resumed trial logs into the same run)
    ray_session.json     the local Ray session of the latest driver (--resume stops what a killed one left)
    trial_<id>/          Ray Tune's trial directories; checkpoint_*/ hold one step_*.pt each
    train/<trial>/       Ray Train runs (resources.workers > 1 only)
    report/              ranking.txt/.csv/.md, best_config.yaml, Optuna's figures (history, importances,
                         parallel coordinates per objective; pareto.csv/.png), optuna.db

Bad input is one line ``file: key.path: problem (allowed: ...)`` and exit status 2; an
interrupted sweep (Ctrl-C) exits 130 and says how to resume; a failure of the driver itself is
one line pointing at the traceback in ``$TMPDIR/st_sweeps_tune_driver.log``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from st_sweeps import report
from st_sweeps.config import dump_yaml, flatten
from st_sweeps.errors import ConfigError
from st_sweeps.files import link_or_copy, prepend_pythonpath
from st_sweeps.metrics import unit as metric_unit
from st_sweeps.search_space import SearchSpace, apply_params, load_search_space, summary

if TYPE_CHECKING:
    from st_sweeps.tracking import LatestMetrics

# Keys every report carries besides the metrics: the training step (ASHA's time axis) and
# whether it is the trial's last evaluation (a trial that ends without one was stopped early).
STEP_KEY = "step"
FINISHED_KEY = "trial/finished"
# In a baseline replicate's Tune config (beside the sampled params and its training "seed"): the
# seed, marking the trial as the sweep's baseline (never stopped early, compared in the report)
BASELINE_KEY = "st_sweeps.baseline_seed"
SWEEP_FILE = "sweep.json"
SPACE_COPY = "search_space.yaml"
RUN_IDS_DIR = "mlflow_runs"
REPORT_DIR = "report"
RAY_SESSION_FILE = "ray_session.json"  # the local Ray session of the latest driver (stop_orphaned_ray)
META_FILE = "st_sweeps_trial.json"  # inside each Tune checkpoint, beside step_*.pt
RAY_TRAIN_DRIVER_CPU = 0.1  # a trial that only drives a Ray Train job holds this much (docs/SOURCES.md)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

log = logging.getLogger("st_sweeps.tune")


# ======================================================================================== trials
@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial needs besides its sampled params (plain data: Ray pickles it)."""

    sweep_name: str
    sweep_dir: str
    base: dict[str, Any]
    metrics: tuple[str, ...]
    modes: tuple[str, ...]
    tracking_uri: str
    experiment: str
    parent_run_id: str
    cpus: float = 1.0
    gpus: float = 0.0
    workers: int = 1

    def experiment_config(self, params: Mapping[str, Any], trial_id: str) -> Any:
        from st_sweeps.experiment import experiment_from_dict

        data = apply_params(self.base, {k: v for k, v in params.items() if k != BASELINE_KEY})
        data["name"] = f"{self.sweep_name}-{trial_id}"
        return experiment_from_dict(data, "base")


def trial_run_name(trial_id: str) -> str:
    return f"trial_{trial_id}"


def _trial_dirname(trial: Any) -> str:
    return trial_run_name(trial.trial_id)


def _open_child_run(spec: TrialSpec, trial_id: str, params: Mapping[str, Any], known_id: str | None) -> Any:
    """The trial's MLflow run: the id its checkpoint or its id file remembers, else a new child of
    the sweep's parent run — its id written at once, so that a resumed trial never makes a second."""
    from st_sweeps.tracking import RunIdFile, open_remembered_run

    tags = {"st_sweeps.role": "trial", "st_sweeps.sweep": spec.sweep_name, "st_sweeps.trial_id": trial_id,
            "st_sweeps.sampled": json.dumps({k: v for k, v in params.items() if k != BASELINE_KEY}, sort_keys=True)}
    if BASELINE_KEY in params:
        tags["st_sweeps.baseline_seed"] = str(params[BASELINE_KEY])
    # a driver killed between creating the run and writing its id leaves a run to find by its tags
    memory = RunIdFile(Path(spec.sweep_dir) / RUN_IDS_DIR / trial_id)
    return open_remembered_run(spec.tracking_uri, spec.experiment, memory, run_id=known_id,
                               run_name=trial_run_name(trial_id), parent_run_id=spec.parent_run_id, tags=tags,
                               find_tags={"mlflow.parentRunId": spec.parent_run_id, "st_sweeps.trial_id": trial_id})


def _is_better(value: float, best: float | None, mode: str) -> bool:
    return math.isfinite(value) and (best is None or (value < best if mode == "min" else value > best))


def _check_objectives(metrics: Mapping[str, Any], wanted: Sequence[str], step: int) -> None:
    missing = [m for m in wanted if m not in metrics]
    if missing:
        raise RuntimeError(f"the evaluation at step {step} produced no {', '.join(missing)} (it produced "
                           f"{', '.join(sorted(metrics)) or 'nothing'}); check the base config's eval section "
                           "(and the Inception weights for eval/fid)")


class _TuneReporter:
    """``on_evaluation`` of a one-process trial: one ``tune.report`` per evaluation, carrying a
    Tune checkpoint with the Trainer's checkpoint file and the trial's bookkeeping (MLflow run
    id, best value so far, this report), and tagging the MLflow run with the best checkpoint."""

    def __init__(self, spec: TrialSpec, tracker: Any, latest: LatestMetrics, total_steps: int,
                 best: float | None):
        self.spec, self.tracker, self.latest = spec, tracker, latest
        self.total_steps = total_steps
        self.best = best

    def __call__(self, step: int, metrics: dict[str, float], path: Path | None) -> None:
        _check_objectives(metrics, self.spec.metrics, step)
        finished = step >= self.total_steps
        payload = _payload(metrics, self.latest.values, self.spec.metrics, step, finished)
        primary = payload[self.spec.metrics[0]]
        better = _is_better(primary, self.best, self.spec.modes[0])
        if better:
            self.best = primary
        meta = {"mlflow_run_id": self.tracker.run_id, "best": self.best, "report": payload}
        if finished:
            # Tune may stop the trial as soon as it sees its last report (ASHA at max_t)
            self.tracker.close("FINISHED")
        with tempfile.TemporaryDirectory(prefix="st_sweeps_report_") as tmp:
            if path is not None:
                link_or_copy(Path(path), Path(tmp) / Path(path).name)
            (Path(tmp) / META_FILE).write_text(json.dumps(meta))
            tune.report(payload, checkpoint=tune.Checkpoint.from_directory(tmp))
        if better:
            persisted = tune.get_checkpoint()  # the copy in the sweep's storage
            self.tracker.set_tags({"best_checkpoint": persisted.path if persisted is not None else str(path),
                                   "best_step": str(step), f"best_{self.spec.metrics[0]}": f"{primary:.6g}"})


def _payload(metrics: Mapping[str, float], train: Mapping[str, float], objectives: Sequence[str], step: int,
             finished: bool) -> dict[str, float]:
    """One report: the objectives first (Tune's progress table shows the first columns), then
    the step and finished flag, the other evaluation metrics, and the latest train metrics."""
    evaluation = {k: float(v) for k, v in metrics.items()}
    out = {m: evaluation[m] for m in objectives}
    out.update({STEP_KEY: step, FINISHED_KEY: float(finished)})
    out.update({k: v for k, v in evaluation.items() if k not in out})
    out.update({k: v for k, v in train.items() if k not in out})
    return out


def _read_meta(checkpoint: Any) -> dict[str, Any]:
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as d:
        f = Path(d) / META_FILE
        return json.loads(f.read_text()) if f.exists() else {}


def run_trial(params: dict[str, Any], spec: TrialSpec) -> None:
    """The Tune function: train ``spec.base`` + ``params``, reporting every evaluation."""
    trial_id = tune.get_context().get_trial_id()
    config = spec.experiment_config(params, trial_id)
    if spec.workers > 1:
        _run_ray_train_trial(params, spec, config, trial_id)
        return
    import torch

    torch.set_num_threads(max(1, int(spec.cpus)))
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # a line per checkpoint otherwise
    checkpoint = tune.get_checkpoint()
    meta = _read_meta(checkpoint)
    tracker = _open_child_run(spec, trial_id, params, meta.get("mlflow_run_id"))
    run_dir = Path(tempfile.mkdtemp(prefix=f"st_sweeps_{trial_id}_"))
    try:
        if meta.get("report", {}).get(FINISHED_KEY) == 1.0:
            # it finished just before an interruption that Tune's saved state missed: report the
            # final evaluation again rather than train anything twice
            tracker.close("FINISHED")
            tune.report(meta["report"])
        else:
            _train_locally(spec, config, tracker, checkpoint, meta, run_dir)
    except Exception:
        tracker.close("FAILED")
        raise
    # a trial Tune stops (ASHA) ends without an exception here; the driver closes its run
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _train_locally(spec: TrialSpec, config: Any, tracker: Any, checkpoint: Any, meta: Mapping[str, Any],
                   run_dir: Path) -> None:
    from st_sweeps.experiment import config_yaml
    from st_sweeps.ray_train import restore_checkpoint
    from st_sweeps.tracking import LatestMetrics, MultiTracker, skip_logged_steps
    from st_sweeps.trainer import Trainer

    restore_checkpoint(checkpoint, run_dir)  # into run_dir/checkpoints, where fit() resumes from
    tracker = skip_logged_steps(tracker)
    resolved = run_dir / "resolved_config.yaml"
    resolved.write_text(config_yaml(config))
    tracker.log_artifact(resolved)
    latest = LatestMetrics(prefixes=("train/", "perf/"))  # sent along with each report
    reporter = _TuneReporter(spec, tracker, latest, config.train.steps, meta.get("best"))
    trainer = Trainer(config, run_dir, tracker=MultiTracker(tracker, latest), on_evaluation=reporter,
                      progress=False)
    trainer.fit()


def _run_ray_train_trial(params: Mapping[str, Any], spec: TrialSpec, config: Any, trial_id: str) -> None:
    """resources.workers > 1: the trial drives a Ray Train job (``st_sweeps.ray_train``) whose
    rank 0 logs into the trial's MLflow run; Train resumes itself from ``<sweep>/train/<trial>``."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from st_sweeps.experiment import config_yaml
    from st_sweeps.ray_train import MlflowTarget, make_torch_trainer

    total_steps, wanted = config.train.steps, spec.metrics

    class _Forward(TuneReportCallback):
        """Ray Train's Tune callback, adding the finished flag and checking the objectives."""

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            first = dict(metrics[0])
            step = int(first.get(STEP_KEY, 0))
            _check_objectives(first, wanted, step)
            first[FINISHED_KEY] = float(step >= total_steps)
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    tracker = _open_child_run(spec, trial_id, params, None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            resolved = Path(tmp) / "resolved_config.yaml"
            resolved.write_text(config_yaml(config))
            tracker.log_artifact(resolved)
        trainer = make_torch_trainer(
            config, run_name=trial_id, storage_path=Path(spec.sweep_dir) / "train", workers=spec.workers,
            gpus_per_worker=spec.gpus, cpus_per_worker=spec.cpus, num_to_keep=None,  # the best stays
            tracking=MlflowTarget(spec.tracking_uri, spec.experiment, tracker.run_id, spec.parent_run_id),
            callbacks=[_Forward()])
        trainer.fit()
    except Exception:
        tracker.close("FAILED")
        raise
    tracker.close("FINISHED")


# ======================================================================================== searcher
# Ray's OptunaSearch keeps the Optuna study, its per-trial Optuna trials and the finished trial ids
# in private attributes (checked against Ray 2.60). Every access goes through ``_internal``, and
# ``__init__`` checks they exist, so a Ray that renames them fails at once, naming its version,
# instead of mid-sweep.
_OPTUNA_SEARCH_INTERNALS = ("_ot_study", "_ot_trials", "_completed_trials")


class PruningAwareOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, telling Optuna how each trial really ended.

    Ray's version tells a trial that ASHA stopped as COMPLETE with its last, low-budget value
    (and an errored trial that had reported as COMPLETE too), which misleads the sampler and
    anyone reading the study. Here a trial whose last report lacks ``trial/finished = 1`` is
    told PRUNED (Optuna then keeps its last intermediate value for one objective, none for
    several); an error, or a missing or non-finite objective, is FAIL; only a trial that ran all
    its steps is COMPLETE.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        missing = [name for name in _OPTUNA_SEARCH_INTERNALS if not hasattr(self, name)]
        if missing:
            import ray

            raise RuntimeError(
                f"ray {ray.__version__}: ray.tune.search.optuna.OptunaSearch no longer has {', '.join(missing)}, "
                "which st_sweeps' PruningAwareOptunaSearch reads (written against Ray 2.60). Install the pinned "
                "Ray (requirements-lock.txt) or update PruningAwareOptunaSearch in st_sweeps/tune.py.")

    def _internal(self, name: str) -> Any:
        return getattr(self, name)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        trials, completed = self._internal("_ot_trials"), self._internal("_completed_trials")
        if trial_id in completed or trial_id not in trials:
            return super().on_trial_complete(trial_id, result, error)
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [(result or {}).get(m) for m in metrics]
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        if error or not result or not finite:
            state, told = TrialState.FAIL, None
        elif result.get(FINISHED_KEY) != 1.0:
            state, told = TrialState.PRUNED, None
            if len(values) == 1:  # Ray never reports the result that made ASHA stop: keep it
                step = result.get("training_iteration", result.get(STEP_KEY, 0))
                trials[trial_id].report(float(values[0]), int(step))
        else:
            state, told = TrialState.COMPLETE, [float(v) for v in values]
        try:
            self._internal("_ot_study").tell(trials[trial_id], told, state=state)
        except (ValueError, RuntimeError) as e:  # e.g. told already, before an interruption
            log.warning("Optuna refused trial %s as %s: %s", trial_id, state.name, e)
        completed.add(trial_id)

    def enqueue_baseline(self, params: Mapping[str, Any], seeds: Sequence[int]) -> None:
        """The baseline as the study's first ``len(seeds)`` trials, one per training seed."""
        for _ in seeds:
            self._internal("_ot_study").enqueue_trial(dict(params), skip_if_exists=False)
        self._baseline_params = dict(params)
        self._baseline_seeds = list(seeds)
        self._baseline_of: dict[str, int] = {}

    def suggest(self, trial_id: str) -> dict | None:
        """Optuna's point; the first suggestions (Optuna hands out enqueued trials first) are the
        baseline's replicates, which also get their training seed and the baseline mark."""
        config = super().suggest(trial_id)
        pending = getattr(self, "_baseline_seeds", [])
        if config is None or not (pending or trial_id in getattr(self, "_baseline_of", {})):
            return config
        if trial_id not in self._baseline_of:
            if config != self._baseline_params:  # Optuna changed its queue discipline: say so
                raise RuntimeError(f"expected the enqueued baseline {self._baseline_params}, Optuna suggested {config}")
            self._baseline_of[trial_id] = pending.pop(0)
        seed = self._baseline_of[trial_id]
        return {**config, "seed": seed, BASELINE_KEY: seed}

    @property
    def study(self) -> Any:
        return self._internal("_ot_study")

    def optuna_numbers(self) -> dict[str, int]:
        """Tune trial id -> Optuna trial number."""
        return {tid: t.number for tid, t in self._internal("_ot_trials").items()}


def make_searcher(space: SearchSpace, study_name: str) -> PruningAwareOptunaSearch:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = space.searcher
    if s.name == "tpe":
        sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials)
    elif s.name == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=s.seed)
    elif s.name == "random":
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    else:
        sampler = optuna.samplers.GridSampler(space.grid(), seed=s.seed)
    # metric/mode go here only, never into TuneConfig, where they would silently turn a
    # multi-objective search single-objective (docs/SOURCES.md)
    metric: Any = space.metrics if space.multi_objective else space.metrics[0]
    mode: Any = space.modes if space.multi_objective else space.modes[0]
    searcher = PruningAwareOptunaSearch(space.define_by_run(), metric=metric, mode=mode, sampler=sampler,
                                        study_name=study_name)
    if space.baseline is not None:
        first = space.reference.seed
        searcher.enqueue_baseline(space.baseline.params, [first + i for i in range(space.baseline.seeds)])
    return searcher


class BaselineKeepingASHA(ASHAScheduler):
    """ASHA that never stops a baseline replicate: its values still fill the rungs (the others are
    judged against them), but it runs to the end, so that the report can compare with it."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and BASELINE_KEY in (trial.config or {}) and result.get(FINISHED_KEY) != 1.0:
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action


def make_scheduler(space: SearchSpace) -> Any:
    if space.scheduler.name == "none":
        return None
    # its own metric and mode: the searcher may have several objectives, ASHA takes one
    return BaselineKeepingASHA(time_attr=STEP_KEY, metric=space.scheduler_metric, mode=space.scheduler_mode,
                               max_t=space.max_t, grace_period=space.grace_period,
                               reduction_factor=space.scheduler.reduction_factor)


# ======================================================================================== the sweep
@dataclass(frozen=True)
class Sweep:
    """A sweep on disk: its directory and the bookkeeping in ``sweep.json``."""

    name: str
    directory: Path
    source: str
    study_name: str
    tracking_uri: str
    experiment: str
    parent_run_id: str

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {k: str(v) for k, v in self.__dict__.items()}
        (self.directory / SWEEP_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "Sweep":
        data = json.loads((directory / SWEEP_FILE).read_text())
        return cls(**{**data, "directory": Path(data["directory"])})


def _storage(space: SearchSpace) -> Path:
    return Path(space.storage_path).expanduser().resolve()


def _valid_name(name: str, where: str) -> str:
    import re

    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$", name):
        raise ConfigError(where, f"got {name!r}", "letters, digits and _ . = + - (no '/'), starting with a letter or digit")
    return name


def _latest_sweep(storage: Path, stem: str) -> Path | None:
    found = [p for p in storage.glob(f"{stem}-*") if (p / SWEEP_FILE).exists()] if storage.is_dir() else []
    return max(found, key=lambda p: (p / SWEEP_FILE).stat().st_mtime, default=None)


def resolve_sweep_dir(space: SearchSpace, file: Path, name: str | None, resume: bool) -> tuple[str, Path]:
    """(name, directory) of the sweep to start or to resume."""
    storage = _storage(space)
    name = _valid_name(name, "--name") if name else space.name
    if resume:
        if name is None:
            latest = _latest_sweep(storage, file.stem)
            if latest is None:
                raise ConfigError("--resume", f"no sweep of {file.name} under {storage}",
                                  "start it without --resume first, or give --name NAME")
            return latest.name, latest
        directory = storage / name
        if not (directory / SWEEP_FILE).exists():
            raise ConfigError("--resume", f"no sweep {name!r} under {storage}",
                              ", ".join(sorted(p.name for p in storage.glob("*") if (p / SWEEP_FILE).exists()))
                              or "none yet: start it without --resume")
        return name, directory
    if name is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name, n = f"{file.stem}-{stamp}", 1
        while (storage / name).exists():
            n += 1
            name = f"{file.stem}-{stamp}-{n}"
    directory = storage / name
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError("--name", f"sweep {name!r} already exists in {storage}",
                          "--resume to continue it, or another --name")
    return name, directory


def _check_same_space(space: SearchSpace, directory: Path) -> None:
    saved = yaml.safe_load((directory / SPACE_COPY).read_text()) or {}
    a, b = flatten(saved), flatten(space.data)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise ConfigError("--resume", f"sweep {directory.name!r} was started from a different sweep file "
                          f"(differs at {', '.join(diff[:6])})", f"the same file and --set values as in {directory / SPACE_COPY}")


def _tracking_uri(space: SearchSpace) -> str:
    from st_sweeps.tracking import default_tracking_uri

    return space.mlflow.tracking_uri or default_tracking_uri()


def _open_parent_run(space: SearchSpace, file: Path, name: str, directory: Path) -> tuple[Sweep, Any]:
    """Create the sweep's parent MLflow run (or reopen it, on resume) and save ``sweep.json``."""
    from st_sweeps.tracking import MlflowTracker

    if (directory / SWEEP_FILE).exists():
        sweep = Sweep.load(directory)
        tracker = MlflowTracker(sweep.tracking_uri, sweep.experiment, run_id=sweep.parent_run_id)
        tracker.set_tags({"st_sweeps.resumed": time.strftime("%Y-%m-%d %H:%M:%S")})
        return sweep, tracker
    uri = _tracking_uri(space)
    tracker = MlflowTracker(uri, space.mlflow.experiment, run_name=name,
                            tags={"st_sweeps.role": "sweep", "st_sweeps.sweep": name, "st_sweeps.file": str(file),
                                  "mlflow.note.content": "```\n" + summary(space) + "\n```"})
    sweep = Sweep(name=name, directory=directory, source=str(file.resolve()), study_name=name, tracking_uri=uri,
                  experiment=space.mlflow.experiment, parent_run_id=tracker.run_id)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPACE_COPY).write_text(yaml.safe_dump(space.data, sort_keys=False))
    sweep.save()
    params = {"trials": space.trials, "searcher": space.searcher.name, "searcher.seed": space.searcher.seed,
              "scheduler": space.scheduler.name, "objectives": ", ".join(f"{o.metric} {o.mode}" for o in space.objectives),
              "resources": f"{space.resources.cpus:g} cpu, {space.resources.gpus:g} gpu, {space.resources.workers} worker(s)"}
    if space.scheduler.name == "asha":
        params.update({"asha.metric": space.scheduler_metric, "asha.mode": space.scheduler_mode,
                       "asha.grace_period_steps": space.grace_period, "asha.max_t_steps": space.max_t,
                       "asha.reduction_factor": space.scheduler.reduction_factor})
    params.update({f"space.{d.key}": d.describe() + (f" when {d.when}" if d.when else "") for d in space.dimensions})
    tracker.log_params(params)
    tracker.log_artifact(file, "sweep")
    tracker.log_artifact(directory / SPACE_COPY, "sweep")
    return sweep, tracker


def init_ray(address: str | None, workers: int = 1) -> str | None:
    """Start (or join, with ``address``) Ray; the session directory of a cluster started here."""
    import ray

    package_parent = str(Path(__file__).resolve().parent.parent)
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if address is None:
        # trial processes import st_sweeps from this checkout even when it is not installed
        prepend_pythonpath(package_parent)
        # the dashboard hosts the state API that Ray Train's controller polls; plain trials do without
        kwargs["include_dashboard"] = workers > 1
    else:
        kwargs["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parent)]}
    # "local": a new cluster of this sweep's own; without an address Ray would join the latest
    # cluster started on this machine (another user's `ray start`, another sweep's test cluster)
    # ($RAY_ADDRESS, set for a Ray job, comes here as ``address``)
    context = ray.init(address=address or "local", **kwargs)
    return str(Path(context.address_info["session_dir"]).resolve()) if address is None else None


# ======================================================================================== orphans
def _session_processes(session_dir: str) -> list[int]:
    """This user's processes (not this one) holding a file open in a Ray session directory: every
    process of a local Ray session logs there (GCS, raylet, its agents, workers). Linux only."""
    prefix = session_dir.rstrip("/") + "/"
    found: list[int] = []
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd).startswith(prefix) for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
        except OSError:  # gone, or another user's
            continue
    return found


def stop_orphaned_ray(directory: Path, timeout_s: float = 20.0) -> list[int]:
    """Stop what is left of the local Ray session recorded in ``directory`` (a driver killed with
    SIGKILL takes its GCS, raylet and workers with it within seconds, but Ray's dashboard and
    runtime-env agents live on for a minute or more). SIGTERM, then SIGKILL after ``timeout_s``.
    Returns the pids it found."""
    import signal

    record = directory / RAY_SESSION_FILE
    if not record.exists():
        return []
    saved = json.loads(record.read_text())
    driver, session_dir = saved.get("pid"), saved.get("session_dir")
    if isinstance(driver, int) and driver != os.getpid() and _is_sweep_driver(driver):
        raise ConfigError("--resume", f"sweep {directory.name!r} is still running (driver pid {driver})",
                          "wait for it, or stop it first (Ctrl-C, or kill it)")
    pids = _session_processes(session_dir) if session_dir else []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = [p for p in pids if _alive(p)]
        if not pids:
            break
    if pids:
        log.warning("could not stop Ray processes %s of the previous session %s", pids, session_dir)
    return pids


def _is_sweep_driver(pid: int) -> bool:
    try:
        return _alive(pid) and b"st_sweeps.tune" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _check_cluster_fits(space: SearchSpace, local: bool) -> None:
    """A trial the cluster can never place would wait forever: say so now."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    r = space.resources
    if r.workers == 1:
        need_cpu, need_gpu = r.cpus, r.gpus
    else:
        need_cpu, need_gpu = RAY_TRAIN_DRIVER_CPU + r.workers * r.cpus, r.workers * r.gpus
    if need_cpu > cpus + 1e-9 or need_gpu > gpus + 1e-9:
        msg = (f"one trial needs {need_cpu:g} CPU and {need_gpu:g} GPU, the Ray cluster has {cpus:g} CPU and "
               f"{gpus:g} GPU")
        hint = ("smaller resources.cpus/gpus" if r.workers == 1 else
                f"resources.cpus <= {(cpus - RAY_TRAIN_DRIVER_CPU) / r.workers:.2f} per worker, or fewer workers")
        if local:
            raise ConfigError("resources", msg, hint)
        log.warning("%s; waiting for the cluster to grow", msg)


def _trainable(space: SearchSpace, sweep: Sweep) -> Any:
    r = space.resources
    spec = TrialSpec(sweep_name=sweep.name, sweep_dir=str(sweep.directory), base=space.base,
                     metrics=tuple(space.metrics), modes=tuple(space.modes), tracking_uri=sweep.tracking_uri,
                     experiment=sweep.experiment, parent_run_id=sweep.parent_run_id, cpus=r.cpus, gpus=r.gpus,
                     workers=r.workers)
    resources = ({"cpu": r.cpus, "gpu": r.gpus} if r.workers == 1 else {"cpu": RAY_TRAIN_DRIVER_CPU})
    return tune.with_resources(tune.with_parameters(run_trial, spec=spec), resources)


def _tuner(space: SearchSpace, sweep: Sweep, resume: bool) -> Any:
    trainable = _trainable(space, sweep)
    if resume:
        return tune.Tuner.restore(str(sweep.directory), trainable=trainable, resume_errored=True)
    max_concurrent = space.max_concurrent
    if max_concurrent is None and space.resources.workers > 1:
        max_concurrent = 1  # each trial's Train workers must fit beside the others' (docs/SOURCES.md)
    # reuse_actors: a trial process serves the next trial (same resources for all), saving each
    # trial a process start and the imports of torch and st_sweeps (benchmarks/sweep_overhead.py)
    tune_config = tune.TuneConfig(search_alg=make_searcher(space, sweep.study_name), scheduler=make_scheduler(space),
                                  num_samples=space.trials, max_concurrent_trials=max_concurrent,
                                  trial_dirname_creator=_trial_dirname, reuse_actors=True)
    run_config = tune.RunConfig(
        name=sweep.name, storage_path=str(sweep.directory.parent),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=space.metrics[0],
                                                checkpoint_score_order=space.modes[0]),
        failure_config=tune.FailureConfig(max_failures=0), verbose=1)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


# ======================================================================================== results
def _rows(results: Any, space: SearchSpace, sweep: Sweep, searcher: PruningAwareOptunaSearch | None
          ) -> list[report.TrialRow]:
    states: dict[str, str] = {}
    if searcher is not None:
        by_number = {t.number: t.state.name for t in searcher.study.trials}
        states = {tid: by_number.get(n, "") for tid, n in searcher.optuna_numbers().items()}
    rows = []
    for r in results:
        m = dict(r.metrics or {})
        trial_id = str(m.get("trial_id") or Path(r.path).name.removeprefix("trial_"))
        if r.error is not None:
            status = "error"
        elif m.get(FINISHED_KEY) == 1.0:
            status = "completed"
        else:
            status = "pruned"
        id_file = sweep.directory / RUN_IDS_DIR / trial_id
        params = {k: v for k, v in (r.config or {}).items() if k in space.keys}
        best = _best_checkpoint(r, space.metrics[0], space.modes[0])
        seed = (r.config or {}).get(BASELINE_KEY)
        rows.append(report.TrialRow(
            trial_id=trial_id, status=status, params=params,
            values={k: float(m[k]) for k in space.metrics if isinstance(m.get(k), (int, float))},
            stderrs={k: float(m[report.stderr_key(k)]) for k in space.metrics
                     if isinstance(m.get(report.stderr_key(k)), (int, float))},
            baseline_seed=int(seed) if isinstance(seed, int) else None,
            step=int(m[STEP_KEY]) if isinstance(m.get(STEP_KEY), (int, float)) else None,
            run_id=id_file.read_text().strip() if id_file.exists() else None,
            optuna_state=states.get(trial_id), error=_one_line(r.error) if r.error is not None else None,
            extra=best))
    return rows


def _best_checkpoint(result: Any, metric: str, mode: str) -> dict[str, Any]:
    """The kept checkpoint with the best ``metric`` (Tune keeps the best two and the latest)."""
    candidates = [(metrics, checkpoint.path) for checkpoint, metrics in getattr(result, "best_checkpoints", None) or []]
    if not candidates and getattr(result, "metrics_dataframe", None) is not None and \
            "checkpoint_path" in result.metrics_dataframe:  # a Ray Train trial: paths come as a metric
        candidates = [(row, row["checkpoint_path"]) for row in result.metrics_dataframe.to_dict("records")
                      if isinstance(row.get("checkpoint_path"), str)]
    best: dict[str, Any] = {}
    for metrics, path in candidates:
        value = metrics.get(metric)
        if isinstance(value, (int, float)) and _is_better(float(value), best.get("value"), mode):
            step = metrics.get(STEP_KEY)
            best = {"value": float(value), "path": path, "step": int(step) if isinstance(step, (int, float)) else None}
    return best


MLFLOW_STATUS = {"completed": "FINISHED", "pruned": "KILLED", "error": "FAILED"}


def runs_for_unlogged_trials(rows: Sequence[report.TrialRow], sweep: Sweep) -> list[report.TrialRow]:
    """The rows, each with an MLflow run: a trial that failed before it opened its run (its node
    lost in its first seconds, say) gets one now, with its params, so that MLflow holds one run per
    trial as Tune does (``close_trial_runs`` then records its outcome and error)."""
    from st_sweeps.tracking import RunIdFile, open_remembered_run

    out = []
    for row in rows:
        if not row.run_id:
            tracker = open_remembered_run(
                sweep.tracking_uri, sweep.experiment, RunIdFile(sweep.directory / RUN_IDS_DIR / row.trial_id),
                run_name=trial_run_name(row.trial_id), parent_run_id=sweep.parent_run_id,
                tags={"st_sweeps.role": "trial", "st_sweeps.sweep": sweep.name, "st_sweeps.trial_id": row.trial_id},
                find_tags={"mlflow.parentRunId": sweep.parent_run_id, "st_sweeps.trial_id": row.trial_id})
            tracker.log_params({k: v for k, v in row.params.items() if k != BASELINE_KEY})
            row = dataclasses.replace(row, run_id=tracker.run_id)
        out.append(row)
    return out


def close_trial_runs(rows: Sequence[report.TrialRow], sweep: Sweep, metric: str) -> None:
    """Give each trial's MLflow run its outcome (a trial ASHA stopped is killed before it can),
    the best checkpoint's path, and its final status: FINISHED, KILLED (stopped early), FAILED."""
    from st_sweeps.tracking import MlflowTracker

    for row in rows:
        if not row.run_id:
            continue
        tracker = MlflowTracker(sweep.tracking_uri, sweep.experiment, run_id=row.run_id)
        tags = {"st_sweeps.outcome": row.status, "st_sweeps.rank": str(row.rank)}
        if row.error:
            tags["st_sweeps.error"] = row.error[:5000]
        if row.extra.get("path"):
            tags.update({"best_checkpoint": row.extra["path"], "best_step": str(row.extra.get("step")),
                         f"best_{metric}": f"{row.extra['value']:.6g}"})
        if row.optuna_state:
            tags["optuna.state"] = row.optuna_state
        tracker.set_tags(tags)
        tracker.close(MLFLOW_STATUS.get(row.status, "FAILED"))


def close_lost_trial_runs(sweep: Sweep, trial_ids: set[str]) -> None:
    """A trial started after Tune last saved its state is unknown to a resumed sweep, which runs
    another in its place: the lost trial's child run is tagged, closed KILLED and moved to MLflow's
    trash (restorable), so that the experiment holds exactly one run per trial of the sweep."""
    from st_sweeps.tracking import MlflowTracker, find_runs

    children = find_runs(sweep.tracking_uri, sweep.experiment, {"mlflow.parentRunId": sweep.parent_run_id,
                                                                 "st_sweeps.role": "trial"})
    for run_id, tags in children.items():
        trial_id = tags.get("st_sweeps.trial_id")
        if trial_id in trial_ids:
            continue
        tracker = MlflowTracker(sweep.tracking_uri, sweep.experiment, run_id=run_id)
        log.warning("sweep %s: trial %s was lost with a killed driver; its MLflow run %s goes to the trash",
                    sweep.name, trial_id, run_id)
        tracker.set_tags({"st_sweeps.outcome": "lost"})
        tracker.close("KILLED")
        tracker.delete()


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:300]


def _final_searcher(directory: Path) -> PruningAwareOptunaSearch | None:
    """The searcher as Tune saved it at the end (its Optuna study holds every trial's state)."""
    searcher = PruningAwareOptunaSearch()
    try:
        searcher.restore_from_dir(str(directory))
    except (RuntimeError, OSError):
        return None
    return searcher if searcher.study is not None else None


def _export_study(searcher: PruningAwareOptunaSearch, path: Path, study_name: str) -> None:
    """Copy the in-memory Optuna study into SQLite, for optuna-dashboard and for tests."""
    import optuna

    storage = f"sqlite:///{path.resolve()}"
    if path.exists():
        path.unlink()
    study = optuna.create_study(storage=storage, study_name=study_name, directions=searcher.study.directions)
    study.add_trials([t for t in searcher.study.trials if t.state.is_finished()])


def write_report(results: Any, space: SearchSpace, sweep: Sweep, parent: Any) -> tuple[str, Path]:
    """Rank, print-ready table, files in ``report/``, and the parent run's artifacts and metrics."""
    out = sweep.directory / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    searcher = _final_searcher(sweep.directory)
    objectives = [report.Objective(o.metric, o.mode) for o in space.objectives]
    rows = runs_for_unlogged_trials(_rows(results, space, sweep, searcher), sweep)
    ranked = report.mark_within_noise(report.rank_trials(rows, objectives), objectives)
    keys = space.keys
    notes = report.noise_lines(ranked, objectives, {o.metric: metric_unit(o.metric) for o in objectives})
    table = report.format_table(ranked, objectives, keys) + "\n\n" + "\n".join(notes)
    (out / "ranking.txt").write_text(table + "\n")
    (out / "ranking.md").write_text(report.format_markdown(ranked, objectives, keys) + "\n" +
                                    "".join(f"- {line}\n" for line in notes))
    (out / "ranking.csv").write_text(report.to_csv(ranked, objectives, keys))
    if searcher is not None:
        _export_study(searcher, out / "optuna.db", sweep.study_name)
    close_trial_runs(ranked, sweep, space.metrics[0])
    best = report.best_trial(ranked, objectives)
    if best is not None:
        seed = {} if best.baseline_seed is None else {"seed": best.baseline_seed}  # a replicate: its own seed
        config = space.experiment({**best.params, **seed}, name=f"{sweep.name}-best")
        (out / "best_config.yaml").write_text(report.best_config_text(dump_yaml(config), best, objectives, sweep.name))
    if space.multi_objective:
        (out / "pareto.csv").write_text(report.to_csv(report.pareto_front(ranked), objectives, keys))
    skipped = {"all figures": "the sweep's Optuna study could not be read back"}
    if searcher is not None:
        _, skipped = write_figures(searcher.study, ranked, objectives, out, title=f"Pareto front: {sweep.name}")
    for figure, why in skipped.items():
        log.warning("sweep %s: no %s: %s", sweep.name, figure, why)
    close_lost_trial_runs(sweep, {r.trial_id for r in ranked})

    counts = {s: sum(r.status == s for r in ranked) for s in ("completed", "pruned", "error")}
    metrics = {f"trials/{s}": float(n) for s, n in counts.items()}
    if best is not None:
        metrics.update({f"best/{o.metric}": best.values[o.metric] for o in objectives})
        metrics.update({f"best/{report.stderr_key(k)}": v for k, v in best.stderrs.items()})
    metrics.update(report.comparison_metrics(ranked, objectives))
    parent.log_metrics(metrics, 0)
    parent.set_tags({"best_trial": best.trial_id if best else "", "best_run_id": (best.run_id or "") if best else "",
                     "st_sweeps.figures_skipped": "; ".join(f"{k}: {v}" for k, v in skipped.items())[:5000]})
    publish_report(out, parent)
    return table, out


def write_figures(study: Any, ranked: Sequence[report.TrialRow], objectives: Sequence[report.Objective],
                  directory: Path, title: str = "") -> tuple[list[Path], dict[str, str]]:
    """The sweep's pictures in ``directory``, drawn by ``optuna.visualization.matplotlib`` from its
    study: per objective the optimisation history, parameter importances and parallel coordinates
    (``<kind>_<metric>.png``), and for several objectives the Pareto front (``pareto.png``, with
    the trials' standard errors drawn over it). Returns the files written and, for each picture
    skipped, why (too few completed trials or parameters, or Optuna's error): a picture never
    fails a sweep."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ov

    directory.mkdir(parents=True, exist_ok=True)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    params = {k for t in done for k in t.params}
    names = [o.metric for o in objectives]
    plots: dict[str, Any] = {}
    for i, name in enumerate(names):
        target = (lambda t, i=i: t.values[i]) if len(names) > 1 else None
        slug = "".join(c if c.isalnum() else "_" for c in name)
        plots[f"optimization_history_{slug}.png"] = lambda target=target, name=name: ov.plot_optimization_history(
            study, target=target, target_name=name)
        plots[f"param_importances_{slug}.png"] = lambda target=target, name=name: ov.plot_param_importances(
            study, target=target, target_name=name)
        plots[f"parallel_coordinate_{slug}.png"] = lambda target=target, name=name: ov.plot_parallel_coordinate(
            study, target=target, target_name=name)
    if len(names) > 1:
        plots["pareto.png"] = lambda: ov.plot_pareto_front(
            study, target_names=[f"{o.metric} ({o.mode})" for o in objectives[:2]],
            targets=(lambda t: t.values[:2]) if len(names) > 2 else None)
    written: list[Path] = []
    skipped: dict[str, str] = {}
    for file, plot in plots.items():
        if not done:
            skipped[file] = "no completed trial"
            continue
        if file.startswith("param_importances") and (len(done) < 2 or len(params) < 2):
            skipped[file] = (f"importances need at least 2 completed trials and 2 parameters (the study has "
                             f"{len(done)} and {len(params)})")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = plot()
            if file == "pareto.png":
                report.draw_over_front(ax, ranked, objectives)
                if title:
                    ax.set_title(title)
            ax.figure.savefig(directory / file, dpi=110, bbox_inches="tight")
            written.append(directory / file)
        except Exception as e:  # noqa: BLE001 (a picture is never worth a failed sweep)
            skipped[file] = f"{type(e).__name__}: {_one_line(e)}"
        finally:
            plt.close("all")
    return written, skipped


def publish_report(directory: Path, parent: Any) -> None:
    """The report's files (tables, best config, figures) as the parent run's ``report/`` artifacts."""
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.suffix != ".db":
            parent.log_artifact(f, REPORT_DIR)


# ======================================================================================== CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m st_sweeps.tune",
        description="Hyperparameter sweep (Ray Tune + Optuna + ASHA) over Soft Truncation training, tracked in MLflow.")
    p.add_argument("file", type=Path, help="sweep file (search_spaces/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the sweep file: trials=4, base.train.steps=200, "
                        "space.truncation.eps.high=1e-3, mlflow.tracking_uri=http://host:5000 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep (the latest of this file, or --name)")
    p.add_argument("--name", help="sweep name (default: the file's name, else <file stem>-<timestamp>)")
    p.add_argument("--address", help="Ray cluster to join (e.g. auto, ray://head:10001); default: a local one")
    p.add_argument("--dry-run", action="store_true", help="check the file, print the plan, start nothing")
    return p.parse_args(argv)


def _dry_run(space: SearchSpace) -> int:
    print(summary(space))
    print(f"mlflow:     {space.mlflow.experiment} at {_tracking_uri(space)}")
    print(f"storage:    {_storage(space)}")
    print("\nfirst point's experiment config:")
    print(dump_yaml(space.reference), end="")
    return 0


def run(args: argparse.Namespace) -> int:
    space = load_search_space(args.file, args.overrides)
    if args.dry_run:
        return _dry_run(space)
    name, directory = resolve_sweep_dir(space, args.file, args.name, args.resume)
    if args.resume:
        _check_same_space(space, directory)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if args.resume:
        stop_orphaned_ray(directory)  # a killed driver's Ray agents, before a new session starts
    try:
        address = args.address or os.environ.get("RAY_ADDRESS") or None  # a Ray job's own cluster
        session_dir = init_ray(address, space.resources.workers)
        _check_cluster_fits(space, local=address is None)  # before anything is written
        sweep, parent = _open_parent_run(space, args.file, name, directory)
        if session_dir is not None:
            record = {"session_dir": session_dir, "pid": os.getpid()}
            (directory / RAY_SESSION_FILE).write_text(json.dumps(record) + "\n")
    except BaseException:
        shutdown_ray()
        raise
    status = "FAILED"
    try:
        print(f"sweep {sweep.name}: {space.trials} trials -> {sweep.directory}\n"
              f"MLflow: experiment {sweep.experiment!r} at {sweep.tracking_uri} (parent run {sweep.parent_run_id})",
              flush=True)
        results = _tuner(space, sweep, args.resume).fit()
        # a trial that never reported its objective did not finish: an interrupt can mark such a
        # trial terminated (seen with reuse_actors), and it must run on --resume
        metric = space.objectives[0].metric
        finished = sum(1 for r in results if r.error is not None or metric in (r.metrics or {}))
        if len(results) < space.trials or finished < len(results):
            status = "KILLED"
            print(f"\nsweep {sweep.name} interrupted ({finished} of {space.trials} trials done); continue it with:\n"
                  f"  python -m st_sweeps.tune {args.file} {' '.join('--set ' + o for o in args.overrides)}"
                  f"{' ' if args.overrides else ''}--resume --name {sweep.name}", file=sys.stderr)
            return EXIT_INTERRUPTED
        table, out = write_report(results, space, sweep, parent)
        status = "FINISHED"
    finally:
        parent.close(status)
        shutdown_ray()
    print(f"\nTrials of sweep {sweep.name}, best first:\n{table}\n")
    print(f"report: {out}")
    if (out / "best_config.yaml").exists():
        print(f"best config: {out / 'best_config.yaml'}  (python -m st_sweeps.train {out / 'best_config.yaml'})")
    if (out / "pareto.png").exists():
        print(f"Pareto front: {out / 'pareto.csv'}, {out / 'pareto.png'}")
    print(f"MLflow: {_mlflow_hint(sweep, parent)}")
    return 0


def _mlflow_hint(sweep: Sweep, parent: Any) -> str:
    """Where to see the sweep: the runs table of its experiment (MLflow 3.17 opens an
    experiment on its GenAI overview unless the link says otherwise)."""
    from st_sweeps.tracking import runs_page_url

    if sweep.tracking_uri.startswith(("http://", "https://")):
        return runs_page_url(sweep.tracking_uri, parent.experiment_id)
    return (f"mlflow ui --backend-store-uri {sweep.tracking_uri} --host 127.0.0.1 --port 5000, then open "
            f"{runs_page_url('http://127.0.0.1:5000', parent.experiment_id)} (the parent run "
            f"{sweep.name!r} holds the report and figures under report/)")


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except ConfigError as e:
        where = str(args.file)
        msg = str(e)
        print(msg if msg.startswith(where) or msg.startswith("--") else f"{where}: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # one line here, the traceback in a file: Ray's are pages long
        log_file = Path(tempfile.gettempdir()) / "st_sweeps_tune_driver.log"
        log_file.write_text(traceback.format_exc())
        print(f"sweep failed: {type(e).__name__}: {_one_line(e)} (traceback: {log_file})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
