"""The fast likelihood path against analytic truth: per-example Dormand–Prince, the integration
variables (an exact change of time and state), batched divergences, several probes.

Tolerances as in test_likelihood.py: within 0.01 bits/dim of the exact NLL with the SDE's own
prior, 1e-3 with the exact marginal at T as prior (then only the solve's error is left).
"""

from __future__ import annotations

import math

import pytest
import torch

from st_sweeps.errors import ConfigError
from st_sweeps.experiment import EvalConfig, experiment_from_dict
from st_sweeps.gaussian_mixture import GaussianMixture
from st_sweeps.likelihood import LikelihoodConfig, nll_bits_per_dim, sample_probes
from st_sweeps.likelihood_fast import fast_ode_log_likelihood
from st_sweeps.likelihood_time import CONCRETE_TIME_VARIABLES, coefficients, resolve_time_variable, state_scale, u_of_t
from st_sweeps.likelihood_trace import divergence_batched
from st_sweeps.ode_batched import solve_ode_batched
from st_sweeps.ode_solver import OdeSolverError, solve_ode

# the SDEs, ε, the small helpers and the one-torch-thread fixture (autouse) are test_likelihood's
from test_likelihood import EPS, F64, SDES, _bpd, _gen, _one_thread  # noqa: E402,F401


def _mixture(event: tuple[int, ...], seed: int = 1) -> GaussianMixture:
    means = 0.5 * torch.randn((3, *event), generator=_gen(seed), dtype=F64)
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=F64), means, torch.tensor([0.15, 0.3, 0.5], dtype=F64))


def _gaussian(event: tuple[int, ...], seed: int = 2) -> GaussianMixture:
    return GaussianMixture.gaussian(0.3 * torch.randn(event, generator=_gen(seed), dtype=F64), 0.4)


def _full(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype)


def _noisy(data: GaussianMixture, sde, n: int, g: torch.Generator) -> torch.Tensor:
    x0 = data.sample(n, g)
    return sde.perturb(x0, _full(EPS, x0), torch.randn(x0.shape, generator=g, dtype=F64))


def _exact(data: GaussianMixture, sde, x: torch.Tensor, t: float) -> torch.Tensor:
    tt = _full(t, x)
    return data.log_prob(x, sde.mean_scale(tt), sde.std(tt))


# --- the per-example solver -------------------------------------------------------------------
def _rows_rhs(k: torch.Tensor):
    def f(t, y, rows):  # a forced oscillator with a stiffness per row
        return torch.stack([y[:, 1] * (1 + t), -y[:, 0] * k[rows]], 1)

    return f


@pytest.mark.parametrize("sync_every", [1, 3])
def test_each_row_takes_the_steps_it_would_take_alone(sync_every: int) -> None:
    """Per-example control: every row's steps, rejections and result equal solving it alone with the
    one-step-size solver (the same method and controller); finished rows leave the batch."""
    k = torch.tensor([0.5, 3.0, 20.0], dtype=F64)
    y0 = torch.tensor([[1.0, 0.0], [0.5, 1.0], [1.0, 0.0]], dtype=F64)
    sol = solve_ode_batched(_rows_rhs(k), y0, 0.0, 3.0, rtol=1e-6, atol=1e-8, sync_every=sync_every)
    for i in range(3):
        alone = solve_ode(lambda t, y: torch.stack([y[1] * (1 + t), -y[0] * k[i]]), y0[i].clone(), 0.0, 3.0,
                          rtol=1e-6, atol=1e-8)
        assert int(sol.steps[i]) == alone.steps and int(sol.rejected[i]) == alone.rejected
        assert torch.allclose(sol.y[i], alone.y, rtol=1e-13, atol=1e-13)
    # the easy rows stop early: calls on them stop (up to sync_every − 1 idle steps)
    assert int(sol.example_nfe[0]) < int(sol.example_nfe[2]) == sol.nfe


def test_the_host_reads_solver_state_only_every_sync_every_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """No host round trip per step: Tensor.item / __bool__ / tolist are counted during a solve whose
    right-hand side is pure tensor code; the solver may read once per sync_every steps (plus one
    check of the inputs)."""
    counts = {"item": 0, "__bool__": 0, "tolist": 0}
    for name in counts:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, _name=name, _orig=original, **kw):
            counts[_name] += 1
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    k = torch.tensor([0.5, 3.0, 20.0, 7.0], dtype=F64)
    sol = solve_ode_batched(_rows_rhs(k), torch.ones(4, 2, dtype=F64), 0.0, 3.0, rtol=1e-6, atol=1e-8, sync_every=8)
    monkeypatch.undo()
    attempted = int((sol.steps + sol.rejected).max())
    assert counts["item"] == 0 and counts["__bool__"] <= 1
    assert counts["tolist"] == sol.host_reads <= attempted // 8 + 1
    assert attempted > 40  # many steps, few reads


