"""Registries keyed by the names YAML uses, e.g. ``prior: {name: power_law, k: 1.5}``.

An entry is a frozen dataclass of hyperparameters. ``NameRegistry`` maps names to entry classes
and refuses unknown names with a message that lists what exists; ``st_sweeps.config.Registry``
adds ``build``, which turns a YAML mapping into an instance (and refuses unknown fields), so
this module needs nothing from the config loader.
Validation of values lives in each dataclass's ``__post_init__`` (raising ConfigError).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, Mapping, TypeVar

from st_sweeps.errors import ConfigError

T = TypeVar("T")


class NameRegistry(Generic[T]):
    """Names to entry classes. ``st_sweeps.config.Registry`` adds building entries from YAML."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name].__qualname__})")
            if not dataclasses.is_dataclass(cls):
                raise TypeError(f"{self.kind} {name!r}: registered entries must be dataclasses")
            self._entries[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, field: str = "name") -> type:
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(field, f"unknown {self.kind} {name!r}", self.names())
        return self._entries[name]

    def resolve(self, spec: Any, field: str) -> tuple[type, dict[str, Any]] | T:
        """The entry class and its hyperparameters named by ``{name: ..., **hyperparameters}`` (or
        a bare name string), or ``spec`` itself when it already is an entry. Building the instance
        from them is ``st_sweeps.config``'s job (``Registry.build`` there)."""
        if isinstance(spec, str):
            spec = {"name": spec}
        if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
            if type(spec).__name__ in {c.__name__ for c in self._entries.values()} or type(spec) in self._entries.values():
                return spec  # type: ignore[return-value]
            raise ConfigError(field, f"expected a {self.kind}, got a {type(spec).__name__}", self.names())
        if not isinstance(spec, Mapping):
            raise ConfigError(field, f"expected a mapping with a 'name' key, got {type(spec).__name__}",
                              self.names())
        if "name" not in spec:
            raise ConfigError(f"{field}.name", f"missing {self.kind} name", self.names())
        cls = self.get(spec["name"], f"{field}.name")
        return cls, {k: v for k, v in spec.items() if k != "name"}
