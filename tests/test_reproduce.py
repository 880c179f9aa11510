"""The reproduction front door: manifests, smoke-scale runs of the four scripts on tiny data in the
real formats, resumption without retraining, the paper-scale refusal when data are missing."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from st_sweeps.config import to_spec
from st_sweeps.errors import ConfigError
from st_sweeps.likelihood_settings import UniformDequantization
from st_sweeps.reproduce.cli import main
from st_sweeps.reproduce.gpu_hours import estimate_lines, estimate_rows, time_training_steps
from st_sweeps.reproduce.launch import missing_reasons
from st_sweeps.reproduce.manifest import DATASETS, METRICS, SMOKE_BANNER, load_manifest, manifest_path
from st_sweeps.reproduce.orchestrate import paper_params
from st_sweeps.reproduce.results import SeedResult
from st_sweeps.reproduce.scaling import row_config
from st_sweeps.reproduce.tables import aggregate, format_paper, markdown_table, metric_label, ours_texts
from test_data import stl_images, write_cifar, write_imagenet32, write_small_imagenet, write_stl  # the official-format writers

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


# --- tiny data in the real formats -------------------------------------------------------------

def write_celeba_folder(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """178×218 aligned JPEGs plus list_eval_partition.txt (0 = train, 1 = valid, 2 = test)."""
    rng = np.random.default_rng(seed)
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    parts = [0] * n_train + [1] * 2 + [2] * n_test
    names = [f"{i + 1:06d}.jpg" for i in range(len(parts))]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(folder / name, quality=90)
    (root / "celeba" / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, parts)))


def write_celebahq_folder(root: Path, n: int, size: int = 32, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    folder = root / "celebahq"
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")


def write_all(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every data set in its official format; the small-ImageNet loader's exact split counts are
    set to the tiny ones written here (through ``monkeypatch``, undone with it)."""
    write_cifar(root, n=16)
    write_imagenet32(root)
    write_small_imagenet(root, {"train": [f"{i}.png" for i in range(12)], "test": [f"{i}.png" for i in range(6)]},
                         monkeypatch)
    write_stl(root / "stl10_binary" / "train_X.bin", stl_images(8, 1))
    write_stl(root / "stl10_binary" / "unlabeled_X.bin", stl_images(8, 2))
    write_stl(root / "stl10_binary" / "test_X.bin", stl_images(8, 3))
    write_celeba_folder(root, n_train=16, n_test=8)
    write_celebahq_folder(root, n=20)
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Data root, a shared MLflow store, and no Inception weights anywhere (FID must show as missing)."""
    base = tmp_path_factory.mktemp("reproduce")
    saved = {k: os.environ.get(k) for k in ("TORCH_HOME", "ST_SWEEPS_INCEPTION_WEIGHTS", "ST_SWEEPS_FID_CACHE",
                                            "MLFLOW_TRACKING_URI")}
    os.environ["TORCH_HOME"] = str(base / "torch_home")
    os.environ["ST_SWEEPS_FID_CACHE"] = str(base / "fid_cache")
    os.environ.pop("ST_SWEEPS_INCEPTION_WEIGHTS", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cwd = os.getcwd()
    os.chdir(base)  # MLflow puts artifacts under ./mlruns
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is as fast, and robust to a busy CI machine
    patch = pytest.MonkeyPatch()
    try:
        yield {"base": base, "data": write_all(base / "data", patch), "uri": f"sqlite:///{base / 'mlflow.db'}"}
    finally:
        patch.undo()
        torch.set_num_threads(threads)
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


SEEDS = {"cifar10": 2, "celeba": 1, "celebahq": 1, "stl10": 1, "imagenet32": 1}


def smoke_args(env, dataset: str, *extra: str) -> list[str]:
    return ["--scale", "smoke", "--data-root", str(env["data"]), "--out", str(env["base"] / "out" / dataset),
            "--mlflow-uri", env["uri"], "--seeds", str(SEEDS[dataset]), *extra]


@pytest.fixture(scope="module")
def smoke(env):
    """Each of the four scripts' main at smoke scale, once."""
    for dataset in DATASETS:
        assert main(dataset, smoke_args(env, dataset)) == 0
    return {d: env["base"] / "out" / d for d in DATASETS}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- smoke runs --------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", DATASETS)
