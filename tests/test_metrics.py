"""The metric declarations (``st_sweeps.metrics``) against what the code really reports: for each
config below, the keys one evaluation returns are exactly the ones ``produced_keys`` predicts
(FID and the Inception Score only where Inception weights are present), and every key a training
run writes is declared. The search space and the reproduction tables read the same table."""

from __future__ import annotations

import json

import pytest
import torch

from st_sweeps import metrics
from st_sweeps.evaluate import INCEPTION_WEIGHTS_ENV, evaluate_model
from st_sweeps.experiment import experiment_from_dict
from st_sweeps.reproduce.manifest import METRICS as TABLE_COLUMNS
from st_sweeps.search_space import OBJECTIVE_METRICS
from st_sweeps.tracking import NullTracker
from st_sweeps.trainer import Trainer

UNET = {"name": "ddpmpp", "channels": 8, "channel_multipliers": [1, 2], "blocks_per_resolution": 1,
        "attention_resolutions": [], "dropout": 0.0}
FAST_EVAL = {"sampler": {"name": "euler_maruyama", "n_steps": 4}}
FAST_NLL = {"nelbo_repeats": 1, "rtol": 1e-2, "atol": 1e-2}

CASES = {
    # 8-bit digits, uniform dequantization, pixel FD and FID (no weights here: FID missing)
    "digits_both": {"data": {"dataset": {"name": "digits"}}, "model": {"network": UNET},
                    "eval": {**FAST_EVAL, "likelihood": {**FAST_NLL, "examples": 2}, "num_samples": 8,
                             "sample_quality": "both"}},
    # one example: no spread over examples; two repeats: a Monte-Carlo spread; no samples
    "one_example_two_repeats": {"data": {"dataset": {"name": "digits"}}, "model": {"network": UNET},
                                "eval": {**FAST_EVAL, "num_samples": 0,
                                         "likelihood": {**FAST_NLL, "examples": 1, "repeats": 2,
                                                        "nelbo_repeats": 2}}},
    # the variational dequantization's keys beside the uniform ones
    "vardeq": {"data": {"dataset": {"name": "digits"}}, "model": {"network": UNET},
               "eval": {**FAST_EVAL, "num_samples": 0,
                        "likelihood": {**FAST_NLL, "examples": 2, "dequantization": {
                            "name": "variational", "steps": 2, "batch_size": 4, "hidden": 4}}}},
    # the per-example solver with two probes: the Hutchinson spread of the NLL besides the others
    "fast_two_probes": {"data": {"dataset": {"name": "digits"}}, "model": {"network": UNET},
                        "eval": {**FAST_EVAL, "num_samples": 0,
                                 "likelihood": {**FAST_NLL, "examples": 2, "solver": "fast", "probes": 2}}},
    # continuous 2-D mixture: exact-density sample quality, no likelihood
    "gmm_exact": {"data": {"dataset": {"name": "gmm2d", "n_train": 256, "n_test": 32}},
                  "model": {"network": {"name": "mlp", "hidden": 16, "layers": 1}},
                  "eval": {**FAST_EVAL, "likelihood": {"examples": 0}, "num_samples": 16,
                           "sample_quality": "gmm_exact"}},
}


def _config(overrides: dict):
    return experiment_from_dict({"name": "metrics-test", "truncation": {"eps": 1e-3},
                                 "train": {"steps": 1, "batch_size": 4}, **overrides})


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_evaluation_returns_exactly_the_keys_the_declarations_predict(case, tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_weights"))  # torch-fidelity's cache: empty
    config = _config(CASES[case])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    got = evaluate_model(config, trainer.ema.shadow, trainer.train_data, trainer.test_data, trainer.terminal_prior,
                         step=0, device=torch.device("cpu"), out_dir=tmp_path / "run", tracker=NullTracker())
    without_weights = {m.key for m in metrics.DECLARED if m.conditional}
    expected = metrics.produced_keys(config) - without_weights
    assert set(got) == expected, (f"reported but not predicted: {sorted(set(got) - expected)}; "
                                  f"predicted but not reported: {sorted(expected - set(got))}")


def test_every_key_a_training_run_writes_is_declared(tmp_path):
    config = _config({"data": {"dataset": {"name": "digits"}}, "model": {"network": UNET},
                      "train": {"steps": 4, "batch_size": 4, "log_every_steps": 2, "eval_every_steps": 4},
                      "eval": {**FAST_EVAL, "likelihood": {**FAST_NLL, "examples": 2}, "num_samples": 4,
                               "sample_quality": "pixel_fd"}})
    Trainer(config, tmp_path / "run", progress=False).fit()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = {k for line in lines for k in line if "/" in k}
    assert {"train/loss", "eval/nll_bpd", "perf/steps_per_s"} <= keys
    assert not {k for k in keys if not metrics.is_declared(k)}


def test_the_search_space_objectives_are_the_declared_metrics_with_a_direction():
    assert set(OBJECTIVE_METRICS) == {m.key for m in metrics.DECLARED if m.direction is not None}
    assert "eval/nll_bpd_stderr" not in OBJECTIVE_METRICS  # a spread is reported, not optimised
    assert metrics.get("eval/inception_score").direction == "max"


def test_the_reproduction_columns_read_declared_keys_with_their_units():
    for name, column in TABLE_COLUMNS.items():
        assert metrics.is_declared(column.key), name
        assert column.bits_per_dim == (metrics.unit(column.key) == "bpd")
    assert TABLE_COLUMNS["nll_bpd"].bits_per_dim and not TABLE_COLUMNS["fid"].bits_per_dim


def test_why_not_names_the_setting():
    config = _config({"eval": {"likelihood": {"examples": 0}, "num_samples": 8, "sample_quality": "pixel_fd"}})
    assert "eval.likelihood.examples = 0" in metrics.produced("eval/nll_bpd", config)
    assert "eval.sample_quality is 'pixel_fd'" in metrics.produced("eval/fid", config)
    assert metrics.produced("eval/pixel_fd", config) is None
    with pytest.raises(Exception, match="unknown metric 'eval/nope'"):
        metrics.get("eval/nope")


def test_keys_are_declared_once_and_named_by_their_layer():
    keys = [m.key for m in metrics.DECLARED]
    assert len(keys) == len(set(keys))
    assert all(k.split("/")[0] in ("train", "eval", "perf") for k in keys)
    assert all(m.description for m in metrics.DECLARED)

