"""Probability-flow ODE NLL: the published evaluator (SciPy RK45 round trip) against ours, fast and exact.

Two problems, ε = 1e-5, the VP SDE unless --sde names another:
(a) a 64-dimensional Gaussian mixture with its exact score, where the exact NLL −log p_ε(x_ε) is
    known (prior: the exact marginal p_T, so that only the solve and the trace are left);
(b) a U-Net (DDPM++ layout, random weights) on 3×32×32 digits images (8-bit, dequantized),
    whose reference is a tight solve (rtol = atol = 1e-8, float64 state and network, same probes).
Every evaluator gets the same examples and the same Rademacher probes, so its error against a
tight solve with those probes is its ODE-solve error (like with like); for (a) the error
against the exact NLL is shown as well (it adds the Hutchinson noise of one probe).

Rows: score_sde's evaluator as published (re-written here): SciPy's ``solve_ivp`` RK45 with the
state as float64 NumPy converted at every evaluation, whose ``ode_func`` calls the network twice
(once for the drift, once more for the divergence's vector–Jacobian product: score_sde and
Kim-Dongjun/Soft-Truncation likelihood.py, ``ode_func`` and ``get_div_fn``); the same with the drift
taken from the divergence's forward pass (one call: a stronger baseline than published); SciPy's
8th-order DOP853 with one call (does a higher order buy fewer evaluations at this tolerance?); ours in ``solver="scipy_exact"`` mode (the same steps in
torch); the fast solver (per-example step sizes, batched VJPs) in each integration variable
(t, τ = σ/μ, −log SNR); then, in the SDE's default variable ("auto": t for VP/sub-VP, τ for
VE/RVE): the fast solver at 10× and 100× the tolerance (a fixed ladder), torchode's Dormand–Prince
(per-example steps too) on the same ODE when torchode is importable, the fast solver with 4
probes (its per-example Hutchinson standard error), and for (a) the exact trace. Timings: each
evaluator over all batches, repeated; images/s as mean ± standard deviation; speed-ups are
ratios to the published evaluator's row and to the one-call SciPy row of the same run.

    python benchmarks/likelihood_vs_scipy.py --quick
    python benchmarks/likelihood_vs_scipy.py --append benchmarks/RESULTS.md
    python benchmarks/likelihood_vs_scipy.py --device cuda --width 64 --images 64 --batch 32 \
        --mixture-examples 1024 --mixture-batch 256      # on a GPU: where the host round trip costs

With ``--device cuda`` every evaluator's tensors live on the GPU (SciPy's round trip copies the
state to the host and back at each evaluation, as score_sde's evaluator does), timings wait for
the device, and a column counts the host synchronisations of one batch's solve (CUDA's sync debug
mode, on an extra untimed pass).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy
import torch
import torch.nn.functional as F
from scipy.integrate import solve_ivp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from st_sweeps.gaussian_mixture import GaussianMixture  # noqa: E402
from st_sweeps.likelihood import dequantize, ode_log_likelihood, sample_probes  # noqa: E402
from st_sweeps.likelihood_fast import fast_ode_log_likelihood, likelihood_ode  # noqa: E402
from st_sweeps.likelihood_time import resolve_time_variable  # noqa: E402
from st_sweeps.networks.score_model import ScoreModel  # noqa: E402
from st_sweeps.networks.unet import DDPMpp  # noqa: E402
from st_sweeps.sde import SDE  # noqa: E402

EPS = 1e-5
LN2 = math.log(2.0)
N_PROBES = 4  # probes drawn per example; single-probe evaluators use the first


@dataclass
class Problem:
    label: str
    sde: SDE
    x: torch.Tensor  # [N, ...] float32, the points whose log p_ε is wanted
    score32: Callable  # float32 score, what every evaluator uses
    score64: Callable  # float64 score for the tight reference
    prior: Callable | None  # log prior at T (None: the SDE's)
    exact: torch.Tensor | None  # exact log p_ε(x) [N] in nats, when known


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------
def mixture_problem(n: int, dim: int, seed: int = 0) -> Problem:
    g = torch.Generator().manual_seed(seed)
    k = 8
    data = GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64),
                           0.5 * torch.randn(k, dim, generator=g, dtype=torch.float64),
                           torch.linspace(0.05, 0.3, k, dtype=torch.float64))
    sde = SDE.registry.build(ARGS.sde, "sde")
    tt = lambda t, like: torch.full((like.shape[0],), t, dtype=like.dtype, device=like.device)  # noqa: E731
    x0 = data.sample(n, g)
    x_eps = sde.perturb(x0, tt(EPS, x0), torch.randn(x0.shape, generator=g, dtype=torch.float64))
    exact = data.log_prob(x_eps, sde.mean_scale(tt(EPS, x_eps)), sde.std(tt(EPS, x_eps)))
    data = GaussianMixture(data.weights.to(DEVICE), data.means.to(DEVICE), data.stds.to(DEVICE))
    prior = lambda x: data.log_prob(x.double(), sde.mean_scale(tt(sde.T, x).double()),  # noqa: E731
                                    sde.std(tt(sde.T, x).double())).to(x.dtype)
    return Problem(f"(a) Gaussian mixture, D = {dim}, 8 components, exact score, {ARGS.sde} SDE", sde,
                   x_eps.float().to(DEVICE), data.score_fn(sde), data.score_fn(sde), prior, exact)


def digit_images(n: int, size: int, channels: int) -> torch.Tensor:
    """n 8-bit images [n, C, size, size] as k/255 in [0, 1], from scikit-learn's digits."""
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images[:n]).float()[:, None] / 16.0  # [n, 1, 8, 8] in [0, 1]
    up = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return torch.round(up * 255).repeat(1, channels, 1, 1) / 255