def test_batched_solver_errors() -> None:
    with pytest.raises(OdeSolverError, match="max_nfe=30"):
        solve_ode_batched(_rows_rhs(torch.ones(2, dtype=F64)), torch.ones(2, 2, dtype=F64), 0.0, 50.0,
                          rtol=1e-10, atol=1e-10, max_nfe=30)
    with pytest.raises(OdeSolverError, match="underflow"):
        solve_ode_batched(lambda t, y, r: y * float("nan"), torch.ones(2, 2, dtype=F64), 0.0, 1.0, max_nfe=10_000)
    with pytest.raises(ConfigError, match="sync_every"):
        solve_ode_batched(_rows_rhs(torch.ones(2)), torch.ones(2, 2), 0.0, 1.0, sync_every=0)


# --- integration variables --------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("variable", CONCRETE_TIME_VARIABLES)
def test_change_of_variables_is_exact(sde_name: str, variable: str) -> None:
    """u(t) inverts to t, and dy/du = (d(x/scale)/dt)·(dt/du) of the PF-ODE in t (chain rule, with
    dt/du by autograd through the inverse map)."""
    sde, data = SDES[sde_name], _mixture((3,))
    t = torch.tensor([EPS, 1e-3, 0.1, 0.5, 0.99], dtype=F64)
    u = u_of_t(sde, variable, t).detach().requires_grad_(True)
    c = coefficients(sde, variable, u)
    assert torch.allclose(c.t, t, rtol=1e-8, atol=1e-12)
    (dt_du,) = torch.autograd.grad(c.t.sum(), u)
    x = data.sample(5, _gen(3)) * sde.mean_scale(t)[:, None] + sde.std(t)[:, None] * torch.randn(5, 3, generator=_gen(4), dtype=F64)
    scale = state_scale(sde, variable, t)
    y = x / scale[:, None]
    s = data.score_fn(sde)(x, t)
    dy_du = c.alpha.detach()[:, None] * y + c.beta.detach()[:, None] * s
    # d(x/scale)/dt = (pf drift − (d log scale/dt) x)/scale
    dlog_scale = sde.drift_coef(t) if variable != "t" else torch.zeros_like(t)
    dy_dt = (sde.probability_flow_drift(x, t, s) - dlog_scale[:, None] * x) / scale[:, None]
    assert torch.allclose(dy_du, dy_dt * dt_du[:, None], rtol=1e-6, atol=1e-9)


# --- accuracy against the exact NLL, every SDE and variable ----------------------------------------
CASES = {  # data, event shape, trace: the Gaussian's Jacobian ∝ I, so one Rademacher probe is exact
    "gaussian_image": (_gaussian, (1, 8, 8), "rademacher"),
    "mixture_2d": (_mixture, (2,), "exact"),
}


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("variable", CONCRETE_TIME_VARIABLES)
@pytest.mark.parametrize("case", list(CASES))
def test_fast_log_likelihood_equals_the_exact_marginal(sde_name: str, variable: str, case: str) -> None:
    sde = SDES[sde_name]
    make, event, trace = CASES[case]
    data = make(event)
    g = _gen(5)
    x = _noisy(data, sde, 6, g)
    d = x[0].numel()
    probes = None if trace == "exact" else sample_probes(x.shape, "hutchinson_rademacher", 1, g, x)
    exact = _exact(data, sde, x, EPS)
    r = fast_ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, probes=probes, time_variable=variable)
    assert r.logp.shape == (6,) and r.x_T.shape == x.shape and r.nfe > 0
    assert _bpd(r.logp - exact, d).abs().max() < 0.01
    prior_T = lambda z: _exact(data, sde, z, sde.T)  # noqa: E731
    r_T = fast_ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, probes=probes, time_variable=variable,
                                  prior_logp=prior_T)
    assert _bpd(r_T.logp - exact, d).abs().max() < 1e-3


def test_an_example_does_not_depend_on_its_batch_mates() -> None:
    sde, data = SDES["vp"], _mixture((4,))
    x = _noisy(data, sde, 5, _gen(6))
    probes = sample_probes(x.shape, "hutchinson_rademacher", 1, _gen(7), x)
    batch = fast_ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, probes=probes)
    alone = fast_ode_log_likelihood(data.score_fn(sde), sde, x[2:3], eps=EPS, probes=probes[:, 2:3])
    assert torch.allclose(batch.logp[2:3], alone.logp, rtol=0, atol=1e-9)
    assert int(batch.example_nfe[2]) == int(alone.example_nfe[0])


