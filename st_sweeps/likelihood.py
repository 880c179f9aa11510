"""Likelihood evaluation: probability-flow ODE NLL and the SDE's variational bound, in bits/dim.

Pure functions on tensors: every random draw takes an explicit ``torch.Generator``; no I/O.
Shapes: data x [B, *event] (images [B, C, H, W] or [B, D]); D = numel of one example; per-example
values [B]; with repeats [R, B].

Protocols (Kim et al. 2022, "Evaluation protocol"; Song et al. 2021):

* ``ode_log_likelihood``: log p_ε(x) by the instantaneous change of variables along the
  probability-flow ODE dx/dt = f(x, t) − ½ g²(t) s_θ(x, t) from t = ε to T:
      log p_ε(x_ε) = log π(x_T) + ∫_ε^T ∇·(f − ½ g² s_θ)(x_t, t) dt,
  with ∇·f = a(t) D exact (f = a(t) x) and ∇·s_θ exact (autograd, batched VJPs with the D
  basis vectors) or by the Skilling–Hutchinson estimator E_v[vᵀ (∂s_θ/∂x) v] with probes v fixed for
  the whole solve.
* ``residual_nats`` (R̂_ε): the step from ε to 0 as a Gaussian decoder, giving the bound
      −log p(x_0) ≤ E_{q(x_ε|x_0)}[−log p_ε(x_ε) − log p_dec(x_0|x_ε) + log q(x_ε|x_0)].
* ``nll_bits_per_dim``: (a) "paper" = ODE from x_ε plus R̂_ε; (b) the same without R̂_ε;
  (c) "score_sde" = ODE started at x_0 itself at time ε, no residual (the older evaluation).
* Solvers (``LikelihoodConfig.solver``): "fast" (``st_sweeps.likelihood_fast``: a
  per-example step size, the ODE in τ = σ/μ for VE/RVE and in t for VP/sub-VP, batched VJPs
  for several probes or the exact trace, no per-step host synchronisation) or "scipy_exact"
  (the default; ``ode_log_likelihood`` below: one step size for the batch, step for step what
  SciPy's RK45 does in the published evaluator). Both compute the same integral; they differ by
  the ODE solve error, within the tolerances. The fast path is not the default because it is not
  yet faster where it matters (on a CPU: 0.7–1.0× on VP, 1.35× on the RVE U-Net; RESULTS.md).
* ``nelbo_bits_per_dim``: the continuous-time bound of the SDE (Song et al. 2021, Thm 1, in its
  denoising form), with and without R̂_ε.

bits/dim = nats / (D ln 2) + offset, offset = 8 for 8-bit data in [0, 1], 7 in [−1, 1] (log₂ of
the number of bins per unit length: the uniformly dequantized density is a density on bins of
width 1/256, resp. 2/256), and 0 for continuous data.

Dequantization of 8-bit data: uniform (x ← (k + U)/256, the default) or variational (pass a
``st_sweeps.dequantization.Dequantizer`` q as ``dequantizer``): with u ~ q(·|k) and y the
model-space point of (k + u)/256,
    −log P(k) ≤ E_q[−log p(y) + log q(u|k)] + D log(256/a),   a = 1 on [0, 1], 2 on [−1, 1],
so the variational value is the uniform one's estimator plus log q(u|k)/(D ln 2) at the same
offset (uniform q has log q = 0). Results carry ``dequantization`` ("uniform", "variational", or
"none" for continuous data); the variational metrics are keyed ``eval/nll_bpd_vardeq...``.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Literal, Sequence, get_args

import torch
from torch import Tensor

from st_sweeps.dequantization import Dequantizer, levels_from_model_space, model_space_from_levels
from st_sweeps.errors import require, require_positive
from st_sweeps.likelihood_fast import fast_ode_log_likelihood
from st_sweeps.likelihood_time import TIME_VARIABLES, TimeVariable
from st_sweeps.likelihood_trace import divergence_batched
from st_sweeps.ode_solver import solve_ode
from st_sweeps.sde import SDE, broadcast_to

ScoreFn = Callable[[Tensor, Tensor], Tensor]  # (x [B, ...], t [B]) -> score, x's shape
PriorLogp = Callable[[Tensor], Tensor]  # x_T [B, ...] -> log density [B]
TraceKind = Literal["hutchinson_rademacher", "hutchinson_gaussian", "exact"]
TRACE_KINDS: tuple[str, ...] = get_args(TraceKind)
SolverKind = Literal["fast", "scipy_exact"]
SOLVERS: tuple[str, ...] = get_args(SolverKind)

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LikelihoodConfig:
    """Settings of the likelihood evaluation, passed to ``nll_bits_per_dim`` / ``nelbo_bits_per_dim``
    as their ``config`` argument (or field by field as keywords; see ``resolve_config``).

    eps: start time of the ODE / lower end of the bound (Kim et al.: 1e-5).
    rtol, atol: Dormand–Prince tolerances (the published protocol: 1e-5 each).
    trace: divergence of the score: Hutchinson with Rademacher or Gaussian probes, or exact.
    n_probes: Hutchinson probes averaged per function evaluation (1 with ``exact``).
    n_repeats: passes over the same examples with fresh dequantization noise, x_ε, probes and t
        (score_sde passes the test set 5 times).
    max_nfe: evaluation budget of one ODE solve (an error when spent, not a silent result).
    score_sde_protocol: also run the older evaluation (ODE from x_0, no residual); doubles the cost.
    ode_float64: hold the ODE state (and log-density accumulator) in float64; the score is still
        evaluated in the data's dtype.
    solver: "scipy_exact" (the default: one step size for the batch in t, step for step SciPy's
        RK45) or "fast" (per-example steps in ``time_variable``, batched VJPs).
    time_variable: the fast solver's integration variable: "auto" (τ for VE/RVE, t for VP/sub-VP),
        "sigma_ratio" (τ = σ/μ), "neg_log_snr" or "t" (``st_sweeps.likelihood_time``); unused by
        "scipy_exact".
    """

    eps: float = 1e-5
    rtol: float = 1e-5
    atol: float = 1e-5
    trace: TraceKind = "hutchinson_rademacher"
    n_probes: int = 1
    n_repeats: int = 1
    max_nfe: int = 100_000
    score_sde_protocol: bool = True
    ode_float64: bool = False
    solver: SolverKind = "scipy_exact"
    time_variable: TimeVariable = "auto"

    def __post_init__(self) -> None:
        require_positive(self.eps, "eps")
        require_positive(self.rtol, "rtol")
        require_positive(self.atol, "atol")
        require(self.trace in TRACE_KINDS, "trace", f"got {self.trace!r}", TRACE_KINDS)
        require(isinstance(self.n_probes, int) and self.n_probes >= 1, "n_probes", f"got {self.n_probes!r}",
                "an integer >= 1")
        require(self.trace != "exact" or self.n_probes == 1, "n_probes",
                f"the exact trace uses no probes, got n_probes={self.n_probes!r}", "1 when trace is 'exact'")
        require(isinstance(self.n_repeats, int) and self.n_repeats >= 1, "n_repeats", f"got {self.n_repeats!r}",
                "an integer >= 1")
        require(isinstance(self.max_nfe, int) and self.max_nfe >= 1, "max_nfe", f"got {self.max_nfe!r}",
                "an integer >= 1")
        require(self.solver in SOLVERS, "solver", f"got {self.solver!r}", SOLVERS)
        require(self.time_variable in TIME_VARIABLES, "time_variable", f"got {self.time_variable!r}", TIME_VARIABLES)


# --------------------------------------------------------------------------------------------
# Small helpers: noise on the right device, dequantization, bits/dim
# --------------------------------------------------------------------------------------------
def _gen_device(generator: torch.Generator) -> torch.device:
    return torch.device(generator.device)


def _randn(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    z = torch.randn(tuple(shape), generator=generator, device=_gen_device(generator), dtype=like.dtype)
    return z.to(like.device)


def _rand(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    u = torch.rand(tuple(shape), generator=generator, device=_gen_device(generator), dtype=like.dtype)
    return u.to(like.device)


def _full_t(t: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _dim(x: Tensor) -> int:
    return x[0].numel()


def bin_offset_bits(discrete: bool, centered: bool) -> float:
    """log₂ of the number of 8-bit bins per unit length: 8 on [0, 1], 7 on [−1, 1]; 0 if continuous."""
    if not discrete:
        return 0.0
    return 7.0 if centered else 8.0


def to_bits_per_dim(nll_nats: Tensor, dim: int, *, discrete: bool, centered: bool) -> Tensor:
    """bits/dim = nats / (D ln 2) + offset (see ``bin_offset_bits``)."""
    return nll_nats / (dim * LN2) + bin_offset_bits(discrete, centered)


def dequantize(x: Tensor, *, centered: bool, generator: torch.Generator) -> Tensor:
    """Uniform dequantization of 8-bit data given in model space.

    x holds k/255 (centered=False, [0, 1]) or 2k/255 − 1 (centered=True, [−1, 1]) for integers
    k in 0..255; returns (k + U)/256 with U ~ U[0, 1) elementwise (i.e. (255 x + U)/256 in [0, 1]
    coordinates), mapped back to the same range: each value stays inside its bin
    [k/256, (k+1)/256). Raises ValueError when x is not on the 8-bit grid (e.g. already
    dequantized or continuous data), rather than silently rounding it.
    """
    k = levels_from_model_space(x, centered=centered)
    return model_space_from_levels(k, _rand(x.shape, generator, x), centered=centered)


def dequantize_variational(x: Tensor, dequantizer: Dequantizer, *, centered: bool,
                           generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Variational dequantization of 8-bit data in model space (as ``dequantize``): returns
    y = (k + u)/256 in model space with u ~ q(·|k), and log q(u|k) [B] in nats (no gradient).
    Add log q to −log p(y) for the bound on −log P(k) (module docstring); the bits/dim offset is
    unchanged. A dequantizer at its zero initialisation reproduces ``dequantize`` (same draws)."""
    k = levels_from_model_space(x, centered=centered)
    with torch.no_grad():
        u, log_q = dequantizer.sample(k, generator)
    return model_space_from_levels(k, u.to(x.dtype), centered=centered), log_q.to(x.dtype)