def unet_problem(n: int, size: int, width: int, seed: int = 0) -> Problem:
    sde = SDE.registry.build(ARGS.sde, "sde")
    cfg = DDPMpp(channels=width, channel_multipliers=(1, 2), blocks_per_resolution=1, attention_resolutions=(),
                 dropout=0.0, init_scale=1.0)  # init_scale 1: residual branches not zeroed (random weights)
    net = cfg.build((3, size, size), torch.Generator().manual_seed(seed)).eval().to(DEVICE)
    for p in net.parameters():
        p.requires_grad_(False)
    # time input log σ(t): with random weights, 999·t through the positional embedding would make
    # the network oscillate ~160 times over [0, 1] in t, which no trained network does
    model32 = ScoreModel(net, sde, time_input="log_sigma")
    model64 = ScoreModel(copy.deepcopy(net).double(), sde, time_input="log_sigma")
    x = dequantize(digit_images(n, size, 3), centered=False, generator=torch.Generator().manual_seed(seed + 1))
    return Problem(f"(b) U-Net (DDPM++ layout, width {width}, random weights), 3×{size}×{size} digits, {ARGS.sde} SDE",
                   sde, x.to(DEVICE), model32, model64, None, None)


# --------------------------------------------------------------------------------------------
# Evaluators: (score, sde, x [b, ...], probes [P, b, ...] or None, prior) -> (logp [b], example NFE [b])
# --------------------------------------------------------------------------------------------
def scipy_rk45(score, sde, x, probes, prior, method: str = "RK45", two_calls: bool = False):
    """The published evaluator's loop: float64 NumPy state on the host, torch ↔ NumPy (and host ↔
    device) at every evaluation; ``method`` another of SciPy's explicit Runge–Kutta pairs.

    two_calls: as published (score_sde's and Soft-Truncation's likelihood.py, ``ode_func``): the
    drift from one network call, then the divergence from a second call and its backward pass.
    Without it the drift is taken from the divergence's own forward pass (one call fewer)."""
    probe = probes[0]
    shape, b, n, device = x.shape, x.shape[0], x.numel(), x.device

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xs = torch.from_numpy(y[:n]).reshape(shape).to(device=device, dtype=torch.float32)
        tt = torch.full((b,), t, device=device)
        if two_calls:
            with torch.no_grad():
                drift_only = sde.probability_flow_drift(xs, tt, score(xs, tt))
        with torch.enable_grad():
            xs.requires_grad_(True)
            drift = sde.probability_flow_drift(xs, tt, score(xs, tt))
            (vjp,) = torch.autograd.grad((drift * probe).sum(), xs)
        div = (vjp * probe).reshape(b, -1).sum(1)
        if two_calls:
            drift = drift_only
        return np.concatenate([drift.detach().cpu().numpy().reshape(-1), div.cpu().numpy()]).astype(np.float64)

    y0 = np.concatenate([x.cpu().numpy().reshape(-1), np.zeros(b)]).astype(np.float64)
    sol = solve_ivp(rhs, (EPS, sde.T), y0, method=method, rtol=ARGS.tol, atol=ARGS.tol)
    if sol.status != 0:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    y_T = torch.from_numpy(sol.y[:, -1]).to(device)
    p = sde.prior_logp if prior is None else prior
    return p(y_T[:n].reshape(shape)) + y_T[n:], torch.full((b,), sol.nfev)


