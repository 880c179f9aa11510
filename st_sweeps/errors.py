"""One error type for bad input, always naming where, which field, and what is allowed."""

from __future__ import annotations

from typing import Any, Iterable


class ConfigError(ValueError):
    """Bad user input: a config value, a file, a name.

    The message always names the field (as a dotted path, prefixed by the file when known)
    and what would have been accepted.
    """

    def __init__(self, field: str, problem: str, allowed: str | Iterable[Any] | None = None):
        self.field = field
        self.problem = problem
        if allowed is not None and not isinstance(allowed, str):
            allowed = ", ".join(repr(a) if not isinstance(a, str) else a for a in allowed)
        self.allowed = allowed
        msg = f"{field}: {problem}"
        if allowed:
            msg += f" (allowed: {allowed})"
        super().__init__(msg)

    def at(self, prefix: str) -> "ConfigError":
        """The same error with a file name or parent path in front of the field."""
        sep = "" if not prefix else (": " if prefix.endswith((".yaml", ".yml", ".json")) else ".")
        return ConfigError(f"{prefix}{sep}{self.field}" if prefix else self.field, self.problem, self.allowed)


def require(ok: bool, field: str, problem: str, allowed: str | Iterable[Any] | None = None) -> None:
    """Raise ConfigError(field, problem, allowed) unless ok."""
    if not ok:
        raise ConfigError(field, problem, allowed)


def require_positive(value: float, field: str) -> None:
    require(value > 0, field, f"must be > 0, got {value!r}", "any number > 0")


def require_range(value: float, field: str, low: float, high: float, *, low_open: bool = False,
                  high_open: bool = False) -> None:
    lo_ok = value > low if low_open else value >= low
    hi_ok = value < high if high_open else value <= high
    lb = "(" if low_open else "["
    hb = ")" if high_open else "]"
    require(lo_ok and hi_ok, field, f"got {value!r}", f"a number in {lb}{low}, {high}{hb}")