# --------------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------------
def sample_probes(shape: Sequence[int], trace: TraceKind, n_probes: int, generator: torch.Generator,
                  like: Tensor) -> Tensor | None:
    """Hutchinson probes [n_probes, *shape] (Rademacher ±1 or standard normal); None for ``exact``."""
    require(trace in TRACE_KINDS, "trace", f"got {trace!r}", TRACE_KINDS)
    if trace == "exact":
        return None
    full = (n_probes, *shape)
    if trace == "hutchinson_gaussian":
        return _randn(full, generator, like)
    bits = torch.randint(0, 2, full, generator=generator, device=_gen_device(generator))
    return (bits * 2 - 1).to(dtype=like.dtype, device=like.device)


def divergence_fn(fn: Callable[[Tensor], Tensor], x: Tensor, *, trace: TraceKind,
                  probes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(fn(x), ∇·fn(x)) per example, both detached; x [B, ...], fn maps [B, ...] -> [B, ...].

    ``exact``: tr(∂fn/∂x) by batched VJPs with the basis vectors (``likelihood_trace``; for
    low-dimensional data: D cotangents per evaluation).
    ``hutchinson_*``: the Skilling–Hutchinson estimate mean_j v_jᵀ (∂fn/∂x) v_j over the probes
    [n_probes, B, ...] (E[v vᵀ] = I for both Rademacher and Gaussian v), as one batched VJP.
    Assumes fn treats the examples of the batch independently (no batch statistics).
    """
    require(trace in TRACE_KINDS, "trace", f"got {trace!r}", TRACE_KINDS)
    if trace != "exact" and probes is None:
        raise ValueError(f"divergence_fn: trace={trace!r} needs probes (see sample_probes)")
    out, div = divergence_batched(fn, x, None if trace == "exact" else probes)
    return out, div.mean(0)


# --------------------------------------------------------------------------------------------
# Probability-flow ODE log-likelihood
# --------------------------------------------------------------------------------------------
def ode_log_likelihood(score_fn: ScoreFn, sde: SDE, x: Tensor, *, eps: float,
                       prior_logp: PriorLogp | None = None, trace: TraceKind = "hutchinson_rademacher",
                       n_probes: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
                       generator: torch.Generator | None = None, probes: Tensor | None = None,
                       max_nfe: int = 100_000, ode_float64: bool = False) -> tuple[Tensor, Tensor, int]:
    """log p_ε(x) [B] in nats, x_T [B, ...], and the number of score evaluations.

    Integrates, as one flat state [B·D + B], the probability-flow ODE and the divergence
        dx/dt = a(t) x − ½ g²(t) s_θ(x, t),   dℓ/dt = a(t) D − ½ g²(t) ∇·s_θ(x, t)
    from t = ε (x_ε = x, ℓ = 0) to T, and returns log p_ε(x) = log π(x_T) + ℓ(T) (Song et al.
    2021, eq. 39-40; Chen et al. 2018). ``prior_logp`` defaults to the SDE's prior N(0, σ_p² I);
    pass a fitted auxiliary prior for a short T. Hutchinson probes are drawn once per solve from
    ``generator`` (or passed as ``probes`` [n_probes, B, ...]) and held fixed during the solve.
    """
    sde.check_time_range(eps)
    require(trace != "exact" or probes is None, "probes", "given with trace='exact', which uses none", "None")
    if probes is None and trace != "exact":
        require(generator is not None, "generator", "needed to draw Hutchinson probes", "a torch.Generator")
        probes = sample_probes(x.shape, trace, n_probes, generator, x)
    model_dtype = x.dtype
    state_dtype = torch.float64 if ode_float64 else x.dtype
    b, d = x.shape[0], _dim(x)
    shape = x.shape

    def func(t: float, state: Tensor) -> Tensor:
        xs = state[: b * d].reshape(shape).to(model_dtype)
        tt = _full_t(t, xs)
        score, div_s = divergence_fn(lambda y: score_fn(y, tt), xs, trace=trace, probes=probes)
        a, g2 = sde.drift_coef(tt), sde.g2(tt)
        dx = broadcast_to(a, xs) * xs - 0.5 * broadcast_to(g2, xs) * score
        dlogp = a * d - 0.5 * g2 * div_s
        return torch.cat([dx.reshape(-1), dlogp]).to(state_dtype)

    y0 = torch.cat([x.detach().reshape(-1), torch.zeros(b, dtype=x.dtype, device=x.device)]).to(state_dtype)
    with torch.no_grad():
        sol = solve_ode(func, y0, eps, sde.T, rtol=rtol, atol=atol, max_nfe=max_nfe)
        x_T = sol.y[: b * d].reshape(shape)
        delta = sol.y[b * d:]
        prior = sde.prior_logp if prior_logp is None else prior_logp
        logp = prior(x_T).to(state_dtype) + delta
    return logp, x_T, sol.nfe


@dataclass(frozen=True)
class OdeSolve:
    """One solve by the configured solver: logp [B] (nats), nfe (network calls), probe_stderr [B]
    (nats; NaN unless the fast solver ran with n_probes ≥ 2)."""

    logp: Tensor
    nfe: int
    probe_stderr: Tensor


def solve_log_likelihood(score_fn: ScoreFn, sde: SDE, x: Tensor, cfg: LikelihoodConfig, *,
                         generator: torch.Generator, prior_logp: PriorLogp | None = None) -> OdeSolve:
    """log p_ε(x) with ``cfg``'s solver, trace and tolerances; fresh probes from ``generator``."""
    probes = sample_probes(x.shape, cfg.trace, cfg.n_probes, generator, x)
    if cfg.solver == "scipy_exact":
        logp, _, nfe = ode_log_likelihood(score_fn, sde, x, eps=cfg.eps, prior_logp=prior_logp, trace=cfg.trace,
                                          probes=probes, rtol=cfg.rtol, atol=cfg.atol, max_nfe=cfg.max_nfe,
                                          ode_float64=cfg.ode_float64)
        return OdeSolve(logp=logp, nfe=nfe, probe_stderr=torch.full_like(logp, math.nan))
    r = fast_ode_log_likelihood(score_fn, sde, x, eps=cfg.eps, probes=probes, prior_logp=prior_logp, rtol=cfg.rtol,
                                atol=cfg.atol, max_nfe=cfg.max_nfe, ode_float64=cfg.ode_float64,
                                time_variable=cfg.time_variable)
    return OdeSolve(logp=r.logp, nfe=r.nfe, probe_stderr=r.probe_stderr)


# --------------------------------------------------------------------------------------------
# Residual (decoder) term R̂_ε
# --------------------------------------------------------------------------------------------
def _score_grad(differentiable: bool):
    """no_grad for evaluation; the caller's autograd mode when the bound must be differentiable."""
    return nullcontext() if differentiable else torch.no_grad()


def residual_nats(score_fn: ScoreFn, sde: SDE, x0: Tensor, z: Tensor, eps: float, *,
                  differentiable: bool = False) -> Tensor:
    """One-sample estimate of R_ε = E_q[log q(x_ε|x_0) − log p_dec(x_0|x_ε)] in nats, [B].

    With x_ε = μ x_0 + σ z (μ = μ(ε), σ = σ(ε)), q(x_ε|x_0) = N(μ x_0, σ² I) and the decoder
    p_dec(x_0|x_ε) = N(x_0; (x_ε + σ² s_θ(x_ε, ε))/μ, (σ/μ)² I) (Tweedie's mean), the residual
    −log p_dec + log q at the sample is
        x_0 − mean = −(σ z + σ² s)/μ, so μ²‖x_0 − mean‖²/σ² = ‖z + σ s‖², and
        R̂_ε = [D/2 log(2π σ²/μ²) + ½‖z + σ s_θ(x_ε, ε)‖²] − [D/2 log(2π σ²) + ½‖z‖²]
            = −D log μ + ½‖z + σ s_θ(x_ε, ε)‖² − ½‖z‖².
    The log q term is taken at the same z (its mean −½D is "minus the entropy" of q, −H = −D/2
    log(2πeσ²)); the shared z cancels most of the variance of ‖z + σ s‖². Adding R̂_ε to
    −log p_ε(x_ε) gives an unbiased estimate of the variational bound on −log p(x_0).
    ``differentiable``: evaluate s_θ under the caller's autograd mode (gradients reach x_0),
    else under no_grad.
    """
    sde.check_time_range(eps)
    t = _full_t(eps, x0)
    mu, sigma = sde.mean_scale(t), sde.std(t)
    x_eps = sde.perturb(x0, t, z)
    with _score_grad(differentiable):
        s = score_fn(x_eps, t)
    d = _dim(x0)
    fit = (z + broadcast_to(sigma, z) * s).reshape(x0.shape[0], -1).pow(2).sum(1)
    ent = z.reshape(x0.shape[0], -1).pow(2).sum(1)
    return -d * torch.log(mu) + 0.5 * fit - 0.5 * ent


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
def _mean(v: Tensor) -> float:
    return float(v.double().mean())


def _stderr_examples(v: Tensor) -> float:
    """Std. error of the overall mean: per-example means over repeats, then std/√B (NaN if B < 2)."""
    per_example = v.double().mean(0)
    n = per_example.numel()
    return float(per_example.std(unbiased=True) / math.sqrt(n)) if n >= 2 else math.nan


def _stderr_repeats(v: Tensor) -> float:
    """Monte-Carlo std. error over repeats (same examples, fresh noise): NaN if R < 2."""
    per_repeat = v.double().mean(1)
    n = per_repeat.numel()
    return float(per_repeat.std(unbiased=True) / math.sqrt(n)) if n >= 2 else math.nan


def _key_tag(dequantization: str) -> str:
    """Metric-key infix: uniform (and continuous data) keep the plain keys."""
    return "_vardeq" if dequantization == "variational" else ""


def _same_dequantization(results: Sequence) -> str:
    kinds = {r.dequantization for r in results}
    require(len(kinds) == 1, "results", f"mixes dequantizations {sorted(kinds)}", "results of one dequantization")
    return kinds.pop()


@dataclass(frozen=True)
class _Bound:
    """A bound in bits/dim with and without the residual term, per repeat and example ([R, B]
    each, on the CPU), and the five metric keys the NLL and the NELBO share (metrics._bound)."""

    with_residual: Tensor
    without_residual: Tensor

    @property
    def n_examples(self) -> int:
        return self.with_residual.shape[1]

    @property
    def n_repeats(self) -> int:
        return self.with_residual.shape[0]

    @property
    def bpd_with_residual(self) -> float:
        return _mean(self.with_residual)

    @property
    def bpd_without_residual(self) -> float:
        return _mean(self.without_residual)

    @property
    def stderr(self) -> float:
        """Std. error of ``bpd_with_residual`` over examples (each averaged over its repeats)."""
        return _stderr_examples(self.with_residual)

    @property
    def mc_stderr(self) -> float:
        """Std. error of ``bpd_with_residual`` over repeats only (the Monte-Carlo part)."""
        return _stderr_repeats(self.with_residual)

    def _bound_metrics(self, key: str) -> dict[str, float]:
        return {
            key: self.bpd_with_residual,
            f"{key}_no_residual": self.bpd_without_residual,
            f"{key}_stderr": self.stderr,
            f"{key}_no_residual_stderr": _stderr_examples(self.without_residual),
            f"{key}_mc_stderr": self.mc_stderr,
        }


@dataclass(frozen=True)
class NllResult(_Bound):
    """Probability-flow ODE NLL in bits/dim, per repeat and example ([R, B] each, on the CPU).

    with_residual: "paper" protocol (ODE from x_ε plus R̂_ε); without_residual: −log p_ε(x_ε) only;
    score_sde: ODE started at x_0, no residual (None when not computed). nfe: total score-network
    calls over all solves (a fast-solver call evaluates only the examples still running);
    n_solves: number of ODE solves. probe_stderr [R, B] (bits/dim, or None): the Hutchinson
    standard error of each example's ODE term over its probes (fast solver, n_probes ≥ 2). dequantization: "uniform",
    "variational" (metric keys ``eval/nll_bpd_vardeq...``, ``eval/nfe_nll_vardeq...``) or "none"
    (continuous data). Use ``concat`` to merge batches.
    """

    score_sde: Tensor | None
    nfe: int
    n_solves: int
    dequantization: str = "uniform"
    probe_stderr: Tensor | None = None

    @property
    def bpd_score_sde(self) -> float:
        return math.nan if self.score_sde is None else _mean(self.score_sde)

    @property
    def probe_stderr_of_mean(self) -> float:
        """The Hutchinson part of the error of ``bpd_with_residual``, from each example's spread
        over its probes: sqrt(Σ se²) / (R·B) over the R×B per-example errors (NaN without them)."""
        if self.probe_stderr is None:
            return math.nan
        se = self.probe_stderr.double()
        return float(se.square().sum().sqrt() / se.numel())

    def as_metrics(self) -> dict[str, float]:
        """Fixed keys; NaN marks a value not computed (score_sde off) or undefined (one example).
        Variational dequantization inserts ``_vardeq`` (``eval/nll_bpd_vardeq``, ...)."""
        tag = _key_tag(self.dequantization)
        bpd = f"eval/nll_bpd{tag}"
        return {
            **self._bound_metrics(bpd),
            f"{bpd}_score_sde": self.bpd_score_sde,
            f"{bpd}_score_sde_stderr": math.nan if self.score_sde is None else _stderr_examples(self.score_sde),
            f"{bpd}_probe_stderr": self.probe_stderr_of_mean,
            f"eval/nfe_nll{tag}": float(self.nfe),
            f"eval/nfe_nll{tag}_per_solve": self.nfe / self.n_solves if self.n_solves else math.nan,
            f"eval/nll{tag}_examples": float(self.n_examples),
        }

    @staticmethod
    def concat(results: Sequence["NllResult"]) -> "NllResult":
        """Merge results on disjoint batches (same n_repeats and dequantization) along the example axis."""
        require(len(results) > 0, "results", "nothing to merge", "one or more NllResult")
        has_sde = all(r.score_sde is not None for r in results)
        return NllResult(
            with_residual=torch.cat([r.with_residual for r in results], 1),
            without_residual=torch.cat([r.without_residual for r in results], 1),
            score_sde=torch.cat([r.score_sde for r in results], 1) if has_sde else None,  # type: ignore[misc]
            nfe=sum(r.nfe for r in results), n_solves=sum(r.n_solves for r in results),
            dequantization=_same_dequantization(results),
            probe_stderr=(torch.cat([r.probe_stderr for r in results], 1)  # type: ignore[misc]
                          if all(r.probe_stderr is not None for r in results) else None))


@dataclass(frozen=True)
class NelboResult(_Bound):
    """Negative ELBO of the SDE in bits/dim, per repeat and example ([R, B] each, on the CPU);
    ``dequantization`` as in ``NllResult`` (keys ``eval/nelbo_bpd_vardeq...`` when variational)."""

    dequantization: str = "uniform"

    def as_metrics(self) -> dict[str, float]:
        return self._bound_metrics(f"eval/nelbo_bpd{_key_tag(self.dequantization)}")

    @staticmethod
    def concat(results: Sequence["NelboResult"]) -> "NelboResult":
        require(len(results) > 0, "results", "nothing to merge", "one or more NelboResult")
        return NelboResult(with_residual=torch.cat([r.with_residual for r in results], 1),
                           without_residual=torch.cat([r.without_residual for r in results], 1),
                           dequantization=_same_dequantization(results))


# --------------------------------------------------------------------------------------------
# NLL in bits/dim (the three protocols)
# --------------------------------------------------------------------------------------------
def _prepare(x0: Tensor, discrete: bool, centered: bool, generator: torch.Generator,
             dequantizer: Dequantizer | None) -> tuple[Tensor, Tensor]:
    """(dequantized x, log q(u|k) [B] in nats): log q = 0 for uniform dequantization and for
    continuous data (passed through unchanged)."""
    require(dequantizer is None or discrete, "dequantizer", "given for continuous data (discrete=False)",
            "None unless the data are 8-bit (discrete=True)")
    if dequantizer is not None:
        return dequantize_variational(x0, dequantizer, centered=centered, generator=generator)
    x = dequantize(x0, centered=centered, generator=generator) if discrete else x0
    return x, torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)


