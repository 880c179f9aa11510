"""Downloads from the official hosts or a mirror: written atomically, checked against known checksums.

Mirror. ``$ST_SWEEPS_MIRROR`` (or ``--mirror`` of the prepare commands) is a base URL (``http://``,
``https://`` or ``file://``) serving the official files under their official names; when it is set,
every download comes from ``<mirror>/<file name>`` instead of the official host:
``cifar-10-python.tar.gz``, ``stl10_binary.tar.gz``, ``Imagenet32_train_npz.zip``,
``Imagenet32_val_npz.zip`` and torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``.

Checksums. A file with a published checksum is checked against it whatever its source (a true
mirror serves the same bytes). A mirror serving other files (a re-packed subset, a test server)
must say so explicitly with ``$ST_SWEEPS_MIRROR_CHECKSUMS`` (or ``--mirror-checksums``): either the
path or URL of a checksum list in the format ``md5sum`` and ``sha256sum`` write (``<hex digest>  <file
name>`` per line; 32 hex digits are an MD5, 64 a SHA-256), whose entries replace the official ones for
files from the mirror, or the word ``none``, which checks nothing that comes from the mirror. Files
from the official hosts are always checked against the official checksums.

Atomicity. A download goes to a temporary file beside its destination, is checked (length against
the server's Content-Length, then checksum) and only then renamed or extracted, so an interrupted
or corrupt download never passes for a complete file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, TextIO

MIRROR_ENV = "ST_SWEEPS_MIRROR"
MIRROR_CHECKSUMS_ENV = "ST_SWEEPS_MIRROR_CHECKSUMS"
NO_CHECKSUMS = "none"
_BLOCK = 1 << 20
# What a failed download raises: URLError and timeouts are OSErrors, a connection closed early an
# http.client.IncompleteRead; ValueError for a checksum, length or content-type mismatch.
DOWNLOAD_ERRORS = (OSError, ValueError, http.client.HTTPException)


@dataclass(frozen=True)
class Mirror:
    """A base URL serving the official files under their official names, and how to check them."""

    base_url: str
    checksums: Mapping[str, str] = field(default_factory=dict)  # file name -> hex digest, replacing the official
    verify: bool = True  # False: the user said ``none``: files from this mirror are not checked

    def url(self, filename: str) -> str:
        return f"{self.base_url.rstrip('/')}/{filename}"

    def describe(self) -> str:
        checks = "no checksums" if not self.verify else (
            f"checksums from ${MIRROR_CHECKSUMS_ENV} ({len(self.checksums)} files), else the official ones"
            if self.checksums else "the official checksums")
        return f"mirror {self.base_url} (${MIRROR_ENV}; {checks})"


def parse_checksums(text: str, origin: str = "checksum list") -> dict[str, str]:
    """``md5sum``/``sha256sum`` output (``<hex>  <name>`` or ``<hex> *<name>``) -> {name: hex}."""
    out: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().lstrip("*")
        digest = digest.lower()
        if len(digest) not in (32, 64) or any(c not in "0123456789abcdef" for c in digest) or not name:
            raise ValueError(f"{origin}, line {i}: {line!r} is not '<md5 or sha256 hex digest>  <file name>'")
        out[Path(name).name] = digest
    return out


def mirror_from(base_url: str | None = None, checksums: str | None = None, *,
                opener: Callable[..., object] | None = None, timeout_s: float = 10.0) -> Mirror | None:
    """The mirror from the arguments, else from ``$ST_SWEEPS_MIRROR`` / ``$ST_SWEEPS_MIRROR_CHECKSUMS``;
    None when no mirror is set. ``checksums``: a path or URL of a checksum list, or ``none``."""
    base = base_url if base_url is not None else os.environ.get(MIRROR_ENV, "")
    spec = checksums if checksums is not None else os.environ.get(MIRROR_CHECKSUMS_ENV, "")
    if not base:
        if spec:
            raise ValueError(f"checksums for a mirror ({spec!r}) but no mirror: set ${MIRROR_ENV} or --mirror")
        return None
    if not spec:
        return Mirror(base)
    if spec.lower() == NO_CHECKSUMS:
        return Mirror(base, verify=False)
    if "://" in spec:
        opener = opener or urllib.request.urlopen
        with opener(spec, timeout=timeout_s) as resp:  # type: ignore[attr-defined]
            text = resp.read().decode()
    else:
        text = Path(spec).expanduser().read_text()
    return Mirror(base, parse_checksums(text, spec))


def source_of(url: str, filename: str, official_checksum: str | None,
              mirror: Mirror | None) -> tuple[str, str | None]:
    """(URL to fetch, checksum to require or None) for one file: the official pair without a mirror;
    with one, the mirror's URL and its listed checksum, else the official one (unless ``none``)."""
    if mirror is None:
        return url, official_checksum
    if not mirror.verify:
        return mirror.url(filename), None
    return mirror.url(filename), mirror.checksums.get(filename, official_checksum)


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def algorithm_of(digest: str) -> str:
    return {32: "md5", 64: "sha256"}[len(digest)]


