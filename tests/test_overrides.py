"""``--set key=value`` over every shipped YAML file (configs, sweep files, manifests).

Two properties, checked exhaustively over whatever the files hold today:

* setting any key to its current value leaves the resolved config unchanged (through the path the
  CLI takes: ``load_experiment`` for configs, ``--set`` on a sweep file, the manifest row's
  experiment for manifests);
* switching a registry entry's ``name`` clears that registry node alone (its siblings and parents
  untouched), while a plain ``name`` field (the experiment's ``name``, ``optim.name``) is just set.

A data-level property (hypothesis): a non-``name`` override changes that one key and nothing else.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, get_args, get_origin

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from st_sweeps.config import apply_overrides, flatten, parse_override, read_yaml, to_dict
from st_sweeps.experiment import ExperimentConfig, experiment_from_dict, load_experiment
from st_sweeps.reproduce.manifest import load_manifest
from st_sweeps.search_space import SearchSpace, apply_sweep_overrides, search_space_from_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
MANIFESTS = sorted((ROOT / "reproductions" / "manifests").glob("*.yaml"))


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def as_cli(key: str, value: Any) -> str:
    """``key=<value>`` as a user types it after ``--set`` (the value in YAML flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True)
    text = text.removesuffix("\n...\n").strip()
    assert parse_override(f"{key}={text}") == (key, value), f"{key}={text} does not read back"
    return f"{key}={text}"


def override_keys(raw: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """Every dotted key the file spells, with its value as written, then every key of the
    resolved config (defaults included) with its resolved value."""
    return {**flatten(raw), **flatten(resolved)}


# -------------------------------------------------------------------- the shipped experiments
def experiments() -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, experiment mapping) for each config file, sweep base and manifest row."""
    for path in CONFIGS:
        yield path.name, read_yaml(path)
    for path in SPACES:
        base = read_yaml(path).get("base") or {}
        yield f"{path.name}:base", base
    for path in MANIFESTS:
        manifest = load_manifest(path)
        for row in manifest.rows:
            yield f"{path.name}:{row.id}", row.experiment_dict(seed=0, dataset_name=manifest.dataset)


EXPERIMENTS = list(experiments())


def test_the_shipped_files_are_all_seen() -> None:
    assert CONFIGS and SPACES and MANIFESTS
    assert sum(label.endswith(":base") for label, _ in EXPERIMENTS) == len(SPACES)


@pytest.mark.parametrize("path", CONFIGS, ids=_ids(CONFIGS))
def test_setting_a_config_key_to_its_value_changes_nothing(path: Path) -> None:
    reference = load_experiment(path)
    keys = override_keys(read_yaml(path), to_dict(reference))
    for key, value in keys.items():
        assert load_experiment(path, [as_cli(key, value)]) == reference, key


def sweep_keys(data: dict[str, Any], reference: SearchSpace) -> dict[str, Any]:
    """Every key of a sweep file as ``--set`` addresses it: ``base.<experiment key>`` (as written
    and resolved), the other sections' keys, and ``space.<dimension key>.<field>``."""
    keys = {f"base.{k}": v for k, v in override_keys(data.get("base") or {}, reference.base).items()}
    keys.update(flatten({k: v for k, v in data.items() if k not in ("base", "space")}))
    for dim_key, entry in (data.get("space") or {}).items():
        keys.update({f"space.{dim_key}.{field}": v for field, v in entry.items()})
    return keys


def unwritten_registry_nodes(data: dict[str, Any], reference: SearchSpace) -> list[str]:
    """``base.<path>`` of each registry node the sweep file's base leaves to its default."""
    def written(path: str) -> bool:
        try:
            node_at(data.get("base") or {}, path)
        except (KeyError, TypeError):
            return False
        return True

    return [f"base.{path}" for path, _ in registry_nodes(reference.reference) if not written(path)]


def load_sweep(path: Path, data: dict[str, Any], overrides: list[str]) -> SearchSpace:
    """``load_search_space(path, overrides)`` with the file read once."""
    return search_space_from_dict(apply_sweep_overrides(copy.deepcopy(data), overrides), str(path), path.stem)


def assert_same_sweep(got: SearchSpace, reference: SearchSpace, key: str) -> None:
    for f in dataclasses.fields(SearchSpace):
        if f.name != "data":  # the file's mapping: 1.0e-5 may come back as 1.0e-05
            assert getattr(got, f.name) == getattr(reference, f.name), f"--set {key}: {f.name} changed"


@pytest.mark.parametrize("path", SPACES, ids=_ids(SPACES))
def test_setting_a_sweep_key_to_its_value_changes_nothing(path: Path) -> None:
    data = read_yaml(path)
    reference = load_sweep(path, data, [])
    unwritten = unwritten_registry_nodes(data, reference)
    for key, value in sweep_keys(data, reference).items():
        if not any(key.startswith(node + ".") for node in unwritten):
            assert_same_sweep(load_sweep(path, data, [as_cli(key, value)]), reference, key)


def test_setting_a_field_of_a_sweep_base_default_registry_node() -> None:
    path = next(p for p in SPACES if "sde" not in (read_yaml(p).get("base") or {}))
    data = read_yaml(path)
    reference = load_sweep(path, data, [])
    key = "base.sde." + next(k for k in flatten(reference.base["sde"]) if k != "name")
    assert_same_sweep(load_sweep(path, data, [as_cli(key, flatten(reference.base)[key[5:]])]), reference, key)


