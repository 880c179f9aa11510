"""Which sample-quality figures an evaluation computes (``eval.sample_quality``): a registry whose
entries carry only the settings that apply to them, so a bare name (``sample_quality: digits_fd``)
or a mapping (``sample_quality: {name: fid, inception_score_splits: 1}``) both load, and an FID
setting on a pixel-space measure is an error.

- ``pixel_fd``: Fréchet distance in pixel space (any data).
- ``fid``: FID and the Inception Score in torch-fidelity's Inception features (8-bit images; a
  missing weights file makes both missing values, never numbers). ``both``: pixel_fd and fid.
- ``digits_fd``: Fréchet distance and KID in a small digit classifier's features (the 8×8 digits).
- ``gmm_exact``: exact log-density and two-sample tests (Gaussian-mixture data).
- ``none``: no sample-quality figure (samples are still drawn and saved when num_samples > 0).
The measures themselves live in ``fid``, ``digits_fd`` and ``gmm_quality``; docs/METRICS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from st_sweeps.config import Registry
from st_sweeps.errors import require
from st_sweeps.inception_score import DEFAULT_SPLITS


class SampleQuality:
    registry: ClassVar[Registry["SampleQuality"]] = Registry("sample quality")
    datasets: ClassVar[tuple[str, ...] | None] = None  # the data it is defined on (None: any)
    pixel_fd: ClassVar[bool] = False
    fid: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return type(self).registry_name  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _InceptionSettings:
    # training images in the FID reference statistics; 0: all of them (the paper's protocol)
    reference_examples: int = 0
    # chunks the samples are scored in for the Inception Score (mean and std over chunks): 10 is
    # torch-fidelity's default, 1 the Soft Truncation / score_sde protocol (all samples as one)
    inception_score_splits: int = DEFAULT_SPLITS

    def __post_init__(self) -> None:
        require(self.reference_examples >= 0, "reference_examples", f"got {self.reference_examples!r}",
                "an integer >= 0 (0: all training images)")
        require(self.inception_score_splits >= 1, "inception_score_splits", f"got {self.inception_score_splits!r}",
                "an integer >= 1")


@SampleQuality.registry.register("pixel_fd")
@dataclass(frozen=True)
class PixelFD(SampleQuality):
    pixel_fd: ClassVar[bool] = True


@SampleQuality.registry.register("fid")
@dataclass(frozen=True)
class FID(_InceptionSettings, SampleQuality):
    fid: ClassVar[bool] = True


@SampleQuality.registry.register("both")
@dataclass(frozen=True)
class PixelFDAndFID(_InceptionSettings, SampleQuality):
    pixel_fd: ClassVar[bool] = True
    fid: ClassVar[bool] = True


@SampleQuality.registry.register("digits_fd")
@dataclass(frozen=True)
class DigitsFD(SampleQuality):
    datasets: ClassVar[tuple[str, ...] | None] = ("digits",)


@SampleQuality.registry.register("gmm_exact")
@dataclass(frozen=True)
class GMMExact(SampleQuality):
    datasets: ClassVar[tuple[str, ...] | None] = ("gmm_image", "gmm2d")


@SampleQuality.registry.register("none")
@dataclass(frozen=True)
class NoSampleQuality(SampleQuality):
    pass
