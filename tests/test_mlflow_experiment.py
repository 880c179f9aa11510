"""Experiments st_sweeps logs into are marked as model training (MLflow 3's experiment kind), and
the link it prints opens their runs table."""

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
