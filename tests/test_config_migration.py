"""The nested evaluation config (``eval.sampler``, ``eval.sample_quality``, ``eval.likelihood``)
changed the layout of every shipped YAML, not what it runs: each file (configs, sweep files, every manifest row at paper
and smoke scale, every claims configuration at both scales) resolves to the same effective
settings as before the change. ``tests/data/eval_settings_before_nesting.json`` was written from
the flat layout (the commit before the change) by the same reduction as ``effective`` below: the
whole experiment outside ``eval``, the sampler's settings that apply to its kind, the sample
quality's settings that apply to its kind, and the rest of ``eval``. The ODE sampler used to take
the NLL's tolerances; the migrated files write them into ``eval.sampler`` explicitly. The likelihood's
settings are compared under their old flat names (``eval.likelihood.rtol`` as ``nll_rtol``, ...);
the dequantizer's fitting settings only where a variational dequantization uses them (a uniform
one has none now). (The NLL solver and its time variable are newer than the record and are left
out.)

Old flat keys are refused with the path they moved to.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from st_sweeps.claims.manifest import load_manifest as load_claims
from st_sweeps.config import to_dict
from st_sweeps.errors import ConfigError
from st_sweeps.experiment import EvalConfig, experiment_from_dict, load_experiment
from st_sweeps.reproduce.manifest import DATASETS, load_manifest, manifest_path
from st_sweeps.reproduce.scaling import row_config
from st_sweeps.search_space import load_search_space

ROOT = Path(__file__).resolve().parents[1]
BEFORE = json.loads((ROOT / "tests" / "data" / "eval_settings_before_nesting.json").read_text())
SAMPLER_FIELDS = {"pc": ("n_steps", "predictor", "corrector", "snr", "n_corrector_steps", "eps"),
                  "euler_maruyama": ("n_steps", "eps"), "ode": ("rtol", "atol", "eps")}
MOVED = ("sampler", "sample_quality", "likelihood")
FLAT_NAMES = {"examples": "nll_examples", "repeats": "nll_repeats", "trace": "nll_trace", "probes": "nll_probes",
              "rtol": "nll_rtol", "atol": "nll_atol", "nelbo_repeats": "nelbo_repeats"}
FIT_FIELDS = ("dequantizer_steps", "dequantizer_lr", "dequantizer_batch_size", "dequantizer_hidden")


def flat_likelihood(likelihood) -> dict:
    """``eval.likelihood`` under the flat names of the record."""
    out = {old: getattr(likelihood, new) for new, old in FLAT_NAMES.items()}
    fit = likelihood.dequantization
    out["dequantization"] = fit.name
    if fit.name == "variational":
        out.update({f"dequantizer_{k}": getattr(fit, k) for k in ("steps", "lr", "batch_size", "hidden")})
    return out


def effective(config) -> dict:
    ev = config.eval
    sampler = {"name": type(ev.sampler).registry_name, **to_dict(ev.sampler)}
    quality = {"name": ev.sample_quality.name, **to_dict(ev.sample_quality)}
    out = {"experiment": {k: v for k, v in to_dict(config).items() if k != "eval"},
           "sampler": {"name": sampler["name"], **{k: sampler[k] for k in SAMPLER_FIELDS[sampler["name"]]}},
           "sample_quality": {k: v for k, v in quality.items()
                              if k == "name" or quality["name"] in ("fid", "both")},
           "eval_other": {**{k: v for k, v in to_dict(ev).items() if k not in MOVED},
                          **flat_likelihood(ev.likelihood)}}
    return json.loads(json.dumps(out, default=str))


def shipped_configs():
    for p in sorted((ROOT / "configs").glob("*.yaml")):
        yield f"configs/{p.name}", lambda p=p: load_experiment(p)
    for p in sorted((ROOT / "search_spaces").glob("*.yaml")):
        yield f"search_spaces/{p.name}", lambda p=p: load_search_space(p).reference
    for ds in sorted(DATASETS):
        m = load_manifest(manifest_path(ds))
        for row in m.rows:
            for scale, fid in (("paper", True), ("smoke", False), ("smoke", True)):
                yield (f"manifests/{ds}/{row.id}/{scale}/fid={fid}",
                       lambda m=m, row=row, scale=scale, fid=fid: row_config(m, row, scale, 0, fid))
    claims = load_claims(ROOT / "reproductions" / "claims" / "claims.yaml")
    for scale in ("smoke", "cpu"):
        for conf in claims.configurations:
            yield f"claims/{scale}/{conf.id}", lambda conf=conf, scale=scale: claims.experiment(conf, scale, 0)


CONFIGS = dict(shipped_configs())


def test_every_shipped_file_is_in_the_record_and_nothing_was_dropped():
    assert set(CONFIGS) == set(BEFORE)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_shipped_file_runs_what_it_ran_before_the_nesting(name):
    now, before = effective(CONFIGS[name]()), copy.deepcopy(BEFORE[name])
    if before["eval_other"]["dequantization"] == "uniform":  # its fitting settings did nothing
        for k in FIT_FIELDS:
            before["eval_other"].pop(k)
    before["eval_other"].pop("nll_solver", None)
    for part in ("experiment", "sampler", "sample_quality", "eval_other"):
        assert now[part] == before[part], f"{name}: {part}"


@pytest.mark.parametrize("old, new", sorted(EvalConfig.MOVED_KEYS.items()))
def test_an_old_flat_key_names_its_new_path(old, new):
    with pytest.raises(ConfigError) as err:
        experiment_from_dict({"eval": {old: 1}})
    assert err.value.field == f"eval.{old}" and f"eval.{new}" in err.value.problem


def test_a_setting_the_chosen_sampler_would_ignore_is_refused():
    with pytest.raises(ConfigError, match="eval.sampler.predictor: not a setting of sampler 'ode'"):
        experiment_from_dict({"eval": {"sampler": {"name": "ode", "predictor": "reverse_diffusion"}}})
    with pytest.raises(ConfigError, match="eval.sampler.rtol: not a setting of sampler 'pc'"):
        experiment_from_dict({"eval": {"sampler": {"name": "pc", "rtol": 1e-3}}})
    with pytest.raises(ConfigError, match="inception_score_splits: not a setting of sample quality 'pixel_fd'"):
        experiment_from_dict({"eval": {"sample_quality": {"name": "pixel_fd", "inception_score_splits": 1}}})


def test_a_bare_name_still_selects_a_sampler_and_a_sample_quality_with_their_defaults():
    ev = experiment_from_dict({"eval": {"sampler": "ode", "sample_quality": "fid"}}).eval
    assert (ev.sampler.rtol, ev.sampler.eps, ev.sampler.denoise) == (1e-5, 1e-5, True)
    assert (ev.sample_quality.inception_score_splits, ev.sample_quality.reference_examples) == (10, 0)
    assert experiment_from_dict({"eval": {"sampler": {"name": "pc", "denoise": False}}}).eval.sampler.denoise is False
