"""Samplers for a score model: reverse-SDE predictor–corrector, Euler–Maruyama, probability-flow ODE.

Pure functions over tensors with an explicit ``torch.Generator``; no I/O. Every sampler
integrates from ``T`` down to ``eps`` and returns ``SampleResult(x, nfe)`` where ``nfe`` counts
the calls to ``score_fn`` exactly (one per predictor step, one per corrector step, one for the
final denoising step, one per ODE right-hand-side evaluation).

Shapes: x [B, ...] (images [B, C, H, W], low-dimensional data [B, D]); times passed to
``score_fn`` are [B] tensors in x's dtype; grids are float64 [n_steps + 1].

Time grids (``time_grid``): linear in t for vp / subvp / ve; linear in 1/t for the reciprocal VE
SDE, where log σ is linear in 1/t, so a grid uniform in 1/t is uniform in log σ. A grid linear in
t there puts almost every step at σ ≈ σ_max (with ε = 1e-5 and 1,000 steps, 99.9 % of the grid
points have σ > 0.9 σ_max), which is one of the defects of the official RVE sampler.

Discretisation between two grid points s < t (the step goes t → s, h = t − s > 0). Every SDE here
has a linear drift and a Gaussian kernel x_t = μ(t) x_0 + σ(t) z, so the *exact* forward
transition from s to t is
    x_t = a x_s + G ξ,   a = μ(t)/μ(s),   G² = σ(t)² − a² σ(s)²                          (1)
(the variance of x_t given x_0 is a² σ(s)² plus the transition variance). As a forward
discretisation this is f_i(x) = (a − 1) x, G_i = G (Song et al. 2021, App. E, eq. 45).

- ``euler_maruyama``: x_s = x_t − [f(x_t, t) − g²(t) s(x_t, t)] h + g(t) √h z.
- ``reverse_diffusion`` (the reverse of the discretisation (1), Song et al. 2021 eq. 46):
      x_s = x_t − f_i(x_t) + G_i² s(x_t, t) + G_i z = (2 − a) x_t + G² s(x_t, t) + G z.
  For ve / rve (a = 1) this is x_s = x_t + (σ_t² − σ_s²) s + √(σ_t² − σ_s²) z, score_sde's
  VE reverse-diffusion predictor, on any grid. For vp, 1 − a² = 1 − e^{−∫_s^t β} is the exact
  counterpart of the discrete DDPM β_i (score_sde uses β(t_i)/N), so on a uniform grid it is
  score_sde's VP reverse-diffusion predictor up to O(1/N²) per step. Valid for non-uniform grids
  and all four SDEs because only μ and σ at the two grid points enter.
- ``langevin`` corrector at time t (Song et al. 2021, Alg. 4 / 5):
      ε = 2 α (snr ‖z‖ / ‖s(x, t)‖)²,  x ← x + ε s(x, t) + √(2ε) z,
  with α = a² = (μ(t)/μ(s))² of the step about to be taken: that is 1 for ve / rve (Alg. 4) and
  the discrete α_i = 1 − β_i of the VP chain for vp / subvp (Alg. 5; score_sde uses its VP α for
  subvp as well), derived from (1) so it stays right on a non-uniform grid. ‖·‖ is over all
  non-batch dimensions. ``langevin_norm`` says whose norms set ε:
  "batch" (default; score_sde's code): ‖z‖ and ‖s‖ averaged over the batch, so ε depends on t only
  and the chain targets p_t. "example" (the algorithms read literally): one ε per example. A step
  that depends on x through ‖s(x)‖ is a Langevin chain without its ∇ε drift term, so it is biased
  even as snr → 0: measured with the exact score of N(0, 0.25 I), VE, 300 steps, the sample
  variance exceeds the batch-norm result by ≈ 4/D (+27 % at D = 16, +6.4 % at 64, +1.6 % at 256,
  +0.4 % at 1024; ≈ 0.1 % for CIFAR-10's D = 3072), and in 2-D, where ‖s‖ ≈ 0 near a mode gives
  huge steps, it throws samples tens of σ away.
- Order within a step: corrector(s) at t_k, then the predictor t_k → t_{k+1} (as in score_sde's
  ``pc_sampler``, which produced the paper's FIDs), then the final denoising step at t_n = ε.

Final denoising (Tweedie): E[x_0 | x_ε] = (x_ε + σ(ε)² ∇log p_ε(x_ε)) / μ(ε). For vp / subvp that is
(x + σ² s)/μ with μ = e^{−B(ε)/2} (σ² = 1 − μ² for vp, σ = 1 − μ² for subvp); for ve / rve μ = 1,
so it is x + σ(ε)² s. One extra score evaluation, counted in ``nfe``.

NFE of ``sample_pc``: n_steps · (p + n_corrector_steps · c) + denoise, with p = 1 unless the
predictor is "none" and c = 1 unless the corrector is "none".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor

from st_sweeps.config import Registry
from st_sweeps.errors import ConfigError, require, require_positive
from st_sweeps.ode_solver import solve_ode
from st_sweeps.sde import SDE, broadcast_to

ScoreFn = Callable[[Tensor, Tensor], Tensor]
PriorSampler = Callable[[int, torch.Generator], Tensor]

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "none")
CORRECTORS = ("langevin", "none")
SPACINGS = ("auto", "linear", "reciprocal")
LANGEVIN_NORMS = ("example", "batch")


@dataclass(frozen=True)
class SampleResult:
    x: Tensor  # [B, ...] samples at t = eps (denoised when asked)
    nfe: int  # exact number of score_fn calls


class CountedScore:
    """``score_fn`` called as ``score(x, t: float)`` (t broadcast to a [B] tensor in x's dtype),
    counting calls: the NFE. The single-step functions below take one of these."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.calls = 0

    def __call__(self, x: Tensor, t: float) -> Tensor:
        self.calls += 1
        return self.score_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))


