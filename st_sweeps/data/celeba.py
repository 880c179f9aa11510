"""CelebA 64×64 (aligned JPEGs) and CelebA-HQ 256×256 (a folder of images).

CelebA, as the official Soft Truncation / score_sde pipeline: each 178×218 aligned image is
centre-cropped to 140×140 (top = (218 − 140) // 2 = 39, left = (178 − 140) // 2 = 19) and resized
to 64×64 with antialiased bilinear filtering (``tf.image.resize(..., antialias=True)``'s default
method). Train is partition 0 of ``list_eval_partition.txt`` (162,770 images), test partition 2
(19,962); partition 1 (validation) is not used. One deviation: the official code keeps the resized
image in float, we round it to uint8 so the data stay 8-bit (dequantization and the bits/dim
offset assume 256 levels).

CelebA-HQ: every ``*.png``/``*.jpg``/``*.jpeg`` directly in ``celebahq/``, sorted by file name;
the last ceil(N · test_fraction) files (10% by default) are the test split, the rest train. (The
official configs train and evaluate on all 30,000 images; no split was published.) Images whose
size is not image_size×image_size are centre-cropped to a square and shrunk with the same filter;
images smaller than image_size are refused rather than upsampled.

Decoding is slow, so the decoded uint8 array of each (size, split) is cached as an .npy file in
``<folder>/st_sweeps_cache/`` and reused while the number of source images is unchanged (delete
the folder to force a rebuild).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from st_sweeps.data.base import (Dataset, ImageData, MissingDataError, RGBImages, Split, cached_uint8, check_split,
                                 images_from_hwc, require_files, resolve_data_root, validate_image_size)
from st_sweeps.data.transforms import resize_images
from st_sweeps.errors import ConfigError, require_range

log = logging.getLogger(__name__)

CELEBA_FOLDER = "celeba"
CELEBA_IMAGES = "celeba/img_align_celeba"
CELEBA_PARTITION = "celeba/list_eval_partition.txt"
CELEBA_CROP = 140
CELEBA_PARTITIONS = {"train": 0, "test": 2}  # 1 = validation, unused
CELEBAHQ_FOLDER = "celebahq"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_FOLDER = "st_sweeps_cache"
_CHUNK = 256  # images resized per call


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the centred size×size crop (rounding down, as the official ``central_crop``)."""
    return (height - size) // 2, (width - size) // 2


PARTITION_FORMAT = "text lines '<image file name> <partition 0, 1 or 2>', e.g. '000001.jpg 0'"


class UnreadableImageError(ValueError):
    """An image file that PIL cannot decode (truncated, or not an image)."""

    def __init__(self, path: Path, detail: str):
        self.path = path
        super().__init__(f"{path} is not a readable image ({detail}); expected a JPEG or PNG file")


def read_partition(path: Path) -> dict[str, int]:
    """``list_eval_partition.txt`` lines ``000001.jpg 0`` -> {file name: partition}; ValueError
    naming the file, the line and the format for anything else."""
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file ({e}); expected {PARTITION_FORMAT}") from None
    for i, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}, line {i}: {line[:80]!r} is not {PARTITION_FORMAT}")
        out[parts[0]] = int(parts[1])
    return out


def _decode_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))  # [H, W, 3] uint8
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError, "image file is truncated", ...
        raise UnreadableImageError(path, f"{type(e).__name__}: {e}") from None


def _decode_square(path: Path, crop: int | None) -> np.ndarray:
    """RGB array centre-cropped to crop×crop (or to the short side when crop is None)."""
    arr = _decode_rgb(path)
    h, w = arr.shape[:2]
    size = min(h, w) if crop is None else crop
    if size > min(h, w):
        raise ValueError(f"{path}: {w}×{h} image is smaller than the {size}×{size} crop")
    top, left = center_crop_box(h, w, size)
    return arr[top:top + size, left:left + size]


