"""Fréchet distances: FID through torch-fidelity's Inception path, and a weights-free pixel figure;
the Inception Score from the same Inception pass.

FID (Heusel et al. 2017) between Gaussian fits N(μ₁, Σ₁), N(μ₂, Σ₂) of Inception pool features:
    FID = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}.
Features come from torch-fidelity's ``FeatureExtractorInceptionV3`` (registered as
"inception-v3-compat", feature "2048": the TF-compatible Inception of the original FID code, which
the Soft Truncation paper's CIFAR-10 numbers used), fed uint8 [N, 3, H, W] tensors directly (it
resizes to 299 with TF1-compatible bilinear interpolation itself); grayscale is repeated to three
channels; no PNG/JPEG round trip. Statistics are those torch-fidelity computes: the mean and the
unbiased (N − 1) covariance, in float64. The same forward pass also returns the classifier's
"logits_unbiased", from which ``compute_fid`` adds the Inception Score
(``st_sweeps.inception_score``), so sample-quality evaluation runs Inception once.

Weights: torch-fidelity's own cache file ``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``
(``torch.hub.get_dir()/checkpoints/…``) or an explicit ``weights_path``. Evaluation never downloads:
when no weights file exists it returns a missing value with a message saying where to put the file
and how to fetch it, never a number (a missing FID must not look like a score). Fetching is an
explicit step, ``download_inception_weights`` (``python -m st_sweeps.fid download``, or a
reproduction's ``--prepare``): torch-fidelity's URL through ``torch.hub.download_url_to_file``, the
function torch-fidelity's own download ends in (same progress bar, same cache file), or
``<$ST_SWEEPS_MIRROR>/<file name>`` when a mirror is set (torch-fidelity has no setting for its URL).
The file is kept only once it loads into torch-fidelity's Inception.

``pixel_frechet_distance`` is the same Fréchet distance on raw pixel vectors (key
``eval/pixel_fd``): not FID and not comparable with published numbers, but available on a fresh
machine without weights, so a sweep always has a sample-quality objective.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from st_sweeps.files import write_atomic
from st_sweeps.inception_score import DEFAULT_SPLITS, inception_score_from_logits

if TYPE_CHECKING:
    from st_sweeps.data.download import Mirror

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
# torch-fidelity's URL_INCEPTION_V3 (the download reads it from torch-fidelity; a test checks they agree)
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         + INCEPTION_WEIGHTS_FILE)
DOWNLOAD_COMMAND = "python -m st_sweeps.fid download"
DOWNLOAD_TIMEOUT_S = 30.0  # per network operation, not for the whole file
FEATURE_EXTRACTOR = "inception-v3-compat"
FEATURE_LAYER = "2048"
LOGITS_LAYER = "logits_unbiased"  # what torch-fidelity's isc reads

INCEPTION_WEIGHTS_ENV = "ST_SWEEPS_INCEPTION_WEIGHTS"


def inception_weights_path() -> str | None:
    """A user-given weights file (env var), else None: torch-fidelity then looks in its own cache."""
    return os.environ.get(INCEPTION_WEIGHTS_ENV) or None


# --- the Fréchet distance itself (pure) --------------------------------------------------


def _as_f64(a: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; rounding-negative eigenvalues → 0."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ₁ Σ₂)^{1/2} for symmetric PSD Σ₁, Σ₂, computed as tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}.

    Σ₁Σ₂ = Σ₁^{1/2}(Σ₁^{1/2}Σ₂) has the eigenvalues of Σ₁^{1/2}Σ₂Σ₁^{1/2} (eig(XY) = eig(YX)), which
    is symmetric PSD, so only real symmetric eigensolvers are used: no complex square root, no
    imaginary parts to discard, and singular covariances (fewer samples than features) need no
    regularising offset. Instead of an ε·I offset, eigenvalues below the numerical-rank tolerance
    n·ε_machine·λ_max (the rule of ``numpy.linalg.matrix_rank``) are set to 0: they are rounding
    noise, and summing √(noise) over ~2,000 null directions would otherwise add ~1e-5 to FID(X, X).
    """
    s1, s2 = _as_f64(sigma1), _as_f64(sigma2)
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    root1 = _psd_sqrt(s1)
    m = root1 @ s2 @ root1
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    tol = max(w.max(initial=0.0), 0.0) * w.size * np.finfo(np.float64).eps
    w = np.where(w > tol, w, 0.0)
    return float(np.sqrt(w).sum())


