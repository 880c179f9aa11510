"""The study's table: Markdown and CSV, every claim and part with its numbers, interval and verdict.

Pure functions of the manifest, the ``ClaimResult``s, the finished runs and the provenance, so a
rerun that trains nothing writes the same files.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from st_sweeps.claims.intervals import METHOD, t_interval
from st_sweeps.claims.manifest import Manifest
from st_sweeps.claims.results import NOT_MEASURED, ClaimResult
from st_sweeps.claims.statistics import Runs

SMOKE_BANNER = "SMOKE SCALE — a check of the pipeline; these numbers test nothing"
# the per-configuration table: metric key -> (column, decimals)
CONFIG_METRICS: dict[str, tuple[str, int]] = {
    "eval/nll_bpd": ("NLL (bpd)", 3),
    "eval/digits_fd": ("digits_fd", 2),
    "eval/digits_kid": ("digits_kid", 2),
    "eval/nfe_sampling": ("NFE", 0),
}
CSV_FIELDS = ("claim", "claim_title", "claim_verdict", "part", "statement", "source", "configurations", "statistic",
              "units", "n", "estimate", "ci_low", "ci_high", "sd", "values", "rule", "verdict")


@dataclass(frozen=True)
class Provenance:
    command: str
    date: str
    commit: str
    dirty: bool
    scale: str
    wall_s: float | None = None  # summed over the invocations (training, measuring, tables)
    trial_s: float | None = None  # summed time of the trials (one CPU each)
    invocations: int = 1

    def lines(self) -> list[str]:
        commit = self.commit + (" (the working tree had uncommitted changes)" if self.dirty else "")
        out = [f"- command: `{self.command}`", f"- date: {self.date}", f"- commit: {commit}"]
        if self.wall_s is not None:
            over = f" over {self.invocations} invocations (a rerun trains nothing finished)" if self.invocations > 1 else ""
            out.append(f"- wall time: {_duration(self.wall_s)}{over}")
        if self.trial_s:
            out.append(f"- training and evaluation, summed over trials: {_duration(self.trial_s)} of one CPU each")
        return out


def _duration(s: float) -> str:
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m else f"{sec} s"


def num(x: float | None, decimals: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if x != 0 and abs(x) < 10 ** -decimals:
        return f"{x:.2e}"
    return f"{x:.{decimals}f}"


def _signed(x: float | None) -> str:
    s = num(x)
    return s if s == "–" or s.startswith("-") else "+" + s


def _ci(p: Any) -> str:
    if p.interval is None:
        return "–"
    return f"[{_signed(p.interval.low)}, {_signed(p.interval.high)}]"


def _mark(verdict: str) -> str:
    return {"holds": "**holds**", "contradicted": "**contradicted**"}.get(verdict, verdict)


def _configs(manifest: Manifest, ids: Sequence[str]) -> str:
    return "; ".join(f"`{c}` ({manifest.configuration(c).label})" for c in ids)


def config_table(manifest: Manifest, runs: Runs) -> list[str]:
    """Each configuration's final metrics: mean [95 % CI] over its finished seeds."""
    head = "| configuration | seeds | " + " | ".join(c for c, _ in CONFIG_METRICS.values()) + " |"
    lines = [head, "|" + "---|" * (2 + len(CONFIG_METRICS))]
    for conf in manifest.configurations:
        by_seed = runs.get(conf.id, {})
        cells = []
        for key, (_, d) in CONFIG_METRICS.items():
            vals = [r.final[key] for r in by_seed.values() if key in r.final and math.isfinite(r.final[key])]
            if len(vals) >= 2:
                iv = t_interval(vals)
                cells.append(f"{num(iv.mean, d)} [{num(iv.low, d)}, {num(iv.high, d)}]")
            else:
                cells.append(num(vals[0], d) if vals else "–")
        lines.append(f"| `{conf.id}`: {conf.label} | {len(by_seed)} | " + " | ".join(cells) + " |")
    return lines


def markdown(manifest: Manifest, claims: Sequence[ClaimResult], runs: Runs, provenance: Provenance,
             figures: Mapping[str, str] | None = None) -> str:
    """The page: provenance, notes, a summary of verdicts, then each claim with its parts."""
    figures = figures or {}
    lines = [f"# {manifest.title} — scale `{provenance.scale}`", ""]
    if provenance.scale == "smoke":
        lines += [f"**{SMOKE_BANNER}.**", ""]
    lines += provenance.lines() + [""]
    lines += [f"- {n}" for n in manifest.notes]
    lines += [f"- Intervals: {METHOD}. Verdicts: the rule fixed in the manifest before the run "
              "(holds / contradicted / inconclusive at this scale; a claim holds if all its parts hold, "
              "is contradicted if any part is).", ""]
    lines += ["| claim | verdict | parts |", "|---|---|---|"]
    for c in claims:
        parts = ", ".join(f"{p.part.id}: {p.verdict}" for p in c.parts)
        lines.append(f"| {c.claim.id}. {c.claim.title} | {_mark(c.verdict)} | {parts} |")
    lines += ["", "## Configurations (final evaluation, mean [95 % CI] over seeds)", ""]
    lines += config_table(manifest, runs)
    for c in claims:
        lines += ["", f"## Claim {c.claim.id}: {c.claim.title} — {_mark(c.verdict)}", "",
                  f"*Paper:* {c.claim.paper}", "", f"*Where:* {c.claim.source}", ""]
        configs = sorted({x for p in c.parts for x in p.part.statistic.configurations()},
                         key=[k.id for k in manifest.configurations].index)
        if configs:
            lines += [f"*Compared:* {_configs(manifest, configs)}", ""]
        lines += [f"*Note:* {n}" for n in c.claim.notes]
        if c.claim.notes:
            lines.append("")
        lines += ["| part | statement | statistic | units | n | estimate | 95 % CI | rule | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for p in c.parts:
            iv = p.interval
            n = iv.n if iv else len(p.values)
            verdict = _mark(p.verdict) + (f" ({p.problem})" if p.verdict == NOT_MEASURED and p.problem else "")
            lines.append(f"| {p.part.id} | {p.part.statement} | {p.part.statistic.describe()} | {p.part.units} | {n} | "
                         f"{_signed(iv.mean) if iv else '–'} | {_ci(p)} | {p.part.rule.describe()} | {verdict} |")
        values = "; ".join(f"{p.part.id}: " + ", ".join(_signed(v) for v in p.values.values()) for p in c.parts)
        lines += ["", f"Per seed (or replicate): {values}"]
        if c.claim.id in figures:
            lines += ["", f"![claim {c.claim.id}]({figures[c.claim.id]})"]
    return "\n".join(lines) + "\n"


def csv_text(manifest: Manifest, claims: Sequence[ClaimResult]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for c in claims:
        for p in c.parts:
            iv = p.interval
            w.writerow({
                "claim": c.claim.id, "claim_title": c.claim.title, "claim_verdict": c.verdict, "part": p.part.id,
                "statement": p.part.statement, "source": c.claim.source,
                "configurations": " ".join(p.part.statistic.configurations()),
                "statistic": p.part.statistic.describe(), "units": p.part.units,
                "n": iv.n if iv else len(p.values),
                "estimate": repr(iv.mean) if iv else "", "ci_low": repr(iv.low) if iv else "",
                "ci_high": repr(iv.high) if iv else "", "sd": repr(iv.sd) if iv else "",
                "values": " ".join(repr(v) for v in p.values.values()),
                "rule": p.part.rule.describe(), "verdict": p.verdict,
            })
    return buf.getvalue()
