"""Data sets: tiny files in the real formats, read back through the real loaders."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import pickle
import tarfile
import time
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from st_sweeps.data import (CIFAR10, GMM2D, STL10, CelebA, CelebAHQ, Dataset, Digits, GMMImage, ImageData,
                            ImageNet32, MissingDataError, resolve_data_root)
from st_sweeps.data import imagenet32, prepare
from st_sweeps.data.transforms import resize_images
from st_sweeps.errors import ConfigError


# --- writers for the official formats --------------------------------------------------------

def write_cifar_batch(path: Path, n: int, seed: int, protocol: int = 2) -> np.ndarray:
    """A pickled batch like the official ones (bytes keys, uint8 data [n, 3072]); returns the data."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"tiny batch", b"labels": rng.integers(0, 10, n).tolist(), b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)
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


def imagenet32_images(n: int, seed: int) -> np.ndarray:
    """uint8 [n, 3, 32, 32] (C, H, W): red = 8·row, green = 8·column, blue random."""
    imgs = np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    imgs[:, 0] = 8 * np.arange(32)[:, None]
    imgs[:, 1] = 8 * np.arange(32)[None, :]
    return imgs


def imagenet32_npz(images: np.ndarray, train: bool, compressed: bool = False) -> bytes:
    """One batch as the official .npz: rows built as Imagenet32_Scripts does (R, G, B planes of the
    H×W×3 image, each flattened row-major), 1-based labels, and the train mean in train batches."""
    hwc = images.transpose(0, 2, 3, 1)
    data = np.stack([np.concatenate([im[:, :, 0].ravel(), im[:, :, 1].ravel(), im[:, :, 2].ravel()]) for im in hwc])
    arrays = {"data": data, "labels": np.random.default_rng(len(images)).integers(1, 1001, len(images))}
    if train:
        arrays["mean"] = data.mean(0)
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def write_imagenet32(root: Path, train_counts=(3,) * 9 + (4,), test_count: int = 5,
                     flat: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """Tiny ImageNet32 in the unzipped layout (``flat``: all files directly in imagenet32/);
    train batches plain ``savez``, the validation file ``savez_compressed``, to read both."""
    folder = root / "imagenet32"
    train_dir, val_dir = (folder, folder) if flat else (folder / "Imagenet32_train_npz", folder / "Imagenet32_val_npz")
    train_dir.mkdir(parents=True, exist_ok=True)
    val_dir.mkdir(parents=True, exist_ok=True)
    train = [imagenet32_images(n, seed=i) for i, n in enumerate(train_counts, 1)]
    for i, imgs in enumerate(train, 1):
        (train_dir / f"train_data_batch_{i}.npz").write_bytes(imagenet32_npz(imgs, train=True))
    test = imagenet32_images(test_count, seed=99)
    (val_dir / "val_data.npz").write_bytes(imagenet32_npz(test, train=False, compressed=True))
    return train, test


SMALL = "oord_small_png"


def write_small_imagenet(root: Path, names: dict[str, list[str]], monkeypatch=None) -> dict[str, np.ndarray]:
    """Tiny "small" ImageNet in the official layout, imagenet32/small/{train,valid}_32x32/NAME, one
    32×32 RGB PNG per name (pattern of ``imagenet32_images``); returns each split's images, uint8
    [n, 3, 32, 32], in natural order of the names. With ``monkeypatch`` the expected counts become these."""
    out = {}
    for split, split_names in names.items():
        folder = root / "imagenet32" / "small" / ("train_32x32" if split == "train" else "valid_32x32")
        folder.mkdir(parents=True, exist_ok=True)
        imgs = imagenet32_images(len(split_names), seed=7 if split == "train" else 8)
        for name, img in zip(split_names, imgs):
            Image.fromarray(img.transpose(1, 2, 0)).save(folder / name)
        order = sorted(range(len(split_names)), key=lambda i: imagenet32.natural_key(split_names[i]))
        out[split] = imgs[order]
        if monkeypatch is not None:
            monkeypatch.setitem(imagenet32.SMALL_COUNTS, split, len(split_names))
    return out


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


CALLS: list[str] = []


def _record_call(what: str) -> None:
    CALLS.append(what)


class _Payload:
    """Unpickles into a call of ``_record_call`` (a stand-in for whatever a tampered file names)."""

    def __reduce__(self):
        return (_record_call, ("a pickle ran code",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_batches_unpickle_with_numpy_globals_only(tmp_path, protocol):
    """Batches pickled by numpy 2 at any protocol read back; a file that names any other global
    (here a function of this module, as a tampered download could name anything) is refused
    before it runs."""
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    data = write_cifar_batch(path, 3, seed=7, protocol=protocol)
    assert torch.equal(CIFAR10().load(tmp_path, "test").images, torch.from_numpy(data).reshape(3, 3, 32, 32))
    with open(path, "wb") as f:
        pickle.dump({b"data": _Payload()}, f, protocol=protocol)
    with pytest.raises(MissingDataError, match=r"names \S*test_data\._record_call, which a CIFAR-10") as info:
        CIFAR10().load(tmp_path, "test")
    assert str(path) in str(info.value) and CALLS == []


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


# --- ImageNet32 -------------------------------------------------------------------------------

def test_imagenet32_reads_npz_batches_in_channel_major_order(tmp_path):
    train, test = write_imagenet32(tmp_path)
    data = ImageNet32().load(tmp_path, "train")
    assert isinstance(data, ImageData) and data.discrete and data.mixture is None and data.name == "imagenet32"
    assert data.images.dtype == torch.uint8 and data.images.shape == (31, 3, 32, 32) and data.shape == (3, 32, 32)
    assert torch.equal(data.images, torch.from_numpy(np.concatenate(train)))  # batches 1…10 in order
    # the pattern lands at [c, h, w]: red varies down the rows, green across the columns
    assert torch.all(data.images[:, 0, 5, :] == 40) and torch.all(data.images[:, 0, :, 5] == 8 * torch.arange(32))
    assert torch.all(data.images[:, 1, :, 7] == 56) and torch.all(data.images[:, 1, 7, :] == 8 * torch.arange(32))
    test_data = ImageNet32().load(tmp_path, "test")
    assert test_data.images.shape == (5, 3, 32, 32) and torch.equal(test_data.images, torch.from_numpy(test))


def test_imagenet32_single_pixel_position(tmp_path):
    imgs = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    imgs[1, 2, 3, 5] = 255  # second image, blue, row 3, column 5
    folder = tmp_path / "imagenet32"
    folder.mkdir()
    (folder / "val_data.npz").write_bytes(imagenet32_npz(imgs, train=False))
    got = ImageNet32().load(tmp_path, "test").images
    assert got.nonzero().tolist() == [[1, 2, 3, 5]]


def test_imagenet32_flat_layout_and_smaller_size(tmp_path):
    train, _ = write_imagenet32(tmp_path, flat=True)
    full = ImageNet32().load(tmp_path, "train")
    assert torch.equal(full.images, torch.from_numpy(np.concatenate(train)))
    small = ImageNet32(image_size=16).load(tmp_path, "train")
    assert small.images.shape == (31, 3, 16, 16) and torch.equal(small.images, resize_images(full.images, 16))


def test_imagenet32_counts_images_from_the_headers(tmp_path):
    write_imagenet32(tmp_path)
    folder = tmp_path / "imagenet32"
    assert imagenet32.image_count(folder / "Imagenet32_train_npz" / "train_data_batch_10.npz") == 4
    assert imagenet32.image_count(folder / "Imagenet32_val_npz" / "val_data.npz") == 5  # compressed
    assert sum(imagenet32.TRAIN_COUNTS) == 1_281_167 and imagenet32.TEST_COUNT == 50_000


def test_imagenet32_missing_batch_is_named(tmp_path):
    write_imagenet32(tmp_path)
    batch7 = tmp_path / "imagenet32" / "Imagenet32_train_npz" / "train_data_batch_7.npz"
    batch7.unlink()
    with pytest.raises(MissingDataError) as info:
        ImageNet32().load(tmp_path, "train")
    assert info.value.missing == [batch7]
    assert str(batch7) in str(info.value) and "prepare imagenet32" in str(info.value)
    assert ImageNet32().load(tmp_path, "test").images.shape == (5, 3, 32, 32)  # the other split still loads


def _damage(path: Path, how: str) -> str:
    """Spoil one batch file; returns text the error must contain."""
    imgs = imagenet32_images(3, seed=0)
    rows = imgs.reshape(3, -1)
    buf = io.BytesIO()
    if how == "pickled":  # the non-npz release under the npz name
        path.write_bytes(pickle.dumps({"data": rows, "labels": [1, 2, 3]}))
        return "BadZipFile"
    if how == "truncated":
        path.write_bytes(imagenet32_npz(imgs, train=True)[:5000])
        return "BadZipFile"
    if how == "corrupted":
        blob = bytearray(imagenet32_npz(imgs, train=True, compressed=True))
        blob[1000:1100] = bytes(100)  # inside the pixel rows: caught by the CRC while streaming
        path.write_bytes(bytes(blob))
        return "Bad CRC-32"
    if how == "hwc":
        np.savez(buf, data=imgs.transpose(0, 2, 3, 1), labels=np.arange(1, 4))
        expected = "'data' is uint8 [3, 32, 32, 3]"
    elif how == "float":
        np.savez(buf, data=rows.astype(np.float32), labels=np.arange(1, 4))
        expected = "'data' is float32 [3, 3072]"
    elif how == "no_labels":
        np.savez(buf, images=rows)
        expected = "no 'data' or 'labels' array"
    else:  # labels of another length
        np.savez(buf, data=rows, labels=np.arange(1, 3))
        expected = "3 images but 'labels' of shape [2]"
    path.write_bytes(buf.getvalue())
    return expected


@pytest.mark.parametrize("how", ["pickled", "truncated", "corrupted", "hwc", "float", "no_labels", "labels"])
def test_imagenet32_damaged_batch_names_file_and_format(tmp_path, how):
    write_imagenet32(tmp_path)
    path = tmp_path / "imagenet32" / "Imagenet32_train_npz" / "train_data_batch_4.npz"
    expected = _damage(path, how)
    with pytest.raises(MissingDataError) as info:
        ImageNet32().load(tmp_path, "train")
    msg = str(info.value)
    assert info.value.missing == [path] and f"{path} is damaged or not an ImageNet32 batch" in msg
    assert expected in msg and "'data', uint8 [N, 3072]" in msg and "red, green and blue" in msg


# --- ImageNet32, source: oord_small_png ----------------------------------------------------------

def test_imagenet32_source_defaults_to_the_npz_release_and_never_falls_back(tmp_path, monkeypatch):
    assert ImageNet32().source == "chrabaszcz_npz" and imagenet32.RELEASES == ("chrabaszcz_npz", SMALL)
    write_small_imagenet(tmp_path, {"train": ["1.png"], "test": ["1.png"]}, monkeypatch)
    with pytest.raises(MissingDataError) as info:  # PNG folders present, npz absent: no silent swap
        ImageNet32().load(tmp_path, "test")
    assert info.value.missing == [tmp_path / "imagenet32" / "Imagenet32_val_npz" / "val_data.npz"]


def test_imagenet32_small_png_reads_folders_in_natural_order(tmp_path, monkeypatch):
    names = {"train": ["10.png", "2.png", "1.png", "9.png"], "test": ["3.png", "20.png", "100.png"]}
    expected = write_small_imagenet(tmp_path, names, monkeypatch)
    (tmp_path / "imagenet32" / "small" / "train_32x32" / "notes.txt").write_text("not an image")  # ignored
    data = ImageNet32(source=SMALL).load(tmp_path, "train")
    assert isinstance(data, ImageData) and data.discrete and data.name == "imagenet32"
    assert data.images.dtype == torch.uint8 and data.images.shape == (4, 3, 32, 32)
    assert torch.equal(data.images, torch.from_numpy(expected["train"]))  # 1, 2, 9, 10: not 1, 10, 2, 9
    # the pattern lands at [c, h, w]: red varies down the rows, green across the columns
    assert torch.all(data.images[:, 0, 5, :] == 40) and torch.all(data.images[:, 1, :, 7] == 56)
    test = ImageNet32(source=SMALL).load(tmp_path, "test")
    assert torch.equal(test.images, torch.from_numpy(expected["test"]))  # valid_32x32: 3, 20, 100
    small = ImageNet32(source=SMALL, image_size=16).load(tmp_path, "train")
    assert torch.equal(small.images, resize_images(data.images, 16))


def test_imagenet32_small_png_single_pixel_position(tmp_path, monkeypatch):
    monkeypatch.setitem(imagenet32.SMALL_COUNTS, "test", 2)
    folder = tmp_path / "imagenet32" / "small" / "valid_32x32"
    folder.mkdir(parents=True)
    hwc = np.zeros((32, 32, 3), dtype=np.uint8)
    Image.fromarray(hwc).save(folder / "img_1.png")
    hwc[3, 5, 2] = 255  # row 3, column 5, blue
    Image.fromarray(hwc).save(folder / "img_2.png")
    got = ImageNet32(source=SMALL).load(tmp_path, "test").images
    assert got.nonzero().tolist() == [[1, 2, 3, 5]]


def test_natural_key_orders_digit_runs_as_numbers():
    names = ["10.png", "9.png", "a10.png", "a9.png", "100.png", "1.png"]
    assert sorted(names, key=imagenet32.natural_key) == ["1.png", "9.png", "10.png", "100.png", "a9.png", "a10.png"]


def test_imagenet32_small_png_counts_must_match_the_official_ones(tmp_path, monkeypatch):
    assert imagenet32.SMALL_COUNTS == {"train": 1_281_149, "test": 49_999}
    write_small_imagenet(tmp_path, {"test": ["1.png", "2.png", "3.png"]})
    folder = tmp_path / "imagenet32" / "small" / "valid_32x32"
    with pytest.raises(MissingDataError) as info:  # a partly extracted tar is not a smaller data set
        ImageNet32(source=SMALL).load(tmp_path, "test")
    assert info.value.missing == [folder] and f"{folder} holds 3 PNGs, expected 49,999" in str(info.value)
    monkeypatch.setitem(imagenet32.SMALL_COUNTS, "test", 3)
    assert len(ImageNet32(source=SMALL).load(tmp_path, "test")) == 3
    assert imagenet32.count_pngs(folder) == 3


def test_imagenet32_small_png_missing_folder_names_it_and_the_prepare_command(tmp_path, monkeypatch):
    write_small_imagenet(tmp_path, {"test": ["1.png"]}, monkeypatch)
    with pytest.raises(MissingDataError) as info:
        ImageNet32(source=SMALL).load(tmp_path, "train")
    train = tmp_path / "imagenet32" / "small" / "train_32x32"
    assert info.value.missing == [train] and str(train) in str(info.value)
    assert f"prepare imagenet32 --source oord_small_png --data-root {tmp_path}" in str(info.value)
    assert "no longer downloadable" in str(info.value)


def _bad_png(path: Path, how: str) -> str:
    """Write a file that is not a 32×32 RGB PNG under a .png name; returns text the error must contain."""
    rgb = np.full((32, 32, 3), 9, dtype=np.uint8)
    buf = io.BytesIO()
    if how == "size":
        Image.fromarray(np.zeros((64, 48, 3), dtype=np.uint8)).save(path)
        return "it is a 48×64 PNG image in mode 'RGB'"
    if how == "gray":
        Image.fromarray(rgb[:, :, 0]).save(path)
        return "mode 'L'"
    if how == "rgba":
        Image.fromarray(np.zeros((32, 32, 4), dtype=np.uint8)).save(path)
        return "mode 'RGBA'"
    if how == "jpeg":
        Image.fromarray(rgb).save(buf, format="JPEG")
        path.write_bytes(buf.getvalue())
        return "32×32 JPEG image"
    if how == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue()[:300])
        return "OSError"
    path.write_bytes(b"not an image at all")
    return "UnidentifiedImageError"


@pytest.mark.parametrize("how", ["size", "gray", "rgba", "jpeg", "truncated", "text"])
def test_imagenet32_small_png_bad_file_names_file_and_format(tmp_path, monkeypatch, how):
    write_small_imagenet(tmp_path, {"train": ["1.png", "2.png", "3.png"]}, monkeypatch)
    path = tmp_path / "imagenet32" / "small" / "train_32x32" / "2.png"
    expected = _bad_png(path, how)
    with pytest.raises(MissingDataError) as info:
        ImageNet32(source=SMALL).load(tmp_path, "train")
    msg = str(info.value)
    assert info.value.missing == [path] and f"{path} is unreadable or not an image of the small ImageNet" in msg
    assert expected in msg and "expected a 32×32 8-bit RGB PNG" in msg


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
    assert all(c().random_flip for c in (CIFAR10, CelebA, CelebAHQ, STL10, ImageNet32))
    spec = {"name": "imagenet32", "image_size": 32, "random_flip": False}
    assert Dataset.registry.build(spec, "data") == ImageNet32(random_flip=False)
    assert Dataset.registry.build({"name": "imagenet32", "source": SMALL}, "data") == ImageNet32(source=SMALL)
    assert ImageNet32().shape == (3, 32, 32) and ImageNet32().discrete
    assert not Digits().random_flip and not GMM2D().random_flip
    assert CIFAR10().shape == (3, 32, 32) and GMM2D().shape == (2,) and STL10().discrete


@pytest.mark.parametrize("spec, field, allowed", [
    ({"name": "cifar10", "image_size": 0}, "data.image_size", "[1, 32]"),
    ({"name": "celeba", "image_size": 200}, "data.image_size", "[1, 140]"),
    ({"name": "stl10", "image_size": -1}, "data.image_size", "[1, 96]"),
    ({"name": "imagenet32", "image_size": 64}, "data.image_size", "[1, 32]"),
    ({"name": "imagenet32", "source": "small"}, "data.source", "chrabaszcz_npz, oord_small_png"),
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
    for cfg in (CIFAR10(), Digits(), GMM2D(), ImageNet32(), ImageNet32(source=SMALL)):
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
    assert set(prepare.SOURCES) == {"cifar10", "celeba", "celebahq", "stl10", "imagenet32"}
    counts = {s: sum(f.count for f in src.files if f.unit == "images") for s, src in prepare.SOURCES.items()}
    assert counts == {"cifar10": 60_000, "celeba": 202_599, "celebahq": 30_000, "stl10": 113_000,
                      "imagenet32": 1_331_167}
    assert prepare.SOURCES["cifar10"].archives[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert math.isclose(prepare.DEFAULT_TIMEOUT_S, 5.0)


IMAGENET32_TRAIN_URL = "https://image-net.org/data/downsample/Imagenet32_train_npz.zip"
IMAGENET32_VAL_URL = "https://image-net.org/data/downsample/Imagenet32_val_npz.zip"


def test_prepare_imagenet32_without_network_fails_fast_with_instructions(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(prepare, "urlopen", failing_opener(calls))
    start = time.monotonic()
    assert prepare.main(["imagenet32", "--data-root", str(tmp_path)]) == 1
    assert time.monotonic() - start < 5
    assert calls == [(IMAGENET32_TRAIN_URL, prepare.DEFAULT_TIMEOUT_S)]
    err = capsys.readouterr().err
    assert "download failed" in err and "https://image-net.org/download-images" in err
    assert f"missing  {tmp_path / 'imagenet32' / 'Imagenet32_train_npz' / 'train_data_batch_1.npz'}" in err
    assert f"missing  {tmp_path / 'imagenet32' / 'Imagenet32_val_npz' / 'val_data.npz'}" in err
    assert f"unzip both in {tmp_path}/imagenet32" in err and "not the pickled Imagenet32_train.zip" in err
    assert f"python -m st_sweeps.data.prepare imagenet32 --data-root {tmp_path}" in err
    assert not list(tmp_path.rglob("*.part"))


class WebPage(io.BytesIO):
    """What a site that wants a login answers instead of the archive."""

    def __init__(self, content_type: str | None):
        super().__init__(b"<!DOCTYPE html><html><body>Please log in</body></html>")
        self.headers = {} if content_type is None else {"Content-Type": content_type}


@pytest.mark.parametrize("content_type, reason", [("text/html; charset=utf-8", "sent a web page, not the archive"),
                                                  (None, "the download is not a zip archive")])
def test_prepare_imagenet32_login_page_is_refused(tmp_path, monkeypatch, capsys, content_type, reason):
    monkeypatch.setattr(prepare, "urlopen", lambda url, timeout=None: WebPage(content_type))
    assert prepare.main(["imagenet32", "--data-root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert reason in err and IMAGENET32_TRAIN_URL in err and "download-images" in err
    assert not (tmp_path / "imagenet32").exists() and not list(tmp_path.rglob("*.part"))


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return buf.getvalue()


def tiny_imagenet32_source(train_count: int, test_count: int) -> prepare.Source:
    """The real source (URLs, layout, counter) expecting tiny batches."""
    real = prepare._imagenet32()
    counts = [train_count] * 10 + [test_count]
    return dataclasses.replace(real, files=tuple(dataclasses.replace(f, count=n) for f, n in zip(real.files, counts)))


def test_prepare_imagenet32_unzips_archives_with_or_without_their_folder(tmp_path, monkeypatch, capsys):
    train = [imagenet32_images(2, seed=i) for i in range(1, 11)]
    test = imagenet32_images(3, seed=99)
    blobs = {  # the train archive holds its folder, the validation archive only the file
        IMAGENET32_TRAIN_URL: zip_of({f"Imagenet32_train_npz/train_data_batch_{i}.npz": imagenet32_npz(imgs, True)
                                      for i, imgs in enumerate(train, 1)}),
        IMAGENET32_VAL_URL: zip_of({"val_data.npz": imagenet32_npz(test, False)}),
    }
    monkeypatch.setattr(prepare, "urlopen", lambda url, timeout=None: io.BytesIO(blobs[url]))
    monkeypatch.setitem(prepare.SOURCES, "imagenet32", tiny_imagenet32_source(2, 3))
    assert prepare.main(["imagenet32", "--data-root", str(tmp_path)]) == 0
    assert "imagenet32: OK" in capsys.readouterr().out
    assert (tmp_path / "imagenet32" / "Imagenet32_train_npz" / "train_data_batch_10.npz").is_file()
    assert (tmp_path / "imagenet32" / "Imagenet32_val_npz" / "val_data.npz").is_file()
    assert torch.equal(ImageNet32().load(tmp_path, "train").images, torch.from_numpy(np.concatenate(train)))
    assert torch.equal(ImageNet32().load(tmp_path, "test").images, torch.from_numpy(test))
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.zip"))


def test_checker_counts_imagenet32_batches_in_either_layout(tmp_path, monkeypatch):
    write_imagenet32(tmp_path, train_counts=(3,) * 10, flat=True)
    ok, problems = prepare.check(tiny_imagenet32_source(3, 5), tmp_path)
    assert problems == [] and len(ok) == 11 and f"OK  {tmp_path / 'imagenet32' / 'val_data.npz'}: 5 images" in ok
    # the real expectation: tiny batches are reported, never re-downloaded
    monkeypatch.setattr(prepare, "urlopen", failing_opener(calls := []))
    assert prepare.main(["imagenet32", "--data-root", str(tmp_path)]) == 1 and calls == []
    _, problems = prepare.check(prepare._imagenet32(), tmp_path)
    assert "3 images, expected 128116" in problems[0] and "5 images, expected 50000" in problems[-1]
    (tmp_path / "imagenet32" / "train_data_batch_2.npz").write_bytes(b"not an npz")
    _, problems = prepare.check(tiny_imagenet32_source(3, 5), tmp_path)
    assert problems == [f"unreadable  {tmp_path / 'imagenet32' / 'train_data_batch_2.npz'}: "
                        "BadZipFile: File is not a zip file"]


def test_prepare_imagenet32_small_png_fails_fast_without_network_and_says_where(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(prepare, "urlopen", failing_opener(calls))
    start = time.monotonic()
    assert prepare.main(["imagenet32", "--source", SMALL, "--data-root", str(tmp_path)]) == 1
    assert time.monotonic() - start < 5 and calls == []  # nothing to download: never touches the network
    err = capsys.readouterr().err
    small = tmp_path / "imagenet32" / "small"
    assert f"missing  {small / 'train_32x32'}" in err and f"missing  {small / 'valid_32x32'}" in err
    assert f"{small}/train_32x32/*.png (1,281,149" in err and f"{small}/valid_32x32/*.png (49,999" in err
    assert "no longer officially downloadable" in err and "train_32x32.tar and valid_32x32.tar" in err
    assert "academictorrents.com/details/bf62f5051ef878b9c357e6221e879629a9b4b172" in err
    assert "github.com/tensorflow/datasets/issues/4662" in err and "not comparable" in err
    assert f"python -m st_sweeps.data.prepare imagenet32 --source oord_small_png --data-root {tmp_path}" in err


def test_prepare_imagenet32_small_png_counts_the_folders(tmp_path, monkeypatch, capsys):
    write_small_imagenet(tmp_path, {"train": ["1.png", "2.png"], "test": ["1.png"]})
    ok, problems = prepare.check(prepare.select("imagenet32", SMALL), tmp_path)
    assert ok == [] and "2 images, expected 1281149" in problems[0] and "1 images, expected 49999" in problems[1]
    monkeypatch.setitem(imagenet32.SMALL_COUNTS, "train", 2)
    monkeypatch.setitem(imagenet32.SMALL_COUNTS, "test", 1)
    assert prepare.main(["imagenet32", "--source", SMALL, "--data-root", str(tmp_path)]) == 0
    assert "imagenet32: OK" in capsys.readouterr().out
    assert prepare.select("imagenet32", "chrabaszcz_npz") is prepare.SOURCES["imagenet32"]


@pytest.mark.parametrize("argv, text", [(["imagenet32", "--source", "small"], "chrabaszcz_npz, oord_small_png"),
                                        (["cifar10", "--source", SMALL], "cifar10 has a single release")])
def test_prepare_unknown_source_is_a_usage_error(tmp_path, capsys, argv, text):
    with pytest.raises(SystemExit) as info:
        prepare.main([*argv, "--data-root", str(tmp_path)])
    assert info.value.code == 2 and text in capsys.readouterr().err


# --- the decoded-image cache -----------------------------------------------------------------------
def test_image_cache_is_reused_and_rebuilt_when_it_is_stale_or_unreadable(tmp_path: Path) -> None:
    """``cached_uint8``: a good cache is read without decoding; one with the wrong count, or cut
    short (a full disk), or overwritten with other bytes, is rebuilt with a warning naming it."""
    from st_sweeps.data.base import cached_uint8

    images = torch.arange(3 * 1 * 2 * 2, dtype=torch.uint8).reshape(3, 1, 2, 2)
    builds: list[int] = []

    def build() -> torch.Tensor:
        builds.append(1)
        return images.clone()

    cache = tmp_path / "decoded.npy"
    assert torch.equal(cached_uint8(cache, 3, build), images) and len(builds) == 1
    assert torch.equal(cached_uint8(cache, 3, build), images) and len(builds) == 1  # read, not decoded
    good = cache.read_bytes()
    for damage, expected in [(good[: len(good) // 2], "unreadable"), (b"not an array at all", "unreadable"),
                             (None, "expected 4 uint8 images")]:
        if damage is not None:
            cache.write_bytes(damage)
        with pytest.warns(UserWarning, match=expected) as caught:
            out = cached_uint8(cache, 4 if damage is None else 3, build)
        assert str(cache) in str(caught[0].message)
        assert torch.equal(out, images)
        cache.write_bytes(good)
    assert len(builds) == 4
