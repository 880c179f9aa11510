"""Data sets that need no download: scikit-learn's 8×8 digits and Gaussian mixtures.

The mixtures are generated directly in model space (float32; ``to_model_space`` leaves them
unchanged) and carry their exact density as ``ImageData.mixture``, so a trained score can be
compared with the true one at every noise level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from st_sweeps.data.base import Dataset, ImageData, Split, check_split, stream_generator
from st_sweeps.errors import require, require_positive, require_range
from st_sweeps.gaussian_mixture import GaussianMixture

_TRAIN, _TEST, _MEANS = 0, 1, 2  # random streams of a synthetic set


def _digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: values 0..16 as float64 [1797, 8, 8], labels [1797]."""
    from sklearn.datasets import load_digits  # local: importing sklearn costs about a second

    bunch = load_digits()
    return bunch.images, bunch.target


def _check_sizes(n_train: int, n_test: int, components: int, component_std: float) -> None:
    require(n_train >= 1, "n_train", f"got {n_train!r}", "an integer >= 1")
    require(n_test >= 1, "n_test", f"got {n_test!r}", "an integer >= 1")
    require(components >= 1, "components", f"got {components!r}", "an integer >= 1")
    require_positive(component_std, "component_std")


def _sample(mixture: GaussianMixture, n: int, seed: int, split: Split) -> Tensor:
    return mixture.sample(n, stream_generator(seed, _TRAIN if split == "train" else _TEST))


@Dataset.registry.register("digits")
@dataclass(frozen=True)
class Digits(Dataset):
    """The 1,797 8×8 grey digits bundled with scikit-learn, as 8-bit images [N, 1, 8, 8].

    Pixel values 0..16 become round(v · 255/16) ∈ {0, 16, 32, …, 255}. Split: the last
    ceil(1797 · test_fraction) images (297 by default) are the test set, the rest train.
    """

    test_fraction: float = 0.165

    def __post_init__(self) -> None:
        require_range(self.test_fraction, "test_fraction", 0.0, 1.0, low_open=True, high_open=True)

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, 8, 8)

    @property
    def discrete(self) -> bool:
        return True

    def load(self, root: Path | None, split: Split) -> ImageData:
        check_split(split)
        values, _ = _digit_arrays()
        images = np.round(values * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [N, 1, 8, 8]
        n_test = math.ceil(len(images) * self.test_fraction)
        require(0 < n_test < len(images), "test_fraction", f"{self.test_fraction!r} leaves an empty split",
                f"a fraction in (0, 1) leaving both splits non-empty for {len(images)} images")
        part = images[:-n_test] if split == "train" else images[-n_test:]
        return ImageData(torch.from_numpy(np.ascontiguousarray(part)), discrete=True, name="digits")


@Dataset.registry.register("gmm2d")
@dataclass(frozen=True)
class GMM2D(Dataset):
    """Equal-weight isotropic Gaussians on a ring in 2-D: means radius · (cos 2πk/K, sin 2πk/K).

    Data [N, 2] float32 in model space; ``mixture`` is their exact density. Train and test draws
    come from independent streams derived from ``seed``.
    """

    n_train: int = 10_000
    n_test: int = 2_000
    seed: int = 0
    components: int = 8
    radius: float = 1.0
    component_std: float = 0.1

    def __post_init__(self) -> None:
        _check_sizes(self.n_train, self.n_test, self.components, self.component_std)
        require_positive(self.radius, "radius")

    @property
    def shape(self) -> tuple[int, ...]:
        return (2,)

    @property
    def discrete(self) -> bool:
        return False

    def mixture(self) -> GaussianMixture:
        k = self.components
        angles = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
        means = self.radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # [K, 2]
        return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float32), means.to(torch.float32),
                               torch.full((k,), self.component_std, dtype=torch.float32))

    def load(self, root: Path | None, split: Split) -> ImageData:
        check_split(split)
        mix = self.mixture()
        n = self.n_train if split == "train" else self.n_test
        return ImageData(_sample(mix, n, self.seed, split), discrete=False, name="gmm2d", mixture=mix)


@Dataset.registry.register("gmm_image")
@dataclass(frozen=True)
class GMMImage(Dataset):
    """An image-shaped [1, 8, 8] mixture of K equal-weight isotropic Gaussians (float32, model space).

    Means lie in [−1, 1] like centred images: ``"digits"``: the class-mean images of digits
    0..K−1 (K ≤ 10), scaled from 0..16 by v ↦ 2v/16 − 1; ``"random"``: uniform in [−1, 1]^64,
    drawn from ``seed``. Samples are means plus component_std noise, so they exceed [−1, 1] a little.
    """

    n_train: int = 10_000
    n_test: int = 2_000
    seed: int = 0
    components: int = 4
    component_std: float = 0.2
    means: Literal["digits", "random"] = "digits"

    def __post_init__(self) -> None:
        _check_sizes(self.n_train, self.n_test, self.components, self.component_std)
        require(self.means in ("digits", "random"), "means", f"got {self.means!r}", ["digits", "random"])
        if self.means == "digits":
            require(self.components <= 10, "components", f"got {self.components!r} with means='digits'",
                    "an integer in [1, 10] (one per digit class) or means='random'")

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, 8, 8)

    @property
    def discrete(self) -> bool:
        return False

    def _means(self) -> Tensor:
        k = self.components
        if self.means == "random":
            u = torch.rand((k, 1, 8, 8), generator=stream_generator(self.seed, _MEANS), dtype=torch.float32)
            return 2 * u - 1
        values, labels = _digit_arrays()
        class_means = np.stack([values[labels == c].mean(axis=0) for c in range(k)])  # [K, 8, 8] in 0..16
        return torch.from_numpy(class_means * (2.0 / 16.0) - 1.0).to(torch.float32)[:, None]

    def mixture(self) -> GaussianMixture:
        k = self.components
        return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float32), self._means(),
                               torch.full((k,), self.component_std, dtype=torch.float32))

    def load(self, root: Path | None, split: Split) -> ImageData:
        check_split(split)
        mix = self.mixture()
        n = self.n_train if split == "train" else self.n_test
        return ImageData(_sample(mix, n, self.seed, split), discrete=False, name="gmm_image", mixture=mix)
