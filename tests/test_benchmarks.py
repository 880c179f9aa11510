"""Every benchmark runs in its smallest size (``--smoke``) and prints its Markdown table.

No timed assertions: the figures of a smoke run mean nothing, and the machine is shared. What is
checked: the script exits 0, prints its section title, a table header and at least one row, and
names the command that reproduces it. Each script runs in its own process, as ``run_all`` runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

# module, title, a table header cell, whether it starts Ray
CASES = [
    ("benchmarks.train_speed", "Training speed", "| model, data | batch | arm |", False),
    ("benchmarks.ray_scaling", "Ray Train data-parallel scaling", "| model, data | global batch | how |", True),
    ("benchmarks.sweep_overhead", "Sweep overhead", "| how the trials ran |", True),
    ("benchmarks.search_efficiency", "Search efficiency", "| searcher seed | budget share", True),
    ("benchmarks.memory", "Memory", "| process | count |", True),
    ("benchmarks.digits_fd", "digits_fd: classifier accuracy, noise floor and sanity", "| real digits |", False),
]


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def table_rows(stdout: str, header: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:  # after the header and the |---| line
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


@pytest.mark.parametrize("module, title, header, uses_ray",
                         [pytest.param(*c, marks=[pytest.mark.ray] if c[3] else [], id=c[0].split(".")[1])
                          for c in CASES])
def test_benchmark_smoke_prints_its_table(module: str, title: str, header: str, uses_ray: bool) -> None:
    out = run("-m", module, "--smoke")
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"### {title}" in out.stdout and "(smoke)" in out.stdout
    assert f"- command: `python -m {module} --smoke`" in out.stdout
    assert header in out.stdout, out.stdout[-3000:]
    assert table_rows(out.stdout, header), out.stdout[-3000:]


def test_run_all_runs_the_likelihood_benchmark_and_summarises(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    out = run("-m", "benchmarks.run_all", "--smoke", "--only", "likelihood", "--append", str(results))
    assert out.returncode == 0, out.stderr[-4000:]
    assert "| likelihood | ok |" in out.stdout
    text = results.read_text()
    assert "### Likelihood evaluator" in text and "| evaluator | images/s |" in text
