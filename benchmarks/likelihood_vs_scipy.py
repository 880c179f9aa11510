"""Probability-flow ODE NLL: our torch Dormand–Prince vs the usual published evaluator.

Baseline (score_sde's evaluator, re-written here): ``scipy.integrate.solve_ivp`` RK45 with the ODE
state held as float64 NumPy, converted to a float32 torch tensor (on the model's device) and back
at every function evaluation; one Rademacher probe fixed per solve; Hutchinson divergence of the
whole drift; the ODE started at the dequantized image (no residual term).
Ours: ``st_sweeps.likelihood.ode_log_likelihood`` (state stays a torch tensor, float32 or float64)
with the *same probe*, tolerances, images and score network, so the bits/dim must agree to within
the solvers' tolerance — far below the Hutchinson noise, which the table shows as a yardstick
(ours with a different probe).

Score network: a small convolutional ε-prediction network with fixed random weights (seeded),
score = −net(x, t)/σ(t); the networks package's U-Net is not used, to keep this stand-alone.
Images: scikit-learn's bundled 8×8 digits, made 8-bit, resized to the chosen size, 3 channels.

    python benchmarks/likelihood_vs_scipy.py --quick
    python benchmarks/likelihood_vs_scipy.py --images 32 --size 16 --append benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import torch
import torch.nn.functional as F
from scipy.integrate import solve_ivp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from st_sweeps.likelihood import dequantize, ode_log_likelihood, sample_probes, to_bits_per_dim  # noqa: E402
from st_sweeps.sde import SDE, VPSDE  # noqa: E402


class TinyConvScore(nn.Module):
    """Three 3×3 convolutions with a log-σ time embedding; fixed random weights from ``seed``."""

    def __init__(self, sde: SDE, channels: int, width: int, seed: int):
        super().__init__()
        self.sde = sde
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.conv_mid = nn.Conv2d(width, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        self.embed = nn.Linear(2, width)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self.sde.std(t)
        feats = torch.stack([torch.log(sigma), torch.ones_like(sigma)], dim=1)
        h = F.silu(self.conv_in(x) + self.embed(feats)[:, :, None, None])
        h = F.silu(self.conv_mid(h))
        return -self.conv_out(h) / sigma[:, None, None, None]


def digit_images(n: int, size: int, channels: int) -> torch.Tensor:
    """n 8-bit images [n, C, size, size] as k/255 in [0, 1], from scikit-learn's digits."""
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images[:n]).float()[:, None] / 16.0  # [n, 1, 8, 8] in [0, 1]
    up = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    u8 = torch.round(up * 255).repeat(1, channels, 1, 1)
    return u8 / 255


def scipy_rk45_log_likelihood(score_fn, sde: SDE, x: torch.Tensor, probe: torch.Tensor, eps: float, rtol: float,
                              atol: float) -> tuple[torch.Tensor, int]:
    """The published evaluator's loop: float64 NumPy state, torch ↔ NumPy at every evaluation."""
    shape, b, n = x.shape, x.shape[0], x.numel()
    device = x.device

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xs = torch.from_numpy(y[:n]).reshape(shape).to(device=device, dtype=torch.float32)
        tt = torch.full((b,), t, device=device)
        with torch.enable_grad():
            xs.requires_grad_(True)
            drift = sde.probability_flow_drift(xs, tt, score_fn(xs, tt))
            (vjp,) = torch.autograd.grad((drift * probe).sum(), xs)
        div = (vjp * probe).reshape(b, -1).sum(1)
        return np.concatenate([drift.detach().cpu().numpy().reshape(-1), div.cpu().numpy()]).astype(np.float64)

    y0 = np.concatenate([x.cpu().numpy().reshape(-1), np.zeros(b)]).astype(np.float64)
    sol = solve_ivp(rhs, (eps, sde.T), y0, method="RK45", rtol=rtol, atol=atol)
    if sol.status != 0:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    y_T = torch.from_numpy(sol.y[:, -1])
    x_T = y_T[:n].reshape(shape)
    return sde.prior_logp(x_T) + y_T[n:], int(sol.nfev)


