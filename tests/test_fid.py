"""Fréchet distances: the pure formula against closed forms, FID through torch-fidelity's Inception
path with a locally saved random Inception (conftest.random_inception_weights; no network), the
cross-check with torch_fidelity.calculate_metrics (FID, and the Inception Score from the same pass),
missing weights, and the reference-stats cache.

FID values with random weights only order sets; they are not comparable with real FIDs. Feature
extraction costs ~0.2 s per image on an idle 2-core CPU (several times more on a loaded one), so
the Inception tests use 16 images of 32×32 and are marked slow.
"""

from __future__ import annotations

import math
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from st_sweeps import fid
from st_sweeps.fid import (INCEPTION_WEIGHTS_FILE, FidResult, InceptionWeightsMissing, ReferenceStats, compute_fid,
                           float_to_uint8, frechet_distance, gaussian_fit, pixel_frechet_distance, reference_stats)

N_IMAGES = 16
NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2)  # std of Gaussian noise added in [0, 1] pixel units


def _random_psd(d: int, rank: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, rank))
    return a @ a.T / rank


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images in [0, 1], [n, 3, 32, 32] (upsampled 8×8 noise)."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32, mode="bilinear")


def _noisy(x: torch.Tensor, level: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return float_to_uint8(x + level * torch.randn(x.shape, generator=g), centered=False)


# --- the formula ------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [12, 5])  # full rank, and singular (fewer samples than features)
def test_frechet_distance_of_a_gaussian_with_itself_is_zero(rank: int) -> None:
    mu = np.random.default_rng(0).normal(size=12)
    sigma = _random_psd(12, rank, 1)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_distance_diagonal_closed_form() -> None:
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_sqrtm_formula() -> None:
    """Against the usual pytorch-fid form with scipy.linalg.sqrtm of the product (full rank)."""
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    s1, s2 = _random_psd(10, 30, 4), _random_psd(10, 30, 5)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(torch.tensor(mu1), torch.tensor(s1), mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_pixel_frechet_distance_zero_for_same_set_and_grows_with_noise() -> None:
    x = _images(64)
    xu = float_to_uint8(x, centered=False)
    assert abs(pixel_frechet_distance(xu, xu)) < 1e-8
    assert abs(pixel_frechet_distance(x, x)) < 1e-8
    values = [pixel_frechet_distance(_noisy(x, lvl), xu) for lvl in NOISE_LEVELS[1:]]
    assert values[0] > 0 and values[0] < values[1] < values[2], values
    # uint8 is read as x/255: the same images in [0, 1] floats give the same number
    assert pixel_frechet_distance(xu, _noisy(x, 0.1)) == pytest.approx(
        pixel_frechet_distance(xu.double() / 255, _noisy(x, 0.1).double() / 255), rel=1e-9)


def test_sample_route_equals_covariance_route() -> None:
    """Fewer samples than dimensions: the nuclear-norm route equals the D×D covariance route."""
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(20, 50)), rng.normal(size=(30, 50)) * 1.5 + 0.2
    via_cov = frechet_distance(*gaussian_fit(x), *gaussian_fit(y))
    assert fid.frechet_distance_of_samples(x, y) == pytest.approx(via_cov, rel=1e-9)
    assert abs(fid.frechet_distance_of_samples(x, x)) < 1e-10


def test_pixel_frechet_distance_on_2d_points() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 2, generator=g)
    b = torch.randn(20000, 2, generator=g) * 2 + torch.tensor([1.0, 0.0])
    # N(0, I) vs N((1, 0), 4I): 1 + 2·(1 − 2)² = 3
    assert pixel_frechet_distance(a, b) == pytest.approx(3.0, abs=0.1)


def test_float_to_uint8() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    assert float_to_uint8(x, centered=True).tolist() == [0, 128, 255, 255]
    assert float_to_uint8(x, centered=False).tolist() == [0, 0, 255, 255]


# --- missing weights ---------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """An empty TORCH_HOME and every download route replaced by a recorder that fails."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003
        attempts.append(repr(args[:1]))
        raise AssertionError("network access attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", refuse)
    return attempts


