"""Dormand–Prince 5(4) with a step size per example: a batch of independent ODEs solved together.

Why: with one step size for the batch (``st_sweeps.ode_solver``, SciPy) every example is held to
the steps its hardest batch mate needs, and its result depends on who it shares a batch with.
Here each row of the state y [B, N] is its own initial-value problem with its own time, step
size, error norm and accepted/rejected state; every stage still evaluates ``func`` once on all
rows still running, with their own times t [b] (one network call for the batch).

Same method, norm and controller per row as ``st_sweeps.ode_solver`` (Hairer, Nørsett & Wanner,
II.4): err_i = RMS_j (y5 − y4)_ij / (atol + rtol · max(|y_ij|, |y_new,ij|)); accept when
err_i ≤ 1; next step h_i · clip(0.9 · err_i^(−1/5), 0.2, 10), no growth right after a rejection.

No host round trip per step: times, steps and decisions stay tensors on y0's device; the host
reads the state only every ``sync_every`` steps (one small transfer: "all done?" and "any step
underflow?"), and then drops the finished rows, so later calls of ``func`` see a smaller batch.
A row that finishes between two reads takes zero-length steps (its state does not change).
Integration runs forward only (t1 > t0 per row): the likelihood's time variables all increase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from st_sweeps.errors import require, require_positive
from st_sweeps.ode_solver import _C, _E, OdeSolverError, dormand_prince_stages

# (t [b] float64, y [b, N], rows [b] long: which of the B problems these are) -> dy/dt [b, N]
BatchedOdeFunc = Callable[[Tensor, Tensor, Tensor], Tensor]

_SAFETY, _MIN_FACTOR, _MAX_FACTOR, _EXPONENT = 0.9, 0.2, 10.0, -1.0 / 5.0


@dataclass(frozen=True)
class BatchedOdeSolution:
    """y [B, N] at t1; nfe: calls of ``func`` (each on the rows still running); example_nfe [B]:
    calls each row took part in; steps, rejected [B]: accepted and rejected steps per row;
    host_reads: how often the host read solver state (``sync_every`` apart)."""

    y: Tensor
    nfe: int
    example_nfe: Tensor
    steps: Tensor
    rejected: Tensor
    host_reads: int


def _rms_rows(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x.double(), dim=1) / math.sqrt(max(x.shape[1], 1))


def _error_norm(x: Tensor, split: int | None) -> Tensor:
    """Per-row RMS; with ``split``, the larger of the RMS over columns [:split] and over [split:],
    so that a few columns (a log-density accumulator) are not diluted by many (the state)."""
    if split is None or split >= x.shape[1]:
        return _rms_rows(x)
    return torch.maximum(_rms_rows(x[:, :split]), _rms_rows(x[:, split:]))


def _host_flags(*flags: Tensor) -> list[bool]:
    """The only place the solver reads device values on the host: one transfer per call."""
    return [bool(v) for v in torch.stack(flags).cpu().tolist()]


def _initial_step(f, t0: Tensor, y0: Tensor, f0: Tensor, span: Tensor, rows: Tensor, rtol: float,
                  atol: float) -> Tensor:
    """Hairer's starting step (as SciPy's select_initial_step), per row: [b] float64."""
    scale = atol + y0.abs() * rtol
    d0, d1 = _rms_rows(y0 / scale), _rms_rows(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    h0 = torch.minimum(h0, span)
    f1 = f(t0 + h0, y0 + h0[:, None].to(y0.dtype) * f0, rows)
    d2 = _rms_rows((f1 - f0) / scale) / h0
    tiny = (d1 <= 1e-15) & (d2 <= 1e-15)
    h1 = torch.where(tiny, torch.clamp(h0 * 1e-3, min=1e-6),
                     (0.01 / torch.maximum(d1, d2).clamp_min(1e-300)) ** (-_EXPONENT))
    return torch.minimum(torch.minimum(100 * h0, h1), span)


def solve_ode_batched(func: BatchedOdeFunc, y0: Tensor, t0: Tensor | float, t1: Tensor | float, *,
                      rtol: float = 1e-5, atol: float = 1e-5, max_nfe: int = 100_000, sync_every: int = 8,
                      first_step: Tensor | float | None = None, norm_split: int | None = None) -> BatchedOdeSolution:
    """Integrate dy_i/dt = func(t, y, rows)_i for every row i of y0 [B, N] from t0_i to t1_i.

    t0, t1: floats or [B] tensors (held in float64). The state keeps y0's device and dtype.
    Raises OdeSolverError when more than ``max_nfe`` calls would be needed or a running row's
    step underflows (both noticed at the next host read, at most ``sync_every`` steps late).
    ``norm_split``: the error norm of a step is the larger of the RMS over columns [:split] and
    over [split:] (default: one RMS over the row, as SciPy).
    """
    require_positive(rtol, "rtol")
    require_positive(atol, "atol")
    require(isinstance(max_nfe, int) and max_nfe > 0, "max_nfe", f"got {max_nfe!r}", "an integer > 0")
    require(isinstance(sync_every, int) and sync_every >= 1, "sync_every", f"got {sync_every!r}", "an integer >= 1")
    require(y0.ndim == 2, "y0", f"has shape {tuple(y0.shape)}", "a [B, N] tensor (one row per problem)")
    b_all, device = y0.shape[0], y0.device
    as_t = lambda v: torch.as_tensor(v, dtype=torch.float64, device=device).expand(b_all).clone()  # noqa: E731
    t, t_end = as_t(t0), as_t(t1)
    require(bool((t_end >= t).all()), "t1", "lies before t0 for some row", "t1 >= t0 (forward integration)")
    nfe = 0

    def f(tt: Tensor, yy: Tensor, rr: Tensor) -> Tensor:
        nonlocal nfe
        if nfe >= max_nfe:
            raise OdeSolverError(f"solve_ode_batched: max_nfe={max_nfe} calls spent before every row reached t1; "
                                 "raise max_nfe or loosen rtol/atol")
        nfe += 1
        out = func(tt, yy, rr)
        if out.shape != yy.shape:
            raise ValueError(f"solve_ode_batched: func returned shape {tuple(out.shape)} for a state of shape "
                             f"{tuple(yy.shape)}")
        return out

    rows = torch.arange(b_all, device=device)
    y_out = y0.clone()
    example_nfe = torch.zeros(b_all, dtype=torch.long, device=device)
    steps = torch.zeros_like(example_nfe)
    rejected = torch.zeros_like(example_nfe)
    y = y0
    k1 = f(t, y, rows)
    example_nfe += 1
    if first_step is None:
        h = _initial_step(f, t, y, k1, t_end - t, rows, rtol, atol)
        example_nfe += 1
    else:
        h = torch.minimum(as_t(first_step), t_end - t)
    prev_rejected = torch.zeros(b_all, dtype=torch.bool, device=device)
    underflow = torch.zeros((), dtype=torch.bool, device=device)
    host_reads, it = 0, 0
    while True:
        was_done = t >= t_end
        remaining = t_end - t
        last = h >= remaining
        h = torch.where(last, remaining, h)
        hy = h[:, None].to(y.dtype)
        y_new, ks = dormand_prince_stages(y, k1, hy, lambda i, yi: f(t + h * _C[i], yi, rows))
        t_new = torch.where(last, t_end, t + h)
        k7 = f(t_new, y_new, rows)
        ks.append(k7)
        err_vec = sum((hy * e) * k for e, k in zip(_E, ks) if e != 0.0)
        err = _error_norm(err_vec / (atol + rtol * torch.maximum(y.abs(), y_new.abs())), norm_split)
        finite = torch.isfinite(err)
        accept = finite & (err <= 1.0)
        safe_err = torch.where(finite, err, torch.ones_like(err))
        grow = torch.where(safe_err == 0, torch.full_like(err, _MAX_FACTOR),
                           (_SAFETY * safe_err.clamp_min(1e-300) ** _EXPONENT).clamp(max=_MAX_FACTOR))
        grow = torch.where(prev_rejected, grow.clamp(max=1.0), grow)
        shrink = torch.where(finite, (_SAFETY * safe_err.clamp_min(1e-300) ** _EXPONENT).clamp(min=_MIN_FACTOR),
                             torch.full_like(err, _MIN_FACTOR))
        t = torch.where(accept, t_new, t)
        y = torch.where(accept[:, None], y_new, y)
        k1 = torch.where(accept[:, None], k7, k1)
        h = h * torch.where(accept, grow, shrink)
        prev_rejected = ~accept
        running = ~was_done
        steps[rows] += (accept & running).long()
        rejected[rows] += (~accept & running).long()
        example_nfe[rows] += 6
        done = t >= t_end
        min_step = 10 * torch.finfo(torch.float64).eps * t.abs().clamp_min(1.0)
        underflow = underflow | ((~done) & ~(h >= min_step)).any()  # NaN h counts as underflow
        it += 1
        if it % sync_every:
            continue
        all_done, bad = _host_flags(done.all(), underflow)
        host_reads += 1
        if bad:
            raise OdeSolverError("solve_ode_batched: a step size underflowed; the ODE is too stiff or func "
                                 "returned non-finite values")
        if all_done:
            break
        keep = ~done
        y_out[rows[done]] = y[done]
        rows, t, t_end, y, k1, h, prev_rejected = (v[keep] for v in (rows, t, t_end, y, k1, h, prev_rejected))
    y_out[rows] = y
    return BatchedOdeSolution(y=y_out, nfe=nfe, example_nfe=example_nfe, steps=steps, rejected=rejected,
                              host_reads=host_reads)