def test_smoke_tables_hold_every_row_with_the_paper_numbers(smoke, dataset):
    manifest = load_manifest(manifest_path(dataset))
    out = smoke[dataset]
    md = (out / "table.md").read_text()
    assert SMOKE_BANNER in md.splitlines()[0] and "ours (smoke scale — not a reproduction)" in md
    assert SMOKE_BANNER in (out / "table.tex").read_text().replace("---", "—")
    assert (out / "figure.png").stat().st_size > 1000
    lines = read_csv(out / "table.csv")
    assert {line["scale"] for line in lines} == {"smoke"}
    for row in manifest.rows:
        assert row.label in md
        mine = [line for line in lines if line["row_id"] == row.id]
        expected = [(m, row.paper.get(m).value) for m in METRICS]
        expected += [(e.metric, e.value) for e in row.paper.also_reported]
        assert sorted((line["metric"], float(line["paper"]) if line["paper"] else None) for line in mine) == \
            sorted(expected, key=lambda x: (x[0], x[1] is None, x[1] or 0))
        for line in mine:
            if not line["paper"]:
                assert line["paper_note"] == row.paper.get(line["metric"]).note
            if line["ours_mean"]:  # a measured value, with its spread over the seeds
                assert math.isfinite(float(line["ours_mean"])) and line["missing_reason"] == ""
                assert int(line["n_seeds_with_value"]) == SEEDS[dataset]
            else:
                assert line["missing_reason"], line
    for md_line in md.splitlines():  # every measured cell names its scale
        if md_line.startswith("| ") and "missing —" not in md_line and md_line.count("|") > 8 \
                and not md_line.startswith("| row "):
            assert "[smoke]" in md_line, md_line


def test_smoke_measures_what_the_rows_evaluate_and_says_why_the_rest_is_missing(smoke):
    by = {(d, line["row_id"], line["metric"], line["comparable"]): line
          for d in DATASETS for line in read_csv(smoke[d] / "table.csv")}
    nll = by[("cifar10", "ddpmpp_vp_fid_st", "nll_bpd", "yes")]
    assert float(nll["ours_mean"]) > 0 and nll["ours_std"] != ""  # two seeds: a spread
    assert float(nll["ours_minus_paper"]) == pytest.approx(float(nll["ours_mean"]) - 3.03)
    variational = by[("cifar10", "ddpmpp_vp_fid_st", "nll_bpd_vardeq", "yes")]  # measured at smoke scale too
    assert variational["paper"] == "2.91" and variational["paper_dequantization"] == "variational"
    assert float(variational["ours_minus_paper"]) == pytest.approx(float(variational["ours_mean"]) - 2.91)
    assert int(variational["n_seeds_with_value"]) == 2 and variational["missing_reason"] == ""
    assert not any(c == "no" for (_, _, _, c) in by)  # nothing is recorded without a comparison
    assert "eval.likelihood.dequantization is 'uniform'" in by[("cifar10", "uncsnpp_rve_st", "nll_bpd_vardeq", "yes")][
        "missing_reason"]
    assert "likelihood.examples = 0" in by[("stl10", "uncsnpp_rve_st", "nll_bpd_vardeq", "yes")]["missing_reason"]
    assert by[("celeba", "uncsnpp_rve_st", "nelbo_bpd", "yes")]["ours_mean"] != ""
    assert "Inception weights" in by[("cifar10", "uncsnpp_rve_st", "fid", "yes")]["missing_reason"]
    is_reason = by[("stl10", "uncsnpp_rve_st", "inception_score", "yes")]["missing_reason"]
    assert "Inception weights" in is_reason  # computed with FID, so missing for FID's reason
    assert is_reason == by[("stl10", "uncsnpp_rve_st", "fid", "yes")]["missing_reason"]
    assert "likelihood.examples = 0" in by[("celebahq", "uncsnpp_rve_st", "nll_bpd", "yes")]["missing_reason"]


