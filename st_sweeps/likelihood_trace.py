"""Divergence of a per-example map by batched vector-Jacobian products (one forward pass).

Why: the Hutchinson estimate with n probes and the exact trace (D basis vectors) each need
n (resp. D) VJPs through the same graph. Passing them as one batch of cotangents
(``torch.autograd.grad(..., is_grads_batched=True)``, vmap over the backward pass) replaces a
Python loop of backward passes by one vectorised pass.

    Hutchinson:  div_j = v_jᵀ (∂fn/∂y) v_j,   j = 1..n    (E[v vᵀ] = I: Rademacher or Gaussian v)
    exact:       div   = Σ_i e_iᵀ (∂fn/∂y) e_i = tr ∂fn/∂y
Both assume fn treats the examples of the batch independently (no batch statistics).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# cotangents per batched backward pass for the exact trace: D·B·chunk elements at most this many
_EXACT_CHUNK_ELEMENTS = 1 << 24


def _vjps(out: Tensor, y: Tensor, cotangents: Tensor, retain: bool) -> Tensor:
    """[n, B, ...] VJPs of out with the n cotangents [n, B, ...]."""
    if cotangents.shape[0] == 1:
        (g,) = torch.autograd.grad(out, y, cotangents[0], retain_graph=retain)
        return g[None]
    (g,) = torch.autograd.grad(out, y, cotangents, retain_graph=retain, is_grads_batched=True)
    return g


def divergence_batched(fn: Callable[[Tensor], Tensor], y: Tensor,
                       probes: Tensor | None) -> tuple[Tensor, Tensor]:
    """(fn(y) [B, ...], divergence [n, B]) both detached; y [B, ...].

    probes [n, B, ...]: n Hutchinson estimates, one row each (their mean is the estimate; their
    spread its standard error). probes None: the exact trace, as one row [1, B].
    """
    with torch.enable_grad():
        yg = y.detach().requires_grad_(True)
        out = fn(yg)
        b = y.shape[0]
        if probes is not None:
            g = _vjps(out, yg, probes.to(out.dtype), retain=False)
            div = (g * probes).reshape(probes.shape[0], b, -1).sum(-1)
            return out.detach(), div.detach()
        d = y[0].numel()
        chunk = max(1, min(d, _EXACT_CHUNK_ELEMENTS // max(1, b * d)))
        div = torch.zeros(b, dtype=out.dtype, device=out.device)
        eye = torch.eye(d, dtype=out.dtype, device=out.device)
        for start in range(0, d, chunk):
            stop = min(d, start + chunk)
            basis = eye[start:stop, None, :].expand(stop - start, b, d).reshape(stop - start, *out.shape)
            g = _vjps(out, yg, basis, retain=stop < d).reshape(stop - start, b, d)
            div = div + torch.diagonal(g[:, :, start:stop], dim1=0, dim2=2).sum(-1)
    return out.detach(), div.detach()[None]
