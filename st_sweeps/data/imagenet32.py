"""ImageNet32: two different 32×32 downsamplings of ImageNet, chosen by the ``source`` field.

``source: chrabaszcz_npz`` (default) — Chrabaszcz et al. 2017, "A Downsampled Variant of ImageNet
as an Alternative to the CIFAR datasets": the npz release image-net.org distributes today
(https://image-net.org/download-images, "Downsampled ImageNet 32x32"), made as a classification
benchmark (their Wide ResNets). It is what downloading ImageNet32 gives today, but it is not the set
of the likelihood tables below. 1,281,167 train / 50,000 test (the validation set).

``source: oord_small_png`` — van den Oord et al. 2016 (Pixel RNN): the older "small" ImageNet that
image-net.org/small/ served as ``train_32x32.tar`` / ``valid_32x32.tar`` (tfds
``downsampled_imagenet/32x32``). It is the set of the generative-modelling likelihood tables: the
Soft Truncation code reads it (Kim-Dongjun/Soft-Truncation ``datasets.py``), VDM loads it through
tfds. 1,281,149 train / 49,999 test (the validation set). No longer officially downloadable.

The two are resized from the originals differently, so bits/dim on one is NOT comparable with
bits/dim on the other: to compare with the Soft Truncation / VDM ImageNet32 numbers use
``oord_small_png``. (Test split = the validation set in both.)

chrabaszcz_npz: the two archives (``Imagenet32_train_npz.zip``, ``Imagenet32_val_npz.zip``)
unzipped in ``<data root>/imagenet32/``:

    imagenet32/Imagenet32_train_npz/train_data_batch_{1..10}.npz   train, 1,281,167 images
    imagenet32/Imagenet32_val_npz/val_data.npz                     test, 50,000

Files placed directly in ``imagenet32/`` are accepted too. Each .npz (``numpy.savez``) holds
``data``, uint8 [N, 3072], one row per image: the red, green and blue 32×32 planes, each row-major
(as CIFAR-10); ``labels``, [N], classes 1…1000 (1-based; not read here); and, in the train
batches, ``mean``, the per-position training mean (not read). Batches 1–9 hold 128,116 images,
batch 10 128,123. The pickled release (``Imagenet32_train.zip``, files without ``.npz``) is not read.

oord_small_png: the two tars extracted in ``<data root>/imagenet32/small/``, the layout the official
Soft Truncation code reads (``<its data dir>/IMAGENET32/small/train_32x32/`` and ``.../valid_32x32/``):

    imagenet32/small/train_32x32/*.png   train, 1,281,149 images
    imagenet32/small/valid_32x32/*.png   test, 49,999

Every ``*.png`` in the folder is one 32×32 8-bit RGB image; images are ordered by the natural sort
of their file names (digit runs compared as numbers), as the official ``ImagenetDataSet`` orders
``os.listdir`` with ``natsort.natsorted``. The folder must hold exactly the official number of
PNGs (the official ``check_dataset`` asserts the same counts), so a partly extracted tar is an
error rather than a smaller data set. One deviation: the official loader converts every image with
``.convert("RGB")``; here an image that is not already RGB is refused, naming the file.

Memory: the train split is ~1.28 M × 3,072 bytes ≈ 3.9 GB. Both loaders allocate the result once
and write each image straight into it (npz: streaming each batch's rows, 16 MiB at a time; PNG:
decoding one file at a time, about a minute or two for the train split), so no second copy is
held. At ``image_size < 32`` the resized copy is made from it.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Literal, TypeVar, get_args

import numpy as np
import torch
from PIL import Image

from st_sweeps.data.base import (Dataset, ImageData, MissingDataError, RGBImages, Split, check_split, require_files,
                                 resolve_data_root, validate_image_size)
from st_sweeps.data.transforms import resize_images
from st_sweeps.errors import require

Release = Literal["chrabaszcz_npz", "oord_small_png"]
RELEASES: tuple[str, ...] = get_args(Release)
DEFAULT_RELEASE = "chrabaszcz_npz"

FOLDER = "imagenet32"

# --- chrabaszcz_npz ------------------------------------------------------------------------------

TRAIN_FOLDER = "Imagenet32_train_npz"  # the folder names the archives unzip to
VAL_FOLDER = "Imagenet32_val_npz"
TRAIN_FILES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
TEST_FILES = ("val_data.npz",)
TRAIN_COUNTS = (128_116,) * 9 + (128_123,)
TEST_COUNT = 50_000
ROW_BYTES = 3 * 32 * 32
FORMAT = ("an .npz (numpy.savez) holding 'data', uint8 [N, 3072] (per row the red, green and blue 32×32 "
          "planes, each row-major), and 'labels', [N] (1-based classes), as in Imagenet32_*_npz.zip")
HINT = ("ImageNet32 comes from https://image-net.org/download-images (Downsampled ImageNet 32x32, npz "
        "format): see the prepare command's message.")
_CHUNK = 1 << 24  # bytes copied per read

T = TypeVar("T")


def candidates(name: str) -> tuple[str, str]:
    """Where batch file ``name`` may lie, relative to the data root: in the folder its archive unzips
    to (the canonical place), or directly in ``imagenet32/``."""
    sub = TRAIN_FOLDER if name.startswith("train_") else VAL_FOLDER
    return f"{FOLDER}/{sub}/{name}", f"{FOLDER}/{name}"


def find(root: Path, name: str) -> Path:
    """The first candidate path of ``name`` that exists, else the canonical one (for the error)."""
    paths = [root / c for c in candidates(name)]
    return next((p for p in paths if p.exists()), paths[0])


def _read_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream ``f``, leaving it at the first data byte."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f".npy format version {version} is not supported")


def _check_arrays(npz: zipfile.ZipFile) -> int:
    """Number of images in an open batch, checked from the array headers alone (nothing decompressed)."""
    names = set(npz.namelist())
    absent = [k for k in ("data", "labels") if f"{k}.npy" not in names]
    if absent:
        raise ValueError(f"no {' or '.join(map(repr, absent))} array (it holds {sorted(names)})")
    with npz.open("data.npy") as f:
        shape, fortran, dtype = _read_header(f)
    if dtype != np.uint8 or len(shape) != 2 or shape[1] != ROW_BYTES or fortran:
        order = "column-major " if fortran else ""
        raise ValueError(f"'data' is {order}{dtype} {list(shape)}, not uint8 [N, {ROW_BYTES}]")
    with npz.open("labels.npy") as f:
        label_shape, _, _ = _read_header(f)
    if label_shape[:1] != shape[:1]:
        raise ValueError(f"{shape[0]} images but 'labels' of shape {list(label_shape)}")
    return shape[0]


def image_count(path: Path) -> int:
    """Number of images in one ImageNet32 .npz batch; ValueError (or BadZipFile) if not in the format."""
    with zipfile.ZipFile(path) as npz:
        return _check_arrays(npz)


def read_rows_into(path: Path, rows: np.ndarray) -> None:
    """Copy the ``data`` rows of one batch into ``rows`` (a C-contiguous uint8 [n, 3072] view of the
    destination), streaming: no intermediate array."""
    with zipfile.ZipFile(path) as npz:
        n = _check_arrays(npz)
        if n != rows.shape[0]:
            raise ValueError(f"holds {n} images, expected {rows.shape[0]} (the file changed while loading)")
        with npz.open("data.npy") as f:
            _read_header(f)
            view = memoryview(rows.reshape(-1))
            done = 0
            while done < len(view):
                got = f.readinto(view[done:done + _CHUNK])
                if not got:
                    raise ValueError(f"'data' ends after {done} of {len(view)} bytes (truncated)")
                done += got


def _read_checked(root: Path, path: Path, read: Callable[[Path], T]) -> T:
    """``read(path)``, turning a damaged or foreign file into a MissingDataError naming it and the format."""
    try:
        return read(path)
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise MissingDataError("imagenet32", root, [path], f"{path} is damaged or not an ImageNet32 batch "
                               f"({type(e).__name__}: {e}); expected {FORMAT}. {HINT}") from None


def load_npz(root: Path, split: str) -> torch.Tensor:
    """uint8 [N, 3, 32, 32] of the chrabaszcz_npz ``split``, streamed into one preallocated tensor."""
    paths = [find(root, n) for n in (TRAIN_FILES if split == "train" else TEST_FILES)]
    require_files("imagenet32", root, paths, HINT)
    counts = [_read_checked(root, p, image_count) for p in paths]
    images = torch.empty((sum(counts), 3, 32, 32), dtype=torch.uint8)
    rows = images.numpy().reshape(-1, ROW_BYTES)  # a view: each row's bytes are one image's C, H, W
    start = 0
    for path, n in zip(paths, counts):
        _read_checked(root, path, lambda p: read_rows_into(p, rows[start:start + n]))
        start += n
    return images


# --- oord_small_png ----------------------------------------------------------------------------

SMALL_FOLDER = f"{FOLDER}/small"
SMALL_SPLIT_FOLDERS = {"train": "train_32x32", "test": "valid_32x32"}  # as the tars unpack
SMALL_COUNTS = {"train": 1_281_149, "test": 49_999}  # num_train_data / num_test_data of the official config
SMALL_FORMAT = "a 32×32 8-bit RGB PNG, as in van den Oord et al.'s train_32x32.tar / valid_32x32.tar"
# The prepare arguments for this layout; MissingDataError puts them into the command it suggests.
SMALL_PREPARE = "imagenet32 --source oord_small_png"
SMALL_HINT = ("The 'small' ImageNet 32×32 is no longer downloadable from image-net.org; that command says where "
              "it is found and which folders go where.")
_DIGITS = re.compile(r"(\d+)")


def small_folder(root: Path, split: str) -> Path:
    """The folder of PNGs of ``split`` under the data root."""
    return root / SMALL_FOLDER / SMALL_SPLIT_FOLDERS[split]


def natural_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers ("2.png" < "10.png"), as ``natsort.natsorted``.

    ``re.split`` with a group alternates text and digits, starting with text, so tuples of two
    names hold the same types at each position."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(name)))


def _png_names(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return [e.name for e in entries if e.name.lower().endswith(".png") and e.is_file()]


def list_pngs(folder: Path) -> list[Path]:
    """The ``*.png`` files directly in ``folder``, in natural order of their names."""
    return [folder / n for n in sorted(_png_names(folder), key=natural_key)]


def count_pngs(folder: Path) -> int:
    return len(_png_names(folder))


def decode_png_into(path: Path, out: np.ndarray) -> None:
    """Decode one PNG into ``out``, a uint8 [3, 32, 32] (C, H, W) view of the destination; ValueError
    if it is not a 32×32 8-bit RGB PNG."""
    with Image.open(path) as im:
        if im.format != "PNG" or im.mode != "RGB" or im.size != (32, 32):
            w, h = im.size
            raise ValueError(f"it is a {w}×{h} {im.format} image in mode {im.mode!r}")
        hwc = np.asarray(im)  # [32, 32, 3]
    out[...] = hwc.transpose(2, 0, 1)


def _small_error(root: Path, path: Path, problem: str) -> MissingDataError:
    return MissingDataError(SMALL_PREPARE, root, [path], f"{problem}. {SMALL_HINT}")


def load_small_png(root: Path, split: str) -> torch.Tensor:
    """uint8 [N, 3, 32, 32] of the oord_small_png ``split``, decoded into one preallocated tensor."""
    folder = small_folder(root, split)
    require_files(SMALL_PREPARE, root, [folder], SMALL_HINT)
    paths = list_pngs(folder)
    expected = SMALL_COUNTS[split]
    if len(paths) != expected:
        raise _small_error(root, folder, f"{folder} holds {len(paths):,} PNGs, expected {expected:,} (the "
                           f"{split} split of the small ImageNet: a partly extracted tar, or another data set?)")
    images = torch.empty((len(paths), 3, 32, 32), dtype=torch.uint8)
    array = images.numpy()  # a view: decoding writes straight into the tensor
    for i, path in enumerate(paths):
        try:
            decode_png_into(path, array[i])
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
            # PIL reports unreadable files as UnidentifiedImageError (an OSError), broken chunks as
            # SyntaxError, truncated data as OSError.
            raise _small_error(root, path, f"{path} is unreadable or not an image of the small ImageNet "
                               f"({type(e).__name__}: {e}); expected {SMALL_FORMAT}") from None
    return images


# --- the registry entry ------------------------------------------------------------------------

@Dataset.registry.register("imagenet32")
@dataclass(frozen=True)
class ImageNet32(RGBImages):
    """Downsampled ImageNet 32×32; ``source`` picks the release (see the module docstring: bits/dim
    are not comparable across them). Test split = the validation images."""

    image_size: int = 32
    random_flip: bool = True
    source: Release = DEFAULT_RELEASE

    def __post_init__(self) -> None:
        validate_image_size(self.image_size, 32, "ImageNet32 images are 32×32")
        require(self.source in RELEASES, "source", f"got {self.source!r}", RELEASES)

    def load(self, root: Path | None, split: Split) -> ImageData:
        check_split(split)
        root = resolve_data_root(root)
        images = load_small_png(root, split) if self.source == "oord_small_png" else load_npz(root, split)
        return ImageData(resize_images(images, self.image_size), discrete=True, name="imagenet32")