def dequantization_label(discrete: bool, dequantizer: Dequantizer | None) -> str:
    """The ``dequantization`` label of a result: variational, uniform, or none (continuous data)."""
    return "none" if not discrete else ("uniform" if dequantizer is None else "variational")


def dequantized_nll_bits_per_dim(log_density_fn: Callable[[Tensor], Tensor], x0: Tensor, *, centered: bool,
                                 generator: torch.Generator, dequantizer: Dequantizer | None = None) -> Tensor:
    """One-sample bound on −log₂ P(k)/D [B] for a model with a closed-form density
    ``log_density_fn(y) -> [B]`` in model space, 8-bit x0 (as ``dequantize``):
        (−log p(y) + log q(u|k)) / (D ln 2) + log₂(256/a),  y from ``_prepare``
    (uniform q when ``dequantizer`` is None). The same dequantization and offset as
    ``nll_bits_per_dim``, with the ODE replaced by the exact density."""
    x, log_q = _prepare(x0, True, centered, generator, dequantizer)
    with torch.no_grad():
        nats = -log_density_fn(x) + log_q
    return to_bits_per_dim(nats, _dim(x0), discrete=True, centered=centered)


def resolve_config(config: LikelihoodConfig | None, settings: dict) -> LikelihoodConfig:
    """``config`` (default: LikelihoodConfig()) with any fields in ``settings`` replaced, validated.
    Unknown setting names raise ConfigError listing the fields."""
    base = LikelihoodConfig() if config is None else config
    allowed = [f.name for f in dataclasses.fields(LikelihoodConfig)]
    for name in settings:
        require(name in allowed, name, "not a likelihood setting", allowed)
    return dataclasses.replace(base, **settings) if settings else base