def _scalar(fn: Callable[[Tensor], Tensor], t: float) -> float:
    """An SDE coefficient at a scalar time, evaluated in float64."""
    return float(fn(torch.tensor([t], dtype=torch.float64))[0])


# --- time grids --------------------------------------------------------------------------


def time_grid(sde: SDE, n_steps: int, eps: float, T: float | None = None, *,
              spacing: Literal["auto", "linear", "reciprocal"] = "auto") -> Tensor:
    """Times from T down to eps, float64 [n_steps + 1] (first exactly T, last exactly eps).

    ``spacing="auto"``: the SDE's ``sampling_time_spacing`` (linear in 1/t for the RVE SDE, which
    is uniform in log σ there; linear in t otherwise). "linear" / "reciprocal" force one (used to show why the RVE needs the latter).
    """
    T = sde.T if T is None else float(T)
    require(isinstance(n_steps, int) and n_steps >= 1, "n_steps", f"got {n_steps!r}", "an integer >= 1")
    require(0 < eps < T, "eps", f"must lie in (0, T={T}), got {eps!r}", f"0 < eps < {T}")
    require(spacing in SPACINGS, "spacing", f"got {spacing!r}", SPACINGS)
    if spacing == "auto":
        spacing = sde.sampling_time_spacing  # type: ignore[assignment]
    if spacing == "linear":
        grid = torch.linspace(T, eps, n_steps + 1, dtype=torch.float64)
    else:
        grid = 1.0 / torch.linspace(1.0 / T, 1.0 / eps, n_steps + 1, dtype=torch.float64)
    grid[0], grid[-1] = T, eps
    return grid


# --- one step of each kind ---------------------------------------------------------------


def transition(sde: SDE, t: float, s: float) -> tuple[float, float]:
    """(a, G) of the exact forward transition s → t (s < t): x_t = a x_s + G ξ, eq. (1)."""
    a = _scalar(sde.mean_scale, t) / _scalar(sde.mean_scale, s)
    g2 = _scalar(sde.std, t) ** 2 - a * a * _scalar(sde.std, s) ** 2
    return a, max(g2, 0.0) ** 0.5