def ours_scipy_exact(score, sde, x, probes, prior):
    logp, _, nfe = ode_log_likelihood(score, sde, x, eps=EPS, probes=probes[:1], prior_logp=prior, rtol=ARGS.tol,
                                      atol=ARGS.tol)
    return logp, torch.full((x.shape[0],), nfe)


def fast(variable: str, n_probes: int = 1, exact_trace: bool = False, tol_factor: float = 1.0, sep: bool = True):
    def run(score, sde, x, probes, prior):
        tol = ARGS.tol * tol_factor
        r = fast_ode_log_likelihood(score, sde, x, eps=EPS, probes=None if exact_trace else probes[:n_probes],
                                    prior_logp=prior, rtol=tol, atol=tol, time_variable=variable, separate_logp_error=sep)
        run.stderr.append(r.probe_stderr)
        return r.logp, r.example_nfe

    run.stderr = []
    return run


def torchode_dopri5(variable: str):
    import torchode as to

    def run(score, sde, x, probes, prior):
        ode = likelihood_ode(score, sde, x, eps=EPS, probes=probes[:1], prior_logp=prior, time_variable=variable)
        rows = torch.arange(x.shape[0])
        calls = [0]

        def f(u, y):
            calls[0] += 1
            return ode.func(u.double(), y, rows)

        term = to.ODETerm(f)
        solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=ARGS.tol, rtol=ARGS.tol, term=term))
        b = x.shape[0]
        problem = to.InitialValueProblem(y0=ode.state0, t_start=torch.full((b,), ode.u0, dtype=ode.state0.dtype),
                                         t_end=torch.full((b,), ode.u1, dtype=ode.state0.dtype))
        with torch.no_grad():
            sol = solver.solve(problem)
            per_probe, _ = ode.finish(sol.ys[:, -1])
        return per_probe[0], torch.full((b,), calls[0])

    return run


