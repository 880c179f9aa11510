"""Paper parity, row by row: every reproduction row resolves to its parity record, and its training
loss equals the official Soft Truncation code's on the same x₀, z, t and τ.

The official formulas (sde_lib.py: marginals, get_diffusion_time, get_t_min; losses.py: the loss
branches, reduce_op, the mixed step) are restated here from the record's flags, in float64, without
calling st_sweeps' SDE, sampler, weighting or objective code for the official side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from st_sweeps.config import apply_overrides
from st_sweeps.effective_weight import log_snr_density, log_snr_grid
from st_sweeps.experiment import ExperimentConfig, experiment_from_dict
from st_sweeps.objectives import Mixed
from st_sweeps.parity import OfficialLoss, RowRecord, load_record, mismatches, record_path
from st_sweeps.reproduce.manifest import DATASETS, Manifest, load_manifest, manifest_path

T = 1.0


def _all_rows() -> list[tuple[str, str]]:
    return [(d, r.id) for d in DATASETS for r in load_manifest(manifest_path(d)).rows]


ROWS = _all_rows()


def _row(dataset: str, row_id: str) -> tuple[Manifest, RowRecord, object]:
    manifest = load_manifest(manifest_path(dataset))
    record = load_record(dataset)
    assert row_id in record.rows, f"{record_path(dataset)} has no record for row {row_id!r}"
    return manifest, record.rows[row_id], manifest.row(row_id).experiment(seed=0, dataset_name=dataset)


def _variants(dataset: str, row_id: str) -> list[tuple[OfficialLoss, object]]:
    """(loss flags, our config) pairs to compare: the row as it stands against the loss it trains;
    where it follows the paper instead of the official config, also the row with the record's
    one-line official variant applied against the official config's own loss."""
    manifest, record, config = _row(dataset, row_id)
    pairs = [(record.trained_loss, config)]
    if record.official_variant:
        data = apply_overrides(manifest.row(row_id).experiment_dict(0, dataset), list(record.official_variant),
                               ExperimentConfig)
        pairs.append((record.official_loss, experiment_from_dict(data)))
    return pairs


