"""Shared pytest fixtures (add yours below; keep each one generic and documented)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Evaluations download missing Inception weights where there is internet (st_sweeps.fid.
# fetch_missing_weights); tests never reach for the network (subprocesses inherit this).
# tests/test_downloads.py lifts it for the download paths, against a server on 127.0.0.1.
os.environ["ST_SWEEPS_OFFLINE"] = "1"

# One intra-op thread, as `make test` sets: with two, some CPU kernels (convolution gradients)
# sum partial results in a varying order, and the bit-identical resume and parity tests compare
# two runs to the last bit. A bare `pytest` gets the same; subprocesses inherit the variable.
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# torch-fidelity's file name for its converted TF Inception weights (also st_sweeps.fid.INCEPTION_WEIGHTS_FILE).
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised torch-fidelity Inception state dict saved under the real file name.

    Offline there are no real weights. PyTorch's default init collapses the pool features (FID
    ~1e-16 for any two sets), so conv weights are re-drawn Kaiming-normal (fan-in, ReLU gain)
    from a fixed generator; with that, FID separates same- and shifted-distribution sets. Only for
    tests: the values are not comparable with real FIDs.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):  # noqa: ANN001 - keep the random init
            return None

    root = tmp_path_factory.mktemp("inception")
    empty = root / "empty.pth"
    torch.save({}, empty)  # the constructor insists on loading something; never the network
    model = _Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    gen = torch.Generator().manual_seed(2015)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=gen)
    path = root / INCEPTION_WEIGHTS_FILE
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Two OpenMP threads on two shared cores spin-wait against each other (measured 10–30x
    slower here); tests run single-threaded and restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``): every test that starts Ray
    runs in one worker, one after the other, because two Ray clusters on a 2-core machine starve
    each other's workers; every other file stays whole on one worker, so its module fixtures are
    built once."""
    for item in items:
        group = "ray" if item.get_closest_marker("ray") else item.path.name
        item.add_marker(pytest.mark.xdist_group(group))