@pytest.mark.parametrize("path", MANIFESTS, ids=_ids(MANIFESTS))
def test_setting_a_manifest_row_key_to_its_value_changes_nothing(path: Path) -> None:
    manifest = load_manifest(path)
    for row in manifest.rows:
        data = row.experiment_dict(seed=0, dataset_name=manifest.dataset)
        reference = experiment_from_dict(data)
        for key, value in override_keys(data, to_dict(reference)).items():
            got = experiment_from_dict(apply_overrides(data, [as_cli(key, value)], ExperimentConfig))
            assert got == reference, f"{row.id}: {key}"


# -------------------------------------------------------------------- switching names
def registry_nodes(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, entry) for every registry entry in a config tree."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{path}.{f.name}" if path else f.name
        if hasattr(type(value), "registry_name"):
            yield key, value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from registry_nodes(value, key)


def plain_names(obj: Any, path: str = "") -> Iterator[tuple[str, list[str]]]:
    """(dotted path of a plain ``name`` field, other values it may take) in a config tree."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{path}.{f.name}" if path else f.name
        if f.name == "name" and not hasattr(type(obj), "registry_name"):
            tp = hints[f.name]
            others = [a for a in get_args(tp) if a != value] if get_origin(tp) is Literal else [f"{value}_renamed"]
            yield key, others
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from plain_names(value, key)


def outside(flat: dict[str, Any], path: str) -> dict[str, Any]:
    """The flat keys outside the node at ``path`` (which may be a bare name: ``weighting: variance``)."""
    return {k: v for k, v in flat.items() if k != path and not k.startswith(path + ".")}


def node_at(data: dict[str, Any], dotted: str) -> Any:
    for k in dotted.split("."):
        data = data[k]
    return data


@pytest.mark.parametrize("label, data", EXPERIMENTS, ids=[label for label, _ in EXPERIMENTS])
def test_switching_a_registry_name_clears_only_its_node(label: str, data: dict[str, Any]) -> None:
    resolved = to_dict(experiment_from_dict(data))
    nodes = list(registry_nodes(experiment_from_dict(data)))
    assert {"sde", "truncation.prior", "objective", "data.dataset", "model.network"} <= {p for p, _ in nodes}
    for where in (data, resolved):  # the file as written, and with every default filled in
        for path, entry in nodes:
            for other in type(entry).registry.names():
                if other == entry.registry_name:
                    continue
                out = apply_overrides(where, [f"{path}.name={other}"], ExperimentConfig)
                assert node_at(out, path) == {"name": other}, f"{label}: {path}.name={other}"
                before, after = outside(flatten(where), path), outside(flatten(out), path)
                # a parent registry node the file leaves out is written as its default entry
                added = {k: v for k, v in after.items() if k not in before}
                assert all(path.startswith(k[: -len("name")]) and flatten(resolved)[k] == v for k, v in added.items())
                assert {k: after[k] for k in before} == before, f"{label}: {path}.name={other}"


@pytest.mark.parametrize("label, data", EXPERIMENTS, ids=[label for label, _ in EXPERIMENTS])
def test_switching_a_plain_name_changes_only_that_field(label: str, data: dict[str, Any]) -> None:
    reference = experiment_from_dict(data)
    names = dict(plain_names(reference))
    assert {"name", "optim.name"} <= set(names)
    for path, others in names.items():
        for other in others:
            got = to_dict(experiment_from_dict(apply_overrides(data, [f"{path}={other}"], ExperimentConfig)))
            want = flatten(to_dict(reference))
            want[path] = other
            assert flatten(got) == want, f"{label}: {path}={other}"


def test_set_name_keeps_the_config_file(tmp_path: Path) -> None:
    """The reported bug: ``--set name=mine`` trained the default configuration instead of the file's."""
    path = CONFIGS[0]
    mine = load_experiment(path, ["name=mine"])
    assert mine == dataclasses.replace(load_experiment(path), name="mine")
    # without a schema (a sweep file's --set, a manifest's smoke overrides) the top level is never
    # a registry node either
    data = read_yaml(path)
    assert apply_overrides(data, ["name=mine"]) == {**data, "name": "mine"}
    assert apply_overrides({"name": "s", "trials": 3}, {"name": "t"}) == {"name": "t", "trials": 3}


def test_a_registry_switch_through_the_cli_path() -> None:
    path = ROOT / "configs" / "digits_small.yaml"
    before = load_experiment(path)
    after = load_experiment(path, ["truncation.prior.name=fixed"])
    assert after.truncation.prior.registry_name == "fixed"
    assert dataclasses.replace(after, truncation=before.truncation) == before
    nested = load_experiment(path, ["objective.weighting.name=variance"])
    assert nested.objective.weighting.registry_name == "variance"
    assert nested.objective.time_sampler == before.objective.time_sampler  # the objective's other field kept


# -------------------------------------------------------------------- any value, any key
_EXAMPLE = to_dict(load_experiment(ROOT / "configs" / "digits_small.yaml"))
_LEAVES = sorted(k for k in flatten(_EXAMPLE) if k.split(".")[-1] != "name")
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=8), st.lists(st.integers(), max_size=3))


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(_LEAVES), value=_VALUES)
def test_an_override_changes_its_key_and_nothing_else(key: str, value: Any) -> None:
    out = apply_overrides(_EXAMPLE, {key: value}, ExperimentConfig)
    want = flatten(_EXAMPLE)
    want[key] = value
    assert flatten(out) == want
