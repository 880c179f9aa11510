"""What a finished sweep tells: trials ranked by objective, the Pareto front, the best config.

Plain data in, text and files out (no Ray, no MLflow): ``tune`` turns Tune's results into
``TrialRow``s and logs the files written here into the sweep's parent MLflow run. The sweep's
pictures are Optuna's plots of its study (``tune.write_figures``); ``draw_over_front`` adds the
trials' standard errors and the baseline to its Pareto front.

Ranking: completed trials first, then trials ASHA stopped early (their values come from fewer
steps, so they are not comparable with completed ones), then failed ones. Within a group, one
objective sorts by its value; several sort by Pareto rank (non-dominated sorting: front 1, the
front of the rest, ...) and then by the first objective.

Noise. Each value carries the standard error its own evaluation computed from its own data
(``<metric>_stderr``: for the NLL, the std of the per-example values over √n; for a Fréchet
distance, the std over bootstrap resamples of the trial's samples). A sweep with a baseline run on
several training seeds also measures the seed-to-seed spread of one configuration (the sample std
of the baseline's values): training noise that no single trial's evaluation can see. A difference
between two trials is then uncertain by

    sd(a − b) = sqrt(se_a² + se_b² + s_a² + s_b²),   s = seed spread (s/√R for a mean of R seeds),

and is "within noise" when |a − b| < 2 sd. The standard errors treat the trials' test examples as
independent although every trial uses the same ones, and the seed spread counts evaluation noise
once more: both err towards "within noise".
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

STATUS_ORDER = {"completed": 0, "pruned": 1, "error": 2}
STDERR_SUFFIX = "_stderr"
NOISE_Z = 2.0  # a difference below this many of its standard deviations is "within noise"


def stderr_key(metric: str) -> str:
    """The metric holding ``metric``'s standard error, computed by the trial's own evaluation."""
    return metric + STDERR_SUFFIX


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
    stderrs: dict[str, float] = field(default_factory=dict)  # objective metric -> its evaluation's own SE
    baseline_seed: int | None = None  # the training seed, for a replicate of the sweep's baseline
    within_noise: dict[str, bool] = field(default_factory=dict)  # objective -> within noise of its best

    @property
    def is_baseline(self) -> bool:
        return self.baseline_seed is not None


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


# ------------------------------------------------------------------------------------ noise
def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _sample_std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class Baseline:
    """The sweep's baseline on one objective: its completed replicates (one per training seed)."""

    metric: str
    rows: tuple[TrialRow, ...]

    @property
    def values(self) -> list[float]:
        return [r.values[self.metric] for r in self.rows]

    @property
    def mean(self) -> float:
        v = self.values
        return sum(v) / len(v) if v else math.nan

    @property
    def stderr(self) -> float:
        """The evaluation SE of the mean over replicates: sqrt(Σ se²) / R (NaN if one is missing)."""
        ses = [r.stderrs.get(self.metric, math.nan) for r in self.rows]
        return math.sqrt(sum(se * se for se in ses)) / len(ses) if ses else math.nan

    @property
    def seed_spread(self) -> float:
        """Sample std of the replicates' values: the seed-to-seed spread of one configuration
        (NaN with fewer than two replicates)."""
        return _sample_std(self.values)


def baselines(ranked: Sequence[TrialRow], objectives: Sequence[Objective]) -> dict[str, Baseline]:
    """The completed baseline replicates, per objective (empty when the sweep has none)."""
    rows = sorted((r for r in ranked if r.is_baseline and r.status == "completed"),
                  key=lambda r: r.baseline_seed or 0)
    out = {}
    for o in objectives:
        done = tuple(r for r in rows if _finite(r.values.get(o.metric)))
        if done:
            out[o.metric] = Baseline(o.metric, done)
    return out


def _spread(base: Baseline | None) -> float:
    """The seed spread to charge each single trial: the baseline's, or 0 when not measured."""
    s = base.seed_spread if base is not None else math.nan
    return s if _finite(s) else 0.0


