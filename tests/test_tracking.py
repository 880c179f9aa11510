"""Trackers: a resumed MLflow run keeps one point per step, whichever path resumes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from st_sweeps.tracking import (MlflowTracker, NullTracker, RunIdFile, SkipLoggedSteps, open_remembered_run,
                                skip_logged_steps)


@pytest.fixture()
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def history(tracker: MlflowTracker, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in tracker.client.get_metric_history(tracker.run_id, key))


def test_resumed_run_drops_steps_it_already_holds(tracking_uri: str) -> None:
    first = MlflowTracker(tracking_uri, "exp", run_name="trial")
    for step in range(0, 6):
        first.log_metrics({"train/loss": float(step), "eval/nll_bpd": 10.0 - step}, step)
    first.close("KILLED")

    # the restarted attempt resumes from a checkpoint at step 3 and logs steps 3..8 again
    again = skip_logged_steps(MlflowTracker(tracking_uri, "exp", run_id=first.run_id))
    assert isinstance(again, SkipLoggedSteps) and again.upto == 5 and again.run_id == first.run_id
    for step in range(3, 9):
        again.log_metrics({"train/loss": 100.0 + step}, step)
    again.close()

    loss = history(first, "train/loss")
    assert [s for s, _ in loss] == list(range(9))  # one point per step
    assert [v for _, v in loss] == [0, 1, 2, 3, 4, 5, 106, 107, 108]  # the first values kept
    assert first.last_logged_step(["eval/nll_bpd"]) == 5
    assert first.last_logged_step() == 8
    assert first.client.get_run(first.run_id).info.status == "FINISHED"


def test_fresh_runs_and_other_trackers_are_not_wrapped(tracking_uri: str) -> None:
    fresh = MlflowTracker(tracking_uri, "exp")
    assert fresh.last_logged_step() == -1
    assert skip_logged_steps(fresh) is fresh
    null = NullTracker()
    assert skip_logged_steps(null) is null


def test_ray_worker_rank0_tracker_skips_logged_steps(tracking_uri: str, tmp_path: Path) -> None:
    from st_sweeps.ray_train import RunSettings, _worker_tracker

    run = MlflowTracker(tracking_uri, "exp")
    run.log_metrics({"train/loss": 1.0}, 7)
    settings = RunSettings(run_dir=str(tmp_path), mlflow={"tracking_uri": tracking_uri, "experiment": "exp",
                                                          "run_id": run.run_id, "parent_run_id": None})
    tracker = _worker_tracker(0, settings)
    assert isinstance(tracker, SkipLoggedSteps) and tracker.upto == 7
    assert isinstance(_worker_tracker(1, settings), NullTracker)


def test_jsonl_lines_are_readable_at_once_and_synced_at_most_every_window(tmp_path, monkeypatch) -> None:
    from st_sweeps import tracking

    synced: list[float] = []
    clock = [100.0]
    monkeypatch.setattr(tracking.os, "fsync", lambda fd: synced.append(clock[0]))
    monkeypatch.setattr(tracking.time, "monotonic", lambda: clock[0])
    path = tmp_path / "m.jsonl"
    t = tracking.JsonlTracker(path, sync_every_s=10.0)
    for step, dt in enumerate([0.0, 3.0, 3.0, 5.0, 1.0]):
        clock[0] += dt
        t.log_metrics({"train/loss": float(step)}, step)
        # every line is in the file for any other process as soon as the call returns
        assert [r["step"] for r in tracking.read_jsonl(path)] == list(range(step + 1))
    assert synced == [100.0, 111.0]  # the first line, then once 10 s had passed


def test_a_remembered_run_is_reopened_and_a_new_one_remembered_at_once(tracking_uri: str, tmp_path: Path) -> None:
    memory = RunIdFile(tmp_path / "run" / "mlflow_run_id")
    first = open_remembered_run(tracking_uri, "exp", memory, run_name="a", tags={"role": "x"})
    assert not first.reopened and memory.get() == first.run_id  # remembered before any metric
    first.close()
    again = open_remembered_run(tracking_uri, "exp", memory, run_name="a")
    assert again.reopened and again.run_id == first.run_id
    assert again.client.get_run(again.run_id).info.status == "RUNNING"


def test_a_run_created_but_not_remembered_is_found_by_its_tags(tracking_uri: str, tmp_path: Path) -> None:
    orphan = MlflowTracker(tracking_uri, "exp", run_name="t1", tags={"trial": "t1"})  # then a kill
    memory = RunIdFile(tmp_path / "t1")
    found = open_remembered_run(tracking_uri, "exp", memory, run_name="t1", tags={"trial": "t1"},
                                find_tags={"trial": "t1"})
    assert found.run_id == orphan.run_id and memory.get() == orphan.run_id
    other = open_remembered_run(tracking_uri, "exp", RunIdFile(tmp_path / "t2"), find_tags={"trial": "t2"})
    assert other.run_id != orphan.run_id and not other.reopened


def test_a_remembered_run_that_is_gone_is_replaced_but_a_given_id_is_not(tracking_uri: str, tmp_path: Path,
                                                                       capsys) -> None:
    memory = RunIdFile(tmp_path / "id")
    memory.set("0123456789abcdef0123456789abcdef")  # another store's run, say
    fresh = open_remembered_run(tracking_uri, "exp", memory, run_name="r")
    assert not fresh.reopened and memory.get() == fresh.run_id
    assert "could not be reopened" in capsys.readouterr().err
    with pytest.raises(Exception):
        open_remembered_run(tracking_uri, "exp", None, run_id="0123456789abcdef0123456789abcdef")
