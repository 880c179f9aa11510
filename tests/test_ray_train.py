"""Ray Train (V2) data-parallel training and the train CLI.

One local Ray (2 CPUs, no dashboard) for the module. The Ray runs train a tiny MLP on ``gmm2d``
with a global batch of 16 in chunks of 8, so 2 workers (one chunk each) see the same examples
and noise as one process accumulating both chunks. DDP averages the two chunk gradients as
(g0 + g1) / 2 where the single process sums g0/2 + g1/2; halving is exact in floating point, so
with 2 workers the weights come out bit-identical (measured, 6 and 50 steps). Other worker
counts sum in another order, so the tests only ask for rtol 1e-5.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import st_sweeps.ray_train as rt  # before ray: sets the driver's log filter
from st_sweeps import checkpoint as ckpt
from st_sweeps.errors import ConfigError
from st_sweeps.experiment import ExperimentConfig, experiment_from_dict
from st_sweeps.tracking import read_jsonl
from st_sweeps.trainer import Trainer

import ray  # noqa: E402  (after st_sweeps.ray_train)
from ray_faults import CrashOnce  # noqa: E402

FAULT_MARKER = ".fault_injected"

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-5  # relative tolerance between a 2-worker DDP run and a 1-process run
ATOL = 1e-7


def tiny_config(steps: int, eval_every: int = 0) -> ExperimentConfig:
    return experiment_from_dict({
        "name": "tiny", "seed": 3,
        "data": {"dataset": {"name": "gmm2d", "n_train": 512, "n_test": 64}},
        "model": {"network": {"name": "mlp", "hidden": 32, "layers": 1, "time_embedding_dim": 16}},
        "optim": {"lr": 1e-3, "warmup_steps": 0, "ema_decay": 0.9},
        "train": {"steps": steps, "batch_size": 16, "micro_batch_size": 8, "log_every_steps": 1,
                  "eval_every_steps": eval_every, "keep_checkpoints": 0},
        "eval": {"likelihood": {"examples": 2, "nelbo_repeats": 1, "rtol": 1e-2, "atol": 1e-2},
                 "num_samples": 0, "sample_quality": "none"},
    })


@pytest.fixture(scope="module")
def ray_cluster():
    # Worker start-up is slow on 2 busy cores; Train's default limit is 60 s. The preemption
    # watcher (one more actor process per run) has nothing to watch on one machine.
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: the function-scoped monkeypatch cannot serve
        mp.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
        mp.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # address="local": a fresh instance even if `ray start` left a cluster on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        yield
        ray.shutdown()


def run(config: ExperimentConfig, storage: Path, name: str, **kwargs: Any) -> Any:
    return rt.run_ray_train(config, run_name=name, storage_path=storage, workers=2,
                            health_check_interval_s=0.1, **kwargs)


def local_run(config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """The single-process reference, on one thread like each Ray worker (Ray sets OMP_NUM_THREADS
    to a worker's CPUs); two OpenMP threads on two busy cores spin-wait and run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(config, run_dir, progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    return ckpt.load(ckpt.latest_checkpoint(run_dir / "checkpoints"))


def ray_checkpoints(storage: Path, name: str) -> dict[int, Path]:
    """Step -> checkpoint file for every checkpoint directory Ray persisted."""
    out = {}
    for d in sorted((storage / name).glob("step_*")):
        files = ckpt.list_checkpoints(d)
        assert len(files) == 1, f"{d} should hold one checkpoint file, holds {files}"
        out[files[0][0]] = files[0][1]
    return out


def assert_same_weights(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        sa = a[part] if part == "model" else a[part]["shadow"]
        sb = b[part] if part == "model" else b[part]["shadow"]
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=RTOL, atol=ATOL, msg=lambda m, k=k: f"{part}.{k}: {m}")


# ------------------------------------------------------------------------------------------------
def test_two_workers_match_one_process(ray_cluster, tmp_path: Path) -> None:
    config = tiny_config(steps=6)
    t0 = time.perf_counter()
    result = run(config, tmp_path / "ray", "ddp")
    wall = time.perf_counter() - t0
    print(f"\n2-worker Ray run of 6 steps: {wall:.1f} s wall (start-up included), "
          f"{result.return_value['fit_seconds']:.2f} s in Trainer.fit")

    info = result.return_value
    assert info["world_size"] == 2 and info["start_step"] == 0 and info["final_step"] == 6
    assert info["torch_threads"] == 1  # one CPU per worker
    assert result.metrics["step"] == 6
    assert "eval/nll_bpd" in result.metrics and "train/loss" in result.metrics

    local = local_run(config, tmp_path / "local")
    local_loss = [r for r in read_jsonl(tmp_path / "local" / "metrics.jsonl") if "train/loss" in r][-1]
    assert local_loss["step"] == 6
    assert result.metrics["train/loss"] == pytest.approx(local_loss["train/loss"], rel=RTOL)
    saved = ray_checkpoints(tmp_path / "ray", "ddp")
    assert list(saved) == [6]
    assert_same_weights(ckpt.load(saved[6]), local)
    # rank 0's run directory holds the Trainer's files
    run_dir = tmp_path / "ray" / "ddp" / "run"
    assert (run_dir / "config.yaml").exists() and (run_dir / "metrics.jsonl").exists()


@pytest.fixture(scope="module")
def crashed_once(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A run of 9 steps reporting at 3, 6, 9 whose last worker dies just before step 5."""
    storage = tmp_path_factory.mktemp("fault")
    result = run(tiny_config(steps=9, eval_every=3), storage, "crash", max_failures=1,
                 before_step=CrashOnce(5, storage / "crash" / FAULT_MARKER))
    return storage, result


def test_worker_crash_restarts_from_last_checkpoint(crashed_once, tmp_path: Path) -> None:
    storage, result = crashed_once
    assert (storage / "crash" / FAULT_MARKER).exists(), "the fault was not injected"
    info = result.return_value
    assert info["start_step"] == 3, "the restart should resume from the checkpoint reported at step 3"
    assert info["final_step"] == 9 and result.metrics["step"] == 9
    # none lost, none corrupt: the checkpoints reported before and after the crash all load
    saved = ray_checkpoints(storage, "crash")
    assert list(saved) == [3, 6, 9]
    for step, path in saved.items():
        assert ckpt.load(path)["step"] == step
    assert [m["step"] for _, m in result.best_checkpoints] == [3, 6, 9]
    # the resumed run ends where an uninterrupted one does
    assert_same_weights(ckpt.load(saved[9]), local_run(tiny_config(steps=9, eval_every=3), tmp_path / "local"))


def test_same_name_resumes_instead_of_restarting(crashed_once, tmp_path: Path) -> None:
    # after completion: loads the final checkpoint and trains nothing
    storage, _ = crashed_once
    again = run(tiny_config(steps=9, eval_every=3), storage, "crash")
    assert (again.return_value["start_step"], again.return_value["final_step"]) == (9, 9)
    assert again.metrics["step"] == 9
    assert list(ray_checkpoints(storage, "crash")) == [3, 6, 9]

    # after an interruption with no retries left: the next call continues from step 3
    config = tiny_config(steps=9, eval_every=3)
    with pytest.raises(ray.train.TrainingFailedError):
        run(config, tmp_path, "interrupted", max_failures=0,
            before_step=CrashOnce(5, tmp_path / "interrupted" / FAULT_MARKER))
    assert list(ray_checkpoints(tmp_path, "interrupted")) == [3]
    resumed = run(config, tmp_path, "interrupted")
    assert (resumed.return_value["start_step"], resumed.return_value["final_step"]) == (3, 9)
    assert list(ray_checkpoints(tmp_path, "interrupted")) == [3, 6, 9]

    # another config under the same name is refused before Ray starts anything
    with pytest.raises(ConfigError, match="different config"):
        run(tiny_config(steps=12, eval_every=3), tmp_path, "interrupted")


# ------------------------------------------------------------------------------------------------ CLI
def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "st_sweeps.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_dry_run_prints_resolved_yaml(tmp_path: Path) -> None:
    import yaml

    out = cli(str(REPO / "configs" / "digits_small.yaml"), "--dry-run", "--set", "train.steps=7", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    assert data["train"]["steps"] == 7 and data["model"]["network"]["name"] == "ddpmpp"
    assert not list(tmp_path.iterdir()), "a dry run writes nothing"


def test_cli_bad_override_is_one_clean_line(tmp_path: Path) -> None:
    out = cli(str(REPO / "configs" / "digits_small.yaml"), "--set", "eval.sampler=rk45", "--dry-run", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "eval.sampler" in lines[0] and "euler_maruyama" in lines[0]


def test_cli_local_run_completes(tmp_path: Path) -> None:
    # the shipped example, shortened: 4 steps and a cheaper evaluation
    out = cli(str(REPO / "configs" / "digits_small.yaml"), "--local", "--threads", "1",  # see local_run
              "--storage-path", str(tmp_path / "runs"),
              "--set", "train.steps=4", "--set", "train.log_every_steps=2", "--set", "eval.sampler.n_steps=5",
              "--set", "eval.likelihood.examples=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "digits_small"
    assert ckpt.load(ckpt.latest_checkpoint(run_dir / "checkpoints"))["step"] == 4
    last = read_jsonl(run_dir / "metrics.jsonl")[-1]
    assert "eval/nll_bpd" in last and "eval/pixel_fd" in last
    assert "done at step 4" in out.stdout