def verify_checksum(path: Path, expected: str | None, url: str) -> None:
    """ValueError unless ``path`` has the hex digest ``expected`` (MD5 or SHA-256 by its length)."""
    if expected is None:
        return
    algorithm = algorithm_of(expected)
    got = file_digest(path, algorithm)
    if got != expected.lower():
        raise ValueError(f"{url}: {algorithm.upper().replace('SHA', 'SHA-')} {got}, expected {expected}: "
                         "a corrupt or different file, not used")


def _header(resp: object, name: str) -> str | None:
    headers = getattr(resp, "headers", None)
    return headers.get(name) if headers is not None else None


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


class _Progress:
    """A line every 10 % of a known size (every 100 MB of an unknown one)."""

    def __init__(self, label: str, total: int | None, out: TextIO | None):
        self.label, self.total, self.out = label, total, out
        self.next_mark = 0.1 if total else 100e6

    def update(self, done: int) -> None:
        if self.out is None:
            return
        if self.total:
            while done / self.total >= self.next_mark - 1e-9 and self.next_mark <= 1.0 + 1e-9:
                print(f"  {self.label}: {_megabytes(done)} of {_megabytes(self.total)} "
                      f"({round(100 * self.next_mark)}%)", file=self.out, flush=True)
                self.next_mark += 0.1
        elif done >= self.next_mark:
            print(f"  {self.label}: {_megabytes(done)}", file=self.out, flush=True)
            self.next_mark += 100e6


def download_file(url: str, part: Path, *, checksum: str | None, timeout_s: float, opener: Callable[..., object],
             out: TextIO | None = None, refuse_web_page: bool = True) -> None:
    """Fetch ``url`` into ``part`` and check it: the byte count against the server's Content-Length,
    then ``checksum`` (MD5 or SHA-256 hex, None: none known). Raises one of ``DOWNLOAD_ERRORS``;
    on any error ``part`` is removed. The caller renames or extracts ``part`` only afterwards."""
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        with opener(url, timeout=timeout_s) as resp, open(part, "wb") as f:  # type: ignore[attr-defined]
            if refuse_web_page and "text/html" in (_header(resp, "Content-Type") or ""):
                raise ValueError(f"{url}: the server sent a web page, not the archive (a login may be required)")
            length = _header(resp, "Content-Length")
            total = int(length) if length and length.isdigit() else None
            progress = _Progress(Path(part.name).stem if part.suffix == ".part" else part.name, total, out)
            done = 0
            for block in iter(lambda: resp.read(_BLOCK), b""):
                f.write(block)
                done += len(block)
                progress.update(done)
        if total is not None and done != total:
            raise ValueError(f"{url}: incomplete download, {done:,} of {total:,} bytes")
        verify_checksum(part, checksum, url)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
