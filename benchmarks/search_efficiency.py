"""Search efficiency: ASHA + TPE against random search without early stopping, at equal compute,
over several searcher seeds; and where ASHA may stop trials at all (rank correlation of rungs).

Both arms run the project's main sweep (``search_spaces/prior.yaml``: the τ prior, its exponent k
and ε, the 16-channel DDPM++ on the embedded digits) through ``python -m st_sweeps.tune`` with one
objective, eval/nll_bpd, and without the sweep's baseline (it would cost both arms alike). Random
search runs every trial to the end; ASHA (rungs at the grace period × 2^i) stops trials in the
worse half of a rung, and TPE proposes the next points from what has been seen, so it can afford
more trials for the same number of training steps. Both arms evaluate at every rung (the random
arm's intermediate evaluations stop nothing; they place its trials in time and feed the rank
correlation below).

Compute is counted in trial-steps (training steps summed over trials). Each evaluation report
of each trial is placed in time (Tune's ``result.json``); at every report, the steps spent so far
are the steps all trials had reported by then, and the best NLL is the lowest reported by then —
intermediate evaluations of stopped trials included. The tables compare the two arms at fractions
of the budget both spent (the smaller of the two totals), per seed and as mean ± standard error
over seeds; a difference smaller than two standard errors is reported as within noise.

Rung correlation: over the random arm's trials (no early stopping), the Spearman rank correlation
between the NLL at each rung and the final NLL: how well a rung already ranks configurations the
way the end does, which is what ASHA's stopping assumes.

    python -m benchmarks.search_efficiency --quick
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import (Section, TrialLog, base_sweep, command_line, emit, fmt,
                               markdown_table, mode_of, parse_args, run_sweep, set_threads, update_eval)

MODULE = "benchmarks.search_efficiency"
METRIC = "eval/nll_bpd"

SIZES: dict[str, dict[str, Any]] = {
    # random trials; ASHA+TPE trials (more: stopped trials are cheap); train and eval overrides; seeds
    "smoke": {"random": 1, "asha": 2, "startup": 1, "train": {"steps": 4, "eval_every_steps": 2},
              "eval": {"likelihood": {"examples": 2}}, "grace": 2, "seeds": [0]},
    # prior.yaml's trials as shipped, one rung at half of them
    "quick": {"random": 4, "asha": 7, "startup": 3, "train": {"eval_every_steps": 750}, "eval": {},
              "grace": 750, "seeds": [0, 1, 2]},
    "full": {"random": 8, "asha": 14, "startup": 4, "train": {"eval_every_steps": 375}, "eval": {},
             "grace": 375, "seeds": [0, 1, 2, 3, 4]},
}
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
NOISE_Z = 2.0


def arm_sweep(mode: str, arm: str, seed: int) -> dict[str, Any]:
    size = SIZES[mode]
    sweep = copy.deepcopy(base_sweep())
    sweep.pop("baseline", None)
    sweep["base"]["train"].update(size["train"])
    # the objective is the NLL: no samples, no sample-quality figure (they cost both arms alike)
    update_eval(sweep["base"]["eval"], {**size["eval"], "num_samples": 0, "sample_quality": "none"})
    sweep["objectives"] = [{"metric": METRIC, "mode": "min"}]
    sweep["max_concurrent"] = 2 if mode != "smoke" else 1
    if arm == "random":
        sweep.update({"trials": size["random"], "searcher": {"name": "random", "seed": seed},
                      "scheduler": {"name": "none"}})
    else:
        sweep.update({"trials": size["asha"], "searcher": {"name": "tpe", "seed": seed,
                                                          "n_startup_trials": size["startup"]},
                      "scheduler": {"name": "asha", "grace_period": size["grace"], "reduction_factor": 2}})
    return sweep


def curve(trials: list[TrialLog]) -> list[tuple[int, float]]:
    """(trial-steps spent, best NLL so far) at each evaluation report, in time order."""
    events = []
    for trial in trials:
        # timestamp is whole seconds; time_total_s runs from the trial's start: the latest of
        # (timestamp − time_total_s) is within a second of that start
        start = max(r["timestamp"] - r["time_total_s"] for r in trial.reports)
        for r in trial.reports:
            if METRIC in r:
                events.append((start + r["time_total_s"], trial.trial_id, int(r["step"]), float(r[METRIC])))
    events.sort()
    latest: dict[str, int] = {}
    best, out = math.inf, []
    for _, tid, step, value in events:
        latest[tid] = step
        best = min(best, value) if math.isfinite(value) else best
        out.append((sum(latest.values()), best))
    return out


def best_at(points: list[tuple[int, float]], budget: float) -> float:
    """The best value reached within ``budget`` trial-steps."""
    values = [b for spent, b in points if spent <= budget + 1e-9]
    return values[-1] if values else math.nan


def steps_to_reach(points: list[tuple[int, float]], target: float) -> int | None:
    return next((spent for spent, b in points if b <= target), None)


def rung_values(trials: list[TrialLog]) -> dict[int, dict[str, float]]:
    """step -> {trial: NLL at that step}, for trials that ran all their steps."""
    out: dict[int, dict[str, float]] = {}
    for t in trials:
        if not t.finished:
            continue
        for r in t.reports:
            if isinstance(r.get(METRIC), (int, float)) and math.isfinite(r[METRIC]):
                out.setdefault(int(r["step"]), {})[t.trial_id] = float(r[METRIC])
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for fewer than 3 pairs."""
    if len(a) < 3:
        return math.nan
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def mean_se(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan)