def euler_maruyama_step(score: CountedScore, sde: SDE, x: Tensor, t: float, s: float,
                        generator: torch.Generator) -> Tensor:
    """x_s = x_t − [f(x_t, t) − g²(t) ∇log p_t] h + g(t) √h z,  h = t − s."""
    h = t - s
    tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    drift = sde.reverse_drift(x, tt, score(x, t))
    g = _scalar(sde.diffusion, t)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x - drift * h + g * h ** 0.5 * z


def reverse_diffusion_step(score: CountedScore, sde: SDE, x: Tensor, t: float, s: float,
                           generator: torch.Generator) -> Tensor:
    """x_s = (2 − a) x_t + G² ∇log p_t(x_t) + G z with (a, G) of the exact transition s → t."""
    a, big_g = transition(sde, t, s)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (2.0 - a) * x + big_g ** 2 * score(x, t) + big_g * z


def langevin_step(score: CountedScore, x: Tensor, t: float, snr: float, alpha: float,
                  generator: torch.Generator, norm: Literal["example", "batch"] = "batch") -> Tensor:
    """x ← x + ε s + √(2ε) z with ε = 2 α (snr ‖z‖/‖s‖)² (per example, or batch-averaged norms)."""
    s = score(x, t)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    z_norm = z.flatten(1).norm(dim=1)  # [B]
    s_norm = s.flatten(1).norm(dim=1)
    if norm == "batch":
        z_norm, s_norm = z_norm.mean().expand_as(z_norm), s_norm.mean().expand_as(s_norm)
    step = 2 * alpha * (snr * z_norm / s_norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2  # [B]
    step = broadcast_to(step, x)
    return x + step * s + (2 * step).sqrt() * z


def denoise_step(score: CountedScore, sde: SDE, x: Tensor, t: float) -> Tensor:
    """Tweedie: E[x_0 | x_t] = (x_t + σ(t)² ∇log p_t(x_t)) / μ(t)."""
    sigma = _scalar(sde.std, t)
    return (x + sigma ** 2 * score(x, t)) / _scalar(sde.mean_scale, t)


_PREDICTOR_STEPS = {"euler_maruyama": euler_maruyama_step, "reverse_diffusion": reverse_diffusion_step}


# --- samplers ----------------------------------------------------------------------------


def _initial(sde: SDE, shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str,
             dtype: torch.dtype, prior_sample: PriorSampler | None) -> Tensor:
    if prior_sample is None:
        return sde.prior_sample(tuple(shape), generator, device, dtype)
    x = prior_sample(shape[0], generator)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"prior_sample returned shape {tuple(x.shape)}, expected {tuple(shape)}")
    return x.to(device=device, dtype=dtype)


@torch.no_grad()  # a network's graph would otherwise chain through every step
def sample_pc(score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], *, n_steps: int = 1000,
              eps: float = 1e-5, predictor: str = "reverse_diffusion", corrector: str = "langevin",
              snr: float = 0.16, n_corrector_steps: int = 1, denoise: bool = True,
              generator: torch.Generator, device: torch.device | str = "cpu",
              prior_sample: PriorSampler | None = None, dtype: torch.dtype = torch.float32,
              langevin_norm: Literal["example", "batch"] = "batch",
              spacing: Literal["auto", "linear", "reciprocal"] = "auto") -> SampleResult:
    """Predictor–corrector sampling of the reverse SDE from T to eps (Song et al. 2021, Alg. 1).

    ``prior_sample(n, generator) -> x_T`` replaces the SDE's prior (auxiliary priors for a short T).
    ``spacing`` picks the grid (see ``time_grid``; "auto" is right for every SDE here).
    """
    require(predictor in PREDICTORS, "predictor", f"got {predictor!r}", PREDICTORS)
    require(corrector in CORRECTORS, "corrector", f"got {corrector!r}", CORRECTORS)
    require(langevin_norm in LANGEVIN_NORMS, "langevin_norm", f"got {langevin_norm!r}", LANGEVIN_NORMS)
    grid = time_grid(sde, n_steps, eps, spacing=spacing).tolist()
    score = CountedScore(score_fn)
    x = _initial(sde, shape, generator, device, dtype, prior_sample)
    for t, s in zip(grid[:-1], grid[1:]):
        if corrector == "langevin" and n_corrector_steps > 0:
            alpha = (_scalar(sde.mean_scale, t) / _scalar(sde.mean_scale, s)) ** 2
            for _ in range(n_corrector_steps):
                x = langevin_step(score, x, t, snr, alpha, generator, langevin_norm)
        if predictor != "none":
            x = _PREDICTOR_STEPS[predictor](score, sde, x, t, s, generator)
    if denoise:
        x = denoise_step(score, sde, x, grid[-1])
    return SampleResult(x, score.calls)


