"""One figure per claim: what was measured (left) and each part's estimate against its rule (right).

Left panels, chosen by what the claim's parts read: NLL against digits_fd per configuration (mean
and 95 % interval over seeds, seeds as dots); a metric over training steps; the trainer's loss by
diffusion time; the STF target's covariance against the reference size; soft truncation's
effective weight. Right: one small axis per part with its estimate, interval, threshold(s) and
verdict.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from st_sweeps.claims.intervals import t_interval
from st_sweeps.claims.manifest import Manifest
from st_sweeps.claims.results import ClaimResult, PartResult
from st_sweeps.claims.statistics import Contrast, LossByTimeRatio, Runs, STFTargetVariance, TauExpectation
from st_sweeps.claims.verdict import CONTRADICTED, HOLDS, Above, Below, Within

COLORS = {HOLDS: "tab:green", CONTRADICTED: "tab:red"}
NLL, FD = "eval/nll_bpd", "eval/digits_fd"


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) >= 2:
        iv = t_interval(values)
        return iv.mean, iv.mean - iv.low, iv.high - iv.mean
    return (values[0], 0.0, 0.0) if values else (math.nan, 0.0, 0.0)


def _finals(runs: Runs, config: str, metric: str) -> list[float]:
    return [r.final[metric] for r in runs.get(config, {}).values() if metric in r.final]


# ------------------------------------------------------------------------------------ data panels
def _scatter(ax: Any, manifest: Manifest, runs: Runs, configs: Sequence[str]) -> None:
    for i, c in enumerate(configs):
        xs, ys = _finals(runs, c, NLL), _finals(runs, c, FD)
        if not xs or not ys:
            continue
        (mx, lx, hx), (my, ly, hy) = _mean_ci(xs), _mean_ci(ys)
        color = f"C{i}"
        ax.scatter(xs, ys, s=12, alpha=0.35, color=color)
        ax.errorbar([mx], [my], xerr=[[lx], [hx]], yerr=[[ly], [hy]], fmt="o", color=color, capsize=3,
                    label=manifest.configuration(c).label)
    ax.set_yscale("log")
    ax.set_xlabel("NLL (bits/dim), lower is better")
    ax.set_ylabel("digits_fd, lower is better")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("final evaluation: mean and 95 % CI over seeds", fontsize=9)


def _strip(ax: Any, manifest: Manifest, runs: Runs, configs: Sequence[str], metric: str) -> None:
    for i, c in enumerate(configs):
        ys = _finals(runs, c, metric)
        if not ys:
            continue
        m, lo, hi = _mean_ci(ys)
        ax.scatter([i] * len(ys), ys, s=12, alpha=0.35, color=f"C{i}")
        ax.errorbar([i], [m], yerr=[[lo], [hi]], fmt="o", color=f"C{i}", capsize=4)
    ax.set_xticks(range(len(configs)), [manifest.configuration(c).label for c in configs], fontsize=7, rotation=8)
    ax.set_ylabel(metric)
    ax.set_title("final evaluation: seeds, mean and 95 % CI", fontsize=9)


def _curves(ax: Any, manifest: Manifest, runs: Runs, configs: Sequence[str], metric: str) -> None:
    for i, c in enumerate(configs):
        by_step: dict[int, list[float]] = {}
        for r in runs.get(c, {}).values():
            for e in r.evaluations:
                if metric in e.metrics:
                    by_step.setdefault(e.step, []).append(e.metrics[metric])
        steps = sorted(by_step)
        stats = [_mean_ci(by_step[s]) for s in steps]
        ax.errorbar(steps, [m for m, _, _ in stats], yerr=[[lo for _, lo, _ in stats], [hi for _, _, hi in stats]],
                    marker="o", capsize=3, color=f"C{i}", label=manifest.configuration(c).label)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.set_title("over training: mean and 95 % CI over seeds", fontsize=9)


def _loss_by_time(ax: Any, manifest: Manifest, runs: Runs, stat: LossByTimeRatio) -> None:
    for i, c in enumerate(stat.shown_configurations()):
        main = c == stat.config
        for j, r in enumerate(r for r in runs.get(c, {}).values() if r.loss_by_time):
            rows = [b for b in r.loss_by_time if b["mean_loss"] is not None]
            mids = [math.sqrt(b["t_low"] * b["t_high"]) for b in rows]
            ax.plot(mids, [b["mean_loss"] for b in rows], marker="o" if main else None, ms=3,
                    lw=1.2 if main else 0.8, alpha=0.9 if main else 0.5, color=f"C{i}",
                    label=manifest.configuration(c).label if j == 0 else None)
    ref = next(iter(runs.get(stat.config, {}).values()), None)
    if ref is not None and ref.loss_by_time:
        rows = list(ref.loss_by_time)
        ax.axvspan(rows[0]["t_low"], rows[stat.low_bins - 1]["t_high"], color="0.85", zorder=0)
        ax.axvspan(rows[-stat.high_bins]["t_low"], rows[-1]["t_high"], color="0.85", zorder=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("diffusion time t (shaded: the bins compared)")
    ax.set_ylabel("mean per-example training loss")
    ax.legend(fontsize=7)
    ax.set_title("trainer's loss by diffusion time (whole run), one line per seed", fontsize=9)


def _target_variance(ax: Any, stat: STFTargetVariance, details: Mapping[int, Mapping[str, Any]]) -> None:
    by_size: dict[int, list[float]] = {}
    for d in details.values():
        for k, v in d.get("trace_by_reference_size", {}).items():
            by_size.setdefault(int(k), []).append(v)
    sizes = sorted(by_size)
    stats = [_mean_ci(by_size[s]) for s in sizes]
    ax.errorbar(sizes, [m for m, _, _ in stats], yerr=[[lo for _, lo, _ in stats], [hi for _, _, hi in stats]],
                marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("reference set size (1 = DSM's own example)")
    ax.set_ylabel("σ² tr Cov[target | x_t] / D")
    ax.set_title(f"STF target covariance at SNR {stat.snr:g}, mean and 95 % CI over replicates", fontsize=9)


def _effective_weights(ax: Any, manifest: Manifest, parts: Sequence[PartResult], sde: Any) -> None:
    from st_sweeps.claims.tau_expectation import log_grid, tau_weight

    for i, p in enumerate(parts):
        stat = p.part.statistic
        assert isinstance(stat, TauExpectation)
        t = log_grid(stat.eps, sde.T, 2001)
        w = stat.objective.weighting(sde, t) * tau_weight(stat.objective, sde, stat.prior, stat.eps, t) / sde.g2(t)
        rho = sde.neg_log_snr(t)
        w = w / torch.trapezoid(w, rho)  # ε-loss weight per unit of −log SNR, normalised
        ax.plot(t.numpy(), w.numpy(), color=f"C{i}", label=f"{p.part.id}: {_form(stat)}")
    ax.set_xscale("log")
    ax.set_xlabel("diffusion time t")
    ax.set_ylabel("ε-loss weight per unit −log SNR (normalised)")
    ax.legend(fontsize=7)
    ax.set_title("the fixed weighting soft truncation amounts to (k = 1, ε = 1e-5)", fontsize=9)


def _form(stat: TauExpectation) -> str:
    obj = stat.objective
    weighting = type(obj.weighting).registry_name  # type: ignore[attr-defined]
    w = "P(τ≤t)" if obj.normalization == "integral" else "E[1{τ≤t}/Z_τ]"  # type: ignore[attr-defined]
    return f"{weighting}, {obj.normalization}: λ·{w}"  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ parts
def _part_axis(ax: Any, p: PartResult) -> None:
    rule = p.part.rule
    lines = [rule.threshold] if isinstance(rule, (Below, Above)) else [-rule.margin, rule.margin] \
        if isinstance(rule, Within) else []
    for x in lines:
        ax.axvline(x, color="0.4", ls="--", lw=1)
    color = COLORS.get(p.verdict, "tab:orange")
    if p.interval is not None:
        iv = p.interval
        ax.errorbar([iv.mean], [0], xerr=[[iv.mean - iv.low], [iv.high - iv.mean]], fmt="o", color=color, capsize=4)
        ax.scatter(list(p.values.values()), [0.25] * len(p.values), s=8, color="0.5")
        lo, hi = min([iv.low, *lines]), max([iv.high, *lines])
        pad = 0.15 * (hi - lo or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_yticks([])
    ax.set_ylim(-0.5, 0.6)
    ax.set_title(f"{p.part.id}: {p.verdict} ({p.part.units})", fontsize=8, color=color)
    ax.tick_params(axis="x", labelsize=7)


def claim_figure(manifest: Manifest, result: ClaimResult, runs: Runs,
                 details: Mapping[str, Mapping[int, Mapping[str, Any]]], path: Path) -> None:
    """``details``: part id -> replicate -> a measurement's details."""
    plt = _plt()
    panels: list[Any] = []
    contrasts = [p.part.statistic for p in result.parts if isinstance(p.part.statistic, Contrast)]
    configs = [k.id for k in manifest.configurations
               if any(k.id in s.configurations() for s in contrasts)]
    metrics = {s.metric for s in contrasts}
    for p in result.parts:
        s = p.part.statistic
        if isinstance(s, LossByTimeRatio):
            panels.append(lambda ax, s=s: _loss_by_time(ax, manifest, runs, s))
        elif isinstance(s, STFTargetVariance):
            panels.append(lambda ax, s=s, p=p: _target_variance(ax, s, details.get(p.part.id, {})))
    taus = [p for p in result.parts if isinstance(p.part.statistic, TauExpectation)]
    if taus:
        sde = manifest.experiment(manifest.configurations[0], "cpu", 0).sde
        panels.append(lambda ax: _effective_weights(ax, manifest, taus, sde))
    curve = [s for s in contrasts if s.evaluations == "mean"]
    if curve:
        panels.append(lambda ax: _curves(ax, manifest, runs, curve[0].configurations(), curve[0].metric))
    elif NLL in metrics and FD in metrics:
        panels.append(lambda ax: _scatter(ax, manifest, runs, configs))
    elif contrasts:
        panels.append(lambda ax: _strip(ax, manifest, runs, configs, contrasts[0].metric))
    rows = max(len(panels), 1) * 3
    fig = plt.figure(figsize=(11, 3.6 * max(len(panels), 1)), dpi=100)
    grid = fig.add_gridspec(max(rows, len(result.parts)), 3)
    per = max(rows, len(result.parts)) // max(len(panels), 1)
    for i, draw in enumerate(panels):
        draw(fig.add_subplot(grid[i * per:(i + 1) * per, :2]))
    n = max(rows, len(result.parts))
    step = n // len(result.parts)
    for i, p in enumerate(result.parts):
        _part_axis(fig.add_subplot(grid[i * step:(i + 1) * step, 2]), p)
    fig.suptitle(f"Claim {result.claim.id}: {result.claim.title} — {result.verdict}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
