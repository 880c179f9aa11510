"""Dormand–Prince 5(4) against closed forms and against SciPy's RK45 (same method, same controller)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from st_sweeps.errors import ConfigError
from st_sweeps.ode_solver import OdeSolution, OdeSolverError, solve_ode

DTYPES = [torch.float64, torch.float32]


def _decay(k: torch.Tensor):
    return lambda t, y: -k * y


def _oscillator(t: float, y: torch.Tensor) -> torch.Tensor:  # y = [position, velocity] along dim -1
    return torch.stack([y[..., 1], -y[..., 0]], dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exponential_decay_matches_closed_form(dtype: torch.dtype) -> None:
    k = torch.tensor([0.5, 1.0, 3.0], dtype=dtype)
    y0 = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    sol = solve_ode(_decay(k), y0, 0.0, 2.0, rtol=1e-6, atol=1e-8)
    exact = y0 * torch.exp(-2.0 * k)
    assert sol.y.dtype == dtype and sol.y.device == y0.device and sol.y.shape == y0.shape
    tol = 1e-5 if dtype == torch.float64 else 1e-4  # global error ≈ a few × rtol; float32 adds roundoff
    assert torch.allclose(sol.y, exact, rtol=tol, atol=tol)
    assert sol.steps > 0 and sol.nfe >= 6 * sol.steps


@pytest.mark.parametrize("dtype", DTYPES)
def test_harmonic_oscillator_over_several_periods(dtype: torch.dtype) -> None:
    y0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=dtype)  # a batch of two initial states
    t1 = 4 * math.pi + 1.0
    sol = solve_ode(_oscillator, y0, 0.0, t1, rtol=1e-7, atol=1e-7)
    c, s = math.cos(t1), math.sin(t1)
    exact = torch.stack([y0[:, 0] * c + y0[:, 1] * s, -y0[:, 0] * s + y0[:, 1] * c], dim=-1)
    tol = 1e-5 if dtype == torch.float64 else 2e-4
    assert sol.y.dtype == dtype
    assert torch.allclose(sol.y, exact, atol=tol)


def test_backward_integration_inverts_forward() -> None:
    k = torch.tensor([1.0, 2.0], dtype=torch.float64)
    y1 = torch.tensor([0.3, 0.7], dtype=torch.float64)
    back = solve_ode(_decay(k), y1, 1.5, 0.0, rtol=1e-8, atol=1e-10)  # y(0) from y(1.5)
    assert torch.allclose(back.y, y1 * torch.exp(1.5 * k), rtol=1e-6)
    there = solve_ode(_decay(k), back.y, 0.0, 1.5, rtol=1e-8, atol=1e-10)
    assert torch.allclose(there.y, y1, rtol=1e-6)


def test_time_dependent_rhs_backward() -> None:
    # y' = 2 t y: y(t) = y(t0) exp(t² − t0²); integrate from 1 down to −0.5
    f = lambda t, y: 2 * t * y  # noqa: E731
    y0 = torch.tensor([1.0], dtype=torch.float64)
    sol = solve_ode(f, y0, 1.0, -0.5, rtol=1e-8, atol=1e-10)
    assert sol.y.item() == pytest.approx(math.exp(0.25 - 1.0), rel=1e-6)


def test_nfe_equals_calls_made() -> None:
    calls = []

    def f(t: float, y: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return _oscillator(t, y)

    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    sol = solve_ode(f, y0, 0.0, 10.0)
    assert sol.nfe == len(calls)
    # 1 call for k1, 1 for the initial-step heuristic, 6 per attempted step (FSAL)
    assert sol.nfe == 2 + 6 * (sol.steps + sol.rejected)
    with_first_step = solve_ode(f, y0, 0.0, 10.0, first_step=0.1)
    assert with_first_step.nfe == 1 + 6 * (with_first_step.steps + with_first_step.rejected)


@pytest.mark.parametrize("rtol,atol", [(1e-5, 1e-5), (1e-3, 1e-6), (1e-8, 1e-9)])
@pytest.mark.parametrize("backward", [False, True])
def test_same_steps_and_result_as_scipy_rk45(rtol: float, atol: float, backward: bool) -> None:
    """SciPy's RK45 is the same method with the same norm, controller and initial step: the
    number of evaluations agrees exactly and the results to roundoff."""

    def f_np(t, y):
        return [y[1], -y[0] * (1 + t), -np.cos(t) * y[2] ** 2]

    def f_torch(t: float, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[1], -y[0] * (1 + t), -math.cos(t) * y[2] ** 2])

    t0, t1 = (3.0, 0.0) if backward else (0.0, 3.0)
    y0 = [1.0, 0.0, 0.5]
    ref = solve_ivp(f_np, (t0, t1), y0, method="RK45", rtol=rtol, atol=atol)
    sol = solve_ode(f_torch, torch.tensor(y0, dtype=torch.float64), t0, t1, rtol=rtol, atol=atol)
    assert sol.nfe == ref.nfev
    assert sol.steps == len(ref.t) - 1
    np.testing.assert_allclose(sol.y.numpy(), ref.y[:, -1], rtol=1e-12, atol=1e-12)


def test_max_nfe_raises_a_clear_error() -> None:
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    with pytest.raises(OdeSolverError, match="max_nfe=20"):
        solve_ode(_oscillator, y0, 0.0, 100.0, rtol=1e-10, atol=1e-10, max_nfe=20)


def test_nonfinite_rhs_raises_instead_of_returning_garbage() -> None:
    f = lambda t, y: y * float("nan")  # noqa: E731
    with pytest.raises(OdeSolverError):
        solve_ode(f, torch.ones(3, dtype=torch.float64), 0.0, 1.0, max_nfe=10_000)


def test_zero_span_and_validation() -> None:
    y0 = torch.ones(2, dtype=torch.float32)
    sol = solve_ode(_oscillator, y0, 0.5, 0.5)
    assert isinstance(sol, OdeSolution) and sol.nfe == 0 and torch.equal(sol.y, y0)
    with pytest.raises(ConfigError, match="rtol"):
        solve_ode(_oscillator, y0, 0.0, 1.0, rtol=0.0)
    with pytest.raises(ConfigError, match="max_nfe"):
        solve_ode(_oscillator, y0, 0.0, 1.0, max_nfe=0)
    with pytest.raises(ValueError, match="shape"):
        solve_ode(lambda t, y: y[:1], y0, 0.0, 1.0)


def test_func_sees_python_float_times_and_state_dtype() -> None:
    seen = []

    def f(t, y):
        seen.append((type(t), y.dtype))
        return -y

    solve_ode(f, torch.ones(4, dtype=torch.float32), 0.0, 1.0)
    assert all(tp is float and dt == torch.float32 for tp, dt in seen)
