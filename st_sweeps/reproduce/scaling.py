"""A row's experiment config at each scale: as pinned (``paper``) or shrunk by one rule to seconds on a
CPU (``smoke``), and the one-line description the tables print for it."""

from __future__ import annotations

from typing import Any, Mapping

from st_sweeps.config import apply_overrides, to_dict, to_spec
from st_sweeps.errors import ConfigError
from st_sweeps.experiment import ExperimentConfig, experiment_from_dict
from st_sweeps.likelihood_settings import VariationalDequantization
from st_sweeps.reproduce.manifest import Manifest, Row, SmokeScale


def has_fid(config: ExperimentConfig) -> bool:
    return config.eval.sample_quality.fid


def smoke_config(row: Row, smoke: SmokeScale, dataset: str, seed: int, fid_available: bool) -> ExperimentConfig:
    """The row shrunk to seconds on a CPU. Kept: SDE, truncation (ε and the τ prior), objective and
    weighting, network family and its switches, time input, optimiser, EMA rate, sampler kind.
    Changed: image size; network width, levels (attention at the lowest level if the row's network
    has attention, else none), blocks and time-embedding width; steps, batch, warm-up; evaluation
    size and ODE tolerances (NLL examples and sampler steps capped at the row's own); with
    variational dequantization, a few dequantizer steps on small batches (capped at the row's
    own), so its NLL line is measured, not skipped; sample quality: FID (and the pixel Fréchet
    distance) when Inception weights exist, else the pixel distance only. Kept in the evaluation:
    the dequantization, the Inception Score's splits (any sample count ≥ splits works; the paper
    rows' 1 split always does). Then ``smoke.overrides``."""
    s = smoke
    data = row.experiment_dict(seed, dataset)
    paper = row.experiment(seed, dataset).eval  # resolved, so defaults count as the row's own
    data["data"]["dataset"]["image_size"] = s.image_size
    net = data["model"]["network"]
    lowest = s.image_size // 2 ** (len(s.channel_multipliers) - 1)
    net.update(channels=s.channels, channel_multipliers=list(s.channel_multipliers),
               blocks_per_resolution=s.blocks_per_resolution, time_embedding_dim=None,
               attention_resolutions=[lowest] if net.get("attention_resolutions") else [])
    data["train"] = {**data.get("train", {}), "steps": s.steps, "batch_size": s.batch_size, "micro_batch_size": 0,
                     "eval_every_steps": 0, "checkpoint_every_steps": 0, "log_every_steps": s.log_every_steps}
    data["optim"] = {**data.get("optim", {}), "warmup_steps": s.warmup_steps}
    sampler = to_spec(paper.sampler)
    if "n_steps" in sampler:
        sampler["n_steps"] = min(s.sampler_steps, sampler["n_steps"])
    if "rtol" in sampler:  # the ODE sampler: the smoke tolerance, as for the NLL
        sampler.update(rtol=s.nll_tolerance, atol=s.nll_tolerance)
    inception = {k: v for k, v in to_dict(paper.sample_quality).items() if k != "name"}
    likelihood = to_dict(paper.likelihood)  # the row's resolved settings; its dequantization with its name
    likelihood.update(examples=min(s.nll_examples, paper.likelihood.examples), rtol=s.nll_tolerance,
                      atol=s.nll_tolerance, nelbo_repeats=s.nelbo_repeats)
    fit = paper.likelihood.dequantization
    if isinstance(fit, VariationalDequantization):
        likelihood["dequantization"].update(steps=min(s.dequantizer_steps, fit.steps),
                                            batch_size=min(s.dequantizer_batch_size, fit.batch_size))
    data["eval"] = {
        **data.get("eval", {}), "likelihood": likelihood,
        "num_samples": s.num_samples, "batch_size": s.eval_batch_size, "sampler": sampler,
        "sample_quality": {"name": "both", **inception} if fid_available else "pixel_fd",
    }
    data = apply_overrides(data, s.overrides, ExperimentConfig)
    try:
        return experiment_from_dict(data)
    except ConfigError as e:
        raise e.at(f"smoke config of row {row.id}") from None


def row_config(manifest: Manifest, row: Row, scale: str, seed: int, fid_available: bool) -> ExperimentConfig:
    if scale == "paper":
        return row.experiment(seed, manifest.dataset)
    return smoke_config(row, manifest.smoke, manifest.dataset, seed, fid_available)


def expected_nfe(config: ExperimentConfig) -> str:
    """The sampler's NFE from its config (the ODE sampler's is adaptive)."""
    nfe = config.eval.sampler.expected_nfe()
    return "adaptive (RK45)" if nfe is None else str(nfe)


def describe_config(config: ExperimentConfig) -> str:
    """One line naming what a row trains and how it is evaluated."""
    c = config
    net = c.model.network
    sde = ", ".join(f"{k}={v}" for k, v in to_dict(c.sde).items() if k != "name")
    prior = to_dict(c.truncation.prior)
    eps = c.truncation.eps
    trunc = (f"hard, τ = ε = {eps:g}" if prior["name"] == "fixed"
             else f"soft, τ ~ {short_spec(prior)} on [ε = {eps:g}, T]")
    obj = to_dict(c.objective)
    obj_text = obj.pop("name") + "(" + ", ".join(f"{k}={short_spec(v)}" for k, v in obj.items()) + ")"
    ev = c.eval
    sampler = short_spec(to_spec(ev.sampler))
    lik, fit = ev.likelihood, ev.likelihood.dequantization
    deq = "uniform dequantization" + (
        f", and variational (q fitted {fit.steps} steps at batch {fit.batch_size}, lr {fit.lr:g}, "
        f"hidden {fit.hidden})" if isinstance(fit, VariationalDequantization) else "")
    nll = (f"NLL/NELBO on {lik.examples} test images ({deq}, rtol=atol={lik.rtol:g}, "
           f"{lik.repeats} pass(es), NELBO {lik.nelbo_repeats})" if lik.examples else "no NLL")
    quality = ev.sample_quality.name + (
        f", IS over {splits_text(ev.sample_quality.inception_score_splits)}" if has_fid(c) else "")
    return (f"{c.data.dataset.shape[1]}px, {type(c.sde).registry_name}({sde}); {type(net).registry_name} "  # type: ignore[attr-defined]
            f"nf={getattr(net, 'channels', '?')} mult={list(getattr(net, 'channel_multipliers', []))} "
            f"blocks={getattr(net, 'blocks_per_resolution', '?')}; truncation {trunc}; objective {obj_text}; "
            f"batch {c.train.batch_size} × {c.train.steps} steps, lr {c.optim.lr:g}, warm-up {c.optim.warmup_steps}, "
            f"EMA {c.optim.ema_decay:g}; sampler {sampler}, NFE {expected_nfe(c)}; "
            f"{ev.num_samples} samples ({quality}); {nll}")


def splits_text(n: int) -> str:
    return f"{n} split" + ("s" if n != 1 else "")


def short_spec(v: Any) -> str:
    if v is None:
        return "auto"
    if isinstance(v, Mapping):
        inner = ", ".join(f"{k}={short_spec(x)}" for k, x in v.items() if k != "name")
        return f"{v.get('name', '')}({inner})" if inner else str(v.get("name", ""))
    return str(v)
