"""``digits_fd``: a Fréchet distance (and KID) in the feature space of a small digit classifier.

Pixel-space Fréchet distance says little about whether 8×8 samples look like digits, and
Inception features of 8×8 images upsampled to 299×299 say less. This module trains a small CNN
once on the embedded digits' training split (``st_sweeps.data.embedded.Digits``, default split:
the first 1,500 images) with a fixed seed, caches it on disk, and hands it to torch-fidelity as a
feature extractor (``torch_fidelity.FeatureExtractorBase``, registered as ``"st-sweeps-digits-cnn"``),
so the Fréchet and KID arithmetic is torch-fidelity's own (``calculate_metrics(fid=True, kid=True)``).

Classifier (``ClassifierSpec``): conv3×3(1→w) ReLU, conv3×3(w→w) ReLU, maxpool 2, conv3×3(w→2w)
ReLU, maxpool 2, dropout, linear(8w→F) ReLU [the features, F = 64 by default], dropout,
linear(F→10). Adam, cross-entropy, random ±1-pixel shifts as augmentation; every random draw
(initialisation, shuffling, shifts, dropout) comes from ``seed`` inside ``torch.random.fork_rng``,
so training is deterministic and leaves the global RNG untouched. About 4 s on one CPU thread.

Cache: ``<cache_dir>/digits-classifier-<key>.pt`` where ``key`` hashes the training images and
labels, the network's layer description, the training hyperparameters and the seed; a change of
any of them trains a new classifier. Written atomically (a temporary file, then rename); it holds
the state dict, the spec and the classifier's train/test accuracy. ``cache_dir`` defaults to
``$ST_SWEEPS_FID_CACHE`` or ``~/.cache/st_sweeps/fid`` (the FID statistics' cache).

The metric: ``digits_fd(generated_uint8)`` compares uint8 images [N, 1, 8, 8] with the digits
training split (the reference, as for FID and ``eval/pixel_fd``); MLflow keys ``eval/digits_fd``
and ``eval/digits_kid`` (torch-fidelity's KID mean, polynomial kernel, over ``kid_subsets``
subsets of min(N, N_ref, 1000) images). Noise floor, sanity checks and accuracy: docs/METRICS.md.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_fidelity import FeatureExtractorBase, calculate_metrics, register_feature_extractor
from torch_fidelity.metric_fid import KEY_METRIC_FID
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from st_sweeps.files import write_atomic

CACHE_ENV = "ST_SWEEPS_FID_CACHE"  # the same variable as the FID statistics' cache (st_sweeps.evaluate)
EXTRACTOR_NAME = "st-sweeps-digits-cnn"
FEATURE_LAYER = "features"  # the penultimate layer (after ReLU), F values per image
LOGITS_LAYER = "logits"
IMAGE_SHAPE = (1, 8, 8)
KID_MAX_SUBSET_SIZE = 1000  # torch-fidelity's default subset size; smaller sets use their own size


@dataclass(frozen=True)
class ClassifierSpec:
    """The classifier's architecture and training; every field enters the cache key."""

    width: int = 32  # channels of the first two convolutions (the third has 2·width)
    features: int = 64  # size of the feature layer the distances use
    dropout: float = 0.3
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    max_shift: int = 1  # augmentation: random translations by up to this many pixels
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("width", "features", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClassifierSpec.{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0 or self.lr <= 0 or self.max_shift < 0:
            raise ValueError(f"ClassifierSpec: dropout in [0, 1), lr > 0 and max_shift >= 0 needed, got {self}")


DEFAULT_SPEC = ClassifierSpec()


class DigitClassifier(nn.Module):
    """The CNN of ``ClassifierSpec``; ``forward(x [B,1,8,8] in [0,1]) -> (features [B,F], logits [B,10])``."""

    def __init__(self, spec: ClassifierSpec):
        super().__init__()
        w = spec.width
        self.conv = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),  # [B, 2w·2·2]
        )
        self.hidden = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(8 * w, spec.features), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(spec.features, 10))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.hidden(self.conv(x))
        return h, self.head(h)


