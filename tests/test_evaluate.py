"""One evaluation end to end: fixed metric keys, FID and the Inception Score missing without weights,
present with them."""

from __future__ import annotations

import math
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
    "eval": {"likelihood": {"examples": 4, "nelbo_repeats": 1, "rtol": 1e-3, "atol": 1e-3}, "num_samples": 8,
             "sampler": {"name": "euler_maruyama", "n_steps": 10}, "sample_quality": "both"},
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
    assert "eval/inception_score" not in metrics and "eval/inception_score_std" not in metrics
    assert INCEPTION_WEIGHTS_ENV in tags.tags["eval/fid_missing_reason"]  # the one reason for both
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
    cfg = apply_overrides(BASE, {"eval.likelihood.examples": 0, "eval.sample_quality": "fid",
                               "eval.sample_quality.reference_examples": 16, "eval.num_samples": 10})  # 10: one per IS split
    metrics, tags = run_eval(cfg, tmp_path)
    assert "eval/fid_missing_reason" not in tags.tags and "eval/inception_score_missing_reason" not in tags.tags
    assert metrics["eval/fid"] > 0  # an untrained model's samples differ from the digits
    assert math.isfinite(metrics["eval/inception_score"]) and metrics["eval/inception_score"] >= 1.0 - 1e-9
    assert math.isfinite(metrics["eval/inception_score_std"]) and metrics["eval/inception_score_std"] >= 0.0
    assert list((tmp_path / "fid_cache").iterdir()), "reference statistics are cached on disk"


class StandInInception(torch.nn.Module):
    """In place of the Inception network: 16 "pool features" (a small Fréchet distance) and 1008
    logits, drawn from the batch size, so an evaluation with "FID" runs in seconds."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        g = torch.Generator().manual_seed(x.shape[0])
        return torch.randn(x.shape[0], 16, generator=g), torch.randn(x.shape[0], 1008, generator=g)


def use_stand_in_inception(tmp_path: Path, monkeypatch) -> None:
    import numpy as np

    from st_sweeps import fid

    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"stand-in")
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(weights))
    monkeypatch.setattr(fid, "load_inception", lambda path, device="cpu": StandInInception())
    monkeypatch.setattr(fid, "reference_stats",
                        lambda *a, **k: fid.ReferenceStats(np.zeros(16), np.eye(16), 16))


def test_fewer_samples_than_inception_score_splits_tag_the_score_missing(tmp_path: Path, monkeypatch) -> None:
    """8 samples, 10 IS splits (the default): FID is a number, the IS is missing with its own reason."""
    use_stand_in_inception(tmp_path, monkeypatch)
    cfg = apply_overrides(BASE, {"eval.likelihood.examples": 0, "eval.sample_quality": "fid"})
    metrics, tags = run_eval(cfg, tmp_path)
    assert math.isfinite(metrics["eval/fid"]) and "eval/fid_missing_reason" not in tags.tags
    assert "eval/inception_score" not in metrics and "eval/inception_score_std" not in metrics
    assert "at least 10" in tags.tags["eval/inception_score_missing_reason"]


def test_inception_score_splits_reach_the_score(tmp_path: Path, monkeypatch) -> None:
    """eval.sample_quality.inception_score_splits is the split count compute_fid scores with: 8 samples as one
    split (the paper's protocol) give a score with zero spread; 9 splits of 8 samples are missing."""
    from st_sweeps import fid

    use_stand_in_inception(tmp_path, monkeypatch)
    seen: list[int] = []
    real = fid.compute_fid

    def spy(*args, **kwargs):
        seen.append(kwargs["is_splits"])
        return real(*args, **kwargs)

    monkeypatch.setattr(fid, "compute_fid", spy)
    one = apply_overrides(BASE, {"eval.likelihood.examples": 0, "eval.sample_quality": "fid",
                                 "eval.sample_quality.inception_score_splits": 1})
    metrics, tags = run_eval(one, tmp_path / "one")
    assert seen == [1] and "eval/inception_score_missing_reason" not in tags.tags
    assert 1.0 - 1e-9 <= metrics["eval/inception_score"] <= 8 + 1e-9  # at most the samples per split
    assert metrics["eval/inception_score_std"] == 0.0  # one split: no spread
    nine = apply_overrides(one, {"eval.sample_quality.inception_score_splits": 9})
    metrics, tags = run_eval(nine, tmp_path / "nine")
    assert seen == [1, 9] and "eval/inception_score" not in metrics
    assert "9 splits need at least 9" in tags.tags["eval/inception_score_missing_reason"]


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
        "eval": {"likelihood": {"examples": 8, "trace": "exact", "nelbo_repeats": 1, "rtol": 1e-3, "atol": 1e-3},
                 "num_samples": 32, "sampler": {"name": "ode", "rtol": 1e-3, "atol": 1e-3}},
    }
    metrics, tags = run_eval(cfg, tmp_path)
    assert "eval/pixel_fd" in metrics and "eval/nll_bpd" in metrics
    assert any(a.endswith(".png") for a in tags.artifacts)  # the scatter plot of samples