def test_inception_score_is_filled_from_the_metrics_and_missing_with_fid():
    m = load_manifest(manifest_path("cifar10"))
    row = next(r for r in m.rows if r.id == "ddpmpp_vp_fid_st")
    with_fid = row_config(m, row, "smoke", 0, True)
    without_fid = row_config(m, row, "smoke", 0, False)
    assert "eval/inception_score" not in missing_reasons(with_fid, {}, "weights at /w")
    no_weights = missing_reasons(with_fid, {"eval/fid_missing_reason": "no weights here"}, "")
    assert no_weights["eval/inception_score"] == no_weights["eval/fid"] == "not computed: no weights here"
    too_few = missing_reasons(with_fid, {"eval/inception_score_missing_reason": "too few"}, "")
    assert too_few == {"eval/inception_score": "not computed: too few"}
    off = missing_reasons(without_fid, {}, "no Inception weights file")
    assert off["eval/inception_score"] == off["eval/fid"]

    result = SeedResult(row.id, 0, "smoke", 1, {"eval/inception_score": 9.5}, {}, 1.0)
    cell = next(c for c in aggregate(row, [result], [0], "not run") if c.metric == "inception_score")
    assert cell.values == (9.5,) and cell.paper == 9.78 and cell.diff == pytest.approx(9.5 - 9.78)
    assert ours_texts(cell, "smoke")[0] == "9.50 [smoke]"


def test_variational_nll_is_compared_where_the_row_evaluates_it_and_missing_elsewhere():
    m = load_manifest(manifest_path("cifar10"))
    ddpm, rve = m.row("ddpmpp_vp_fid_st"), m.row("uncsnpp_rve_st")
    paper = row_config(m, ddpm, "paper", 0, True)
    fit = paper.eval.likelihood.dequantization
    assert (fit.name, fit.steps, fit.batch_size) == ("variational", 10000, 64)
    small = row_config(m, ddpm, "smoke", 0, False).eval.likelihood.dequantization
    assert (small.name, small.steps, small.batch_size, small.lr, small.hidden) == ("variational", 2, 8, fit.lr,
                                                                                  fit.hidden)  # shrunk, still run
    small = row_config(m, ddpm, "smoke", 0, False)
    assert "eval/nll_bpd_vardeq" not in missing_reasons(small, {}, "")
    rve_small = row_config(m, rve, "smoke", 0, False)
    assert rve_small.eval.likelihood.dequantization == UniformDequantization()  # untouched
    why = missing_reasons(rve_small, {}, "")["eval/nll_bpd_vardeq"]
    assert why.startswith("not evaluated:") and "'uniform'" in why

    metrics = {"eval/nll_bpd": 3.10, "eval/nll_bpd_vardeq": 2.95, "eval/nelbo_bpd": 3.2}
    results = [SeedResult(ddpm.id, s, "paper", 1, metrics, {}, 1.0) for s in (0, 1)]
    cells = {c.metric: c for c in aggregate(ddpm, results, [0, 1], "not run")}
    vardeq = cells["nll_bpd_vardeq"]
    assert vardeq.comparable and vardeq.values == (2.95, 2.95) and vardeq.paper == 2.91
    assert vardeq.diff == pytest.approx(2.95 - 2.91) and cells["nll_bpd"].diff == pytest.approx(3.10 - 3.03)
    assert metric_label(vardeq) == "NLL, var. deq. (bpd)"  # not "..., variational deq." twice
    assert metric_label(cells["nll_bpd"]) == "NLL (bpd), uniform deq."
    assert ours_texts(vardeq, "paper")[:2] == ("2.950 [paper]", "+0.040 [paper]")
    md = markdown_table(m, "paper", list(cells.values()), {ddpm.id: paper}, None)
    assert "| DDPM++ (VP, FID config) + ST | NLL, var. deq. (bpd) | 2.91 | 2.950 [paper] | +0.040 [paper] |" in md
    assert "variational (q fitted 10000 steps at batch 64" in md and "(fid, IS over 1 split)" in md
    assert paper_params(ddpm)["paper/nll_bpd_vardeq"] == "2.91"

    missing = SeedResult(rve.id, 0, "paper", 1, {"eval/nll_bpd": 3.1},
                                   {"eval/nll_bpd_vardeq": why}, 1.0)
    cell = next(c for c in aggregate(rve, [missing], [0], "not run") if c.metric == "nll_bpd_vardeq")
    assert cell.values == () and cell.paper is None and cell.missing_reason == why
    assert ours_texts(cell, "paper")[0] == f"missing — {why}"


