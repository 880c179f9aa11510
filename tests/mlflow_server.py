"""A local ``mlflow server`` for tests: bound to 127.0.0.1 on a free port, sqlite behind it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (a local test server)
        return r.read()


@contextlib.contextmanager
def mlflow_server(db: Path, startup_timeout_s: float = 120.0) -> Iterator[str]:
    """Serve the sqlite store ``db`` (an absolute path); yields the base URL, stops it after."""
    mlflow = Path(sys.executable).with_name("mlflow")
    exe = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([*exe, "server", "--backend-store-uri", f"sqlite:///{db}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=db.parent)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            try:
                if get(f"{base}/health").strip() == b"OK":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"mlflow server did not answer /health: {log.read().decode()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
