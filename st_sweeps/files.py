"""Writing files so that a reader never sees half of one: write beside the target, then rename.

A crash or a kill mid-write leaves the previous file (or none) in place, never a truncated one,
because ``os.replace`` within one folder is atomic on POSIX and Windows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path: str | Path, write: Callable[[str], None], suffix: str = ".tmp",
                 durable: bool = False) -> Path:
    """Call ``write(temporary_path)`` and move the result onto ``path``; on any error the temporary
    file is removed and ``path`` is untouched. ``suffix`` keeps writers that append their own
    extension (``numpy.savez`` adds ``.npz`` unless the name has it) writing the file we rename.
    ``durable``: fsync the file before the rename and the folder after it, so that the new file
    (not only the old one) survives a power cut; worth it for checkpoints, not for caches."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync(path.parent)
    return path


def _fsync(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def link_or_copy(src: str | Path, dst: str | Path) -> Path:
    """``dst`` with ``src``'s content: a hard link where the file system allows one (no bytes
    copied), else an atomic copy. An existing ``dst`` is replaced."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.unlink(missing_ok=True)
        os.link(src, dst)
    except OSError:  # another device, or a file system without hard links
        write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))
    return dst


def prepend_pythonpath(*paths: str | Path) -> str:
    """Put ``paths`` first on ``$PYTHONPATH`` (without duplicates) and return the new value. Ray
    workers started on this machine inherit the environment, so they import this checkout even
    when it is not installed; a remote node needs the package installed."""
    entries = [str(p) for p in paths] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))
    return os.environ["PYTHONPATH"]