def test_mlflow_holds_one_run_per_row_with_the_paper_numbers(smoke, env):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["uri"])
    for dataset in DATASETS:
        manifest = load_manifest(manifest_path(dataset))
        exp = client.get_experiment_by_name(f"st_sweeps-reproduce-{dataset}")
        rows = client.search_runs([exp.experiment_id], "tags.kind = 'row'")
        assert sorted(r.data.tags["row_id"] for r in rows) == sorted(r.id for r in manifest.rows)
        parents = client.search_runs([exp.experiment_id], "tags.kind = 'reproduction'")
        assert len(parents) == 1
        artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "tables")}
        assert "tables/table.md" in artifacts and "tables/figure.png" in artifacts
        for run in rows:
            row = manifest.row(run.data.tags["row_id"])
            assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            fid = row.paper.fid.value
            assert run.data.params["paper/fid"] == (format_paper(fid) if fid is not None else row.paper.fid.note)
            seeds = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
            assert len(seeds) == SEEDS[dataset]


def test_rerun_of_a_finished_reproduction_trains_nothing_and_rewrites_the_same_table(smoke, env, monkeypatch):
    from mlflow.tracking import MlflowClient

    from st_sweeps.trainer import Trainer

    out = smoke["cifar10"]
    before = {name: (out / name).read_bytes() for name in ("table.md", "table.csv", "table.tex")}
    ckpts = sorted(out.glob("*/seed_*/checkpoints/*.pt"))
    mtimes = [p.stat().st_mtime_ns for p in ckpts]
    client = MlflowClient(tracking_uri=env["uri"])
    exp = client.get_experiment_by_name("st_sweeps-reproduce-cifar10")
    n_runs = len(client.search_runs([exp.experiment_id]))

    def no_training(self):
        raise AssertionError("a finished (row, seed) was trained again")

    monkeypatch.setattr(Trainer, "fit", no_training)
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built a Trainer")))
    assert main("cifar10", smoke_args(env, "cifar10")) == 0
    assert {name: (out / name).read_bytes() for name in before} == before
    assert [p.stat().st_mtime_ns for p in ckpts] == mtimes
    assert len(client.search_runs([exp.experiment_id])) == n_runs


def test_a_run_stopped_after_its_last_checkpoint_is_evaluated_not_retrained(smoke, env, monkeypatch):
    from st_sweeps.trainer import Trainer

    out = smoke["stl10"]
    result = out / "uncsnpp_rve_st" / "seed_0" / "result.json"
    stored = json.loads(result.read_text())
    result.unlink()  # as if killed between the final checkpoint and writing the result
    steps = []
    original = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self: steps.append(1) or original(self))
    assert main("stl10", smoke_args(env, "stl10")) == 0
    assert steps == []
    again = json.loads(result.read_text())
    assert again["metrics"].keys() == stored["metrics"].keys() and again["step"] == stored["step"]


# --- refusing to start -------------------------------------------------------------------------

def test_paper_scale_without_data_exits_2_before_training_and_names_the_files(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "reproductions" / "stl10.py"), "--scale", "paper",
                           "--data-root", str(tmp_path / "empty"), "--out", str(out),
                           "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    for name in ("train_X.bin", "unlabeled_X.bin", "test_X.bin"):
        assert str(tmp_path / "empty" / "stl10_binary" / name) in proc.stderr
    assert "nothing was trained" in proc.stderr and "stl10_binary.tar.gz" in proc.stderr
    assert not out.exists() and not (tmp_path / "mlflow.db").exists()


