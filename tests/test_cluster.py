"""The cluster path, on one machine: several raylets (``ray.cluster_utils.Cluster``), storage on
the local disk standing in for a shared filesystem, nodes removed mid-run.

One simulated cluster for the module: a head node with no CPU (it hosts the drivers and Train's
controller, as a real head node would) and two worker nodes of one CPU each, each declaring one
``slot``, a custom resource. A Ray Train worker asking for one slot must then sit on a node of
its own, so two workers always span two nodes. Tests that remove a node add a replacement
before they end, so every test starts from the same shape.

The README's cluster section is run as written, on a second cluster started with its own
``ray start`` commands (free ports, its own temp dir) and stopped by killing exactly the
processes it started: a bare ``ray stop`` would also stop the Ray sessions of anything else
running on this machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

import st_sweeps.ray_train as rt  # before ray: sets the driver's log filter
from st_sweeps import checkpoint as ckpt
from st_sweeps.config import to_dict
from st_sweeps.tracking import read_jsonl

import ray  # noqa: E402  (after st_sweeps.ray_train)
from ray_faults import HoldOnce  # noqa: E402
from test_ray_train import assert_same_weights, local_run, ray_checkpoints, tiny_config  # noqa: E402

HOLD_MARKER = ".hold"

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SLOT = {"slot": 1.0}  # one per worker node: a worker asking for it has a node to itself
NODE_ARGS: dict[str, Any] = {"num_cpus": 1, "resources": {"slot": 1}}
ENV = {
    # The preemption watcher (one more actor per run) has nothing to watch here; reports wait for
    # the controller's health-check poll (2 s by default, environment.md).
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
}


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 300, poll_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    # Every process of this cluster (and every CLI run against it) is told its address: where
    # Ray code looks for "the" cluster on its own (Train's placement-group cleaner, the State
    # API), it would otherwise pick the newest of all the Ray sessions on this machine.
    port = free_port()
    env = {**ENV, "RAY_ADDRESS": f"{ray.util.get_node_ip_address()}:{port}"}
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: the function-scoped monkeypatch cannot serve
        for k, v in env.items():
            mp.setenv(k, v)
        yield from _start_cluster(env, port)


def _start_cluster(env: dict[str, str], port: int) -> Any:
    from ray.cluster_utils import Cluster

    t0 = time.monotonic()
    # A lost node is marked dead after 3 missed health checks 0.5 s apart (Ray's default: 5 x 3 s),
    # so that what the cluster reports soon matches what happened.
    health = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                      "gcs_server_port": port, "_system_config": health})
    assert c.address == env["RAY_ADDRESS"], (c.address, env["RAY_ADDRESS"])
    for _ in range(2):
        c.add_node(**NODE_ARGS)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    print(f"\nthree-node cluster up in {time.monotonic() - t0:.1f} s")
    yield c
    ray.shutdown()
    c.shutdown()


def worker_nodes(c: Any) -> dict[str, Any]:
    return {n.node_id: n for n in c.worker_nodes}


def replace_node(c: Any, node: Any) -> Any:
    """Remove ``node`` abruptly (its raylet and workers killed, as in a crash) and start an
    identical one; returns the new node."""
    c.remove_node(node, allow_graceful=False)
    new = c.add_node(**NODE_ARGS)
    c.wait_for_nodes()
    return new


def mlflow_history(uri: str, experiment: str) -> tuple[list[Any], Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=100), client


# ------------------------------------------------------------------------------------ training
def test_two_workers_on_two_nodes_match_one_process(cluster, tmp_path: Path) -> None:
    config = tiny_config(steps=6)
    result = rt.run_ray_train(config, run_name="ddp", storage_path=tmp_path / "shared", workers=2,
                              custom_resources=SLOT, health_check_interval_s=0.1)
    info = result.return_value
    nodes = info["node_ids"]
    assert len(set(nodes)) == 2 and set(nodes) <= set(worker_nodes(cluster)), nodes
    assert info["final_step"] == 6 and result.metrics["step"] == 6
    saved = ray_checkpoints(tmp_path / "shared", "ddp")
    assert list(saved) == [6]
    # bit-identical: the tolerances of assert_same_weights are not needed here
    local = local_run(config, tmp_path / "local")
    ray_state = ckpt.load(saved[6])
    for part in ("model", "ema"):
        a = ray_state[part] if part == "model" else ray_state[part]["shadow"]
        b = local[part] if part == "model" else local[part]["shadow"]
        for k in a:
            assert ray_state["step"] == local["step"] and bool((a[k] == b[k]).all()), f"{part}.{k} differs"


class _Background:
    """``run_ray_train`` in a thread, so that the test can act on the cluster meanwhile."""

    def __init__(self, **kwargs: Any):
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, kwargs=kwargs, daemon=True)
        self.thread.start()

    def _run(self, **kwargs: Any) -> None:
        try:
            self.result = rt.run_ray_train(**kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def join(self, timeout_s: float = 600) -> None:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the run did not end"


def _held_node(storage: Path, name: str, run: _Background) -> str:
    marker = storage / name / HOLD_MARKER

    def held() -> str:
        assert run.thread.is_alive(), f"the run ended before the worker held: {run.error!r}"
        return marker.exists() and marker.read_text().strip()

    return wait_for(held, "a worker to hold at step 5")


def test_node_lost_mid_training_resumes_from_last_checkpoint(cluster, tmp_path: Path) -> None:
    """The node of one worker goes away between the checkpoints of steps 3 and 6; a new node
    joins; Train (max_failures=1) starts both workers again, on the surviving and the new node,
    from step 3, and the run ends at step 9 exactly as an uninterrupted one does."""
    storage, uri = tmp_path / "shared", f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(steps=9, eval_every=3)
    run = _Background(config=config, run_name="lost", storage_path=storage, workers=2, custom_resources=SLOT,
                      max_failures=1, before_step=HoldOnce(5, storage / "lost" / HOLD_MARKER),
                      health_check_interval_s=0.1, resource_wait_s=300,
                      tracking=rt.MlflowTarget(uri, "cluster-train"))
    lost = _held_node(storage, "lost", run)
    survivor = next(i for i in worker_nodes(cluster) if i != lost)
    new = replace_node(cluster, worker_nodes(cluster)[lost])
    run.join()
    assert run.error is None, repr(run.error)
    info = run.result.return_value
    assert info["start_step"] == 3 and info["final_step"] == 9 and run.result.metrics["step"] == 9
    assert set(info["node_ids"]) == {survivor, new.node_id}

    # no reported metric lost: every evaluation's checkpoint and metrics, once each
    saved = ray_checkpoints(storage, "lost")
    assert list(saved) == [3, 6, 9]
    assert [m["step"] for _, m in run.result.best_checkpoints] == [3, 6, 9]
    assert all("eval/nll_bpd" in m for _, m in run.result.best_checkpoints)
    assert_same_weights(ckpt.load(saved[9]), local_run(config, tmp_path / "local"))
    # MLflow: one run, each step logged once (the redone steps 4-5 are not logged twice)
    runs, client = mlflow_history(uri, "cluster-train")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key, steps in (("train/loss", list(range(1, 10))), ("eval/nll_bpd", [3, 6, 9])):
        logged = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, key))
        assert logged == steps, f"{key}: {logged}"
    jsonl = [r["step"] for r in read_jsonl(storage / "lost" / "run" / "metrics.jsonl") if "eval/nll_bpd" in r]
    assert sorted(set(jsonl)) == [3, 6, 9]


def test_cluster_too_small_is_a_clear_error_and_the_same_command_resumes(cluster, tmp_path: Path) -> None:
    """A node is lost and none replaces it: the restart waits the bounded ``resource_wait_s``,
    then fails with a message naming the missing resource, instead of waiting for ever (Train's
    default). Once a node joins, the same call continues from the last checkpoint, in the same
    MLflow run."""
    storage, uri = tmp_path / "shared", f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(steps=9, eval_every=3)
    kwargs: dict[str, Any] = dict(config=config, run_name="short", storage_path=storage, workers=2,
                                  custom_resources=SLOT, health_check_interval_s=0.1,
                                  tracking=rt.MlflowTarget(uri, "cluster-short"))
    run = _Background(**kwargs, max_failures=1, before_step=HoldOnce(5, storage / "short" / HOLD_MARKER),
                      resource_wait_s=8)
    lost = _held_node(storage, "short", run)
    cluster.remove_node(worker_nodes(cluster)[lost], allow_graceful=False)
    try:
        run.join()
        assert isinstance(run.error, rt.ClusterTooSmallError), repr(run.error)
        message = str(run.error)
        print(f"\n{message}")
        assert "hold 1 of them" in message and "missing CPU=1, slot=1" in message and "8 s" in message
        assert "same command again" in message
        assert list(ray_checkpoints(storage, "short")) == [3]
    finally:
        cluster.add_node(**NODE_ARGS)
        cluster.wait_for_nodes()
    again = rt.run_ray_train(**kwargs)
    assert (again.return_value["start_step"], again.return_value["final_step"]) == (3, 9)
    assert list(ray_checkpoints(storage, "short")) == [3, 6, 9]
    runs, client = mlflow_history(uri, "cluster-short")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logged = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "eval/nll_bpd"))
    assert logged == [3, 6, 9]


# ------------------------------------------------------------------------------------ sweeps
def sweep_file(tmp_path: Path, name: str, **top: Any) -> Path:
    """A tiny sweep over the tiny MLP on gmm2d (the training config of the Ray Train tests)."""
    base = to_dict(tiny_config(steps=20, eval_every=10))
    base["train"]["log_every_steps"] = 5
    data = {"base": base,
            "space": {"optim.lr": {"type": "categorical", "choices": [3e-3, 1e-7]},
                      "truncation.eps": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
            "objectives": [{"metric": "eval/nll_bpd", "mode": "min"}],
            "searcher": {"name": "random", "seed": 6},
            "mlflow": {"experiment": name, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, **top}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sweep_cli(path: Path, *extra: str, address: str) -> list[str]:
    return [sys.executable, "-m", "st_sweeps.tune", str(path), "--name", path.stem, "--address", address, *extra]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def trial_outcomes(sweep_dir: Path, uri: str, experiment: str) -> dict[str, dict[str, Any]]:
    """Per trial: its status in the ranking (from Tune's results), its Optuna state, its MLflow
    run's status and final objective, from the three stores independently."""
    import csv

    import optuna

    out: dict[str, dict[str, Any]] = {}
    for row in csv.DictReader((sweep_dir / "report" / "ranking.csv").read_text().splitlines()):
        out[row["trial_id"]] = {"tune": row["status"], "value": row.get("eval/nll_bpd") or None}
    study = optuna.load_study(study_name=sweep_dir.name, storage=f"sqlite:///{sweep_dir / 'report' / 'optuna.db'}")
    states = {t.number: t for t in study.trials}
    runs, _ = mlflow_history(uri, experiment)
    children = {r.data.tags["st_sweeps.trial_id"]: r for r in runs if r.data.tags.get("st_sweeps.role") == "trial"}
    assert set(children) == set(out), (set(children), set(out))
    for tid, r in children.items():
        out[tid]["mlflow"] = r.info.status
        out[tid]["mlflow_value"] = r.data.metrics.get("eval/nll_bpd")
        out[tid]["optuna"] = r.data.tags.get("optuna.state")
    assert sorted(s.state.name for s in states.values()) == sorted(o["optuna"] for o in out.values())
    return out


AGREE = {"completed": ("COMPLETE", "FINISHED"), "pruned": ("PRUNED", "KILLED"), "error": ("FAIL", "FAILED")}


class _Monitor:
    """Polls the cluster from this (second) driver while a sweep runs: the most placement
    groups and Ray Train worker actors alive at once."""

    def __init__(self) -> None:
        self.max_pgs = self.max_workers = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def alive() -> tuple[int, int]:
        pgs = sum(1 for pg in ray.util.placement_group_table().values() if pg["state"] == "CREATED")
        workers = sum(1 for a in ray._private.state.actors().values()
                      if a["State"] == "ALIVE" and a["ActorClassName"] == "RayTrainWorker")
        return pgs, workers

    def _run(self) -> None:
        while not self._stop.is_set():
            pgs, workers = self.alive()
            self.max_pgs, self.max_workers = max(self.max_pgs, pgs), max(self.max_workers, workers)
            time.sleep(0.3)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


def test_sweep_of_two_worker_trials_with_asha(cluster, tmp_path: Path) -> None:
    """Trials that are 2-worker Ray Train jobs (one worker per node), one at a time; ASHA stops
    the second. The stop ends its Train run: its placement group and workers go, and the next
    trial gets the whole cluster (it could not start otherwise: each trial needs both slots' CPUs)."""
    path = sweep_file(tmp_path, "multi", trials=3, max_concurrent=1,
                      scheduler={"name": "asha", "grace_period": 10, "reduction_factor": 2},
                      resources={"workers": 2, "cpus": 0.9})
    monitor = _Monitor()
    t0 = time.monotonic()
    try:
        proc = subprocess.run(sweep_cli(path, address=cluster.address), cwd=tmp_path, env=cli_env(),
                              capture_output=True, text=True, timeout=600)
    finally:
        monitor.stop()
    print(f"\n3-trial sweep of 2-worker trials: {time.monotonic() - t0:.0f} s; at most {monitor.max_pgs} placement "
          f"groups and {monitor.max_workers} Train workers alive at once")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    outcomes = trial_outcomes(tmp_path / "ray_results" / "multi", f"sqlite:///{tmp_path / 'mlflow.db'}", "multi")
    statuses = sorted(o["tune"] for o in outcomes.values())
    assert statuses == ["completed", "completed", "pruned"], outcomes
    for tid, o in outcomes.items():
        assert (o["optuna"], o["mlflow"]) == AGREE[o["tune"]], (tid, o)
    # one trial at a time: its Tune placement group and its Train group, two workers
    assert monitor.max_workers <= 2 and monitor.max_pgs <= 2
    # nothing left behind once the sweep's driver is gone
    assert wait_for(lambda: _Monitor.alive() == (0, 0), "the sweep's placement groups and workers to go", 60)
    free = ray.available_resources()
    assert free.get("CPU") == 2.0 and free.get("slot") == 2.0, free


def _trial_on_node(node: Any, sweep_dir: Path) -> str | None:
    """The id of the Tune trial running in a worker process of ``node`` (Tune runs each trial
    in a working directory named like its trial directory, so a process's working directory
    names its trial)."""
    import psutil

    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    for proc in raylet.children(recursive=True):
        try:
            cwd = Path(proc.cwd())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cwd.name.startswith("trial_") and (sweep_dir / cwd.name).is_dir():
            return cwd.name.removeprefix("trial_")
    return None


def test_node_lost_mid_sweep_fails_only_its_trial(cluster, tmp_path: Path) -> None:
    """Two one-CPU trials at a time, one on each worker node; one node is removed while a trial
    runs there. Policy: that trial fails (Tune's max_failures=0; ``--resume`` would run it
    again), the others go on on the remaining node, the sweep finishes, and Tune, Optuna and
    MLflow agree on every trial."""
    path = sweep_file(tmp_path, "spread", trials=4, max_concurrent=2, scheduler={"name": "none"},
                      resources={"workers": 1, "cpus": 1})
    data = yaml.safe_load(path.read_text())
    data["base"]["train"].update(steps=300, eval_every_steps=100, log_every_steps=50)
    data["space"]["optim.lr"]["choices"] = [3e-3, 1e-3]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    sweep_dir = tmp_path / "ray_results" / "spread"
    proc = subprocess.Popen(sweep_cli(path, address=cluster.address), cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        node = worker_nodes(cluster)[sorted(worker_nodes(cluster))[-1]]

        def running_there() -> str | None:
            # training, not starting: it has opened its MLflow run (a trial lost before that
            # has no run to mark FAILED; see docs/CLUSTER.md)
            assert proc.poll() is None, proc.stdout.read()[-4000:]
            trial = _trial_on_node(node, sweep_dir)
            return trial if trial and (sweep_dir / "mlflow_runs" / trial).exists() else None

        victim = wait_for(running_there, "a trial training on the node to remove", 300, 0.1)
        cluster.remove_node(node, allow_graceful=False)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.add_node(**NODE_ARGS)
        cluster.wait_for_nodes()
    assert proc.returncode == 0, out[-4000:]
    outcomes = trial_outcomes(sweep_dir, f"sqlite:///{tmp_path / 'mlflow.db'}", "spread")
    assert len(outcomes) == 4
    assert {tid for tid, o in outcomes.items() if o["tune"] == "error"} == {victim}, outcomes
    for tid, o in outcomes.items():
        assert (o["optuna"], o["mlflow"]) == AGREE[o["tune"]], (tid, o)
        if o["tune"] == "completed":
            assert float(o["value"]) == pytest.approx(o["mlflow_value"], rel=1e-9)


# ------------------------------------------------------------------------------------ README
def readme_cluster_commands() -> dict[str, Any]:
    """The commands of the README's "### On a cluster" section, as written there."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### On a cluster"):]
    section = section[:section.index("\n## ")]
    head = re.findall(r"`(ray start --head[^`]*)`", section)
    worker = re.findall(r"`(ray start --address=[^`]*)`", section)
    exports = dict(re.findall(r"`export (\w+)=([^`\s]+)`", section))
    stop = re.findall(r"`(ray stop[^`]*)`", section)
    joined = re.sub(r"\\\n\s*", "", section)  # the code block's line continuations
    python = [line.strip() for line in joined.splitlines() if line.strip().startswith("python -m st_sweeps.")]
    assert len(head) == len(worker) == len(stop) == 1 and len(python) == 2, (head, worker, stop, python)
    train = next(c for c in python if c.startswith("python -m st_sweeps.train "))
    tune = next(c for c in python if c.startswith("python -m st_sweeps.tune "))
    return {"head": head[0], "worker": worker[0], "stop": stop[0], "train": train, "tune": tune, "env": exports}


def _own_ray_processes(temp_dir: Path) -> list[Any]:
    """Every process of the Ray session under ``temp_dir`` (each names its session directory
    on its command line), and no other."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(temp_dir) in arg for arg in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _stop_own_ray(temp_dir: Path) -> None:
    """What the README's ``ray stop`` does, scoped to this cluster: a bare ``ray stop`` ends
    every Ray process on the machine, other users' sessions included."""
    import psutil

    for _ in range(5):  # a process may start while the others stop (a raylet restarting its GCS)
        procs = _own_ray_processes(temp_dir)
        if not procs:
            return
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=8)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=5)


