"""Every metric key the trainer and the evaluation report, declared once: its unit, which way is
better, what it means, and which settings produce it.

Search-space validation (which objectives exist, and whether the base config computes them), the
sweep's report (units, directions), the MLflow tracker (every logged key is declared) and the
reproduction tables (which key a table column reads) all read this table; a test checks that the
keys an evaluation actually returns are exactly the ones ``produced`` predicts.

``produced(key, config)`` returns None when ``config`` computes the metric, else the reason it
does not (for messages and for the "missing — why" cells of the tables). Metrics that depend on
the machine as well (FID and the Inception Score need Inception weights) say so in
``conditional``: the config is necessary, not sufficient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

if TYPE_CHECKING:
    from st_sweeps.experiment import ExperimentConfig

Direction = Literal["min", "max"]
Why = Callable[["ExperimentConfig"], "str | None"]  # None: produced; else why not


@dataclass(frozen=True)
class Metric:
    key: str
    unit: str  # "bpd", "NFE", "count", "" (dimensionless), ...
    direction: Direction | None  # None: not something to optimise (a spread, a count, a rate)
    description: str
    why_not: Why
    conditional: str = ""  # besides the config, what the machine must have for a value


# --- which settings produce what -----------------------------------------------------------
def _nll(config: "ExperimentConfig") -> str | None:
    if config.eval.likelihood.examples == 0:
        return "eval.likelihood.examples = 0 (likelihood not evaluated)"
    return None


def _vardeq(config: "ExperimentConfig") -> str | None:
    if (why := _nll(config)) is not None:
        return why
    if (kind := config.eval.likelihood.dequantization.name) != "variational":
        return f"eval.likelihood.dequantization is {kind!r} (variational is opt-in)"
    return None


def _spread_over_examples(base: Why) -> Why:
    def why_not(config: "ExperimentConfig") -> str | None:
        if (why := base(config)) is not None:
            return why
        return ("a standard error needs eval.likelihood.examples >= 2" if config.eval.likelihood.examples < 2
                else None)
    return why_not


def _spread_over_repeats(base: Why, field: str) -> Why:
    def why_not(config: "ExperimentConfig") -> str | None:
        if (why := base(config)) is not None:
            return why
        return (f"a Monte-Carlo standard error needs eval.likelihood.{field} >= 2"
                if getattr(config.eval.likelihood, field) < 2 else None)
    return why_not


def _spread_over_probes(base: Why) -> Why:
    def why_not(config: "ExperimentConfig") -> str | None:
        if (why := base(config)) is not None:
            return why
        lik = config.eval.likelihood
        if lik.solver != "fast" or lik.trace == "exact" or lik.probes < 2:
            return ("a probe standard error needs eval.likelihood.solver = fast, a Hutchinson trace and "
                    "eval.likelihood.probes >= 2")
        return None
    return why_not


def _samples(config: "ExperimentConfig") -> str | None:
    return "eval.num_samples = 0 (no samples drawn)" if config.eval.num_samples == 0 else None


def _quality(*qualities: str) -> Why:
    def why_not(config: "ExperimentConfig") -> str | None:
        if (why := _samples(config)) is not None:
            return why
        if config.eval.sample_quality.name not in qualities:
            return f"eval.sample_quality is {config.eval.sample_quality.name!r}, not {' or '.join(qualities)}"
        return None
    return why_not


def _pixel_fd_stderr(config: "ExperimentConfig") -> str | None:
    from st_sweeps.evaluate import FD_BOOTSTRAP_MAX_DIM

    if (why := _quality("pixel_fd", "both")(config)) is not None:
        return why
    if (why := _two_samples(config)) is not None:
        return why
    dims = math.prod(config.data.dataset.shape)
    if dims > FD_BOOTSTRAP_MAX_DIM:
        return f"no bootstrap above {FD_BOOTSTRAP_MAX_DIM} pixel dimensions (this data has {dims})"
    return None


def _two_samples(config: "ExperimentConfig") -> str | None:
    return "a bootstrap standard error needs eval.num_samples >= 2" if config.eval.num_samples < 2 else None


def _digits_fd_stderr(config: "ExperimentConfig") -> str | None:
    if (why := _quality("digits_fd")(config)) is not None:
        return why
    return _two_samples(config)


def _inception(config: "ExperimentConfig") -> str | None:
    if (why := _quality("fid", "both")(config)) is not None:
        return why
    return None if config.data.dataset.discrete else "FID needs 8-bit image data"


def _always(config: "ExperimentConfig") -> str | None:
    return None


WEIGHTS = "Inception weights on this machine (st_sweeps.fid), and for the IS at least as many samples as splits"


# --- the declarations ------------------------------------------------------------------------
def _bound(key: str, what: str, base: Why, repeats_field: str) -> list[Metric]:
    """A bound in bits/dim with and without the residual term, and its three spreads; the NLL and
    the NELBO report the same five keys around their stems."""
    return [
        Metric(key, "bpd", "min", f"{what} with the residual term", base),
        Metric(f"{key}_no_residual", "bpd", "min", f"{what} without the residual term", base),
        Metric(f"{key}_stderr", "bpd", None, f"standard error of {key} over examples", _spread_over_examples(base)),
        Metric(f"{key}_no_residual_stderr", "bpd", None, f"standard error of {key}_no_residual over examples",
               _spread_over_examples(base)),
        Metric(f"{key}_mc_stderr", "bpd", None, f"Monte-Carlo standard error of {key} over repeats",
               _spread_over_repeats(base, repeats_field)),
    ]


def _likelihood_family(tag: str, base: Why, what: str) -> list[Metric]:
    """The NLL and NELBO keys of one dequantization (``tag`` "" uniform, "_vardeq" variational),
    spelled as ``NllResult.as_metrics`` and ``NelboResult.as_metrics`` in likelihood.py spell them
    (tests/test_metrics.py holds the two equal)."""
    nll = f"eval/nll_bpd{tag}"
    out = [
        *_bound(nll, f"NLL through the probability-flow ODE from x_ε ({what})", base, "repeats"),
        Metric(f"{nll}_probe_stderr", "bpd", None, f"Hutchinson standard error of {nll}, from each example's "
               "spread over its probes", _spread_over_probes(base)),
        Metric(f"eval/nfe_nll{tag}", "NFE", "min", f"network evaluations of the NLL solves ({what})", base),
        Metric(f"eval/nfe_nll{tag}_per_solve", "NFE", "min", "network evaluations per ODE solve", base),
        Metric(f"eval/nll{tag}_examples", "count", None, "test examples the NLL averages", base),
        *_bound(f"eval/nelbo_bpd{tag}", f"negative ELBO of the SDE ({what})", base, "nelbo_repeats"),
    ]
    if not tag:  # the published evaluator's protocol runs beside the uniform NLL only
        out += [
            Metric(f"{nll}_score_sde", "bpd", "min", "NLL as score_sde's evaluator computes it (ODE from x_0 = data, "
                   "no residual term)", base),
            Metric(f"{nll}_score_sde_stderr", "bpd", None, f"standard error of {nll}_score_sde over examples",
                   _spread_over_examples(base)),
        ]
    return out


DECLARED: tuple[Metric, ...] = (
    *_likelihood_family("", _nll, "uniform dequantization"),
    *_likelihood_family("_vardeq", _vardeq, "variational dequantization"),
    Metric("eval/dequantizer_fit_bpd", "bpd", None, "the variational dequantizer's final training bound", _vardeq),
    Metric("eval/nfe_sampling", "NFE", "min", "network evaluations per sample", _samples),
    Metric("eval/pixel_fd", "", "min", "Fréchet distance between generated and training images in pixel space",
           _quality("pixel_fd", "both")),
    Metric("eval/pixel_fd_stderr", "", None, "bootstrap standard error of eval/pixel_fd over the samples",
           _pixel_fd_stderr),
    Metric("eval/fid", "", "min", "FID in torch-fidelity's Inception features", _inception, WEIGHTS),
    Metric("eval/inception_score", "", "max", "Inception Score (mean over eval.inception_score_splits chunks)",
           _inception, WEIGHTS),
    Metric("eval/inception_score_std", "", None, "spread of the Inception Score over its chunks", _inception, WEIGHTS),
    Metric("eval/digits_fd", "", "min", "Fréchet distance in a digit classifier's features (docs/METRICS.md)",
           _quality("digits_fd")),
    Metric("eval/digits_fd_stderr", "", None, "bootstrap standard error of eval/digits_fd", _digits_fd_stderr),
    Metric("eval/digits_kid", "", "min", "kernel inception distance in the digit classifier's features",
           _quality("digits_fd")),
    Metric("eval/gmm_sample_logp", "nats", "max", "mean exact log-density of the samples under the data mixture",
           _quality("gmm_exact")),
    Metric("eval/gmm_sample_logp_stderr", "nats", None, "standard error of eval/gmm_sample_logp",
           _quality("gmm_exact")),
    Metric("eval/gmm_data_logp", "nats", None, "the same for fresh data draws (the target of eval/gmm_sample_logp)",
           _quality("gmm_exact")),
    Metric("eval/gmm_energy_distance", "", "min", "energy distance between samples and fresh data draws",
           _quality("gmm_exact")),
    Metric("eval/gmm_energy_pvalue", "", None, "permutation p-value of the energy distance", _quality("gmm_exact")),
    Metric("eval/gmm_occupancy_chi2", "", "min", "χ² of the samples' component occupancy against the weights",
           _quality("gmm_exact")),
    Metric("eval/gmm_occupancy_pvalue", "", None, "p-value of that χ²", _quality("gmm_exact")),
    Metric("train/loss", "", "min", "training loss, averaged over the logging window", _always),
    Metric("train/tau", "", None, "the truncation τ of the window's last step", _always),
    Metric("train/lr", "", None, "learning rate", _always),
    Metric("train/grad_norm", "", None, "gradient norm before clipping", _always),
    Metric("train/clip_fraction", "", None, "share of the window's steps whose gradient was clipped", _always),
    Metric("perf/steps_per_s", "steps/s", None, "optimiser steps per second over the window", _always),
    Metric("perf/images_per_s", "images/s", None, "training examples per second over the window", _always),
)
METRICS: dict[str, Metric] = {m.key: m for m in DECLARED}
assert len(METRICS) == len(DECLARED), "a metric key is declared twice"

# what a sweep may optimise: every declared metric with a direction
OBJECTIVES: tuple[str, ...] = tuple(m.key for m in DECLARED if m.direction is not None)


def get(key: str) -> Metric:
    from st_sweeps.errors import ConfigError

    if key not in METRICS:
        raise ConfigError("metric", f"unknown metric {key!r}", OBJECTIVES)
    return METRICS[key]


def produced(key: str, config: "ExperimentConfig") -> str | None:
    """None when ``config`` computes ``key``; else why it does not."""
    return get(key).why_not(config)


def produced_keys(config: "ExperimentConfig", prefix: str = "eval/") -> set[str]:
    """The declared keys under ``prefix`` that ``config`` computes (conditional ones included)."""
    return {m.key for m in DECLARED if m.key.startswith(prefix) and m.why_not(config) is None}


def is_declared(key: str) -> bool:
    return key in METRICS


def unit(key: str) -> str:
    return METRICS[key].unit if key in METRICS else ""
