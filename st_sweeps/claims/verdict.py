"""Verdict rules, fixed in the manifest before anything runs.

A rule reads only the 95 % interval [low, high] of a part's statistic:

- ``below: {threshold: c}`` — the claim is "the statistic is below c": *holds* if high < c,
  *contradicted* if low > c, otherwise *inconclusive at this scale*.
- ``above: {threshold: c}`` — the mirror image: holds if low > c, contradicted if high < c.
- ``within: {margin: δ}`` — "the statistic is 0 up to ±δ" (an equivalence test): holds if
  −δ < low and high < δ, contradicted if the interval lies entirely outside [−δ, δ], otherwise
  inconclusive.

A claim with several parts *holds* if every part holds, is *contradicted* if any part is, and is
otherwise inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

from st_sweeps.claims.intervals import Interval
from st_sweeps.config import Registry
from st_sweeps.errors import require

HOLDS = "holds"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive at this scale"
VERDICTS = (HOLDS, CONTRADICTED, INCONCLUSIVE)


class Rule:
    registry: ClassVar[Registry["Rule"]] = Registry("verdict rule")

    def verdict(self, interval: Interval) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _finite(value: float, name: str) -> None:
    require(math.isfinite(value), name, f"got {value!r}", "a finite number")


@Rule.registry.register("below")
@dataclass(frozen=True)
class Below(Rule):
    threshold: float = 0.0

    def __post_init__(self) -> None:
        _finite(self.threshold, "threshold")

    def verdict(self, interval: Interval) -> str:
        if interval.high < self.threshold:
            return HOLDS
        if interval.low > self.threshold:
            return CONTRADICTED
        return INCONCLUSIVE

    def describe(self) -> str:
        c = f"{self.threshold:g}"
        return f"holds if CI < {c}; contradicted if CI > {c}"


@Rule.registry.register("above")
@dataclass(frozen=True)
class Above(Rule):
    threshold: float = 0.0

    def __post_init__(self) -> None:
        _finite(self.threshold, "threshold")

    def verdict(self, interval: Interval) -> str:
        if interval.low > self.threshold:
            return HOLDS
        if interval.high < self.threshold:
            return CONTRADICTED
        return INCONCLUSIVE

    def describe(self) -> str:
        c = f"{self.threshold:g}"
        return f"holds if CI > {c}; contradicted if CI < {c}"


@Rule.registry.register("within")
@dataclass(frozen=True)
class Within(Rule):
    margin: float = 0.01

    def __post_init__(self) -> None:
        _finite(self.margin, "margin")
        require(self.margin > 0, "margin", f"got {self.margin!r}", "a number > 0")

    def verdict(self, interval: Interval) -> str:
        if -self.margin < interval.low and interval.high < self.margin:
            return HOLDS
        if interval.low > self.margin or interval.high < -self.margin:
            return CONTRADICTED
        return INCONCLUSIVE

    def describe(self) -> str:
        m = f"{self.margin:g}"
        return f"holds if CI ⊂ (−{m}, {m}); contradicted if CI outside [−{m}, {m}]"


def combine(verdicts: Sequence[str]) -> str:
    """A claim's verdict from its parts' (see the module docstring)."""
    if not verdicts:
        raise ValueError("a claim needs at least one part")
    if any(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return INCONCLUSIVE
