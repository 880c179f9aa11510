"""Run a claims study: ``python reproductions/claims.py --scale smoke|cpu [--out DIR] [--publish DIR]``.

The trained runs go through the sweeps' engine: one Ray Tune trial per (configuration, seed) of
the manifest's grid, each running ``st_sweeps.tune.run_trial`` — the sweeps' own trial function
(the Trainer in the trial's process, a Tune report and checkpoint per evaluation, an MLflow child
run under the study's parent run). The grid is Tune's ``grid_search`` over the points; the only
code of our own between Tune and ``run_trial`` is ``run_point``, which hands a point's dotted
params to it (a sweep point is a product of independent keys, a claims point is a list of
configurations, which ``grid_search`` gives only as one key holding a mapping).

Layout of the output folder (default ``reproductions/results/claims/<scale>/``)::

    study.json           the parent MLflow run, tracking URI, the grid's fingerprint
    tune/                Ray Tune's experiment (trial_<point>/, mlflow_runs/<trial id>)
    points/<point>.json  a finished run: every evaluation, the last loss-by-time window, run id
    measured/<part>.json the measurements that need no training, one value per replicate
    table.md, table.csv, claim<id>.png, results.json

Resuming: a point with ``points/<point>.json`` is finished and never trained again. Otherwise, if
Tune's experiment can be restored it is (finished trials are not rerun; an interrupted trial
resumes from its last checkpoint, as sweeps do); if not, a new Tune experiment runs the points
still missing. The tables are a pure function of the manifest and these files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from st_sweeps.claims.figures import claim_figure
from st_sweeps.claims.manifest import Manifest, Point, load_manifest
from st_sweeps.claims.report import Provenance, csv_text, markdown
from st_sweeps.claims.results import ClaimResult, evaluate
from st_sweeps.claims.statistics import Evaluation, MeasureContext, MeasuredStatistic, RunResult, Runs
from st_sweeps.config import to_dict
from st_sweeps.errors import ConfigError
from st_sweeps.files import write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MANIFEST = REPO_ROOT / "reproductions" / "claims" / "claims.yaml"
RESULTS_DIR = REPO_ROOT / "reproductions" / "results" / "claims"
PUBLISH_DIR = REPO_ROOT / "docs" / "claims"
STUDY_FILE, TUNE_NAME, POINTS_DIR, MEASURED_DIR = "study.json", "tune", "points", "measured"
FINISHED_KEY = "trial/finished"  # st_sweeps.tune's flag on a trial's last report
EXIT_USAGE, EXIT_INTERRUPTED, EXIT_FAILED = 2, 130, 1

log = logging.getLogger("st_sweeps.claims")


# ======================================================================================= the trial
def run_point(config: dict[str, Any], spec: Any) -> None:
    """The Tune function: the sweeps' ``run_trial`` on this point's dotted params."""
    from st_sweeps.tune import run_trial

    run_trial(dict(config["point"]["params"]), spec)


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.config['point']['id']}"


# ======================================================================================= the study
@dataclass(frozen=True)
class StudyState:
    """``study.json``: what a rerun must find again."""

    scale: str
    fingerprint: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    # one entry per invocation that got as far as the tables: {"date", "wall_s", "trained"}
    invocations: tuple[dict[str, Any], ...] = ()

    def save(self, out: Path) -> None:
        _write_json(out / STUDY_FILE, asdict(self))

    def with_invocation(self, command: str, started: tuple[str, bool], wall_s: float, trained: int) -> "StudyState":
        """This invocation appended: its command, the commit (and whether the tree was dirty) when
        it started and when it wrote the tables (others may commit while a study runs)."""
        commit, dirty = started
        end_commit, end_dirty = git_commit()
        entry = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command, "commit": commit,
                 "dirty": dirty or end_dirty, "commit_at_end": end_commit, "wall_s": round(wall_s, 1),
                 "trained": trained}
        return StudyState(**{**asdict(self), "invocations": (*self.invocations, entry)})

    def provenance(self, trial_s: float) -> Provenance:
        """Command, date and commit of the first invocation (the one that started the training);
        wall time summed over all of them."""
        first = self.invocations[0]
        commit = first["commit"]
        if first.get("commit_at_end", commit) != commit:
            commit += f" at the start, {first['commit_at_end']} at the end"
        return Provenance(first["command"], first["date"][:10], commit, first["dirty"], self.scale,
                          wall_s=sum(i["wall_s"] for i in self.invocations), trial_s=trial_s,
                          invocations=len(self.invocations))


def fingerprint(manifest: Manifest, scale: str) -> str:
    """Of what the manifest asks the trained runs to be: its base and every point's params (not
    the defaults filled in around them, so that a new config field with a default does not orphan
    a study; each run's resolved config is in its MLflow run)."""
    data = {"base": manifest.base, "points": [(p.id, p.params) for p in manifest.points(scale)],
            "report_metric": manifest.report_metric}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def open_study(manifest: Manifest, scale: str, out: Path, tracking_uri: str) -> tuple[StudyState, Any]:
    """The study's state and its parent MLflow run (created, or reopened on a rerun)."""
    from st_sweeps.tracking import MlflowTracker

    fp = fingerprint(manifest, scale)
    path = out / STUDY_FILE
    if path.exists():
        data = json.loads(path.read_text())
        state = StudyState(**{**data, "invocations": tuple(data.get("invocations", ()))})
        if state.fingerprint != fp or state.scale != scale:
            raise ConfigError("--out", f"{out} holds a study of another manifest or scale (fingerprint "
                              f"{state.fingerprint}, this one {fp})",
                              "another --out, or delete that folder to start over")
        parent = MlflowTracker(state.tracking_uri, state.experiment, run_id=state.parent_run_id)
        parent.set_tags({"st_sweeps.resumed": time.strftime("%Y-%m-%d %H:%M:%S")})
        return state, parent
    parent = MlflowTracker(tracking_uri, manifest.mlflow_experiment, run_name=f"claims-{scale}",
                           tags={"st_sweeps.role": "claims_study", "st_sweeps.scale": scale})
    parent.log_params({"scale": scale, "seeds": manifest.scales.get(scale).seeds,
                       "replicates": manifest.scales.get(scale).replicates, "points": len(manifest.points(scale)),
                       "fingerprint": fp})
    state = StudyState(scale, fp, tracking_uri, manifest.mlflow_experiment, parent.run_id)
    out.mkdir(parents=True, exist_ok=True)
    state.save(out)
    return state, parent


