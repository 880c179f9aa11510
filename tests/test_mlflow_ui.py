"""The MLflow UI shows a sweep: a local ``mlflow server`` (bound to 127.0.0.1) on a store holding
a sweep's parent run and its child runs with eval/nll_bpd, read by headless Chromium.

The store is filled through ``MlflowTracker`` exactly as ``st_sweeps.tune`` fills it (parent run,
children nested by ``mlflow.parentRunId``, per-evaluation metrics), without running Ray. The
single-page app renders the runs table and each run's page into the DOM. The experiment's runs
table lists the sweep's parent run with its trials nested (collapsed) under it, so the table is
checked for the parent's name, and each child run's page for its name, the metric key and its
value; the REST API (``runs/search``) is checked for the exact stored values and the nesting.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from st_sweeps.tracking import MlflowTracker

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
NLL = {"trial_ui000001": 7.4321, "trial_ui000002": 8.9876}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (a local test server)
        return r.read()


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
        return json.loads(r.read())


def _chromium_dom(url: str, profile: Path) -> str:
    """The DOM after the app rendered (virtual time lets its requests and timers run first)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--window-size=1600,1200", "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A sweep's runs: one parent, two children with eval/nll_bpd at two evaluations."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
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
    parent.log_metrics({"best/eval/nll_bpd": min(NLL.values())}, 0)
    parent.close("FINISHED")
    return {"db": db, "experiment_id": parent.experiment_id, "parent": parent.run_id, "children": children}


@pytest.fixture(scope="module")
def server(store: dict):
    mlflow = Path(sys.executable).with_name("mlflow")
    exe = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([*exe, "server", "--backend-store-uri", f"sqlite:///{store['db']}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=store["db"].parent)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if _get(f"{base}/health").strip() == b"OK":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"mlflow server did not answer /health: {log.read().decode()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


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


def test_experiment_page_shows_the_sweep(server: str, store: dict, tmp_path: Path) -> None:
    test_chromium_is_installed()
    dom = _chromium_dom(f"{server}/#/experiments/{store['experiment_id']}/runs", tmp_path / "profile")
    assert "ui-sweep-parent" in dom, dom[-3000:]


def test_run_pages_show_trial_names_and_nll(server: str, store: dict, tmp_path: Path) -> None:
    test_chromium_is_installed()
    for name, run_id in store["children"].items():
        dom = _chromium_dom(f"{server}/#/experiments/{store['experiment_id']}/runs/{run_id}",
                            tmp_path / f"profile-{name}")
        assert name in dom, dom[-3000:]
        assert "eval/nll_bpd" in dom, dom[-3000:]
        assert f">{NLL[name]}<" in dom, f"{NLL[name]} not in the run page"