@torch.no_grad()
def sample_ode(score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], *, eps: float = 1e-5,
               rtol: float = 1e-5, atol: float = 1e-5, denoise: bool = True,
               generator: torch.Generator, device: torch.device | str = "cpu",
               prior_sample: PriorSampler | None = None, dtype: torch.dtype = torch.float32,
               max_nfe: int = 100_000) -> SampleResult:
    """Probability-flow ODE dx/dt = f(x, t) − ½ g²(t) ∇log p_t(x) (Song et al. 2021, eq. 13),
    integrated from T to eps with adaptive Dormand–Prince (``st_sweeps.ode_solver.solve_ode``).
    The generator only draws x_T; nfe counts every right-hand-side evaluation plus denoising.
    """
    score = CountedScore(score_fn)
    x = _initial(sde, shape, generator, device, dtype, prior_sample)

    def func(t: float, y: Tensor) -> Tensor:
        tt = torch.full((y.shape[0],), float(t), dtype=y.dtype, device=y.device)
        return sde.probability_flow_drift(y, tt, score(y, float(t)))

    sol = solve_ode(func, x, sde.T, eps, rtol=rtol, atol=atol, max_nfe=max_nfe)
    x = sol.y
    if denoise:
        x = denoise_step(score, sde, x, eps)
    return SampleResult(x, score.calls)


# --- config ------------------------------------------------------------------------------


class Sampler:
    """How to sample: a registry of configs, each with only the settings that apply to it, so that
    a setting the chosen sampler would ignore is an error (``unknown key``) rather than silence.

    ``pc``: predictor–corrector with ``n_steps`` grid steps; ``euler_maruyama``: the Euler–Maruyama
    predictor alone; ``ode``: probability-flow ODE with adaptive RK45 (``rtol``, ``atol``). Every
    sampler stops at ``eps`` and by default takes a final denoising step (``denoise``). Paper
    protocol (Kim et al. 2022): VP — euler_maruyama, 1,000 steps (or ode at 1e-5); VE/RVE — pc,
    reverse_diffusion + langevin (snr 0.16, one step), 1,000 steps; eps 1e-5 (1e-3 at 256 px).
    """

    registry: ClassVar[Registry["Sampler"]] = Registry("sampler")
    eps: float
    denoise: bool

    @property
    def name(self) -> str:
        return type(self).registry_name  # type: ignore[attr-defined]

    def _check_common(self) -> None:
        # eps < T is checked against the SDE in ``sample`` and by the experiment config
        require(self.eps > 0, "eps", f"got {self.eps!r}", "a number in (0, T); usually 1e-5 (1e-3 at 256 px)")
        require(isinstance(self.denoise, bool), "denoise", f"got {self.denoise!r}", "true, false")

    def expected_nfe(self) -> int | None:
        """Score evaluations per sample batch (None for the adaptive ODE sampler)."""
        raise NotImplementedError

    def run(self, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], **common: Any) -> SampleResult:
        raise NotImplementedError