def nll_bits_per_dim(score_fn: ScoreFn, sde: SDE, x0: Tensor, config: LikelihoodConfig | None = None, *,
                     discrete: bool, centered: bool, generator: torch.Generator,
                     prior_logp: PriorLogp | None = None, dequantizer: Dequantizer | None = None,
                     **settings) -> NllResult:
    """NLL of x0 (model space, [0, 1] or [−1, 1]; 8-bit values when ``discrete``) in bits/dim.

    Settings (eps, rtol, atol, trace, n_probes, n_repeats, max_nfe, score_sde_protocol,
    ode_float64, solver, time_variable) come from ``config`` and/or keywords, e.g. ``nll_bits_per_dim(s, sde, x, eps=1e-5,
    discrete=True, centered=True, generator=g)`` or ``nll_bits_per_dim(s, sde, x, cfg, ...)``.

    Per repeat: x ← dequantize(x0) if discrete (fresh U), z ~ N(0, I), x_ε = μ(ε) x + σ(ε) z, and
      (a) with residual ("paper"):  −log π(x_T) − ∫_ε^T ∇·(pf drift) dt + R̂_ε(x, z)   (ODE from x_ε)
      (b) without residual:         −log p_ε(x_ε)                                    (same solve)
      (c) score_sde:                −log p_ε(x)                                      (ODE from x itself)
    each converted by ``to_bits_per_dim``. Hutchinson probes are fresh per solve.
    With a ``dequantizer`` q (8-bit data only): x = (k + u)/256 with u ~ q(·|k), and log q(u|k) is
    added to each of (a)–(c) before the conversion — the variational-dequantization bound of the
    module docstring, at the same offset; the result is labelled ``dequantization="variational"``.
    """
    cfg = resolve_config(config, settings)
    eps, n_repeats, score_sde_protocol = cfg.eps, cfg.n_repeats, cfg.score_sde_protocol
    sde.check_time_range(eps)
    d = _dim(x0)
    rows_a, rows_b, rows_c, rows_se = [], [], [], []
    nfe = n_solves = 0
    for _ in range(n_repeats):
        x, log_q = _prepare(x0, discrete, centered, generator, dequantizer)
        z = _randn(x.shape, generator, x)
        x_eps = sde.perturb(x, _full_t(eps, x), z)
        solve = solve_log_likelihood(score_fn, sde, x_eps, cfg, generator=generator, prior_logp=prior_logp)
        logp_eps = solve.logp
        nfe, n_solves = nfe + solve.nfe, n_solves + 1
        rows_se.append(solve.probe_stderr / (d * LN2))
        res = residual_nats(score_fn, sde, x, z, eps).to(logp_eps.dtype)
        log_q = log_q.to(logp_eps.dtype)
        rows_a.append(to_bits_per_dim(-logp_eps + res + log_q, d, discrete=discrete, centered=centered))
        rows_b.append(to_bits_per_dim(-logp_eps + log_q, d, discrete=discrete, centered=centered))
        if score_sde_protocol:
            solve_x = solve_log_likelihood(score_fn, sde, x, cfg, generator=generator, prior_logp=prior_logp)
            logp_x = solve_x.logp
            nfe, n_solves = nfe + solve_x.nfe, n_solves + 1
            rows_c.append(to_bits_per_dim(-logp_x + log_q.to(logp_x.dtype), d, discrete=discrete, centered=centered))
    stack = lambda rows: torch.stack(rows).double().cpu()  # noqa: E731
    return NllResult(with_residual=stack(rows_a), without_residual=stack(rows_b),
                     score_sde=stack(rows_c) if score_sde_protocol else None, nfe=nfe, n_solves=n_solves,
                     dequantization=dequantization_label(discrete, dequantizer),
                     probe_stderr=stack(rows_se) if bool(torch.stack(rows_se).isfinite().all()) else None)


