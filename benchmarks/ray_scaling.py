"""Data-parallel scaling on Ray Train: steps/s of ``st_sweeps.ray_train.run_ray_train`` with 1 and 2
workers at the same global batch, against the plain ``Trainer`` in this process (no Ray).

Each worker holds 1 CPU and runs 1 torch thread (Ray sets OMP_NUM_THREADS from the CPUs it
gives); with 2 workers each computes half of every global batch and DDP all-reduces the
gradients over gloo. Steps/s is the steady rate rank 0 logs (``perf/steps_per_s`` in its
``metrics.jsonl``, the median over log windows after the first), so Ray's start-up is not in it;
the wall time of the whole call, start-up included, is reported beside it. Evaluation is off
(no NLL, no samples): this measures training only.

    python -m benchmarks.ray_scaling --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (Section, command_line, emit, fmt, markdown_table, median, mode_of, parse_args,
                               set_threads)

MODULE = "benchmarks.ray_scaling"

# (label, dataset, network, global batch, steps and log cadence by mode)
MODELS: dict[str, dict[str, Any]] = {
    "tiny": {"label": "tiny U-Net, digits 1×8×8", "dataset": {"name": "digits"},
             "network": {"name": "ddpmpp", "channels": 16, "channel_multipliers": [1, 2], "blocks_per_resolution": 1,
                         "attention_resolutions": [], "dropout": 0.0},
             "batch": 64, "steps": {"smoke": 4, "quick": 60, "full": 200}, "log": {"smoke": 2, "quick": 10, "full": 20}},
    "small": {"label": "small U-Net, CIFAR-shaped 3×32×32", "dataset": {"name": "cifar10"},
              "network": {"name": "ddpmpp", "channels": 32, "channel_multipliers": [1, 2, 2], "blocks_per_resolution": 1,
                          "attention_resolutions": [8], "dropout": 0.1},
              "batch": 32, "steps": {"smoke": 2, "quick": 12, "full": 40}, "log": {"smoke": 1, "quick": 3, "full": 5},
              "fake_cifar": True},
}
# The paper's network (DDPM++ cont., CIFAR-10: 62 M parameters): for GPU machines (--models ddpmpp)
MODELS["ddpmpp"] = {"label": "DDPM++ CIFAR-10 (62 M), CIFAR-shaped 3×32×32", "dataset": {"name": "cifar10"},
                    "network": {"name": "ddpmpp"}, "batch": 128, "steps": {"smoke": 2, "quick": 30, "full": 200},
                    "log": {"smoke": 1, "quick": 5, "full": 20}, "fake_cifar": True}
MODELS_BY_MODE = {"smoke": ["tiny"], "quick": ["tiny", "small"], "full": ["tiny", "small"]}
WORKERS = {"smoke": (2,), "quick": (1, 2), "full": (1, 2)}  # smoke: just the 2-worker path, to stay short


def experiment(model: dict[str, Any], mode: str) -> Any:
    from st_sweeps.experiment import experiment_from_dict

    return experiment_from_dict({
        "name": "scaling", "seed": 0,
        "data": {"dataset": model["dataset"]},
        "objective": {"name": "dsm", "weighting": "variance"},
        "model": {"network": model["network"]},
        "train": {"steps": model["steps"][mode], "batch_size": model["batch"], "log_every_steps": model["log"][mode]},
        "eval": {"likelihood": {"examples": 0}, "num_samples": 0, "sample_quality": "none"},
    })


def steady_rate(metrics_file: Path, last: float | None = None) -> float:
    """Median steps/s over the log windows after the first (which holds the first step's set-up);
    ``last`` (the final window's rate, from Ray's result) where rank 0's file is not reachable
    from here (another node without shared storage)."""
    from st_sweeps.tracking import read_jsonl

    rates = [r["perf/steps_per_s"] for r in read_jsonl(metrics_file) if "perf/steps_per_s" in r]
    if not rates:
        if last is None:
            raise RuntimeError(f"no perf/steps_per_s in {metrics_file}")
        return last
    return median(rates[1:] or rates)


def local_run(config: Any, work: Path, data_root: Path | None, device: str) -> dict[str, float]:
    from st_sweeps.trainer import Trainer

    run_dir = work / "local"
    t0 = time.perf_counter()
    Trainer(config, run_dir, device=device, data_root=data_root, progress=False).fit()
    wall = time.perf_counter() - t0
    return {"rate": steady_rate(run_dir / "metrics.jsonl"), "wall": wall, "threads": float(_threads())}


def ray_run(config: Any, storage: Path | str, workers: int, data_root: Path | None,
            gpus_per_worker: float) -> dict[str, float]:
    from st_sweeps.ray_train import run_ray_train

    t0 = time.perf_counter()
    result = run_ray_train(config, run_name=f"scaling-{time.strftime('%H%M%S')}-w{workers}", storage_path=storage,
                           workers=workers, gpus_per_worker=gpus_per_worker, data_root=data_root,
                           health_check_interval_s=0.1)
    wall = time.perf_counter() - t0
    info = result.return_value
    last = (result.metrics or {}).get("perf/steps_per_s")
    return {"rate": steady_rate(Path(info["run_dir"]) / "metrics.jsonl", last), "wall": wall,
            "threads": float(info["torch_threads"]), "fit": float(info["fit_seconds"])}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run(args: argparse.Namespace) -> Section:
    import st_sweeps.ray_train  # noqa: F401  (first: it sets the driver's log filter before ray loads)
    import ray

    from benchmarks.train_speed import write_fake_cifar

    mode = mode_of(args)
    set_threads(args.threads)
    # as in tests/test_ray_train.py: worker start-up is slow on 2 busy cores (Train's default limit
    # is 60 s), and the preemption watcher (one more actor) has nothing to watch on one machine
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    rows, notes = [], []
    tmp = Path(tempfile.mkdtemp(prefix="st_bench_scaling_"))
    try:
        t0 = time.perf_counter()
        if args.address:
            ray.init(address=args.address, logging_level="WARNING")
        else:
            ray.init(address="local", include_dashboard=False, logging_level="WARNING")
        res = ray.cluster_resources()
        notes.append(f"- Ray: {'cluster at ' + args.address if args.address else 'a local instance'} with "
                     f"{res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} GPUs; ray.init took "
                     f"{fmt(time.perf_counter() - t0)} s.")
        for name in args.models or MODELS_BY_MODE[mode]:
            model = MODELS[name]
            data_root = None
            if model.get("fake_cifar"):  # the real CIFAR-10 where given (all nodes must see it), else random
                data_root = args.data_root or write_fake_cifar(tmp / "data", 50_000 if mode != "smoke" else 1000)
            config = experiment(model, mode)
            work = tmp / name
            base = local_run(config, work, data_root, "cuda" if args.gpus_per_worker else "cpu")
            storage = args.storage_path or work / "ray"
            runs = {w: ray_run(config, storage, w, data_root, args.gpus_per_worker)
                    for w in (args.workers or WORKERS[mode])}
            b = model["batch"]
            rows.append([model["label"], b, "Trainer.fit in this process (no Ray)", 1, int(base["threads"]),
                         fmt(base["rate"]), fmt(base["rate"] * b), "1.00×", "–", fmt(base["wall"])])
            for w, r in runs.items():
                one = runs.get(min(runs))
                eff = (f"{100 * r['rate'] * min(runs) / (w * one['rate']):.0f} %" if w != min(runs) or w == 1
                       else "–")
                rows.append([model["label"], b, f"run_ray_train, {w} worker(s)", w, int(r["threads"]), fmt(r["rate"]),
                             fmt(r["rate"] * b), f"{r['rate'] / base['rate']:.2f}×", eff, fmt(r["wall"])])
            notes.append(f"- {model['label']}: {config.train.steps} steps, global batch {b} "
                         f"({b} per worker with 1, {b // 2} with 2), log window {config.train.log_every_steps} steps.")
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    table = markdown_table(["model, data", "global batch", "how", "workers", "torch threads/worker", "steps/s",
                            "images/s", "vs no Ray", "scaling efficiency", "wall incl. start-up (s)"], rows)
    notes.append("- Scaling efficiency: steps/s with N workers over N × steps/s with 1 worker (same global batch).")
    return Section("Ray Train data-parallel scaling: 1 vs 2 workers", command_line(MODULE, args.argv), args.threads,
                   table, notes, mode)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), help="only these models (default: by mode)")
    p.add_argument("--workers", type=int, nargs="+", help="worker counts to run (default: 1 2; --smoke: 2)")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per worker (default 0: CPU, gloo)")
    p.add_argument("--address", help="an existing Ray cluster (e.g. auto); default: a new local instance")
    p.add_argument("--data-root", type=Path, help="a CIFAR-10 data root for the CIFAR-shaped models (default: "
                                                    "random images of that shape, written to a temporary directory)")
    p.add_argument("--storage-path", help="where Ray keeps the runs; on several nodes a path all of them share "
                                          "(default: a temporary directory here)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv, add_arguments)
    emit(run(args), args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
