"""What an evaluation's likelihood runs with (``eval.likelihood``): how many test examples, how
many passes, the trace estimator, the ODE solver and its tolerances, and the dequantization.

The solver settings are those of ``LikelihoodConfig`` (st_sweeps/likelihood.py), with its defaults:
``LikelihoodSettings`` only adds what an evaluation decides around the solve (examples, the
NELBO's own number of passes, the dequantization) and takes ε from ``truncation.eps``, so the NLL
starts where the model's training starts and ε has one home.

``dequantization`` is a registry, like ``eval.sampler``: ``uniform`` (no settings) or
``variational`` with the settings of fitting q(u|x) (st_sweeps/dequantization.py), so a
dequantizer setting on a uniform evaluation is an error, not a silently unused number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from st_sweeps.config import Registry
from st_sweeps.errors import ConfigError, require, require_positive
from st_sweeps.likelihood import LikelihoodConfig, SolverKind, TraceKind
from st_sweeps.likelihood_time import TimeVariable

_DEFAULTS = LikelihoodConfig()


class Dequantization:
    registry: ClassVar[Registry["Dequantization"]] = Registry("dequantization")

    @property
    def name(self) -> str:
        return type(self).registry_name  # type: ignore[attr-defined]


@Dequantization.registry.register("uniform")
@dataclass(frozen=True)
class UniformDequantization(Dequantization):
    """x + u with u ~ U[0, 1)^D per 8-bit level (the published protocol's uniform figure)."""


@Dequantization.registry.register("variational")
@dataclass(frozen=True)
class VariationalDequantization(Dequantization):
    """Besides the uniform figures, fit q(u|x) on training data against the frozen EMA model's
    ELBO and report eval/nll_bpd_vardeq and eval/nelbo_bpd_vardeq (8-bit data only)."""

    steps: int = 1000  # Adam steps fitting q
    lr: float = 1e-3
    batch_size: int = 64
    hidden: int = 32  # channels (images) or units (flat data) of q's network

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "hidden"):
            require(getattr(self, name) >= 1, name, f"got {getattr(self, name)!r}", "an integer >= 1")
        require_positive(self.lr, "lr")


@dataclass(frozen=True)
class LikelihoodSettings:
    examples: int = 64  # test examples for NLL and NELBO (0 skips both)
    repeats: int = _DEFAULTS.n_repeats  # NLL passes over dequantization noise, x_ε and probes
    nelbo_repeats: int = 4  # NELBO passes (its Monte-Carlo error is larger than the NLL's)
    trace: TraceKind = _DEFAULTS.trace
    probes: int = _DEFAULTS.n_probes
    rtol: float = _DEFAULTS.rtol
    atol: float = _DEFAULTS.atol
    # scipy_exact: step for step SciPy's RK45 (the published evaluator's solver, one step size per
    # batch); fast: per-example step sizes in time_variable, batched VJPs: more accurate at equal
    # tolerances, not faster at equal error on a CPU (benchmarks/RESULTS.md)
    solver: SolverKind = _DEFAULTS.solver
    time_variable: TimeVariable = _DEFAULTS.time_variable
    dequantization: Dequantization = field(default_factory=UniformDequantization)

    def __post_init__(self) -> None:
        require(self.examples >= 0, "examples", f"got {self.examples!r}", "an integer >= 0 (0: no likelihood)")
        require(self.nelbo_repeats >= 1, "nelbo_repeats", f"got {self.nelbo_repeats!r}", "an integer >= 1")
        self.ode_config(_DEFAULTS.eps)  # the solver's own checks, with these field names

    def ode_config(self, eps: float) -> LikelihoodConfig:
        """The NLL's solve from ``eps`` (the model's ``truncation.eps``)."""
        return self._config(eps, self.repeats)

    def nelbo_config(self, eps: float) -> LikelihoodConfig:
        """The NELBO's: the same trace estimator, ``nelbo_repeats`` passes (it solves no ODE)."""
        return self._config(eps, self.nelbo_repeats)

    def _config(self, eps: float, repeats: int) -> LikelihoodConfig:
        renamed = {"n_repeats": "repeats", "n_probes": "probes"}
        try:
            return LikelihoodConfig(eps=eps, rtol=self.rtol, atol=self.atol, trace=self.trace,
                                    n_probes=self.probes, n_repeats=repeats, solver=self.solver,
                                    time_variable=self.time_variable)
        except ConfigError as e:  # it names LikelihoodConfig's field: give this config's name
            raise ConfigError(renamed.get(e.field, e.field), e.problem, e.allowed) from None