def load_runs(out: Path) -> dict[str, dict[int, RunResult]]:
    runs: dict[str, dict[int, RunResult]] = {}
    for f in sorted((out / POINTS_DIR).glob("*.json")):
        r = RunResult.from_json(json.loads(f.read_text()))
        runs.setdefault(r.config_id, {})[r.seed] = r
    return runs


# ======================================================================================= Tune
def run_trials(manifest: Manifest, scale: str, out: Path, state: StudyState, pending: Sequence[Point]) -> Any:
    """Train the pending points on Ray Tune (or resume the Tune experiment that is training them);
    returns Tune's ResultGrid, whose unfinished trials an interruption left behind."""
    from ray import tune

    from st_sweeps import tune as sweeps

    tune_dir = out / TUNE_NAME
    spec = sweeps.TrialSpec(sweep_name=f"claims-{scale}", sweep_dir=str(tune_dir), base=manifest.resolved_base(),
                            metrics=(manifest.report_metric,), modes=("min",), tracking_uri=state.tracking_uri,
                            experiment=state.experiment, parent_run_id=state.parent_run_id, cpus=1.0)
    trainable = tune.with_resources(tune.with_parameters(run_point, spec=spec), {"cpu": 1})
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sweeps.init_ray(None, 1)  # the sweeps' local Ray start (PYTHONPATH for the trials)
    try:
        if tune.Tuner.can_restore(str(tune_dir)):
            tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_errored=True)
        else:
            shutil.rmtree(tune_dir, ignore_errors=True)  # nothing in it can be resumed
            grid = [{"id": p.id, "config_id": p.config_id, "seed": p.seed, "params": p.params} for p in pending]
            tuner = tune.Tuner(
                trainable, param_space={"point": tune.grid_search(grid)},
                # reuse_actors: a trial process serves the next trial (every trial asks for the same
                # one CPU), saving each a process start and the imports, as the sweeps do
                tune_config=tune.TuneConfig(max_concurrent_trials=manifest.scales.get(scale).concurrency,
                                            trial_dirname_creator=_trial_dirname, reuse_actors=True),
                run_config=tune.RunConfig(name=TUNE_NAME, storage_path=str(out),
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                          failure_config=tune.FailureConfig(max_failures=0), verbose=1))
        return tuner.fit()
    finally:
        sweeps.shutdown_ray()


