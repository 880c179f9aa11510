"""The standalone trainer: exact resume, failure behaviour, learning the true score."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from st_sweeps import checkpoint as ckpt
from st_sweeps.config import apply_overrides, to_dict
from st_sweeps.errors import ConfigError
from st_sweeps.experiment import experiment_from_dict, load_experiment
from st_sweeps.trainer import NonFiniteLossError, Trainer, global_indices
from st_sweeps.tracking import read_jsonl

TINY_UNET = {
    "name": "tiny-unet",
    "seed": 3,
    "data": {"dataset": {"name": "digits"}},
    "sde": {"name": "vp"},
    "truncation": {"eps": 1e-3, "prior": {"name": "power_law", "k": 1.0}},
    "objective": {"name": "dsm", "weighting": "likelihood_is"},
    "model": {"network": {"name": "ddpmpp", "channels": 8, "channel_multipliers": [1, 2],
                          "blocks_per_resolution": 1, "attention_resolutions": [], "dropout": 0.1}},
    "optim": {"lr": 1e-3, "warmup_steps": 2, "ema_decay": 0.9},
    "train": {"steps": 6, "batch_size": 8, "micro_batch_size": 4, "log_every_steps": 1,
              "checkpoint_every_steps": 1, "keep_checkpoints": 0},
}


def no_eval(*args, **kwargs) -> dict[str, float]:
    """Resume and failure tests are about training state; evaluation has its own tests."""
    return {}


class KilledAt(Exception):
    pass


def make(config: dict, run_dir: Path, kill_at: int | None = None) -> Trainer:
    trainer = Trainer(experiment_from_dict(config), run_dir, progress=False, evaluate_fn=no_eval)
    if kill_at is not None:
        step_fn = trainer.train_step

        def dying_step():
            if trainer.step == kill_at:
                raise KilledAt(kill_at)
            return step_fn()

        trainer.train_step = dying_step  # type: ignore[method-assign]
    return trainer


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in trainer.ema.shadow.state_dict().items()})
    return out


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Path]:
    run = tmp_path_factory.mktemp("straight")
    trainer = make(TINY_UNET, run)
    trainer.fit()
    return trainer, run


@pytest.mark.parametrize("kill_at", [1, 3, 5])
def test_resume_after_kill_is_bit_identical(uninterrupted, tmp_path: Path, kill_at: int) -> None:
    ref_trainer, ref_run = uninterrupted
    first = make(TINY_UNET, tmp_path, kill_at=kill_at)
    with pytest.raises(KilledAt):
        first.fit()
    del first  # the process is gone: only the files remain
    torch.manual_seed(12345)  # a new process starts with a different global RNG state
    resumed = make(TINY_UNET, tmp_path)
    resumed.fit()
    assert resumed.step == ref_trainer.step == TINY_UNET["train"]["steps"]
    ref_w, got_w = weights(ref_trainer), weights(resumed)
    assert ref_w.keys() == got_w.keys()
    for k in ref_w:
        assert torch.equal(ref_w[k], got_w[k]), k
    ref_opt = ref_trainer.optimizer.state_dict()["state"]
    got_opt = resumed.optimizer.state_dict()["state"]
    for pid in ref_opt:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(ref_opt[pid][key], got_opt[pid][key])
    assert losses(tmp_path) == losses(ref_run)


def test_checkpoint_holds_everything_and_loads_weights_only(uninterrupted) -> None:
    _, run = uninterrupted
    path = ckpt.latest_checkpoint(run / "checkpoints")
    state = torch.load(path, weights_only=True)
    for key in ("model", "ema", "optimizer", "scaler", "step", "config", "rng", "diagnostics", "terminal_prior"):
        assert key in state
    assert state["step"] == TINY_UNET["train"]["steps"]
    assert experiment_from_dict(state["config"]) == experiment_from_dict(TINY_UNET)


def test_resume_refuses_a_different_config(uninterrupted, tmp_path: Path) -> None:
    _, run = uninterrupted
    other = apply_overrides(TINY_UNET, {"optim.lr": 5e-4})
    trainer = Trainer(experiment_from_dict(other), run, progress=False, evaluate_fn=no_eval)
    with pytest.raises(ConfigError, match="optim.lr"):
        trainer.resume_if_possible()


def test_non_finite_loss_stops_with_step_and_keeps_checkpoints(tmp_path: Path) -> None:
    trainer = make(TINY_UNET, tmp_path)
    for _ in range(2):
        trainer.train_step()
    trainer.save_checkpoint()
    saved = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train_step()
    assert err.value.step == 2
    assert "step 2" in str(err.value) and "step 1" in str(err.value)  # names the last finite step
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == digest
    torch.load(saved, weights_only=True)


def test_one_buffer_for_parameters_and_gradients_changes_no_number(tmp_path: Path) -> None:
    """The trainer keeps the parameters and the gradients each in one buffer (the EMA is one lerp,
    zeroing one fill, the norm and clipping one operation each): the weights, losses and gradient
    norms are bit-equal to those of separate tensors, also after somebody drops the gradient views."""
    flat, plain = make(TINY_UNET, tmp_path / "flat"), make(TINY_UNET, tmp_path / "plain")
    assert flat._flat_grads is not None and flat._flat_grads.attached()
    plain._flat_grads = None
    for p in plain.model.parameters():
        p.data = p.data.clone()  # out of the shared buffer: per-tensor EMA, zeroing and norm
    for step in range(4):
        if step == 2:
            flat.optimizer.zero_grad(set_to_none=True)  # e.g. a user's callback
        a, b = flat.train_step(), plain.train_step()
        assert a == b
    assert flat._flat_grads.attached()
    for (name, p), q in zip(flat.model.named_parameters(), plain.model.parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(flat.ema.shadow.parameters(), plain.ema.shadow.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_crash_during_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    trainer = make(TINY_UNET, tmp_path)
    trainer.train_step()
    first = trainer.save_checkpoint()
    trainer.train_step()

    def torn_save(obj, f, *a, **k):  # torch.save takes a path or a file
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(b"partial bytes")
        else:
            f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert [p for _, p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [first]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert torch.load(first, weights_only=True)["step"] == 1


def test_data_order_depends_only_on_position() -> None:
    a = global_indices(seed=1, n=10, start=0, count=25)
    b = torch.cat([global_indices(1, 10, 0, 7), global_indices(1, 10, 7, 18)])
    assert torch.equal(a, b)
    for epoch in range(2):  # every epoch visits each example exactly once
        assert sorted(a[epoch * 10:(epoch + 1) * 10].tolist()) == list(range(10))


def test_training_writes_loss_by_time_diagnostics(tmp_path: Path) -> None:
    from st_sweeps.tracking import NullTracker

    class Recorder(NullTracker):
        def __init__(self):
            self.artifacts = []

        def log_artifact(self, path, subdir=None):
            self.artifacts.append(Path(path).name)

    rec = Recorder()
    cfg = apply_overrides(TINY_UNET, {"train.steps": 3})
    trainer = Trainer(experiment_from_dict(cfg), tmp_path, progress=False, evaluate_fn=no_eval, tracker=rec)
    trainer.fit()
    data = json.loads(next((tmp_path / "diagnostics").glob("loss_by_time_*.json")).read_text())
    assert sum(b["count"] for b in data["bins"]) == 3 * 8  # every example of every step is binned
    assert all(b["t_low"] >= 1e-3 * (1 - 1e-9) for b in data["bins"])
    assert any(name.endswith(".png") for name in rec.artifacts)


def test_importing_the_trainer_pulls_in_neither_ray_nor_mlflow() -> None:
    code = "import sys, st_sweeps.trainer, st_sweeps.evaluate; print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bad_experiment_values_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"truncation\.eps"):
        experiment_from_dict(apply_overrides(TINY_UNET, {"truncation.eps": 2.0}))
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size.*allowed"):
        experiment_from_dict(apply_overrides(TINY_UNET, {"train.micro_batch_size": 3}))
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: optim\.learning_rate.*allowed: .*lr"):
        load_experiment(path)
    with pytest.raises(ConfigError, match=r"objective\.weighting\.name.*allowed: .*variance"):
        experiment_from_dict(apply_overrides(TINY_UNET, {"objective.weighting": "sigma_squared"}))


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    from st_sweeps.experiment import config_yaml

    cfg = experiment_from_dict(TINY_UNET)
    path = tmp_path / "c.yaml"
    path.write_text(config_yaml(cfg))
    assert load_experiment(path) == cfg
    assert isinstance(to_dict(cfg)["truncation"]["prior"], dict)


MLP_ON_MIXTURE = {
    "name": "mlp-gmm",
    "seed": 0,
    "data": {"dataset": {"name": "gmm2d", "n_train": 20000, "n_test": 500}, "centered": True},
    "sde": {"name": "vp"},
    "truncation": {"eps": 1e-3},
    "objective": {"name": "dsm", "weighting": "variance"},
    "model": {"network": {"name": "mlp", "hidden": 128, "layers": 3}},
    "optim": {"lr": 2e-3, "warmup_steps": 50, "ema_decay": 0.99, "grad_clip_norm": 1.0},
    "train": {"steps": 1500, "batch_size": 256, "log_every_steps": 100},
}


def score_error(trainer: Trainer, model: torch.nn.Module, t_values: list[float]) -> float:
    """E[σ²‖s_θ − s*‖²] / E[σ²‖s*‖²] over noisy test points at the given times (σ²-weighted,
    i.e. the relative error of the predicted noise)."""
    mixture = trainer.train_data.mixture
    sde = trainer.config.sde
    gen = torch.Generator().manual_seed(7)
    num, den = 0.0, 0.0
    x0 = trainer.test_data.images
    for tv in t_values:
        t = torch.full((len(x0),), tv)
        xt = sde.perturb(x0, t, torch.randn(x0.shape, generator=gen))
        with torch.no_grad():
            s = model(xt, t)
        exact = mixture.score(xt, sde.mean_scale(t), sde.std(t))
        w = sde.std(t)[:, None] ** 2
        num += float((w * (s - exact) ** 2).sum())
        den += float((w * exact ** 2).sum())
    return num / den


@pytest.mark.slow
def test_mlp_learns_the_exact_score_of_a_2d_mixture(tmp_path: Path) -> None:
    trainer = Trainer(experiment_from_dict(MLP_ON_MIXTURE), tmp_path, progress=False, evaluate_fn=no_eval)
    before = score_error(trainer, trainer.model, [0.02, 0.1, 0.3, 0.6, 1.0])
    trainer.fit()
    log = losses(tmp_path)
    first, last = log[min(log)], log[max(log)]
    assert last < 0.7 * first, (first, last)
    after = score_error(trainer, trainer.ema.shadow, [0.02, 0.1, 0.3, 0.6, 1.0])
    # stated bound: the learned noise prediction is within 10% (relative squared error) of the
    # exact one across t ∈ [0.02, 1] (measured about 0.03; an untrained net is near 1)
    assert after < 0.10, (before, after)
    assert before > 0.5


@pytest.mark.parametrize("clip_norm", [1e-6, 1e6])
def test_share_of_clipped_steps_is_logged_per_window(tmp_path: Path, clip_norm: float) -> None:
    """train/clip_fraction: the share of a logging window's steps whose clipping fired, read
    from the same gradient norm that was logged (clipping fires iff norm > max_norm)."""
    from st_sweeps.tracking import NullTracker

    class Recorder(NullTracker):
        def __init__(self):
            self.rows: list[tuple[int, dict[str, float]]] = []

        def log_metrics(self, metrics, step):
            self.rows.append((step, dict(metrics)))

    rec = Recorder()
    steps = {}
    cfg = apply_overrides(TINY_UNET, {"train.steps": 4, "train.log_every_steps": 2,
                                      "optim.grad_clip_norm": clip_norm})
    trainer = Trainer(experiment_from_dict(cfg), tmp_path, progress=False, evaluate_fn=no_eval, tracker=rec)
    step_fn = trainer.train_step

    def recording_step():
        m = step_fn()
        steps[trainer.step] = m["train/grad_norm"]
        return m

    trainer.train_step = recording_step  # type: ignore[method-assign]
    trainer.fit()
    windows = [m for _, m in rec.rows if "train/clip_fraction" in m]
    assert len(windows) == 2
    for i, m in enumerate(windows):
        norms = [steps[2 * i + 1], steps[2 * i + 2]]
        expected = sum(n > clip_norm for n in norms) / 2
        assert m["train/clip_fraction"] == expected
        assert "train/clipped" not in m
    assert windows[0]["train/clip_fraction"] == (1.0 if clip_norm < 1 else 0.0)
