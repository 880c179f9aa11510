"""Data sets: tiny files in the real formats, read back through the real loaders."""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from st_sweeps.data import (CIFAR10, GMM2D, STL10, CelebA, CelebAHQ, Dataset, Digits, GMMImage, ImageData,
                            MissingDataError, resolve_data_root)
from st_sweeps.data import prepare
from st_sweeps.data.transforms import resize_images
from st_sweeps.errors import ConfigError


# --- writers for the official formats --------------------------------------------------------

def write_cifar_batch(path: Path, n: int, seed: int) -> np.ndarray:
    """A pickled batch like the official ones (bytes keys, uint8 data [n, 3072]); returns the data."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"tiny batch", b"labels": rng.integers(0, 10, n).tolist(), b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return data


def write_cifar(root: Path, n: int = 20) -> tuple[list[np.ndarray], np.ndarray]:
    folder = root / "cifar-10-batches-py"
    train = [write_cifar_batch(folder / f"data_batch_{i}", n, seed=i) for i in range(1, 6)]
    return train, write_cifar_batch(folder / "test_batch", n, seed=99)


def write_stl(path: Path, images: np.ndarray) -> None:
    """uint8 [n, 3, 96, 96] (C, H, W) -> the official binary: each plane column-major."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())


def stl_images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 120, (n, 3, 96, 96), dtype=np.uint8)
    imgs[:, 0, :16, :] = 255  # a bright band along the top rows (a transposed read puts it on the left)
    return imgs


CROP_TOP, CROP_LEFT = 39, 19  # centre 140×140 of 178 wide × 218 high


def celeba_image(i: int) -> np.ndarray:
    """[218, 178, 3]: black border, inside the centred 140 crop smooth gradients plus a per-image tint."""
    img = np.zeros((218, 178, 3), dtype=np.uint8)
    rows = np.linspace(40, 240, 140)[:, None]
    cols = np.linspace(240, 40, 140)[None, :]
    img[CROP_TOP:CROP_TOP + 140, CROP_LEFT:CROP_LEFT + 140, 0] = rows.repeat(140, 1)
    img[CROP_TOP:CROP_TOP + 140, CROP_LEFT:CROP_LEFT + 140, 1] = cols.repeat(140, 0)
    img[CROP_TOP:CROP_TOP + 140, CROP_LEFT:CROP_LEFT + 140, 2] = 60 + 30 * i
    return img


def write_celeba(root: Path, partitions: list[int]) -> list[str]:
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(partitions))]
    for i, name in enumerate(names):
        Image.fromarray(celeba_image(i)).save(folder / name, quality=95, subsampling=0)
    (root / "celeba" / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, p in zip(names, partitions)))
    return names


def expected_celeba(path: Path, size: int) -> torch.Tensor:
    arr = np.asarray(Image.open(path).convert("RGB"))
    crop = arr[CROP_TOP:CROP_TOP + 140, CROP_LEFT:CROP_LEFT + 140]
    return resize_images(torch.from_numpy(crop.transpose(2, 0, 1).copy())[None], size)[0]


# --- data root --------------------------------------------------------------------------------

def test_data_root_explicit_then_env_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ST_SWEEPS_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("ST_SWEEPS_DATA_ROOT")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root(None) == tmp_path / "home" / ".cache" / "st_sweeps" / "data"


# --- CIFAR-10 ---------------------------------------------------------------------------------

def test_cifar10_reads_official_pickles_exactly(tmp_path):
    train, test = write_cifar(tmp_path)
    data = CIFAR10().load(tmp_path, "train")
    assert isinstance(data, ImageData) and data.discrete and data.mixture is None and data.name == "cifar10"
    assert data.images.dtype == torch.uint8 and data.images.shape == (100, 3, 32, 32) and data.shape == (3, 32, 32)
    assert torch.equal(data.images, torch.from_numpy(np.concatenate(train)).reshape(100, 3, 32, 32))
    # channel-major rows: the first 1024 bytes are the red plane, row by row
    assert torch.equal(data.images[0, 0], torch.from_numpy(train[0][0, :1024].reshape(32, 32)))
    assert torch.equal(data.images[0, 2, 1], torch.from_numpy(train[0][0, 2048 + 32:2048 + 64]))
    test_data = CIFAR10().load(tmp_path, "test")
    assert torch.equal(test_data.images, torch.from_numpy(test).reshape(20, 3, 32, 32))


