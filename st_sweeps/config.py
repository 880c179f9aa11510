"""Strict, typed config loading: YAML mapping -> frozen dataclass tree.

Rules: unknown keys are errors that list the allowed keys; values are checked against the
field's type (int, float, bool, str, Literal, tuple, Optional, nested dataclass, or a registry
base class, whose entries are built from ``{name: ..., ...}``); each dataclass validates its own
values in ``__post_init__`` by raising ConfigError with the field's name, and the loader puts the
full dotted path (and the file) in front.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin

import yaml

from st_sweeps.errors import ConfigError
from st_sweeps.registry import NameRegistry

D = TypeVar("D")
T = TypeVar("T")

_MISSING = dataclasses.MISSING

# A class's resolved annotations never change; resolving them is most of a config load's time.
_type_hints = functools.lru_cache(maxsize=None)(typing.get_type_hints)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(
            path, f"got {value!r}", " or ".join(_type_name(a) for a in args))
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"got {value!r}", allowed)
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}", "a list")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(path, f"expected {len(args)} items, got {len(value)}")
            items = [_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}", "a mapping")
        return dict(value)
    if isinstance(tp, type) and hasattr(tp, "registry"):
        return tp.registry.build(value, path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        return load_dataclass(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}", "true, false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(path, f"expected an integer, got {value!r}", "an integer")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads '1e-5' as a string; accept it as the number a reader meant
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}", "a number")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(path, "number too large for a float", "a finite number") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}", "a string")
        return value
    return value


def load_dataclass(cls: type[D], data: Any, path: str = "") -> D:
    """Build dataclass ``cls`` from a mapping, strictly."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path or cls.__name__, f"expected a mapping, got {type(data).__name__}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    moved: Mapping[str, str] = getattr(cls, "MOVED_KEYS", {})
    for key in unknown:
        if key in moved:  # a file written for an older layout: say where the setting lives now
            raise ConfigError(_join(path, str(key)), f"has moved to {_join(path, moved[key])}",
                              f"{_join(path, moved[key])}: {data[key]!r}")
    if unknown:
        raise ConfigError(_join(path, str(unknown[0])), "unknown key", sorted(fields) or "no keys besides 'name'")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], _join(path, name))
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(_join(path, name), "missing required key")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.at(path) from None


def to_dict(obj: Any) -> Any:
    """Plain YAML-ready data from a config tree (registry entries carry their ``name``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        if hasattr(type(obj), "registry_name"):
            out["name"] = type(obj).registry_name
        for f in dataclasses.fields(obj):
            if f.init:
                out[f.name] = to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}} -> {'a.b': 1}``; lists stay values (for MLflow params and Tune)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = _join(prefix, str(k))
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _is_registry(tp: Any) -> bool:
    return isinstance(tp, type) and isinstance(getattr(tp, "registry", None), NameRegistry)


def _entry_class(tp: Any, node: Mapping[str, Any]) -> type | None:
    """The dataclass a node of declared type ``tp`` loads into: for a registry base, the entry
    that the node's ``name`` selects (None: the schema does not say)."""
    if _is_registry(tp):
        name = node.get("name")
        return tp.registry.get(name) if isinstance(name, str) and name in tp.registry else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _child_type(tp: Any, node: Mapping[str, Any], key: str) -> Any:
    """The declared type of ``node[key]`` when ``node`` has type ``tp`` (None: unknown)."""
    cls = _entry_class(tp, node)
    child = _type_hints(cls).get(key) if cls is not None else None
    if get_origin(child) in (Union, types.UnionType):  # Optional[X] -> X
        args = [a for a in get_args(child) if a is not type(None)]
        child = args[0] if len(args) == 1 else None
    return child


