"""Paper vs ours: the cells aggregated over seeds, and the Markdown, CSV and LaTeX tables and the figure."""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from st_sweeps.experiment import ExperimentConfig
from st_sweeps.files import write_text_atomic
from st_sweeps.inception_score import DEFAULT_SPLITS
from st_sweeps.reproduce.gpu_hours import estimate_lines
from st_sweeps.reproduce.manifest import METRICS, Manifest, Row, SMOKE_BANNER
from st_sweeps.reproduce.results import SeedResult, result_path
from st_sweeps.reproduce.scaling import describe_config, splits_text


@dataclass(frozen=True)
class Cell:
    """One (row, metric) line of the table."""

    row: Row
    metric: str
    paper: float | None
    paper_note: str
    paper_dequantization: str | None
    values: tuple[float, ...]  # ours, one per seed (empty when missing)
    missing_reason: str
    n_seeds: int
    comparable: bool = True  # False for figures recorded under a protocol we do not implement

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    @property
    def diff(self) -> float | None:
        m = self.mean
        return None if m is None or self.paper is None or not self.comparable else m - self.paper


def aggregate(row: Row, results: Sequence[SeedResult], seeds: Sequence[int], not_run: str) -> list[Cell]:
    cells = []
    for metric, info in METRICS.items():
        pv = row.paper.get(metric)
        values: tuple[float, ...] = ()
        reason = ""
        if len(results) < len(seeds):
            done = {r.seed for r in results}
            reason = not_run.format(seeds=", ".join(str(s) for s in seeds if s not in done))
        else:
            lacking = [r for r in results if info.key not in r.metrics]
            if lacking:
                r = lacking[0]
                why = r.missing.get(info.key, "the evaluation returned no value")
                reason = why if len(lacking) == len(results) else f"seed {r.seed}: {why}"
            else:
                values = tuple(r.metrics[info.key] for r in results)
        cells.append(Cell(row, metric, pv.value, pv.note, pv.dequantization, values, reason, len(seeds)))
        for extra in row.paper.also_reported:
            if extra.metric == metric:
                cells.append(Cell(row, metric, extra.value, extra.note, extra.dequantization, (),
                                  f"not comparable: {extra.note}", len(seeds), comparable=False))
    return cells


def _fmt(v: float | None, decimals: int) -> str:
    return "" if v is None else f"{v:.{decimals}f}"


def format_paper(v: float) -> str:
    """The reported figure as printed in the paper (2 decimals), exact for every manifest number."""
    text = f"{v:.2f}"
    return text if float(text) == v else repr(v)


def metric_label(cell: Cell) -> str:
    label = METRICS[cell.metric].label
    if METRICS[cell.metric].dequantization is not None:  # the label names it already
        return label
    if cell.paper_dequantization and cell.paper_dequantization != "not_stated":
        label += f", {cell.paper_dequantization} deq."
    return label


def paper_text(cell: Cell) -> str:
    return format_paper(cell.paper) if cell.paper is not None else cell.paper_note


def ours_texts(cell: Cell, scale: str) -> tuple[str, str, str]:
    """(ours, ours − paper, spread) cells, each naming the scale that produced it."""
    tag = f" [{scale}]"
    d = METRICS[cell.metric].decimals
    if not cell.values:
        return f"missing — {short_reason(cell.missing_reason)}", "—", "—"
    mean = _fmt(cell.mean, d) + tag
    diff = "—" if cell.diff is None else f"{cell.diff:+.{d}f}{tag}"
    if len(cell.values) >= 2:
        spread = f"sd {_fmt(cell.std, d)}, {_fmt(min(cell.values), d)}–{_fmt(max(cell.values), d)}{tag}"
    else:
        spread = f"one seed{tag}"
    return mean, diff, spread


def short_reason(reason: str, limit: int = 120) -> str:
    """The first sentence of a long reason (the CSV keeps it whole)."""
    if len(reason) <= limit:
        return reason
    head = reason.split(". ", 1)[0].rstrip(".")
    return f"{head} (details: table.csv, missing_reason)"


def header_lines(manifest: Manifest, scale: str) -> list[str]:
    if scale == "smoke":
        return [f"# {manifest.title}: Soft Truncation — {SMOKE_BANNER}", "",
                f"**{SMOKE_BANNER}.** Every \"ours\" value comes from a tiny network trained for a few steps on "
                f"{manifest.smoke.image_size}×{manifest.smoke.image_size} images; it checks the pipeline end to end "
                "and says nothing about the paper's numbers. Run `--scale paper` for the reproduction."]
    return [f"# {manifest.title}: Soft Truncation — paper scale", "",
            "Ours: the manifest's paper-scale configs, EMA weights at the last step."]


