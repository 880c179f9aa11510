"""Check, and where possible fetch, the real data sets: ``python -m st_sweeps.data.prepare NAME``.

``prepare NAME [--data-root DIR]`` counts the expected files under the data root and prints OK, or
(for CIFAR-10, STL-10 and ImageNet32, which have official archives) downloads the archives with a
short network timeout and a progress line every 10 %, checks their MD5 where one is published and
extracts them. A download is written to a ``.part`` file and extracted into a hidden staging folder
first; only a complete, verified archive is extracted, and only a complete extraction is moved into
place, so an interrupted download never leaves files that pass for complete ones. Where it cannot
(no network; a login page instead of the archive; CelebA and CelebA-HQ, which have no direct
download), it exits with status 1 and says exactly which files to put where.
``--mirror URL`` (or ``$ST_SWEEPS_MIRROR``) fetches the official file names from a mirror instead;
``--mirror-checksums FILE|none`` (or ``$ST_SWEEPS_MIRROR_CHECKSUMS``) supplies checksums for a mirror
whose files differ from the official ones (``st_sweeps.data.download``).
``--source`` picks the release of a data set that has more than one: ``imagenet32 --source
oord_small_png`` checks the older "small" ImageNet 32×32 PNG folders, which nothing can download.
Exit status: 0 ready, 1 missing or wrong files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence, TextIO

from st_sweeps.data import celeba, cifar10, imagenet32, stl10
from st_sweeps.data.base import DATA_ROOT_ENV, Dataset, resolve_data_root
from st_sweeps.data.download import (DOWNLOAD_ERRORS, MIRROR_CHECKSUMS_ENV, MIRROR_ENV, NO_CHECKSUMS, Mirror,
                                     download_file, mirror_from, source_of)
from st_sweeps.errors import ConfigError, require

DEFAULT_TIMEOUT_S = 5.0
# what a damaged archive raises while it is read (a truncated gzip stream: EOFError or zlib.error)
EXTRACT_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error)
# The opener used for downloads; tests replace it so they never touch the network.
urlopen: Callable[..., object] = urllib.request.urlopen


@dataclass(frozen=True)
class ExpectedFile:
    """A file or folder under the data root and the number of items it must hold."""

    path: str  # relative to the data root
    count: int
    counter: Callable[[Path], int]  # items found at the path
    unit: str = "images"
    size_bytes: int | None = None  # exact size, where it is fixed
    alternatives: tuple[str, ...] = ()  # other accepted places, relative to the data root

    def locate(self, root: Path) -> Path:
        """The first of ``path`` and ``alternatives`` that exists under ``root``, else ``path``."""
        paths = [root / p for p in (self.path, *self.alternatives)]
        return next((p for p in paths if p.exists()), paths[0])


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str  # .zip archives are unzipped, anything else is read as a tar
    md5: str | None  # as published for the archive (None: not published); a 64-digit value is a SHA-256
    size_bytes: int | None = None
    folder: str = ""  # where its contents belong, relative to the data root ("": the root)


@dataclass(frozen=True)
class Source:
    name: str
    files: tuple[ExpectedFile, ...]
    archives: tuple[Archive, ...] = ()
    manual: str = ""  # how to obtain the files by hand; {root} is filled in


# --- counters ----------------------------------------------------------------------------------

def count_cifar_batch(path: Path) -> int:
    batch = cifar10.read_batch(path)
    n = len(batch[b"labels"])
    if len(batch[b"data"]) != n:
        raise ValueError(f"{len(batch[b'data'])} images but {n} labels")
    return n


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def count_jpgs(folder: Path) -> int:
    return sum(1 for e in os.scandir(folder) if e.name.lower().endswith(".jpg"))


def count_images(folder: Path) -> int:
    return len(celeba.list_images(folder))


def count_npz_batch(path: Path) -> int:
    return imagenet32.image_count(path)


# --- the official sources ----------------------------------------------------------------------

def _cifar10() -> Source:
    batches = [*cifar10.TRAIN_FILES, *cifar10.TEST_FILES]
    return Source(
        "cifar10",
        tuple(ExpectedFile(f"{cifar10.FOLDER}/{b}", 10_000, count_cifar_batch) for b in batches),
        (Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                 "c58f30108f718f92721af3b95e74349a", 170_498_071),),
        "Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (CIFAR-10 python version, 163 MB, "
        "MD5 c58f30108f718f92721af3b95e74349a) and extract it in the data root, giving "
        "{root}/cifar-10-batches-py/data_batch_1 … data_batch_5 and test_batch.")


def _stl10() -> Source:
    counts = {"train_X.bin": 5_000, "unlabeled_X.bin": 100_000, "test_X.bin": 8_000}
    return Source(
        "stl10",
        tuple(ExpectedFile(f"{stl10.FOLDER}/{name}", n, stl10.image_count, size_bytes=n * stl10.BYTES_PER_IMAGE)
              for name, n in counts.items()),
        # MD5 as listed by torchvision's STL10 loader; the Stanford page publishes none.
        (Archive("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "stl10_binary.tar.gz",
                 "91f7769df0f17e558f3565bffb0c7dfb"),),
        "Download http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz (2.5 GB, "
        "MD5 91f7769df0f17e558f3565bffb0c7dfb) and extract it in the data root, giving "
        "{root}/stl10_binary/train_X.bin (138,240,000 bytes), unlabeled_X.bin (2,764,800,000 bytes) "
        "and test_X.bin (221,184,000 bytes).")


def _celeba() -> Source:
    return Source(
        "celeba",
        (ExpectedFile(celeba.CELEBA_IMAGES, 202_599, count_jpgs),
         ExpectedFile(celeba.CELEBA_PARTITION, 202_599, count_lines, unit="lines")),
        (),
        "CelebA has no direct download (it is on Google Drive, behind a confirmation page): from "
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html follow 'Align&Cropped Images', download "
        "Img/img_align_celeba.zip and Eval/list_eval_partition.txt, then unzip so that "
        "{root}/celeba/img_align_celeba/000001.jpg … 202599.jpg (178×218 JPEGs) and "
        "{root}/celeba/list_eval_partition.txt exist (partitions: 162,770 train, 19,867 valid, 19,962 test).")


def _celebahq() -> Source:
    return Source(
        "celebahq",
        (ExpectedFile(celeba.CELEBAHQ_FOLDER, 30_000, count_images),),
        (),
        "CelebA-HQ has no official single-file download: build the 30,000 images with the Progressive "
        "GAN dataset tool (CelebA plus the published deltas) or use a 256×256 (or larger) export, and put "
        "them as {root}/celebahq/*.png (or .jpg) directly in that folder. Sorted by file name, the last 10% "
        "are the test split.")


IMAGENET32_URL = "https://image-net.org/data/downsample"


def _imagenet32() -> Source:
    names = [*imagenet32.TRAIN_FILES, *imagenet32.TEST_FILES]
    counts = [*imagenet32.TRAIN_COUNTS, imagenet32.TEST_COUNT]
    files = []
    for name, n in zip(names, counts):
        path, *alternatives = imagenet32.candidates(name)
        files.append(ExpectedFile(path, n, count_npz_batch, alternatives=tuple(alternatives)))
    # No checksums are published for these archives.
    archives = tuple(Archive(f"{IMAGENET32_URL}/{sub}.zip", f"{sub}.zip", None, folder=f"{imagenet32.FOLDER}/{sub}")
                     for sub in (imagenet32.TRAIN_FOLDER, imagenet32.VAL_FOLDER))
    return Source(
        "imagenet32", tuple(files), archives,
        "ImageNet32 (Chrabaszcz et al. 2017) is distributed by image-net.org: from "
        "https://image-net.org/download-images (sign in if asked) download 'Downsampled ImageNet 32x32', npz format "
        f"({IMAGENET32_URL}/Imagenet32_train_npz.zip and Imagenet32_val_npz.zip, about 3.5 GB together; "
        "not the pickled Imagenet32_train.zip) and unzip both in {root}/imagenet32, giving "
        "{root}/imagenet32/Imagenet32_train_npz/train_data_batch_1.npz … train_data_batch_10.npz "
        "(1,281,167 images) and {root}/imagenet32/Imagenet32_val_npz/val_data.npz (50,000 images); "
        "the .npz files may also lie directly in {root}/imagenet32.")


def _imagenet32_small() -> Source:
    files = tuple(ExpectedFile(f"{imagenet32.SMALL_FOLDER}/{imagenet32.SMALL_SPLIT_FOLDERS[split]}",
                               imagenet32.SMALL_COUNTS[split], imagenet32.count_pngs) for split in ("train", "test"))
    return Source(
        "imagenet32", files, (),
        "The 'small' ImageNet 32×32 of van den Oord et al. 2016 (Pixel RNN; tfds downsampled_imagenet/32x32), "
        "the set of the Soft Truncation and VDM ImageNet32 numbers, is no longer officially downloadable: "
        "image-net.org/small/ (train_32x32.tar, valid_32x32.tar) is gone. The Soft Truncation author, "
        "Dongjun Kim, points to a copy on Academic Torrents, "
        "https://academictorrents.com/details/bf62f5051ef878b9c357e6221e879629a9b4b172 (relayed in "
        "https://github.com/tensorflow/datasets/issues/4662). Extract train_32x32.tar and valid_32x32.tar in "
        "{root}/imagenet32/small, giving {root}/imagenet32/small/train_32x32/*.png (1,281,149 training "
        "images) and {root}/imagenet32/small/valid_32x32/*.png (49,999 validation images, the test split), "
        "each a 32×32 RGB PNG. The npz release image-net.org still serves is resized differently (bits/dim "
        "not comparable); `python -m st_sweeps.data.prepare imagenet32` fetches that one.")


SOURCES: dict[str, Source] = {s.name: s for s in (_cifar10(), _stl10(), _celeba(), _celebahq(), _imagenet32())}
# Data sets with more than one release, picked by --source. The first is the default, the one in SOURCES
# (looked up when called, so replacing a SOURCES entry replaces it here too).
VARIANTS: dict[str, dict[str, Callable[[], Source]]] = {
    "imagenet32": {"chrabaszcz_npz": lambda: SOURCES["imagenet32"], "oord_small_png": _imagenet32_small},
}


# --- checking and fetching ---------------------------------------------------------------------

def check(source: Source, root: Path) -> tuple[list[str], list[str]]:
    """(ok lines, problem lines) for every expected file of ``source`` under ``root``."""
    ok: list[str] = []
    problems: list[str] = []
    for f in source.files:
        path = f.locate(root)
        if not path.exists():
            problems.append(f"missing  {path}")
            continue
        if f.size_bytes is not None and path.is_file() and path.stat().st_size != f.size_bytes:
            problems.append(f"wrong size  {path}: {path.stat().st_size} bytes, expected {f.size_bytes}")
            continue
        try:
            n = f.counter(path)
        except Exception as e:  # an unreadable file is a finding to report, not a crash
            problems.append(f"unreadable  {path}: {type(e).__name__}: {e}")
            continue
        if n != f.count:
            problems.append(f"wrong count  {path}: {n} {f.unit}, expected {f.count}")
        else:
            ok.append(f"OK  {path}: {n} {f.unit}")
    return ok, problems


def all_missing(source: Source, root: Path) -> bool:
    return not any(f.locate(root).exists() for f in source.files)


def _extract(part: Path, archive: Archive, root: Path) -> None:
    """Extract the verified archive ``part`` into a staging folder beside the data, then move its
    files into ``root / archive.folder`` (each move an atomic rename): a failure part-way leaves no
    partly written file where the loaders look."""
    dest = root / archive.folder
    stage = Path(tempfile.mkdtemp(prefix=f".{archive.filename}.", suffix=".extracting", dir=root))
    try:
        content = stage
        if not archive.filename.endswith(".zip"):
            with tarfile.open(part) as tar:
                tar.extractall(stage, filter="data")
        else:
            if not zipfile.is_zipfile(part):
                raise ValueError(f"{archive.url}: the download is not a zip archive (a login or error page?)")
            with zipfile.ZipFile(part) as zf:
                # Some archives hold their folder, others only its files: the files end up in dest either way.
                top = Path(archive.folder).name + "/"
                if archive.folder != "" and all(n.startswith(top) for n in zf.namelist()):
                    content = stage / top
                zf.extractall(stage)  # extractall drops absolute and ".." parts
        _move_files(content, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _move_files(src: Path, dest: Path) -> None:
    for path in sorted(src.rglob("*")):
        if path.is_file() and not path.is_symlink():
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)


def fetch(archive: Archive, root: Path, timeout_s: float = DEFAULT_TIMEOUT_S, *, mirror: Mirror | None = None,
          out: TextIO | None = None) -> None:
    """Download ``archive`` (from ``mirror`` when given) into ``root / <file>.part``, check its length
    and checksum, extract it (staged), remove it."""
    root.mkdir(parents=True, exist_ok=True)
    url, checksum = source_of(archive.url, archive.filename, archive.md5, mirror)
    part = root / (archive.filename + ".part")
    try:
        download_file(url, part, checksum=checksum, timeout_s=timeout_s, opener=urlopen, out=out)
        _extract(part, replace(archive, url=url), root)
    finally:
        part.unlink(missing_ok=True)


def _instructions(source: Source, root: Path) -> str:
    return source.manual.format(root=root)


def select(name: str, release: str | None) -> Source | None:
    """The Source of data set ``name`` (``release`` picks one of its VARIANTS); None if it needs no files."""
    if release is not None:
        require(name in VARIANTS, "--source", f"{name} has a single release",
                f"--source only for {', '.join(VARIANTS)}")
        require(release in VARIANTS[name], "--source", f"{name} has no release {release!r}", list(VARIANTS[name]))
        return VARIANTS[name][release]()
    return SOURCES.get(name)


def prepare(name: str, root: Path, *, download: bool = True, timeout_s: float = DEFAULT_TIMEOUT_S,
            out: TextIO | None = None, err: TextIO | None = None, release: str | None = None,
            mirror: Mirror | None = None) -> int:
    """Check (and maybe fetch) data set ``name`` under ``root``; 0 when ready, 1 otherwise. ``release``
    (the CLI's ``--source``, the data set's ``source`` field) picks one of several releases;
    ``mirror`` (see ``st_sweeps.data.download.mirror_from``) replaces the official hosts."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    source = select(name, release)
    if source is None:
        print(f"{name}: nothing to prepare (bundled with scikit-learn or generated on the fly)", file=out)
        return 0
    ok, problems = check(source, root)
    if problems and download and source.archives and all_missing(source, root):
        for archive in source.archives:
            url = source_of(archive.url, archive.filename, archive.md5, mirror)[0]
            via = "" if mirror is None else f" from {mirror.describe()}"
            print(f"{name}: downloading {url}{via} (timeout {timeout_s:g} s) …", file=out, flush=True)
            try:
                fetch(archive, root, timeout_s, mirror=mirror, out=out)
            except (*DOWNLOAD_ERRORS, *EXTRACT_ERRORS) as e:
                print(f"{name}: download failed: {type(e).__name__}: {e}", file=err)
                break
        else:
            ok, problems = check(source, root)
    for line in ok:
        print(line, file=out)
    if not problems:
        print(f"{name}: OK, ready under {root}", file=out)
        return 0
    for line in problems:
        print(line, file=err)
    command = name if release is None else f"{name} --source {release}"
    print(f"{name}: not ready under {root}.\n{_instructions(source, root)}\n"
          f"Then run again: python -m st_sweeps.data.prepare {command} --data-root {root}", file=err)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m st_sweeps.data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=Dataset.registry.names(), help="data set")
    parser.add_argument("--data-root", default=None,
                        help=f"data root (default: ${DATA_ROOT_ENV}, else ~/.cache/st_sweeps/data)")
    parser.add_argument("--no-download", action="store_true", help="only check; never touch the network")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="network timeout in seconds")
    releases = "; ".join(f"{n}: {' or '.join(v)}, default {next(iter(v))}" for n, v in VARIANTS.items())
    parser.add_argument("--source", default=None, help=f"release, for data sets with more than one ({releases})")
    parser.add_argument("--mirror", default=None, metavar="URL",
                        help=f"fetch the official file names from this base URL (http, https or file) instead of "
                             f"the official hosts (default: ${MIRROR_ENV})")
    parser.add_argument("--mirror-checksums", default=None, metavar=f"FILE|{NO_CHECKSUMS}",
                        help="md5sum/sha256sum-style list for a mirror whose files are not the official ones, or "
                             f"'{NO_CHECKSUMS}' to check nothing from the mirror (default: "
                             f"${MIRROR_CHECKSUMS_ENV}, else the official checksums)")
    args = parser.parse_args(argv)
    try:
        select(args.name, args.source)
    except ConfigError as e:
        parser.error(str(e))
    try:
        mirror = mirror_from(args.mirror, args.mirror_checksums, opener=urlopen)
    except DOWNLOAD_ERRORS as e:
        parser.error(f"--mirror-checksums: {e}")
    return prepare(args.name, resolve_data_root(args.data_root), download=not args.no_download,
                   timeout_s=args.timeout, release=args.source, mirror=mirror)


if __name__ == "__main__":
    sys.exit(main())
