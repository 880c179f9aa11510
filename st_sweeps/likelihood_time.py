"""Integration variables for the probability-flow ODE: an exact change of time and state.

Why: near t = ε the PF-ODE in t is stiff: its drift a x − ½ g² s carries g²/σ², which grows
without bound as σ → 0, so an adaptive solver spends many of its steps there. Written in the
scaled state y = x/μ(t) and the noise-to-signal ratio τ = σ(t)/μ(t) it becomes (with
g² = σ² dρ/dt, ρ = log τ² the SDE's ``neg_log_snr``, and a = d log μ/dt)
    dy/dτ = −σ(t) s_θ(μ y, t) = ε̂(y, t),
the noise prediction itself (the "DDIM ODE"; Song et al. 2021a, Lu et al. 2022), which is O(1)
and smooth in τ for every SDE here (VP, sub-VP, VE, reciprocal VE; μ ≡ 1 for the VE family).

Variables (u increases with t, so the solve runs forward from u(ε) to u(T)):
    "t"            u = t,    y = x,    dy/du = a(t) y − ½ g²(t) s(y, t)
    "sigma_ratio"  u = τ,    y = x/μ,  dy/du = −σ s(μ y, t)
    "neg_log_snr"  u = ρ,    y = x/μ,  dy/du = −½ σ τ s(μ y, t)
each of the form dy/du = α(u) y + β(u) s(scale · y, t(u)). "auto" picks by the SDE: τ for the VE
family (μ ≡ 1), whose stiffness near ε sits in σ(t) itself (reciprocal VE: log σ ∝ 1/t), and t
for VP and sub-VP, where smooth data leave the t-form mild and τ only stretches the late part
(measured: benchmarks/RESULTS.md, and the NFE figures in the issue-19 notes there). The log-density follows the same
change exactly: along a trajectory d log p_u(y)/du = −∇_y·(dy/du) = −α D − β · scale · tr ∂s/∂x,
and log p_x(x) = log p_y(y) − D log scale, so
    log p_ε(x_ε) = log π(x_T) + D log(scale_T/scale_ε) + ∫_{u(ε)}^{u(T)} (α D + β ∇_y·s(scale·y)) du.
All coefficients are pure functions of u [B] in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from st_sweeps.errors import require
from st_sweeps.sde import SDE

TimeVariable = Literal["auto", "t", "sigma_ratio", "neg_log_snr"]
TIME_VARIABLES: tuple[str, ...] = get_args(TimeVariable)
CONCRETE_TIME_VARIABLES = ("t", "sigma_ratio", "neg_log_snr")  # what "auto" resolves to


@dataclass(frozen=True)
class OdeCoefficients:
    """At integration variable u [B]: SDE time t, x = scale · y, dy/du = alpha y + beta s(x, t)."""

    t: Tensor
    scale: Tensor
    alpha: Tensor
    beta: Tensor


def check_time_variable(variable: str) -> None:
    require(variable in TIME_VARIABLES, "time_variable", f"got {variable!r}", TIME_VARIABLES)


def resolve_time_variable(sde: SDE, variable: TimeVariable) -> TimeVariable:
    """"auto" → "sigma_ratio" when μ(T) = 1 (the VE family), else "t"; other names unchanged."""
    check_time_variable(variable)
    if variable != "auto":
        return variable
    mu_T = sde.mean_scale(torch.tensor([sde.T], dtype=torch.float64))
    return "sigma_ratio" if bool(mu_T == 1.0) else "t"


def state_scale(sde: SDE, variable: TimeVariable, t: Tensor) -> Tensor:
    """x = scale · y: μ(t) for the τ-based variables, 1 in plain t."""
    return torch.ones_like(t) if variable == "t" else sde.mean_scale(t)


def u_of_t(sde: SDE, variable: TimeVariable, t: Tensor) -> Tensor:
    """u(t) [B] for a concrete variable (resolve "auto" first)."""
    require(variable in CONCRETE_TIME_VARIABLES, "time_variable", f"got {variable!r}", CONCRETE_TIME_VARIABLES)
    if variable == "t":
        return t
    rho = sde.neg_log_snr(t)
    return torch.exp(0.5 * rho) if variable == "sigma_ratio" else rho


def coefficients(sde: SDE, variable: TimeVariable, u: Tensor) -> OdeCoefficients:
    """The ODE's coefficients at u [B] (see the module docstring)."""
    if variable == "t":
        return OdeCoefficients(t=u, scale=torch.ones_like(u), alpha=sde.drift_coef(u), beta=-0.5 * sde.g2(u))
    if variable == "sigma_ratio":
        tau = u
        rho = 2 * torch.log(tau)
    else:
        rho = u
        tau = torch.exp(0.5 * rho)
    t = sde.time_from_neg_log_snr(rho)
    sigma = sde.std(t)
    dtau_du = torch.ones_like(tau) if variable == "sigma_ratio" else 0.5 * tau
    return OdeCoefficients(t=t, scale=sde.mean_scale(t), alpha=torch.zeros_like(u), beta=-sigma * dtau_du)
