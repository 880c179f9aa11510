"""Adaptive Dormand–Prince 5(4) ODE solver on torch tensors (one step size for the whole batch).

Why our own: the usual published likelihood evaluator (score_sde) calls SciPy's ``solve_ivp``
with the state held as float64 NumPy on the host, copied to the device and back at every
function evaluation. This solver runs the same method (RK45 = Dormand & Prince 1980, the
5th-order solution propagated, FSAL) with the same error norm and controller as SciPy and
torchdiffeq, but keeps the state on y0's device and in y0's dtype.

Error control (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4):
    err = RMS over all elements of  (y5 − y4) / (atol + rtol · max(|y|, |y_new|)),
a step is accepted when err ≤ 1 and the next step is h · clip(0.9 · err^(−1/5), 0.2, 10)
(no growth right after a rejection). The initial step, when not given, is Hairer's heuristic
(the same as SciPy's ``select_initial_step``), which costs one extra function evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from st_sweeps.errors import require, require_positive

OdeFunc = Callable[[float, Tensor], Tensor]

# Dormand–Prince 5(4) tableau. C: nodes; A: stage coefficients; B: 5th-order weights (the
# propagated solution, equal to A's last row, hence FSAL); E: B minus the 4th-order weights.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)

_SAFETY = 0.9
_MIN_FACTOR = 0.2
_MAX_FACTOR = 10.0
_ERROR_EXPONENT = -1.0 / 5.0  # −1 / (order of the embedded error estimator + 1)


class OdeSolverError(RuntimeError):
    """The integration could not be completed (evaluation budget spent, step size underflow)."""


@dataclass(frozen=True)
class OdeSolution:
    """y: the state at t1 (y0's shape, device, dtype); nfe: calls of ``func`` made;
    steps: accepted steps; rejected: rejected steps."""

    y: Tensor
    nfe: int
    steps: int
    rejected: int


def dormand_prince_stages(y: Tensor, k1: Tensor, h: float | Tensor,
                          stage: Callable[[int, Tensor], Tensor]) -> tuple[Tensor, list[Tensor]]:
    """The 5th-order solution and the six slopes of one Dormand–Prince step of size ``h`` (a
    float, or a per-row tensor broadcasting against ``y``) from ``y`` with first slope ``k1``;
    ``stage(i, y_i)`` evaluates the slope of stage i (at t + C[i]·h, which the caller knows)."""
    ks = [k1]
    for i in range(1, 6):
        yi = y
        for a, k in zip(_A[i], ks):
            if a != 0.0:
                yi = yi + (h * a) * k
        ks.append(stage(i, yi))
    y_new = y
    for b, k in zip(_B, ks):
        if b != 0.0:
            y_new = y_new + (h * b) * k
    return y_new, ks


def _rms(x: Tensor) -> float:
    return float(torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1)))


class _Counted:
    """Wraps func, counts calls and enforces max_nfe before each call."""

    def __init__(self, func: OdeFunc, max_nfe: int, t0: float, t1: float):
        self.func, self.max_nfe, self.nfe = func, max_nfe, 0
        self.t0, self.t1 = t0, t1
        self.t_reached = t0

    def __call__(self, t: float, y: Tensor) -> Tensor:
        if self.nfe >= self.max_nfe:
            raise OdeSolverError(
                f"solve_ode: max_nfe={self.max_nfe} function evaluations spent before reaching t1={self.t1} "
                f"(integrating from t0={self.t0}, reached t={self.t_reached}); raise max_nfe or loosen rtol/atol")
        self.nfe += 1
        out = self.func(t, y)
        if out.shape != y.shape:
            raise ValueError(f"solve_ode: func returned shape {tuple(out.shape)} for a state of shape {tuple(y.shape)}")
        return out


def _initial_step(f: _Counted, t0: float, y0: Tensor, f0: Tensor, direction: float, span: float,
                  rtol: float, atol: float) -> float:
    """Hairer, Nørsett & Wanner (II.4, "starting step size"), as in SciPy's select_initial_step."""
    scale = atol + y0.abs() * rtol
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = f(t0 + direction * h0, y0 + (direction * h0) * f0)
    d2 = _rms((f1 - f0) / scale) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (-_ERROR_EXPONENT)
    return min(100 * h0, h1, span)


def solve_ode(func: OdeFunc, y0: Tensor, t0: float, t1: float, *, rtol: float = 1e-5, atol: float = 1e-5,
              first_step: float | None = None, max_nfe: int = 100_000) -> OdeSolution:
    """Integrate dy/dt = func(t, y) from t0 to t1 (forward, or backward when t1 < t0).

    ``func(t, y)`` gets t as a Python float and must return a tensor of y's shape. The state stays
    on y0's device and dtype. Raises OdeSolverError when more than ``max_nfe`` evaluations would
    be needed or the step size underflows (e.g. a func that keeps returning NaN).
    """
    require_positive(rtol, "rtol")
    require_positive(atol, "atol")
    require(isinstance(max_nfe, int) and max_nfe > 0, "max_nfe", f"got {max_nfe!r}", "an integer > 0")
    require(first_step is None or first_step > 0, "first_step", f"got {first_step!r}", "None or a number > 0")
    t0, t1 = float(t0), float(t1)
    f = _Counted(func, max_nfe, t0, t1)
    if t0 == t1:
        return OdeSolution(y=y0.clone(), nfe=0, steps=0, rejected=0)
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)

    t, y = t0, y0
    k1 = f(t, y)
    h = first_step if first_step is not None else _initial_step(f, t0, y0, k1, direction, span, rtol, atol)
    h = min(h, span)
    steps = rejected = 0
    prev_rejected = False
    while direction * (t1 - t) > 0:
        remaining = abs(t1 - t)
        min_step = 10 * torch.finfo(torch.float64).eps * max(abs(t), 1.0)
        if h < min_step:
            raise OdeSolverError(f"solve_ode: step size {h:.3g} underflowed at t={t} (integrating {t0} -> {t1}); "
                                 "the ODE is too stiff or func returned non-finite values")
        last = h >= remaining
        if last:
            h = remaining
        hs = direction * h
        y_new, ks = dormand_prince_stages(y, k1, hs, lambda i, yi: f(t + hs * _C[i], yi))
        t_new = t1 if last else t + hs
        k7 = f(t_new, y_new)
        ks.append(k7)
        err_vec = sum((hs * e) * k for e, k in zip(_E, ks) if e != 0.0)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        err = _rms(err_vec / scale)
        if not math.isfinite(err):
            rejected += 1
            prev_rejected = True
            h *= _MIN_FACTOR
            continue
        if err <= 1.0:
            factor = _MAX_FACTOR if err == 0.0 else min(_MAX_FACTOR, _SAFETY * err ** _ERROR_EXPONENT)
            if prev_rejected:  # no growth right after a rejection (SciPy's rule)
                factor = min(1.0, factor)
            t, y, k1 = t_new, y_new, k7
            f.t_reached = t
            steps += 1
            prev_rejected = False
            h = h * factor
        else:
            rejected += 1
            prev_rejected = True
            h = h * max(_MIN_FACTOR, _SAFETY * err ** _ERROR_EXPONENT)
    return OdeSolution(y=y, nfe=f.nfe, steps=steps, rejected=rejected)