def _default_entry(tp: Any, node: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A new node for the registry field ``key``: ``{name: <its default entry>}`` (or empty)."""
    cls = _entry_class(tp, node)
    f = next((f for f in dataclasses.fields(cls) if f.name == key), None) if cls is not None else None
    if f is None or (f.default is _MISSING and f.default_factory is _MISSING):
        return {}
    default = f.default if f.default is not _MISSING else f.default_factory()  # type: ignore[misc]
    name = default if isinstance(default, str) else getattr(type(default), "registry_name", None)
    return {"name": name} if name is not None else {}


def set_dotted(data: dict[str, Any], dotted: str, value: Any, schema: type | None = None) -> None:
    """Set ``a.b.c`` in a nested dict, creating mappings as needed.

    A registry switch such as ``truncation.prior.name=fixed`` drops the old entry's other fields,
    which belong to the old name. Only a registry node is cleared: with ``schema`` (the dataclass
    that ``data`` loads into) a node whose declared type is a registry base; without it, any
    mapping below the top level (the top level is never a registry entry: its ``name`` is the
    experiment's or the sweep's). A plain ``name`` field (``name``, ``optim.name``) is just set.
    With ``schema``, a field of a registry node the data leaves out goes into the default entry
    (``sde.beta_min=0.2`` on a file without ``sde``: the default ``vp``, as the loader would fill in).
    """
    keys = dotted.split(".")
    node, tp = data, schema  # tp: the node's declared type (None: unknown)
    for i, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        child = _child_type(tp, node, k) if schema is not None else None
        if nxt is None and _is_registry(child) and keys[i + 1] != "name":
            nxt = _default_entry(tp, node, k)  # `sde.beta_min=…` on a file without `sde`
        if isinstance(nxt, str):  # a bare registry name grows a mapping
            nxt = {"name": nxt}
        elif nxt is None:
            nxt = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(".".join(keys[: i + 1]), f"is {nxt!r}, not a mapping: cannot set {dotted}")
        node[k] = nxt
        node, tp = nxt, child
    last = keys[-1]
    registry_node = _is_registry(tp) if schema is not None else node is not data
    if last == "name" and registry_node and isinstance(node.get("name"), str) and node.get("name") != value:
        node.clear()
    node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.steps=200' -> ('train.steps', 200)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError("--set", f"expected key=value, got {text!r}", "dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError("--set", f"empty key in {text!r}", "dotted.key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(key, f"value {raw!r} is not valid YAML: {e}") from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | Mapping[str, Any],
                    schema: type | None = None) -> dict[str, Any]:
    """A copy of ``data`` with dotted overrides (``["a.b=1"]`` or ``{"a.b": 1}``) applied in order;
    ``schema``, the dataclass the result loads into, tells registry nodes apart (see set_dotted)."""
    out = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for key, value in items:
        set_dotted(out, key, value, schema)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(str(path), "file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), f"top level must be a mapping, got {type(data).__name__}")
    return data


def load_file(cls: type[D], path: str | Path, overrides: list[str] | Mapping[str, Any] = ()) -> D:
    """Load ``cls`` from a YAML file plus dotted overrides; errors name the file."""
    data = apply_overrides(read_yaml(path), overrides, cls)
    try:
        return load_dataclass(cls, data)
    except ConfigError as e:
        raise e.at(str(path)) from None


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


class Registry(NameRegistry[T]):
    """A registry whose entries build from YAML: ``prior: {name: power_law, k: 1.5}``."""

    def build(self, spec: Any, field: str) -> T:
        """Instance from ``{name: ..., **hyperparameters}`` (or a bare name string); unknown names
        and unknown or ill-typed fields raise ConfigError naming ``field``."""
        resolved = self.resolve(spec, field)
        if not isinstance(resolved, tuple):
            return resolved  # already built
        cls, params = resolved
        try:
            return load_dataclass(cls, params, field)
        except ConfigError as e:
            if e.problem != "unknown key":
                raise
            # a setting of another entry (an ODE tolerance on a pc sampler): name the entry chosen
            raise ConfigError(e.field, f"not a setting of {self.kind} {cls.registry_name!r}",  # type: ignore[attr-defined]
                              e.allowed) from None


def to_spec(obj: Any) -> dict[str, Any]:
    """The YAML mapping that builds ``obj`` again (inverse of ``Registry.build``)."""
    out: dict[str, Any] = {"name": obj.registry_name}
    out.update(to_dict(obj))
    return out
