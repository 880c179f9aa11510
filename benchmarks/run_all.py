"""Run every benchmark, each in its own process: ``python -m benchmarks.run_all [--quick|--smoke] [--append]``.

``make bench`` runs ``--quick`` (about 10 minutes on 2 CPU cores). ``--append`` adds each
benchmark's section (its table, machine, versions, date and exact command) to
benchmarks/RESULTS.md. A benchmark that fails is reported and the others still run; the exit
status is then 1.

    python -m benchmarks.run_all --quick --append
    python -m benchmarks.run_all --smoke --only train_speed memory
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, RESULTS, markdown_table, python_env

# name -> command after "python" (the likelihood script predates the package and keeps its own flags)
BENCHMARKS: dict[str, list[str]] = {
    "likelihood": ["benchmarks/likelihood_vs_scipy.py"],
    "train_speed": ["-m", "benchmarks.train_speed"],
    "ray_scaling": ["-m", "benchmarks.ray_scaling"],
    "sweep_overhead": ["-m", "benchmarks.sweep_overhead"],
    "search_efficiency": ["-m", "benchmarks.search_efficiency"],
    "memory": ["-m", "benchmarks.memory"],
    "digits_fd": ["-m", "benchmarks.digits_fd"],
}
LIKELIHOOD_SMOKE = ["--images", "2", "--batch", "2", "--size", "4", "--width", "4", "--repeats", "1", "--tol", "1e-3"]


def command(name: str, mode: str, append: Path | None) -> list[str]:
    cmd = [sys.executable, *BENCHMARKS[name]]
    if name == "likelihood":
        cmd += {"smoke": LIKELIHOOD_SMOKE, "quick": ["--quick"], "full": []}[mode]
        if append is not None:
            cmd += ["--append", str(append)]
        return cmd
    if mode != "full":
        cmd.append(f"--{mode}")
    if append is not None:
        cmd += ["--append", str(append)]
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the size `make bench` runs")
    size.add_argument("--smoke", action="store_true", help="the smallest sizes (what the tests run)")
    p.add_argument("--append", nargs="?", type=Path, const=RESULTS, default=None, metavar="FILE",
                   help=f"append every section to FILE (default {RESULTS.relative_to(REPO)})")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    p.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[], help="leave these out")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    append = args.append.resolve() if args.append else None
    if append is not None and append.is_relative_to(REPO):
        append = append.relative_to(REPO)  # commands are run from REPO and recorded as typed
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    rows, failed = [], []
    for name in names:
        cmd = command(name, mode, append)
        shown = " ".join(["python", *cmd[1:]]).replace(str(REPO) + "/", "")
        print(f"\n===== {name}: {shown}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO, env=python_env()).returncode
        seconds = time.perf_counter() - t0
        rows.append([name, "ok" if rc == 0 else f"FAILED (exit {rc})", f"{seconds:.0f}"])
        if rc != 0:
            failed.append(name)
    print("\n" + markdown_table(["benchmark", "status", "seconds"], rows), flush=True)
    if append is not None:
        print(f"sections appended to {append}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
