"""Every (row, seed) of a reproduction, trained or read back, logged to MLflow, and then the tables."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from st_sweeps.experiment import config_params
from st_sweeps.reproduce.launch import Launch, missing_reasons, train_local, train_ray
from st_sweeps.reproduce.manifest import METRICS, Manifest, REPO_ROOT, Row, manifest_path
from st_sweeps.reproduce.results import SeedResult, finished_result, run_dir, save_result
from st_sweeps.reproduce.runs import RunIds, TagRecorder, log_changed_metrics, open_run
from st_sweeps.reproduce.scaling import row_config
from st_sweeps.reproduce.tables import TableFiles, aggregate, collect_cells, format_paper, write_tables


def reproduce(manifest: Manifest, rows: Sequence[Row], seeds: Sequence[int], scale: str, out: Path, uri: str,
              launch: Launch, fid_ok: bool, weights_status: str) -> TableFiles:
    """Train and evaluate every (row, seed) not finished yet, log rows and seeds to MLflow, write the
    tables from what is on disk and attach them to the reproduction run."""
    ids = RunIds(out / "mlflow_runs.json", uri)
    experiment = f"st_sweeps-reproduce-{manifest.dataset}"
    parent = open_run(ids, ("reproduction", scale), experiment, f"reproduction {manifest.dataset} ({scale})",
                      {"kind": "reproduction", "dataset": manifest.dataset, "scale": scale}, None)
    status = "FAILED"
    try:
        parent.log_params({"dataset": manifest.dataset, "scale": scale,
                           "manifest": str(manifest_path(manifest.dataset).relative_to(REPO_ROOT))})
        for row in rows:
            run_row(manifest, row, seeds, scale, out, ids, experiment, parent.run_id, launch, fid_ok, weights_status)
        configs = {r.id: row_config(manifest, r, scale, seeds[0], fid_ok) for r in manifest.rows}
        cells = collect_cells(manifest, out, seeds)
        estimate_file = out / "gpu_hours.json"
        estimate = json.loads(estimate_file.read_text()) if estimate_file.exists() else None
        files = write_tables(manifest, scale, out, cells, configs, estimate)
        for path in (files.markdown, files.csv, files.latex, files.figure, files.weights):
            if path is not None:
                parent.log_artifact(path, "tables")
        status = "FINISHED"
    finally:
        parent.close(status)
    return files


def run_row(manifest: Manifest, row: Row, seeds: Sequence[int], scale: str, out: Path, ids: RunIds, experiment: str,
            parent_id: str, launch: Launch, fid_ok: bool, weights_status: str) -> list[SeedResult]:
    tracker = open_run(ids, ("rows", row.id, scale), experiment, f"{row.id} ({scale})",
                       {"kind": "row", "row_id": row.id, "dataset": manifest.dataset, "scale": scale,
                        "label": row.label, "seeds": ",".join(map(str, seeds))}, parent_id)
    status = "FAILED"
    try:
        base = row_config(manifest, row, scale, seeds[0], fid_ok)
        params: dict[str, Any] = {k: v for k, v in config_params(base).items() if k != "seed"}
        params.update(paper_params(row), network_preset=row.network_preset)
        tracker.log_params(params)
        results = [run_seed(manifest, row, seed, scale, out, ids, experiment, tracker.run_id, launch, fid_ok,
                            weights_status) for seed in seeds]
        log_changed_metrics(tracker, row_metrics(row, results, seeds))
        status = "FINISHED"
    finally:
        tracker.close(status)
    return results


def run_seed(manifest: Manifest, row: Row, seed: int, scale: str, out: Path, ids: RunIds, experiment: str,
             row_run_id: str, launch: Launch, fid_ok: bool, weights_status: str) -> SeedResult:
    """One (row, seed): the stored result when finished, else train (resuming) and evaluate."""
    config = row_config(manifest, row, scale, seed, fid_ok)
    where = f"{manifest.dataset}/{row.id}/seed {seed}"
    done = finished_result(out, row.id, seed, config)
    if done is not None:
        print(f"{where}: finished earlier (took {done.wall_s:.1f} s); not trained again", flush=True)
        return done
    directory = run_dir(out, row.id, seed)
    tracker = open_run(ids, ("seeds", row.id, scale, str(seed)), experiment, f"{row.id} seed {seed} ({scale})",
                       {"kind": "seed", "seed": str(seed), "scale": scale, "parent_row_id": row.id}, row_run_id)
    print(f"{where}: training {config.train.steps} steps ({scale} scale) in {directory}", flush=True)
    start = time.perf_counter()
    recorder = TagRecorder()
    status = "FAILED"
    try:
        if launch.use_ray:
            final, tags = train_ray(config, directory, launch, ids.uri, experiment, tracker.run_id)
            recorder.set_tags(tags)
        else:
            from st_sweeps.tracking import MultiTracker

            final = train_local(config, directory, launch, MultiTracker(tracker, recorder))
        status = "FINISHED"
    finally:
        tracker.close(status)
    wall = time.perf_counter() - start
    result = save_result(out, config, row.id, seed, scale, config.train.steps, final,
                         missing_reasons(config, recorder.tags, weights_status), wall)
    print(f"{where}: done in {wall:.1f} s", flush=True)
    return result


def paper_params(row: Row) -> dict[str, str]:
    """The paper's numbers as MLflow params (the note where there is no number)."""
    params = {}
    for metric in METRICS:
        pv = row.paper.get(metric)
        params[f"paper/{metric}"] = format_paper(pv.value) if pv.value is not None else pv.note
        if pv.dequantization:
            params[f"paper/{metric}/dequantization"] = pv.dequantization
    for i, extra in enumerate(row.paper.also_reported):
        params[f"paper/also_reported_{i}/{extra.metric}"] = format_paper(extra.value)
        if extra.dequantization:
            params[f"paper/also_reported_{i}/dequantization"] = extra.dequantization
    return params


def row_metrics(row: Row, results: Sequence[SeedResult], seeds: Sequence[int]) -> dict[str, float]:
    """Per-seed values and the aggregates over seeds, for the row's MLflow run."""
    metrics: dict[str, float] = {}
    for r in results:
        for k in (*(info.key for info in METRICS.values()), "eval/dequantizer_fit_bpd", "eval/pixel_fd",
                  "eval/nfe_sampling"):
            if k in r.metrics:
                metrics[f"seed_{r.seed}/{k}"] = r.metrics[k]
    for c in aggregate(row, results, seeds, "not run: seeds {seeds}"):
        if not c.comparable or not c.values:
            continue
        metrics[f"ours/{c.metric}/mean"] = float(c.mean)  # type: ignore[arg-type]
        metrics[f"ours/{c.metric}/min"] = min(c.values)
        metrics[f"ours/{c.metric}/max"] = max(c.values)
        if c.std is not None:
            metrics[f"ours/{c.metric}/std"] = c.std
        if c.diff is not None:
            metrics[f"ours_minus_paper/{c.metric}"] = c.diff
    return metrics
