"""Atomic writes, link-or-copy and the PYTHONPATH set-up shared by the checkpoints, caches,
reproduction results and Ray launchers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from st_sweeps.files import link_or_copy, prepend_pythonpath, write_atomic, write_bytes_atomic, write_text_atomic


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    write_text_atomic(target, "old")

    def fail_half_way(tmp: str) -> None:
        Path(tmp).write_text("half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, fail_half_way)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_a_kill_signal_mid_write_is_also_cleaned_up(tmp_path):
    target = tmp_path / "a.bin"

    def interrupted(tmp: str) -> None:
        Path(tmp).write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, interrupted)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("durable", [False, True])
def test_writes_create_folders_and_replace_whole_files(tmp_path, durable):
    target = tmp_path / "deep" / "er" / "f.txt"
    write_atomic(target, lambda tmp: Path(tmp).write_text("first, longer"), durable=durable)
    write_bytes_atomic(target, b"second")
    assert target.read_bytes() == b"second"


def test_the_suffix_lets_writers_that_append_an_extension_write_the_renamed_file(tmp_path):
    np = pytest.importorskip("numpy")
    target = tmp_path / "stats.npz"
    write_atomic(target, lambda tmp: np.savez(tmp, mu=np.arange(3)), suffix=".npz")
    assert list(np.load(target)["mu"]) == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.npz"]


def test_link_or_copy_links_on_one_file_system_and_replaces_an_existing_target(tmp_path):
    src = tmp_path / "src.pt"
    src.write_bytes(b"weights")
    dst = tmp_path / "out" / "dst.pt"
    dst.parent.mkdir()
    dst.write_bytes(b"stale")
    link_or_copy(src, dst)
    assert dst.read_bytes() == b"weights"
    assert os.stat(dst).st_ino == os.stat(src).st_ino  # a hard link, no bytes copied


def test_link_or_copy_copies_where_links_fail(tmp_path, monkeypatch):
    src = tmp_path / "src.pt"
    src.write_bytes(b"weights")

    def no_links(*_a, **_k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    dst = link_or_copy(src, tmp_path / "dst.pt")
    assert dst.read_bytes() == b"weights" and os.stat(dst).st_ino != os.stat(src).st_ino


def test_prepend_pythonpath_puts_the_checkout_first_once(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", str(tmp_path)]))
    value = prepend_pythonpath(tmp_path)
    assert value.split(os.pathsep) == [str(tmp_path), "/elsewhere"]
    assert os.environ["PYTHONPATH"] == value
