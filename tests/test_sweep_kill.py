"""The cluster path of MLflow under a fault: a sweep logging to a real ``mlflow server`` over
HTTP, its driver killed with SIGKILL while two trials train, then resumed with ``--resume``.

Checks: the killed driver's Ray processes are gone once the resumed sweep starts (Ray's agents
would otherwise outlive it by a minute or more); every trial is exactly one MLflow child run;
no metric holds a step twice; no run is left RUNNING; the parent run ends FINISHED; the number
of trials, the Optuna study and the ranking agree.

Size: the smallest with trials in flight: two trials of 30 steps at once, half a CPU each,
evaluating every 10 steps; the driver is killed once a trial has saved a checkpoint and before
either saved its last.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow_server import mlflow_server
from test_tune import SWEEP as TUNE_SWEEP

ROOT = Path(__file__).resolve().parent.parent
TRIALS = 2
STEPS = 30
EVALUATIONS = [10, 20, 30]  # each with a checkpoint

SWEEP = {
    # test_tune's tiny base, trained longer
    "base": {**TUNE_SWEEP["base"], "train": {**TUNE_SWEEP["base"]["train"], "steps": STEPS}},
    "space": {"truncation.eps": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
    "objectives": [{"metric": "eval/nll_bpd", "mode": "min"}],
    "searcher": {"name": "random", "seed": 0},
    "scheduler": {"name": "none"},
    "trials": TRIALS,
    "max_concurrent": 2,
    "resources": {"cpus": 0.5},
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return env


def _checkpoints(sweep_dir: Path) -> dict[str, int]:
    """How many checkpoints each trial has saved (Tune persists one with each report at once,
    numbered from 0, and deletes old ones; its result.json is flushed later)."""
    return {d.name: max((int(c.name[11:]) + 1 for c in d.glob("checkpoint_*") if c.name[11:].isdigit()), default=0)
            for d in sweep_dir.glob("trial_*") if d.is_dir()}


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (with the pid: one process, never a reused pid);
    None once it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every living process below ``root``."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return {p: s for p in found if (s := _start_time(p)) is not None}


def _still_alive(processes: dict[int, str]) -> list[int]:
    return [p for p, start in processes.items() if _start_time(p) == start]


def test_resumed_run_logs_an_evaluation_below_a_later_train_step(tmp_path: Path) -> None:
    """Killed after logging train/loss at step 15 with its checkpoint at step 5, a trial redoes
    steps 6..15: the evaluation at step 10, never logged, must be, and nothing twice (a bug
    the kill test below found: the steps already held were counted over all metrics)."""
    from st_sweeps.tracking import MlflowTracker, skip_logged_steps

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = MlflowTracker(uri, "exp", run_name="trial")
    for step in (5, 10, 15):
        first.log_metrics({"train/loss": float(step)}, step)
    first.log_metrics({"eval/nll_bpd": 9.0}, 5)
    again = skip_logged_steps(MlflowTracker(uri, "exp", run_id=first.run_id))
    for step in (10, 15, 20):
        again.log_metrics({"train/loss": 100.0 + step, "eval/nll_bpd": 10.0 - step / 10}, step)
    history = {k: sorted((m.step, m.value) for m in first.client.get_metric_history(first.run_id, k))
               for k in ("train/loss", "eval/nll_bpd")}
    assert history["train/loss"] == [(5, 5.0), (10, 10.0), (15, 15.0), (20, 120.0)]
    assert history["eval/nll_bpd"] == [(5, 9.0), (10, 9.0), (15, 8.5), (20, 8.0)]


def _holding_a_file_in(directory: Path, *argv: str) -> subprocess.Popen:
    """A process that keeps a file in ``directory`` open (as every process of a Ray session
    keeps its log files open in the session directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    code = f"import sys, time; f = open({str(directory / 'x.log')!r}, 'w'); print('ready', flush=True); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
    return proc


def test_resume_stops_what_is_left_of_the_recorded_ray_session(tmp_path: Path) -> None:
    """No Ray needed: stand-ins for a killed sweep's orphaned agents hold files in its session
    directory; ``stop_orphaned_ray`` stops them and leaves a process of another session alone."""
    from st_sweeps.tune import RAY_SESSION_FILE, stop_orphaned_ray

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    orphans = [_holding_a_file_in(tmp_path / "session_a" / "logs") for _ in range(2)]
    other = _holding_a_file_in(tmp_path / "session_ab" / "logs")  # a name sharing the prefix
    try:
        (sweep / RAY_SESSION_FILE).write_text(json.dumps({"session_dir": str(tmp_path / "session_a"),
                                                          "pid": 2 ** 22 + 1}))
        assert stop_orphaned_ray(sweep, timeout_s=10) == []
        for p in orphans:
            assert p.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None
    finally:
        for p in [*orphans, other]:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_resume_refuses_while_the_recorded_driver_runs(tmp_path: Path) -> None:
    from st_sweeps.errors import ConfigError
    from st_sweeps.tune import RAY_SESSION_FILE, stop_orphaned_ray

    driver = _holding_a_file_in(tmp_path / "session" / "logs", "-m", "st_sweeps.tune")  # its argv names the CLI
    try:
        (tmp_path / RAY_SESSION_FILE).write_text(json.dumps({"session_dir": str(tmp_path / "session"),
                                                             "pid": driver.pid}))
        with pytest.raises(ConfigError, match="still running"):
            stop_orphaned_ray(tmp_path)
        assert driver.poll() is None
    finally:
        driver.kill()
        driver.wait()


@pytest.mark.ray
@pytest.mark.slow
def test_sigkilled_sweep_resumes_against_an_mlflow_server(tmp_path: Path) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    with mlflow_server(tmp_path / "mlflow.db") as server:
        data = {**SWEEP, "mlflow": {"experiment": "kill-sweep", "tracking_uri": server}}
        (tmp_path / "kill.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        cli = [sys.executable, "-m", "st_sweeps.tune", str(tmp_path / "kill.yaml"), "--name", "kill"]
        sweep_dir = tmp_path / "ray_results" / "kill"
        t0 = time.monotonic()

        # 1. run until a trial reported an evaluation and none has finished: kill the driver
        with open(tmp_path / "first.log", "w") as log:
            driver = subprocess.Popen(cli, cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT)
            try:
                while True:
                    at_kill = _checkpoints(sweep_dir)
                    if any(at_kill.values()):
                        break
                    assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                    assert time.monotonic() - t0 < 300, "no trial reported in 300 s"
                    time.sleep(0.2)
                ray_processes = _descendants(driver.pid)
                driver.send_signal(signal.SIGKILL)
                driver.wait(timeout=60)
            finally:
                if driver.poll() is None:
                    driver.kill()
        assert max(at_kill.values()) < len(EVALUATIONS), f"a trial had finished at the kill: {at_kill}"
        assert ray_processes, "the driver had started no Ray process"
        killed_at = time.monotonic()

        # 2. resume; when it announces the sweep, the killed session's processes must be gone
        resumed = subprocess.Popen([*cli, "--resume"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        watchdog = threading.Timer(600, resumed.kill)  # a hang fails the test instead of blocking it
        watchdog.start()
        lines: list[str] = []
        leftover: list[int] | None = None
        seconds = float("nan")
        try:
            for line in resumed.stdout:  # type: ignore[union-attr]
                lines.append(line)
                if leftover is None and line.startswith("sweep kill: "):
                    leftover = _still_alive(ray_processes)
                    seconds = time.monotonic() - killed_at
            code = resumed.wait(timeout=30)
        finally:
            watchdog.cancel()
            if resumed.poll() is None:
                resumed.kill()
        out = "".join(lines)
        assert code == 0, out[-4000:]
        print(f"kill + resume took {time.monotonic() - t0:.0f} s; trials' checkpoints at the kill: {at_kill}")
        assert leftover == [], (f"{seconds:.0f} s after the kill, the resumed sweep started beside the killed one's "
                                f"Ray processes {leftover}")
        assert _still_alive(ray_processes) == []

        # 3. MLflow, through the server: one child run per trial, each step once, nothing RUNNING
        client = MlflowClient(server)
        exp = client.get_experiment_by_name("kill-sweep")
        runs = client.search_runs([exp.experiment_id], max_results=100)
        parents = [r for r in runs if r.data.tags.get("st_sweeps.role") == "sweep"]
        children = [r for r in runs if r.data.tags.get("st_sweeps.role") == "trial"]
        statuses = [(r.info.run_name, r.info.status) for r in runs]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED", statuses
        assert all(r.info.status != "RUNNING" for r in runs), statuses
        trial_dirs = {d.name.removeprefix("trial_") for d in sweep_dir.glob("trial_*") if d.is_dir()}
        trial_ids = [r.data.tags["st_sweeps.trial_id"] for r in children]
        assert len(trial_dirs) == TRIALS
        assert sorted(trial_ids) == sorted(trial_dirs), (trial_ids, trial_dirs)
        for r in children:
            assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            assert r.info.status == "FINISHED" and r.data.tags["st_sweeps.outcome"] == "completed"
            for key in r.data.metrics:
                steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
                assert len(steps) == len(set(steps)), f"{r.info.run_name} logged {key} twice at a step: {steps}"
            evaluations = sorted(m.step for m in client.get_metric_history(r.info.run_id, "eval/nll_bpd"))
            assert evaluations == EVALUATIONS, f"{r.info.run_name}: {evaluations}"

        # 4. the Optuna study and the ranking hold the same trials
        study = optuna.load_study(study_name="kill", storage=f"sqlite:///{sweep_dir / 'report' / 'optuna.db'}")
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * TRIALS
        by_eps = sorted(t.params["truncation.eps"] for t in study.trials)
        assert by_eps == sorted(float(r.data.params["truncation.eps"]) for r in children)
        ranking = (sweep_dir / "report" / "ranking.csv").read_text().splitlines()
        assert len(ranking) == TRIALS + 1
        assert parents[0].data.metrics["trials/completed"] == TRIALS