def machine_info() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}; {torch.get_num_threads()} torch threads; torch {torch.__version__}, numpy {np.__version__}, "
            f"scipy {scipy.__version__}, Python {platform.python_version()}")


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    sde = VPSDE()
    net = TinyConvScore(sde, args.channels, args.width, seed=0).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    images = digit_images(args.images, args.size, args.channels)
    gen = torch.Generator().manual_seed(1)
    d = images[0].numel()

    totals = {k: {"time": 0.0, "nfe": [], "bpd": []} for k in ("scipy", "ours32", "ours64", "fresh")}
    for start in range(0, args.images, args.batch):
        x = dequantize(images[start:start + args.batch], centered=False, generator=gen)
        probes = sample_probes(x.shape, "hutchinson_rademacher", 1, gen, x)  # [1, B, ...], shared
        other = sample_probes(x.shape, "hutchinson_rademacher", 1, gen, x)  # for the noise yardstick

        def timed(key: str, fn) -> None:
            best = math.inf
            for _ in range(args.repeats):  # best of N: the machine may be shared
                tic = time.perf_counter()
                logp, nfe = fn()
                best = min(best, time.perf_counter() - tic)
            totals[key]["time"] += best
            totals[key]["nfe"].append(nfe)
            totals[key]["bpd"].append(to_bits_per_dim(-logp.double(), d, discrete=True, centered=False))

        common = dict(eps=args.eps, rtol=args.tol, atol=args.tol)
        timed("scipy", lambda: scipy_rk45_log_likelihood(net, sde, x, probes[0], args.eps, args.tol, args.tol))
        timed("ours32", lambda: ode_log_likelihood(net, sde, x, probes=probes, **common)[::2])
        timed("ours64", lambda: ode_log_likelihood(net, sde, x, probes=probes, ode_float64=True, **common)[::2])
        timed("fresh", lambda: ode_log_likelihood(net, sde, x, probes=other, **common)[::2])

    bpd = {k: torch.cat(v["bpd"]) for k, v in totals.items()}
    base_rate = args.images / totals["scipy"]["time"]
    rows = [
        ("scipy solve_ivp RK45 (float64 NumPy state, torch↔NumPy per eval)", "scipy"),
        ("ours: torch Dormand–Prince, float32 state", "ours32"),
        ("ours: torch Dormand–Prince, float64 state", "ours64"),
    ]
    lines = ["| evaluator | images/s | speed-up | NFE per batch (mean) | bits/dim | max abs. diff. vs scipy (bits/dim) |",
             "|---|---|---|---|---|---|"]
    for label, key in rows:
        rate = args.images / totals[key]["time"]
        nfe = float(np.mean(totals[key]["nfe"]))
        diff = "–" if key == "scipy" else f"{float((bpd[key] - bpd['scipy']).abs().max()):.2e}"
        lines.append(f"| {label} | {rate:.2f} | {rate / base_rate:.2f}× | {nfe:.0f} | "
                     f"{float(bpd[key].mean()):.4f} | {diff} |")
    noise = (bpd["fresh"] - bpd["ours32"]).abs()
    lines.append("")
    lines.append(f"Hutchinson noise yardstick (ours with a different Rademacher probe): mean abs. diff. "
                 f"{float(noise.mean()):.2e}, max {float(noise.max()):.2e} bits/dim per image.")
    lines.append(f"Timing: best of {args.repeats} runs per batch and evaluator, {args.threads} torch thread(s), CPU.")
    lines.append(f"Setup: VP SDE, ε = {args.eps:g}, rtol = atol = {args.tol:g}; {args.images} digits images "
                 f"{args.channels}×{args.size}×{args.size} (D = {d}), uniform dequantization, batch {args.batch}; "
                 f"score = −net(x, t)/σ(t) with a random-weight 3-layer conv net (width {args.width}); "
                 "bits/dim with the +8 offset of [0, 1] data, ODE from the dequantized image, no residual "
                 "(the protocol of the published evaluator).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small run (< 1 min): 8 images 3×8×8, width 16, best of 2")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--eps", type=float, default=1e-5)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: small tensors, shared machines)")
    p.add_argument("--repeats", type=int, default=3, help="time each solve N times, keep the fastest")
    p.add_argument("--append", type=Path, default=None, help="append the table (with machine info) to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.batch, args.size, args.width, args.repeats = 8, 8, 8, 16, 2
    table = run(args)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    report = (f"### Likelihood evaluator: ours vs scipy RK45 ({'quick' if args.quick else 'full'})\n\n"
              f"- date: {stamp}\n- machine: {machine_info()}\n- command: `{command}`\n\n{table}\n")
    print(report)
    if args.append is not None:
        args.append.parent.mkdir(parents=True, exist_ok=True)
        with args.append.open("a") as f:
            f.write("\n" + report)


if __name__ == "__main__":
    main()
