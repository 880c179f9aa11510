"""Training one (row, seed): in this process with the ``Trainer``, or over Ray workers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from st_sweeps.experiment import ExperimentConfig
from st_sweeps.files import prepend_pythonpath
from st_sweeps.reproduce.manifest import REPO_ROOT
from st_sweeps.reproduce.scaling import has_fid


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
    likelihood = config.eval.likelihood
    if likelihood.examples == 0:
        why = "not evaluated: eval.likelihood.examples = 0 for this row (the paper reports no likelihood here)"
        reasons["eval/nll_bpd"] = reasons["eval/nelbo_bpd"] = reasons["eval/nll_bpd_vardeq"] = why
    elif likelihood.dequantization.name != "variational":
        reasons["eval/nll_bpd_vardeq"] = ("not evaluated: this row's eval.likelihood.dequantization is "
                                          f"{likelihood.dequantization.name!r} (variational is opt-in)")
    if config.eval.num_samples == 0:
        reasons["eval/fid"] = "not evaluated: eval.num_samples = 0"
    elif not has_fid(config):
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
    prepend_pythonpath(REPO_ROOT)
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