def evaluators(sde: SDE, with_exact_trace: bool) -> list[tuple[str, str, Callable]]:
    auto = resolve_time_variable(sde, "auto")
    names = {"t": "t", "sigma_ratio": "τ = σ/μ", "neg_log_snr": "−log SNR"}
    rows = [("scipy_published", "score_sde's evaluator as published: SciPy solve_ivp RK45, float64 NumPy state, "
             "torch↔NumPy per evaluation, drift and divergence from two network calls",
             lambda *a: scipy_rk45(*a, two_calls=True)),
            ("scipy", "the same with the drift from the divergence's forward pass (one network call per evaluation)",
             scipy_rk45),
            ("scipy_dop853", "SciPy solve_ivp DOP853 (8th order), one network call per evaluation",
             lambda *a: scipy_rk45(*a, method="DOP853")),
            ("scipy_exact", "ours, solver=scipy_exact: the same steps in torch (float32 state)", ours_scipy_exact)]
    for key, variable in [("fast_t", "t"), ("fast_tau", "sigma_ratio"), ("fast_rho", "neg_log_snr")]:
        tag = " (the default here)" if variable == auto else ""
        rows.append((key, f"fast: per-example steps, batched VJP, in {names[variable]}{tag}", fast(variable)))
    try:
        import torchode  # noqa: F401

        rows.append(("torchode", f"torchode 1.0.1 Dopri5 + IntegralController, per-example steps, in {names[auto]}",
                     torchode_dopri5(auto)))
    except ImportError:
        pass
    # the same solver at looser tolerances (a fixed ladder, all rows shown): where its error is still
    # no larger than SciPy's at the base tolerance, that is the speed at equal accuracy
    rows.append(("fast_one_norm", f"fast in {names[auto]}, one RMS over state and log-density (SciPy's norm)",
                 fast(auto, sep=False)))
    for factor in (10, 100):
        rows.append((f"fast_x{factor}", f"fast in {names[auto]} at rtol = atol = {factor} × the base tolerance",
                     fast(auto, tol_factor=factor)))
    rows.append(("fast_probes", f"fast in {names[auto]} with {N_PROBES} probes per evaluation (batched VJPs)",
                 fast(auto, N_PROBES)))
    if with_exact_trace:
        rows.append(("fast_exact", f"fast in {names[auto]} with the exact trace (batched VJPs with the D basis vectors)",
                     fast(auto, exact_trace=True)))
    return rows


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
def tight_reference(problem: Problem, probes: torch.Tensor, batch: int) -> torch.Tensor:
    """[N_PROBES, N] log p_ε per probe by a float64 solve at rtol = atol = 1e-8 (each probe keeps its
    own accumulator, so the one-probe reference is row 0 and the 4-probe one the mean)."""
    out = []
    for s in range(0, problem.x.shape[0], batch):
        xb = problem.x[s:s + batch].double()
        r = fast_ode_log_likelihood(problem.score64, problem.sde, xb, eps=EPS, probes=probes[:, s:s + batch].double(),
                                    prior_logp=problem.prior, rtol=1e-8, atol=1e-8, ode_float64=True,
                                    time_variable="sigma_ratio", max_nfe=1_000_000)
        out.append(r.logp_per_probe.cpu())
    return torch.cat(out, 1)


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def count_host_syncs(fn, problem: Problem, probes: torch.Tensor, batch: int) -> int | None:
    """Host synchronisations of one batch's solve (CUDA's sync debug mode warns at each); None on a CPU."""
    if DEVICE.type != "cuda":
        return None
    xb, pb = problem.x[:batch], probes[:, :batch]
    synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(problem.score32, problem.sde, xb, pb, problem.prior)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def measure(problem: Problem, rows, probes: torch.Tensor, batch: int) -> list[dict]:
    n, d = problem.x.shape[0], problem.x[0].numel()
    ref = tight_reference(problem, probes, batch)
    results = []
    for key, label, fn in rows:
        rates, logp, nfe = [], None, None
        for _ in range(ARGS.repeats):
            if hasattr(fn, "stderr"):
                fn.stderr.clear()
            parts, nfes = [], []
            synchronize()
            tic = time.perf_counter()
            for s in range(0, n, batch):
                lp, ex = fn(problem.score32, problem.sde, problem.x[s:s + batch], probes[:, s:s + batch], problem.prior)
                parts.append(lp.double())
                nfes.append(ex.double())
            synchronize()
            rates.append(n / (time.perf_counter() - tic))
            parts, nfes = [v.cpu() for v in parts], [v.cpu() for v in nfes]
            logp, nfe = torch.cat(parts), torch.cat(nfes)
        n_used = N_PROBES if key == "fast_probes" else 1
        ref_same = ref[:n_used].mean(0)
        to_bpd = lambda v: v.abs() / (d * LN2)  # noqa: E731
        row = dict(key=key, label=label, rates=rates, nfe=float(nfe.mean()),
                   ode_err=to_bpd(logp - ref_same) if key != "fast_exact" else None)
        if problem.exact is not None:
            row["exact_err"] = to_bpd(logp - problem.exact)
        errs = [v.cpu() for v in getattr(fn, "stderr", []) if v is not None]
        if errs and len(errs) == len(getattr(fn, "stderr")) and bool(torch.cat(errs).isfinite().all()):
            row["stderr"] = float(torch.cat(errs).mean()) / (d * LN2)
        row["syncs"] = count_host_syncs(fn, problem, probes, batch)  # an extra pass: after the timed ones are read
        results.append(row)
    if problem.exact is not None:  # how far the tight solve itself is from the exact NLL (trace noise)
        results.append(dict(key="tight", label="tight reference, 1 probe (float64, 1e-8)", rates=None, nfe=math.nan,
                            ode_err=None, exact_err=(ref[0] - problem.exact).abs() / (d * LN2)))
    return results


