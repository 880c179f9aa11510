"""The sweep end to end, through the CLI: a tiny sweep interrupted (SIGINT once two trials are
done) and resumed with --resume. Checks: the finished trials are neither lost nor re-run, one
MLflow run per trial under one parent, the ranked table and best_config.yaml, and trials ASHA
stopped are PRUNED in the Optuna study. A second reduced sweep, with a baseline on two seeds and
two objectives: the report's standard errors, seed spread and best − baseline lines are
recomputed here from the trials' own results. The rest needs no cluster: the searcher, the
report's noise arithmetic, ASHA keeping the baseline.

The space makes pruning certain: the random searcher (seed 6) draws lr 3e-3, 1e-7, 3e-3, 3e-3,
and trials run one at a time, so the second (barely trained: NLL ≈ 15.6 bits/dim against ≈ 11.7
after 10 steps) is below the median of its rung when it reaches it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from st_sweeps.experiment import load_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TRIALS = 4

SWEEP = {
    "base": {
        "seed": 0,
        "data": {"dataset": {"name": "digits"}},
        "model": {"network": {"name": "ddpmpp", "channels": 8, "channel_multipliers": [1, 2],
                              "blocks_per_resolution": 1, "attention_resolutions": [], "dropout": 0.0}},
        "optim": {"lr": 3e-3, "warmup_steps": 0, "ema_decay": 0.5},
        "train": {"steps": 20, "batch_size": 16, "eval_every_steps": 10, "log_every_steps": 5},
        "eval": {"likelihood": {"examples": 8, "rtol": 1e-3, "atol": 1e-3, "nelbo_repeats": 1}, "num_samples": 4,
                 "sampler": {"name": "euler_maruyama", "n_steps": 10}, "sample_quality": "none"},
    },
    "space": {
        "optim.lr": {"type": "categorical", "choices": [3e-3, 1e-7]},
        "truncation.eps": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    },
    "objectives": [{"metric": "eval/nll_bpd", "mode": "min"}],
    "searcher": {"name": "random", "seed": 6},
    "scheduler": {"name": "asha", "grace_period": 10, "reduction_factor": 2},
    "trials": TRIALS,
    "max_concurrent": 1,
    "resources": {"cpus": 1},
    "mlflow": {"experiment": "test-sweep"},
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _cli(work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "st_sweeps.tune", str(work / "tiny.yaml"), "--name", "tiny", *extra]


def _done_trials(sweep_dir: Path) -> dict[str, list[str]]:
    """Trials whose result.json holds their final result (Tune marks it done)."""
    out = {}
    for f in sweep_dir.glob("trial_*/result.json"):
        lines = f.read_text().splitlines()
        if any(json.loads(line).get("done") for line in lines if line.strip()):
            out[f.parent.name] = lines
    return out


def test_sweep_interrupt_resume_report_mlflow_optuna(tmp_path: Path) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    sweep_dir = tmp_path / "ray_results" / "tiny"
    t0 = time.monotonic()

    # 1. start, and interrupt with SIGINT (Ctrl-C) once two trials are done
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(_cli(tmp_path), cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            while len(_done_trials(sweep_dir)) < 2:
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() - t0 < 240, "two trials did not finish in 240 s"
                time.sleep(1)
            before = _done_trials(sweep_dir)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    first = (tmp_path / "first.log").read_text()
    assert code == 130, first[-3000:]  # interrupted, with trials left to run
    assert "--resume --name tiny" in first

    # 2. resume: the same command with --resume
    second = subprocess.run(_cli(tmp_path, "--resume"), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    print(f"interrupt + resume took {time.monotonic() - t0:.0f} s")

    # finished trials were kept as they were: same results, not trained again
    after = _done_trials(sweep_dir)
    assert len(after) == TRIALS
    for trial, lines in before.items():
        assert after[trial] == lines, f"{trial} was run again"

    # the ranked table, and the best config as a ready-to-run experiment
    out = second.stdout
    assert "rank  trial" in out and "eval/nll_bpd (min)" in out
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit() and ("completed" in line or "pruned" in line)]
    assert len(rows) == TRIALS and [int(r[0]) for r in rows] == list(range(1, TRIALS + 1))
    report_dir = sweep_dir / "report"
    best = load_experiment(report_dir / "best_config.yaml")
    assert best.optim.lr == 3e-3 and best.train.steps == 20
    ranking = (report_dir / "ranking.csv").read_text().splitlines()
    assert len(ranking) == TRIALS + 1

    # MLflow: one parent, one child per trial (none duplicated by the resume), NLL in each
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("test-sweep")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("st_sweeps.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("st_sweeps.role") == "trial"]
    assert len(parents) == 1 and len(children) == TRIALS, [r.info.run_name for r in runs]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and "best/eval/nll_bpd" in parent.data.metrics
    assert parent.data.metrics["trials/completed"] + parent.data.metrics["trials/pruned"] == TRIALS
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/ranking.csv" in parent_files and "report/best_config.yaml" in parent_files
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} >= {"sweep/tiny.yaml"}
    trial_ids = {r.data.tags["st_sweeps.trial_id"] for r in children}
    assert len(trial_ids) == TRIALS
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "eval/nll_bpd" in r.data.metrics
        assert r.data.params["optim.lr"] in ("0.003", "1e-07")
        assert r.data.tags.get("best_checkpoint")
        history = client.get_metric_history(r.info.run_id, "eval/nll_bpd")
        steps = [m.step for m in history]
        assert len(steps) == len(set(steps)), f"{r.info.run_name} logged an evaluation twice: {steps}"
        files = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert "resolved_config.yaml" in files
        outcome = r.data.tags["st_sweeps.outcome"]
        assert r.info.status == {"completed": "FINISHED", "pruned": "KILLED"}[outcome]

    # Optuna: trials ASHA stopped are PRUNED (not COMPLETE with a low-budget value)
    storage = f"sqlite:///{report_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [t.state for t in study.trials]
    assert len(states) == TRIALS
    by_trial = {r.data.tags["st_sweeps.trial_id"]: r.data.tags["st_sweeps.outcome"] for r in children}
    pruned = [t for t, o in by_trial.items() if o == "pruned"]
    assert pruned, "ASHA stopped no trial"
    assert states.count(optuna.trial.TrialState.PRUNED) == len(pruned)
    assert states.count(optuna.trial.TrialState.COMPLETE) == TRIALS - len(pruned)
    for t in study.trials:
        if t.state == optuna.trial.TrialState.PRUNED:  # with the value it had when it was stopped
            assert t.value is not None and t.intermediate_values
        else:
            assert t.params["optim.lr"] == 3e-3


@pytest.mark.parametrize("objectives", [["eval/nll_bpd"], ["eval/nll_bpd", "eval/pixel_fd"]])
def test_searcher_tells_optuna_how_trials_ended(tmp_path: Path, objectives: list[str]) -> None:
    """No cluster needed: the searcher alone, fed what Tune feeds it."""
    from optuna.trial import TrialState

    from st_sweeps.search_space import load_search_space
    from st_sweeps.tune import FINISHED_KEY, make_searcher

    data = {**SWEEP, "objectives": [{"metric": m, "mode": "min"} for m in objectives]}
    data["base"] = {**SWEEP["base"], "eval": {**SWEEP["base"]["eval"], "sample_quality": "pixel_fd"}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    searcher = make_searcher(load_search_space(tmp_path / "s.yaml"), "study")
    for tid in "abcd":
        assert set(searcher.suggest(tid)) == {"optim.lr", "truncation.eps"}
    result = {m: 7.5 for m in objectives}
    searcher.on_trial_result("a", {**result, "training_iteration": 1, "step": 10, FINISHED_KEY: 0.0})
    searcher.on_trial_complete("a", {**result, "training_iteration": 2, "step": 20, FINISHED_KEY: 1.0})
    searcher.on_trial_complete("b", {**result, "training_iteration": 1, "step": 10, FINISHED_KEY: 0.0})  # ASHA
    searcher.on_trial_complete("c", {**result, "training_iteration": 1, "step": 10, FINISHED_KEY: 0.0}, error=True)
    searcher.on_trial_complete("d", {**{m: float("nan") for m in objectives}, FINISHED_KEY: 1.0})
    states = [t.state for t in searcher.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL]
    pruned = searcher.study.trials[1]
    assert (pruned.value == 7.5) if len(objectives) == 1 else (pruned.values is None)


def test_resume_without_a_sweep_is_a_clean_error(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    proc = subprocess.run(_cli(tmp_path, "--resume"), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("--resume: no sweep 'tiny'") and "Traceback" not in proc.stderr


def test_report_noise_and_baseline_come_from_the_trials_data(tmp_path: Path) -> None:
    """A reduced sweep with a baseline on two seeds and two objectives (NLL, pixel-space FD): the
    report's ± are the standard errors each trial's evaluation reported, and its best − baseline
    line and seed spread are recomputed here from the trials' own results (Tune and MLflow)."""
    import statistics

    from mlflow.tracking import MlflowClient

    baseline = {"truncation.prior.name": "fixed", "truncation.eps": 1e-5}
    data = {**SWEEP, "base": {**SWEEP["base"], "optim": {"lr": 3e-3, "warmup_steps": 0, "ema_decay": 0.5},
                              "eval": {**SWEEP["base"]["eval"], "num_samples": 8, "sample_quality": "pixel_fd"}},
            "space": {"truncation.prior.name": {"type": "categorical", "choices": ["fixed", "power_law"]},
                      "truncation.eps": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
            "objectives": [{"metric": "eval/nll_bpd", "mode": "min"}, {"metric": "eval/pixel_fd", "mode": "min"}],
            "searcher": {"name": "nsga2", "seed": 0, "population_size": 2},
            "scheduler": {"name": "asha", "metric": "eval/nll_bpd", "mode": "min", "grace_period": 10},
            "baseline": {"params": baseline, "seeds": 2}, "trials": 4, "max_concurrent": 2,
            "mlflow": {"experiment": "test-noise"}}
    (tmp_path / "noise.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "st_sweeps.tune", str(tmp_path / "noise.yaml"), "--name", "noise"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    sweep_dir = tmp_path / "ray_results" / "noise"

    # every trial's last report, from Tune's result.json
    last = {}
    for f in sweep_dir.glob("trial_*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        last[f.parent.name.removeprefix("trial_")] = rows[-1]
    assert len(last) == 4
    metrics = ("eval/nll_bpd", "eval/pixel_fd")
    ranking = {r["trial_id"]: r for r in __import__("csv").DictReader(
        (sweep_dir / "report" / "ranking.csv").read_text().splitlines())}
    for tid, result in last.items():
        for m in metrics:  # the report's SE is the one the trial's own evaluation reported
            assert result[f"{m}_stderr"] > 0
            assert float(ranking[tid][f"{m}_stderr"]) == pytest.approx(result[f"{m}_stderr"], rel=1e-9)
            assert float(ranking[tid][m]) == pytest.approx(result[m], rel=1e-9)
    assert len({round(r["eval/nll_bpd_stderr"], 9) for r in last.values()}) > 1  # not a constant

    # the baseline: two replicates (seeds 0 and 1) of the same point, both run to the end
    base = {tid: r for tid, r in last.items() if r["config"].get("st_sweeps.baseline_seed") is not None}
    assert sorted(r["config"]["seed"] for r in base.values()) == [0, 1]
    for r in base.values():
        assert {k: r["config"][k] for k in baseline} == baseline and r["trial/finished"] == 1.0
    others = {tid: r for tid, r in last.items() if tid not in base and r["trial/finished"] == 1.0}
    assert others, "no completed trial besides the baseline"

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("test-noise")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("st_sweeps.role") == "sweep")
    children = {r.data.tags["st_sweeps.trial_id"]: r for r in runs if r.data.tags.get("st_sweeps.role") == "trial"}
    assert {tid for tid, r in children.items() if "st_sweeps.baseline_seed" in r.data.tags} == set(base)
    for m in metrics:
        # recomputed from the trials' MLflow runs: the values and SEs at their last evaluation
        value = {tid: children[tid].data.metrics[m] for tid in last}
        se = {tid: children[tid].data.metrics[f"{m}_stderr"] for tid in last}
        b_values = [value[t] for t in sorted(base, key=lambda t: base[t]["config"]["seed"])]
        spread = statistics.stdev(b_values)
        mean = statistics.fmean(b_values)
        b_se = (sum(se[t] ** 2 for t in base) ** 0.5) / 2
        best = min(others, key=lambda t: value[t])
        diff = value[best] - mean
        sd = (se[best] ** 2 + b_se ** 2 + (1 + 1 / 2) * spread ** 2) ** 0.5
        assert parent.data.metrics[f"seed_spread/{m}"] == pytest.approx(spread, rel=1e-6)
        assert parent.data.metrics[f"baseline/{m}"] == pytest.approx(mean, rel=1e-6)
        assert parent.data.metrics[f"best_minus_baseline/{m}"] == pytest.approx(diff, rel=1e-6, abs=1e-9)
        assert parent.data.metrics[f"best_minus_baseline_sd/{m}"] == pytest.approx(sd, rel=1e-6)
        line = next(x for x in proc.stdout.splitlines() if x.startswith(f"{m} (min): best − baseline = "))
        assert f"trial {best} − mean of 2 baseline seed(s)" in line
        number = line.split(" = ")[1].split(" (")[0].split()  # e.g. ['-0.123', '±', '0.085', 'bpd']
        assert float(number[0]) == pytest.approx(diff, abs=float(f"1e-{len(number[2].split('.')[1])}"))
        assert float(number[2]) == pytest.approx(sd, rel=0.05)
        assert ("within noise" in line) == (abs(diff) < 2 * sd)
    assert (sweep_dir / "report" / "pareto.png").exists()
    assert "report/pareto.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def test_report_noise_arithmetic_and_edge_cases() -> None:
    """No cluster needed: ± and ≈ from given standard errors; one baseline seed measures no spread;
    a missing standard error is no verdict rather than a made-up one."""
    from st_sweeps import report

    nll = report.Objective("eval/nll_bpd", "min")

    def row(tid: str, value: float, se: float | None, seed: int | None = None) -> report.TrialRow:
        return report.TrialRow(tid, "completed", {}, {"eval/nll_bpd": value},
                               stderrs={} if se is None else {"eval/nll_bpd": se}, baseline_seed=seed)

    rows = [row("b", 5.0, 0.03, seed=0), row("x", 4.88, 0.04), row("y", 4.95, None)]
    ranked = report.mark_within_noise(report.rank_trials(rows, [nll]), [nll])
    marks = {r.trial_id: r.within_noise.get("eval/nll_bpd") for r in ranked}
    assert marks == {"x": True, "b": False, "y": None}  # |4.88 − 5.0| = 0.12 > 2·0.05; y has no SE
    d = report.versus_baseline(ranked[0], report.baselines(ranked, [nll])["eval/nll_bpd"])
    assert d.value == pytest.approx(-0.12) and d.sd == pytest.approx(0.05) and d.within_noise is False
    lines = report.noise_lines(ranked, [nll])
    assert any("seed spread not measured" in line for line in lines)
    assert any(line.startswith("eval/nll_bpd (min): best − baseline = -0.120 ± 0.050") for line in lines)
    table = report.format_table(ranked, [nll], [])
    assert "4.880 ± 0.040 ≈" in table and "b (baseline, seed 0)" in table and "4.95" in table


def test_asha_never_stops_a_baseline_replicate() -> None:
    """No cluster needed: at a rung, ASHA stops the worse trial, but a baseline replicate as bad
    runs on (its value still counts in the rung); at the end it stops as any trial does."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from st_sweeps.tune import BASELINE_KEY, FINISHED_KEY, BaselineKeepingASHA

    asha = BaselineKeepingASHA(time_attr="step", metric="eval/nll_bpd", mode="min", max_t=20, grace_period=10,
                               reduction_factor=2)
    good, bad = SimpleNamespace(trial_id="good", config={}), SimpleNamespace(trial_id="bad", config={})
    base = SimpleNamespace(trial_id="base", config={BASELINE_KEY: 0, "seed": 0})
    for t in (good, bad, base):
        asha.on_trial_add(None, t)
    at_rung = {"step": 10, FINISHED_KEY: 0.0}
    assert asha.on_trial_result(None, good, {**at_rung, "eval/nll_bpd": 5.0}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, bad, {**at_rung, "eval/nll_bpd": 9.0}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, base, {**at_rung, "eval/nll_bpd": 9.5}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, base, {"step": 20, FINISHED_KEY: 1.0, "eval/nll_bpd": 9.0}) == \
        TrialScheduler.STOP



def test_figures_are_optunas_and_skip_with_a_reason(tmp_path: Path) -> None:
    """No cluster needed: the sweep's pictures come from Optuna's matplotlib plots of the study;
    importances need two completed trials and two parameters, else they are skipped with the
    reason; a study with no completed trial gives reasons, not an error."""
    import optuna

    from st_sweeps import report
    from st_sweeps.tune import write_figures

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    nll = [report.Objective("eval/nll_bpd", "min")]
    one = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    one.optimize(lambda t: t.suggest_float("truncation.eps", 1e-5, 1e-3, log=True) * 1e3, n_trials=3)
    written, skipped = write_figures(one, [], nll, tmp_path / "one")
    assert sorted(p.name for p in written) == ["optimization_history_eval_nll_bpd.png",
                                               "parallel_coordinate_eval_nll_bpd.png"]
    assert "2 parameters" in skipped["param_importances_eval_nll_bpd.png"]
    assert all(p.stat().st_size > 10_000 for p in written)

    empty = optuna.create_study()
    empty.tell(empty.ask(), state=optuna.trial.TrialState.PRUNED)
    written, skipped = write_figures(empty, [], nll, tmp_path / "empty")
    assert written == [] and set(skipped.values()) == {"no completed trial"} and len(skipped) == 3