def frechet_distance(mu1: np.ndarray | Tensor, sigma1: np.ndarray | Tensor,
                     mu2: np.ndarray | Tensor, sigma2: np.ndarray | Tensor) -> float:
    """‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{1/2}, in float64. Equal inputs give 0 up to rounding
    (|value| ~ 1e-12 · tr Σ; a tiny negative value is rounding, not clipped)."""
    m1, m2 = _as_f64(mu1), _as_f64(mu2)
    s1, s2 = _as_f64(sigma1), _as_f64(sigma2)
    if m1.shape != m2.shape or m1.ndim != 1 or s1.shape != (m1.size, m1.size) or s2.shape != s1.shape:
        raise ValueError(f"frechet_distance: shapes mu {m1.shape}/{m2.shape}, sigma {s1.shape}/{s2.shape} "
                         "must be [D] and [D, D]")
    diff = m1 - m2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def gaussian_fit(features: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], unbiased covariance [D, D]) of features [N, D], float64 (as torch-fidelity)."""
    f = _as_f64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_fit: need features [N >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


# --- pixel-space Fréchet distance (no weights) -------------------------------------------


def _pixels(x: Tensor) -> Tensor:
    """[N, ...] -> float64 [N, D]; uint8 images are mapped to [0, 1] (x / 255), floats kept as given."""
    x = x.detach().cpu()
    x = x.double() / 255.0 if x.dtype == torch.uint8 else x.double()
    return x.flatten(1)


def frechet_distance_of_samples(x: np.ndarray | Tensor, y: np.ndarray | Tensor) -> float:
    """Fréchet distance between the Gaussian fits (mean, unbiased covariance) of samples x [N, D]
    and y [M, D].

    With fewer samples than dimensions it never forms a D×D matrix: writing Σ_x = A Aᵀ with
    A = (x − x̄)ᵀ/√(N − 1) and Σ_y = B Bᵀ, the non-zero eigenvalues of Σ_x Σ_y are those of
    (BᵀA)ᵀ(BᵀA), so tr (Σ_x Σ_y)^{1/2} = ‖BᵀA‖_* (the sum of the singular values of an M×N matrix)
    and tr Σ_x = ‖A‖²_F. Otherwise it uses ``frechet_distance`` on the fitted covariances.
    """
    a, b = _as_f64(x), _as_f64(y)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"frechet_distance_of_samples: need [N >= 2, D] and [M >= 2, D], got {a.shape}, {b.shape}")
    if max(a.shape[0], b.shape[0]) >= a.shape[1]:
        return frechet_distance(*gaussian_fit(a), *gaussian_fit(b))
    diff = a.mean(axis=0) - b.mean(axis=0)
    ca = (a - a.mean(axis=0)) / np.sqrt(a.shape[0] - 1)  # Aᵀ, [N, D]
    cb = (b - b.mean(axis=0)) / np.sqrt(b.shape[0] - 1)  # Bᵀ, [M, D]
    nuclear = np.linalg.svd(cb @ ca.T, compute_uv=False).sum()
    return float(diff @ diff + np.sum(ca * ca) + np.sum(cb * cb) - 2.0 * nuclear)


def pixel_frechet_distance(x: Tensor, y: Tensor) -> float:
    """Fréchet distance between Gaussian fits of raw pixel vectors (key ``eval/pixel_fd``).

    uint8 inputs are scaled to [0, 1]; float inputs are used as they are, so pass both sets in the
    same space (e.g. [0, 1] images, or the coordinates of 2-D toy data). Cost: an SVD of the
    N×M cross-product when the sets are smaller than D = C·H·W, else two D×D eigen-decompositions.
    """
    px, py = _pixels(x), _pixels(y)
    if px.shape[1] != py.shape[1]:
        raise ValueError(f"pixel_frechet_distance: {px.shape[1]} vs {py.shape[1]} values per example")
    return frechet_distance_of_samples(px, py)


# --- Inception weights -------------------------------------------------------------------


def default_weights_path() -> Path:
    """Where torch-fidelity caches the Inception weights: ``torch.hub.get_dir()/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def missing_weights_message(weights_path: str | os.PathLike | None) -> str | None:
    """None when the weights file exists; else how to get it (never tries the network)."""
    if weights_path is not None:
        if Path(weights_path).is_file():
            return None
        return (f"FID not computed: Inception weights file {str(weights_path)!r} (fid weights_path) does not exist. "
                f"Put torch-fidelity's {INCEPTION_WEIGHTS_FILE} there (from {INCEPTION_WEIGHTS_URL}; "
                f"`{DOWNLOAD_COMMAND} --to {weights_path}` fetches it where there is internet), or unset "
                f"weights_path to use torch-fidelity's cache {default_weights_path()}.")
    default = default_weights_path()
    if default.is_file():
        return None
    return (f"FID not computed: no Inception weights. Run `{DOWNLOAD_COMMAND}` where this machine has internet "
            f"(or a mirror: $ST_SWEEPS_MIRROR), or download {INCEPTION_WEIGHTS_URL} elsewhere "
            f"and copy it to {default} (torch-fidelity's cache: $TORCH_HOME/hub/checkpoints/, TORCH_HOME "
            f"defaults to ~/.cache/torch), or pass weights_path=/path/to/{INCEPTION_WEIGHTS_FILE} "
            "(torch-fidelity's feature_extractor_weights_path).")