@dataclass(frozen=True)
class Difference:
    """a − b on one objective, with the parts of its uncertainty (``sd`` combines them)."""

    metric: str
    value: float
    stderr_a: float  # evaluation SE of a
    stderr_b: float  # evaluation SE of b
    seed_spread: float  # the seed spread of one configuration (0: not measured)
    seed_weight: float = 2.0  # how many single-seed values the difference holds (1 + 1/R for a mean)

    @property
    def sd(self) -> float:
        return math.sqrt(self.stderr_a ** 2 + self.stderr_b ** 2 + self.seed_weight * self.seed_spread ** 2)

    @property
    def z(self) -> float:
        return self.value / self.sd if self.sd > 0 else math.nan

    @property
    def within_noise(self) -> bool | None:
        """|a − b| < NOISE_Z · sd; None when a standard error is missing."""
        if not (_finite(self.sd) and _finite(self.value)):
            return None
        return abs(self.value) < NOISE_Z * self.sd


def difference(a: TrialRow, b: TrialRow, metric: str, seed_spread: float = 0.0) -> Difference:
    """a − b for two single trials."""
    return Difference(metric, a.values.get(metric, math.nan) - b.values.get(metric, math.nan),
                      a.stderrs.get(metric, math.nan), b.stderrs.get(metric, math.nan), seed_spread)


def versus_baseline(row: TrialRow, base: Baseline) -> Difference:
    """row − the baseline's mean over its R replicates."""
    r = len(base.rows)
    return Difference(base.metric, row.values.get(base.metric, math.nan) - base.mean,
                      row.stderrs.get(base.metric, math.nan), base.stderr, _spread(base), 1.0 + 1.0 / r)


def best_on(ranked: Sequence[TrialRow], objective: Objective, baseline: bool = False) -> TrialRow | None:
    """The completed trial best on one objective (baseline replicates only if ``baseline``)."""
    done = [r for r in ranked if r.status == "completed" and _finite(r.values.get(objective.metric))
            and (baseline or not r.is_baseline)]
    return min(done, key=lambda r: objective.key(r.values[objective.metric]), default=None)


def mark_within_noise(ranked: Sequence[TrialRow], objectives: Sequence[Objective]) -> list[TrialRow]:
    """Each completed trial's ``within_noise[metric]``: whether it is within noise of the best
    completed trial on that objective (the best itself included); absent when unknown."""
    bases = baselines(ranked, objectives)
    marks: dict[str, dict[str, bool]] = {r.trial_id: {} for r in ranked}
    for o in objectives:
        best = best_on(ranked, o, baseline=True)
        if best is None:
            continue
        spread = _spread(bases.get(o.metric))
        for r in ranked:
            if r.status != "completed" or not _finite(r.values.get(o.metric)):
                continue
            verdict = True if r is best else difference(r, best, o.metric, spread).within_noise
            if verdict is not None:
                marks[r.trial_id][o.metric] = verdict
    return [replace(r, within_noise=marks[r.trial_id]) for r in ranked]