# --------------------------------------------------------------------------------------------
# NELBO of the SDE
# --------------------------------------------------------------------------------------------
def importance_times(sde: SDE, eps: float, n: int, generator: torch.Generator, like: Tensor) -> tuple[Tensor, Tensor]:
    """t [n] with density p(t) = (g²/σ²)/Z on [ε, T] (neg_log_snr uniform), and 1/p(t) = Z σ²/g²,
    where Z = neg_log_snr(T) − neg_log_snr(ε) (d/dt neg_log_snr = g²/σ² for every SDE here)."""
    ends = torch.tensor([eps, sde.T], dtype=like.dtype, device=like.device)
    lam_lo, lam_hi = sde.neg_log_snr(ends).unbind()
    u = _rand((n,), generator, like)
    t = sde.time_from_neg_log_snr(lam_lo + (lam_hi - lam_lo) * u).clamp(eps, sde.T)
    inv_density = (lam_hi - lam_lo) * sde.std(t) ** 2 / sde.g2(t)
    return t, inv_density


def _expected_gaussian_prior_nats(sde: SDE, x0: Tensor) -> Tensor:
    """E_{x_T ~ N(μ_T x0, σ_T² I)}[−log N(x_T; 0, σ_p² I)] in closed form, [B]:
    D/2 log(2π σ_p²) + (μ_T² ‖x0‖² + D σ_T²) / (2 σ_p²)."""
    t = _full_t(sde.T, x0)
    mu, sigma = sde.mean_scale(t), sde.std(t)
    d, s2 = _dim(x0), sde.prior_std ** 2
    sq = x0.reshape(x0.shape[0], -1).pow(2).sum(1)
    return 0.5 * d * math.log(2 * math.pi * s2) + (mu ** 2 * sq + d * sigma ** 2) / (2 * s2)