def decode_and_resize(paths: list[Path], crop: int | None, image_size: int, what: str) -> Tensor:
    """Decode, centre-crop and resize images -> uint8 [N, 3, image_size, image_size]."""
    log.info("decoding %d %s images (cached afterwards)", len(paths), what)
    out = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    with ThreadPoolExecutor() as pool:  # PIL decodes without holding the GIL
        for start in range(0, len(paths), _CHUNK):
            squares = list(pool.map(lambda p: _decode_square(p, crop), paths[start:start + _CHUNK]))
            for path, sq in zip(paths[start:], squares):
                if sq.shape[0] < image_size:
                    raise ConfigError("image_size", f"{image_size} is larger than {path} ({sq.shape[0]} px "
                                      "after the square crop); images are not upsampled",
                                      f"an integer <= {sq.shape[0]}")
            if len({sq.shape for sq in squares}) == 1:
                resized = resize_images(images_from_hwc(squares), image_size)
            else:
                resized = torch.cat([resize_images(images_from_hwc([sq]), image_size) for sq in squares])
            out[start:start + len(squares)] = resized
    return out


@Dataset.registry.register("celeba")
@dataclass(frozen=True)
class CelebA(RGBImages):
    """CelebA aligned faces, centre crop 140, resized to image_size (64 in the paper)."""

    image_size: int = 64
    random_flip: bool = True

    def __post_init__(self) -> None:
        validate_image_size(self.image_size, CELEBA_CROP, f"images are centre-cropped to {CELEBA_CROP}×{CELEBA_CROP}")

    def load(self, root: Path | None, split: Split) -> ImageData:
        check_split(split)
        root = resolve_data_root(root)
        folder, partition = root / CELEBA_IMAGES, root / CELEBA_PARTITION
        hint = "CelebA is not downloadable automatically (Google Drive): see the prepare command's message."
        require_files("celeba", root, [folder, partition], hint)
        wanted = CELEBA_PARTITIONS[split]
        try:
            listed = read_partition(partition)
        except ValueError as e:
            raise MissingDataError("celeba", root, [partition], f"{e}. {hint}") from None
        names = sorted(n for n, p in listed.items() if p == wanted)
        if not names:
            raise MissingDataError("celeba", root, [partition], f"{partition} lists no images of partition {wanted}")
        cache = root / CELEBA_FOLDER / CACHE_FOLDER / f"celeba_crop{CELEBA_CROP}_{self.image_size}_{split}.npy"

        def build() -> Tensor:
            paths = [folder / n for n in names]
            missing = [p for p in paths if not p.exists()]
            if missing:
                raise MissingDataError("celeba", root, missing[:10], f"{len(missing)} of {len(paths)} "
                                       f"{split} images listed in {partition} are missing. {hint}")
            try:
                return decode_and_resize(paths, CELEBA_CROP, self.image_size, "CelebA")
            except UnreadableImageError as e:
                raise MissingDataError("celeba", root, [e.path], f"{e}: replace it with the file from "
                                       f"img_align_celeba.zip. {hint}") from None

        return ImageData(cached_uint8(cache, len(names), build), discrete=True, name="celeba")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@Dataset.registry.register("celebahq")
@dataclass(frozen=True)
class CelebAHQ(RGBImages):
    """CelebA-HQ from a folder of images (any size ≥ image_size), last test_fraction as test."""

    image_size: int = 256
    random_flip: bool = True
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        validate_image_size(self.image_size, 1024, "CelebA-HQ images are at most 1024×1024")
        require_range(self.test_fraction, "test_fraction", 0.0, 1.0, high_open=True)

    def split_paths(self, paths: list[Path], split: Split) -> list[Path]:
        n_test = math.ceil(len(paths) * self.test_fraction)
        return paths[: len(paths) - n_test] if split == "train" else paths[len(paths) - n_test:]

    def load(self, root: Path | None, split: Split) -> ImageData:
        check_split(split)
        root = resolve_data_root(root)
        folder = root / CELEBAHQ_FOLDER
        require_files("celebahq", root, [folder])
        all_paths = list_images(folder)
        if not all_paths:
            raise MissingDataError("celebahq", root, [folder / "*.png"], "the folder holds no png/jpg images")
        paths = self.split_paths(all_paths, split)
        if not paths:
            raise ConfigError("test_fraction", f"{self.test_fraction!r} leaves the {split} split of "
                              f"{len(all_paths)} images empty", "a fraction in (0, 1) for a test split")
        tag = f"{self.image_size}_{split}_test{self.test_fraction:g}"
        cache = folder / CACHE_FOLDER / f"celebahq_{tag}.npy"

        def build() -> Tensor:
            try:
                return decode_and_resize(paths, None, self.image_size, "CelebA-HQ")
            except UnreadableImageError as e:
                raise MissingDataError("celebahq", root, [e.path], f"{e}: replace or remove it") from None

        return ImageData(cached_uint8(cache, len(paths), build), discrete=True, name="celebahq")
