"""From per-seed values to verdicts: each part's interval and verdict, each claim's verdict.

Pure: the manifest, the finished runs (``RunResult`` by configuration and seed) and the
measurements (value per replicate) in; ``ClaimResult``s out. A part whose values are missing (a
configuration with fewer than two finished seeds) has no interval and the verdict "not measured",
which makes its claim inconclusive — never a number that was not computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from st_sweeps.claims.intervals import Interval, t_interval
from st_sweeps.claims.manifest import Claim, Manifest, Part
from st_sweeps.claims.statistics import MeasuredStatistic, RunStatistic, Runs
from st_sweeps.claims.verdict import INCONCLUSIVE, combine

NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class PartResult:
    part: Part
    values: dict[int, float]  # seed (or replicate) -> the statistic
    interval: Interval | None
    verdict: str
    problem: str = ""  # why there is no interval

    @property
    def trained(self) -> bool:
        return self.part.statistic.trained


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    parts: tuple[PartResult, ...]

    @property
    def verdict(self) -> str:
        return combine([p.verdict if p.verdict != NOT_MEASURED else INCONCLUSIVE for p in self.parts])


def part_result(part: Part, values: Mapping[int, float]) -> PartResult:
    values = dict(sorted(values.items()))
    if len(values) < 2:
        return PartResult(part, values, None, NOT_MEASURED, f"{len(values)} value(s); an interval needs 2")
    interval = t_interval(list(values.values()))
    return PartResult(part, values, interval, part.rule.verdict(interval))


def evaluate(manifest: Manifest, runs: Runs, measured: Mapping[str, Mapping[int, float]]) -> list[ClaimResult]:
    """``measured``: part id -> replicate -> value (measurements without training)."""
    out = []
    for claim in manifest.claims:
        parts = []
        for part in claim.parts:
            stat = part.statistic
            if isinstance(stat, MeasuredStatistic):
                values = dict(measured.get(part.id, {}))
            else:
                assert isinstance(stat, RunStatistic)
                try:
                    values = stat.per_seed(runs)
                except (KeyError, ValueError) as e:
                    parts.append(PartResult(part, {}, None, NOT_MEASURED, str(e)))
                    continue
            parts.append(part_result(part, values))
        out.append(ClaimResult(claim, tuple(parts)))
    return out
