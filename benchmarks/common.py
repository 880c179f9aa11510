"""What the benchmarks share: run sizes, threads, interleaved timing, memory readings, the machine
description, Markdown tables, and appending a section to RESULTS.md.

Every benchmark is a ratio against a plain baseline measured in the same run, on the same
machine, interleaved with it (so that a neighbour's load hits both alike), and reports medians.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
MODES = ("smoke", "quick", "full")
T = TypeVar("T")


# ----------------------------------------------------------------------------------- arguments
def add_common_args(parser: argparse.ArgumentParser) -> None:
    """--smoke / --quick (default: full), --threads, --append [FILE]."""
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the size `make bench` runs (a few minutes on 2 CPU cores)")
    size.add_argument("--smoke", action="store_true",
                      help="the smallest run that still prints the table (tests); its figures mean little")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in this process (default 1: two OpenMP threads on two shared cores "
                             "spin-wait against anything else running, measured 10-30x slower)")
    parser.add_argument("--append", nargs="?", type=Path, const=RESULTS, default=None, metavar="FILE",
                        help=f"append the section to FILE (default {RESULTS.relative_to(REPO)})")


def parse_args(doc: str | None, argv: Sequence[str] | None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """A benchmark's arguments: the common ones, then ``extra``'s; ``argv`` kept for the command line."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def mode_of(args: argparse.Namespace) -> str:
    return "smoke" if args.smoke else "quick" if args.quick else "full"


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)  # for subprocesses started from here


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The exact command that reproduces this run (module form, repo root as working directory)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", "-m", module, *map(shlex.quote, args)])


# ----------------------------------------------------------------------------------- timing
def interleaved(arms: dict[str, Callable[[], T]], reps: int, warmup: int = 1) -> dict[str, list[T]]:
    """Run every arm ``warmup + reps`` times, the order rotated each round (A B C, B C A, ...),
    so slow drifts and a neighbour's bursts spread over all arms. Each arm returns what it
    measured (setup outside its timed region is not counted). Warm-up rounds are dropped."""
    names = list(arms)
    out: dict[str, list[T]] = {n: [] for n in names}
    for r in range(warmup + reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            seconds = arms[name]()
            if r >= warmup:
                out[name].append(seconds)
    return out


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def rel_spread(xs: Sequence[float]) -> float:
    """(max − min) / median: how much the repetitions disagree."""
    m = median(xs)
    return (max(xs) - min(xs)) / m if m else float("nan")


@dataclass(frozen=True)
class Elapsed:
    """Wall-clock and CPU seconds (this process, all its threads) of one timed region. On a
    shared machine the CPU time is the steadier figure for single-threaded work: it does not
    count the time the scheduler gave a neighbour; it does not count I/O waits (fsync) either."""

    wall: float
    cpu: float

    def __add__(self, other: "Elapsed") -> "Elapsed":
        return Elapsed(self.wall + other.wall, self.cpu + other.cpu)

    def __sub__(self, other: "Elapsed") -> "Elapsed":
        return Elapsed(self.wall - other.wall, self.cpu - other.cpu)


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.elapsed``."""

    def __enter__(self) -> "Stopwatch":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = Elapsed(time.perf_counter() - self._wall, time.process_time() - self._cpu)


# ----------------------------------------------------------------------------------- memory
def _status_kib(field: str, pid: int | str = "self") -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def rss_mib(pid: int | str = "self") -> float | None:
    kib = _status_kib("VmRSS", pid)
    return kib / 1024 if kib is not None else None


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """VmHWM: the process's peak resident set size (since start or the last reset)."""
    kib = _status_kib("VmHWM", pid)
    return kib / 1024 if kib is not None else None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _mem_total_gib() -> float | None:
    try:
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        return int(m.group(1)) / 2**20 if m else None
    except OSError:
        return None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _git() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "-"
    except (OSError, subprocess.SubprocessError):
        return "-"


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_description(threads: int) -> dict[str, str]:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    mem = _mem_total_gib()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "machine": (f"{_cpu_model()}, {usable} of {cores} logical cores usable, "
                    f"{mem:.0f} GiB RAM" if mem else f"{_cpu_model()}, {usable} cores")
                   + f", GPU: {gpu_name() or 'none'}",
        "load": f"load average {load[0]:.1f} at start (other jobs share the cores)",
        "threads": f"{threads} torch thread(s) in the benchmark process",
        "versions": (f"Python {platform.python_version()}, torch {_version('torch')}, ray {_version('ray')}, "
                     f"optuna {_version('optuna')}, mlflow {_version('mlflow')}, numpy {_version('numpy')}"),
        "commit": _git(),
    }


# ----------------------------------------------------------------------------------- output
def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


@dataclass
class Section:
    """One benchmark's output: a Markdown section with its provenance."""

    title: str
    command: str
    threads: int
    table: str
    notes: Sequence[str] = ()
    mode: str = "full"

    def render(self) -> str:
        info = machine_description(self.threads)
        head = [f"### {self.title} ({self.mode})", "",
                f"- date: {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
                f"- machine: {info['machine']}; {info['load']}",
                f"- threads: {info['threads']}",
                f"- versions: {info['versions']}; st_sweeps at {info['commit']}",
                f"- command: `{self.command}`", ""]
        tail = [""] + [f"{n}" for n in self.notes] if self.notes else []
        return "\n".join(head + [self.table] + tail) + "\n"


