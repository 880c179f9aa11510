"""The Dataset registry, the loaded-data container, and where data live on disk.

A data set is a frozen config dataclass registered under the name YAML uses
(``data: {name: cifar10, image_size: 32}``); ``load(root, split)`` reads it into an ``ImageData``.
Data root: the explicit argument, else ``$ST_SWEEPS_DATA_ROOT``, else ``~/.cache/st_sweeps/data``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from st_sweeps.config import Registry
from st_sweeps.errors import require
from st_sweeps.files import write_atomic
from st_sweeps.gaussian_mixture import GaussianMixture

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = get_args(Split)
DATA_ROOT_ENV = "ST_SWEEPS_DATA_ROOT"
DEFAULT_DATA_ROOT = Path("~/.cache/st_sweeps/data")


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root`` if given, else ``$ST_SWEEPS_DATA_ROOT``, else ``~/.cache/st_sweeps/data``."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_ROOT.expanduser()


def check_split(split: str) -> None:
    require(split in SPLITS, "split", f"got {split!r}", SPLITS)


class MissingDataError(FileNotFoundError):
    """A real data set's files are not where the loader looks; says what to put where."""

    def __init__(self, dataset: str, root: Path, missing: list[Path], hint: str = ""):
        self.dataset = dataset
        self.root = root
        self.missing = missing
        listed = "\n".join(f"  {p}" for p in missing)
        msg = (f"data set {dataset!r}: missing under data root {root}:\n{listed}\n"
               f"Run `python -m st_sweeps.data.prepare {dataset} --data-root {root}` to check or fetch it"
               f" (or set ${DATA_ROOT_ENV}).")
        if hint:
            msg += f"\n{hint}"
        super().__init__(msg)


def require_files(dataset: str, root: Path, paths: list[Path], hint: str = "") -> None:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise MissingDataError(dataset, root, missing, hint)


@dataclass(frozen=True, eq=False)
class ImageData:
    """One split of a data set, held in memory.

    images: uint8 ``[N, C, H, W]`` for 8-bit data; float32 ``[N, C, H, W]`` or ``[N, D]`` for
        synthetic data, which are stored already in model space (``to_model_space`` leaves
        them unchanged).
    discrete: True for 8-bit data: train on dequantized pixels and report bits/dim with the
        256-level offset (log2 256 = 8 bits for [0, 1] data, 7 for [−1, 1]).
    mixture: the exact density of ``images`` for synthetic sets (None otherwise), in the model's
        coordinates, i.e. the coordinates of ``images`` themselves: its score and log-density
        (pushed through an SDE with ``GaussianMixture.score_fn``) are the ground truth for the
        network trained on these data.
    name: the registry name of the data set.
    """

    images: Tensor
    discrete: bool
    name: str
    mixture: GaussianMixture | None = None

    def __post_init__(self) -> None:
        if self.discrete:
            if self.images.dtype != torch.uint8 or self.images.ndim != 4:
                raise ValueError(f"ImageData {self.name!r}: 8-bit data must be uint8 [N, C, H, W], "
                                 f"got {self.images.dtype} {tuple(self.images.shape)}")
        elif not self.images.is_floating_point():
            raise ValueError(f"ImageData {self.name!r}: synthetic data must be float, got {self.images.dtype}")
        if self.mixture is not None and self.mixture.event_shape != self.shape:
            raise ValueError(f"ImageData {self.name!r}: mixture event shape {self.mixture.event_shape} "
                             f"!= data shape {self.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example: (C, H, W) for images, (D,) for vectors."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return int(self.images.shape[0])


class Dataset:
    """Base of data-set configs; entries are frozen dataclasses registered by name."""

    registry: ClassVar[Registry["Dataset"]] = Registry("dataset")
    # Whether training batches are randomly mirrored; entries with a ``random_flip`` field override it.
    random_flip = False

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example, known without loading."""
        raise NotImplementedError

    @property
    def discrete(self) -> bool:
        """8-bit data (dequantize; 256-level bits/dim offset)."""
        raise NotImplementedError

    def load(self, root: Path | None, split: Split) -> ImageData:
        raise NotImplementedError


class RGBImages(Dataset):
    """Base of the 8-bit RGB image sets: square ``image_size`` images, 3 channels, discrete."""

    image_size: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    @property
    def discrete(self) -> bool:
        return True


def validate_image_size(image_size: int, largest: int, why: str) -> None:
    require(1 <= image_size <= largest, "image_size", f"got {image_size!r}",
            f"an integer in [1, {largest}] ({why})")


def images_from_hwc(arrays: list[np.ndarray]) -> Tensor:
    """List of uint8 ``[H, W, C]`` (or ``[H, W]``) arrays -> uint8 ``[N, C, H, W]`` tensor."""
    stacked = np.stack([a if a.ndim == 3 else a[:, :, None] for a in arrays])  # [N, H, W, C]
    return torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)))


def cached_uint8(cache: Path, expected_count: int, build: Callable[[], Tensor]) -> Tensor:
    """Load ``cache`` (an .npy of uint8 images) if it holds ``expected_count`` images, else build
    the array and write it atomically (``st_sweeps.files.write_atomic``).

    A cache whose count disagrees with the source (files added or removed), or that cannot be read
    (cut short by a full disk, overwritten), is rebuilt: it is derived data, so nothing is lost.
    Where the folder is not writable the data are still returned, with a warning that nothing was
    cached.
    """
    if cache.exists():
        try:
            arr = np.load(cache, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            warnings.warn(f"{cache}: unreadable as a uint8 image array ({e}); rebuilding", stacklevel=3)
        else:
            if arr.ndim == 4 and arr.shape[0] == expected_count and arr.dtype == np.uint8:
                return torch.from_numpy(np.array(arr))
            warnings.warn(f"{cache}: holds {arr.dtype} {list(arr.shape)}, expected {expected_count} uint8 images; "
                          "rebuilding", stacklevel=3)
    images = build()
    try:  # the suffix keeps numpy from appending ".npy" to the temporary name
        write_atomic(cache, lambda tmp: np.save(tmp, images.numpy()), suffix=".npy")
    except OSError as e:
        warnings.warn(f"could not write cache {cache} ({e}); the next load decodes again", stacklevel=3)
    return images


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """A generator for one named stream of a synthetic set (train draws, test draws, means):
    streams are independent of each other and of the other streams' sizes."""
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


__all__ = ["Dataset", "ImageData", "MissingDataError", "Split", "SPLITS", "DATA_ROOT_ENV", "DEFAULT_DATA_ROOT",
           "resolve_data_root", "check_split"]
