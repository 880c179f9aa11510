"""The command behind ``reproductions/<dataset>.py``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from st_sweeps.errors import ConfigError
from st_sweeps.experiment import ExperimentConfig, config_yaml
from st_sweeps.files import write_text_atomic
from st_sweeps.reproduce.gpu_hours import measure_estimate
from st_sweeps.reproduce.launch import Launch
from st_sweeps.reproduce.manifest import EXIT_MISSING, RESULTS_DIR, SCALES, load_manifest, manifest_path
from st_sweeps.reproduce.orchestrate import reproduce
from st_sweeps.reproduce.prerequisites import inception_weights_status, preflight
from st_sweeps.reproduce.scaling import has_fid, row_config


def build_parser(dataset: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python reproductions/{dataset}.py",
        description=f"Rebuild the Soft Truncation paper's {dataset} table: train and evaluate every row of "
                    f"reproductions/manifests/{dataset}.yaml, then write paper-vs-ours tables and a figure. "
                    f"Exit status 2: missing data or weights (nothing trained), or a bad manifest or argument.")
    p.add_argument("--scale", choices=SCALES, default="smoke",
                   help="smoke: tiny CPU-sized runs that check the pipeline (default); paper: the paper's configs")
    p.add_argument("--rows", nargs="+", metavar="ROW_ID", help="only these rows (default: all)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1 per row (default: the manifest's smoke.seeds at smoke scale, 1 at paper scale)")
    p.add_argument("--data-root", default=None,
                   help="data root (default: $ST_SWEEPS_DATA_ROOT, else ~/.cache/st_sweeps/data)")
    p.add_argument("--out", default=None, help=f"output folder (default: reproductions/results/{dataset}/<scale>/)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers per run (1: in-process)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--local", action="store_true", help="train in this process even with --workers > 1")
    p.add_argument("--device", default=None, help="torch device for in-process runs (default: cuda if available)")
    p.add_argument("--estimate", action="store_true",
                   help="time a few training steps of each paper-size network here and add the GPU-hours "
                        "estimate to the tables (done once automatically at paper scale)")
    p.add_argument("--estimate-batch", type=int, default=None,
                   help="batch for that timing (default: the paper's on a GPU, 2 on a CPU; scaled linearly)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configs and the checks; train nothing")
    p.add_argument("--prepare", action="store_true",
                   help="first download what the rows need and is downloadable: the data set's files "
                        "(python -m st_sweeps.data.prepare for the rows' data release) and, when a row computes "
                        "FID, the Inception weights; $ST_SWEEPS_MIRROR fetches them from a mirror")
    return p


def prepare_inputs(dataset: str, data_root: Path, paper_configs: Sequence[ExperimentConfig]) -> None:
    """``--prepare``: run ``st_sweeps.data.prepare`` for each data release the rows read, and download
    the Inception weights when a row computes FID at paper scale and they are missing. What fails is
    printed; the checks that follow say what is still missing."""
    from st_sweeps.data import prepare
    from st_sweeps.data.download import mirror_from
    from st_sweeps.fid import inception_weights_path
    from st_sweeps.fid import InceptionDownloadFailed, download_inception_weights

    mirror = mirror_from()
    releases = sorted({getattr(c.data.dataset, "source", None) for c in paper_configs} - {None})
    for release in releases or [None]:
        prepare.prepare(dataset, data_root, release=release, mirror=mirror)
    if any(has_fid(c) for c in paper_configs) and not inception_weights_status()[0]:
        try:
            download_inception_weights(inception_weights_path(), mirror=mirror)
        except InceptionDownloadFailed as e:
            print(f"--prepare: {e}", file=sys.stderr)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_MISSING


def main(dataset: str, argv: Sequence[str] | None = None) -> int:
    """The command behind ``reproductions/<dataset>.py``; returns the exit status."""
    args = build_parser(dataset).parse_args(argv)
    try:
        manifest = load_manifest(manifest_path(dataset))
        rows = [manifest.row(r) for r in args.rows] if args.rows else list(manifest.rows)
    except ConfigError as e:
        return _fail(str(e))
    scale = args.scale
    n_seeds = args.seeds if args.seeds is not None else (manifest.smoke.seeds if scale == "smoke" else 1)
    for flag, value in (("--seeds", n_seeds), ("--workers", args.workers)):
        if value < 1:
            return _fail(f"{flag}: got {value} (allowed: an integer >= 1)")
    seeds = list(range(n_seeds))
    out = Path(args.out) if args.out else RESULTS_DIR / dataset / scale
    from st_sweeps.data import resolve_data_root

    data_root = resolve_data_root(args.data_root)
    if args.prepare:
        try:
            prepare_inputs(dataset, data_root, [r.experiment(0, dataset) for r in rows])
        except (ConfigError, ValueError, OSError) as e:  # a bad mirror setting or checksum list
            return _fail(f"--prepare: {e}")
    fid_ok, weights_status = inception_weights_status()
    try:
        configs = {(r.id, s): row_config(manifest, r, scale, s, fid_ok) for r in rows for s in seeds}
    except ConfigError as e:
        return _fail(str(e))
    if scale == "smoke" and "OMP_NUM_THREADS" not in os.environ:
        # the tiny smoke networks gain little from more CPU threads and lose a lot (10–50× measured
        # on 2 cores) when other processes compete for the cores; OMP_NUM_THREADS overrides this
        import torch

        torch.set_num_threads(1)
    launch = Launch(workers=args.workers, gpus_per_worker=args.gpus_per_worker, address=args.address,
                    local=args.local, data_root=data_root, device=args.device, progress=sys.stderr.isatty())

    problems = preflight(dataset, data_root, scale, configs.values(), fid_ok, weights_status, launch)
    if args.dry_run:
        for (rid, s), c in configs.items():
            print(f"# {dataset} / {rid} / seed {s} ({scale} scale)\n{config_yaml(c)}")
        print("\n".join(problems) if problems else "checks: data, weights and launcher OK")
        return EXIT_MISSING if problems else 0
    if problems:
        print(f"error: cannot start the {scale}-scale {dataset} reproduction; nothing was trained.", file=sys.stderr)
        for line in problems:
            print(line, file=sys.stderr)
        return EXIT_MISSING
    if args.workers > 1 and args.local:
        print(f"note: --local: training in this process; --workers {args.workers} ignored", file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    estimate_file = out / "gpu_hours.json"
    if args.estimate or (scale == "paper" and not estimate_file.exists()):
        measured = measure_estimate(manifest, args.device, args.estimate_batch)
        write_text_atomic(estimate_file, json.dumps(measured, indent=1, sort_keys=True) + "\n")

    from st_sweeps.tracking import default_tracking_uri

    uri = args.mlflow_uri or default_tracking_uri()
    try:
        files = reproduce(manifest, rows, seeds, scale, out, uri, launch, fid_ok, weights_status)
    except ConfigError as e:
        return _fail(str(e))
    print(files.markdown.read_text())
    print(f"wrote {files.markdown}, {files.csv}, {files.latex} and {files.figure}"
          + (f", and the loss weights ours vs official in {files.weights}" if files.weights else ""))
    return 0


def entry_point(dataset: str) -> None:
    """What ``reproductions/<dataset>.py`` runs."""
    sys.exit(main(dataset, sys.argv[1:]))