def noise_lines(ranked: Sequence[TrialRow], objectives: Sequence[Objective], units: dict[str, str] | None = None
                ) -> list[str]:
    """What the ± and ≈ of the table mean, the seed spread, and best − baseline per objective."""
    units = units or {}
    bases = baselines(ranked, objectives)
    out = [f"±: standard error of each trial's own evaluation ({', '.join(stderr_key(o.metric) for o in objectives)}); "
           f"≈: within noise of the best completed trial on that objective (difference < {NOISE_Z:g} sd)."]
    for o in objectives:
        base = bases.get(o.metric)
        u = f" {units[o.metric]}" if units.get(o.metric) else ""
        if base is None:
            out.append(f"{o.metric}: no completed baseline trial, so no comparison and no seed spread")
            continue
        seeds = ", ".join(str(r.baseline_seed) for r in base.rows)
        spread = base.seed_spread
        if _finite(spread):
            out.append(f"{o.metric}: seed-to-seed spread of the baseline (sample std over seeds {seeds}): "
                       f"{spread:.3g}{u}; the evaluation SEs are {_fmt_list(base.rows, o.metric)}")
        else:
            out.append(f"{o.metric}: seed spread not measured (baseline on seed {seeds} only): the ± below "
                       "covers evaluation noise only, not training noise")
        best = best_on(ranked, o)
        if best is None:
            out.append(f"{o.metric}: no completed trial besides the baseline")
            continue
        d = versus_baseline(best, base)
        verdict = {True: "within noise", False: "beyond noise", None: "noise unknown"}[d.within_noise]
        sign = "better" if o.key(d.value) < 0 else "worse"
        decimals = _decimals(d.sd)
        out.append(f"{o.metric} ({o.mode}): best − baseline = {_fmt_pm(d.value, d.sd, sign=True)}{u} "
                   f"(trial {best.trial_id} − mean of {len(base.rows)} baseline seed(s) = "
                   f"{best.values[o.metric]:.{decimals}f} − {base.mean:.{decimals}f}; |z| = {abs(d.z):.1f}: "
                   f"{sign}, {verdict})")
    front = [r for r in pareto_front(ranked) if not r.is_baseline]
    if len(objectives) > 1 and front and all(o.metric in bases for o in objectives):
        out.append("Pareto front against the baseline (trial − mean of its seeds, ± sd; * beyond noise):")
        for r in front:
            parts = []
            for o in objectives:
                d = versus_baseline(r, bases[o.metric])
                parts.append(f"{o.metric} {_fmt_pm(d.value, d.sd, sign=True)}{'*' if d.within_noise is False else ''}")
            out.append(f"  {r.trial_id}: " + ", ".join(parts))
    return out


def _fmt_list(rows: Sequence[TrialRow], metric: str) -> str:
    return ", ".join(f"{r.stderrs[metric]:.2g}" if _finite(r.stderrs.get(metric)) else "-" for r in rows)


def comparison_metrics(ranked: Sequence[TrialRow], objectives: Sequence[Objective]) -> dict[str, float]:
    """The noise figures as flat metrics for the parent MLflow run."""
    out: dict[str, float] = {}
    bases = baselines(ranked, objectives)
    for o in objectives:
        base = bases.get(o.metric)
        if base is None:
            continue
        out[f"baseline/{o.metric}"] = base.mean
        if _finite(base.seed_spread):
            out[f"seed_spread/{o.metric}"] = base.seed_spread
        best = best_on(ranked, o)
        if best is not None:
            d = versus_baseline(best, base)
            out[f"best_minus_baseline/{o.metric}"] = d.value
            out[f"best_minus_baseline_sd/{o.metric}"] = d.sd
    return out


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


def _decimals(stderr: float) -> int:
    """Decimals that show a standard error to its second significant digit."""
    return max(0, 1 - math.floor(math.log10(stderr))) if _finite(stderr) and stderr > 0 else 3


def _fmt_pm(value: float | None, stderr: float | None, sign: bool = False) -> str:
    """``4.873 ± 0.023``: the value to the standard error's second significant digit."""
    if value is None or not math.isfinite(value):
        return _fmt(value)
    if stderr is None or not math.isfinite(stderr) or stderr <= 0:
        return _fmt(value)
    decimals = _decimals(stderr)
    return f"{value:{'+' if sign else ''}.{decimals}f} ± {stderr:.{decimals}f}"


def _cell(row: TrialRow, o: Objective) -> str:
    text = _fmt_pm(row.values.get(o.metric), row.stderrs.get(o.metric))
    return text + (" ≈" if row.within_noise.get(o.metric) else "")