# ------------------------------------------------------------------------------ the official side
@dataclass(frozen=True)
class OfficialSDE:
    """σ(t), g²(t), μ(t) and the time draws of sde_lib.py, restated in float64."""

    flags: OfficialLoss

    def mean_scale(self, t: torch.Tensor) -> torch.Tensor:
        f = self.flags
        if f.sde == "vpsde":
            return torch.exp(-0.25 * t ** 2 * (f.beta_max - f.beta_min) - 0.5 * t * f.beta_min)
        return torch.ones_like(t)

    def _rve(self) -> tuple[float, float, float, float]:
        f = self.flags
        base = (f.eta / f.sigma_max) ** (1.0 / (1.0 / f.eps - 1.0))
        const = f.sigma_max ** 2 / base ** 2
        base2 = 1.01 ** (-1.0 / (2.0 * (1.0 / f.eps - 1.0)))
        const2 = -(1.01 ** ((1.0 / f.eps) / (1.0 / f.eps - 1.0))) * (f.eta ** 2 - f.sigma_min ** 2)
        return base, const, base2, const2

    def std(self, t: torch.Tensor) -> torch.Tensor:
        f = self.flags
        if f.sde == "vpsde":
            return torch.sqrt(1.0 - self.mean_scale(t) ** 2)
        if f.sde == "vesde":
            return f.sigma_min * (f.sigma_max / f.sigma_min) ** t
        base, const, base2, const2 = self._rve()
        return torch.sqrt(const * base ** (2.0 / t) + const2 * base2 ** (2.0 / t))

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        f = self.flags
        if f.sde == "vpsde":
            return f.beta_min + t * (f.beta_max - f.beta_min)
        if f.sde == "vesde":
            return self.std(t) ** 2 * 2 * (math.log(f.sigma_max) - math.log(f.sigma_min))
        base, const, base2, const2 = self._rve()
        return (-(2.0 * const * math.log(base)) * base ** (2.0 / t) / t ** 2
                + 2.0 * const2 * math.log(base2) * base2 ** (2.0 / t) / t ** 2)

    def _vp_antiderivative(self, t: torch.Tensor) -> torch.Tensor:
        f = self.flags
        b = 0.5 * t ** 2 * (f.beta_max - f.beta_min) + t * f.beta_min
        return torch.log(1.0 - torch.exp(-b)) + b

    def diffusion_time(self, u: torch.Tensor, t_min: float, importance: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """get_diffusion_time: (t, Z) from the uniforms u."""
        f = self.flags
        one = torch.ones_like(u)
        if f.sde == "reciprocal_vesde":
            return 1.0 / (u * (1.0 / t_min - 1.0 / T) + 1.0 / T), one
        if importance and f.sde == "vpsde":
            lo = self._vp_antiderivative(torch.tensor(t_min, dtype=torch.float64))
            z = self._vp_antiderivative(torch.tensor(T, dtype=torch.float64)) - lo
            t = (-f.beta_min + torch.sqrt(f.beta_min ** 2 + 2 * (f.beta_max - f.beta_min)
                                          * torch.log(1.0 + torch.exp(z * u + lo)))) / (f.beta_max - f.beta_min)
            return t, one * z
        if importance and f.sde == "vesde":
            z = 2.0 * (math.log(self.std(torch.tensor(T)).item()) - math.log(self.std(torch.tensor(t_min)).item()))
            return t_min + z * u / (2.0 * (math.log(f.sigma_max) - math.log(f.sigma_min))), one * z
        return u * (T - t_min) + t_min, one

    def density(self, t: torch.Tensor, t_min: float, importance: bool) -> torch.Tensor:
        """The density of ``diffusion_time``'s t (derived from its formula)."""
        f = self.flags
        if f.sde == "reciprocal_vesde":
            return 1.0 / (t ** 2 * (1.0 / t_min - 1.0 / T))
        if importance:
            _, z = self.diffusion_time(torch.zeros(1, dtype=torch.float64), t_min, True)
            return self.g2(t) / self.std(t) ** 2 / z
        return torch.full_like(t, 1.0 / (T - t_min))

    def t_min(self, u: float) -> float:
        """get_t_min's τ from np.random.rand() = u (VP's formula; RVE's 1/τ uniform, as the paper describes)."""
        f = self.flags
        if f.sde == "reciprocal_vesde":
            return 1.0 / (u * (1.0 / f.eps - 1.0 / T) + 1.0 / T)
        if f.k == 1.0:
            return f.eps ** (1.0 - u)
        return f.eps / (1.0 - u * (1 - f.eps ** (f.k - 1))) ** (1.0 / (f.k - 1))


def official_example_losses(sde: OfficialSDE, score_fn, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor,  # noqa: ANN001
                            Z: torch.Tensor, importance: bool) -> torch.Tensor:
    """losses.py's loss_fn for the given t, z and Z (reconstruction_loss off)."""
    f = sde.flags
    std = sde.std(t)[:, None, None, None]
    x_t = sde.mean_scale(t)[:, None, None, None] * x0 + std * z
    score = score_fn(x_t, t)

    def reduce(v: torch.Tensor) -> torch.Tensor:
        v = v.reshape(v.shape[0], -1)
        return v.mean(-1) if f.reduce_mean else 0.5 * v.sum(-1)

    if importance:
        return 0.5 * Z * reduce((score * std + z) ** 2)
    if f.likelihood_weighting:
        return 0.5 * Z * reduce((score + z / std) ** 2) * sde.g2(t)
    return 0.5 * Z * reduce((score * std + z) ** 2)


def _score_fn(shape: tuple[int, ...]):  # noqa: ANN202
    """A fixed, imperfect score: s(x, t) = −(x − m)/(1 + t) with a random m."""
    m = torch.randn(shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    return lambda x, t: -(x - m) / (1.0 + t)[:, None, None, None]


# ------------------------------------------------------------------------------------------- tests
def test_every_manifest_row_has_a_parity_record_and_no_stray_ones() -> None:
    for dataset in DATASETS:
        ids = {r.id for r in load_manifest(manifest_path(dataset)).rows}
        assert set(load_record(dataset).rows) == ids, dataset


@pytest.mark.parametrize(("dataset", "row_id"), ROWS)
def test_resolved_row_equals_its_parity_record(dataset: str, row_id: str) -> None:
    _, record, config = _row(dataset, row_id)
    assert mismatches(record, config) == []
    for s in record.settings:
        assert s.source.strip(), f"{s.name}: no source"


@pytest.mark.parametrize(("dataset", "row_id"), ROWS)
def test_time_and_tau_draws_follow_the_official_distributions(dataset: str, row_id: str) -> None:
    _, record, _ = _row(dataset, row_id)
    for flags, config in _variants(dataset, row_id):
        _check_draws(record, flags, config)


def _check_draws(record: RowRecord, flags: OfficialLoss, config) -> None:  # noqa: ANN001
    official = OfficialSDE(flags)
    u = torch.arange(1, 1000, dtype=torch.float64) / 1000  # symmetric under u -> 1 - u
    objective = config.objective
    parts = ([(objective.likelihood_part, True), (objective.variance_part, False)] if isinstance(objective, Mixed)
             else [(objective, flags.importance_sampling)])
    for tau in (flags.eps, 0.01, 0.3):
        for part, importance in parts:
            t_off, _ = official.diffusion_time(u, tau, importance)
            t_ours, inv_density = part.sampler._sample(config.sde, tau, u)
            # both are monotone quantile maps of the same law (one may run backwards in u)
            torch.testing.assert_close(t_ours.sort().values, t_off.sort().values, rtol=1e-9, atol=0)
            torch.testing.assert_close(1.0 / inv_density, part.sampler.density(config.sde, tau, t_ours), rtol=1e-9, atol=0)
    prior = config.truncation.prior
    if type(prior).registry_name == "fixed":
        assert not flags.st
    else:
        taus = torch.tensor([official.t_min(float(x)) for x in u], dtype=torch.float64)
        ours = prior.icdf(u, config.truncation.eps, config.sde.T)
        torch.testing.assert_close(ours.sort().values, taus.sort().values, rtol=1e-9, atol=0)
        if not flags.st:  # the paper's soft truncation where the official code runs a fixed ε
            assert any(s.deviation for s in record.settings if s.key and s.key.startswith("truncation.prior")), \
                "soft truncation on where the official code has none needs a recorded deviation"


@pytest.mark.parametrize(("dataset", "row_id"), ROWS)
def test_training_loss_equals_the_official_one(dataset: str, row_id: str) -> None:
    for flags, config in _variants(dataset, row_id):
        _check_loss(flags, config)


def _check_loss(flags: OfficialLoss, config) -> None:  # noqa: ANN001
    assert not flags.reconstruction_loss, "the oracle restates the loss without the reconstruction term"
    official = OfficialSDE(flags)
    sde, objective = config.sde, config.objective
    size = config.data.dataset.image_size
    b = 6
    shape = (b, 3, size, size)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    u = torch.rand(b, generator=gen, dtype=torch.float64)
    score_fn = _score_fn(shape[1:])
    for tau in (flags.eps, official.t_min(0.7) if flags.st else 0.02):
        if isinstance(objective, Mixed):
            h = b // 2
            t_is, z_is = official.diffusion_time(u[:h], tau, True)
            t_u, z_u = official.diffusion_time(u[h:], tau, False)
            lik_off = official_example_losses(official, score_fn, x0[:h], t_is, z[:h], z_is, True)
            var_off = official_example_losses(official, score_fn, x0[h:], t_u, z[h:], z_u, False)
            ratio = (lik_off / var_off).mean() if flags.balanced else 1.0
            expected = (lik_off + flags.ddpm_weight * ratio * var_off).mean()
            lik = objective.likelihood_part.loss_at(sde, score_fn, x0[:h], tau, t_is, z[:h])
            var = objective.variance_part.loss_at(sde, score_fn, x0[h:], tau, t_u, z[h:])
            torch.testing.assert_close(lik, lik_off, rtol=1e-6, atol=0)
            torch.testing.assert_close(var, var_off, rtol=1e-6, atol=0)
            torch.testing.assert_close(objective.combine(lik, var).mean(), expected, rtol=1e-6, atol=0)
        else:
            t, Z = official.diffusion_time(u, tau, flags.importance_sampling)
            expected = official_example_losses(official, score_fn, x0, t, z, Z, flags.importance_sampling)
            ours = objective.loss_at(sde, score_fn, x0, tau, t, z)
            torch.testing.assert_close(ours, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("dataset", "row_id"), ROWS)
def test_effective_weight_over_log_snr_is_the_official_one(dataset: str, row_id: str) -> None:
    """p(t) × (ε-loss weight) × dt/dρ, ours against the official curve restated here: equal up
    to a constant (here: equal, as the loss is), and flat in log σ on the RVE."""
    for flags, config in _variants(dataset, row_id):
        _check_weight_curve(flags, config)


def _check_weight_curve(flags: OfficialLoss, config) -> None:  # noqa: ANN001
    official = OfficialSDE(flags)
    dims = 3 * config.data.dataset.image_size ** 2
    t, _ = log_snr_grid(config.sde, flags.eps)
    ours = log_snr_density(config.objective, config.sde, flags.eps, t, dims)

    def curve(importance: bool) -> torch.Tensor:
        _, z = official.diffusion_time(torch.zeros_like(t), flags.eps, importance)
        reduce = 1.0 / dims if flags.reduce_mean else 0.5
        c = 0.5 * z * reduce * (official.g2(t) / official.std(t) ** 2
                                if flags.likelihood_weighting and not importance else 1.0)
        return official.density(t, flags.eps, importance) * c * official.std(t) ** 2 / official.g2(t)

    theirs = (curve(True) + flags.ddpm_weight * curve(False)) if flags.mixed else curve(flags.importance_sampling)
    ratio = ours / theirs
    assert float(ratio.max() / ratio.min() - 1) < 1e-6
    if flags.sde == "reciprocal_vesde":
        assert float(ours.max() / ours.min() - 1) < 1e-6  # constant ε-loss weight per unit of log σ


def test_variance_weighting_with_reciprocal_t_is_not_flat_on_the_rve() -> None:
    """Finding 1 of the parity review, kept as a fact: λ = σ² with t drawn 1/t-uniformly, under
    the integral estimator, weights ε-losses like t², so small noise levels get almost nothing."""
    from st_sweeps.objectives import DSM
    from st_sweeps.sde import ReciprocalVESDE
    from st_sweeps.truncation import ReciprocalSampler
    from st_sweeps.weighting import VarianceWeighting

    sde = ReciprocalVESDE(sigma_min=1e-3, sigma_max=50.0, t_sigma_min=1e-5)
    t = torch.logspace(-5, 0, 200_001, dtype=torch.float64)  # dense where the weight is: t near 1
    w = log_snr_density(DSM(weighting=VarianceWeighting(), time_sampler=ReciprocalSampler()), sde, 1e-5, t)
    rho, small = sde.neg_log_snr(t), sde.std(t) < 1
    share_of_range = float((rho[small].max() - rho[0]) / (rho[-1] - rho[0]))
    share_of_weight = float(torch.trapezoid(torch.where(small, w, 0), rho) / torch.trapezoid(w, rho))
    # σ < 1 is 64 % of the log σ range, yet carries about 0.002 % of the weight (∝ t², 1/t uniform)
    assert share_of_range == pytest.approx(0.64, abs=0.01)
    assert share_of_weight < 5e-5