def _evaluations(result: Any) -> tuple[Evaluation, ...]:
    """Every report of a trial (one per evaluation), with its eval/ metrics, in step order."""
    frame = result.metrics_dataframe
    rows = frame.to_dict("records") if frame is not None else [result.metrics]
    by_step: dict[int, dict[str, float]] = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, (int, float)) or (isinstance(step, float) and not math.isfinite(step)):
            continue
        metrics = {k: float(v) for k, v in row.items()
                   if k.startswith("eval/") and isinstance(v, (int, float)) and math.isfinite(float(v))}
        by_step[int(step)] = metrics
    return tuple(Evaluation(s, by_step[s]) for s in sorted(by_step))


def _loss_by_time(tracker: Any) -> tuple[dict[str, Any], ...]:
    """The last loss-by-time window the trainer logged as an artifact of the run."""
    with tempfile.TemporaryDirectory(prefix="st_sweeps_claims_") as tmp:
        try:
            local = Path(tracker.client.download_artifacts(tracker.run_id, "diagnostics", tmp))
        except Exception as e:  # no diagnostics logged: the statistic reading them reports it
            log.warning("no loss-by-time diagnostics for run %s: %s", tracker.run_id, e)
            return ()
        files = sorted(local.glob("loss_by_time_step_*.json"))
        return tuple(json.loads(files[-1].read_text())["bins"]) if files else ()


def harvest(results: Any, out: Path, state: StudyState) -> tuple[int, list[str]]:
    """Write ``points/<point>.json`` for every finished trial; tag and close its MLflow run.
    Returns (points written, one line per failed trial)."""
    from st_sweeps.tracking import MlflowTracker

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    written, failed = 0, []
    for result in results:
        point = (result.config or {}).get("point") or {}
        pid = point.get("id", "?")
        if result.error is not None:
            failed.append(f"{pid}: {str(result.error).strip().splitlines()[-1][:300]}")
            continue
        metrics = result.metrics or {}
        if metrics.get(FINISHED_KEY) != 1.0 or (out / POINTS_DIR / f"{pid}.json").exists():
            continue
        id_file = out / TUNE_NAME / "mlflow_runs" / str(metrics.get("trial_id", ""))
        run_id = id_file.read_text().strip() if id_file.exists() else None
        loss_by_time: tuple[dict[str, Any], ...] = ()
        if run_id:
            tracker = MlflowTracker(state.tracking_uri, state.experiment, run_id=run_id)
            loss_by_time = _loss_by_time(tracker)
            tracker.set_tags({"st_sweeps.claims.configuration": point["config_id"],
                              "st_sweeps.claims.seed": str(point["seed"]), "st_sweeps.outcome": "completed"})
            tracker.close("FINISHED")
        run = RunResult(point["config_id"], int(point["seed"]), _evaluations(result), loss_by_time, run_id,
                        metrics.get("time_total_s"))
        _write_json(out / POINTS_DIR / f"{pid}.json", run.to_json())
        written += 1
    return written, failed