def resolve_weights_path(weights_path: str | os.PathLike | None = None) -> Path | None:
    """The weights file to use, or None when there is none (see ``missing_weights_message``)."""
    if missing_weights_message(weights_path) is not None:
        return None
    return Path(weights_path) if weights_path is not None else default_weights_path()


class InceptionDownloadFailed(OSError):
    """The weights could not be fetched or were not torch-fidelity's Inception; the message says
    which file, where it belongs and where to get it by hand."""


def torch_fidelity_weights_url() -> str:
    """torch-fidelity's own URL for the weights, read from torch-fidelity."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub's download takes no timeout: bound every socket operation it makes instead, so an
    unreachable host fails in seconds rather than after the system's minutes-long TCP retries."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def download_inception_weights(dest: str | os.PathLike | None = None, *, mirror: Mirror | None = None,
                               progress: bool = True, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch torch-fidelity's Inception weights to ``dest`` (default: torch-fidelity's cache file,
    ``default_weights_path()``) unless the file is there already; returns the path.

    The download goes through ``torch.hub.download_url_to_file`` (what torch-fidelity's
    ``load_state_dict_from_url`` calls, with its progress bar on stderr) into a temporary file beside
    ``dest``; it is checked against the mirror's checksum list when it names the file (torch-fidelity
    publishes no checksum) and by loading it into torch-fidelity's Inception, and renamed to ``dest``
    only then. Raises ``InceptionDownloadFailed`` (the file, where it belongs, the URL) otherwise.
    """
    from st_sweeps.data.download import DOWNLOAD_ERRORS, source_of, verify_checksum

    dest = Path(dest) if dest is not None else default_weights_path()
    if dest.is_file():
        return dest
    url, checksum = source_of(torch_fidelity_weights_url(), INCEPTION_WEIGHTS_FILE, None, mirror)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".unverified")
    os.close(fd)
    try:
        print(f"Downloading torch-fidelity's Inception weights from {url} to {dest}", file=sys.stderr, flush=True)
        with _socket_timeout(timeout_s):
            torch.hub.download_url_to_file(url, tmp, progress=progress)
        verify_checksum(Path(tmp), checksum, url)
        try:  # torch-fidelity loads the state dict strictly: same keys and shapes, or an error
            load_inception(tmp)
        except Exception as e:  # any load failure means: not the weights
            raise ValueError(f"{url} did not give torch-fidelity's Inception weights ({type(e).__name__}: "
                             f"{str(e)[:200]})") from None
        os.replace(tmp, dest)
    except (*DOWNLOAD_ERRORS, RuntimeError) as e:
        raise InceptionDownloadFailed(
            f"Inception weights not downloaded: {type(e).__name__}: {e}. FID needs {INCEPTION_WEIGHTS_FILE}: "
            f"download {INCEPTION_WEIGHTS_URL} where there is internet and put it at {dest}"
            + ("" if dest != default_weights_path() else " (torch-fidelity's cache, $TORCH_HOME/hub/checkpoints/)")
            + ", or point $ST_SWEEPS_INCEPTION_WEIGHTS at it.") from e
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