# --- divergence -----------------------------------------------------------------------------------
def _loop_trace(fn, x: torch.Tensor) -> torch.Tensor:
    xg = x.detach().requires_grad_(True)
    out = fn(xg).reshape(x.shape[0], -1)
    return torch.stack([torch.autograd.grad(out[:, i].sum(), xg, retain_graph=True)[0].reshape(x.shape[0], -1)[:, i]
                        for i in range(out.shape[1])], 1).sum(1)


def test_batched_exact_trace_equals_one_backward_pass_per_dimension(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _mixture((1, 3, 3))
    fn = lambda v: data.score(v, torch.ones(4, dtype=F64), torch.full((4,), 0.2, dtype=F64))  # noqa: E731
    x = torch.randn(4, 1, 3, 3, generator=_gen(8), dtype=F64)
    expected = _loop_trace(fn, x)
    out, div = divergence_batched(fn, x, None)
    assert div.shape == (1, 4) and torch.allclose(out, fn(x)) and torch.allclose(div[0], expected, atol=1e-10)
    monkeypatch.setattr("st_sweeps.likelihood_trace._EXACT_CHUNK_ELEMENTS", 4 * 9 * 2)  # chunks of 2 dimensions
    assert torch.allclose(divergence_batched(fn, x, None)[1][0], expected, atol=1e-10)
    probes = sample_probes(x.shape, "hutchinson_gaussian", 3, _gen(9), x)
    _, hutch = divergence_batched(fn, x, probes)
    for j in range(3):  # each row is that probe's own estimate vᵀ J v
        xg = x.detach().requires_grad_(True)
        (vjp,) = torch.autograd.grad((fn(xg) * probes[j]).sum(), xg)
        assert torch.allclose(hutch[j], (vjp * probes[j]).reshape(4, -1).sum(1), atol=1e-10)


def test_several_probes_give_a_per_example_standard_error() -> None:
    """With 8 probes the estimate's error against the exact trace is within 3 of its own standard
    errors for most examples (Student-t with 7 d.o.f.: 98 % each), and the standard error shrinks
    as 1/√n against a single probe's spread."""
    sde, data = SDES["vp"], _mixture((6,))
    g = _gen(10)
    x = _noisy(data, sde, 40, g)
    exact = fast_ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, probes=None, rtol=1e-7, atol=1e-7)
    probes = sample_probes(x.shape, "hutchinson_rademacher", 8, g, x)
    r = fast_ode_log_likelihood(data.score_fn(sde), sde, x, eps=EPS, probes=probes, rtol=1e-7, atol=1e-7)
    assert r.logp_per_probe.shape == (8, 40) and torch.all(r.probe_stderr > 0)
    z = (r.logp - exact.logp).abs() / r.probe_stderr
    assert float((z < 3).double().mean()) >= 0.85
    assert torch.allclose(r.probe_stderr, r.logp_per_probe.std(0) / math.sqrt(8))


# --- wiring: config, solvers agree -----------------------------------------------------------------
def test_solver_is_a_validated_setting_and_both_solvers_agree() -> None:
    sde, data = SDES["ve"], _mixture((2,))
    x0 = data.sample(8, _gen(11))
    kw = dict(eps=EPS, discrete=False, centered=False, trace="exact", score_sde_protocol=False)
    fast = nll_bits_per_dim(data.score_fn(sde), sde, x0, generator=_gen(12), solver="fast", **kw)
    exact_mode = nll_bits_per_dim(data.score_fn(sde), sde, x0, generator=_gen(12), solver="scipy_exact", **kw)
    assert LikelihoodConfig().solver == "scipy_exact" and EvalConfig().likelihood.solver == "scipy_exact"
    assert [resolve_time_variable(s, "auto") for s in SDES.values()] == ["t", "t", "sigma_ratio", "sigma_ratio"]
    assert float((fast.without_residual - exact_mode.without_residual).abs().max()) < 1e-3
    with_probes = nll_bits_per_dim(data.score_fn(sde), sde, x0, generator=_gen(12), eps=EPS, discrete=False,
                                   centered=False, n_probes=4, score_sde_protocol=False, solver="fast")
    assert with_probes.probe_stderr is not None and with_probes.probe_stderr.shape == (1, 8)
    for bad in [dict(solver="rk45"), dict(time_variable="lambda")]:
        with pytest.raises(ConfigError) as info:
            LikelihoodConfig(**bad)
        assert info.value.field == next(iter(bad))
    with pytest.raises(ConfigError, match="scipy_exact") as info:
        experiment_from_dict({"eval": {"likelihood": {"solver": "rk45"}}})
    assert info.value.field == "eval.likelihood.solver"

