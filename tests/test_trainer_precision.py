"""The trainer's execution options on CPU: bf16/fp16 autocast with loss scaling, channels-last,
torch.compile. No GPU is lent to this project, so these paths must run here before they run there."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from st_sweeps import checkpoint as ckpt
from st_sweeps.config import apply_overrides
from st_sweeps.data import ImageData
from st_sweeps.errors import ConfigError
from st_sweeps.experiment import experiment_from_dict
from st_sweeps.trainer import NonFiniteLossError, Trainer
from test_trainer import TINY_UNET, KilledAt, losses, make, no_eval, weights

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def short(steps: int, **overrides: object) -> dict:
    return apply_overrides(TINY_UNET, {"train.steps": steps, **overrides})


def assert_same_weights(a: Trainer, b: Trainer) -> None:
    """Model and EMA weights equal exactly (values: layouts may differ)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ------------------------------------------------------------------ precision
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_autocasts_only_the_score_model_on_cpu(tmp_path: Path, precision: str) -> None:
    trainer = make(short(3, **{"train.precision": precision}), tmp_path)
    conv_dtypes: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda m, i, out: conv_dtypes.add(out.dtype))
             for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    calls: list[tuple[bool, torch.dtype]] = []
    score = trainer.score

    def recording_score(x, t):
        outside = torch.is_autocast_enabled("cpu")  # the objective's own math: never under autocast
        s = score(x, t)
        calls.append((outside, s.dtype))
        return s

    trainer.score = recording_score  # type: ignore[method-assign]
    for _ in range(3):
        assert math.isfinite(trainer.train_step()["train/loss"])
    for h in hooks:
        h.remove()
    assert conv_dtypes == {AMP[precision]}  # every convolution of every step ran in reduced precision
    assert calls and set(calls) == {(False, torch.float32)}  # the score comes back float32
    assert trainer.scaler.is_enabled() == (precision == "fp16")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_an_infinite_gradient_is_skipped_with_fp16_loss_scaling_and_fatal_without(tmp_path: Path,
                                                                                 precision: str) -> None:
    trainer = make(short(4, **{"train.precision": precision}), tmp_path)
    trainer.train_step()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    scale = trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None
    param = next(p for p in trainer.model.parameters() if p.requires_grad)
    handle = param.register_hook(lambda g: torch.full_like(g, math.inf))
    if precision == "bf16":  # no loss scaling: an infinite gradient is divergence
        with pytest.raises(NonFiniteLossError):
            trainer.train_step()
        return
    trainer.train_step()  # fp16: the step is skipped and the scale lowered, no error
    handle.remove()
    assert trainer.step == 2
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert trainer.scaler.get_scale() == scale * trainer.scaler.get_backoff_factor()

    # the scaler state (scale and growth tracker) is checkpointed and restored
    trainer.save_checkpoint()
    state = torch.load(ckpt.latest_checkpoint(tmp_path / "checkpoints"), weights_only=True)
    assert state["scaler"]["scale"] == trainer.scaler.get_scale()
    resumed = make(short(4, **{"train.precision": "fp16"}), tmp_path)
    assert resumed.resume_if_possible()
    assert resumed.scaler.state_dict() == trainer.scaler.state_dict()
    assert resumed.scaler.get_scale() < torch.amp.GradScaler("cpu").get_scale()


def test_resume_after_kill_is_bit_identical_in_bf16(tmp_path: Path) -> None:
    config = short(4, **{"train.precision": "bf16"})
    straight = make(config, tmp_path / "straight")
    straight.fit()
    killed = make(config, tmp_path / "resumed", kill_at=2)
    with pytest.raises(KilledAt):
        killed.fit()
    del killed
    torch.manual_seed(12345)
    resumed = make(config, tmp_path / "resumed")
    resumed.fit()
    assert resumed.step == straight.step == 4
    assert_same_weights(straight, resumed)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_a_precision_autocast_cannot_run_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    # CPU runs both with this torch; a device (or version) without fp16 autocast must say so,
    # not quietly train in fp32
    monkeypatch.setattr("st_sweeps.trainer.autocast_runs_in", lambda device, dtype: dtype != torch.float16)
    match = r"train\.precision: autocast to fp16 does not run on cpu.*allowed: fp32, bf16"
    with pytest.raises(ConfigError, match=match):
        make(short(1, **{"train.precision": "fp16"}), tmp_path)