def table_rows(ranked: Sequence[TrialRow], objectives: Sequence[Objective], keys: Sequence[str]
               ) -> tuple[list[str], list[list[str]]]:
    multi = len(objectives) > 1
    header = ["rank", "trial", "status", "step"] + (["front"] if multi else []) + \
        [f"{o.metric} ({o.mode})" for o in objectives] + list(keys)
    body = []
    for r in ranked:
        trial = r.trial_id + (f" (baseline, seed {r.baseline_seed})" if r.is_baseline else "")
        cells = [str(r.rank), trial, r.status, _fmt(r.step)]
        if multi:
            cells.append("*" if r.pareto_rank == 1 else "")
        cells += [_cell(r, o) for o in objectives]
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
    w.writerow(["rank", "trial_id", "status", "step", "pareto_rank", *[o.metric for o in objectives],
                *[stderr_key(o.metric) for o in objectives], *[f"{o.metric}_within_noise" for o in objectives],
                *keys, "baseline_seed", "mlflow_run_id", "optuna_state", "error"])
    for r in ranked:
        w.writerow([r.rank, r.trial_id, r.status, r.step, r.pareto_rank if r.pareto_rank is not None else "",
                    *[r.values.get(o.metric, "") for o in objectives], *[r.stderrs.get(o.metric, "") for o in objectives],
                    *[r.within_noise.get(o.metric, "") for o in objectives], *[r.params.get(k, "") for k in keys],
                    "" if r.baseline_seed is None else r.baseline_seed, r.run_id or "", r.optuna_state or "",
                    r.error or ""])
    return buf.getvalue()


# ------------------------------------------------------------------------------------ plot
def draw_over_front(ax: Any, ranked: Sequence[TrialRow], objectives: Sequence[Objective]) -> None:
    """What a Pareto-front plot of the first two objectives (Optuna's, in ``tune``) cannot know,
    drawn over it on ``ax``: each completed trial's ± standard errors as bars, the baseline's
    replicates as squares, and the front's trial ids."""
    a, b = objectives[0], objectives[1]
    done = [r for r in ranked if r.status == "completed" and _finite(r.values.get(a.metric))
            and _finite(r.values.get(b.metric))]

    def err(r: TrialRow, o: Objective) -> float:
        e = r.stderrs.get(o.metric, 0.0)
        return e if _finite(e) else 0.0

    if done:
        ax.errorbar([r.values[a.metric] for r in done], [r.values[b.metric] for r in done],
                    xerr=[err(r, a) for r in done], yerr=[err(r, b) for r in done], linestyle="none",
                    color="0.3", capsize=2, elinewidth=0.8, zorder=0)
    base = [r for r in done if r.is_baseline]
    if base:
        ax.scatter([r.values[a.metric] for r in base], [r.values[b.metric] for r in base], marker="s",
                   facecolors="none", edgecolors="tab:green", s=80, label="baseline (a square per seed)")
    for r in done:
        if r.pareto_rank == 1:
            ax.annotate(r.trial_id, (r.values[a.metric], r.values[b.metric]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.legend(fontsize=8)
    ax.figure.text(0.01, -0.01, "bars: ± standard error of each trial's own evaluation", fontsize=7, color="0.4",
                   va="top")  # below the axis label (the figure is saved with a tight bounding box)


# ------------------------------------------------------------------------------------ best config
def best_config_text(config_yaml: str, row: TrialRow, objectives: Sequence[Objective], sweep: str) -> str:
    """The best trial's resolved experiment config, with a header saying where it came from."""
    values = ", ".join(f"{o.metric}={_fmt(row.values.get(o.metric))}" for o in objectives)
    sampled = ", ".join(f"{k}={_fmt(v)}" for k, v in row.params.items())
    header = [f"# Best trial {row.trial_id} of sweep {sweep}: {values}",
              f"# sampled: {sampled}",
              "# train it: python -m st_sweeps.train best_config.yaml  (add --local for the plain Trainer, no Ray)"]
    return "\n".join(header) + "\n" + config_yaml


__all__ = ["Objective", "TrialRow", "Baseline", "Difference", "stderr_key", "pareto_ranks", "rank_trials",
           "pareto_front", "best_trial", "best_on", "baselines", "difference", "versus_baseline", "mark_within_noise",
           "noise_lines", "comparison_metrics", "format_table", "format_markdown", "to_csv", "draw_over_front",
           "best_config_text"]
