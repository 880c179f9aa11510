"""Variational dequantization against analytic truth.

A diagonal Gaussian on the model's coordinates has an exact discrete probability per 8-bit bin,
P(k) = ∏_d [Φ(((k_d + 1)/256 − m_d)/s_d) − Φ((k_d/256 − m_d)/s_d)] (in [0, 1] coordinates), so
the uniform and the variational bounds can be compared with −log₂ P(k)/D itself. The
dequantizer's log q is checked as a density (integrates to one) and against its own sampler
(KS test); a zero-initialised dequantizer is uniform dequantization, draw for draw.
Monte-Carlo statements are checked at 4 standard errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from st_sweeps.config import apply_overrides
from st_sweeps.dequantization import Dequantizer, fit_dequantizer, levels_from_model_space, model_space_from_levels
from st_sweeps.errors import ConfigError
from st_sweeps.evaluate import evaluate_model
from st_sweeps.experiment import EvalConfig, experiment_from_dict
from st_sweeps.gaussian_mixture import GaussianMixture
from st_sweeps.likelihood import (
    NelboResult,
    NllResult,
    dequantize_variational,
    dequantized_nll_bits_per_dim,
    nelbo_bits_per_dim,
    nelbo_nats,
    nll_bits_per_dim,
    to_bits_per_dim,
)
from st_sweeps.likelihood_settings import VariationalDequantization
from st_sweeps.sde import VPSDE
from st_sweeps.tracking import NullTracker
from st_sweeps.trainer import Trainer
from test_evaluate import BASE as EVAL_BASE  # the tiny digits experiment

F64 = torch.float64
LN2 = math.log(2.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model_space(k: torch.Tensor, centered: bool) -> torch.Tensor:
    return 2 * k / 255 - 1 if centered else k / 255


# --- (a) bounds against the exact discrete probability of a Gaussian --------------------------------
MEAN01 = torch.tensor([0.30, 0.45, 0.55, 0.70], dtype=F64)  # [0, 1] coordinates, D = 4
STD01 = torch.tensor([0.5, 0.8, 1.5, 3.0], dtype=F64) / 256  # 0.5 to 3 bins: the density varies within a bin


def _gaussian_levels(n: int, seed: int) -> torch.Tensor:
    """Levels k [n, 4] drawn from the discretised Gaussian itself."""
    y = MEAN01 + STD01 * torch.randn(n, 4, generator=_gen(seed), dtype=F64)
    return torch.floor(y * 256).clamp(0, 255)


def _log_density(centered: bool):
    """log N(y; a m + b, diag(a s)²) on the model's coordinates y = a y01 + b."""
    a, b = (2.0, -1.0) if centered else (1.0, 0.0)
    mean, std = a * MEAN01 + b, a * STD01
    return lambda y: (-0.5 * ((y - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(1)


def _exact_bpd(k: torch.Tensor) -> torch.Tensor:
    """−log₂ P(k) / D with P(k) the Gaussian's mass on the bin ∏[k/256, (k+1)/256)."""
    lo, hi = (k / 256 - MEAN01) / STD01, ((k + 1) / 256 - MEAN01) / STD01
    return -torch.log(torch.special.ndtr(hi) - torch.special.ndtr(lo)).sum(1) / (4 * LN2)


def _uniform_bound_bpd(k: torch.Tensor) -> torch.Tensor:
    """The uniform bound in closed form: E_U[−log p01((k + U)/256)]/(D ln 2) + 8, with
    E[(y − m)²] = ((k + ½)/256 − m)² + 1/(12·256²)."""
    sq = ((k + 0.5) / 256 - MEAN01) ** 2 + 1 / (12 * 256 ** 2)
    nats = (0.5 * torch.log(2 * math.pi * STD01 ** 2) + sq / (2 * STD01 ** 2)).sum(1)
    return nats / (4 * LN2) + 8


def _gaussian_score(sde: VPSDE):
    """The exact score of the Gaussian (in [0, 1] coordinates) pushed through ``sde``."""

    def score(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m_t, s_t = sde.mean_scale(t)[:, None], sde.std(t)[:, None]
        return -(y - m_t * MEAN01) / (m_t ** 2 * STD01 ** 2 + s_t ** 2)

    return score


_FITTED: dict[str, tuple[Dequantizer, list[float]]] = {}


EVENTS = {"flat": (4,), "image": (1, 2, 2)}  # the MLP and the convolutional dequantizer


def _flat(fn):
    return lambda y: fn(y.reshape(y.shape[0], 4))


def _fitted(target: str, event: str) -> tuple[Dequantizer, list[float]]:
    """q fitted on [0, 1] coordinates (300 Adam steps, batch 256, 1–2 s) against the Gaussian's
    exact log-density ("density"), or against the SDE bound −NELBO with the Gaussian's exact
    score ("sde_bound": what the evaluation does with a network). Cached for the module."""
    if (target, event) not in _FITTED:
        if target == "density":
            log_density = _log_density(False)
        else:
            sde, g = VPSDE(), _gen(9)
            log_density = lambda y: -nelbo_nats(_gaussian_score(sde), sde, y, eps=1e-5, generator=g,  # noqa: E731
                                                differentiable=True)[1]
        deq = Dequantizer(EVENTS[event], hidden=32, generator=_gen(4))
        deq = deq.double() if event == "flat" else deq  # float64 convolutions are slow on a CPU
        levels = _gaussian_levels(4096, 1).reshape(-1, *EVENTS[event])
        history = fit_dequantizer(deq, _flat(log_density), levels, centered=False, steps=300, lr=1e-2,
                                  batch_size=256, generator=_gen(5))
        _FITTED[target, event] = deq, history
    return _FITTED[target, event]


def test_uniform_bound_is_above_the_exact_discrete_nll() -> None:
    k = _gaussian_levels(256, 2)
    exact, closed = _exact_bpd(k), _uniform_bound_bpd(k)
    assert torch.all(closed >= exact)  # Jensen, example by example
    reps = 64
    mc = dequantized_nll_bits_per_dim(_log_density(False), _model_space(k, False).repeat(reps, 1), centered=False,
                                      generator=_gen(3)).reshape(reps, -1)
    diff = (mc - closed).flatten()
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(diff.numel())


# measured on held-out levels: exact 2.3356, uniform 2.4381 bits/dim; variational (flat / image)
# 2.3440 / 2.3445 fitted to the density (92 / 91 % of the uniform gap closed), 2.3474 / 2.3525
# fitted to the SDE bound (88 / 84 %)
@pytest.mark.parametrize("event", list(EVENTS))
@pytest.mark.parametrize(("target", "closes"), [("density", 0.75), ("sde_bound", 0.6)])
def test_fitted_variational_bound_is_valid_and_tighter_than_uniform(target: str, closes: float, event: str) -> None:
    deq, history = _fitted(target, event)
    assert sum(history[-20:]) > sum(history[:20])  # the objective (a lower bound on log P) went up
    k = _gaussian_levels(256, 2)  # held out: not the fitting levels
    exact, uniform = float(_exact_bpd(k).mean()), float(_uniform_bound_bpd(k).mean())
    reps = 64
    rows = {}
    for centered in (False, True):
        x0 = _model_space(k, centered).repeat(reps, 1).reshape(-1, *EVENTS[event])
        rows[centered] = dequantized_nll_bits_per_dim(_flat(_log_density(centered)), x0, centered=centered,
                                                      generator=_gen(6), dequantizer=deq).reshape(reps, -1)
    # the offsets (8 on [0, 1], 7 on [−1, 1]) make the bound independent of the coordinates
    assert torch.allclose(rows[False], rows[True], atol=1e-9)
    var = rows[False]
    above_exact = (var - _exact_bpd(k)).flatten()  # paired with each example's exact value
    below_uniform = (_uniform_bound_bpd(k) - var).flatten()
    se = lambda d: float(d.std()) / math.sqrt(d.numel())  # noqa: E731  (paired: ≈ 0.001)
    assert float(above_exact.mean()) > -4 * se(above_exact)  # still a bound
    assert float(below_uniform.mean()) > closes * (uniform - exact) + 4 * se(below_uniform)


def test_variational_nll_through_the_ode_adds_log_q() -> None:
    """nll_bits_per_dim with a dequantizer: the score_sde protocol (ODE from y itself) is
    −log p_ε(y) + log q at the same draws; with data N(m, diag s²) the marginal p_ε is
    closed-form, so the ODE (solver error only, exact prior at T) must agree with
    ``dequantized_nll_bits_per_dim`` on p_ε."""
    deq, _ = _fitted("density", "flat")
    sde, eps = VPSDE(), 1e-3
    k = _gaussian_levels(8, 7)
    x0 = _model_space(k, False)
    mu, sig = (v.item() for v in (sde.mean_scale(torch.tensor(eps)), sde.std(torch.tensor(eps))))

    def marginal(t_mu: float, t_sig: float):
        std = torch.sqrt(t_mu ** 2 * STD01 ** 2 + t_sig ** 2)
        return lambda y: (-0.5 * ((y - t_mu * MEAN01) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(1)

    score = _gaussian_score(sde)
    t_T = torch.tensor(sde.T, dtype=F64)
    prior_T = marginal(sde.mean_scale(t_T).item(), sde.std(t_T).item())
    res = nll_bits_per_dim(score, sde, x0, eps=eps, trace="exact", discrete=True, centered=False, generator=_gen(8),
                           prior_logp=prior_T, dequantizer=deq)
    expected = dequantized_nll_bits_per_dim(marginal(mu, sig), x0, centered=False, generator=_gen(8), dequantizer=deq)
    assert res.dequantization == "variational"
    assert (res.score_sde[0] - expected).abs().max() < 1e-3
    assert "eval/nll_bpd_vardeq" in res.as_metrics() and "eval/nll_bpd" not in res.as_metrics()


# --- (b) log q is the density of the samples ---------------------------------------------------------
def _random_dequantizer(event: tuple[int, ...], seed: int, log_scale_bias: float) -> Dequantizer:
    """A dequantizer away from uniform: random output weights (q depends on k), fixed biases."""
    deq = Dequantizer(event, hidden=16, generator=_gen(seed)).double()
    last = deq.net[-1]
    with torch.no_grad():
        last.weight.normal_(0.0, 0.3, generator=_gen(seed + 1))
        half = last.bias.shape[0] // 2
        last.bias[:half] = 0.7
        last.bias[half:] = log_scale_bias
    return deq


@pytest.mark.parametrize("level", [0, 37, 200, 255])
@torch.no_grad()
def test_log_q_integrates_to_one(level: int) -> None:
    deq = _random_dequantizer((1,), 20, log_scale_bias=0.4)
    # over v = logit(u) (a smooth integrand for any scale): ∫ q(σ(v)) σ'(v) dv = 1
    v = torch.linspace(-35, 35, 200_001, dtype=F64)[:, None]
    k = torch.full_like(v, float(level))
    log_q = deq.log_prob(torch.sigmoid(v), k)
    jac = torch.nn.functional.logsigmoid(v[:, 0]) + torch.nn.functional.logsigmoid(-v[:, 0])
    assert float(torch.trapezoid(torch.exp(log_q + jac), v[:, 0])) == pytest.approx(1.0, abs=1e-6)
    # directly over u when the scale is below one (then the density is bounded on (0, 1))
    deq = _random_dequantizer((1,), 21, log_scale_bias=-0.7)
    _, log_scale = deq(torch.full((1, 1), float(level), dtype=F64))
    assert float(log_scale) < 0
    u = torch.linspace(0, 1, 400_001, dtype=F64)[1:-1, None]
    q = torch.exp(deq.log_prob(u, torch.full_like(u, float(level))))
    assert float(torch.trapezoid(q, u[:, 0])) == pytest.approx(1.0, abs=1e-5)


@torch.no_grad()
def test_samples_follow_log_q() -> None:
    deq = _random_dequantizer((1,), 22, log_scale_bias=0.3)
    n, level = 20_000, 90.0
    k = torch.full((n, 1), level, dtype=F64)
    u, log_q = deq.sample(k, _gen(23))
    assert u.shape == k.shape and log_q.shape == (n,)
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert torch.allclose(log_q, deq.log_prob(u, k), atol=1e-8)  # the returned log q is q at the sample
    # KS test against the CDF obtained by integrating exp(log_prob) numerically over v = logit u
    v = torch.linspace(-40, 40, 400_001, dtype=F64)
    dens = torch.exp(deq.log_prob(torch.sigmoid(v)[:, None], torch.full((v.numel(), 1), level, dtype=F64))
                     + torch.nn.functional.logsigmoid(v) + torch.nn.functional.logsigmoid(-v))
    cdf = torch.cat([torch.zeros(1, dtype=F64), torch.cumulative_trapezoid(dens, v)]).numpy()
    samples_v = torch.logit(u[:, 0]).numpy()
    result = stats.kstest(samples_v, lambda s: np.interp(s, v.numpy(), cdf))
    assert result.pvalue > 0.01, result
    # the same dequantizer on an image-shaped event: per-dimension log q adds up, samples in (0, 1)
    img = Dequantizer((2, 3, 3), hidden=8, generator=_gen(24)).double()
    with torch.no_grad():
        img.net[-1].bias.normal_(0, 0.5, generator=_gen(25))
    ki = torch.randint(0, 256, (5, 2, 3, 3), generator=_gen(26)).double()
    ui, lqi = img.sample(ki, _gen(27))
    assert torch.allclose(lqi, img.log_prob(ui, ki), atol=1e-8) and float(ui.min()) > 0 and float(ui.max()) < 1


# --- (c) a zero-initialised dequantizer is uniform dequantization ---------------------------------------
def test_zero_initialised_dequantizer_is_exactly_uniform() -> None:
    """Logistic location 0 and scale 1 make u = σ(logit U) = U: log q = 0 and the same draws as
    ``dequantize`` from the same generator (to rounding), so every bound equals the uniform one."""
    deq = Dequantizer((1, 4, 4), hidden=8, generator=_gen(30)).double()
    k = torch.randint(0, 256, (6, 1, 4, 4), generator=_gen(31)).double()
    u, log_q = deq.sample(k, _gen(32))
    assert float(log_q.detach().abs().max()) < 1e-12  # m = ℓ = 0 exactly: v = z, the log-sigmoids cancel
    assert torch.allclose(u, torch.rand(k.shape, generator=_gen(32), dtype=F64), atol=1e-12)
    sde = VPSDE()
    data = GaussianMixture.gaussian(torch.zeros(1, 4, 4, dtype=F64), 0.5)
    x0 = _model_space(k, True)
    common = dict(eps=1e-3, rtol=1e-4, atol=1e-4, discrete=True, centered=True)
    uni = nll_bits_per_dim(data.score_fn(sde), sde, x0, generator=_gen(33), **common)
    var = nll_bits_per_dim(data.score_fn(sde), sde, x0, generator=_gen(33), dequantizer=deq, **common)
    assert (uni.dequantization, var.dequantization) == ("uniform", "variational")
    for a, b in [(uni.with_residual, var.with_residual), (uni.without_residual, var.without_residual),
                 (uni.score_sde, var.score_sde)]:
        assert (a - b).abs().max() < 1e-6
    nelbo = dict(eps=1e-3, discrete=True, centered=True)
    nelbo_u = nelbo_bits_per_dim(data.score_fn(sde), sde, x0, generator=_gen(34), **nelbo)
    nelbo_v = nelbo_bits_per_dim(data.score_fn(sde), sde, x0, generator=_gen(34), dequantizer=deq, **nelbo)
    assert (nelbo_u.with_residual - nelbo_v.with_residual).abs().max() < 1e-9


def test_nelbo_adds_log_q_at_the_same_draws() -> None:
    deq = _random_dequantizer((4,), 40, log_scale_bias=0.2)
    sde = VPSDE()
    data = GaussianMixture.gaussian(torch.zeros(4, dtype=F64), 0.5)
    x0 = _model_space(torch.randint(0, 256, (16, 4), generator=_gen(41)).double(), True)
    res = nelbo_bits_per_dim(data.score_fn(sde), sde, x0, eps=1e-3, discrete=True, centered=True, generator=_gen(42),
                             dequantizer=deq)
    g = _gen(42)
    y, log_q = dequantize_variational(x0, deq, centered=True, generator=g)
    assert float(log_q.abs().min()) > 0  # a non-uniform q
    _, with_res = nelbo_nats(data.score_fn(sde), sde, y, eps=1e-3, generator=g)
    assert torch.allclose(res.with_residual[0], to_bits_per_dim(with_res + log_q, 4, discrete=True, centered=True))
    assert res.dequantization == "variational" and "eval/nelbo_bpd_vardeq" in res.as_metrics()


def test_differentiable_nelbo_matches_finite_differences() -> None:
    """``nelbo_nats(differentiable=True)``: the same values, and the gradient in x_0 of the
    one-sample estimate (fixed t, z) is the central difference of that estimate."""
    sde = VPSDE()
    data = GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64), torch.tensor([[0.3, -0.2, 0.1], [-0.4, 0.5, 0.0]],
                           dtype=F64), torch.tensor([0.2, 0.3], dtype=F64))
    x0 = torch.tensor([[0.1, 0.2, -0.3], [0.5, -0.5, 0.25]], dtype=F64)

    def bound(x: torch.Tensor, differentiable: bool) -> torch.Tensor:
        return nelbo_nats(data.score_fn(sde), sde, x, eps=1e-3, generator=_gen(50), differentiable=differentiable)[1]

    xg = x0.clone().requires_grad_(True)
    value = bound(xg, True)
    assert torch.allclose(value.detach(), bound(x0, False))
    (grad,) = torch.autograd.grad(value.sum(), xg)
    h = 1e-6
    for i in range(3):
        e = torch.zeros_like(x0)
        e[:, i] = h
        fd = (bound(x0 + e, False) - bound(x0 - e, False)) / (2 * h)
        assert torch.allclose(grad[:, i], fd, rtol=1e-5, atol=1e-5)


# --- levels and results ------------------------------------------------------------------------------
@pytest.mark.parametrize("centered", [False, True])
def test_levels_round_trip(centered: bool) -> None:
    k = torch.arange(256, dtype=F64)[:, None]
    assert torch.equal(levels_from_model_space(_model_space(k, centered), centered=centered), k)
    y = model_space_from_levels(k, torch.full_like(k, 0.5), centered=centered)
    with pytest.raises(ValueError, match="8-bit"):
        levels_from_model_space(y, centered=centered)


def test_result_labels_and_keys() -> None:
    r = NllResult(torch.ones(1, 2), torch.zeros(1, 2), None, nfe=4, n_solves=1, dequantization="variational")
    m = r.as_metrics()
    assert {"eval/nll_bpd_vardeq", "eval/nll_bpd_vardeq_no_residual", "eval/nll_bpd_vardeq_stderr",
            "eval/nfe_nll_vardeq", "eval/nll_vardeq_examples"} <= set(m)
    assert not any(key.startswith("eval/nll_bpd_") and "vardeq" not in key for key in m)
    with pytest.raises(ConfigError, match="mixes dequantizations"):
        NllResult.concat([r, NllResult(torch.ones(1, 2), torch.zeros(1, 2), None, nfe=4, n_solves=1)])
    n = NelboResult(torch.ones(1, 2), torch.zeros(1, 2), dequantization="variational").as_metrics()
    assert "eval/nelbo_bpd_vardeq" in n and "eval/nelbo_bpd" not in n


# --- (d) validation -------------------------------------------------------------------------------------
def test_config_validation() -> None:
    assert EvalConfig().likelihood.dequantization.name == "uniform"
    for name, bad in [("steps", 0), ("batch_size", 0), ("hidden", 0), ("lr", 0.0)]:
        with pytest.raises(ConfigError, match=name):
            VariationalDequantization(**{name: bad})
        with pytest.raises(ConfigError, match=rf"^eval\.likelihood\.dequantization\.{name}: "):
            experiment_from_dict({"eval": {"likelihood": {"dequantization": {"name": "variational", name: bad}}}})
    with pytest.raises(ConfigError, match=r"eval\.likelihood\.dequantization.*allowed: uniform, variational"):
        experiment_from_dict({"eval": {"likelihood": {"dequantization": "flow"}}})
    with pytest.raises(ConfigError, match=r"eval\.likelihood\.dequantization: 'variational' needs 8-bit data.*gmm2d"):
        experiment_from_dict({"data": {"dataset": {"name": "gmm2d"}}, "model": {"network": {"name": "mlp"}},
                              "eval": {"likelihood": {"dequantization": "variational"}}})
    # continuous data and a dequantizer do not mix at the function level either
    deq = Dequantizer((2,), hidden=4)
    sde = VPSDE()
    with pytest.raises(ConfigError, match="dequantizer"):
        nelbo_bits_per_dim(lambda x, t: -x, sde, torch.zeros(3, 2), eps=1e-3, discrete=False, centered=True,
                           generator=_gen(0), dequantizer=deq)
    with pytest.raises(ValueError, match="hidden"):
        Dequantizer((2,), hidden=0)
    with pytest.raises(ValueError, match="steps"):
        fit_dequantizer(deq, lambda y: y.sum(1), torch.zeros(3, 2), centered=False, steps=0, lr=1e-3, batch_size=2,
                        generator=_gen(0))


# --- (e) one evaluation end to end --------------------------------------------------------------------------
# evaluated for the NLL alone, with a few dequantizer steps
BASE = {**EVAL_BASE, "name": "vardeq-test",
        "eval": {"num_samples": 0,
                 "likelihood": {"examples": 4, "nelbo_repeats": 1, "rtol": 1e-3, "atol": 1e-3, "dequantization": {
                     "name": "variational", "steps": 5, "batch_size": 8, "hidden": 8}}}}


def test_evaluation_reports_both_dequantizations(tmp_path: Path) -> None:
    cfg = experiment_from_dict(BASE)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    params = {k: v.clone() for k, v in trainer.ema.shadow.state_dict().items()}
    metrics = evaluate_model(cfg, trainer.ema.shadow, trainer.train_data, trainer.test_data, trainer.terminal_prior,
                             step=0, device=torch.device("cpu"), out_dir=tmp_path / "run", tracker=NullTracker())
    for key in ("eval/nll_bpd", "eval/nelbo_bpd", "eval/nll_bpd_vardeq", "eval/nll_bpd_vardeq_no_residual",
                "eval/nelbo_bpd_vardeq", "eval/dequantizer_fit_bpd", "eval/nfe_nll_vardeq"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert "eval/nll_bpd_vardeq_score_sde" not in metrics  # skipped for the variational pass
    # the score model stays frozen while q is fitted
    assert all(torch.equal(v, params[k]) for k, v in trainer.ema.shadow.state_dict().items())
    uniform = experiment_from_dict(apply_overrides(BASE, {"eval.likelihood.dequantization.name": "uniform"}))
    again = evaluate_model(uniform, trainer.ema.shadow, trainer.train_data, trainer.test_data, trainer.terminal_prior,
                           step=0, device=torch.device("cpu"), out_dir=tmp_path / "run", tracker=NullTracker())
    assert again["eval/nll_bpd"] == metrics["eval/nll_bpd"]  # the uniform figures do not move
    assert not any("vardeq" in k for k in again)
