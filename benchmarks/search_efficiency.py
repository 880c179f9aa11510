"""Search efficiency: ASHA + TPE against random search without early stopping, at equal compute.

Both arms run the project's main sweep (``search_spaces/prior.yaml``: the τ prior, its exponent k
and ε, tiny DDPM++ on the embedded digits, objective eval/nll_bpd) through
``python -m st_sweeps.tune``. Random search runs every trial to the end; ASHA (rungs at the
grace period × 2^i) stops trials in the worse half of a rung, and TPE proposes the next points
from what has been seen, so it can afford more trials for the same number of training steps.

Compute is counted in trial-steps (training steps summed over trials). Each evaluation report
of each trial is placed in time (Tune's ``result.json``); at every report, the steps spent so far
are the steps all trials had reported by then, and the best NLL is the lowest reported by then —
intermediate evaluations of stopped trials included. The table compares the two arms at fractions
of the budget both spent (the smaller of the two totals).

    python -m benchmarks.search_efficiency --quick
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import (Section, TrialLog, base_sweep, command_line, emit, fmt,
                               markdown_table, mode_of, parse_args, run_sweep, set_threads)

MODULE = "benchmarks.search_efficiency"
METRIC = "eval/nll_bpd"

SIZES: dict[str, dict[str, Any]] = {
    # random trials; ASHA+TPE trials (more: stopped trials are cheap); train and eval overrides
    "smoke": {"random": 1, "asha": 2, "startup": 1, "train": {"steps": 4, "eval_every_steps": 2},
              "eval": {"nll_examples": 2}, "grace": 2},
    "quick": {"random": 4, "asha": 7, "startup": 3, "train": {"steps": 60, "eval_every_steps": 20},
              "eval": {"nll_examples": 16}, "grace": 20},
    "full": {"random": 8, "asha": 14, "startup": 4, "train": {}, "eval": {}, "grace": 30},  # prior.yaml's sizes
}
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def arm_sweep(mode: str, arm: str, seed: int) -> dict[str, Any]:
    size = SIZES[mode]
    sweep = copy.deepcopy(base_sweep())
    sweep["base"]["train"].update(size["train"])
    # the objective is the NLL: no samples, no sample-quality figure (they cost both arms alike)
    sweep["base"]["eval"].update({**size["eval"], "num_samples": 0, "sample_quality": "none"})
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


def run(args: argparse.Namespace) -> Section:
    mode = mode_of(args)
    set_threads(args.threads)
    seeds = args.seeds if args.seeds else ([0, 1] if mode == "full" else [0])
    rows, summary, notes = [], [], []
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
                rows.append([seed, f"{frac:.0%} ({frac * budget:.0f})", fmt(r, 4), fmt(a, 4),
                             fmt(a - r, 3) if math.isfinite(a) and math.isfinite(r) else "–"])
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
    size = SIZES[mode]
    steps = base_sweep()["base"]["train"]["steps"] if not size["train"] else size["train"]["steps"]
    notes.append(f"- Trials of {steps} steps, evaluated every "
                 f"{size['train'].get('eval_every_steps', base_sweep()['base']['train']['eval_every_steps'])} steps; "
                 f"ASHA grace period {size['grace']} steps, reduction factor 2; TPE's first {size['startup']} "
                 f"points random. One seed is one draw: differences within the spread between seeds mean nothing.")
    table = markdown_table(["searcher seed", "budget share (trial-steps)", "best NLL, random (bits/dim)",
                            "best NLL, TPE + ASHA (bits/dim)", "difference"], rows)
    table += "\n\n" + markdown_table(["searcher seed", "arm", "trials", "ran all steps", "stopped early",
                                      "trial-steps", "best NLL (bits/dim)", "wall (s)"], summary)
    return Section("Search efficiency: TPE + ASHA vs random search at equal compute", command_line(MODULE, args.argv),
                   args.threads, table, notes, mode)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv, lambda p: p.add_argument(
        "--seeds", type=int, nargs="+", help="searcher seeds (default: 0, and 1 in the full size)"))
    emit(run(args), args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
