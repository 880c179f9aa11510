"""The MLflow UI shows a sweep: a local ``mlflow server`` (bound to 127.0.0.1) on a store holding
a sweep's parent run, with its report and figures, and its child runs with eval/nll_bpd, read by
headless Chromium.

The store is filled through the code the sweep runs, without Ray: ``MlflowTracker`` for the runs
(parent, children nested by ``mlflow.parentRunId``, per-evaluation metrics; the experiment marked
as model training), and for the parent's pictures ``tune.write_figures`` on a small real
Optuna study (two objectives) with the ranking table beside them, logged by
``tune.publish_report``. The single-page app renders into the DOM: the link the sweep prints
must open the runs table (MLflow 3.17 opens an experiment on its GenAI overview otherwise), the
parent run's artifacts must list the figures and render one as an image, and each child run's
page must show its name and NLL. The REST API is checked for the exact stored values.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from mlflow_server import mlflow_server

from st_sweeps.tracking import EXPERIMENT_KIND_TAG, TRAINING_KIND, MlflowTracker, runs_page_url

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
NLL = {"trial_ui000001": 7.4321, "trial_ui000002": 8.9876}
OBJECTIVES = ("eval/nll_bpd", "eval/pixel_fd")
HISTORY = "report/optimization_history_eval_nll_bpd.png"


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 (a local test server)
        return json.loads(r.read())


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310
        return json.loads(r.read())


def _chromium_dom(url: str, profile: Path) -> str:
    """The DOM after the app rendered (virtual time lets its requests and timers run first)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--window-size=1600,1200", "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _title(dom: str) -> str:
    titles = re.findall(r"<title>(.*?)</title>", dom)
    return titles[0] if titles else ""


def _study():
    """A small real two-objective Optuna study over two parameters (seeded)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3))
    study.optimize(lambda t: ((t.suggest_float("truncation.eps", 1e-5, 1e-3, log=True) * 1e3 - 0.5) ** 2 + 5,
                              t.suggest_float("truncation.prior.k", 0.5, 2.0) + 20), n_trials=6)
    return study


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A sweep's runs: one parent with the report and figures, two children with eval/nll_bpd at
    two evaluations."""
    from st_sweeps import report
    from st_sweeps.tune import publish_report, write_figures

    root = tmp_path_factory.mktemp("mlflow")
    db = root / "mlflow.db"
    uri = f"sqlite:///{db}"  # db is absolute: four slashes
    parent = MlflowTracker(uri, "ui-sweep", run_name="ui-sweep-parent", tags={"st_sweeps.role": "sweep"})
    children = {}
    for name, nll in NLL.items():
        child = MlflowTracker(uri, "ui-sweep", run_name=name, parent_run_id=parent.run_id,
                              tags={"st_sweeps.role": "trial"})
        child.log_params({"truncation.prior.name": "power_law", "truncation.eps": 1e-3})
        child.log_metrics({"eval/nll_bpd": nll + 1.0, "train/loss": 2.0}, 10)
        child.log_metrics({"eval/nll_bpd": nll, "train/loss": 1.0}, 20)
        child.close("FINISHED")
        children[name] = child.run_id

    study = _study()
    objectives = [report.Objective(m, "min") for m in OBJECTIVES]
    rows = [report.TrialRow(f"t{t.number}", "completed", t.params, dict(zip(OBJECTIVES, t.values)),
                            stderrs={m: 0.05 for m in OBJECTIVES}) for t in study.trials]
    ranked = report.rank_trials(rows, objectives)
    out = root / "report"
    written, skipped = write_figures(study, ranked, objectives, out, title="Pareto front: ui-sweep")
    (out / "ranking.csv").write_text(report.to_csv(ranked, objectives, ["truncation.eps", "truncation.prior.k"]))
    publish_report(out, parent)
    parent.log_metrics({"best/eval/nll_bpd": min(NLL.values())}, 0)
    parent.close("FINISHED")
    return {"db": db, "experiment_id": parent.experiment_id, "parent": parent.run_id, "children": children,
            "figures": sorted(f"report/{p.name}" for p in written), "skipped": skipped}


@pytest.fixture(scope="module")
def server(store: dict):
    with mlflow_server(store["db"]) as base:
        yield base


