"""Damaged files: checkpoints cut short or foreign, a full disk while writing one, unreadable data.

Each is an error naming the file and what is wrong (and, for data, the expected format); resume
falls back to the newest checkpoint that loads; a failed write leaves the earlier checkpoints as
they were.
"""

from __future__ import annotations

import errno
import os
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from st_sweeps import checkpoint as ckpt
from st_sweeps.data import CIFAR10, STL10, CelebA, CelebAHQ, MissingDataError
from st_sweeps.experiment import experiment_from_dict
from st_sweeps.trainer import Trainer

TINY = {
    "name": "damaged", "seed": 1, "data": {"dataset": {"name": "digits"}},
    "model": {"network": {"name": "ddpmpp", "channels": 8, "channel_multipliers": [1], "blocks_per_resolution": 1,
                          "attention_resolutions": [], "dropout": 0.0}},
    "optim": {"warmup_steps": 0},
    "train": {"steps": 3, "batch_size": 4, "log_every_steps": 1, "checkpoint_every_steps": 1, "keep_checkpoints": 0},
}


def make(run_dir: Path) -> Trainer:
    return Trainer(experiment_from_dict(TINY), run_dir, device="cpu", progress=False, evaluate_fn=lambda *a, **k: {})


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of the 3-step run, one checkpoint per step (read-only for the tests: copy it)."""
    run = tmp_path_factory.mktemp("finished")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests that resume it (conftest): the same float sums, bit for bit
    try:
        make(run).fit()
    finally:
        torch.set_num_threads(threads)
    assert [s for s, _ in ckpt.list_checkpoints(run / "checkpoints")] == [1, 2, 3]
    return run


def copy_run(src: Path, dst: Path) -> Path:
    (dst / "checkpoints").mkdir(parents=True)
    for _, p in ckpt.list_checkpoints(src / "checkpoints"):
        (dst / "checkpoints" / p.name).write_bytes(p.read_bytes())
    return dst


# ---------------------------------------------------------------------------- reading checkpoints
def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "tail_cut":
        path.write_bytes(data[:-10])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "text":
        path.write_text("this is not a checkpoint\n")
    elif how == "foreign_state_dict":  # a plain model state dict from elsewhere
        torch.save({"weight": torch.ones(3), "bias": torch.zeros(3)}, path)
    elif how == "tensor":
        torch.save(torch.ones(3), path)
    elif how == "pickled_object":  # weights_only refuses arbitrary objects
        torch.save({"step": 3, "model": np.arange(3)}, path)
    else:
        raise AssertionError(how)


PROBLEMS = {
    "truncated": "truncated", "tail_cut": "truncated", "empty": "empty", "text": "not a torch.save zip archive",
    "foreign_state_dict": "not a training checkpoint: no step", "tensor": "holds a Tensor",
    "pickled_object": "cannot read as a checkpoint",
}


@pytest.mark.parametrize("how", sorted(PROBLEMS))
def test_a_damaged_or_foreign_checkpoint_names_the_file_and_the_problem(finished: Path, tmp_path: Path,
                                                                        how: str) -> None:
    path = tmp_path / "step_000000003.pt"
    path.write_bytes(ckpt.checkpoint_path(finished / "checkpoints", 3).read_bytes())
    damage(path, how)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load(path)
    assert err.value.path == path and str(path) in str(err.value)
    assert PROBLEMS[how] in str(err.value)


def test_a_checkpoint_under_another_steps_name_is_refused(finished: Path, tmp_path: Path) -> None:
    path = tmp_path / "step_000000007.pt"
    path.write_bytes(ckpt.checkpoint_path(finished / "checkpoints", 3).read_bytes())
    with pytest.raises(ckpt.CheckpointError, match="holds step 3, but its name says step 7"):
        ckpt.load(path)


# ---------------------------------------------------------------------------- resuming
@pytest.mark.parametrize("how", ["truncated", "text"])
def test_resume_falls_back_to_the_newest_good_checkpoint(finished: Path, tmp_path: Path, how: str) -> None:
    run = copy_run(finished, tmp_path / "run")
    latest = ckpt.checkpoint_path(run / "checkpoints", 3)
    reference = ckpt.load(latest)
    damage(latest, how)
    trainer = make(run)
    with pytest.warns(UserWarning, match=r"step_000000003\.pt.*resuming from the earlier step_000000002\.pt"):
        assert trainer.resume_if_possible()
    assert trainer.step == 2
    # set aside for inspection, and no longer a checkpoint (pruning will not count it)
    assert (run / "checkpoints" / "step_000000003.pt.damaged").exists()
    assert [s for s, _ in ckpt.list_checkpoints(run / "checkpoints")] == [1, 2]
    trainer.fit()  # redoes step 3: the same weights as the run that wrote the damaged file
    again = ckpt.load(latest)
    for key, tensors in (("model", reference["model"]), ("ema", reference["ema"]["shadow"])):
        got = again["model"] if key == "model" else again["ema"]["shadow"]
        for name, tensor in tensors.items():
            assert torch.equal(got[name], tensor), f"{key}.{name}"


def test_resume_with_every_checkpoint_damaged_fails_instead_of_starting_over(finished: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path / "run")
    for _, path in ckpt.list_checkpoints(run / "checkpoints"):
        damage(path, "truncated")
    with pytest.raises(ckpt.CheckpointError) as err:
        make(run).resume_if_possible()
    assert "step_000000003.pt" in str(err.value) and "no earlier checkpoint" in str(err.value)
    assert len(ckpt.list_checkpoints(run / "checkpoints")) == 3  # nothing renamed or deleted


def test_resume_from_a_named_damaged_checkpoint_names_it(finished: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path / "run")
    path = ckpt.checkpoint_path(run / "checkpoints", 2)
    damage(path, "truncated")
    with pytest.raises(ckpt.CheckpointError, match="step_000000002.pt.*truncated"):
        make(tmp_path / "other").resume_if_possible(path)


# ---------------------------------------------------------------------------- writing checkpoints
def full_disk_after(n_bytes: int):
    """A torch.save that writes ``n_bytes`` of the real file, then fails as a full disk does."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        import io

        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)):  # torch.save takes a path or a file
            with open(f, "wb") as out:
                out.write(buffer.getvalue()[:n_bytes])
        else:
            f.write(buffer.getvalue()[:n_bytes])
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_a_full_disk_leaves_the_earlier_checkpoints_intact(finished: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_run(finished, tmp_path / "run")
    folder = run / "checkpoints"
    before = {p.name: digest(p) for _, p in ckpt.list_checkpoints(folder)}
    trainer = make(run)
    assert trainer.resume_if_possible() and trainer.step == 3
    monkeypatch.setattr(ckpt.torch, "save", full_disk_after(4096))
    for step in (3, 4):  # over the newest checkpoint, and a new one (keep_checkpoints would prune after it)
        trainer.step = step
        with pytest.raises(OSError) as err:
            trainer.save_checkpoint()
        assert err.value.errno == errno.ENOSPC
        assert str(ckpt.checkpoint_path(folder, step)) in str(err.value) and "untouched" in str(err.value)
    assert {p.name: digest(p) for p in folder.iterdir()} == before  # no partial or temporary file either
    monkeypatch.undo()
    assert ckpt.load(ckpt.checkpoint_path(folder, 3))["step"] == 3


# ---------------------------------------------------------------------------- data files
def write_cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = np.zeros((2, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1]}, protocol=2))
    return folder


