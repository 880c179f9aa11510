"""The claims study (st_sweeps/claims, reproductions/claims.py).

Fast: the interval and the verdict rules (a part's verdict goes holds → inconclusive →
contradicted as its inputs move), the statistics on hand-made runs, the manifest's strictness,
and the two measurements that need no training against what they must give.
Slow (Ray): the smoke-scale study end to end through the CLI — every claim in the table, every
interval recomputed from the finished runs, every verdict by its rule, one MLflow run per trial
under the study's parent, and a rerun that trains nothing and writes the same CSV.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from st_sweeps.claims.intervals import t_interval
from st_sweeps.claims.manifest import load_manifest
from st_sweeps.claims.results import NOT_MEASURED, evaluate, part_result
from st_sweeps.claims.statistics import Contrast, Evaluation, LossByTimeRatio, RunResult
from st_sweeps.claims.verdict import CONTRADICTED, HOLDS, INCONCLUSIVE, Above, Below, Within, combine
from st_sweeps.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "reproductions" / "claims" / "claims.yaml"


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(MANIFEST)


def _run(config: str, seed: int, **metrics: float) -> RunResult:
    return RunResult(config, seed, (Evaluation(100, {f"eval/{k}": v for k, v in metrics.items()}),))


# ----------------------------------------------------------------------------- interval and rules
def test_t_interval_matches_the_formula() -> None:
    iv = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} · s / √n with s = 1
    assert iv.mean == pytest.approx(2.0) and iv.sd == pytest.approx(1.0)
    assert (iv.low, iv.high) == pytest.approx((2.0 - half, 2.0 + half))
    with pytest.raises(ValueError):
        t_interval([1.0])


@pytest.mark.parametrize("rule, shifts, expected", [
    (Below(0.0), (-2.0, 0.0, 2.0), (HOLDS, INCONCLUSIVE, CONTRADICTED)),
    (Above(1.0), (3.0, 1.0, -1.0), (HOLDS, INCONCLUSIVE, CONTRADICTED)),
    (Within(0.5), (0.0, 0.6, 3.0), (HOLDS, INCONCLUSIVE, CONTRADICTED)),
])
def test_a_rule_moves_from_holds_to_inconclusive_to_contradicted(rule, shifts, expected) -> None:
    spread = [-0.05, 0.0, 0.05]  # interval half-width ≈ 0.12
    for shift, verdict in zip(shifts, expected):
        assert rule.verdict(t_interval([shift + s for s in spread])) == verdict, (rule, shift)


def test_combine() -> None:
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([HOLDS, INCONCLUSIVE, CONTRADICTED]) == CONTRADICTED


def test_changing_the_runs_changes_the_verdict_of_a_manifest_part(manifest) -> None:
    """Part 1a of the real manifest (NLL at ε = 1e-5 minus NLL at ε = 1e-3, rule: CI below 0),
    fed three sets of runs: clearly lower, noisy around equal, clearly higher."""
    def verdicts(gaps: list[float]) -> dict[str, str]:
        runs = {"hard_large_eps": {s: _run("hard_large_eps", s, nll_bpd=5.0, digits_fd=30.0) for s in range(3)},
                "hard_small_eps": {s: _run("hard_small_eps", s, nll_bpd=5.0 + g, digits_fd=40.0)
                                   for s, g in enumerate(gaps)}}
        out = {p.part.id: p.verdict for c in evaluate(manifest, runs, {}) for p in c.parts}
        return out

    assert verdicts([-0.30, -0.32, -0.28])["1a"] == HOLDS
    assert verdicts([-0.30, 0.05, 0.20])["1a"] == INCONCLUSIVE
    assert verdicts([0.30, 0.32, 0.28])["1a"] == CONTRADICTED
    # parts whose configurations did not run have no interval and no verdict of their own
    assert verdicts([-0.3, -0.3, -0.3])["1c"] == NOT_MEASURED


def test_a_claim_without_enough_runs_is_not_a_verdict(manifest) -> None:
    part = manifest.claims[0].parts[0]
    result = part_result(part, {0: -1.0})
    assert result.interval is None and result.verdict == NOT_MEASURED
    claim = [c for c in evaluate(manifest, {}, {}) if c.claim.id == "1"][0]
    assert claim.verdict == INCONCLUSIVE


# ----------------------------------------------------------------------------- statistics
def test_contrast_pairs_seeds_and_averages_over_evaluations() -> None:
    stat = Contrast(metric="eval/fd", weights={"a": 1, "b": -1}, transform="log", evaluations="mean")
    runs = {"a": {s: RunResult("a", s, (Evaluation(1, {"eval/fd": 2.0 * (s + 1)}), Evaluation(2, {"eval/fd": 1.0})))
                  for s in range(3)},
            "b": {s: RunResult("b", s, (Evaluation(1, {"eval/fd": 1.0}), Evaluation(2, {"eval/fd": 1.0})))
                  for s in (0, 1)}}  # seed 2 of b is missing: only seeds 0 and 1 pair
    assert Contrast(metric="eval/fd", weights={"a": 1, "b": -1}).per_seed(runs) == {0: 0.0, 1: 0.0}
    values = stat.per_seed(runs)
    assert values == pytest.approx({0: math.log(2.0) / 2, 1: math.log(4.0) / 2})


def test_loss_by_time_ratio_in_decades() -> None:
    bins = [{"t_low": 10.0 ** i, "t_high": 10.0 ** (i + 1), "count": 10, "mean_loss": 10.0 ** (-i), "std_loss": 0.0}
            for i in range(-5, 0)]
    run = RunResult("c", 0, (Evaluation(1, {}),), tuple(bins))
    # smallest two bins: mean of 1e5 and 1e4 (equal counts); largest two: mean of 100 and 10
    expected = math.log10((1e5 + 1e4) / 2 / ((100 + 10) / 2))
    assert LossByTimeRatio("c", 2, 2).per_seed({"c": {0: run}}) == {0: pytest.approx(expected)}


def test_target_variance_shrinks_with_the_reference_set() -> None:
    from st_sweeps.claims.target_variance import DSM_SIZE, target_variance

    data = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    result = target_variance(data, mean_scale=0.7, sigma=0.7, t=0.3, batch=16, extra_sizes=[0, 184],
                             x_batches=2, repeats=16, generator=torch.Generator().manual_seed(1))
    traces = result.by_size
    assert list(traces) == [DSM_SIZE, 16, 200]
    assert traces[DSM_SIZE] > traces[16] > traces[200] > 0
    # one data point: the posterior is certain, so the target never varies
    single = target_variance(torch.ones(1, 4), 0.7, 0.7, 0.3, 4, [0], 1, 8, torch.Generator().manual_seed(2))
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in single.by_size.values())


def test_tau_expectation_exact_side_matches_an_independent_quadrature() -> None:
    """½ ∫ g² P(τ ≤ t) f(t) dt for the power law k = 1 (P = log(t/ε)/log(T/ε)), by scipy."""
    from scipy.integrate import quad

    from st_sweeps.claims.tau_expectation import GaussianProbe, exact_expectation
    from st_sweeps.objectives import Objective
    from st_sweeps.sde import VPSDE
    from st_sweeps.truncation import PowerLawPrior

    sde, probe, eps = VPSDE(), GaussianProbe(), 1e-5
    objective = Objective.registry.build({"name": "dsm", "weighting": "likelihood_is"}, "objective")

    def integrand(log_t: float) -> float:
        t = torch.tensor([math.exp(log_t)], dtype=torch.float64)
        cdf = (log_t - math.log(eps)) / math.log(1 / eps)
        return float(0.5 * sde.g2(t) * cdf * probe.expected_sq_error(sde, t) * t)

    reference, _ = quad(integrand, math.log(eps), 0.0, limit=200)
    assert exact_expectation(objective, sde, PowerLawPrior(1.0), eps, probe) == pytest.approx(reference, rel=1e-6)


def test_tau_expectation_monte_carlo_agrees_roughly() -> None:
    from st_sweeps.claims.tau_expectation import GaussianProbe, exact_expectation, monte_carlo_expectation
    from st_sweeps.objectives import Objective
    from st_sweeps.sde import VPSDE
    from st_sweeps.truncation import PowerLawPrior

    sde, probe = VPSDE(), GaussianProbe()
    objective = Objective.registry.build({"name": "dsm", "weighting": "variance", "normalization": "average"}, "o")
    exact = exact_expectation(objective, sde, PowerLawPrior(1.0), 1e-5, probe)
    mc = monte_carlo_expectation(objective, sde, PowerLawPrior(1.0), 1e-5, probe, 300, 32, torch.Generator().manual_seed(0))
    assert mc == pytest.approx(exact, rel=0.05)


# ----------------------------------------------------------------------------- manifest
def _write(tmp_path: Path, mutate) -> Path:  # noqa: ANN001
    data = yaml.safe_load(MANIFEST.read_text())
    mutate(data)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d["scales"]["cpu"].update(seeds=2), "scales.cpu.seeds"),
    (lambda d: d["claims"][0]["parts"][0]["statistic"]["weights"].update(nowhere=1), "claims[0].parts[0].statistic"),
    (lambda d: d["claims"][0]["parts"][0]["rule"].update(name="roughly"), "claims[0].parts[0].rule.name"),
    (lambda d: d["configurations"][0]["overrides"].update(seed=3), "configurations[0].overrides.seed"),
    (lambda d: d["configurations"][0]["overrides"].update({"truncation.epsilon": 1e-3}), "hard_large_eps"),
])
def test_manifest_is_loaded_strictly(tmp_path: Path, mutate, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_manifest(_write(tmp_path, mutate))
    assert field in str(e.value)


def test_manifest_grid(manifest) -> None:
    for scale in ("smoke", "cpu"):
        points = manifest.points(scale)
        seeds = manifest.scales.get(scale).seeds
        assert seeds >= 3 and len(points) == seeds * len(manifest.configurations)
        assert len({p.id for p in points}) == len(points)
    config = manifest.experiment(manifest.configuration("short_t"), "cpu", 2)
    assert config.seed == 2 and config.sde.T == 0.5 and config.eval.sampler.n_steps == 100
    assert type(config.truncation.prior).registry_name == "power_law"
    claim_ids = [c.id for c in manifest.claims]
    assert claim_ids == ["1", "2", "3", "4", "5", "6"]


# ----------------------------------------------------------------------------- the smoke study
def _cli(out: Path, tracking: str) -> list[str]:
    return [sys.executable, str(ROOT / "reproductions" / "claims.py"), "--scale", "smoke", "--out", str(out),
            "--tracking-uri", tracking]


@pytest.mark.slow
@pytest.mark.ray
def test_smoke_study_end_to_end(tmp_path: Path, manifest) -> None:
    from mlflow.tracking import MlflowClient

    out, tracking = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("MLFLOW_TRACKING_URI", None)
    first = subprocess.run(_cli(out, tracking), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]

    # every claim and part in the table, in the manifest's order
    rows = list(csv.DictReader((out / "table.csv").open()))
    parts = [(c, p) for c in manifest.claims for p in c.parts]
    assert [r["part"] for r in rows] == [p.id for _, p in parts]
    assert all((out / f"claim{c.id}.png").stat().st_size > 0 for c in manifest.claims)
    table_md = (out / "table.md").read_text()
    assert "SMOKE SCALE" in table_md and all(f"## Claim {c.id}:" in table_md for c in manifest.claims)

    # the intervals come from the finished runs, the verdicts from the rules
    seeds = manifest.scales.get("smoke").seeds
    runs: dict[str, dict[int, RunResult]] = {}
    points = sorted((out / "points").glob("*.json"))
    assert len(points) == len(manifest.points("smoke"))
    for f in points:
        r = RunResult.from_json(json.loads(f.read_text()))
        runs.setdefault(r.config_id, {})[r.seed] = r
    measured = {p.id: {int(k): v["value"] for k, v in json.loads((out / "measured" / f"{p.id}.json").read_text())
                       ["replicates"].items()} for p in manifest.measured_parts()}
    for (claim, part), row in zip(parts, rows):
        values = measured[part.id] if part.id in measured else part.statistic.per_seed(runs)
        n = manifest.scales.get("smoke").replicates if part.id in measured else seeds
        assert len(values) == n == int(row["n"]), part.id
        iv = t_interval(list(values.values()))
        assert float(row["estimate"]) == pytest.approx(iv.mean) and float(row["ci_low"]) == pytest.approx(iv.low)
        assert float(row["ci_high"]) == pytest.approx(iv.high)
        assert row["verdict"] == part.rule.verdict(iv), part.id
    for claim in manifest.claims:
        verdicts = [r["verdict"] for r in rows if r["claim"] == claim.id]
        assert {r["claim_verdict"] for r in rows if r["claim"] == claim.id} == {combine(verdicts)}

    # one MLflow run per trial, nested under the study's parent run
    state = json.loads((out / "study.json").read_text())
    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name(manifest.mlflow_experiment)
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{state['parent_run_id']}'")
    assert len(children) == len(points)
    assert {r.info.status for r in children} == {"FINISHED"}
    assert sorted(r.data.tags["st_sweeps.claims.configuration"] + "-s" + r.data.tags["st_sweeps.claims.seed"]
                  for r in children) == sorted(f.stem for f in points)

    # a rerun trains nothing and writes the same table
    before = {f.name: f.stat().st_mtime_ns for f in points}
    csv_before = (out / "table.csv").read_text()
    second = subprocess.run(_cli(out, tracking), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert "all 21 runs finished" in second.stdout and "Trial status" not in second.stdout
    assert {f.name: f.stat().st_mtime_ns for f in sorted((out / "points").glob("*.json"))} == before
    assert (out / "table.csv").read_text() == csv_before