def _build(spec: ClassifierSpec) -> DigitClassifier:
    """A fresh network whose (discarded) default initialisation leaves the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        return DigitClassifier(spec)


# --- training data ------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def digits_split(split: str) -> tuple[Tensor, Tensor]:
    """(uint8 images [N, 1, 8, 8], int64 labels [N]) of the embedded digits' default split
    (memoised: treat the tensors as read-only)."""
    from st_sweeps.data.embedded import Digits, _digit_arrays

    images = Digits().load(None, split).images  # type: ignore[arg-type]
    labels = torch.from_numpy(_digit_arrays()[1]).long()
    # Digits keeps the order: train = the first N_train images, test = the last N_test
    labels = labels[:len(images)] if split == "train" else labels[-len(images):]
    return images, labels


def _to_unit(images: Tensor) -> Tensor:
    return images.float() / 255.0


def _random_shift(x: Tensor, max_shift: int) -> Tensor:
    """Translate each image [B, 1, 8, 8] by (dy, dx) ∈ {−s..s}² (zero fill); global RNG (forked)."""
    if max_shift == 0:
        return x
    s, (h, w) = max_shift, x.shape[-2:]
    padded = F.pad(x, (s, s, s, s))
    k = 2 * s + 1
    shifted = torch.stack([padded[..., dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)])  # [k², B, ...]
    choice = torch.randint(0, k * k, (x.shape[0],))
    return shifted[choice, torch.arange(x.shape[0])]


@torch.no_grad()
def accuracy(model: DigitClassifier, images: Tensor, labels: Tensor) -> float:
    model.eval()
    return float((model(_to_unit(images))[1].argmax(1) == labels).double().mean())


def train_classifier(spec: ClassifierSpec = DEFAULT_SPEC) -> tuple[DigitClassifier, dict[str, float]]:
    """Train the classifier on the training split; deterministic given ``spec`` (same thread count).
    Returns the model (eval mode) and {"train_accuracy", "test_accuracy"}."""
    images, labels = digits_split("train")
    x = _to_unit(images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = DigitClassifier(spec)
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
        for _ in range(spec.epochs):
            model.train()
            order = torch.randperm(len(x))
            for start in range(0, len(x), spec.batch_size):
                idx = order[start:start + spec.batch_size]
                loss = F.cross_entropy(model(_random_shift(x[idx], spec.max_shift))[1], labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    model.eval()
    test_images, test_labels = digits_split("test")
    return model, {"train_accuracy": accuracy(model, images, labels),
                   "test_accuracy": accuracy(model, test_images, test_labels)}


# --- the on-disk cache --------------------------------------------------------------------


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "st_sweeps" / "fid")


def cache_key(spec: ClassifierSpec = DEFAULT_SPEC) -> str:
    """A hash of the training data, the architecture (the module's layer description), the
    training hyperparameters and the seed."""
    images, labels = digits_split("train")
    h = hashlib.blake2b(digest_size=8)
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.contiguous().numpy().tobytes())
    h.update(repr(_build(spec)).encode())
    h.update(repr(sorted(asdict(spec).items())).encode())
    return h.hexdigest()


def classifier_path(cache_dir: str | os.PathLike | None = None, spec: ClassifierSpec = DEFAULT_SPEC) -> Path:
    """The cached classifier file, trained and written (atomically) first when it is missing."""
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"digits-classifier-{cache_key(spec)}.pt"
    if path.is_file():
        return path
    model, acc = train_classifier(spec)
    payload = {"state_dict": model.state_dict(), "spec": asdict(spec), **acc}
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))


def load_classifier(path: str | os.PathLike) -> tuple[DigitClassifier, dict[str, Any]]:
    """(model in eval mode, {"spec", "train_accuracy", "test_accuracy"}) from a cache file."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    spec = ClassifierSpec(**{f.name: payload["spec"][f.name] for f in fields(ClassifierSpec)})
    model = _build(spec)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, {"spec": spec, "train_accuracy": payload["train_accuracy"],
                   "test_accuracy": payload["test_accuracy"]}


# --- torch-fidelity ---------------------------------------------------------------------------


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over a cached ``DigitClassifier``: uint8 [B, 1, 8, 8] ->
    ("features" [B, F], "logits" [B, 10]) in float64. Weights only from
    ``feature_extractor_weights_path`` (a ``classifier_path`` file); it never trains or downloads."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{EXTRACTOR_NAME}: pass feature_extractor_weights_path="
                             "st_sweeps.digits_fd.classifier_path()")
        self.model, _ = load_classifier(feature_extractor_weights_path)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, str]:
        return FEATURE_LAYER, LOGITS_LAYER

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": LOGITS_LAYER, "fid": FEATURE_LAYER, "kid": FEATURE_LAYER, "prc": FEATURE_LAYER}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros((1, *IMAGE_SHAPE), dtype=torch.uint8)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        check_digit_images(x, "input")
        feats, logits = self.model(_to_unit(x))
        out = {FEATURE_LAYER: feats.double(), LOGITS_LAYER: logits.double()}
        return tuple(out[name] for name in self.features_list)