def test_readme_cluster_section_as_written(tmp_path: Path) -> None:
    """A head and a worker node started with the README's ``ray start`` commands (on 127.0.0.1,
    free ports, their own temp dir, one CPU each), its train and tune lines at a tiny size
    (overrides appended), and the nodes stopped."""
    import tempfile

    commands = readme_cluster_commands()
    assert commands["stop"] == "ray stop"
    port = free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="stc", dir="/tmp"))  # short: Unix socket paths are limited
    env = {**cli_env(), "RAY_ADDRESS": f"127.0.0.1:{port}"}  # what --address auto finds
    ray_bin = str(Path(sys.executable).parent / "ray")

    def node_options() -> list[str]:
        return ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                f"--object-store-memory={200 * 2**20}",
                f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]

    env.update(commands["env"])  # the README's exports
    assert env.get("RAY_AUTH_MODE") == "token"  # without it a worker node or driver cannot join

    def readme(command: str) -> list[str]:
        """A README command line on this cluster's address, with this venv's executables."""
        args = shlex.split(command.replace("HEAD_IP", "127.0.0.1").replace("6379", str(port)))
        return [ray_bin, *args[1:]] if args[0] == "ray" else [sys.executable, *args[1:]]

    head = readme(commands["head"]) + node_options() + [f"--temp-dir={temp_dir}", "--include-dashboard=false",
                              f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}"]
    worker = readme(commands["worker"]) + node_options()
    # relative paths in the README's lines resolve as they would in a clone
    for d in ("configs", "search_spaces"):
        (tmp_path / d).symlink_to(ROOT / d)
    shared = tmp_path / "shared"
    t0 = time.monotonic()
    try:
        for cmd in (head, worker):
            out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        started = time.monotonic() - t0

        train = readme(commands["train"]) + [
            "--workers", "2", "--gpus-per-worker", "0", "--storage-path", str(shared / "runs"),
            "--set", "train.steps=4", "--set", "train.log_every_steps=2", "--set", "eval.sampler.n_steps=5",
            "--set", "eval.likelihood.examples=2", "--set", "eval.num_samples=4"]
        t_train = time.monotonic()
        out = subprocess.run(train, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        t_train = time.monotonic() - t_train
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        assert "done at step 4" in out.stdout and "2 workers" in out.stdout, out.stdout
        assert list(ray_checkpoints(shared / "runs", "digits_small")) == [4]

        tiny = {"resources.workers": 2, "resources.gpus": 0, "resources.cpus": 0.9, "trials": 1,
                "baseline.seeds": 1, "max_concurrent": 1, "base.train.steps": 4, "base.train.log_every_steps": 2,
                "base.optim.warmup_steps": 0, "base.model.network.channels": 8, "base.eval.likelihood.examples": 4,
                "base.eval.num_samples": 8, "base.eval.sampler.n_steps": 5,
                "storage_path": str(shared / "ray_results"),
                "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
        tune = readme(commands["tune"]) + [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
        out = subprocess.run(tune, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        sweeps = list((shared / "ray_results").glob("prior*/report/ranking.csv"))
        assert len(sweeps) == 1, out.stdout[-3000:]
        ranking = sweeps[0].read_text().splitlines()
        assert len(ranking) == 2 and ",completed," in ranking[1], ranking
        assert list((sweeps[0].parent.parent / "train").glob("*/step_*/step_*.pt")), "no 2-worker Train run"
    finally:
        t1 = time.monotonic()
        _stop_own_ray(temp_dir)
        stopped = time.monotonic() - t1
    assert not _own_ray_processes(temp_dir), "processes of the README's cluster survived"
    print(f"\nREADME cluster: 2 nodes up in {started:.1f} s, train {t_train:.0f} s, tune "
          f"{t1 - t0 - started - t_train:.0f} s, "
          f"stopped in {stopped:.1f} s")