def test_missing_weights_give_no_value_and_say_how_to_fix(no_network: list[str], tmp_path: Path) -> None:
    imgs = float_to_uint8(_images(4), centered=False)
    res = compute_fid(imgs, imgs)
    assert res.value is None and res.n_generated == 4 and res.n_reference == 4
    assert INCEPTION_WEIGHTS_FILE in res.missing_reason
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in res.missing_reason
    assert "weights_path" in res.missing_reason
    assert res.as_metrics() == {}  # neither FID nor the Inception Score
    assert res.as_tags() == {"eval/fid_missing_reason": res.missing_reason,
                             "eval/inception_score_missing_reason": res.missing_reason}

    missing = tmp_path / "nowhere" / INCEPTION_WEIGHTS_FILE
    res = compute_fid(imgs, imgs, weights_path=missing)
    assert res.value is None and str(missing) in res.missing_reason
    with pytest.raises(InceptionWeightsMissing, match=INCEPTION_WEIGHTS_FILE):
        reference_stats(imgs, tmp_path / "cache", "toy-train")
    assert no_network == []


def test_fid_result_metrics() -> None:
    assert FidResult(1.5, None, 10, 20).as_metrics() == {"eval/fid": 1.5}
    assert FidResult(1.5, None, 10, 20).as_tags() == {}
    with_is = FidResult(1.5, None, 10, 20, inception_score=3.0, inception_score_std=0.25)
    assert with_is.as_metrics() == {"eval/fid": 1.5, "eval/inception_score": 3.0, "eval/inception_score_std": 0.25}
    too_few = FidResult(1.5, None, 4, 20, inception_score_missing_reason="too few")
    assert too_few.as_metrics() == {"eval/fid": 1.5}
    assert too_few.as_tags() == {"eval/inception_score_missing_reason": "too few"}


# --- reference statistics cache ----------------------------------------------------------


def test_reference_stats_cached_once_per_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"weights v1")
    calls: list[int] = []

    def fake_stats(images: torch.Tensor, weights_path: Path, **kwargs) -> ReferenceStats:  # noqa: ANN003
        calls.append(images.shape[0])
        feats = images.flatten(1).double()[:, :5]
        return ReferenceStats(*gaussian_fit(feats), images.shape[0], fid.weights_identity(weights_path))

    monkeypatch.setattr(fid, "compute_reference_stats", fake_stats)
    imgs = float_to_uint8(_images(8), centered=False)
    cache = tmp_path / "cache"
    first = reference_stats(imgs, cache, "toy-train", weights_path=weights)
    second = reference_stats(imgs, cache, "toy-train", weights_path=weights)
    assert calls == [8]
    np.testing.assert_array_equal(first.mu, second.mu)
    np.testing.assert_array_equal(first.sigma, second.sigma)
    assert second.n == 8 and second.weights_id == first.weights_id
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and files[0].startswith("fid-ref-toy-train-n8-32x32-") and files[0].endswith(".npz")

    reference_stats(imgs, cache, "toy-test", weights_path=weights)  # another key
    assert calls == [8, 8]
    reference_stats(imgs[:6], cache, "toy-train", weights_path=weights)  # other images, same key
    assert calls == [8, 8, 6]
    weights.write_bytes(b"weights v2")  # other weights file content
    reference_stats(imgs, cache, "toy-train", weights_path=weights)
    assert calls == [8, 8, 6, 8]
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp.npz")]  # atomic writes leave no temp files


def test_reference_stats_from_other_weights_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"weights v1")
    stale = ReferenceStats(np.zeros(2048), np.eye(2048), 10, weights_id="0123456789abcdef")
    with pytest.raises(ValueError, match="recompute"):
        compute_fid(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), stale, weights_path=weights)


def test_fid_needs_uint8_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        compute_fid(torch.rand(2, 3, 8, 8), torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        compute_fid(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 4, 8, 8, dtype=torch.uint8))


# --- through torch-fidelity's Inception (random local weights) ---------------------------


