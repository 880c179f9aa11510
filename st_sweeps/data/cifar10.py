"""CIFAR-10 from the official python release (``cifar-10-python.tar.gz`` extracted).

Layout under the data root: ``cifar-10-batches-py/data_batch_{1..5}`` (train, 50,000 images) and
``cifar-10-batches-py/test_batch`` (10,000). Each file is a pickled dict whose ``b"data"`` is uint8
[N, 3072], one row per image: the red, green and blue 32×32 planes, each row-major.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from st_sweeps.data.base import (Dataset, ImageData, MissingDataError, RGBImages, Split, check_split, require_files,
                                 resolve_data_root, validate_image_size)
from st_sweeps.data.transforms import resize_images

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)


FORMAT = ("a batch of the official python release (cifar-10-python.tar.gz): a pickled dict whose b'data' "
          "is uint8 [N, 3072]")
# what unpickling a damaged or foreign file raises, besides UnpicklingError
_UNPICKLING_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                      AttributeError, ImportError, OverflowError)


# What a CIFAR-10 batch may name: numpy's array reconstruction (the official Python 2 pickles say
# numpy.core, numpy 2 writes numpy._core) and the codec that protocol 2 uses for bytes. A plain
# pickle.load would run whatever a damaged or tampered download names.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"names {module}.{name}, which a CIFAR-10 batch never does")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict[Any, Any]:
    """One pickled CIFAR-10 batch (keys are bytes: ``b"data"``, ``b"labels"``, ...), unpickled
    with only numpy's array globals allowed."""
    with open(path, "rb") as f:
        return _BatchUnpickler(f, encoding="bytes").load()


def batch_images(batch: dict[Any, Any]) -> Tensor:
    """``b"data"`` uint8 [N, 3072] -> uint8 [N, 3, 32, 32]."""
    if not isinstance(batch, dict) or b"data" not in batch:
        raise ValueError(f"holds a {type(batch).__name__} without b'data'")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"b'data' is {data.dtype} {list(data.shape)}, not uint8 [N, 3072]")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())


def load_batch_images(root: Path, path: Path) -> Tensor:
    """``batch_images(read_batch(path))``; a damaged or foreign file is a MissingDataError naming
    it and the expected format."""
    try:
        return batch_images(read_batch(path))
    except _UNPICKLING_ERRORS as e:
        raise MissingDataError("cifar10", root, [path], f"{path} is unreadable ({type(e).__name__}: {e}); expected "
                               f"{FORMAT}. Delete {root / FOLDER} and run the prepare command above to download "
                               "it again.") from None


@Dataset.registry.register("cifar10")
@dataclass(frozen=True)
class CIFAR10(RGBImages):
    """CIFAR-10, 32×32 RGB; randomly flipped training batches as in the paper."""

    image_size: int = 32
    random_flip: bool = True

    def __post_init__(self) -> None:
        validate_image_size(self.image_size, 32, "CIFAR-10 images are 32×32")

    def load(self, root: Path | None, split: Split) -> ImageData:
        check_split(split)
        root = resolve_data_root(root)
        names = TRAIN_FILES if split == "train" else TEST_FILES
        paths = [root / FOLDER / n for n in names]
        require_files("cifar10", root, paths)
        images = torch.cat([load_batch_images(root, p) for p in paths])
        return ImageData(resize_images(images, self.image_size), discrete=True, name="cifar10")