# ------------------------------------------------------------------ channels-last and compile
# Both change only how the same float32 math runs, compared here on one step from the same
# weights: the loss, and the gradient after clipping (norm ≤ 1). Without dropout, whose masks
# they change (a channels-last mask is drawn in memory order; inductor draws its own), though
# they come from the same seeded generator, so resume stays exact. The weights are first
# moved off their initialisation, whose zero output layers leave most gradients exactly zero.
NO_DROPOUT = {"model.network.dropout": 0.0}


def step_from_random_weights(trainer: Trainer) -> float:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return trainer.train_step()["train/loss"]


def assert_same_step(a: Trainer, loss_a: float, b: Trainer, loss_b: float) -> None:
    # stated tolerance: float32 rounding of other kernels and summation orders (measured
    # 5e-8 relative on the loss and 3e-8 absolute on the gradients, for channels-last)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


class RGBTrainer(Trainer):
    """Three-channel 8-bit data (the embedded sets have one channel, for which NCHW and NHWC
    are the same strides): random pixels from a fixed generator."""

    def _load_data(self, data_root):
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (96, 3, 8, 8), generator=gen, dtype=torch.uint8)
        return ImageData(images[:64], discrete=True, name="rgb"), ImageData(images[64:], discrete=True, name="rgb")


def test_channels_last_trains_like_contiguous(tmp_path: Path) -> None:
    runs = {}
    for channels_last in (False, True):
        config = experiment_from_dict(short(1, **NO_DROPOUT, **{"train.channels_last": channels_last}))
        trainer = RGBTrainer(config, tmp_path / str(channels_last), progress=False, evaluate_fn=no_eval)
        layouts: list[bool] = []
        trainer.model.net.register_forward_pre_hook(
            lambda m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        inner = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)][1]
        inner.register_forward_hook(
            lambda m, i, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
        runs[channels_last] = (trainer, step_from_random_weights(trainer))
        assert set(layouts) == {channels_last}, layouts  # the network's input and its activations
        assert inner.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert_same_step(*runs[False], *runs[True])
    # a channels-last checkpoint resumes into a contiguous run (an execution option, like compile)
    nhwc = runs[True][0]
    nhwc.save_checkpoint()
    plain = RGBTrainer(experiment_from_dict(short(1, **NO_DROPOUT)), tmp_path / "True", progress=False,
                       evaluate_fn=no_eval)
    assert plain.resume_if_possible() and plain.step == 1
    assert_same_weights(nhwc, plain)
    assert all(p.is_contiguous() for p in plain.model.parameters())


@pytest.mark.slow  # inductor compiles forward and backward: 107 s on two cores with a cold cache, 6 s warm
def test_compiled_training_matches_eager_and_checkpoints_are_interchangeable(tmp_path: Path) -> None:
    base = short(2, **NO_DROPOUT)
    eager = make(base, tmp_path / "eager")
    eager_loss = step_from_random_weights(eager)
    eager.save_checkpoint()
    compiled = make(apply_overrides(base, {"train.compile": True}), tmp_path / "compiled")
    compiled_loss = step_from_random_weights(compiled)
    compiled.save_checkpoint()
    assert_same_step(eager, eager_loss, compiled, compiled_loss)
    # the training forward is compiled, the modules are not
    assert isinstance(compiled._forward, torch._dynamo.eval_frame.OptimizedModule)
    assert not any(isinstance(m, torch._dynamo.eval_frame.OptimizedModule)
                   for m in [*compiled.model.modules(), *compiled.ema.shadow.modules()])

    state = torch.load(ckpt.latest_checkpoint(tmp_path / "compiled" / "checkpoints"), weights_only=True)
    assert list(state["model"]) == list(eager.model.state_dict())  # no "_orig_mod." prefixes
    assert list(state["ema"]["shadow"]) == list(eager.ema.shadow.state_dict())

    # a compiled run's checkpoint resumes (or evaluates) without compile ...
    plain = make(base, tmp_path / "compiled")
    assert plain.resume_if_possible() and plain.step == 1
    assert_same_weights(compiled, plain)
    # ... and an eager run's with it: the next step from either agrees
    assert compiled.resume_if_possible(ckpt.latest_checkpoint(tmp_path / "eager" / "checkpoints"))
    assert_same_weights(eager, compiled)
    assert_same_step(eager, eager.train_step()["train/loss"], compiled, compiled.train_step()["train/loss"])