def nelbo_nats(score_fn: ScoreFn, sde: SDE, x0: Tensor, *, eps: float, generator: torch.Generator,
               prior_logp: PriorLogp | None = None, differentiable: bool = False) -> tuple[Tensor, Tensor]:
    """One-sample estimates [B] of the SDE's bound on E_{q(x_ε|x_0)}[−log p_ε(x_ε)] (without
    residual) and on −log p(x_0) (with R̂_ε), in nats.

    Song et al. 2021 (Thm 1, denoising form) on [ε, T] with the kernel from x_0,
    x_t = μ_t x_0 + σ_t z, ∇log p_{0t}(x_t|x_0) = −z/σ_t, ∇·f = a(t) D:
        E_q[−log p_ε(x_ε)] ≤ E[−log π(x_T)] + ½ ∫_ε^T g² (E‖s_θ(x_t, t) + z/σ_t‖² − D/σ_t²) dt
                             − D ∫_ε^T a(t) dt.
    (Girsanov: KL of the conditional forward path on [ε, T] from the model's reverse path is
    KL(q_T‖π) + ½∫g² E‖s_θ + z/σ‖²; data processing bounds KL(q_ε‖p_ε) by it; adding the
    entropy H(q_ε) and using ½∫ g²/σ² + a = log(σ_T/σ_ε) (since dσ²/dt = 2aσ² + g²) turns
    −H(q_T) + H(q_ε) into the −D/σ² and −D∫a terms above.)
    Estimator: t from ``importance_times`` (one per example), so ½ g² (1/p(t)) (‖s + z/σ‖² − D/σ²)
    = ½ Z (‖σ_t s_θ + z‖² − D); −D∫_ε^T a dt = −D log(μ_T/μ_ε) exactly. The prior term is exact
    (closed form above) for the SDE's Gaussian prior, and a one-sample estimate −log prior(x_T)
    with x_T ~ q(x_T|x_0) when ``prior_logp`` is given. With residual: + R̂_ε(x_0, z') with a
    fresh z' (``residual_nats``). No divergence (hence no probe) is needed in this form.
    ``differentiable``: s_θ is evaluated under the caller's autograd mode, so both bounds are
    differentiable in x_0 (reparameterised in t, z); used to fit a variational dequantizer with
    the score model frozen (as Song et al. 2021 fit theirs to this bound). Default: no gradient
    through s_θ.
    """
    sde.check_time_range(eps)
    b, d = x0.shape[0], _dim(x0)
    t, inv_p = importance_times(sde, eps, b, generator, x0)
    z = _randn(x0.shape, generator, x0)
    x_t = sde.perturb(x0, t, z)
    with _score_grad(differentiable):
        s = score_fn(x_t, t)
    sq = (broadcast_to(sde.std(t), z) * s + z).reshape(b, -1).pow(2).sum(1)
    # ½ g² (1/p) (‖s + z/σ‖² − D/σ²) with 1/p = Z σ²/g²; written with inv_p to keep the general form
    diffusion_term = 0.5 * sde.g2(t) * inv_p * (sq - d) / sde.std(t) ** 2
    ends = torch.tensor([eps, sde.T], dtype=x0.dtype, device=x0.device)
    log_mu_eps, log_mu_T = torch.log(sde.mean_scale(ends)).unbind()
    drift_term = -d * (log_mu_T - log_mu_eps)
    if prior_logp is None:
        prior_term = _expected_gaussian_prior_nats(sde, x0)
    else:
        tT = _full_t(sde.T, x0)
        x_T = sde.perturb(x0, tT, _randn(x0.shape, generator, x0))
        prior_term = -prior_logp(x_T)
    without = prior_term + diffusion_term + drift_term
    z_eps = _randn(x0.shape, generator, x0)
    with_res = without + residual_nats(score_fn, sde, x0, z_eps, eps, differentiable=differentiable)
    return without, with_res