def notes_lines(manifest: Manifest, scale: str, configs: Mapping[str, ExperimentConfig],
                estimate: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Notes", ""]
    lines.append(f"- FID protocol here: torch-fidelity (TF-Inception path), {manifest.protocol.fid_num_samples:,} "
                 f"samples at paper scale, against {manifest.protocol.fid_reference}. The paper's: "
                 + ("TF Inception against the training images — the same protocol."
                    if manifest.protocol.paper_fid == "tf_inception"
                    else "a clean-fid variant in 'clean' mode (PIL bicubic resizing) — a different protocol."))
    splits = sorted({c.eval.sample_quality.inception_score_splits for c in configs.values()
                     if c.eval.sample_quality.fid})
    if splits:
        how = (splits_text(splits[0]) if len(splits) == 1
               else " or ".join(map(str, splits)) + " splits (per row: see its config line)")
        lines.append(f"- Inception Score here: from the logits ('logits_unbiased') of the FID pass, exp of the mean "
                     f"KL over {how} of the samples (eval.sample_quality.inception_score_splits; 1 is the paper's protocol, all "
                     f"samples scored together; torch-fidelity's isc default is {DEFAULT_SPLITS}); missing whenever "
                     "FID is.")
    lines.append("- NLL here: `NLL (bpd)` is uniform dequantization, compared with the paper's uniform (or unstated) "
                 "figure. `NLL, var. deq. (bpd)` is variational dequantization, measured only for rows whose config "
                 "sets eval.likelihood.dequantization = variational: a small q(u|x) of our own (a network with a per-pixel "
                 "logistic output, not the paper's dequantizer) fitted on training images against the frozen EMA "
                 "model's SDE bound, then the ODE bound E_q[−log p + log q]; compared with the paper's variational "
                 "figure.")
    lines.extend(f"- {n}" for n in manifest.protocol.notes)
    lines += ["", "### Rows", ""]
    for row in manifest.rows:
        lines.append(f"- **{row.label}** (`{row.id}`, network preset `{row.network_preset}`)")
        if row.id in configs:
            lines.append(f"  - config at {scale} scale: {describe_config(configs[row.id])}")
        lines.extend(f"  - {n}" for n in row.notes)
    lines += ["", "### Estimated compute at paper scale", ""]
    lines.extend(estimate_lines(manifest, estimate))
    return lines


def markdown_table(manifest: Manifest, scale: str, cells: Sequence[Cell], configs: Mapping[str, ExperimentConfig],
                   estimate: Mapping[str, Any] | None) -> str:
    ours_head = "ours (smoke scale — not a reproduction)" if scale == "smoke" else "ours (paper scale)"
    out = header_lines(manifest, scale) + [""]
    out.append(f"| row | metric | paper | {ours_head} | ours − paper | spread over seeds | seeds | scale |")
    out.append("|---|---|---|---|---|---|---|---|")
    for c in cells:
        ours, diff, spread = ours_texts(c, scale)
        out.append("| " + " | ".join(_md(x) for x in (c.row.label, metric_label(c), paper_text(c), ours, diff, spread,
                                                        str(c.n_seeds), scale)) + " |")
    out.append("")
    out += notes_lines(manifest, scale, configs, estimate)
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


CSV_COLUMNS = ("dataset", "row_id", "row", "metric", "paper", "paper_note", "paper_dequantization", "comparable",
               "scale", "ours_mean", "ours_std", "ours_min", "ours_max", "n_seeds_with_value", "n_seeds",
               "ours_minus_paper", "missing_reason")


def csv_table(manifest: Manifest, scale: str, cells: Sequence[Cell]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in cells:
        num = (lambda v: "" if v is None else repr(float(v)))
        w.writerow([manifest.dataset, c.row.id, c.row.label, c.metric, num(c.paper), c.paper_note,
                    c.paper_dequantization or "", "yes" if c.comparable else "no", scale, num(c.mean), num(c.std),
                    num(min(c.values) if c.values else None), num(max(c.values) if c.values else None),
                    len(c.values), c.n_seeds, num(c.diff), c.missing_reason])
    return buf.getvalue()


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "−": "$-$", "–": "--", "—": "---",
          "×": r"$\times$", "±": r"$\pm$", "ε": r"$\varepsilon$", "τ": r"$\tau$", "σ": r"$\sigma$",
          "≈": r"$\approx$", "…": r"\dots{}", "’": "'", "²": r"\textsuperscript{2}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def latex_table(manifest: Manifest, scale: str, cells: Sequence[Cell]) -> str:
    caption = f"{manifest.title}: Soft Truncation, paper vs.\\ ours"
    if scale == "smoke":
        caption += f" --- {latex_escape(SMOKE_BANNER)}: ours from tiny smoke-scale runs"
    lines = [r"% written by st_sweeps.reproduce; needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             r"\small", r"\begin{tabular}{llllll}", r"\toprule",
             r"Row & Metric & Paper & Ours (" + scale + r" scale) & Ours $-$ paper & Spread \\", r"\midrule"]
    for c in cells:
        ours, diff, spread = ours_texts(c, scale)
        lines.append(" & ".join(latex_escape(x) for x in (c.row.label, metric_label(c), paper_text(c), ours, diff,
                                                          spread)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}",
              rf"\label{{tab:st-{manifest.dataset}-{scale}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_figure(manifest: Manifest, scale: str, cells: Sequence[Cell], path: Path) -> Path:
    """Grouped bars per metric: the paper's figure and ours (bar: mean over seeds; whisker: min–max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if any(c.metric == m and c.comparable and (c.paper is not None or c.values)
                                         for c in cells)]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.2 * max(len(metrics), 1), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = [c for c in cells if c.metric == metric and c.comparable]
        xs = range(len(rows))
        labelled: set[str] = set()

        def label(name: str) -> str | None:  # each series once in the legend
            if name in labelled:
                return None
            labelled.add(name)
            return name

        for i, c in enumerate(rows):
            if c.paper is not None:
                ax.bar(i - 0.2, c.paper, 0.4, color="0.7", hatch="//", label=label("paper"))
            else:
                ax.text(i - 0.2, 0, "not\nreported", ha="center", va="bottom", fontsize=7)
            if c.values:
                lo, hi = min(c.values), max(c.values)
                ax.bar(i + 0.2, c.mean, 0.4, color="tab:orange" if scale == "smoke" else "tab:blue",
                       yerr=[[c.mean - lo], [hi - c.mean]], capsize=3, label=label(f"ours ({scale})"))
            else:
                ax.text(i + 0.2, 0, "missing", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_xticks(list(xs), [c.row.label for c in rows], rotation=20, ha="right", fontsize=7)
        ax.set_title(METRICS[metric].label)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7)
    title = f"{manifest.title}: paper vs. ours ({scale} scale)"
    if scale == "smoke":
        title += f"\n{SMOKE_BANNER}"
    fig.suptitle(title, fontsize=10, color="tab:red" if scale == "smoke" else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


@dataclass(frozen=True)
class TableFiles:
    markdown: Path
    csv: Path
    latex: Path
    figure: Path
    weights: Path | None = None  # the rows' loss weight over noise levels, ours vs official


def write_tables(manifest: Manifest, scale: str, out: Path, cells: Sequence[Cell],
                 configs: Mapping[str, ExperimentConfig], estimate: Mapping[str, Any] | None) -> TableFiles:
    files = TableFiles(out / "table.md", out / "table.csv", out / "table.tex", out / "figure.png")
    write_text_atomic(files.markdown, markdown_table(manifest, scale, cells, configs, estimate))
    write_text_atomic(files.csv, csv_table(manifest, scale, cells))
    write_text_atomic(files.latex, latex_table(manifest, scale, cells))
    write_figure(manifest, scale, cells, files.figure)
    from st_sweeps.parity import manifest_weight_figure

    weights = manifest_weight_figure(manifest, out / "weights.png")
    return dataclasses.replace(files, weights=weights)


def collect_cells(manifest: Manifest, out: Path, seeds: Sequence[int]) -> list[Cell]:
    """The table's lines for every manifest row, from the result files in ``out``."""
    cells: list[Cell] = []
    for row in manifest.rows:
        results = [SeedResult.read(p) for s in seeds if (p := result_path(out, row.id, s)).exists()]
        cells += aggregate(row, results, seeds, "not run yet: no result for seed(s) {seeds}")
    return cells
