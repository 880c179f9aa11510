"""Sweep files: the shipped ones load; every kind of mistake is one ConfigError naming the file,
the key path and what is allowed; fuzzed files never raise anything else (same loader as the CLI)."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from st_sweeps.config import flatten
from st_sweeps.errors import ConfigError
from st_sweeps.experiment import ExperimentConfig
from st_sweeps.search_space import (CategoricalDimension, FloatDimension, IntDimension, SearchSpace, active,
                                    load_search_space)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))

VALID = {
    "base": {"train": {"steps": 40, "eval_every_steps": 10}, "eval": {"likelihood": {"examples": 8}}},
    "space": {
        "truncation.prior.name": {"type": "categorical", "choices": ["fixed", "power_law"]},
        "truncation.prior.k": {"type": "float", "low": 0.5, "high": 3.0, "when": {"truncation.prior.name": "power_law"}},
        "truncation.eps": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "train.batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
    },
    "objectives": [{"metric": "eval/nll_bpd", "mode": "min"}],
    "searcher": {"name": "tpe", "seed": 1},
    "scheduler": {"name": "asha", "grace_period": 10},
    "trials": 4,
    "baseline": {"params": {"truncation.prior.name": "fixed", "truncation.eps": 1e-5, "train.batch_size": 32},
                 "seeds": 2},
}


def write(tmp: Path, data: object, name: str = "sweep.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load(tmp: Path, data: object, overrides: tuple[str, ...] = ()) -> SearchSpace:
    return load_search_space(write(tmp, data), overrides)


def error(tmp: Path, data: object, overrides: tuple[str, ...] = ()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp, data, overrides)
    return info.value


def mutate(path: str, value: object) -> dict:
    """VALID with the dotted path (top-level keys, then nested keys) set to value."""
    data = copy.deepcopy(VALID)
    keys = path.split("/")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return data


# ---------------------------------------------------------------------------------------- valid
@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_files_load(path: Path) -> None:
    space = load_search_space(path)
    assert space.trials >= 1 and space.dimensions
    assert isinstance(space.reference, ExperimentConfig)
    assert space.reference.data.dataset.registry_name == "digits"  # runs as shipped, no download
    for key in space.keys:  # every searched key is a key of the experiment config
        assert key.split(".")[0] in ExperimentConfig.__dataclass_fields__


def test_shipped_files_cover_the_brief() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"prior", "weighting", "stf", "diffusion_time", "pareto"} <= names
    pareto = load_search_space(ROOT / "search_spaces" / "pareto.yaml")
    assert pareto.multi_objective and pareto.metrics == ["eval/nll_bpd", "eval/digits_fd"]
    # the main job: likelihood against sample quality, compared with hard truncation at ε = 1e-5
    # run on several seeds (the seed spread), the NLL on enough examples for a small standard error
    prior = load_search_space(ROOT / "search_spaces" / "prior.yaml")
    assert prior.trials >= 8 and prior.metrics == ["eval/nll_bpd", "eval/digits_fd"]
    assert prior.baseline is not None and prior.baseline.seeds >= 3
    assert prior.baseline.params == {"truncation.prior.name": "fixed", "truncation.eps": 1e-5}
    assert prior.reference.eval.likelihood.examples >= 256 and prior.reference.eval.num_samples >= 256
    assert prior.reference.train.steps >= 1000 and prior.reference.model.network.channels >= 16
    for space in (load_search_space(p) for p in SHIPPED):
        assert space.baseline is not None and space.baseline.seeds >= 2, space.source
        if space.scheduler.name == "asha":  # ASHA prunes on one objective: single-objective spaces only
            assert not space.multi_objective, space.source
            train = space.reference.train
            assert train.steps // train.eval_every_steps >= 2 and space.grace_period < space.max_t


def test_valid_file_loads(tmp_path: Path) -> None:
    space = load(tmp_path, VALID)
    assert space.keys == list(VALID["space"])
    assert space.max_t == 40 and space.grace_period == 10
    assert space.scheduler_metric == "eval/nll_bpd" and space.scheduler_mode == "min"
    assert space.mlflow.experiment == "st_sweeps-sweep"
    dims = {d.key: d for d in space.dimensions}
    assert isinstance(dims["truncation.prior.name"], CategoricalDimension)
    assert isinstance(dims["truncation.prior.k"], FloatDimension)
    assert isinstance(dims["train.batch_size"], IntDimension)
    assert space.first_point() == {"truncation.prior.name": "fixed", "truncation.eps": 1e-5, "train.batch_size": 16}


def test_experiment_applies_params_over_the_base(tmp_path: Path) -> None:
    space = load(tmp_path, VALID)
    cfg = space.experiment({"truncation.prior.name": "power_law", "truncation.prior.k": 2.5, "truncation.eps": 1e-3,
                            "train.batch_size": 32}, name="t1")
    assert cfg.name == "t1" and cfg.truncation.prior.registry_name == "power_law"
    assert cfg.truncation.prior.k == 2.5 and cfg.truncation.eps == 1e-3 and cfg.train.batch_size == 32
    assert cfg.train.steps == 40  # from the base
    # a registry switch in the params never drops a field set in the same point, in any order
    cfg = space.experiment({"truncation.prior.k": 2.5, "truncation.prior.name": "power_law"})
    assert cfg.truncation.prior.k == 2.5


def test_define_by_run_only_suggests_and_respects_conditions(tmp_path: Path) -> None:
    import optuna

    space = load(tmp_path, VALID)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        assert space.define_by_run()(trial) is None
        p = trial.params
        seen.add(p["truncation.prior.name"])
        assert ("truncation.prior.k" in p) == (p["truncation.prior.name"] == "power_law")
        assert 1e-5 <= p["truncation.eps"] <= 1e-2 and p["train.batch_size"] in (16, 32, 48, 64)
        space.experiment(p)  # every suggested point is a valid experiment config
        study.tell(trial, 0.0)
    assert seen == {"fixed", "power_law"}


def test_active() -> None:
    d = FloatDimension(key="a.k", when={"a.name": "p"}, low=0, high=1)
    assert active(d, {"a.name": "p"}) and not active(d, {"a.name": "q"}) and not active(d, {})


def test_set_overrides(tmp_path: Path) -> None:
    space = load(tmp_path, VALID, ("trials=2", "base.train.steps=80", "space.truncation.eps.high=1e-3",
                                  "mlflow.tracking_uri=http://127.0.0.1:5000", "base.data.dataset.name=gmm_image"))
    assert space.trials == 2 and space.reference.train.steps == 80 and space.max_t == 80
    assert {d.key: d for d in space.dimensions}["truncation.eps"].high == 1e-3
    assert space.mlflow.tracking_uri == "http://127.0.0.1:5000"
    assert space.reference.data.dataset.registry_name == "gmm_image"


def test_grid_searcher(tmp_path: Path) -> None:
    no_baseline = {k: v for k, v in VALID.items() if k != "baseline"}  # a grid holds its points already
    data = {**no_baseline, "searcher": {"name": "grid"}, "trials": 6,
            "space": {"truncation.prior.name": {"type": "categorical", "choices": ["fixed", "power_law"]},
                      "train.batch_size": {"type": "int", "low": 16, "high": 48, "step": 16}}}
    assert load(tmp_path, data).grid() == {"truncation.prior.name": ["fixed", "power_law"],
                                           "train.batch_size": [16, 32, 48]}
    e = error(tmp_path, {**data, "trials": 7})
    assert "trials" in str(e) and "6" in str(e)
    e = error(tmp_path, {**VALID, "searcher": {"name": "grid"}})
    assert "when" in e.field


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("data, field, allowed", [
    (mutate("trails", 4), "trails", "trials"),  # unknown top-level key
    (mutate("searcher/population", 4), "searcher.population", "population_size"),
    (mutate("space/truncation.eps/type", "gaussian"), "space.truncation.eps.type", "categorical"),
    (mutate("space/truncation.eps/low", 0.5), "space.truncation.eps.low", "low <= high"),
    (mutate("space/train.batch_size/high", 8), "space.train.batch_size.low", "low <= high"),
    (mutate("space/truncation.eps/log_scale", True), "space.truncation.eps.log_scale", "log"),
    (mutate("space/truncation.eps/low", float("nan")), "space.truncation.eps.low", "finite"),
    (mutate("space/truncation.prior.name/choices", []), "space.truncation.prior.name.choices", "non-empty"),
    (mutate("space/truncation.prior.name/choices", ["fixed", "power_law", "power_lw"]), "space.truncation.prior.name",
     "power_law"),
    (mutate("objectives", [{"metric": "eval/nll_bpd", "mode": "maximise"}]), "objectives[0].mode", "min, max"),
    (mutate("objectives", [{"metric": "eval/nll"}]), "objectives[0].metric", "eval/nll_bpd"),
    (mutate("objectives", []), "objectives", "metric"),
    (mutate("searcher/name", "cmaes"), "searcher.name", "tpe, nsga2, random, grid"),
    (mutate("scheduler/name", "hyperband"), "scheduler.name", "asha, none"),
    (mutate("scheduler/mode", "up"), "scheduler.mode", "min, max"),
    (mutate("scheduler/grace_period", 100), "scheduler.grace_period", "[1, 40]"),
    (mutate("space/truncation.prior.kk", {"type": "float", "low": 1, "high": 2,
                                          "when": {"truncation.prior.name": "power_law"}}),
     "space.truncation.prior.kk", "k"),  # a dotted key that is not in the experiment config
    (mutate("space/train.stepz", {"type": "int", "low": 1, "high": 2}), "space.train.stepz", "steps"),
    (mutate("space/truncation.prior.k/when", {"truncation.prior.name": "powerlaw"}),
     "space.truncation.prior.k.when.truncation.prior.name", "power_law"),
    (mutate("space/truncation.prior.k/when", {"truncation.eps": 1e-3}),
     "space.truncation.prior.k.when.truncation.eps", "truncation.prior.name"),
    (mutate("base/train/stepz", 3), "base.train.stepz", "steps"),  # bad base config
    (mutate("base/train/batch_size", 0), "base.train.batch_size", ">= 1"),
    (mutate("base/truncation", {"prior": {"name": "cosine"}}), "base.truncation.prior.name", "power_law"),
    (mutate("base/eval/likelihood/examples", 0), "objectives[0].metric", "evaluation computes"),
    (mutate("resources/workers", 0), "resources.workers", ">= 1"),
    (mutate("trials", 0), "trials", ">= 1"),
    (mutate("name", "a/b"), "name", "no '/'"),
    (mutate("baseline/params/truncation.eps", 0.5), "baseline.params.truncation.eps", "float [1e-05, 0.01]"),
    (mutate("baseline/params/truncation.prior.k", 1.0), "baseline.params.truncation.prior.k", "leave it out"),
    (mutate("baseline/params/train.batch_size", 40), "baseline.params.train.batch_size", "step 16"),
    (mutate("baseline/params/truncation.prior.name", "power_law"), "baseline.params", "truncation.prior.k"),
    (mutate("baseline/params/optim.lr", 1e-3), "baseline.params.optim.lr", "truncation.eps"),
    (mutate("baseline/seeds", 0), "baseline.seeds", ">= 1"),
    (mutate("baseline/params", {}), "baseline.params", "a mapping"),
    (mutate("baseline/runs", 2), "baseline.runs", "params, seeds"),
])
def test_errors_name_file_key_and_allowed(tmp_path: Path, data: dict, field: str, allowed: str) -> None:
    e = error(tmp_path, data)
    text = str(e)
    assert text.startswith(str(tmp_path / "sweep.yaml") + ": "), text
    assert e.field.endswith(field), text
    assert allowed in (e.allowed or "") or allowed in text, text


def test_baseline_is_a_point_of_the_space(tmp_path: Path) -> None:
    space = load(tmp_path, VALID)
    assert space.baseline is not None and space.baseline.seeds == 2
    assert space.experiment(space.baseline.params).truncation.eps == 1e-5
    grid = {**VALID, "searcher": {"name": "grid"}, "trials": 2,
            "space": {k: v for k, v in VALID["space"].items() if k in ("truncation.prior.name", "train.batch_size")},
            "baseline": {"params": {"truncation.prior.name": "fixed", "train.batch_size": 32}}}
    e = error(tmp_path, grid)
    assert e.field.endswith("baseline") and "grid" in str(e)
    dims = {d.key: d for d in space.dimensions}
    assert dims["truncation.eps"].contains(1e-5) and not dims["truncation.eps"].contains("1e-5")
    assert dims["train.batch_size"].contains(48) and not dims["train.batch_size"].contains(40)
    assert not dims["train.batch_size"].contains(True) and dims["truncation.prior.name"].contains("fixed")


def test_value_that_breaks_another_field_blames_the_dimension(tmp_path: Path) -> None:
    data = mutate("space/sde.T", {"type": "categorical", "choices": [1.0, 0.6]})
    data["base"]["eval"]["sampler"] = {"name": "euler_maruyama", "eps": 0.7}
    e = error(tmp_path, data)  # the first point (T = 1) is fine, T = 0.6 is not
    assert e.field.endswith("space.sde.T") and "value 0.6 makes eval.sampler.eps invalid" in str(e), str(e)
    data["space"]["sde.T"]["choices"] = [0.6, 1.0]
    e = error(tmp_path, data)  # now the first point fails, on a key no dimension names
    assert e.field.endswith("space") and "sde.T=0.6" in str(e) and "eval.sampler.eps" in str(e), str(e)
    e = error(tmp_path, mutate("space/truncation.eps/high", 2.0))
    assert e.field.endswith("space.truncation.eps") and "0 < truncation.eps < 1.0" in str(e)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_search_space(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("space: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_search_space(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_search_space(tmp_path / "list.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00space")
    with pytest.raises(ConfigError):
        load_search_space(tmp_path / "bin.yaml")
    (tmp_path / "loop.yaml").write_text("base: &a\n  x: *a\nspace: {}\nobjectives: []\n")
    with pytest.raises(ConfigError):
        load_search_space(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load(tmp_path, VALID, ("trials",))


def test_cli_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, mutate("searcher/name", "cmaes"))
    proc = subprocess.run([sys.executable, "-m", "st_sweeps.tune", str(path), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0] == f"{path}: searcher.name: got 'cmaes' (allowed: tpe, nsga2, random, grid)"


def test_cli_dry_run_prints_the_plan() -> None:
    proc = subprocess.run([sys.executable, "-m", "st_sweeps.tune", "search_spaces/prior.yaml", "--dry-run",
                           "--set", "trials=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "trials:     3" in proc.stdout and "truncation.prior.k" in proc.stdout and "scheduler:  none" in proc.stdout
    assert "baseline:   truncation.prior.name='fixed', truncation.eps=1e-05, run first on 3" in proc.stdout


# ---------------------------------------------------------------------------------------- fuzzing
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
known_keys = st.sampled_from(["name", "base", "space", "objectives", "searcher", "scheduler", "trials",
                              "max_concurrent", "resources", "mlflow", "storage_path", "type", "low", "high",
                              "log", "step", "choices", "when", "metric", "mode", "seed", "cpus", "workers",
                              "truncation.eps", "truncation.prior.k", "train", "steps", "eval", "baseline",
                              "params", "seeds"])
keys = st.one_of(known_keys, st.text(min_size=1, max_size=10))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(keys, inner, max_size=4)), max_leaves=12)
FLAT_VALID = flatten(VALID)


def _load_fuzzed(data: object, overrides: tuple[str, ...] = ()) -> None:
    """Through the CLI's loader (a YAML file on disk): a SearchSpace or a ConfigError, nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        try:
            path.write_text(yaml.safe_dump(data))
        except (yaml.YAMLError, ValueError):
            return
        try:
            space = load_search_space(path, overrides)
        except ConfigError as e:
            assert str(e).startswith(str(path)) or str(e).startswith("--"), str(e)
            return
        assert isinstance(space, SearchSpace)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=6))
def test_fuzz_random_mappings(data: dict) -> None:
    _load_fuzzed(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_valid_file(draw: st.DataObject) -> None:
    data = copy.deepcopy(VALID)
    for _ in range(draw.draw(st.integers(1, 3))):
        paths = _paths(data)
        path = draw.draw(st.sampled_from(paths))
        action = draw.draw(st.sampled_from(["replace", "delete", "add"]))
        parent, key = _walk(data, path)
        if action == "replace":
            parent[key] = draw.draw(values)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw.draw(keys)] = draw.draw(values)
    _load_fuzzed(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.sampled_from(sorted(FLAT_VALID)), keys), st.text(max_size=12)), max_size=3))
def test_fuzz_set_overrides(pairs: list[tuple[str, str]]) -> None:
    _load_fuzzed(VALID, tuple(f"{k}={v}" for k, v in pairs))


def _paths(data: object, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _walk(data: object, path: tuple) -> tuple:
    node = data
    for k in path[:-1]:
        node = node[k]
    return node, path[-1]


def test_fuzz_helpers_cover_nested_values() -> None:
    assert ("space", "truncation.eps", "low") in _paths(VALID)
    assert math.isclose(FLAT_VALID["space.truncation.eps.low"], 1e-5)