def test_cifar10_missing_file_names_path_and_prepare_command(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(MissingDataError) as info:
        CIFAR10().load(tmp_path, "train")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "cifar10" in msg and str(tmp_path / "cifar-10-batches-py" / "data_batch_3") in msg
    assert f"python -m st_sweeps.data.prepare cifar10 --data-root {tmp_path}" in msg


# --- STL-10 -----------------------------------------------------------------------------------

def test_stl10_reads_column_major_binaries_and_resizes(tmp_path):
    train, unlabeled, test = stl_images(3, 0), stl_images(2, 1), stl_images(2, 2)
    write_stl(tmp_path / "stl10_binary" / "train_X.bin", train)
    write_stl(tmp_path / "stl10_binary" / "unlabeled_X.bin", unlabeled)
    write_stl(tmp_path / "stl10_binary" / "test_X.bin", test)

    native = STL10(image_size=96).load(tmp_path, "train")
    assert torch.equal(native.images, torch.from_numpy(np.concatenate([train, unlabeled])))
    assert torch.all(native.images[:, 0, :16] == 255)  # the band is along the top, not the left

    small = STL10().load(tmp_path, "train")
    assert small.images.shape == (5, 3, 48, 48) and small.images.dtype == torch.uint8
    assert torch.equal(small.images, resize_images(native.images, 48))
    assert torch.all(small.images[:, 0, :7] == 255) and small.images[:, 0, 9:].max() < 200
    assert (tmp_path / "stl10_binary" / "st_sweeps_cache" / "stl10_48_train_unlabeled.npy").exists()
    assert torch.equal(STL10().load(tmp_path, "train").images, small.images)  # from the cache

    labeled = STL10(include_unlabeled=False).load(tmp_path, "train")
    assert torch.equal(labeled.images, small.images[:3])
    assert torch.equal(STL10(image_size=96).load(tmp_path, "test").images, torch.from_numpy(test))


def test_stl10_truncated_file_is_reported(tmp_path):
    for name in ("train_X.bin", "unlabeled_X.bin"):
        write_stl(tmp_path / "stl10_binary" / name, stl_images(1, 0))
    with open(tmp_path / "stl10_binary" / "train_X.bin", "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(MissingDataError, match="not a whole number"):
        STL10().load(tmp_path, "train")


# --- CelebA -----------------------------------------------------------------------------------

def test_celeba_centre_crop_split_and_cache(tmp_path):
    names = write_celeba(tmp_path, [0, 2, 0, 1, 2, 0])
    folder = tmp_path / "celeba" / "img_align_celeba"
    train = CelebA().load(tmp_path, "train")
    assert train.images.shape == (3, 3, 64, 64) and train.images.dtype == torch.uint8 and train.discrete
    for img, name in zip(train.images, [names[0], names[2], names[5]]):  # partition 0, in file order
        assert torch.equal(img, expected_celeba(folder / name, 64))
    # the black border is cropped away everywhere, the per-image tint identifies the file
    assert train.images[:, 2, 1:-1, 1:-1].min() >= 50
    assert [round(float(img[2, 8:-8, 8:-8].float().mean())) for img in train.images] == [60, 120, 210]
    # an off-centre crop would differ: the gradients pin the offset
    arr = np.asarray(Image.open(folder / names[0]).convert("RGB"))
    shifted = arr[CROP_TOP + 2:CROP_TOP + 142, CROP_LEFT:CROP_LEFT + 140].transpose(2, 0, 1).copy()
    assert not torch.equal(train.images[0], resize_images(torch.from_numpy(shifted)[None], 64)[0])

    test = CelebA().load(tmp_path, "test")
    assert [round(float(img[2, 8:-8, 8:-8].float().mean())) for img in test.images] == [90, 180]

    cache = tmp_path / "celeba" / "st_sweeps_cache" / "celeba_crop140_64_train.npy"
    assert cache.exists() and not list(cache.parent.glob("*.tmp"))
    for path in folder.iterdir():
        path.unlink()
    assert torch.equal(CelebA().load(tmp_path, "train").images, train.images)  # served from the cache


def test_celeba_missing_folder_says_manual_download(tmp_path):
    with pytest.raises(MissingDataError) as info:
        CelebA().load(tmp_path, "train")
    msg = str(info.value)
    assert "img_align_celeba" in msg and "list_eval_partition.txt" in msg and "prepare celeba" in msg


def test_celebahq_folder_of_pngs(tmp_path):
    folder = tmp_path / "celebahq"
    folder.mkdir()
    rng = np.random.default_rng(0)
    originals = []
    for i in range(10):
        h, w = (40, 40) if i % 2 else (48, 40)  # a non-square one is centre-cropped
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:05d}.png")
        top = (h - 40) // 2
        originals.append(torch.from_numpy(arr[top:top + 40].transpose(2, 0, 1).copy()))
    (folder / "notes.txt").write_text("not an image")
    train = CelebAHQ(image_size=16).load(tmp_path, "train")
    test = CelebAHQ(image_size=16).load(tmp_path, "test")
    assert train.images.shape == (9, 3, 16, 16) and test.images.shape == (1, 3, 16, 16)
    assert torch.equal(train.images, resize_images(torch.stack(originals[:9]), 16))
    assert torch.equal(test.images, resize_images(originals[9][None], 16))
    assert torch.equal(CelebAHQ(image_size=40).load(tmp_path, "test").images, originals[9][None])
    with pytest.raises(ConfigError, match="image_size"):
        CelebAHQ().load(tmp_path, "train")  # 256 > 40: not upsampled


# --- embedded sets ----------------------------------------------------------------------------

def test_digits_are_8bit_images_in_two_fixed_splits():
    train, test = Digits().load(None, "train"), Digits().load(None, "test")
    assert len(train) + len(test) == 1797 and len(test) == 297
    assert train.images.dtype == torch.uint8 and train.shape == (1, 8, 8) and train.discrete
    levels = {round(k * 255 / 16) for k in range(17)}
    assert set(torch.cat([train.images, test.images]).unique().tolist()) <= levels
    from sklearn.datasets import load_digits
    raw = load_digits().images
    assert torch.equal(test.images[:, 0], torch.from_numpy(np.round(raw[-297:] * 255 / 16).astype(np.uint8)))
    assert torch.equal(Digits().load(None, "train").images, train.images)


def test_gmm2d_samples_match_the_mixture_and_the_density_integrates_to_one():
    cfg = GMM2D(n_train=20_000, seed=3)
    data = cfg.load(None, "train")
    mix = data.mixture
    assert data.images.shape == (20_000, 2) and data.images.dtype == torch.float32 and not data.discrete
    assert mix is not None and mix.event_shape == (2,)
    # ring of 8 equal components: mean 0, covariance (r²/2 + s²) I
    var = cfg.radius**2 / 2 + cfg.component_std**2
    assert data.images.mean(0).abs().max() < 0.03
    cov = torch.cov(data.images.T)
    assert torch.allclose(cov, var * torch.eye(2), atol=0.03)
    # ∫ p = 1 on a grid covering the ring
    g = torch.linspace(-2, 2, 401)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    density = mix.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp()
    assert abs(float(density.sum()) * float(g[1] - g[0]) ** 2 - 1) < 1e-3
    # deterministic with the seed, train and test independent
    assert torch.equal(cfg.load(None, "train").images, data.images)
    assert not torch.equal(GMM2D(n_train=20_000, seed=4).load(None, "train").images, data.images)
    assert not torch.equal(cfg.load(None, "test").images[:100], data.images[:100])
    assert torch.equal(GMM2D(n_train=5, seed=3).load(None, "test").images, cfg.load(None, "test").images)


@pytest.mark.parametrize("means", ["digits", "random"])
def test_gmm_image_samples_match_the_mixture(means):
    cfg = GMMImage(n_train=20_000, components=4, component_std=0.2, means=means, seed=1)
    data = cfg.load(None, "train")
    mix = data.mixture
    assert data.images.shape == (20_000, 1, 8, 8) and data.shape == (1, 8, 8) and mix.event_shape == (1, 8, 8)
    m = mix.means.flatten(1)  # [K, 64]
    assert torch.allclose(data.images.flatten(1).mean(0), m.mean(0), atol=0.03)
    # per-pixel variance: spread of the means plus the component variance
    var = m.var(0, unbiased=False) + 0.2**2
    assert torch.allclose(data.images.flatten(1).var(0), var, rtol=0.1, atol=0.005)
    assert m.min() >= -1 and m.max() <= 1
    assert torch.equal(cfg.load(None, "train").images, data.images)


def test_gmm_image_digit_means_look_like_digits():
    mix = GMMImage(components=10).mixture()
    from sklearn.datasets import load_digits
    d = load_digits()
    zero = torch.from_numpy(d.images[d.target == 0].mean(0) / 8 - 1).float()
    assert torch.allclose(mix.means[0, 0], zero, atol=1e-6)


# --- config errors ----------------------------------------------------------------------------

def test_paper_defaults():
    assert [CIFAR10().image_size, CelebA().image_size, CelebAHQ().image_size, STL10().image_size] == [32, 64, 256, 48]
    assert all(c().random_flip for c in (CIFAR10, CelebA, CelebAHQ, STL10))
    assert not Digits().random_flip and not GMM2D().random_flip
    assert CIFAR10().shape == (3, 32, 32) and GMM2D().shape == (2,) and STL10().discrete


@pytest.mark.parametrize("spec, field, allowed", [
    ({"name": "cifar10", "image_size": 0}, "data.image_size", "[1, 32]"),
    ({"name": "celeba", "image_size": 200}, "data.image_size", "[1, 140]"),
    ({"name": "stl10", "image_size": -1}, "data.image_size", "[1, 96]"),
    ({"name": "imagenet"}, "data.name", "cifar10"),
    ({"name": "cifar10", "size": 32}, "data.size", "image_size"),
    ({"name": "gmm2d", "components": 0}, "data.components", ">= 1"),
    ({"name": "gmm_image", "components": 11}, "data.components", "[1, 10]"),
    ({"name": "gmm_image", "means": "noise"}, "data.means", "digits"),
    ({"name": "digits", "test_fraction": 1.0}, "data.test_fraction", "(0.0, 1.0)"),
    ({"name": "gmm2d", "component_std": 0.0}, "data.component_std", "> 0"),
])
def test_bad_configs_name_field_and_allowed_values(spec, field, allowed):
    with pytest.raises(ConfigError) as info:
        Dataset.registry.build(spec, "data")
    assert info.value.field == field and allowed in str(info.value.allowed)


def test_unknown_split_names_the_allowed_splits(tmp_path):
    for cfg in (CIFAR10(), Digits(), GMM2D()):
        with pytest.raises(ConfigError) as info:
            cfg.load(tmp_path, "valid")
        assert info.value.field == "split" and info.value.allowed == "train, test"


# --- prepare ----------------------------------------------------------------------------------

def failing_opener(calls: list):
    def opener(url, timeout=None):
        calls.append((url, timeout))
        raise urllib.error.URLError("no network in tests")
    return opener


def test_prepare_without_files_or_network_fails_fast_with_instructions(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(prepare, "urlopen", failing_opener(calls))
    start = time.monotonic()
    rc = prepare.main(["cifar10", "--data-root", str(tmp_path)])
    assert rc == 1 and time.monotonic() - start < 5
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", prepare.DEFAULT_TIMEOUT_S)]
    assert prepare.DEFAULT_TIMEOUT_S <= 5
    err = capsys.readouterr().err
    assert "download failed" in err and "cifar-10-python.tar.gz" in err
    assert f"missing  {tmp_path / 'cifar-10-batches-py' / 'data_batch_1'}" in err
    assert f"python -m st_sweeps.data.prepare cifar10 --data-root {tmp_path}" in err
    assert not list(tmp_path.glob("*.part"))


def test_prepare_celeba_never_downloads_and_explains_the_manual_step(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(prepare, "urlopen", failing_opener(calls))
    assert prepare.main(["celeba", "--data-root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert calls == [] and "Google Drive" in err
    assert f"{tmp_path}/celeba/img_align_celeba/000001.jpg" in err and "list_eval_partition.txt" in err


def test_prepare_embedded_sets_need_nothing(tmp_path, capsys):
    assert prepare.main(["digits", "--data-root", str(tmp_path)]) == 0


def tiny_cifar_source(n: int, archives=()) -> prepare.Source:
    files = tuple(prepare.ExpectedFile(f"cifar-10-batches-py/{b}", n, prepare.count_cifar_batch)
                  for b in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"])
    return prepare.Source("cifar10", files, archives, "put files in {root}")


def test_checker_counts_files_against_the_expectation(tmp_path, monkeypatch, capsys):
    write_cifar(tmp_path, n=20)
    ok, problems = prepare.check(tiny_cifar_source(20), tmp_path)
    assert len(ok) == 6 and problems == []
    ok, problems = prepare.check(tiny_cifar_source(10_000), tmp_path)
    assert ok == [] and len(problems) == 6 and "20 images, expected 10000" in problems[0]
    monkeypatch.setitem(prepare.SOURCES, "cifar10", tiny_cifar_source(20))
    assert prepare.main(["cifar10", "--data-root", str(tmp_path), "--no-download"]) == 0
    assert "cifar10: OK" in capsys.readouterr().out
    # the real expectation: tiny files are reported, not re-downloaded
    monkeypatch.setattr(prepare, "urlopen", failing_opener(calls := []))
    monkeypatch.setitem(prepare.SOURCES, "cifar10", prepare._cifar10())
    assert prepare.main(["cifar10", "--data-root", str(tmp_path)]) == 1 and calls == []


def test_checker_counts_stl_images_by_size_and_lines_and_jpgs(tmp_path):
    write_stl(tmp_path / "stl10_binary" / "train_X.bin", stl_images(3, 0))
    write_celeba(tmp_path, [0, 1, 2])
    source = prepare.Source("x", (
        prepare.ExpectedFile("stl10_binary/train_X.bin", 3, prepare.stl10.image_count, size_bytes=3 * 27648),
        prepare.ExpectedFile("celeba/img_align_celeba", 3, prepare.count_jpgs),
        prepare.ExpectedFile("celeba/list_eval_partition.txt", 3, prepare.count_lines, unit="lines")))
    ok, problems = prepare.check(source, tmp_path)
    assert problems == [] and len(ok) == 3
    (tmp_path / "stl10_binary" / "train_X.bin").write_bytes(b"\0" * 27648)
    _, problems = prepare.check(source, tmp_path)
    assert problems == [f"wrong size  {tmp_path / 'stl10_binary' / 'train_X.bin'}: 27648 bytes, expected 82944"]


def tar_of(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buf.getvalue()


def test_prepare_downloads_checks_md5_and_extracts(tmp_path, monkeypatch, capsys):
    write_cifar(tmp_path / "src", n=20)
    blob = tar_of(tmp_path / "src" / "cifar-10-batches-py")
    md5 = hashlib.md5(blob).hexdigest()
    monkeypatch.setattr(prepare, "urlopen", lambda url, timeout=None: io.BytesIO(blob))
    root = tmp_path / "root"
    good = tiny_cifar_source(20, (prepare.Archive("http://example.invalid/c.tar.gz", "c.tar.gz", md5),))
    monkeypatch.setitem(prepare.SOURCES, "cifar10", good)
    assert prepare.main(["cifar10", "--data-root", str(root)]) == 0
    assert CIFAR10().load(root, "test").images.shape == (20, 3, 32, 32)

    bad = tiny_cifar_source(20, (prepare.Archive("http://example.invalid/c.tar.gz", "c.tar.gz", "0" * 32),))
    monkeypatch.setitem(prepare.SOURCES, "cifar10", bad)
    other = tmp_path / "other"
    assert prepare.main(["cifar10", "--data-root", str(other)]) == 1
    assert "MD5" in capsys.readouterr().err
    assert not (other / "cifar-10-batches-py").exists() and not list(other.glob("*.part"))


def test_prepare_lists_every_real_set_with_counts():
    assert set(prepare.SOURCES) == {"cifar10", "celeba", "celebahq", "stl10"}
    counts = {s: sum(f.count for f in src.files if f.unit == "images") for s, src in prepare.SOURCES.items()}
    assert counts == {"cifar10": 60_000, "celeba": 202_599, "celebahq": 30_000, "stl10": 113_000}
    assert prepare.SOURCES["cifar10"].archives[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert math.isclose(prepare.DEFAULT_TIMEOUT_S, 5.0)