def test_chromium_is_installed() -> None:
    assert Path(CHROMIUM).exists() or shutil.which("chromium"), (
        "headless Chromium not found at /usr/bin/chromium: run `bash scripts/browser_deps.sh` "
        "(apt-get install -y chromium chromium-driver)")


def test_rest_api_lists_parent_and_children_with_nll(server: str, store: dict) -> None:
    found = _post(f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [store["experiment_id"]]})["runs"]
    by_name = {r["info"]["run_name"]: r for r in found}
    assert set(by_name) == {"ui-sweep-parent", *NLL}
    for name, nll in NLL.items():
        run = by_name[name]
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert metrics["eval/nll_bpd"] == pytest.approx(nll)
        assert tags["mlflow.parentRunId"] == store["parent"]


def test_experiment_is_marked_as_model_training(server: str, store: dict) -> None:
    exp = _get_json(f"{server}/api/2.0/mlflow/experiments/get?experiment_id={store['experiment_id']}")["experiment"]
    tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
    assert tags.get(EXPERIMENT_KIND_TAG) == TRAINING_KIND


def test_experiment_link_opens_the_runs_table(server: str, store: dict, tmp_path: Path) -> None:
    """The link the sweep prints lands on the runs table of the training view, not the GenAI
    overview (traces, token usage)."""
    test_chromium_is_installed()
    dom = _chromium_dom(runs_page_url(server, store["experiment_id"]), tmp_path / "profile")
    assert _title(dom).startswith("Runs - "), _title(dom)
    assert "ui-sweep-parent" in dom, dom[-3000:]
    assert "Token Usage" not in dom and "Overview - " not in _title(dom)


def test_parent_run_holds_optunas_figures_and_the_ranking(server: str, store: dict) -> None:
    expected = {f"report/{kind}_{m.replace('/', '_')}.png" for m in OBJECTIVES
                for kind in ("optimization_history", "param_importances", "parallel_coordinate")}
    expected.add("report/pareto.png")
    assert store["skipped"] == {} and set(store["figures"]) == expected
    listed = _get_json(f"{server}/api/2.0/mlflow/artifacts/list?run_id={store['parent']}&path=report")["files"]
    sizes = {f["path"]: int(f.get("file_size", 0)) for f in listed}
    assert expected | {"report/ranking.csv"} <= set(sizes), sorted(sizes)
    assert all(sizes[f] > 10_000 for f in expected), sizes  # drawn pictures, not empty canvases


def test_parent_run_page_renders_a_figure(server: str, store: dict, tmp_path: Path) -> None:
    test_chromium_is_installed()
    url = f"{server}/#/experiments/{store['experiment_id']}/runs/{store['parent']}/artifacts/{HISTORY}"
    dom = _chromium_dom(url, tmp_path / "profile")
    assert "ui-sweep-parent" in dom, dom[-3000:]
    assert "ranking.csv" in dom and "pareto.png" in dom  # the artifact tree lists the report
    images = re.findall(r"<img[^>]*>", dom)
    assert any(f'alt="{HISTORY}"' in img and 'src="blob:' in img for img in images), images  # the PNG, loaded


def test_parent_run_page_renders_the_ranking_table(server: str, store: dict, tmp_path: Path) -> None:
    test_chromium_is_installed()
    url = f"{server}/#/experiments/{store['experiment_id']}/runs/{store['parent']}/artifacts/report/ranking.csv"
    dom = _chromium_dom(url, tmp_path / "profile")
    cells = re.findall(r"<td[^>]*>(.*?)</td>", dom, flags=re.S)
    text = [re.sub(r"<[^>]+>", "", c).strip() for c in cells]
    assert "t0" in text and "completed" in text, text[:40]  # the CSV shown as a table, a row per trial


def test_run_pages_show_trial_names_and_nll(server: str, store: dict, tmp_path: Path) -> None:
    test_chromium_is_installed()
    for name, run_id in store["children"].items():
        dom = _chromium_dom(f"{server}/#/experiments/{store['experiment_id']}/runs/{run_id}",
                            tmp_path / f"profile-{name}")
        assert name in dom, dom[-3000:]
        assert "eval/nll_bpd" in dom, dom[-3000:]
        assert f">{NLL[name]}<" in dom, f"{NLL[name]} not in the run page"
