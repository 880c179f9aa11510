"""Memory: peak RSS of a sweep's processes (the ``st_sweeps.tune`` driver, Ray's own processes,
each trial) against the same trial trained by the plain ``Trainer`` in a fresh process.

The sweep runs as ``python -m st_sweeps.tune`` in a subprocess; a thread samples that process and
all its descendants every 0.2 s and keeps each one's VmHWM (the kernel's peak RSS, exact for every
process seen at least once) and title (Ray renames a worker when it takes a trial:
``ray::ImplicitFunc.train``). Baselines, each in a fresh process that prints its own VmHWM: an
interpreter that has imported torch and st_sweeps, and ``Trainer.fit`` of the sweep's first
trial config. RSS counts shared pages (the torch libraries) in every process, so the sum over a
tree overstates what the machine spent; per-process peaks do not add up.

    python -m benchmarks.memory --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import (Section, add_common_args, base_sweep, command_line, emit, fmt, markdown_table, mode_of,
                               peak_rss_mib, python_env, run_sweep, set_threads, update_eval)

MODULE = "benchmarks.memory"

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"trials": 1, "concurrent": 1, "train": {"steps": 2, "eval_every_steps": 0, "log_every_steps": 1},
              "eval": {"likelihood": {"examples": 2}, "num_samples": 0, "sample_quality": "none"}},
    "quick": {"trials": 2, "concurrent": 1, "train": {"steps": 30, "eval_every_steps": 15}, "eval": {}},
    "full": {"trials": 4, "concurrent": 2, "train": {}, "eval": {}},  # prior.yaml's trials as shipped
}
ROLES = ("sweep driver (python -m st_sweeps.tune)", "trial process (ray::ImplicitFunc)", "raylet", "gcs_server",
         "idle Ray workers", "other Ray processes (agents, monitors)")


def role(pid: int, root: int, title: str) -> str:
    if pid == root:
        return ROLES[0]
    if "ImplicitFunc" in title or "run_trial" in title:
        return ROLES[1]
    if "raylet" in title:
        return ROLES[2]
    if "gcs_server" in title:
        return ROLES[3]
    if "ray::IDLE" in title or "default_worker.py" in title:
        return ROLES[4]
    return ROLES[5]


def sweep_mapping(mode: str) -> dict[str, Any]:
    size = SIZES[mode]
    sweep = copy.deepcopy(base_sweep())
    sweep["base"]["train"].update(size["train"])
    update_eval(sweep["base"]["eval"], size["eval"])
    if sweep["base"]["eval"].get("num_samples") == 0:  # no samples: only the NLL can be an objective
        sweep["objectives"] = [o for o in sweep["objectives"] if o["metric"] == "eval/nll_bpd"]
    sweep.update({"trials": size["trials"], "max_concurrent": size["concurrent"],
                  "searcher": {"name": "random", "seed": 0}, "scheduler": {"name": "none"}})
    return sweep


def probe(kind: str, work: Path, payload: dict[str, Any] | None = None) -> float:
    """Peak RSS (MiB) of a fresh process doing ``kind``: "import" or "trial" (train ``payload``)."""
    cmd = [sys.executable, "-m", MODULE, "--probe", kind, "--work", str(work)]
    if payload is not None:
        (work / "probe.json").write_text(json.dumps(payload))
    out = subprocess.run(cmd, capture_output=True, text=True, env=python_env(), timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {kind} failed:\n{out.stderr[-3000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


def run_probe(kind: str, work: Path) -> dict[str, float]:
    import torch

    import st_sweeps.trainer  # noqa: F401  (what every trial process imports)

    torch.set_num_threads(1)
    if kind == "trial":
        from st_sweeps.search_space import search_space_from_dict
        from st_sweeps.trainer import Trainer

        payload = json.loads((work / "probe.json").read_text())
        space = search_space_from_dict(payload["sweep"])
        config = space.experiment(payload["params"], name="memory-probe")
        Trainer(config, work / "probe_run", progress=False).fit()
    return {"peak_mib": peak_rss_mib() or float("nan")}


def run(args: argparse.Namespace) -> Section:
    mode = mode_of(args)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="st_bench_memory_") as tmp:
        work = Path(tmp)
        sweep = sweep_mapping(mode)
        result, sampler = run_sweep(sweep, work / "sweep", "memory", sampler_interval=0.2)
        assert sampler is not None
        first = result.trials[0] if result.trials else None
        if first is None:
            raise RuntimeError("the sweep ran no trial")
        bare = probe("import", work)
        keys = set(sweep["space"])
        plain = probe("trial", work, {"sweep": sweep, "params": {k: v for k, v in first.params.items() if k in keys}})
    by_role: dict[str, list[float]] = {r: [] for r in ROLES}
    for pid, peak in sampler.peak_mib.items():
        by_role[role(pid, sampler.root, sampler.titles.get(pid, ""))].append(peak)
    rows = [["python + import torch, st_sweeps.trainer (fresh process)", 1, fmt(bare), "–", "–"],
            ["Trainer.fit of one trial (fresh process, no Ray) — the baseline", 1, fmt(plain), "–", "1.00×"]]
    for r in ROLES:
        peaks = by_role[r]
        if not peaks:
            continue
        biggest = max(peaks)
        ratio = f"{biggest / plain:.2f}×" if r in (ROLES[0], ROLES[1]) else "–"
        rows.append([r, len(peaks), fmt(biggest), fmt(sum(peaks)), ratio])
    rows.append(["whole sweep tree: largest sum of simultaneous RSS", len(sampler.peak_mib), "–",
                 fmt(sampler.tree_peak_mib), f"{sampler.tree_peak_mib / plain:.2f}×"])
    table = markdown_table(["process", "count", "peak RSS, largest (MiB)", "sum of peaks (MiB)", "vs baseline"], rows)
    notes = [f"- Sweep: `search_spaces/prior.yaml`'s base and space, {sweep['trials']} trial(s) of "
             f"{sweep['base']['train']['steps']} steps, {sweep['max_concurrent']} at a time, random searcher, no "
             f"scheduler, MLflow on SQLite; wall {fmt(result.wall)} s. The baseline trains the sweep's first trial "
             f"config.",
             "- Peaks are per process and at different times; the tree row is the largest total seen at one "
             "sample (0.2 s apart), shared library pages counted in every process."]
    return Section("Memory: sweep driver, Ray and trial processes vs a plain training process",
                   command_line(MODULE, args.argv), args.threads, table, notes, mode)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--probe", choices=("import", "trial"), help=argparse.SUPPRESS)  # internal
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv
    if args.probe:
        print(json.dumps(run_probe(args.probe, args.work)))
        return 0
    emit(run(args), args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
