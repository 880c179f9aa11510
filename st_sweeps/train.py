"""Train one experiment: ``python -m st_sweeps.train CONFIG.yaml [--set key=value ...] [options]``.

By default the run goes through Ray Train (``--workers`` data-parallel workers on a local Ray, or
on the cluster at ``--address``); ``--local`` runs the plain Trainer in this process, without
Ray. Either way, running the same command again continues the run from its last checkpoint.

    python -m st_sweeps.train configs/digits_small.yaml --dry-run
    python -m st_sweeps.train configs/digits_small.yaml --local
    python -m st_sweeps.train configs/digits_small.yaml --workers 2 --set train.steps=200
    python -m st_sweeps.train configs/digits_small.yaml --address auto --workers 8 --gpus-per-worker 1 \\
        --storage-path /mnt/shared/runs

Exit codes: 0 done, 1 training failed, 2 bad input (config, overrides, missing data), 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from st_sweeps.checkpoint import CheckpointError
from st_sweeps.data import MissingDataError
from st_sweeps.errors import ConfigError
from st_sweeps.experiment import ExperimentConfig, config_yaml, load_experiment

MLFLOW_RUN_ID_FILE = "mlflow_run_id"  # same name as in ray_train, which this module must not import eagerly


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m st_sweeps.train",
        description="Train a score-based diffusion model (Soft Truncation) from a YAML config, "
                    "data-parallel on Ray Train or (--local) in this process. Re-running the same "
                    "command resumes the run.")
    p.add_argument("config", help="experiment YAML file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by its dotted key, value parsed as YAML "
                        "(e.g. --set train.steps=200 --set truncation.prior.k=1.5); repeatable")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--name", help="run name (default: the config's name); the same name and storage resume a run")
    p.add_argument("--storage-path", default="runs",
                   help="where runs live (default: ./runs); on a multi-node cluster a shared path or a "
                        "cloud URI that every node can reach")
    p.add_argument("--run-dir", help="the Trainer's directory (config.yaml, metrics.jsonl, samples/); default: "
                                     "<storage>/<name> with --local, <storage>/<name>/run with Ray")
    p.add_argument("--data-root", help="data sets directory (default: $ST_SWEEPS_DATA_ROOT or ~/.cache/st_sweeps/data)")
    p.add_argument("--local", action="store_true", help="run the plain Trainer in this process (no Ray)")
    p.add_argument("--device", help="--local only: torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, help="--local only: CPU threads for torch (default: torch's, one per "
                                               "core; on a busy machine 1 is often much faster). Ray workers "
                                               "get one thread per CPU of --cpus-per-worker")
    ray_opts = p.add_argument_group("Ray")
    ray_opts.add_argument("--workers", type=int, default=1, help="data-parallel workers (default: 1)")
    ray_opts.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per worker (default: 0, CPU with gloo)")
    ray_opts.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per worker (default: 1)")
    ray_opts.add_argument("--address", help="connect to an existing Ray cluster ('auto', 'HOST:6379', "
                                            "'ray://HOST:10001'); default: $RAY_ADDRESS, else a cluster that "
                                            "`ray start` left on this machine, else a new local Ray")
    ray_opts.add_argument("--max-failures", type=int, default=0,
                          help="restart the workers from the last checkpoint up to K times after a failure")
    ray_opts.add_argument("--resource-wait-s", type=float, default=600,
                          help="how long in all to wait for a cluster that cannot fit the workers (at the start or "
                               "after a node is lost) before stopping with a message naming what is missing "
                               "(default: 600; -1: wait for ever, e.g. on an autoscaling cluster)")
    tracking = p.add_argument_group("MLflow")
    tracking.add_argument("--mlflow-uri", help="tracking URI (default with --experiment: $MLFLOW_TRACKING_URI or "
                                               "sqlite:///<cwd>/mlflow.db)")
    tracking.add_argument("--experiment", help="MLflow experiment name (default with --mlflow-uri: the config's name)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise ConfigError("--workers", f"got {args.workers}", "an integer >= 1")
    if args.gpus_per_worker < 0:
        raise ConfigError("--gpus-per-worker", f"got {args.gpus_per_worker}", "a number >= 0")
    if args.cpus_per_worker is not None and args.cpus_per_worker <= 0:
        raise ConfigError("--cpus-per-worker", f"got {args.cpus_per_worker}", "a number > 0")
    if args.max_failures < -1:
        raise ConfigError("--max-failures", f"got {args.max_failures}", "an integer >= 0, or -1 for no limit")
    if args.name is not None and (not args.name or "/" in args.name):
        raise ConfigError("--name", f"got {args.name!r}", "a non-empty name without '/'")
    if args.threads is not None and (args.threads < 1 or not args.local):
        raise ConfigError("--threads", f"got {args.threads}" if args.threads < 1 else "only applies to --local",
                          "an integer >= 1, with --local (Ray: --cpus-per-worker)")
    if args.device and not args.local:
        raise ConfigError("--device", "only applies to --local (Ray workers use the device Ray assigns)",
                          "--device with --local; --gpus-per-worker for Ray")
    if args.local and (args.workers != 1 or args.gpus_per_worker or args.address):
        raise ConfigError("--local", "runs one process without Ray",
                          "--local without --workers/--gpus-per-worker/--address")


def _mlflow(args: argparse.Namespace, config: ExperimentConfig) -> tuple[str, str] | None:
    if not (args.mlflow_uri or args.experiment):
        return None
    from st_sweeps.tracking import default_tracking_uri

    return args.mlflow_uri or default_tracking_uri(), args.experiment or config.name


def _format_metrics(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return "  (no metrics)"
    lines = []
    for key in sorted(metrics):
        v = metrics[key]
        text = f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else str(v)
        lines.append(f"  {key}: {text}")
    return "\n".join(lines)


def run_local(config: ExperimentConfig, args: argparse.Namespace, run_name: str) -> int:
    from st_sweeps.tracking import RunIdFile, Tracker, open_remembered_run, read_jsonl
    from st_sweeps.trainer import Trainer

    run_dir = Path(args.run_dir or Path(args.storage_path) / run_name).expanduser().resolve()
    tracker: Tracker | None = None
    mlflow = _mlflow(args, config)
    if mlflow is not None:
        tracker = open_remembered_run(mlflow[0], mlflow[1], RunIdFile(run_dir / MLFLOW_RUN_ID_FILE), run_name=run_name)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    status = "FAILED"
    try:
        trainer = Trainer(config, run_dir, device=args.device, data_root=args.data_root, tracker=tracker)
        final = trainer.fit()
        status = "FINISHED"
    finally:
        if tracker is not None:
            tracker.close(status)
    # the last evaluation, with the train metrics logged at the same step
    last = {k: v for r in read_jsonl(trainer.paths.metrics) if r.get("step") == trainer.step
            for k, v in r.items() if k not in ("step", "time")}
    print(f"run {run_name!r} done at step {trainer.step}: {run_dir}")
    print(_format_metrics({**last, **final}))
    return 0


def run_ray(config: ExperimentConfig, args: argparse.Namespace, run_name: str) -> int:
    from st_sweeps.ray_train import MlflowTarget, run_ray_train

    mlflow = _mlflow(args, config)
    try:
        result = run_ray_train(
            config, run_name=run_name, storage_path=args.storage_path, workers=args.workers,
            gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
            max_failures=args.max_failures, num_to_keep=config.train.keep_checkpoints or None,
            data_root=args.data_root, tracking=MlflowTarget(*mlflow) if mlflow else None, run_dir=args.run_dir,
            address=args.address, resource_wait_s=args.resource_wait_s)
    except SystemExit:
        # Ctrl-C during fit(): Train's SIGINT handler aborts the run, and the interrupted
        # ray.get then raises SystemExit(1) (Ray 2.60); the reported checkpoints are kept
        raise KeyboardInterrupt from None
    info = result.return_value or {}
    print(f"run {run_name!r} done at step {info.get('final_step', '?')} "
          f"(this call started at step {info.get('start_step', '?')}, {info.get('world_size', '?')} workers)")
    print(f"  checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    print(f"  run dir: {info.get('run_dir', '?')}")
    print(_format_metrics(result.metrics))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        config = load_experiment(args.config, args.overrides)
        if args.dry_run:
            sys.stdout.write(config_yaml(config))
            return 0
        run_name = args.name or config.name
        return run_local(config, args, run_name) if args.local else run_ray(config, args, run_name)
    except (ConfigError, MissingDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:  # no usable checkpoint to resume from: name it, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one clean line for known training failures, traceback otherwise
        if type(e).__name__ in ("NonFiniteLossError", "TrainingFailedError", "WorkerGroupError", "ControllerError",
                                "ClusterTooSmallError"):
            print(f"error: training failed: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
