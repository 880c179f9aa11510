"""gmm_exact: exact log-density of samples, energy-distance and occupancy tests against fresh
draws, checked on samples from the mixture itself (analytic truth) and on perturbed mixtures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from st_sweeps.data.embedded import GMM2D, GMMImage
from st_sweeps.errors import ConfigError
from st_sweeps.experiment import experiment_from_dict
from st_sweeps.gaussian_mixture import GaussianMixture
from st_sweeps.gmm_quality import (chi2_survival, component_assignments, energy_distance, energy_test, gmm_quality,
                                   mean_log_density, occupancy_test)
from st_sweeps.search_space import search_space_from_dict

MIX = GMMImage().mixture()  # 4 digit-mean components, std 0.2, [1, 8, 8]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_entropy_per_dim(std: float) -> float:
    return 0.5 * (math.log(2 * math.pi * std ** 2) + 1)


def test_log_density_mean_matches_the_analytic_mean_of_one_gaussian() -> None:
    g = GaussianMixture.gaussian(MIX.means[0], 0.3)
    x = g.sample(4000, gen(0))
    mean, se = mean_log_density(g, x)
    assert abs(mean - (-gaussian_entropy_per_dim(0.3))) < 3 * se
    assert se == pytest.approx(math.sqrt(0.5 / 64) / math.sqrt(4000), rel=0.1)  # Var log N / D² = D/2 / D²


def test_log_density_mean_matches_the_analytic_mean_of_separated_components() -> None:
    # the digit-mean components are ~20 σ apart, so E log p = −H(N(0, s² I))/D − log(K)/D up to e^(−hundreds)
    x = MIX.sample(4000, gen(1))
    mean, se = mean_log_density(MIX, x)
    assert abs(mean - (-gaussian_entropy_per_dim(0.2) - math.log(4) / 64)) < 3 * se


def test_energy_distance_is_the_unbiased_statistic() -> None:
    x = torch.randn(7, 3, generator=gen(2), dtype=torch.float64)
    y = torch.randn(5, 3, generator=gen(3), dtype=torch.float64) + 0.5
    d = lambda a, b: float((a - b).norm())  # noqa: E731
    xy = sum(d(a, b) for a in x for b in y) / (7 * 5)
    xx = sum(d(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(d(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    assert energy_distance(x, y) == pytest.approx(2 * xy - xx - yy, rel=1e-10)
    # zero mean under the null: fresh vs fresh averages to ~0 within its spread
    stats = torch.tensor([energy_distance(MIX.sample(64, gen(10 + i)), MIX.sample(64, gen(50 + i)))
                          for i in range(20)])
    assert abs(stats.mean()) < 3 * stats.std() / math.sqrt(20)


def test_two_sample_tests_accept_fresh_draws_and_reject_a_shifted_mixture() -> None:
    x, y = MIX.sample(256, gen(4)), MIX.sample(256, gen(5))
    e, p = energy_test(x, y, gen(6), permutations=200)
    assert p > 0.05, (e, p)
    shifted = GaussianMixture(MIX.weights, MIX.means + 0.1, MIX.stds)  # every mean moved by 0.5 σ per pixel
    e_s, p_s = energy_test(shifted.sample(256, gen(7)), y, gen(6), permutations=200)
    assert p_s < 0.01 and e_s > 10 * abs(e), (e_s, p_s)
    p_values = torch.tensor([energy_test(MIX.sample(64, gen(100 + i)), MIX.sample(64, gen(200 + i)), gen(i),
                                         permutations=99)[1] for i in range(20)])
    assert (p_values < 0.05).sum() <= 3  # about 1 expected under the null


def test_occupancy_test_sees_a_dropped_mode() -> None:
    y = MIX.sample(400, gen(8))
    assert torch.equal(component_assignments(MIX, MIX.means[[2, 0, 3]]), torch.tensor([2, 0, 3]))
    stat, p = occupancy_test(MIX, MIX.sample(400, gen(9)), y)
    assert p > 0.05, (stat, p)
    three = GaussianMixture(torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]), MIX.means, MIX.stds)
    stat_d, p_d = occupancy_test(MIX, three.sample(400, gen(10)), y)
    assert p_d < 1e-6 and stat_d > stat


def test_chi2_survival_matches_scipy() -> None:
    from scipy.stats import chi2

    for stat, df in [(0.5, 1), (3.0, 3), (20.0, 9), (300.0, 3)]:
        assert chi2_survival(stat, df) == pytest.approx(chi2.sf(stat, df), rel=1e-9, abs=1e-300)


def test_gmm_quality_on_samples_from_the_mixture_itself() -> None:
    q = gmm_quality(MIX, MIX.sample(256, gen(11)), gen(12), permutations=200)
    assert abs(q.sample_logp - q.data_logp) < 3 * math.hypot(q.sample_logp_stderr, q.data_logp_stderr)
    assert q.energy_pvalue > 0.05 and q.occupancy_pvalue > 0.05 and q.n_reference == 256
    assert set(q.as_metrics()) == {"eval/gmm_sample_logp", "eval/gmm_sample_logp_stderr", "eval/gmm_data_logp",
                                   "eval/gmm_energy_distance", "eval/gmm_energy_pvalue", "eval/gmm_occupancy_chi2",
                                   "eval/gmm_occupancy_pvalue"}
    # collapsed onto the means: a higher log-density than data, caught by both tests
    collapsed = MIX.means[torch.randint(0, 4, (256,), generator=gen(13))]
    c = gmm_quality(MIX, collapsed, gen(12), permutations=200)
    assert c.sample_logp > q.data_logp and c.energy_pvalue < 0.01
    # also on 2-D data
    ring = GMM2D().mixture()
    r = gmm_quality(ring, ring.sample(128, gen(14)), gen(15), permutations=100)
    assert r.energy_pvalue > 0.05


def test_gmm_quality_refuses_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="samples"):
        gmm_quality(MIX, torch.zeros(8, 64), gen(0))


@pytest.mark.parametrize("dataset, ok", [("gmm_image", True), ("gmm2d", True), ("digits", False),
                                         ("cifar10", False)])
def test_config_allows_gmm_exact_only_on_mixture_data(dataset: str, ok: bool) -> None:
    data = {"data": {"dataset": dataset}, "eval": {"sample_quality": "gmm_exact"}}
    if ok:
        assert experiment_from_dict(data).eval.sample_quality.name == "gmm_exact"
        return
    with pytest.raises(ConfigError) as info:
        experiment_from_dict(data)
    assert info.value.field == "eval.sample_quality" and "gmm_image" in info.value.problem
    assert "gmm_exact" not in info.value.allowed


def test_sweep_objective_needs_gmm_exact_evaluation() -> None:
    sweep = {"base": {"data": {"dataset": "gmm_image"}, "eval": {"sample_quality": "gmm_exact", "num_samples": 16}},
             "space": {"truncation.eps": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
             "objectives": [{"metric": "eval/gmm_energy_distance", "mode": "min"}],
             "scheduler": {"name": "none"}, "trials": 2}
    assert search_space_from_dict(sweep).objectives[0].metric == "eval/gmm_energy_distance"
    bad = {**sweep, "base": {"data": {"dataset": "gmm_image"}, "eval": {"num_samples": 16}}}
    with pytest.raises(ConfigError, match="not computed by the base config: eval.sample_quality is .*not gmm_exact"):
        search_space_from_dict(bad)


def test_evaluation_reports_gmm_exact() -> None:
    from st_sweeps.data import Dataset
    from st_sweeps.evaluate import sample_quality_metrics
    from st_sweeps.tracking import NullTracker

    dataset = {"name": "gmm_image", "n_train": 64, "n_test": 16}
    cfg = experiment_from_dict({"data": {"dataset": dataset}, "eval": {"sample_quality": "gmm_exact"}})
    train = Dataset.registry.build(dataset, "data.dataset").load(None, "train")
    samples = train.mixture.sample(32, gen(0))
    metrics = sample_quality_metrics(cfg, samples, train, Path("unused"), 0, NullTracker())
    assert {"eval/gmm_sample_logp", "eval/gmm_energy_distance", "eval/gmm_occupancy_pvalue"} <= set(metrics)
    again = sample_quality_metrics(cfg, samples, train, Path("unused"), 0, NullTracker())
    assert again == metrics  # the fresh reference draws come from (seed, "eval"): common random numbers