def verdict(mean: float, se: float) -> str:
    if not math.isfinite(se):
        return "one seed: no spread"
    if mean == 0 and se == 0:
        return "no difference: the same best trial in every seed"
    return "within noise" if abs(mean) <= NOISE_Z * se else ("TPE + ASHA better" if mean < 0 else "random better")


def run(args: argparse.Namespace) -> Section:
    mode = mode_of(args)
    set_threads(args.threads)
    size = SIZES[mode]
    seeds = args.seeds if args.seeds else size["seeds"]
    rows, summary, notes = [], [], []
    diffs: dict[float, list[float]] = {f: [] for f in FRACTIONS}
    rungs: dict[int, tuple[list[float], list[float]]] = {}  # pooled over seeds: (rung values, final values)
    per_seed_rho: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="st_bench_search_") as tmp:
        for seed in seeds:
            runs, points = {}, {}
            for arm in ("random", "asha"):
                runs[arm], _ = run_sweep(arm_sweep(mode, arm, seed), Path(tmp) / f"{arm}{seed}", f"{arm}-seed{seed}")
                points[arm] = curve(runs[arm].trials)
                if not points[arm]:
                    raise RuntimeError(f"the {arm} sweep reported no {METRIC}")
            budget = min(points["random"][-1][0], points["asha"][-1][0])
            for frac in FRACTIONS:
                r, a = best_at(points["random"], frac * budget), best_at(points["asha"], frac * budget)
                d = a - r if math.isfinite(a) and math.isfinite(r) else math.nan
                diffs[frac].append(d)
                rows.append([seed, f"{frac:.0%} ({frac * budget:.0f})", fmt(r, 4), fmt(a, 4), fmt(d, 3)])
            target = best_at(points["random"], budget)
            reach = steps_to_reach(points["asha"], target)
            for arm, label in (("random", "random, no early stopping"), ("asha", "TPE + ASHA")):
                t = runs[arm].trials
                summary.append([seed, label, len(t), sum(x.finished for x in t), sum(not x.finished for x in t),
                                points[arm][-1][0], fmt(points[arm][-1][1], 4), fmt(runs[arm].wall)])
            best = f"random search's best within the common budget ({fmt(target, 4)} bits/dim)"
            notes.append(f"- seed {seed}: TPE + ASHA reached {best} after {reach} trial-steps "
                         f"({reach / budget:.0%} of the budget)." if reach is not None
                         else f"- seed {seed}: TPE + ASHA did not reach {best} within its own budget.")
            by_step = rung_values(runs["random"].trials)
            final_step = max(by_step, default=0)
            for step, values in sorted(by_step.items()):
                if step == final_step:
                    continue
                common = sorted(set(values) & set(by_step[final_step]))
                pair = rungs.setdefault(step, ([], []))
                pair[0].extend(values[t] for t in common)
                pair[1].extend(by_step[final_step][t] for t in common)
                per_seed_rho.setdefault(step, []).append(spearman([values[t] for t in common],
                                                                  [by_step[final_step][t] for t in common]))
    agg = []
    for frac in FRACTIONS:
        m, se = mean_se(diffs[frac])
        agg.append([f"{frac:.0%}", len([d for d in diffs[frac] if math.isfinite(d)]), fmt(m, 3),
                    fmt(se, 2) if math.isfinite(se) else "–", verdict(m, se)])
    corr = []
    for step, (at_rung, final) in sorted(rungs.items()):
        rho = [r for r in per_seed_rho[step] if math.isfinite(r)]
        corr.append([step, len(at_rung), f"{spearman(at_rung, final):.2f}", ", ".join(f"{r:.2f}" for r in rho) or "–"])
    steps = base_sweep()["base"]["train"]["steps"] if "steps" not in size["train"] else size["train"]["steps"]
    notes.append(f"- Trials of {steps} steps, evaluated every {size['train']['eval_every_steps']} steps (NLL on "
                 f"{size['eval'].get('likelihood', {}).get('examples', base_sweep()['base']['eval']['likelihood']['examples'])} "
                 f"test examples); ASHA grace period {size['grace']} steps, reduction factor 2; TPE's first "
                 f"{size['startup']} points random; searcher seeds {', '.join(map(str, seeds))}. Difference = TPE + "
                 f"ASHA − random (negative: TPE + ASHA found a lower NLL); mean ± standard error over seeds, "
                 f"within noise when below {NOISE_Z:g} standard errors. With the same seed, TPE's random first "
                 f"points are the random arm's first points: the arms are paired on them.")
    table = markdown_table(["searcher seed", "budget share (trial-steps)", "best NLL, random (bits/dim)",
                            "best NLL, TPE + ASHA (bits/dim)", "difference"], rows)
    table += "\n\n" + markdown_table(["budget share", "seeds", "difference TPE + ASHA − random, mean (bits/dim)",
                                      "standard error", "reading"], agg)
    table += "\n\n" + markdown_table(["searcher seed", "arm", "trials", "ran all steps", "stopped early",
                                      "trial-steps", "best NLL (bits/dim)", "wall (s)"], summary)
    table += "\n\n" + markdown_table(["rung (step)", "trials (random arm, all seeds)",
                                      "Spearman rung vs final, pooled", "per seed"], corr)
    return Section("Search efficiency: TPE + ASHA vs random search at equal compute", command_line(MODULE, args.argv),
                   args.threads, table, notes, mode)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv, lambda p: p.add_argument(
        "--seeds", type=int, nargs="+", help="searcher seeds (default: 0 1 2 in the quick size, 0-4 in the full)"))
    emit(run(args), args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