@pytest.fixture(scope="module")
def fid_by_noise_level(random_inception_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """Reference stats of N_IMAGES clean images (through the disk cache), and compute_fid of the
    same images with added noise at each level (level 0 = the clean images themselves)."""
    x = _images(N_IMAGES)
    ref_u8 = float_to_uint8(x, centered=False)
    cache = tmp_path_factory.mktemp("fid_cache")
    ref = reference_stats(ref_u8, cache, "toy-train", weights_path=random_inception_weights)
    results = {lvl: compute_fid(ref_u8 if lvl == 0 else _noisy(x, lvl), ref, random_inception_weights)
               for lvl in NOISE_LEVELS}
    return x, ref_u8, cache, results


@pytest.mark.slow
def test_fid_of_a_set_with_itself_is_zero(fid_by_noise_level) -> None:
    _, _, cache, results = fid_by_noise_level
    res = results[0.0]
    print(f"FID(X, X) = {res.value!r}")
    assert res.missing_reason is None and res.n_generated == res.n_reference == N_IMAGES
    assert abs(res.value) < 1e-6
    assert res.as_metrics()["eval/fid"] == res.value
    assert len(list(cache.glob("fid-ref-toy-train-*.npz"))) == 1


@pytest.mark.slow
def test_fid_grows_with_noise(fid_by_noise_level) -> None:
    _, _, _, results = fid_by_noise_level
    values = [results[lvl].value for lvl in NOISE_LEVELS]
    print("FID by noise level:", dict(zip(NOISE_LEVELS, values)))
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert values[1] > 1e-3  # the random Inception is not collapsed


@pytest.fixture(scope="module")
def torch_fidelity_at_noise_01(fid_by_noise_level, random_inception_weights: Path) -> dict[str, float]:
    """torch_fidelity.calculate_metrics (FID and isc, one feature pass) of the noise-0.1 images
    against the clean ones. Samples unshuffled: our IS splits in the given order (see
    st_sweeps.inception_score)."""
    import torch_fidelity

    x, ref_u8, _, _ = fid_by_noise_level

    class Images(torch.utils.data.Dataset):
        def __init__(self, images: torch.Tensor):
            self.images = images

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int) -> torch.Tensor:
            return self.images[i]

    return torch_fidelity.calculate_metrics(
        input1=Images(_noisy(x, 0.1)), input2=Images(ref_u8), fid=True, isc=True, samples_shuffle=False,
        feature_extractor_weights_path=str(random_inception_weights), cuda=False, cache=False,
        save_cpu_ram=True, verbose=False, batch_size=N_IMAGES)


@pytest.mark.slow
def test_fid_matches_torch_fidelity_calculate_metrics(fid_by_noise_level, torch_fidelity_at_noise_01) -> None:
    _, _, _, results = fid_by_noise_level
    theirs = torch_fidelity_at_noise_01["frechet_inception_distance"]
    ours = results[0.1].value
    print(f"FID at noise 0.1: ours {ours!r}, torch-fidelity {theirs!r}")
    assert ours == pytest.approx(theirs, rel=1e-3)


@pytest.mark.slow
def test_inception_score_matches_torch_fidelity_calculate_metrics(fid_by_noise_level,
                                                                  torch_fidelity_at_noise_01) -> None:
    _, _, _, results = fid_by_noise_level
    res = results[0.1]
    theirs = torch_fidelity_at_noise_01
    print(f"IS at noise 0.1: ours {res.inception_score!r} ± {res.inception_score_std!r}, torch-fidelity "
          f"{theirs['inception_score_mean']!r} ± {theirs['inception_score_std']!r}")
    assert res.inception_score_missing_reason is None
    # the random Inception's logits are small, so its IS is 1 + O(1e-5): compare log IS (the mean KL
    # exponent), which a relative tolerance on IS itself would not test
    assert res.inception_score > 1.0
    assert math.log(res.inception_score) == pytest.approx(math.log(theirs["inception_score_mean"]), rel=1e-5)
    assert res.inception_score_std == pytest.approx(theirs["inception_score_std"], rel=1e-5)
    assert res.as_metrics()["eval/inception_score"] == res.inception_score


@pytest.mark.slow
def test_grayscale_is_repeated_to_three_channels(random_inception_weights: Path) -> None:
    gray = float_to_uint8(_images(3)[:, :1], centered=False)
    model = fid.load_inception(random_inception_weights)
    a, logits_a = fid.inception_outputs(gray, model)
    b, logits_b = fid.inception_outputs(gray.repeat(1, 3, 1, 1), model)
    assert a.shape == (3, 2048) and torch.equal(a, b)
    assert logits_a.shape == (3, 1008) and torch.equal(logits_a, logits_b)
    assert torch.equal(fid.inception_features(gray, model), a)  # the FID-only view of the same pass