@pytest.mark.parametrize("content", ["truncated", "garbage", "foreign_pickle", "wrong_shape"])
def test_an_unreadable_cifar10_batch_names_it_and_the_format(tmp_path: Path, content: str) -> None:
    folder = write_cifar(tmp_path)
    bad = folder / "data_batch_3"
    raw = bad.read_bytes()
    bad.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"\x00\x01 not a pickle",
                     "foreign_pickle": pickle.dumps(["a", "list"]),
                     "wrong_shape": pickle.dumps({b"data": np.zeros((2, 100), dtype=np.uint8)})}[content])
    with pytest.raises(MissingDataError) as err:
        CIFAR10().load(tmp_path, "train")
    msg = str(err.value)
    assert f"{bad} is unreadable" in msg and "uint8 [N, 3072]" in msg and "cifar-10-python.tar.gz" in msg
    assert "data_batch_1" not in msg  # only the bad file is named
    assert CIFAR10().load(tmp_path, "test").images.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("size", [27_648 + 1000, 0])
def test_an_unreadable_stl10_binary_names_it_and_the_format(tmp_path: Path, size: int) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "train_X.bin").write_bytes(bytes(27_648))
    (folder / "unlabeled_X.bin").write_bytes(bytes(size))
    with pytest.raises(MissingDataError) as err:
        STL10().load(tmp_path, "train")
    msg = str(err.value)
    assert str(folder / "unlabeled_X.bin") in msg and "27,648 bytes each" in msg and "stl10_binary.tar.gz" in msg
    assert str(folder / "train_X.bin") not in msg


def write_celeba(root: Path, n: int = 3) -> Path:
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((218, 178, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i + 1:06d}.jpg")
    (root / "celeba" / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg 0\n" for i in range(n)))
    return folder


def test_a_truncated_celeba_jpeg_names_it(tmp_path: Path) -> None:
    folder = write_celeba(tmp_path)
    bad = folder / "000002.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(MissingDataError) as err:
        CelebA(image_size=8).load(tmp_path, "train")
    assert f"{bad} is not a readable image" in str(err.value) and "JPEG or PNG" in str(err.value)


def test_an_unreadable_celeba_partition_list_names_it_and_the_format(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    partition.write_text("image_id,partition\n000001.jpg,0\n")  # a CSV from another redistribution
    with pytest.raises(MissingDataError) as err:
        CelebA(image_size=8).load(tmp_path, "train")
    assert f"{partition}, line 1" in str(err.value) and "'000001.jpg 0'" in str(err.value)
    partition.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(MissingDataError, match="not a text file"):
        CelebA(image_size=8).load(tmp_path, "train")


def test_a_foreign_celebahq_image_names_it(tmp_path: Path) -> None:
    folder = tmp_path / "celebahq"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    (folder / "00001.png").write_text("<html>a login page saved as an image</html>")
    with pytest.raises(MissingDataError) as err:
        CelebAHQ(image_size=8).load(tmp_path, "train")
    assert f"{folder / '00001.png'} is not a readable image" in str(err.value)


def test_train_command_names_an_unusable_checkpoint_in_one_line(tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """Every checkpoint damaged: the CLI exits 2 with the file named, no traceback."""
    from st_sweeps import train
    from st_sweeps.checkpoint import CheckpointError

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003
        raise CheckpointError(tmp_path / "step_00000004.pt", "truncated (not a complete torch archive)")

    monkeypatch.setattr(train, "run_local", refuse)
    code = train.main(["configs/digits_small.yaml", "--local", "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "step_00000004.pt" in err and "truncated" in err and "Traceback" not in err
