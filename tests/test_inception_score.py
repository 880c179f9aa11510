"""The Inception Score as a pure function of logits: analytic values, bounds, and agreement with
torch-fidelity's own isc math on the same logits (no Inception network here; the end-to-end check
through the network is in test_fid.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from st_sweeps.fid import inception_score_or_reason
from st_sweeps.inception_score import DEFAULT_SPLITS, inception_score_from_logits

N_CLASSES = 1008  # torch-fidelity Inception's classifier width


def _random_logits(n: int, k: int = N_CLASSES, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def test_identical_predictions_score_one() -> None:
    logits = _random_logits(1).expand(40, -1)
    mean, std = inception_score_from_logits(logits)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 10, 37])
def test_one_hot_predictions_spread_evenly_over_k_classes_score_k(k: int) -> None:
    """p(y|x) one-hot, each of k classes predicted equally often: KL = log k for every sample."""
    labels = torch.arange(3 * k) % k
    logits = 100.0 * torch.nn.functional.one_hot(labels, N_CLASSES).double()  # softmax one-hot to e^-100
    mean, std = inception_score_from_logits(logits, splits=1)
    assert mean == pytest.approx(k, rel=1e-12) and std == 0.0
    # three splits, each holding every class once: the same score in each split
    mean, std = inception_score_from_logits(logits, splits=3)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_unused_classes_give_no_nan() -> None:
    """Extreme logits leave most classes with marginal probability 0 in float64 (log 0 = −inf)."""
    logits = torch.full((20, N_CLASSES), -1e4, dtype=torch.float64)
    logits[0::2, 0] = logits[1::2, 1] = 1e4  # classes 0 and 1 alternate, so each split holds both
    mean, std = inception_score_from_logits(logits, splits=2)
    assert mean == pytest.approx(2.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 24), st.integers(1, 12)),
              elements=st.floats(-30, 30, allow_nan=False, width=64)),
       st.integers(1, 4))
def test_score_lies_between_one_and_the_class_and_sample_counts(logits: np.ndarray, splits: int) -> None:
    n, k = logits.shape
    splits = min(splits, n)
    mean, std = inception_score_from_logits(torch.from_numpy(logits), splits)
    largest_split = -(-n // splits)  # IS of a split ≤ exp(mutual information) ≤ min(classes, samples)
    assert 1.0 - 1e-9 <= mean <= min(k, largest_split) * (1 + 1e-9)
    assert std >= 0.0


@pytest.mark.parametrize("n", [10, 23, 100])
def test_matches_torch_fidelity_isc_math_including_its_shuffle(n: int) -> None:
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = _random_logits(n, seed=n).float()  # torch-fidelity's extractor returns float32 logits
    theirs = isc_features_to_metric(logits, splits=DEFAULT_SPLITS, shuffle=False)
    mean, std = inception_score_from_logits(logits)
    assert mean == pytest.approx(theirs["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(theirs["inception_score_std"], rel=1e-9, abs=1e-12)
    # torch-fidelity's default shuffles rows with NumPy seed 2020 first: the same rows give the same score
    shuffled = isc_features_to_metric(logits)  # splits 10, shuffle, seed 2020
    order = torch.from_numpy(np.random.RandomState(2020).permutation(n))
    assert inception_score_from_logits(logits[order])[0] == pytest.approx(shuffled["inception_score_mean"], rel=1e-12)


def test_bad_shapes_and_too_few_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_logits(_random_logits(9))  # 9 samples, 10 splits
    with pytest.raises(ValueError, match="shape"):
        inception_score_from_logits(torch.zeros(20))
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_logits(_random_logits(20), splits=0)


def test_too_few_samples_is_a_missing_value_with_a_reason() -> None:
    mean, std, reason = inception_score_or_reason(_random_logits(8))
    assert mean is None and std is None and "at least 10" in reason and "got 8" in reason
    mean, std, reason = inception_score_or_reason(_random_logits(10))
    assert reason is None and mean is not None and mean >= 1.0 and std is not None