OFFLINE_ENV = "ST_SWEEPS_OFFLINE"  # set (to anything but 0): never try the network for the weights
_FAILED_DOWNLOADS: dict[str, str] = {}  # destination -> why its download failed (once per process)


def fetch_missing_weights(weights_path: str | os.PathLike | None = None) -> str | None:
    """None when the weights are there, downloading them first (torch-fidelity's URL, or the
    mirror of ``$ST_SWEEPS_MIRROR``) if they are missing, which is tried once per process and never
    with ``$ST_SWEEPS_OFFLINE`` set; else the missing-weights message with why the download failed.
    FID is then a missing value, as before."""
    missing = missing_weights_message(weights_path)
    if missing is None:
        return None
    if os.environ.get(OFFLINE_ENV, "0") not in ("", "0"):
        return missing + f" (${OFFLINE_ENV} is set: no download tried)"
    dest = str(weights_path) if weights_path is not None else str(default_weights_path())
    if dest not in _FAILED_DOWNLOADS:
        from st_sweeps.data.download import DOWNLOAD_ERRORS, mirror_from

        try:
            download_inception_weights(weights_path, mirror=mirror_from())
            return None
        except (InceptionDownloadFailed, *DOWNLOAD_ERRORS) as e:
            _FAILED_DOWNLOADS[dest] = str(e).split(". FID needs")[0]
    return f"{missing} (the download failed: {_FAILED_DOWNLOADS[dest]})"


_DIGESTS: dict[tuple[str, int, int], str] = {}


def weights_identity(path: str | os.PathLike) -> str:
    """A short content hash of the weights file (memoised per path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    memo_key = (str(p), st.st_size, st.st_mtime_ns)
    if memo_key not in _DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[memo_key] = h.hexdigest()[:16]
    return _DIGESTS[memo_key]


# --- Inception features ------------------------------------------------------------------


def load_inception(weights_path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.nn.Module:
    """torch-fidelity's Inception ("inception-v3-compat") from a local file, returning per batch
    (pool features "2048", "logits_unbiased"); the logits cost one extra matrix product."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    model = FeatureExtractorInceptionV3(FEATURE_EXTRACTOR, [FEATURE_LAYER, LOGITS_LAYER],
                                        feature_extractor_weights_path=str(weights_path))
    return model.to(device).eval()


def _as_rgb_uint8(images: Tensor) -> Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"FID needs uint8 images [N, 1 or 3, H, W], got {images.dtype} {tuple(images.shape)}; "
                         "convert with float_to_uint8")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def float_to_uint8(x: Tensor, *, centered: bool) -> Tensor:
    """Model-space images ([0, 1], or [−1, 1] when centered) -> uint8 by rounding, clamped."""
    x = (x + 1) / 2 if centered else x
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def inception_outputs(images: Tensor, model: torch.nn.Module, *, batch_size: int = 50) -> tuple[Tensor, Tensor]:
    """(pool-3 features float64 [N, 2048], logits_unbiased float64 [N, 1008]) of uint8 images
    [N, 1|3, H, W], in batches on the model's device (a ``load_inception`` model)."""
    images = _as_rgb_uint8(images)
    device = next(model.parameters()).device
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        f, lg = model(images[i:i + batch_size].to(device))
        feats.append(f.double().cpu())
        logits.append(lg.double().cpu())
    return torch.cat(feats), torch.cat(logits)


def inception_features(images: Tensor, model: torch.nn.Module, *, batch_size: int = 50) -> Tensor:
    """Pool-3 features float64 [N, 2048] of uint8 images [N, 1|3, H, W]."""
    return inception_outputs(images, model, batch_size=batch_size)[0]


# --- reference statistics, cached --------------------------------------------------------