def table(problem: Problem, results: list[dict], batch: int) -> str:
    base = statistics.mean(results[0]["rates"])
    one_call = statistics.mean(results[1]["rates"])
    has_exact = problem.exact is not None
    head = ["evaluator", "images/s", "speed-up vs published", "vs one-call SciPy", "NFE per example",
            "ODE error vs tight solve, same probes: mean / max (bits/dim)"]
    if has_exact:
        head.append("error vs exact NLL: mean / max (bits/dim)")
    head.append("Hutchinson SE per example (bits/dim)")
    with_syncs = DEVICE.type == "cuda"
    if with_syncs:
        head.append("host syncs per batch solve")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda e: "–" if e is None else f"{float(e.mean()):.1e} / {float(e.max()):.1e}"  # noqa: E731
    for r in results:
        if r["rates"] is None:
            cells = [r["label"], "–", "–", "–", "–", "–"]
        else:
            m = statistics.mean(r["rates"])
            sd = statistics.stdev(r["rates"]) if len(r["rates"]) > 1 else 0.0
            cells = [r["label"], f"{m:.2f} ± {sd:.2f}", f"{m / base:.2f}×", f"{m / one_call:.2f}×", f"{r['nfe']:.0f}",
                     fmt(r["ode_err"])]
        if has_exact:
            cells.append(fmt(r.get("exact_err")))
        cells.append(f"{r['stderr']:.1e}" if "stderr" in r else "–")
        if with_syncs:
            cells.append("–" if r.get("syncs") is None else str(r["syncs"]))
        lines.append("| " + " | ".join(cells) + " |")
    return f"{problem.label}, {problem.x.shape[0]} examples, batch {batch}:\n\n" + "\n".join(lines)


def trace_cost(dim: int, batch: int, reps: int = 5) -> str:
    """One divergence of the mixture's score at D = dim: a backward pass per dimension (the former
    loop) against one batched VJP with the basis, and one Hutchinson VJP."""
    from st_sweeps.likelihood_trace import divergence_batched

    prob = mixture_problem(batch, dim)
    x, t = prob.x, torch.full((batch,), 0.1, device=DEVICE)
    fn = lambda v: prob.score32(v, t)  # noqa: E731

    def loop():
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            flat = fn(xg)
            div = torch.zeros(batch, device=DEVICE)
            for i in range(dim):
                (g,) = torch.autograd.grad(flat[:, i].sum(), xg, retain_graph=i < dim - 1)
                div = div + g[:, i]
        return div

    probe = sample_probes(x.shape, "hutchinson_rademacher", 1, torch.Generator().manual_seed(0), x)
    timings = {}
    for name, f in [("loop", loop), ("batched", lambda: divergence_batched(fn, x, None)[1]),
                    ("hutchinson", lambda: divergence_batched(fn, x, probe)[1])]:
        best = math.inf
        for _ in range(reps):
            synchronize()
            tic = time.perf_counter()
            f()
            synchronize()
            best = min(best, time.perf_counter() - tic)
        timings[name] = best * 1e3
    agree = float((loop() - divergence_batched(fn, x, None)[1][0]).abs().max())
    return (f"Exact trace at D = {dim}, batch {batch}, one evaluation (best of {reps}): a backward pass per "
            f"dimension {timings['loop']:.1f} ms, batched VJPs {timings['batched']:.1f} ms, one Hutchinson VJP "
            f"{timings['hutchinson']:.1f} ms (loop/batched {timings['loop'] / timings['batched']:.1f}×, "
            f"batched/Hutchinson {timings['batched'] / timings['hutchinson']:.1f}×; max difference {agree:.1e}).")


def machine_info() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f"; {torch.cuda.get_device_name(DEVICE)}" if DEVICE.type == "cuda" else ""
    return (f"{cpu}{gpu}; {torch.get_num_threads()} torch threads; torch {torch.__version__}, numpy {np.__version__}, "
            f"scipy {scipy.__version__}, Python {platform.python_version()}")


