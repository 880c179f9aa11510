"""STL-10 from the official binary release (``stl10_binary.tar.gz`` extracted).

Layout under the data root: ``stl10_binary/{train_X,unlabeled_X,test_X}.bin`` with 5,000, 100,000
and 8,000 images. Each file is raw uint8, 3×96×96 = 27,648 bytes per image: the red, green and blue
planes, each stored column-major (MATLAB order), so a plane read row-major is the transposed image.

The paper trains on train + unlabeled (105,000 images) at 48×48; the test split is ``test_X.bin``.
Images are shrunk with antialiased bilinear filtering (as the other sets), and the resized uint8
array is cached in ``stl10_binary/st_sweeps_cache/`` (the raw unlabeled file alone is 2.8 GB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from st_sweeps.data.base import (Dataset, ImageData, MissingDataError, RGBImages, Split, cached_uint8, check_split,
                                 require_files, resolve_data_root, validate_image_size)
from st_sweeps.data.transforms import resize_images

FOLDER = "stl10_binary"
NATIVE_SIZE = 96
BYTES_PER_IMAGE = 3 * NATIVE_SIZE * NATIVE_SIZE
CACHE_FOLDER = "st_sweeps_cache"
_CHUNK = 2048  # images converted per step (about 57 MB of raw bytes)


FORMAT = (f"raw uint8 3×96×96 images of the official binary release (stl10_binary.tar.gz), {BYTES_PER_IMAGE:,} "
          "bytes each, no header")


def image_count(path: Path) -> int:
    """Number of images in an STL-10 ``*_X.bin`` file (its size must be a multiple of 27,648 bytes)."""
    size = path.stat().st_size
    if size % BYTES_PER_IMAGE:
        raise ValueError(f"{path}: {size:,} bytes is not a whole number of 3×96×96 images ({BYTES_PER_IMAGE:,} "
                         f"bytes each): truncated, or not an STL-10 binary")
    if size == 0:
        raise ValueError(f"{path}: empty (0 bytes)")
    return size // BYTES_PER_IMAGE


def read_images(path: Path, start: int = 0, stop: int | None = None) -> Tensor:
    """Images [start, stop) of an ``*_X.bin`` file as uint8 [n, 3, 96, 96] in (C, H, W) order."""
    n = image_count(path)
    stop = n if stop is None else min(stop, n)
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 3, NATIVE_SIZE, NATIVE_SIZE))
    # stored column-major per plane: a row-major read gives [n, C, W, H]; swap the last two axes
    return torch.from_numpy(np.ascontiguousarray(raw[start:stop].transpose(0, 1, 3, 2)))


def read_resized(paths: list[Path], image_size: int) -> Tensor:
    counts = [image_count(p) for p in paths]
    out = torch.empty((sum(counts), 3, image_size, image_size), dtype=torch.uint8)
    offset = 0
    for path, n in zip(paths, counts):
        for start in range(0, n, _CHUNK):
            chunk = resize_images(read_images(path, start, start + _CHUNK), image_size)
            out[offset:offset + chunk.shape[0]] = chunk
            offset += chunk.shape[0]
    return out


@Dataset.registry.register("stl10")
@dataclass(frozen=True)
class STL10(RGBImages):
    """STL-10 at image_size (48 in the paper), train split = train (+ unlabeled) images."""

    image_size: int = 48
    random_flip: bool = True
    include_unlabeled: bool = True

    def __post_init__(self) -> None:
        validate_image_size(self.image_size, NATIVE_SIZE, "STL-10 images are 96×96")

    def files(self, split: Split) -> list[str]:
        if split == "test":
            return ["test_X.bin"]
        return ["train_X.bin", "unlabeled_X.bin"] if self.include_unlabeled else ["train_X.bin"]

    def load(self, root: Path | None, split: Split) -> ImageData:
        check_split(split)
        root = resolve_data_root(root)
        paths = [root / FOLDER / name for name in self.files(split)]
        require_files("stl10", root, paths)
        total = 0
        for path in paths:
            try:
                total += image_count(path)
            except ValueError as e:
                raise MissingDataError("stl10", root, [path], f"{e}; expected {FORMAT}. Delete {root / FOLDER} and "
                                       "run the prepare command above to download it again.") from None
        if self.image_size == NATIVE_SIZE:
            images = torch.cat([read_images(p) for p in paths])
        else:
            tag = "test" if split == "test" else ("train_unlabeled" if self.include_unlabeled else "train")
            cache = root / FOLDER / CACHE_FOLDER / f"stl10_{self.image_size}_{tag}.npy"
            images = cached_uint8(cache, total, lambda: read_resized(paths, self.image_size))
        return ImageData(images, discrete=True, name="stl10")
