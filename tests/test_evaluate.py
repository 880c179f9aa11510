"""One evaluation end to end: fixed metric keys, FID missing without weights, present with them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from st_sweeps.config import apply_overrides
from st_sweeps.evaluate import FID_CACHE_ENV, INCEPTION_WEIGHTS_ENV, combine_over_ranks, evaluate_model
from st_sweeps.experiment import experiment_from_dict
from st_sweeps.tracking import NullTracker
from st_sweeps.trainer import Trainer

BASE = {
    "name": "eval-test",
    "data": {"dataset": {"name": "digits"}},
    "truncation": {"eps": 1e-3},
    "objective": {"name": "dsm", "weighting": "likelihood_is"},
    "model": {"network": {"name": "ddpmpp", "channels": 8, "channel_multipliers": [1, 2],
                          "blocks_per_resolution": 1, "attention_resolutions": [], "dropout": 0.0}},
    "train": {"steps": 1, "batch_size": 8},
    "eval": {"nll_examples": 4, "nelbo_repeats": 1, "num_samples": 8, "sampler": "euler_maruyama",
             "sampler_steps": 10, "nll_rtol": 1e-3, "nll_atol": 1e-3, "sample_quality": "both"},
}


class Tags(NullTracker):
    def __init__(self):
        self.tags: dict[str, str] = {}
        self.artifacts: list[str] = []

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_artifact(self, path, subdir=None):
        self.artifacts.append(Path(path).name)


def run_eval(config: dict, tmp_path: Path) -> tuple[dict[str, float], Tags]:
    cfg = experiment_from_dict(config)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    tags = Tags()
    metrics = evaluate_model(cfg, trainer.ema.shadow, trainer.train_data, trainer.test_data, trainer.terminal_prior,
                             step=0, device=torch.device("cpu"), out_dir=tmp_path / "run", tracker=tags)
    return metrics, tags


def test_without_inception_weights_fid_is_missing_never_a_number(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    metrics, tags = run_eval(BASE, tmp_path)
    assert "eval/fid" not in metrics
    assert INCEPTION_WEIGHTS_ENV in tags.tags["eval/fid_missing_reason"]
    assert "weights-inception-2015-12-05-6726825d.pth" in tags.tags["eval/fid_missing_reason"]
    for key in ("eval/nll_bpd", "eval/nll_bpd_no_residual", "eval/nll_bpd_score_sde", "eval/nelbo_bpd",
                "eval/nfe_nll", "eval/nfe_sampling", "eval/pixel_fd"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    assert metrics["eval/nfe_sampling"] == 10 + 1  # Euler–Maruyama steps + the final denoising step
    # an untrained network on 8-bit data: far worse than the 8 bits/dim of a uniform model
    assert metrics["eval/nll_bpd"] > 8
    assert any(a.endswith(".png") for a in tags.artifacts)


@pytest.mark.slow
def test_with_local_inception_weights_fid_is_computed(tmp_path: Path, monkeypatch, random_inception_weights) -> None:
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(random_inception_weights))
    monkeypatch.setenv(FID_CACHE_ENV, str(tmp_path / "fid_cache"))
    cfg = apply_overrides(BASE, {"eval.nll_examples": 0, "eval.sample_quality": "fid",
                               "eval.fid_reference_examples": 16})
    metrics, tags = run_eval(cfg, tmp_path)
    assert "eval/fid_missing_reason" not in tags.tags
    assert metrics["eval/fid"] > 0  # an untrained model's samples differ from the digits
    assert list((tmp_path / "fid_cache").iterdir()), "reference statistics are cached on disk"


def test_standard_errors_combine_as_a_mean_over_equal_shards() -> None:
    # uninitialised (one process): values pass through, NaN (undefined) values are dropped
    out = combine_over_ranks({"eval/nll_bpd": 3.0, "eval/nll_bpd_stderr": 0.1, "eval/x_mc_stderr": float("nan"),
                              "eval/nll_examples": 16.0}, torch.device("cpu"))
    assert out == {"eval/nll_bpd": 3.0, "eval/nll_bpd_stderr": pytest.approx(0.1), "eval/nll_examples": 16.0}


def test_two_dimensional_data_evaluates_with_exact_density_scale(tmp_path: Path) -> None:
    cfg = {
        "name": "gmm", "data": {"dataset": {"name": "gmm2d", "n_train": 512, "n_test": 64}},
        "truncation": {"eps": 1e-3}, "model": {"network": {"name": "mlp", "hidden": 32, "layers": 1}},
        "train": {"steps": 1, "batch_size": 16},
        "eval": {"nll_examples": 8, "nll_trace": "exact", "nelbo_repeats": 1, "num_samples": 32,
                 "sampler": "ode", "nll_rtol": 1e-3, "nll_atol": 1e-3},
    }
    metrics, tags = run_eval(cfg, tmp_path)
    assert "eval/pixel_fd" in metrics and "eval/nll_bpd" in metrics
    assert any(a.endswith(".png") for a in tags.artifacts)  # the scatter plot of samples