def nelbo_bits_per_dim(score_fn: ScoreFn, sde: SDE, x0: Tensor, config: LikelihoodConfig | None = None, *,
                       discrete: bool, centered: bool, generator: torch.Generator,
                       prior_logp: PriorLogp | None = None, dequantizer: Dequantizer | None = None,
                       **settings) -> NelboResult:
    """NELBO (``nelbo_nats``) in bits/dim, with fresh dequantization, t, z per repeat.

    Uses the settings ``eps`` and ``n_repeats`` (from ``config`` and/or keywords, as in
    ``nll_bits_per_dim``); the ODE settings do not apply (no solve, no divergence). With a
    ``dequantizer``: variational dequantization, log q(u|k) added as in ``nll_bits_per_dim``.
    """
    cfg = resolve_config(config, settings)
    eps, n_repeats = cfg.eps, cfg.n_repeats
    d = _dim(x0)
    rows_with, rows_without = [], []
    for _ in range(n_repeats):
        x, log_q = _prepare(x0, discrete, centered, generator, dequantizer)
        without, with_res = nelbo_nats(score_fn, sde, x, eps=eps, generator=generator, prior_logp=prior_logp)
        rows_with.append(to_bits_per_dim(with_res + log_q, d, discrete=discrete, centered=centered))
        rows_without.append(to_bits_per_dim(without + log_q, d, discrete=discrete, centered=centered))
    return NelboResult(with_residual=torch.stack(rows_with).double().cpu(),
                       without_residual=torch.stack(rows_without).double().cpu(),
                       dequantization=dequantization_label(discrete, dequantizer))
