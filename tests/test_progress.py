"""The training progress display: tqdm's bar on a terminal, plain timed lines anywhere else."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from st_sweeps.experiment import experiment_from_dict
from st_sweeps.trainer import PLAIN_PROGRESS_INTERVAL_S, Trainer, _progress

LINE = re.compile(r"^train step (\d+)/(\d+) \(\d+%\) (\?|\d+\.\d+) step/s, \S+<\S+(, it_s=\S+, loss=\S+)?$")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """A stand-in for tqdm's ``time()``: advances only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import tqdm.std

    fake = Clock()
    monkeypatch.setattr(tqdm.std, "time", fake)  # tqdm reads it when a bar is made
    return fake


def run(bar, steps: int, clock: Clock | None = None, seconds_per_step: float = 0.0, log_every: int = 10) -> None:
    """What Trainer.fit does with the bar: an update per step, a postfix every log_every steps."""
    for step in range(1, steps + 1):
        if clock is not None:
            clock.now += seconds_per_step
        if step % log_every == 0:
            bar.set_postfix(loss="0.5", it_s="40.00")
        bar.update(1)
    bar.close()


def test_a_terminal_gets_the_live_bar(clock: Clock) -> None:
    tty = FakeTTY()
    run(_progress(True, 50, 0, file=tty), 50, clock, seconds_per_step=1.0)
    assert "\r" in tty.getvalue() and "|" in tty.getvalue()  # redrawn in place


def test_off_a_terminal_plain_lines_at_most_every_interval(clock: Clock) -> None:
    out = io.StringIO()
    steps, seconds_per_step = 2000, 0.1  # 200 s of training
    run(_progress(True, steps, 0, file=out), steps, clock, seconds_per_step)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    # one at the start, one per interval, one at the end
    assert 3 <= len(lines) <= 2 + steps * seconds_per_step / PLAIN_PROGRESS_INTERVAL_S
    assert lines[0].startswith("train step 0/2000 (0%)")
    assert lines[-1].startswith("train step 2000/2000 (100%) 10.00 step/s") and lines[-1].endswith("loss=0.5")
    shown = [int(LINE.match(line).group(1)) for line in lines]
    assert all(b - a >= PLAIN_PROGRESS_INTERVAL_S / seconds_per_step for a, b in zip(shown[:-2], shown[1:-1]))


def test_off_a_terminal_a_fast_run_writes_two_lines(clock: Clock) -> None:
    """Postfix updates (every log_every_steps) never add lines of their own."""
    out = io.StringIO()
    run(_progress(True, 10_000, 0, file=out), 10_000, log_every=1)
    assert len(out.getvalue().splitlines()) == 2


def test_a_pipe_is_not_a_terminal(clock: Clock) -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as pipe:
        run(_progress(True, 100, 40, file=pipe), 60, clock, seconds_per_step=1.0)
    with os.fdopen(read_fd) as r:
        lines = r.read().splitlines()
    assert lines[0].startswith("train step 40/100") and lines[-1].startswith("train step 100/100")
    assert all(LINE.match(line) for line in lines) and len(lines) <= 2 + 60 / PLAIN_PROGRESS_INTERVAL_S


def test_disabled_is_none() -> None:
    assert _progress(False, 10, 0, file=FakeTTY()) is None


TINY = {
    "name": "progress", "seed": 0, "data": {"dataset": {"name": "digits"}},
    "model": {"network": {"name": "ddpmpp", "channels": 8, "channel_multipliers": [1], "blocks_per_resolution": 1,
                          "attention_resolutions": [], "dropout": 0.0}},
    "optim": {"warmup_steps": 0},
    "train": {"steps": 4, "batch_size": 4, "log_every_steps": 1, "checkpoint_every_steps": 0, "keep_checkpoints": 1},
}


def test_the_trainer_writes_plain_lines_when_stderr_is_captured(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Under pytest's capture stderr is not a terminal, as under nohup, CI or a Ray worker."""
    trainer = Trainer(experiment_from_dict(TINY), tmp_path, device="cpu", progress=True,
                      evaluate_fn=lambda *a, **k: {})
    trainer.fit()
    err = capsys.readouterr().err
    assert "\r" not in err
    progress = [line for line in err.splitlines() if line.startswith("train step")]
    assert progress and progress[-1].startswith("train step 4/4 (100%)") and len(progress) <= 3
