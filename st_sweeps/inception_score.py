"""Inception Score (Salimans et al. 2016, §4) from classifier logits: pure math on a tensor.

    IS = exp( E_x KL( p(y|x) ‖ p(y) ) ),   p(y) = E_x p(y|x),

estimated on each of ``splits`` consecutive, nearly equal chunks of the samples (chunk i holds rows
[i·N // splits, (i+1)·N // splits), torch-fidelity's boundaries), reported as the mean and the
population standard deviation of the per-chunk scores — torch-fidelity's ``isc`` with its
default 10 splits. The logits are torch-fidelity Inception's "logits_unbiased" (the 1008-way
classifier without its bias, as in the original IS code); ``st_sweeps.fid`` produces them in the
same forward pass as the FID features.

Sample order: torch-fidelity shuffles the samples (NumPy seed 2020) before splitting unless
``samples_shuffle=False``; here chunks are taken in the given order, since generated samples are
i.i.d. and their order carries nothing. The Soft Truncation (and score_sde) evaluation instead
scores all samples as one chunk (``splits=1``): the entropy of a marginal estimated from fewer
samples is lower in expectation, so 10 chunks of a tenth the size read somewhat lower.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DEFAULT_SPLITS = 10  # torch-fidelity's isc_splits default (and Salimans et al.'s)


def inception_score_from_logits(logits: Tensor, splits: int = DEFAULT_SPLITS) -> tuple[float, float]:
    """(mean, std over splits) of the Inception Score of logits [N, K], in float64.

    Bounds, up to rounding: 1 ≤ IS ≤ min(K, samples per split), since the exponent is the mutual
    information between the sample index and the class (IS = 1 when every sample has the same
    class distribution; IS = K when the predictions are one-hot and spread evenly over K classes).
    A value a hair below 1 is rounding and is not clipped. Needs N ≥ splits (no empty chunk).
    """
    if logits.ndim != 2 or splits < 1 or logits.shape[0] < splits:
        raise ValueError(f"inception_score_from_logits: need logits [N >= splits, K] with splits >= 1, "
                         f"got shape {tuple(logits.shape)} and splits={splits}")
    log_p = torch.log_softmax(logits.detach().double(), dim=1)  # log p(y|x), [N, K]
    n = log_p.shape[0]
    bounds = [i * n // splits for i in range(splits + 1)]
    scores = []
    for lo, hi in zip(bounds, bounds[1:]):
        chunk = log_p[lo:hi]  # [n_i, K]
        # log p(y) by logsumexp rather than log(mean p): a class no sample predicts then gets a
        # finite log-marginal instead of log 0 = −inf, whose 0 · ∞ would turn the KL into NaN
        log_marginal = torch.logsumexp(chunk, dim=0) - math.log(hi - lo)  # [K]
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=1)  # KL(p(y|x) ‖ p(y)) per sample, [n_i]
        scores.append(kl.mean().exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False))  # population std, as torch-fidelity (np.std)