if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:  # a module reload must not register twice
    register_feature_extractor(EXTRACTOR_NAME, DigitsFeatureExtractor)


class _Images(torch.utils.data.Dataset):
    """uint8 [N, C, H, W] as the map-style dataset of tensors torch-fidelity reads."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def check_digit_images(images: Tensor, name: str) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"digits_fd: {name} must be uint8 images [N, 1, 8, 8] (the 8×8 digits), got "
                         f"{images.dtype} {tuple(images.shape)}")


# --- degradations for the sanity checks (benchmarks/digits_fd.py, tests) ------------------------


def gaussian_blur_uint8(images: Tensor, sigma: float) -> Tensor:
    """uint8 [N, C, H, W] blurred by a separable Gaussian of std ``sigma`` pixels (radius
    ceil(3σ), at most H − 1; reflected borders), rounded back to uint8. σ = 0 returns a copy."""
    if sigma <= 0:
        return images.clone()
    radius = min(math.ceil(3 * sigma), images.shape[-1] - 1, images.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(torch.float32)
    c = images.shape[1]
    x = F.pad(images.float(), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x.round().clamp(0, 255).to(torch.uint8)


def gaussian_noise_uint8(images: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """uint8 images plus N(0, std²) noise in [0, 1] units (std · 255 grey levels), clamped and rounded."""
    noise = torch.randn(images.shape, generator=generator) * (std * 255.0)
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class DigitsFdResult:
    value: float  # the Fréchet distance in classifier features
    kid: float  # torch-fidelity's KID mean over subsets
    kid_std: float  # its std over subsets
    n_generated: int
    n_reference: int

    def as_metrics(self) -> dict[str, float]:
        return {"eval/digits_fd": self.value, "eval/digits_kid": self.kid}


def digits_fd(generated: Tensor, reference: Tensor | None = None, *, cache_dir: str | os.PathLike | None = None,
              spec: ClassifierSpec = DEFAULT_SPEC, kid_subsets: int = 100, kid_subset_size: int | None = None,
              seed: int = 2020, batch_size: int = 512) -> DigitsFdResult:
    """Fréchet distance and KID between uint8 images [N, 1, 8, 8] and ``reference`` (default: the
    digits training split), in the features of the cached classifier, computed by
    ``torch_fidelity.calculate_metrics`` on the CPU. ``seed`` draws torch-fidelity's KID subsets."""
    check_digit_images(generated, "generated")
    if reference is None:
        reference = digits_split("train")[0]
    check_digit_images(reference, "reference")
    n, m = len(generated), len(reference)
    if min(n, m) < 2:
        raise ValueError(f"digits_fd: need at least 2 images in each set, got {n} and {m}")
    weights = classifier_path(cache_dir, spec)
    out = calculate_metrics(
        input1=_Images(generated.cpu()), input2=_Images(reference.cpu()), fid=True, kid=True,
        feature_extractor=EXTRACTOR_NAME, feature_layer_fid=FEATURE_LAYER, feature_layer_kid=FEATURE_LAYER,
        feature_extractor_weights_path=str(weights), kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size or min(n, m, KID_MAX_SUBSET_SIZE), rng_seed=seed, batch_size=batch_size,
        cuda=False, save_cpu_ram=True, cache=False, verbose=False)
    fd = float(out[KEY_METRIC_FID])
    if not math.isfinite(fd):
        raise FloatingPointError(f"digits_fd: torch-fidelity returned {fd} for {n} vs {m} images")
    return DigitsFdResult(fd, float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD]), n, m)