@dataclass(frozen=True)
class ReferenceStats:
    mu: np.ndarray  # [2048] float64
    sigma: np.ndarray  # [2048, 2048] float64
    n: int
    weights_id: str = ""  # weights_identity of the Inception file used ("" when unknown)

    def save(self, path: str | os.PathLike) -> None:
        """Atomic write (temporary file in the same directory, then rename)."""
        write_atomic(path, lambda tmp: np.savez(tmp, mu=self.mu, sigma=self.sigma, n=np.int64(self.n),
                                                weights_id=np.str_(self.weights_id)), suffix=".npz")

    @staticmethod
    def load(path: str | os.PathLike) -> "ReferenceStats":
        with np.load(path, allow_pickle=False) as z:
            return ReferenceStats(z["mu"], z["sigma"], int(z["n"]), str(z["weights_id"]))


class InceptionWeightsMissing(FileNotFoundError):
    """No Inception weights file; the message says where to put it."""


def _content_digest(images: Tensor) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(str((tuple(images.shape), str(images.dtype))).encode())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def reference_cache_path(cache_dir: str | os.PathLike, key: str, images: Tensor, weights_id: str) -> Path:
    """``<cache_dir>/fid-ref-<key>-n<N>-<H>x<W>-<images digest>-w<weights id>.npz``.

    ``key`` names the data set and split (e.g. "cifar10-train"); the resolution, the count, a
    digest of the images and the weights file's content hash are added, so a changed data set or
    weights file never reuses stale statistics.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    h, w = images.shape[-2:]
    name = f"fid-ref-{safe}-n{images.shape[0]}-{h}x{w}-{_content_digest(images)}-w{weights_id}.npz"
    return Path(cache_dir) / name


def compute_reference_stats(images: Tensor, weights_path: str | os.PathLike, *, device: torch.device | str = "cpu",
                            batch_size: int = 50) -> ReferenceStats:
    """Inception statistics of uint8 images (no caching)."""
    feats = inception_features(images, load_inception(weights_path, device), batch_size=batch_size)
    mu, sigma = gaussian_fit(feats)
    return ReferenceStats(mu, sigma, feats.shape[0], weights_identity(weights_path))


def reference_stats(images_uint8: Tensor, cache_dir: str | os.PathLike, key: str, *,
                    weights_path: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                    batch_size: int = 50) -> ReferenceStats:
    """Inception statistics of the reference images, computed once and then read from
    ``reference_cache_path`` (npz). Raises InceptionWeightsMissing (with the how-to) when no
    weights file exists; check ``missing_weights_message`` first to skip FID instead."""
    path = resolve_weights_path(weights_path)
    if path is None:
        raise InceptionWeightsMissing(missing_weights_message(weights_path))
    cache = reference_cache_path(cache_dir, key, images_uint8, weights_identity(path))
    if cache.is_file():
        return ReferenceStats.load(cache)
    stats = compute_reference_stats(images_uint8, path, device=device, batch_size=batch_size)
    stats.save(cache)
    return stats


# --- FID ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FidResult:
    """FID of the generated images and, from the same Inception pass, their Inception Score."""

    value: float | None  # None when it could not be computed; then missing_reason says why
    missing_reason: str | None
    n_generated: int
    n_reference: int
    inception_score: float | None = None  # mean over splits; None: see inception_score_missing_reason
    inception_score_std: float | None = None  # population std over the splits
    inception_score_missing_reason: str | None = None

    def as_metrics(self) -> dict[str, float]:
        """{"eval/fid", "eval/inception_score", "eval/inception_score_std"}, each only when computed
        (a missing value is never a number)."""
        out = {} if self.value is None else {"eval/fid": self.value}
        if self.inception_score is not None and self.inception_score_std is not None:
            out.update({"eval/inception_score": self.inception_score,
                        "eval/inception_score_std": self.inception_score_std})
        return out

    def as_tags(self) -> dict[str, str]:
        """{"eval/fid_missing_reason": reason, "eval/inception_score_missing_reason": reason} for
        what is missing (the tracker tags evaluation and the reproduction tables read)."""
        tags = {} if self.missing_reason is None else {"eval/fid_missing_reason": self.missing_reason}
        if self.inception_score_missing_reason is not None:
            tags["eval/inception_score_missing_reason"] = self.inception_score_missing_reason
        return tags


def inception_score_or_reason(logits: Tensor,
                              splits: int = DEFAULT_SPLITS) -> tuple[float | None, float | None, str | None]:
    """(IS mean, IS std, None), or (None, None, why) when there are fewer samples than splits: a
    smaller split count would be another protocol, so the value is missing rather than changed."""
    if logits.shape[0] < splits:
        return None, None, (f"Inception Score not computed: {splits} splits need at least {splits} generated "
                            f"images, got {logits.shape[0]}")
    mean, std = inception_score_from_logits(logits, splits)
    return mean, std, None


def compute_fid(generated_uint8: Tensor, reference: ReferenceStats | Tensor,
                weights_path: str | os.PathLike | None = None, *, device: torch.device | str = "cpu",
                batch_size: int = 50, is_splits: int = DEFAULT_SPLITS) -> FidResult:
    """FID of generated uint8 images [N, 1|3, H, W] against reference statistics (or images), and
    the generated images' Inception Score over ``is_splits`` splits from the same forward pass.

    Weights: ``weights_path``, else torch-fidelity's cache file; when neither exists, value None
    and ``missing_reason`` with the fix (no download is attempted); the IS is then missing for
    the same reason.
    """
    _as_rgb_uint8(generated_uint8)  # fail on bad input before any expensive work
    if not isinstance(reference, ReferenceStats):
        _as_rgb_uint8(reference)
    n_gen = int(generated_uint8.shape[0])
    n_ref = reference.n if isinstance(reference, ReferenceStats) else int(reference.shape[0])
    reason = missing_weights_message(weights_path)
    if reason is not None:
        return FidResult(None, reason, n_gen, n_ref, inception_score_missing_reason=reason)
    path = resolve_weights_path(weights_path)
    assert path is not None
    wid = weights_identity(path)
    if isinstance(reference, ReferenceStats) and reference.weights_id and reference.weights_id != wid:
        raise ValueError(f"compute_fid: reference statistics were computed with Inception weights {reference.weights_id}, "
                         f"but {path} is {wid}; recompute them with the same weights")
    model = load_inception(path, device)
    if not isinstance(reference, ReferenceStats):
        mu, sigma = gaussian_fit(inception_features(reference, model, batch_size=batch_size))
        reference = ReferenceStats(mu, sigma, n_ref, wid)
    feats, logits = inception_outputs(generated_uint8, model, batch_size=batch_size)
    mu_g, sigma_g = gaussian_fit(feats)
    is_mean, is_std, is_reason = inception_score_or_reason(logits, is_splits)
    return FidResult(frechet_distance(mu_g, sigma_g, reference.mu, reference.sigma), None, n_gen, n_ref,
                     is_mean, is_std, is_reason)


# --- command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m st_sweeps.fid download``: fetch the Inception weights FID needs."""
    from st_sweeps.data.download import DOWNLOAD_ERRORS, MIRROR_CHECKSUMS_ENV, MIRROR_ENV, NO_CHECKSUMS, mirror_from

    parser = argparse.ArgumentParser(prog="python -m st_sweeps.fid", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help=f"download {INCEPTION_WEIGHTS_FILE} unless it is there")
    dl.add_argument("--to", default=None,
                    help=f"weights file (default: $ST_SWEEPS_INCEPTION_WEIGHTS, else torch-fidelity's cache, "
                         f"{default_weights_path()})")
    dl.add_argument("--mirror", default=None, metavar="URL",
                    help=f"base URL serving {INCEPTION_WEIGHTS_FILE} (default: ${MIRROR_ENV}, "
                         "else torch-fidelity's URL)")
    dl.add_argument("--mirror-checksums", default=None, metavar=f"FILE|{NO_CHECKSUMS}",
                    help=f"md5sum/sha256sum-style list for the mirror's files (default: ${MIRROR_CHECKSUMS_ENV})")
    dl.add_argument("--timeout", type=float, default=DOWNLOAD_TIMEOUT_S, help="network timeout in seconds")
    args = parser.parse_args(argv)
    try:
        mirror = mirror_from(args.mirror, args.mirror_checksums)
    except DOWNLOAD_ERRORS as e:
        parser.error(f"--mirror-checksums: {e}")
    try:
        path = download_inception_weights(args.to or inception_weights_path(), mirror=mirror, timeout_s=args.timeout)
    except InceptionDownloadFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Inception weights: {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