def emit(section: Section, append: Path | None) -> str:
    text = section.render()
    print(text, flush=True)
    if append is not None:
        append.parent.mkdir(parents=True, exist_ok=True)
        with append.open("a") as f:
            f.write("\n" + text)
    return text


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or x != x:
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{x:+.1f} %"


def python_env() -> dict[str, str]:
    """Environment for benchmark subprocesses: this checkout importable, one OpenMP thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ----------------------------------------------------------------------------------- process trees
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the name may hold spaces and parentheses
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def descendants(root: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def process_title(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


class ProcessTreeSampler:
    """Samples a process and all its descendants every ``interval`` seconds in a thread: each
    process's peak RSS (the kernel's VmHWM, exact whenever the process was seen at least once) and
    its title (Ray renames its workers, ``ray::IDLE`` → ``ray::ImplicitFunc.train``), and the
    largest sum of current RSS over the tree at one sample (shared pages count once per process,
    so the sum overstates what the machine spent)."""

    def __init__(self, root: int, interval: float = 0.25):
        import threading

        self.root, self.interval = root, interval
        self.peak_mib: dict[int, float] = {}
        self.titles: dict[int, str] = {}
        self.tree_peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "ProcessTreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        total = 0.0
        for pid in descendants(self.root):
            hwm, rss = peak_rss_mib(pid), rss_mib(pid)
            if hwm is None or rss is None:  # exited, or a kernel thread
                continue
            total += rss
            self.peak_mib[pid] = max(self.peak_mib.get(pid, 0.0), hwm)
            title = process_title(pid)
            if title and ("IDLE" not in title or pid not in self.titles):
                self.titles[pid] = title
        self.tree_peak_mib = max(self.tree_peak_mib, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


# ----------------------------------------------------------------------------------- sweeps
@dataclass
class TrialLog:
    """One Tune trial as its ``result.json`` tells it: a row per report (evaluation)."""

    trial_id: str
    reports: list[dict]

    @property
    def params(self) -> dict:
        return dict(self.reports[-1].get("config", {})) if self.reports else {}

    @property
    def steps(self) -> int:
        return int(self.reports[-1].get("step", 0)) if self.reports else 0

    @property
    def seconds(self) -> float:
        """Seconds from the trial's start to its last report (Tune's time_total_s)."""
        return float(self.reports[-1].get("time_total_s", 0.0)) if self.reports else 0.0

    @property
    def finished(self) -> bool:
        return bool(self.reports) and self.reports[-1].get("trial/finished") == 1.0


@dataclass
class SweepRun:
    wall: float  # seconds, the whole CLI process: interpreter, imports, Ray start, trials, report
    trials: list[TrialLog]
    directory: Path
    stdout: str


def write_sweep_file(sweep: dict, work: Path, name: str) -> Path:
    """The sweep file, with storage and the MLflow store inside ``work``."""
    import yaml

    data = {**sweep, "storage_path": str(work / "ray_results"),
            "mlflow": {"experiment": name, "tracking_uri": f"sqlite:///{(work / 'mlflow.db').resolve()}"}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_sweep(sweep: dict, work: Path, name: str, *, timeout: float = 3600,
              sampler_interval: float | None = None) -> tuple[SweepRun, ProcessTreeSampler | None]:
    """Run ``python -m st_sweeps.tune`` on ``sweep`` (a sweep-file mapping) as a subprocess in
    ``work`` and read its trials back; optionally sample the process tree's memory meanwhile."""
    import json

    work.mkdir(parents=True, exist_ok=True)
    path = write_sweep_file(sweep, work, name)
    env = python_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "st_sweeps.tune", str(path), "--name", name]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = ProcessTreeSampler(proc.pid, sampler_interval) if sampler_interval else None
    try:
        if sampler is not None:
            with sampler:
                out, err = proc.communicate(timeout=timeout)
        else:
            out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"sweep {name} exited with {proc.returncode}:\n{err[-4000:]}")
    directory = work / "ray_results" / name
    trials = []
    for f in sorted(directory.glob("trial_*/result.json")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        trials.append(TrialLog(f.parent.name.removeprefix("trial_"), rows))
    return SweepRun(wall, trials, directory, out), sampler


def base_sweep(path: Path = REPO / "search_spaces" / "prior.yaml") -> dict:
    """A shipped sweep file as a mapping (benchmarks start from the project's main sweep)."""
    import yaml

    return yaml.safe_load(path.read_text())


def update_eval(ev: dict[str, Any], changes: dict[str, Any]) -> None:
    """``ev.update(changes)``, except that ``likelihood`` settings are merged into the sweep's own
    (a benchmark that changes the number of examples keeps the sweep's tolerances)."""
    changes = dict(changes)
    if "likelihood" in changes:
        ev["likelihood"] = {**ev.get("likelihood", {}), **changes.pop("likelihood")}
    ev.update(changes)