def run() -> str:
    torch.set_num_threads(ARGS.threads)
    load0 = os.getloadavg()[0]
    sections = []
    problems = {"a": lambda: (mixture_problem(ARGS.mixture_examples, ARGS.dim), True, ARGS.mixture_batch),
                "b": lambda: (unet_problem(ARGS.images, ARGS.size, ARGS.width), False, ARGS.batch)}
    for name in ARGS.problems:
        problem, exact_trace, batch = problems[name]()
        g = torch.Generator().manual_seed(2)
        probes = sample_probes(problem.x.shape, "hutchinson_rademacher", N_PROBES, g, problem.x.cpu()).to(DEVICE)
        rows = evaluators(problem.sde, exact_trace)
        sections.append(table(problem, measure(problem, rows, probes, batch), batch))
    load1 = os.getloadavg()[0]
    sections.append(trace_cost(ARGS.dim, ARGS.mixture_batch))
    sections.append(f"Timing: images/s as mean ± standard deviation of {ARGS.repeats} repeats of each evaluator "
                    f"over all batches, speed-ups the ratios of means to the published evaluator's and to the one-call "
                    f"SciPy row's, {ARGS.threads} torch "
                    f"thread(s), {DEVICE.type}; 1-minute load average {load0:.1f} at start, {load1:.1f} after the "
                    f"tables (other jobs may share the cores). Setup: {ARGS.sde} SDE, ε = 1e-5, rtol = atol = "
                    f"{ARGS.tol:g} for every evaluator but the two ladder rows; Rademacher probes shared by all "
                    "evaluators. NFE per example: evaluations of the ODE right-hand side an example took part in (SciPy and "
                    "scipy_exact: the batch's); each is one network call and its backward pass, two calls in the published row.")
    return "\n\n".join(sections)


def main(argv: list[str] | None = None) -> None:
    global ARGS, DEVICE
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a smaller run (~10 min on 2 shared cores): U-Net width 8, 4 images; 32 mixture points; 2 repeats")
    p.add_argument("--images", type=int, default=16, help="U-Net images (b)")
    p.add_argument("--batch", type=int, default=8, help="U-Net batch (b)")
    p.add_argument("--mixture-examples", type=int, default=64, help="mixture points (a)")
    p.add_argument("--mixture-batch", type=int, default=32, help="mixture batch (a)")
    p.add_argument("--size", type=int, default=32, help="image side for (b)")
    p.add_argument("--dim", type=int, default=64, help="dimension of the mixture (a)")
    p.add_argument("--width", type=int, default=16, help="U-Net channels")
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--sde", default="vp", choices=["vp", "subvp", "ve", "rve"], help="the SDE (default settings)")
    p.add_argument("--problems", nargs="+", default=["a", "b"], choices=["a", "b"],
                   help="(a) the Gaussian mixture, (b) the U-Net")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: small tensors, shared machines)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each evaluator")
    p.add_argument("--append", type=Path, default=None, help="append the report (with machine info) to this file")
    p.add_argument("--device", default="cpu", help="cpu or cuda (a GPU: where the round trip and batching matter)")
    ARGS = p.parse_args(argv)
    DEVICE = torch.device(ARGS.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this machine has no CUDA device")
    if ARGS.quick:
        ARGS.images, ARGS.batch, ARGS.width, ARGS.mixture_examples, ARGS.repeats = 4, 4, 8, 32, 2
    ARGS.repeats = max(1, ARGS.repeats)
    body = run()
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    report = (f"### Likelihood evaluator: fast and scipy-exact vs SciPy RK45 ({'quick' if ARGS.quick else 'full'})\n\n"
              f"- date: {stamp}\n- machine: {machine_info()}\n- command: `{command}`\n\n{body}\n")
    print(report)
    if ARGS.append is not None:
        ARGS.append.parent.mkdir(parents=True, exist_ok=True)
        with ARGS.append.open("a") as f:
            f.write("\n" + report)


ARGS = argparse.Namespace()
DEVICE = torch.device("cpu")

if __name__ == "__main__":
    main()
