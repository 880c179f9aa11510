"""digits_fd: the classifier trains deterministically and well, the cache is reused and keyed,
the distances come from torch-fidelity and behave (0 on itself, growing with blur and noise),
and configs refuse it for data other than the 8×8 digits.

Most tests use a small classifier (FAST, ~0.5 s to train, ~84 % test accuracy); the default one
(~5 s) is trained once per module for the tests marked slow.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import st_sweeps.digits_fd as dfd
from st_sweeps.digits_fd import ClassifierSpec, classifier_path, digits_fd, digits_split
from st_sweeps.errors import ConfigError
from st_sweeps.experiment import experiment_from_dict
from st_sweeps.fid import frechet_distance, gaussian_fit
from st_sweeps.search_space import search_space_from_dict

FAST = ClassifierSpec(width=16, features=32, epochs=4, lr=3e-3, dropout=0.0)
# measured with the default spec (seed 0): 0.963 test accuracy; the floor leaves room for other
# CPUs' rounding in 20 epochs of training
ACCURACY_FLOOR = 0.94


def _train_single_threaded(cache: Path, spec: ClassifierSpec) -> Path:
    # module fixtures run before conftest's function-level one-thread fixture: two OpenMP threads
    # on two shared cores are 10-30x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return classifier_path(cache, spec)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fast_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("digits_fd_fast")
    _train_single_threaded(cache, FAST)
    return cache


@pytest.fixture(scope="module")
def default_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("digits_fd_default")
    _train_single_threaded(cache, dfd.DEFAULT_SPEC)
    return cache


def _mixed(n: int, seed: int = 0) -> torch.Tensor:
    """n digits drawn without replacement from train + test."""
    pool = torch.cat([digits_split("train")[0], digits_split("test")[0]])
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]]


def test_training_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, acc_a = dfd.train_classifier(FAST)
    dfd.cache_key(FAST)
    assert torch.equal(torch.get_rng_state(), before)
    b, acc_b = dfd.train_classifier(FAST)
    assert acc_a == acc_b
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    other, _ = dfd.train_classifier(replace(FAST, seed=1))
    assert not torch.equal(other.state_dict()["head.1.weight"], a.state_dict()["head.1.weight"])


def test_splits_match_the_embedded_data_set() -> None:
    from st_sweeps.data.embedded import Digits

    train, train_labels = digits_split("train")
    test, test_labels = digits_split("test")
    assert train.shape == (1500, 1, 8, 8) and test.shape == (297, 1, 8, 8) and train.dtype == torch.uint8
    assert torch.equal(train, Digits().load(None, "train").images)
    assert len(train_labels) == 1500 and len(test_labels) == 297 and set(test_labels.tolist()) == set(range(10))


def test_cache_is_reused_and_keyed_by_data_architecture_and_seed(tmp_path: Path, monkeypatch) -> None:
    calls: list[ClassifierSpec] = []
    real = dfd.train_classifier

    def counting(spec: ClassifierSpec = dfd.DEFAULT_SPEC):
        calls.append(spec)
        return real(spec)

    monkeypatch.setattr(dfd, "train_classifier", counting)
    first = classifier_path(tmp_path, FAST)
    again = classifier_path(tmp_path, FAST)
    assert first == again and len(calls) == 1  # the second call read the file
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # atomic write: no temporary left over
    before = torch.get_rng_state()
    model, info = dfd.load_classifier(first)
    assert torch.equal(torch.get_rng_state(), before)
    assert info["spec"] == FAST and 0.7 < info["test_accuracy"] <= 1.0

    reseeded = classifier_path(tmp_path, replace(FAST, seed=1))
    wider = classifier_path(tmp_path, replace(FAST, features=24))
    assert len({first, reseeded, wider}) == 3 and len(calls) == 3

    images, labels = digits_split("train")
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1
    monkeypatch.setattr(dfd, "digits_split", lambda split: (changed, labels) if split == "train" else (images, labels))
    assert dfd.cache_key(FAST) != first.stem.removeprefix("digits-classifier-")


def test_env_var_names_the_default_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(dfd.CACHE_ENV, str(tmp_path))
    assert dfd.default_cache_dir() == tmp_path


def test_distance_of_a_set_to_itself_is_zero(fast_cache: Path) -> None:
    x = digits_split("test")[0]
    res = digits_fd(x, x, cache_dir=fast_cache, spec=FAST, kid_subsets=10)
    assert abs(res.value) < 1e-6 and res.n_generated == res.n_reference == 297
    different = digits_fd(x, cache_dir=fast_cache, spec=FAST, kid_subsets=10)  # vs the training split
    assert different.value > 100 * abs(res.value) + 1e-3 and different.n_reference == 1500


def test_uses_torch_fidelitys_frechet_and_kid(fast_cache: Path, monkeypatch) -> None:
    import torch_fidelity.metrics as tf_metrics

    seen: dict[str, object] = {}
    for name in ("fid_statistics_to_metric", "kid_featuresdict_to_metric"):
        real = getattr(tf_metrics, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen[_name] = out = _real(*args, **kwargs)
            return out

        monkeypatch.setattr(tf_metrics, name, spy)
    x, y = _mixed(200, seed=1), digits_split("test")[0]
    res = digits_fd(x, y, cache_dir=fast_cache, spec=FAST, kid_subsets=10)
    assert seen["fid_statistics_to_metric"]["frechet_inception_distance"] == res.value
    assert seen["kid_featuresdict_to_metric"]["kernel_inception_distance_mean"] == res.kid
    assert res.as_metrics() == {"eval/digits_fd": res.value, "eval/digits_kid": res.kid}
    # and it is the Fréchet distance of the classifier's features (checked with our own formula)
    extractor = dfd.DigitsFeatureExtractor(dfd.EXTRACTOR_NAME, [dfd.FEATURE_LAYER],
                                           feature_extractor_weights_path=str(classifier_path(fast_cache, FAST)))
    with torch.no_grad():
        fx, fy = extractor(x)[0], extractor(y)[0]
    assert res.value == pytest.approx(frechet_distance(*gaussian_fit(fx), *gaussian_fit(fy)), rel=1e-6)


def test_grows_with_blur_and_noise_small_classifier(fast_cache: Path) -> None:
    x = _mixed(256)
    blur = [digits_fd(dfd.gaussian_blur_uint8(x, s), cache_dir=fast_cache, spec=FAST, kid_subsets=5).value
            for s in (0.0, 0.75, 1.5)]
    noise = [digits_fd(dfd.gaussian_noise_uint8(x, s, torch.Generator().manual_seed(0)), cache_dir=fast_cache,
                       spec=FAST, kid_subsets=5).value for s in (0.0, 0.2, 0.4)]
    assert blur == sorted(blur) and blur[0] < blur[-1], blur
    assert noise == sorted(noise) and noise[0] < noise[-1], noise


def test_degradations() -> None:
    x = digits_split("test")[0][:16]
    assert torch.equal(dfd.gaussian_blur_uint8(x, 0.0), x)
    blurred = dfd.gaussian_blur_uint8(x, 1.0)
    assert blurred.dtype == torch.uint8 and blurred.shape == x.shape
    assert blurred.float().std() < x.float().std()  # smoother
    # a normalised kernel keeps the mean grey level (up to the reflected borders)
    assert abs(blurred.float().mean() - x.float().mean()) < 0.1 * x.float().mean()
    noisy = dfd.gaussian_noise_uint8(x, 0.1, torch.Generator().manual_seed(0))
    assert noisy.dtype == torch.uint8 and not torch.equal(noisy, x)


def test_refuses_images_that_are_not_8x8_digits(fast_cache: Path) -> None:
    x = digits_split("test")[0]
    with pytest.raises(ValueError, match=r"uint8 images \[N, 1, 8, 8\]"):
        digits_fd(x.float(), cache_dir=fast_cache, spec=FAST)
    with pytest.raises(ValueError, match=r"uint8 images \[N, 1, 8, 8\]"):
        digits_fd(torch.zeros((4, 3, 32, 32), dtype=torch.uint8), cache_dir=fast_cache, spec=FAST)
    with pytest.raises(ValueError, match="at least 2"):
        digits_fd(x[:1], cache_dir=fast_cache, spec=FAST)


@pytest.mark.parametrize("dataset", ["gmm_image", "gmm2d", "cifar10"])
def test_config_refuses_digits_fd_for_other_data(dataset: str) -> None:
    with pytest.raises(ConfigError) as info:
        experiment_from_dict({"data": {"dataset": dataset}, "eval": {"sample_quality": "digits_fd"}})
    err = info.value
    assert err.field == "eval.sample_quality" and "'digits'" in err.problem
    assert "digits_fd" not in err.allowed and "pixel_fd" in err.allowed


def test_config_accepts_digits_fd_on_digits() -> None:
    cfg = experiment_from_dict({"data": {"dataset": {"name": "digits", "test_fraction": 0.2}},
                                "eval": {"sample_quality": "digits_fd"}})
    assert cfg.eval.sample_quality.name == "digits_fd"


def test_sweep_objective_needs_digits_fd_evaluation() -> None:
    sweep = {"base": {"eval": {"sample_quality": "digits_fd", "num_samples": 16}},
             "space": {"truncation.eps": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
             "objectives": [{"metric": "eval/digits_fd", "mode": "min"}, {"metric": "eval/digits_kid", "mode": "min"}],
             "scheduler": {"name": "none"}, "trials": 2}
    assert [o.metric for o in search_space_from_dict(sweep).objectives] == ["eval/digits_fd", "eval/digits_kid"]
    for quality in ("pixel_fd", "both"):
        bad = {**sweep, "base": {"eval": {"sample_quality": quality, "num_samples": 16}}}
        with pytest.raises(ConfigError, match="eval/digits_fd is not computed by the base config: "
                                              "eval.sample_quality is .*not digits_fd"):
            search_space_from_dict(bad)


def test_evaluation_reports_digits_fd(fast_cache: Path, monkeypatch) -> None:
    from st_sweeps.data import Dataset
    from st_sweeps.evaluate import FID_CACHE_ENV, sample_quality_metrics
    from st_sweeps.tracking import NullTracker

    monkeypatch.setenv(FID_CACHE_ENV, str(fast_cache))
    real = dfd.classifier_path
    monkeypatch.setattr(dfd, "classifier_path", lambda cache_dir=None, spec=None: real(cache_dir, FAST))
    cfg = experiment_from_dict({"eval": {"sample_quality": "digits_fd"}})
    train = Dataset.registry.build("digits", "data.dataset").load(None, "train")
    samples = torch.rand((32, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1  # model space [-1, 1]
    metrics = sample_quality_metrics(cfg, samples, train, Path("unused"), 0, NullTracker())
    assert {"eval/digits_fd", "eval/digits_kid"} <= set(metrics) and metrics["eval/digits_fd"] > 0
    assert not {k for k in metrics if k.startswith(("eval/pixel_fd", "eval/fid", "eval/gmm"))}


@pytest.mark.slow
def test_default_classifier_accuracy(default_cache: Path) -> None:
    _, info = dfd.load_classifier(classifier_path(default_cache))
    assert info["spec"] == dfd.DEFAULT_SPEC
    assert info["test_accuracy"] >= ACCURACY_FLOOR, info
    model, _ = dfd.load_classifier(classifier_path(default_cache))
    test, labels = digits_split("test")
    assert dfd.accuracy(model, test, labels) == info["test_accuracy"]


@pytest.mark.slow
def test_default_classifier_grows_monotonically_with_blur_and_noise(default_cache: Path) -> None:
    x = _mixed(512)
    blur = [digits_fd(dfd.gaussian_blur_uint8(x, s), cache_dir=default_cache, kid_subsets=5).value
            for s in (0.0, 0.5, 0.75, 1.0, 1.5, 2.0)]
    noise = [digits_fd(dfd.gaussian_noise_uint8(x, s, torch.Generator().manual_seed(0)), cache_dir=default_cache,
                       kid_subsets=5).value for s in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)]
    assert blur == sorted(blur) and blur[-1] > 10 * blur[0], blur
    assert noise == sorted(noise) and noise[-1] > 10 * noise[0], noise