# ======================================================================================= measurements
def measure(manifest: Manifest, scale: str, out: Path, data_root: str | None
            ) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, dict[str, Any]]]]:
    """Every measurement without training, ``replicates`` times each, cached per part."""
    from st_sweeps.seeding import generator

    s = manifest.scales.get(scale)
    context = MeasureContext(manifest.experiment(manifest.configurations[0], scale, 0), data_root)
    values: dict[str, dict[int, float]] = {}
    details: dict[str, dict[int, dict[str, Any]]] = {}
    for part in manifest.measured_parts():
        stat = part.statistic
        assert isinstance(stat, MeasuredStatistic)
        if s.measure_fraction < 1:
            stat = stat.shrink(s.measure_fraction)
        path = out / MEASURED_DIR / f"{part.id}.json"
        spec = json.loads(json.dumps(to_dict(stat), default=str))
        cached = json.loads(path.read_text()) if path.exists() else {}
        reps = cached.get("replicates", {}) if cached.get("statistic") == spec else {}
        for r in range(s.replicates):
            if str(r) not in reps:
                t0 = time.perf_counter()
                m = stat.measure(context, generator("claims", part.id, r))
                reps[str(r)] = {"value": m.value, "details": m.details, "wall_s": time.perf_counter() - t0}
                _write_json(path, {"statistic": spec, "replicates": reps})
                print(f"measured {part.id} replicate {r}: {m.value:+.4g} ({reps[str(r)]['wall_s']:.1f} s)", flush=True)
        values[part.id] = {int(r): v["value"] for r, v in reps.items() if int(r) < s.replicates}
        details[part.id] = {int(r): v["details"] for r, v in reps.items() if int(r) < s.replicates}
    return values, details


# ======================================================================================= outputs
def git_commit() -> tuple[str, bool]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout.strip()

    return git("rev-parse", "--short", "HEAD") or "unknown", bool(git("status", "--porcelain"))


def write_outputs(manifest: Manifest, claims: Sequence[ClaimResult], runs: Runs,
                  details: Mapping[str, Mapping[int, Mapping[str, Any]]], provenance: Provenance,
                  out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    for c in claims:
        name = f"claim{c.claim.id}.png"
        claim_figure(manifest, c, runs, details, out / name)
        figures[c.claim.id] = name
    (out / "table.md").write_text(markdown(manifest, claims, runs, provenance, figures))
    (out / "table.csv").write_text(csv_text(manifest, claims))
    summary = {"provenance": asdict(provenance),
               "claims": [{"id": c.claim.id, "verdict": c.verdict,
                           "parts": [{"id": p.part.id, "verdict": p.verdict, "values": p.values,
                                      "interval": asdict(p.interval) if p.interval else None} for p in c.parts]}
                          for c in claims]}
    _write_json(out / "results.json", summary)
    return [out / "table.md", out / "table.csv", out / "results.json", *(out / f for f in figures.values())]


def publish(files: Sequence[Path], target: Path) -> None:
    """Copy the table and figures (the cpu run's go to docs/claims/, committed); the Markdown
    table becomes the folder's README.md."""
    target.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, target / ("README.md" if f.name == "table.md" else f.name))


def log_to_parent(parent: Any, claims: Sequence[ClaimResult], files: Sequence[Path]) -> None:
    metrics: dict[str, float] = {}
    for c in claims:
        for p in c.parts:
            if p.interval is not None:
                metrics.update({f"claim{p.part.id}/estimate": p.interval.mean,
                                f"claim{p.part.id}/ci_low": p.interval.low, f"claim{p.part.id}/ci_high": p.interval.high})
    parent.log_metrics(metrics, 0)
    parent.set_tags({f"verdict/claim{c.claim.id}": c.verdict for c in claims})
    for f in files:
        parent.log_artifact(f, "claims")