def _require_steps(value: int, field: str, low: int) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= low, field,
            f"got {value!r}", f"an integer >= {low}")


@Sampler.registry.register("pc")
@dataclass(frozen=True)
class PCSampler(Sampler):
    n_steps: int = 1000
    predictor: Literal["euler_maruyama", "reverse_diffusion", "none"] = "euler_maruyama"
    corrector: Literal["langevin", "none"] = "none"
    snr: float = 0.16  # the Langevin corrector's signal-to-noise ratio
    n_corrector_steps: int = 1
    langevin_norm: Literal["example", "batch"] = "batch"
    eps: float = 1e-5
    denoise: bool = True

    def __post_init__(self) -> None:
        self._check_common()
        require(self.predictor in PREDICTORS, "predictor", f"got {self.predictor!r}", PREDICTORS)
        require(self.corrector in CORRECTORS, "corrector", f"got {self.corrector!r}", CORRECTORS)
        require(self.langevin_norm in LANGEVIN_NORMS, "langevin_norm", f"got {self.langevin_norm!r}",
                LANGEVIN_NORMS)
        _require_steps(self.n_steps, "n_steps", 1)
        _require_steps(self.n_corrector_steps, "n_corrector_steps", 0)
        require_positive(self.snr, "snr")
        if self.predictor == "none" and (self.corrector == "none" or self.n_corrector_steps == 0):
            raise ConfigError("predictor", "pc needs a predictor or at least one corrector step",
                              ("euler_maruyama", "reverse_diffusion"))

    def expected_nfe(self) -> int:
        p = int(self.predictor != "none")
        c = self.n_corrector_steps if self.corrector != "none" else 0
        return self.n_steps * (p + c) + int(self.denoise)

    def run(self, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], **common: Any) -> SampleResult:
        return sample_pc(score_fn, sde, shape, n_steps=self.n_steps, predictor=self.predictor,
                         corrector=self.corrector, snr=self.snr, n_corrector_steps=self.n_corrector_steps,
                         langevin_norm=self.langevin_norm, eps=self.eps, denoise=self.denoise, **common)


@Sampler.registry.register("euler_maruyama")
@dataclass(frozen=True)
class EulerMaruyamaSampler(Sampler):
    n_steps: int = 1000
    eps: float = 1e-5
    denoise: bool = True

    def __post_init__(self) -> None:
        self._check_common()
        _require_steps(self.n_steps, "n_steps", 1)

    def expected_nfe(self) -> int:
        return self.n_steps + int(self.denoise)

    def run(self, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], **common: Any) -> SampleResult:
        return sample_pc(score_fn, sde, shape, n_steps=self.n_steps, predictor="euler_maruyama", corrector="none",
                         n_corrector_steps=0, eps=self.eps, denoise=self.denoise, **common)


@Sampler.registry.register("ode")
@dataclass(frozen=True)
class ODESampler(Sampler):
    rtol: float = 1e-5
    atol: float = 1e-5
    eps: float = 1e-5
    denoise: bool = True

    def __post_init__(self) -> None:
        self._check_common()
        require_positive(self.rtol, "rtol")
        require_positive(self.atol, "atol")

    def expected_nfe(self) -> None:
        return None

    def run(self, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], **common: Any) -> SampleResult:
        return sample_ode(score_fn, sde, shape, rtol=self.rtol, atol=self.atol, eps=self.eps, denoise=self.denoise,
                          **common)


def sample(config: Sampler, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...],
           generator: torch.Generator, device: torch.device | str = "cpu",
           prior_sample: PriorSampler | None = None, dtype: torch.dtype = torch.float32) -> SampleResult:
    """Run the sampler ``config`` names."""
    sde.check_time_range(config.eps, "eps")
    return config.run(score_fn, sde, shape, generator=generator, device=device, prior_sample=prior_sample,
                      dtype=dtype)
