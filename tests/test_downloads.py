"""Downloads with and without a network, never leaving the machine: a file server on 127.0.0.1 (a
thread, a free port) serves small stand-ins in the real formats (a CIFAR-10 python tarball with the
official pickled batches, an STL-10 binary tarball, ImageNet32 npz zips, a randomly initialised
Inception state dict under torch-fidelity's file name) through the mirror setting; a closed local
port plays the unreachable network. Checked: files arrive complete and verified or not at all, the
official checksums still apply unless the mirror's own list (or ``none``) is given, offline
failures are fast and say what to put where, and the reproduction's ``--prepare`` fetches the
data and the weights.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from st_sweeps import fid
from st_sweeps.data import CIFAR10, STL10, ImageNet32, prepare
from st_sweeps.data.download import MIRROR_CHECKSUMS_ENV, MIRROR_ENV, Mirror, mirror_from, parse_checksums
from test_data import (imagenet32_images, imagenet32_npz, stl_images, tar_of, write_cifar, write_stl,  # noqa: E402
                       zip_of)

CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"


# --- a file server on 127.0.0.1 and an unreachable one ---------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror folder; names in ``server.truncated`` announce their full length and then
    close the connection half-way (a dropped download)."""

    def log_message(self, *args) -> None:  # noqa: ANN002 - keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        name = self.path.lstrip("/")
        if name in self.server.truncated:  # type: ignore[attr-defined]
            blob = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob[:len(blob) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@dataclasses.dataclass
class Served:
    folder: Path  # what the server serves
    url: str
    truncated: set[str]


@pytest.fixture
def server(tmp_path: Path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    httpd.truncated = set()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield Served(folder, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.truncated)  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _no_mirror_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.delenv(MIRROR_CHECKSUMS_ENV, raising=False)


def leftovers(root: Path) -> list[Path]:
    """Temporary download or extraction files anywhere under ``root``."""
    return [p for p in root.rglob("*") if p.name.endswith((".part", ".extracting", ".unverified", ".partial"))]


# --- stand-ins in the official formats ---------------------------------------------------------

def cifar_tarball(tmp_path: Path, n: int = 6) -> tuple[bytes, np.ndarray]:
    """cifar-10-python.tar.gz holding cifar-10-batches-py/{data_batch_1..5, test_batch} (official
    pickles), and the test batch's images."""
    _, test = write_cifar(tmp_path / "cifar_src", n=n)
    return tar_of(tmp_path / "cifar_src" / "cifar-10-batches-py"), test


def tiny_cifar(n: int = 6) -> prepare.Source:
    """The real CIFAR-10 source (official URL, file name and MD5) expecting n images per batch."""
    real = prepare._cifar10()
    return dataclasses.replace(real, files=tuple(dataclasses.replace(f, count=n) for f in real.files))


def md5sums(folder: Path, *names: str, algorithm: str = "md5") -> Path:
    """A checksum list as md5sum / sha256sum write it, for files in ``folder``."""
    lines = [f"{hashlib.new(algorithm, (folder / n).read_bytes()).hexdigest()}  {n}\n" for n in names]
    path = folder.parent / f"{algorithm.upper()}SUMS"
    path.write_text("".join(lines))
    return path


def serve_cifar(server: Served, tmp_path: Path) -> np.ndarray:
    blob, test = cifar_tarball(tmp_path)
    (server.folder / "cifar-10-python.tar.gz").write_bytes(blob)
    return test


# --- data through a mirror ---------------------------------------------------------------------

def test_cifar10_from_a_mirror_with_its_own_checksums(server, tmp_path, monkeypatch, capsys):
    test = serve_cifar(server, tmp_path)
    monkeypatch.setitem(prepare.SOURCES, "cifar10", tiny_cifar())
    monkeypatch.setenv(MIRROR_ENV, server.url)
    monkeypatch.setenv(MIRROR_CHECKSUMS_ENV, str(md5sums(server.folder, "cifar-10-python.tar.gz")))
    root = tmp_path / "data"
    assert prepare.main(["cifar10", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"downloading {server.url}/cifar-10-python.tar.gz" in out and "(100%)" in out
    assert torch.equal(CIFAR10().load(root, "test").images, torch.from_numpy(test).reshape(-1, 3, 32, 32))
    assert leftovers(root) == [] and not list(root.glob("*.tar.gz"))


def test_a_mirror_is_held_to_the_official_checksum_unless_told_otherwise(server, tmp_path, monkeypatch, capsys):
    serve_cifar(server, tmp_path)
    monkeypatch.setitem(prepare.SOURCES, "cifar10", tiny_cifar())
    root = tmp_path / "data"
    assert prepare.main(["cifar10", "--data-root", str(root), "--mirror", server.url]) == 1
    err = capsys.readouterr().err
    assert f"expected {CIFAR_MD5}" in err and "MD5" in err
    assert not (root / "cifar-10-batches-py").exists() and leftovers(root) == []
    # saying explicitly that the mirror's files carry no known checksum lets them through
    assert prepare.main(["cifar10", "--data-root", str(root), "--mirror", server.url,
                         "--mirror-checksums", "none"]) == 0
    assert CIFAR10().load(root, "train").images.shape == (30, 3, 32, 32)


def test_a_wrong_checksum_in_the_mirrors_list_is_refused(server, tmp_path, monkeypatch, capsys):
    serve_cifar(server, tmp_path)
    monkeypatch.setitem(prepare.SOURCES, "cifar10", tiny_cifar())
    sums = tmp_path / "SUMS"
    sums.write_text(f"{'0' * 64}  cifar-10-python.tar.gz\n")  # a SHA-256 that does not match
    root = tmp_path / "data"
    assert prepare.main(["cifar10", "--data-root", str(root), "--mirror", server.url,
                         "--mirror-checksums", str(sums)]) == 1
    assert "SHA-256" in capsys.readouterr().err and not (root / "cifar-10-batches-py").exists()


def test_stl10_binary_tarball_from_a_mirror_with_sha256(server, tmp_path, monkeypatch):
    src = tmp_path / "stl_src" / "stl10_binary"
    counts = {"train_X.bin": 2, "unlabeled_X.bin": 3, "test_X.bin": 2}
    images = {name: stl_images(n, seed=i) for i, (name, n) in enumerate(counts.items())}
    for name, imgs in images.items():
        write_stl(src / name, imgs)
    (src / "class_names.txt").write_text("airplane\nbird\n")  # the release's other files come along
    (server.folder / "stl10_binary.tar.gz").write_bytes(tar_of(src))
    real = prepare._stl10()
    tiny = dataclasses.replace(real, files=tuple(
        dataclasses.replace(f, count=counts[Path(f.path).name], size_bytes=counts[Path(f.path).name] * 27648)
        for f in real.files))
    monkeypatch.setitem(prepare.SOURCES, "stl10", tiny)
    sums = md5sums(server.folder, "stl10_binary.tar.gz", algorithm="sha256")
    root = tmp_path / "data"
    assert prepare.main(["stl10", "--data-root", str(root), "--mirror", server.url,
                         "--mirror-checksums", str(sums)]) == 0
    assert torch.equal(STL10(image_size=96).load(root, "test").images, torch.from_numpy(images["test_X.bin"]))
    train = STL10(image_size=96).load(root, "train").images
    assert torch.equal(train, torch.from_numpy(np.concatenate([images["train_X.bin"], images["unlabeled_X.bin"]])))


def test_imagenet32_zips_from_a_file_url_mirror(tmp_path, monkeypatch):
    """A mirror may be a folder (file://); the two official zips, one holding its folder, one not."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    train = [imagenet32_images(2, seed=i) for i in range(1, 11)]
    test = imagenet32_images(3, seed=99)
    (folder / "Imagenet32_train_npz.zip").write_bytes(zip_of(
        {f"Imagenet32_train_npz/train_data_batch_{i}.npz": imagenet32_npz(x, True) for i, x in enumerate(train, 1)}))
    (folder / "Imagenet32_val_npz.zip").write_bytes(zip_of({"val_data.npz": imagenet32_npz(test, False)}))
    real = prepare._imagenet32()
    monkeypatch.setitem(prepare.SOURCES, "imagenet32", dataclasses.replace(real, files=tuple(
        dataclasses.replace(f, count=n) for f, n in zip(real.files, [2] * 10 + [3]))))
    root = tmp_path / "data"
    assert prepare.main(["imagenet32", "--data-root", str(root), "--mirror", folder.as_uri()]) == 0
    assert torch.equal(ImageNet32().load(root, "test").images, torch.from_numpy(test))
    assert leftovers(root) == []


def test_a_dropped_connection_leaves_nothing_behind(server, tmp_path, monkeypatch, capsys):
    serve_cifar(server, tmp_path)
    server.truncated.add("cifar-10-python.tar.gz")
    monkeypatch.setitem(prepare.SOURCES, "cifar10", tiny_cifar())
    root = tmp_path / "data"
    assert prepare.main(["cifar10", "--data-root", str(root), "--mirror", server.url,
                         "--mirror-checksums", "none"]) == 1
    err = capsys.readouterr().err
    assert "download failed" in err and ("incomplete" in err.lower() or "IncompleteRead" in err)
    assert not (root / "cifar-10-batches-py").exists() and leftovers(root) == []


@pytest.mark.parametrize("damage", ["tar stream cut", "gzip stream cut"])
def test_an_archive_that_breaks_mid_extraction_leaves_no_files(server, tmp_path, monkeypatch, capsys, damage):
    """Its checksum matches (the list says so), but the archive ends inside the fourth batch: the
    complete batches before it must not appear on their own either (extraction is staged)."""
    blob, _ = cifar_tarball(tmp_path, n=200)
    tar_bytes = gzip.decompress(blob)
    cut = gzip.compress(tar_bytes[:int(len(tar_bytes) * 0.6)]) if damage == "tar stream cut" else \
        gzip.compress(tar_bytes)[:int(len(blob) * 0.6)]
    (server.folder / "cifar-10-python.tar.gz").write_bytes(cut)
    monkeypatch.setitem(prepare.SOURCES, "cifar10", tiny_cifar(200))
    sums = md5sums(server.folder, "cifar-10-python.tar.gz")
    root = tmp_path / "data"
    assert prepare.main(["cifar10", "--data-root", str(root), "--mirror", server.url,
                         "--mirror-checksums", str(sums)]) == 1
    assert "download failed" in capsys.readouterr().err
    assert not (root / "cifar-10-batches-py").exists() and leftovers(root) == []


def test_unreachable_mirror_fails_fast_and_says_where_files_go(tmp_path, monkeypatch, capsys):
    url = closed_port_url()
    monkeypatch.setenv(MIRROR_ENV, url)
    root = tmp_path / "data"
    start = time.monotonic()
    assert prepare.main(["cifar10", "--data-root", str(root)]) == 1
    assert time.monotonic() - start < 5
    captured = capsys.readouterr()
    assert f"downloading {url}/cifar-10-python.tar.gz from mirror {url}" in captured.out
    assert "download failed" in captured.err and "URLError" in captured.err
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in captured.err  # the manual route
    assert f"{root}/cifar-10-batches-py/data_batch_1" in captured.err
    assert not (root / "cifar-10-batches-py").exists() and leftovers(root) == []


def test_mirror_settings_are_parsed_strictly(tmp_path, monkeypatch):
    assert mirror_from() is None
    assert mirror_from("http://m/") == Mirror("http://m/")
    assert mirror_from("http://m/", "NONE").verify is False
    assert Mirror("http://m/").url("a.tar.gz") == "http://m/a.tar.gz"
    sums = tmp_path / "SUMS"
    sums.write_text(f"# comment\n{'a' * 32}  x.tar.gz\n{'B' * 64} *y.zip\n")
    assert mirror_from("http://m", str(sums)).checksums == {"x.tar.gz": "a" * 32, "y.zip": "b" * 64}
    with pytest.raises(ValueError, match="line 1"):
        parse_checksums("abc  x.tar.gz")
    monkeypatch.setenv(MIRROR_CHECKSUMS_ENV, "none")
    with pytest.raises(ValueError, match=MIRROR_ENV):
        mirror_from()


# --- Inception weights -------------------------------------------------------------------------

@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME: torch-fidelity's cache file lives at <it>/hub/checkpoints/<file>."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("ST_SWEEPS_INCEPTION_WEIGHTS", raising=False)
    return tmp_path / "torch_home" / "hub" / "checkpoints" / fid.INCEPTION_WEIGHTS_FILE


def test_our_weights_url_is_torch_fidelitys() -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert fid.INCEPTION_WEIGHTS_URL == URL_INCEPTION_V3 == fid.torch_fidelity_weights_url()
    assert URL_INCEPTION_V3.endswith("/" + fid.INCEPTION_WEIGHTS_FILE)


def test_without_a_mirror_the_download_is_torch_fidelitys_url_into_its_cache(torch_home, random_inception_weights,
                                                                              monkeypatch):
    """torch.hub.download_url_to_file (what torch-fidelity's own download calls) is handed
    torch-fidelity's URL; a stand-in writes the random weights instead of touching the network."""
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):  # noqa: ANN001
        calls.append((url, progress))
        shutil.copyfile(random_inception_weights, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert fid.missing_weights_message(None) is not None
    assert fid.download_inception_weights() == torch_home == fid.default_weights_path()
    assert calls == [(fid.INCEPTION_WEIGHTS_URL, True)]
    assert fid.missing_weights_message(None) is None
    assert fid.download_inception_weights() == torch_home and len(calls) == 1  # there already: no second fetch


def test_weights_from_a_local_mirror_land_in_torch_fidelitys_cache(server, torch_home, random_inception_weights,
                                                                   monkeypatch, capsys):
    shutil.copyfile(random_inception_weights, server.folder / fid.INCEPTION_WEIGHTS_FILE)
    monkeypatch.setenv(MIRROR_ENV, server.url)
    assert fid.main(["download"]) == 0
    captured = capsys.readouterr()
    assert f"{server.url}/{fid.INCEPTION_WEIGHTS_FILE}" in captured.err and "100%" in captured.err  # torch.hub's bar
    assert str(torch_home) in captured.out
    assert torch_home.read_bytes() == random_inception_weights.read_bytes()
    assert fid.resolve_weights_path(None) == torch_home and leftovers(torch_home.parent) == []


@pytest.mark.parametrize("served", ["web page", "truncated", "wrong checksum"])
def test_weights_that_are_not_torch_fidelitys_inception_are_not_kept(server, torch_home, random_inception_weights,
                                                                     tmp_path, served):
    target = server.folder / fid.INCEPTION_WEIGHTS_FILE
    checksums = {}
    if served == "web page":
        target.write_bytes(b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>")
    else:
        shutil.copyfile(random_inception_weights, target)
        if served == "truncated":
            server.truncated.add(fid.INCEPTION_WEIGHTS_FILE)
        else:
            checksums = {fid.INCEPTION_WEIGHTS_FILE: "0" * 32}
    with pytest.raises(fid.InceptionDownloadFailed) as info:
        fid.download_inception_weights(mirror=Mirror(server.url, checksums), progress=False)
    message = str(info.value)
    assert fid.INCEPTION_WEIGHTS_FILE in message and str(torch_home) in message and fid.INCEPTION_WEIGHTS_URL in message
    assert not torch_home.exists() and leftovers(torch_home.parent) == []
    assert fid.missing_weights_message(None) is not None


def test_offline_weights_download_fails_and_fid_stays_missing(torch_home, monkeypatch, capsys):
    monkeypatch.setenv(MIRROR_ENV, closed_port_url())
    assert fid.main(["download"]) == 1  # connection refused at once: no retry loop, no hang
    err = capsys.readouterr().err
    assert fid.INCEPTION_WEIGHTS_FILE in err and str(torch_home) in err and fid.INCEPTION_WEIGHTS_URL in err
    assert not torch_home.exists() and leftovers(torch_home.parent) == []
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    result = fid.compute_fid(images, images)
    assert result.value is None and result.as_metrics() == {}
    assert fid.DOWNLOAD_COMMAND in result.missing_reason and fid.INCEPTION_WEIGHTS_URL in result.missing_reason


# --- an evaluation fetches missing weights itself --------------------------------------------

def test_an_evaluation_downloads_missing_weights_once_where_there_is_a_network(server, torch_home,
                                                                                random_inception_weights,
                                                                                monkeypatch):
    shutil.copyfile(random_inception_weights, server.folder / fid.INCEPTION_WEIGHTS_FILE)
    monkeypatch.delenv(fid.OFFLINE_ENV)
    monkeypatch.setenv(MIRROR_ENV, server.url)
    monkeypatch.setattr(fid, "_FAILED_DOWNLOADS", {})
    assert fid.fetch_missing_weights(None) is None  # what evaluate.sample_quality_metrics calls
    assert torch_home.read_bytes() == random_inception_weights.read_bytes()


def test_an_evaluation_without_a_network_tries_once_and_records_fid_missing(torch_home, monkeypatch):
    monkeypatch.delenv(fid.OFFLINE_ENV)
    monkeypatch.setenv(MIRROR_ENV, closed_port_url())
    monkeypatch.setattr(fid, "_FAILED_DOWNLOADS", {})
    tries = []
    real = fid.download_inception_weights
    monkeypatch.setattr(fid, "download_inception_weights", lambda *a, **k: tries.append(1) or real(*a, **k))
    first, second = fid.fetch_missing_weights(None), fid.fetch_missing_weights(None)
    assert first == second and "the download failed" in first and fid.DOWNLOAD_COMMAND in first
    assert tries == [1] and not torch_home.exists()


def test_offline_setting_means_no_download_is_tried(torch_home, monkeypatch):
    monkeypatch.setenv(fid.OFFLINE_ENV, "1")
    monkeypatch.setattr(fid, "download_inception_weights", lambda *a, **k: pytest.fail("tried the network"))
    assert f"${fid.OFFLINE_ENV} is set" in fid.fetch_missing_weights(None)


# --- the reproduction scripts' --prepare -------------------------------------------------------

def test_reproduction_prepare_fetches_the_data_and_the_weights(server, torch_home, random_inception_weights,
                                                               tmp_path, monkeypatch, capsys):
    from st_sweeps.reproduce.cli import main

    test = serve_cifar(server, tmp_path)
    shutil.copyfile(random_inception_weights, server.folder / fid.INCEPTION_WEIGHTS_FILE)
    monkeypatch.setitem(prepare.SOURCES, "cifar10", tiny_cifar())
    monkeypatch.setenv(MIRROR_ENV, server.url)
    monkeypatch.setenv(MIRROR_CHECKSUMS_ENV, str(md5sums(server.folder, "cifar-10-python.tar.gz",
                                                         fid.INCEPTION_WEIGHTS_FILE)))
    root = tmp_path / "data"
    assert main("cifar10", ["--prepare", "--dry-run", "--data-root", str(root), "--out", str(tmp_path / "out")]) == 0
    assert "checks: data, weights and launcher OK" in capsys.readouterr().out
    assert torch.equal(CIFAR10().load(root, "test").images, torch.from_numpy(test).reshape(-1, 3, 32, 32))
    assert torch_home.read_bytes() == random_inception_weights.read_bytes()
    assert not (tmp_path / "out").exists()


def test_reproduction_prepare_offline_exits_2_and_says_what_to_do(torch_home, tmp_path, monkeypatch, capsys):
    from st_sweeps.reproduce.cli import main

    root = tmp_path / "empty"
    argv = ["--scale", "paper", "--dry-run", "--data-root", str(root), "--out", str(tmp_path / "out")]
    assert main("cifar10", argv) == 2
    assert "reproductions/cifar10.py --prepare" in capsys.readouterr().out  # the checks point at --prepare
    monkeypatch.setenv(MIRROR_ENV, closed_port_url())
    start = time.monotonic()
    assert main("cifar10", ["--prepare", *argv]) == 2
    assert time.monotonic() - start < 15
    captured = capsys.readouterr()
    assert "cifar10: download failed" in captured.err and "Inception weights not downloaded" in captured.err
    assert f"missing  {root / 'cifar-10-batches-py' / 'data_batch_1'}" in captured.out
    assert "FID at paper scale needs the Inception weights" in captured.out
    assert not torch_home.exists() and leftovers(tmp_path) == []