# ======================================================================================= CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python reproductions/claims.py",
                                description="Test the papers' claims at CPU scale: trained runs on Ray Tune, "
                                            "intervals over seeds, verdicts by rules fixed in the manifest.")
    p.add_argument("--scale", choices=("smoke", "cpu"), default="smoke",
                   help="smoke: minutes, checks the pipeline; cpu: the study (about 45 min on 2 cores)")
    p.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    p.add_argument("--out", type=Path, help="output folder (default reproductions/results/claims/<scale>)")
    p.add_argument("--publish", type=Path, nargs="?", const=PUBLISH_DIR, default=None,
                   help=f"also copy table and figures there (default with --scale cpu: {PUBLISH_DIR.relative_to(REPO_ROOT)})")
    p.add_argument("--no-publish", action="store_true", help="do not copy anything to docs/ (even at --scale cpu)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--data-root", help="data root for non-embedded data sets")
    p.add_argument("--dry-run", action="store_true", help="check the manifest, print the grid, run nothing")
    return p.parse_args(argv)


def _command(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python reproductions/claims.py", *args])


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    from st_sweeps.tracking import default_tracking_uri

    t0 = time.perf_counter()
    started = git_commit()
    manifest = load_manifest(args.manifest)
    scale = args.scale
    out = (args.out or RESULTS_DIR / scale).resolve()
    points = manifest.points(scale)
    if args.dry_run:
        print(f"{len(points)} trained runs ({len(manifest.configurations)} configurations × "
              f"{manifest.scales.get(scale).seeds} seeds), {len(manifest.measured_parts())} measurements × "
              f"{manifest.scales.get(scale).replicates} replicates -> {out}")
        for p in points:
            print(f"  {p.id}: {json.dumps(p.params, sort_keys=True)}")
        return 0
    state, parent = open_study(manifest, scale, out, args.tracking_uri or default_tracking_uri())
    status = "FAILED"
    try:
        done = {f.stem for f in (out / POINTS_DIR).glob("*.json")}
        pending = [p for p in points if p.id not in done]
        failed: list[str] = []
        trained = 0
        if pending:
            print(f"claims study ({scale}): {len(pending)} of {len(points)} runs to train -> {out}", flush=True)
            results = run_trials(manifest, scale, out, state, pending)
            trained, failed = harvest(results, out, state)
        else:
            print(f"claims study ({scale}): all {len(points)} runs finished; tables from {out}", flush=True)
        values, details = measure(manifest, scale, out, args.data_root)
        runs = load_runs(out)
        missing = [p.id for p in points if p.config_id not in runs or p.seed not in runs[p.config_id]]
        claims = evaluate(manifest, runs, values)
        trial_s = sum(r.wall_s or 0.0 for by_seed in runs.values() for r in by_seed.values())
        state = state.with_invocation(_command(argv), started, time.perf_counter() - t0, trained)
        state.save(out)
        provenance = state.provenance(trial_s)
        files = write_outputs(manifest, claims, runs, details, provenance, out)
        target = args.publish if args.publish is not None else (PUBLISH_DIR if scale == "cpu" else None)
        if target is not None and not args.no_publish:
            publish(files, target)
            print(f"published to {target}")
        log_to_parent(parent, claims, files)
        for c in claims:
            print(f"claim {c.claim.id} ({c.claim.title}): {c.verdict}  [" +
                  ", ".join(f"{p.part.id} {p.verdict}" for p in c.parts) + "]")
        print(f"table: {out / 'table.md'}")
        if failed or missing:
            for line in failed:
                print(f"failed: {line}", file=sys.stderr)
            print(f"{len(missing)} of {len(points)} runs missing ({', '.join(missing[:6])}"
                  f"{', …' if len(missing) > 6 else ''}); rerun the same command to resume", file=sys.stderr)
            status = "KILLED"
            return EXIT_FAILED if failed else EXIT_INTERRUPTED
        status = "FINISHED"
        return 0
    finally:
        parent.close(status)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args, argv)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