def test_paper_scale_counts_the_files_and_wants_inception_weights(env, tmp_path, capsys):
    code = main("cifar10", ["--scale", "paper", "--data-root", str(env["data"]), "--out", str(tmp_path),
                                      "--mlflow-uri", env["uri"]])
    err = capsys.readouterr().err
    assert code == 2 and "wrong count" in err and "expected 10000" in err
    assert "Inception weights" in err and "ST_SWEEPS_INCEPTION_WEIGHTS" in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_row_lists_the_rows(capsys):
    assert main("celeba", ["--rows", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "ddpmpp_vp_nll_st" in err and "uncsnpp_rve_st" in err


# --- manifests ---------------------------------------------------------------------------------

def test_manifests_pin_the_reference_numbers():
    got = {(d, r.id): (r.paper.nll_bpd.value, r.paper.fid.value, r.paper.inception_score.value)
           for d in DATASETS for r in load_manifest(manifest_path(d)).rows}
    assert got == {
        ("cifar10", "uncsnpp_rve_st"): (3.04, 2.33, 10.11),
        ("cifar10", "ddpmpp_vp_fid_st"): (3.03, 2.47, 9.78),
        ("celeba", "ddpmpp_vp_fid_st"): (2.10, 1.90, None),
        ("celeba", "ddpmpp_vp_nll_st"): (1.96, 2.90, None),
        ("celeba", "uncsnpp_rve_st"): (1.97, 1.92, None),
        ("celebahq", "uncsnpp_rve_st"): (None, 7.16, None),
        ("stl10", "uncsnpp_rve_st"): (None, 7.71, 13.43),
        ("cifar10", "ddpmpp_vp_nll_st"): (None, None, None),
        ("cifar10", "ddpmpp_deep_vp_nll_st"): (None, None, None),
        ("cifar10", "ddpmpp_deepest_vp_nll_st"): (None, None, None),
        ("celeba", "uddpmpp_vp_fid_st"): (None, None, None),
        ("celeba", "uddpmpp_vp_nll_st"): (None, None, None),
        ("imagenet32", "ddpmpp_vp_nll_st"): (3.90, 8.42, 11.82),
    }
    cifar = load_manifest(manifest_path("cifar10")).row("ddpmpp_vp_fid_st")
    assert cifar.paper.nll_bpd.dequantization == "uniform"
    assert (cifar.paper.nll_bpd_vardeq.value, cifar.paper.nll_bpd_vardeq.dequantization) == (2.91, "variational")
    assert cifar.paper.also_reported == ()  # compared now, not just recorded
    for d in DATASETS:  # the paper configs build, and nelbo is nowhere reported
        m = load_manifest(manifest_path(d))
        assert all(r.paper.nelbo_bpd.value is None for r in m.rows)
        for r in m.rows:  # a paper IS is compared under the paper's protocol: all samples as one split
            config = r.experiment(0, d)
            assert config.eval.sample_quality.inception_score_splits == (1 if r.paper.inception_score.value is not None else 10)
            assert ((config.eval.likelihood.dequantization.name == "variational")
                    == (r.paper.nll_bpd_vardeq.value is not None))
        assert m.protocol.paper_fid == ("tf_inception" if d in ("cifar10", "imagenet32") else "clean_fid")


def test_paper_configs_keep_the_rows_physics_at_smoke_scale():
    for d in DATASETS:
        m = load_manifest(manifest_path(d))
        for row in m.rows:
            paper = row_config(m, row, "paper", 0, False)
            small = row_config(m, row, "smoke", 0, False)
            for part in ("sde", "truncation", "objective", "optim.ema_decay", "model.time_input",
                         "eval.likelihood.dequantization.name", "data.centered"):
                a, b = paper, small
                for attr in part.split("."):
                    a, b = getattr(a, attr), getattr(b, attr)
                assert a == b, (d, row.id, part)
            # the sampler's kind and settings, all but its size (steps) and the ODE's tolerances
            kept = [{k: v for k, v in to_spec(c.eval.sampler).items() if k not in ("n_steps", "rtol", "atol")}
                    for c in (paper, small)]
            assert kept[0] == kept[1], (d, row.id)
            with_fid = row_config(m, row, "smoke", 0, True).eval.sample_quality
            assert with_fid.inception_score_splits == paper.eval.sample_quality.inception_score_splits
            assert type(paper.model.network) is type(small.model.network)
            assert small.model.network.channels == 16 and small.data.dataset.image_size == 16
            assert small.eval.sample_quality.name == "pixel_fd" and paper.eval.sample_quality.name == "fid"


def bad_manifest(tmp_path: Path, edit) -> Path:
    import yaml

    data = yaml.safe_load(manifest_path("cifar10").read_text())
    edit(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("edit, where, allowed", [
    (lambda d: d.update(colour="red"), "broken.yaml: colour", "protocol"),
    (lambda d: d["protocol"].update(paper_fid="inception"), "broken.yaml: protocol.paper_fid", "clean_fid"),
    (lambda d: d["rows"][0].update(network_preset="unet9000"), "broken.yaml: rows[0].network_preset", "ncsnpp_cifar10"),
    (lambda d: d["rows"][1]["config"]["sde"].update(name="ode"), "broken.yaml: rows[1].config.sde.name", "rve"),
    (lambda d: d["rows"][0]["paper"]["fid"].update(value=None), "broken.yaml: rows[0].paper.fid.note", "not reported here"),
    (lambda d: d["rows"][0]["paper"]["fid"].update(value="2.33x"), "broken.yaml: rows[0].paper.fid.value", "a number"),
    (lambda d: d["rows"][0]["paper"].pop("nelbo_bpd"), "broken.yaml: rows[0].paper.nelbo_bpd", None),
    (lambda d: d["rows"][0]["config"].update(seed=3), "broken.yaml: rows[0].config.seed", "leave it out"),
    (lambda d: d["rows"][0].update(network_overrides={"width": 3}), "rows[0].network_overrides.width", "channels"),
    (lambda d: d["rows"][0]["config"]["data"]["dataset"].update(name="celeba"),
     "broken.yaml: rows[0].config.data.dataset.name", "cifar10"),
    (lambda d: d["rows"][1].update(id="uncsnpp_rve_st"), "broken.yaml: rows[1].id", "unique"),
    (lambda d: d["smoke"].update(steps=0), "broken.yaml: smoke.steps", "an integer >= 1"),
    (lambda d: d["smoke"].update(dequantizer_steps=0), "broken.yaml: smoke.dequantizer_steps", "an integer >= 1"),
    (lambda d: d["rows"][1]["config"]["eval"]["sample_quality"].update(inception_score_splits=0),
     "broken.yaml: rows[1].config.eval.sample_quality.inception_score_splits", "an integer >= 1"),
    (lambda d: d["rows"][1]["paper"]["nll_bpd"].update(dequantization="variational"),
     "broken.yaml: rows[1].paper.nll_bpd.dequantization", "nll_bpd_vardeq"),
    (lambda d: d["rows"][1]["paper"]["nll_bpd_vardeq"].update(dequantization="uniform"),
     "broken.yaml: rows[1].paper.nll_bpd_vardeq.dequantization", "variational"),
    (lambda d: d["rows"][0]["paper"].pop("nll_bpd_vardeq"), "broken.yaml: rows[0].paper.nll_bpd_vardeq", None),
])
def test_manifest_errors_name_file_key_and_allowed_values(tmp_path, edit, where, allowed):
    with pytest.raises(ConfigError) as info:
        load_manifest(bad_manifest(tmp_path, edit))
    message = str(info.value)
    assert str(tmp_path) in message and where in message, message
    if allowed:
        assert allowed in message, message


# --- the compute estimate ----------------------------------------------------------------------

def test_step_timing_and_the_gpu_hours_arithmetic():
    m = load_manifest(manifest_path("cifar10"))
    small = row_config(m, m.rows[1], "smoke", 0, False)  # the mixed objective
    timing = time_training_steps(small, "cpu", batch_size=4, steps=1, warmup=1)
    assert timing["batch_size"] == 4 and timing["seconds_per_step"] > 0
    fake = {"anchor": {"seconds_per_step": 1.0, "batch_size": 2},
            "rows": {r.id: {"seconds_per_step": 2.0, "batch_size": 2, "device": "cpu"} for r in m.rows}}
    est = estimate_rows(m, fake)["uncsnpp_rve_st"]
    images = 1_300_000 * 128
    assert est["device_hours"] == pytest.approx(images * 1.0 / 3600)
    assert est["relative_cost_per_image"] == pytest.approx(2.0)
    assert (est["v100_hours_low"], est["v100_hours_high"]) == pytest.approx((2 * 192, 2 * 384))
    assert "V100-hours" in "\n".join(estimate_lines(m, fake))
