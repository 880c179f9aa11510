"""Experiments st_sweeps logs into are marked as model training (MLflow 3's experiment kind), the
link it prints opens their runs table, and every sweep trial has exactly one run."""

from __future__ import annotations

from pathlib import Path

from st_sweeps.tracking import EXPERIMENT_KIND_TAG, TRAINING_KIND, MlflowTracker, runs_page_url


def test_experiments_are_marked_as_model_training_once(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    made = MlflowTracker(uri, "new-one")  # created by st_sweeps
    assert client.get_experiment(made.experiment_id).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND

    old = client.create_experiment("made-elsewhere")  # e.g. by an older st_sweeps: marked on reuse
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    MlflowTracker(uri, "made-elsewhere")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND

    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    MlflowTracker(uri, "chosen")  # a kind someone chose stays
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_runs_page_url_asks_for_the_training_view() -> None:
    assert runs_page_url("http://127.0.0.1:5000/", "7") == \
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"


def test_a_trial_that_died_before_opening_its_run_gets_one_with_its_outcome(tmp_path: Path) -> None:
    """One MLflow child run per Tune trial, even for a trial lost before it logged anything (its
    node removed in its first seconds): the report makes its run, FAILED, with params and error."""
    from mlflow.tracking import MlflowClient

    from st_sweeps.report import TrialRow
    from st_sweeps.tune import Sweep, close_trial_runs, runs_for_unlogged_trials

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = MlflowTracker(uri, "sweeps", run_name="sweep")
    sweep = Sweep(name="s", directory=tmp_path / "s", source="", study_name="s", tracking_uri=uri,
                  experiment="sweeps", parent_run_id=parent.run_id)
    logged = MlflowTracker(uri, "sweeps", run_name="trial_a", parent_run_id=parent.run_id,
                           tags={"st_sweeps.role": "trial", "st_sweeps.trial_id": "a"})
    rows = [TrialRow("a", "completed", {"truncation.eps": 1e-5}, {"eval/nll_bpd": 4.6}, step=10, run_id=logged.run_id,
                     rank=1),
            TrialRow("b", "error", {"truncation.eps": 1e-3}, {}, run_id=None, error="node lost", rank=2)]
    rows = runs_for_unlogged_trials(rows, sweep)
    again = runs_for_unlogged_trials([TrialRow("b", "error", {}, {}, run_id=None)], sweep)
    assert again[0].run_id == rows[1].run_id  # remembered: a second report makes no second run
    close_trial_runs(rows, sweep, "eval/nll_bpd")

    client = MlflowClient(uri)
    children = client.search_runs([parent.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    by_trial = {r.data.tags["st_sweeps.trial_id"]: r for r in children}
    assert sorted(by_trial) == ["a", "b"] and len(children) == 2
    lost = by_trial["b"]
    assert lost.info.status == "FAILED" and lost.data.tags["st_sweeps.error"] == "node lost"
    assert lost.data.params["truncation.eps"] == "0.001" and lost.data.tags["st_sweeps.outcome"] == "error"
    assert by_trial["a"].info.status == "FINISHED"
