"""Sweep overhead: an N-trial sweep through ``python -m st_sweeps.tune`` against the same N trials
trained directly with ``Trainer.fit`` in this process, one after another.

The sweep is the project's main one (``search_spaces/prior.yaml``: τ prior and ε on the
16-channel DDPM++ over the embedded digits, without its baseline), with the random searcher and no
early stopping so that every trial runs all its steps, one trial at a time. Its trials' sampled parameters are read back from
Tune's ``result.json`` files and the very same experiment configs are then trained directly (one
torch thread, as each trial has), evaluation included. What the sweep adds: the CLI process and its
imports, Ray's start and stop, one trial process per trial, Optuna, the MLflow parent and child
runs, Tune checkpoints, the final report.

The two figures it derives, a fixed cost (outside the trials) and a cost per trial (inside the
trial functions beyond the direct training), also give the machinery's share of the main job:
(fixed + trials × per trial / concurrency) / the main job's wall time, for ``prior.yaml`` as
shipped; pass that wall time (``make sweep``, measured on the same machine) as ``--main-wall``.

    python -m benchmarks.sweep_overhead --quick [--main-wall SECONDS]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import (Section, Stopwatch, SweepRun, base_sweep, command_line, emit, fmt,
                               markdown_table, mode_of, parse_args, run_sweep, set_threads, update_eval)

MODULE = "benchmarks.sweep_overhead"

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"trials": 2, "train": {"steps": 2, "eval_every_steps": 0, "log_every_steps": 1},
              "eval": {"likelihood": {"examples": 2}, "num_samples": 0, "sample_quality": "none"}, "concurrent": [1]},
    "quick": {"trials": 4, "train": {"steps": 40, "eval_every_steps": 20},
              "eval": {"likelihood": {"examples": 16}, "num_samples": 8, "sampler": {"name": "euler_maruyama", "n_steps": 20}},
              "concurrent": [1]},
    "full": {"trials": 8, "train": {}, "eval": {}, "concurrent": [1, 2]},  # prior.yaml as shipped
}


def sweep_mapping(mode: str, concurrent: int) -> dict[str, Any]:
    size = SIZES[mode]
    sweep = copy.deepcopy(base_sweep())
    sweep.pop("baseline", None)  # its seeds are not sampled params: the direct runs could not repeat them
    sweep["base"]["train"].update(size["train"])
    update_eval(sweep["base"]["eval"], size["eval"])
    if sweep["base"]["eval"].get("num_samples") == 0:  # no samples: only the NLL can be an objective
        sweep["objectives"] = [o for o in sweep["objectives"] if o["metric"] == "eval/nll_bpd"]
    sweep.update({"trials": size["trials"], "max_concurrent": concurrent,
                  "searcher": {"name": "random", "seed": 0}, "scheduler": {"name": "none"}})
    return sweep


def direct_runs(sweep: dict[str, Any], run: SweepRun, work: Path) -> list[float]:
    """Train each trial's config with the plain Trainer here; seconds per trial."""
    from st_sweeps.search_space import search_space_from_dict
    from st_sweeps.trainer import Trainer

    space = search_space_from_dict(sweep)
    seconds = []
    for trial in run.trials:
        params = {k: v for k, v in trial.params.items() if k in space.keys}
        config = space.experiment(params, name=f"direct-{trial.trial_id}")
        run_dir = work / f"direct_{trial.trial_id}"
        with Stopwatch() as sw:
            Trainer(config, run_dir, progress=False).fit()
        shutil.rmtree(run_dir, ignore_errors=True)
        seconds.append(sw.elapsed.wall)
    return seconds


def main_job_note(fixed: float, per_trial: float, main_wall: float | None) -> str:
    """The machinery's cost for prior.yaml as shipped, and its share of the main job's wall time."""
    shipped = base_sweep()
    trials, concurrent = shipped["trials"], shipped.get("max_concurrent") or 1
    cost = fixed + trials * max(per_trial, 0.0) / concurrent
    text = (f"- The main job (`search_spaces/prior.yaml` as shipped: {trials} trials, {concurrent} at a time) pays "
            f"the machinery about {fmt(fixed)} + {trials} × {fmt(max(per_trial, 0.0))} / {concurrent} = {fmt(cost)} s")
    if main_wall:
        return text + f": {cost / main_wall:.1%} of its {fmt(main_wall)} s wall time (`--main-wall`)."
    return text + " (pass `--main-wall` with its measured wall time for the share)."


def run(args: argparse.Namespace) -> Section:
    mode = mode_of(args)
    set_threads(args.threads)
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="st_bench_sweep_") as tmp:
        work = Path(tmp)
        for concurrent in SIZES[mode]["concurrent"]:
            sweep = sweep_mapping(mode, concurrent)
            result, _ = run_sweep(sweep, work / f"c{concurrent}", f"overhead-c{concurrent}")
            n = len(result.trials)
            if n != sweep["trials"] or not all(t.finished for t in result.trials):
                raise RuntimeError(f"expected {sweep['trials']} finished trials, got "
                                   f"{sum(t.finished for t in result.trials)} of {n}")
            if concurrent == 1:
                direct = direct_runs(sweep, result, work)
                direct_sum = sum(direct)
                rows.append(["Trainer.fit, in this process, one after another", n, fmt(direct_sum),
                             fmt(direct_sum / n), "1.00×"])
            inside = sum(t.seconds for t in result.trials)
            rows.append([f"st_sweeps.tune CLI, {concurrent} trial(s) at a time: whole process", n, fmt(result.wall),
                         fmt(result.wall / n), f"{result.wall / direct_sum:.2f}×"])
            rows.append(["… of which inside the trial functions (Tune's time_total_s, summed)", n, fmt(inside),
                         fmt(inside / n), f"{inside / direct_sum:.2f}×"])
            if concurrent == 1:
                fixed, per_trial = result.wall - inside, (inside - direct_sum) / n
                notes.append(f"- Outside the trials (CLI start and imports, Ray start/stop, trial process starts, "
                             f"report): {fmt(fixed)} s in all; inside them, beyond the direct "
                             f"training (MLflow child run, Tune checkpoints and reports): "
                             f"{fmt(per_trial)} s per trial.")
                notes.append(main_job_note(fixed, per_trial, getattr(args, "main_wall", None)))
    steps = sweep["base"]["train"]["steps"]
    notes.append(f"- Trials: `search_spaces/prior.yaml`'s base and space, random searcher (seed 0), no scheduler, "
                 f"{steps} steps each with evaluations every {sweep['base']['train']['eval_every_steps'] or steps} "
                 f"steps; 1 CPU and 1 torch thread per trial, as in the direct runs.")
    table = markdown_table(["how the trials ran", "trials", "wall (s)", "per trial (s)", "ratio vs direct"], rows)
    return Section("Sweep overhead: Ray Tune sweep vs the same trials run directly", command_line(MODULE, args.argv),
                   args.threads, table, notes, mode)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv, lambda p: p.add_argument(
        "--main-wall", type=float, help="the main job's wall time in seconds (make sweep), for its overhead share"))
    emit(run(args), args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
