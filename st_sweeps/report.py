"""What a finished sweep tells: trials ranked by objective, the Pareto front, the best config.

Plain data in, text and files out (no Ray, no MLflow): ``tune`` turns Tune's results into
``TrialRow``s and logs the files written here into the sweep's parent MLflow run.

Ranking: completed trials first, then trials ASHA stopped early (their values come from fewer
steps, so they are not comparable with completed ones), then failed ones. Within a group, one
objective sorts by its value; several sort by Pareto rank (non-dominated sorting: front 1, the
front of the rest, ...) and then by the first objective.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

STATUS_ORDER = {"completed": 0, "pruned": 1, "error": 2}


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # "min" or "max"

    def key(self, value: float) -> float:
        """Smaller is better; missing or non-finite values last."""
        if value is None or not math.isfinite(value):
            return math.inf
        return value if self.mode == "min" else -value


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    status: str  # completed | pruned (stopped early by the scheduler) | error
    params: dict[str, Any]
    values: dict[str, float]  # objective metric -> value at the trial's last evaluation
    step: int | None = None  # training steps done
    run_id: str | None = None  # MLflow child run
    optuna_state: str | None = None
    error: str | None = None
    rank: int | None = None
    pareto_rank: int | None = None  # 1 = on the front (several objectives, completed trials)
    extra: dict[str, Any] = field(default_factory=dict)


def _values(row: TrialRow, objectives: Sequence[Objective]) -> list[float]:
    return [o.key(row.values.get(o.metric, math.nan)) for o in objectives]


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_ranks(rows: Sequence[TrialRow], objectives: Sequence[Objective]) -> list[int]:
    """Non-dominated sorting: rank 1 for the front, 2 for the front of the rest, ...
    (a row with a missing value is dominated by every complete row)."""
    vals = [_values(r, objectives) for r in rows]
    ranks = [0] * len(rows)
    remaining = set(range(len(rows)))
    level = 1
    while remaining:
        front = {i for i in remaining if not any(_dominates(vals[j], vals[i]) for j in remaining if j != i)}
        for i in front:
            ranks[i] = level
        remaining -= front
        level += 1
    return ranks


def rank_trials(rows: Sequence[TrialRow], objectives: Sequence[Objective]) -> list[TrialRow]:
    """Rows sorted best first, with ``rank`` (1..n) and, for completed rows, ``pareto_rank``."""
    objectives = list(objectives)
    pareto: dict[str, int] = {}
    if len(objectives) > 1:
        done = [r for r in rows if r.status == "completed"]
        pareto = {r.trial_id: p for r, p in zip(done, pareto_ranks(done, objectives))}

    def key(r: TrialRow) -> tuple:
        vals = _values(r, objectives)
        return (STATUS_ORDER.get(r.status, 3), pareto.get(r.trial_id, 0), vals[0], vals, r.trial_id)

    ordered = sorted(rows, key=key)
    return [replace(r, rank=i + 1, pareto_rank=pareto.get(r.trial_id)) for i, r in enumerate(ordered)]


def pareto_front(ranked: Sequence[TrialRow]) -> list[TrialRow]:
    """The completed trials on the front (``pareto_rank`` 1), in ranking order."""
    return [r for r in ranked if r.pareto_rank == 1]


def best_trial(ranked: Sequence[TrialRow], objectives: Sequence[Objective]) -> TrialRow | None:
    """The top completed trial with finite objective values (None if there is none)."""
    for r in ranked:
        if r.status == "completed" and all(math.isfinite(r.values.get(o.metric, math.nan)) for o in objectives):
            return r
    return None


# ------------------------------------------------------------------------------------ tables
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def table_rows(ranked: Sequence[TrialRow], objectives: Sequence[Objective], keys: Sequence[str]
               ) -> tuple[list[str], list[list[str]]]:
    multi = len(objectives) > 1
    header = ["rank", "trial", "status", "step"] + (["front"] if multi else []) + \
        [f"{o.metric} ({o.mode})" for o in objectives] + list(keys)
    body = []
    for r in ranked:
        cells = [str(r.rank), r.trial_id, r.status, _fmt(r.step)]
        if multi:
            cells.append("*" if r.pareto_rank == 1 else "")
        cells += [_fmt(r.values.get(o.metric)) for o in objectives]
        cells += [_fmt(r.params.get(k)) for k in keys]
        body.append(cells)
    return header, body


def format_table(ranked: Sequence[TrialRow], objectives: Sequence[Objective], keys: Sequence[str]) -> str:
    """A fixed-width text table (what the CLI prints)."""
    header, body = table_rows(ranked, objectives, keys)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths])]
    out += [line(cells) for cells in body]
    return "\n".join(out)


def format_markdown(ranked: Sequence[TrialRow], objectives: Sequence[Objective], keys: Sequence[str]) -> str:
    header, body = table_rows(ranked, objectives, keys)
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(esc(c) for c in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(esc(c) for c in cells) + " |" for cells in body]
    return "\n".join(out) + "\n"


def to_csv(ranked: Sequence[TrialRow], objectives: Sequence[Objective], keys: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "trial_id", "status", "step", "pareto_rank", *[o.metric for o in objectives], *keys,
                "mlflow_run_id", "optuna_state", "error"])
    for r in ranked:
        w.writerow([r.rank, r.trial_id, r.status, r.step, r.pareto_rank if r.pareto_rank is not None else "",
                    *[r.values.get(o.metric, "") for o in objectives], *[r.params.get(k, "") for k in keys],
                    r.run_id or "", r.optuna_state or "", r.error or ""])
    return buf.getvalue()


# ------------------------------------------------------------------------------------ plot
def plot_pareto(ranked: Sequence[TrialRow], objectives: Sequence[Objective], path: str | Path,
                title: str = "") -> Path:
    """Scatter of the first two objectives: completed trials, the front joined as a staircase,
    trials stopped early in grey (their values are from fewer steps)."""
    from matplotlib.figure import Figure

    path = Path(path)
    a, b = objectives[0], objectives[1]
    fig = Figure(figsize=(6, 4.5), dpi=110)
    ax = fig.add_subplot()

    def xy(rows: Sequence[TrialRow]) -> tuple[list[float], list[float]]:
        pts = [(r.values.get(a.metric, math.nan), r.values.get(b.metric, math.nan)) for r in rows]
        pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        return [p[0] for p in pts], [p[1] for p in pts]

    pruned = [r for r in ranked if r.status == "pruned"]
    done = [r for r in ranked if r.status == "completed" and r.pareto_rank != 1]
    front = sorted(pareto_front(ranked), key=lambda r: a.key(r.values.get(a.metric, math.nan)))
    if pruned:
        ax.scatter(*xy(pruned), marker="x", color="0.6", label="stopped early (ASHA)")
    if done:
        ax.scatter(*xy(done), color="tab:blue", alpha=0.7, label="completed")
    if front:
        fx, fy = xy(front)
        ax.plot(fx, fy, "-o", color="tab:red", drawstyle="steps-post", label="Pareto front")
        for r, x, y in zip(front, fx, fy):
            ax.annotate(r.trial_id, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"{a.metric} ({a.mode})")
    ax.set_ylabel(f"{b.metric} ({b.mode})")
    ax.set_title(title or "Pareto front" + (f" (first two of {len(objectives)} objectives)" if len(objectives) > 2 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ------------------------------------------------------------------------------------ best config
def best_config_text(config_yaml: str, row: TrialRow, objectives: Sequence[Objective], sweep: str) -> str:
    """The best trial's resolved experiment config, with a header saying where it came from."""
    values = ", ".join(f"{o.metric}={_fmt(row.values.get(o.metric))}" for o in objectives)
    sampled = ", ".join(f"{k}={_fmt(v)}" for k, v in row.params.items())
    header = [f"# Best trial {row.trial_id} of sweep {sweep}: {values}",
              f"# sampled: {sampled}",
              "# train it: python -m st_sweeps.train best_config.yaml  (add --local for the plain Trainer, no Ray)"]
    return "\n".join(header) + "\n" + config_yaml


__all__ = ["Objective", "TrialRow", "pareto_ranks", "rank_trials", "pareto_front", "best_trial", "format_table",
           "format_markdown", "to_csv", "plot_pareto", "best_config_text"]
