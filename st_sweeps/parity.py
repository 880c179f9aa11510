"""Parity records: what the official Soft Truncation code fixes for each reproduction row.

``reproductions/parity/<dataset>.yaml`` holds, per manifest row, every setting of the official
config with its value, its source (file and line in Kim-Dongjun/Soft-Truncation), the key of our
resolved experiment config and the value it must have there, and a reason wherever the two differ
on purpose (``deviation``). ``official_loss`` restates the flags the official training loss is
built from, as that code actually runs them, so that tests and the weight figure can rebuild the
official objective without its code. Facts are transcribed; none of its code is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import Tensor

from st_sweeps.config import load_dataclass, read_yaml, to_dict
from st_sweeps.errors import ConfigError, require

PARITY_DIR = Path(__file__).resolve().parents[1] / "reproductions" / "parity"
_MISSING = object()


@dataclass(frozen=True)
class OfficialLoss:
    """The flags of the official training loss (losses.py, sde_lib.py) for one row."""

    sde: Literal["vpsde", "subvpsde", "vesde", "reciprocal_vesde"]
    eps: float
    st: bool
    importance_sampling: bool
    likelihood_weighting: bool
    reduce_mean: bool
    mixed: bool = False
    k: float | None = None
    beta_min: float | None = None
    beta_max: float | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    eta: float | None = None
    ddpm_weight: float | None = None
    balanced: bool | None = None
    reconstruction_loss: bool = False
    num_micro_batch: int = 1

    def __post_init__(self) -> None:
        if self.mixed:
            require(self.ddpm_weight is not None and self.balanced is not None, "ddpm_weight",
                    "a mixed loss needs ddpm_weight and balanced", "numbers / booleans")
        if self.st:
            require(self.k is not None, "k", "st needs k", "a number")


@dataclass(frozen=True)
class Setting:
    name: str
    official: Any
    source: str
    key: str | None
    ours: Any = None
    deviation: str | None = None


@dataclass(frozen=True)
class RowRecord:
    """One row. Where the row follows the paper rather than the official config (for example an
    SDE the released config does not use), ``paper_loss`` holds the loss flags of the variant we
    train and ``official_variant`` the ``--set`` overrides that turn the row into what the
    official config trains, whose flags stay in ``official_loss``."""

    official_config: str
    official_loss: OfficialLoss
    settings: tuple[Setting, ...]
    paper_loss: OfficialLoss | None = None
    official_variant: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require((self.paper_loss is None) == (not self.official_variant), "official_variant",
                "paper_loss and official_variant go together", "both or neither")

    @property
    def trained_loss(self) -> OfficialLoss:
        """The flags of the loss the row trains as it stands."""
        return self.paper_loss or self.official_loss


@dataclass(frozen=True)
class ParityRecord:
    official: dict[str, Any]
    rows: dict[str, RowRecord] = field(default_factory=dict)


def record_path(dataset: str) -> Path:
    return PARITY_DIR / f"{dataset}.yaml"


def load_record(dataset_or_path: str | Path) -> ParityRecord:
    """Strictly, like the manifests: unknown keys and bad values name the file and key."""
    path = Path(dataset_or_path)
    if path.suffix != ".yaml":
        path = record_path(str(dataset_or_path))
    data = read_yaml(path)
    try:
        rows = data.get("rows") or {}
        require(isinstance(rows, dict), "rows", f"got {type(rows).__name__}", "a mapping of row id to record")
        built = {}
        for row_id, row in rows.items():
            try:
                built[row_id] = load_dataclass(RowRecord, row)
            except ConfigError as e:
                raise e.at(f"rows.{row_id}") from None
        return ParityRecord(official=load_dataclass(ParityRecord, {**data, "rows": {}}).official, rows=built)
    except ConfigError as e:
        raise e.at(str(path)) from None


def dotted_get(tree: Mapping[str, Any], key: str) -> Any:
    """``tree['a']['b']`` for ``a.b``; a registry entry given by its bare name reads as ``{name: …}``."""
    node: Any = tree
    for part in key.split("."):
        if isinstance(node, str) and part == "name":
            return node
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def mismatches(row: RowRecord, config: Any) -> list[str]:
    """Every setting whose key, in the resolved experiment ``config``, does not hold ``ours``."""
    tree = to_dict(config)
    out = []
    for s in row.settings:
        if s.key is None:
            continue
        got = dotted_get(tree, s.key)
        if got is _MISSING:
            out.append(f"{s.name}: no key {s.key!r} in the resolved config")
        elif not _same(got, s.ours):
            out.append(f"{s.name}: {s.key} is {got!r}, the record says {s.ours!r}")
    return out


# ------------------------------------------------------------------------ the official weight curve
def official_sampler_density(loss: OfficialLoss, sde, tau: float, t: Tensor, *,  # noqa: ANN001
                             importance: bool) -> tuple[Tensor, Tensor]:
    """(p(t), Z) of the official ``get_diffusion_time``: RVE draws 1/t uniformly and returns Z = 1;
    VP/VE with importance sampling draw t ∝ g²/σ² and return its normaliser; otherwise uniform t
    with Z = 1. ``sde`` supplies σ and g² (its own parity is the settings' business)."""
    one = torch.ones_like(t)
    if loss.sde == "reciprocal_vesde":
        return 1.0 / (t * t * (1.0 / tau - 1.0 / sde.T)), one
    if importance:
        ends = sde.neg_log_snr(torch.tensor([tau, sde.T], dtype=torch.float64))
        z = float(ends[1] - ends[0])
        return sde.g2(t) / sde.std(t) ** 2 / z, one * z
    return one / (sde.T - tau), one


def official_epsilon_weight(loss: OfficialLoss, sde, tau: float, t: Tensor, dims: int, *,  # noqa: ANN001
                            importance: bool) -> Tensor:
    """The official factor on ‖σ s_θ + z‖² of one example: 0.5 · Z · reduce, reduce = mean (1/D)
    or 0.5 · sum; times g²/σ² under likelihood weighting without importance sampling."""
    _, z = official_sampler_density(loss, sde, tau, t, importance=importance)
    reduce = 1.0 / dims if loss.reduce_mean else 0.5
    w = 0.5 * z * reduce
    if not importance and loss.likelihood_weighting:
        w = w * sde.g2(t) / sde.std(t) ** 2
    return w


def official_log_snr_density(loss: OfficialLoss, sde, tau: float, t: Tensor, dims: int = 1) -> Tensor:  # noqa: ANN001
    """The official curve w(ρ) = p(t) c(t) σ²/g² (st_sweeps.effective_weight), both halves for mixed."""
    def one(importance: bool) -> Tensor:
        p, _ = official_sampler_density(loss, sde, tau, t, importance=importance)
        c = official_epsilon_weight(loss, sde, tau, t, dims, importance=importance)
        return p * c * sde.std(t) ** 2 / sde.g2(t)

    if loss.mixed:
        return one(True) + float(loss.ddpm_weight or 0.0) * one(False)
    return one(loss.importance_sampling)


def write_weight_figure(title: str, curves: Sequence[tuple[str, Any, OfficialLoss, Any]], path: Path) -> Path:
    """One panel per row: our ε-loss weight over −log SNR and the official one, each scaled to unit
    area (the two train the same loss iff the curves coincide). ``curves``: (label, objective,
    official loss flags, sde) per row; τ = the official ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from st_sweeps.effective_weight import log_snr_density, log_snr_grid

    n = max(len(curves), 1)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (label, objective, loss, sde) in zip(axes.flat, curves):
        t, rho = log_snr_grid(sde, loss.eps)
        top, bottom = 0.0, float("inf")
        for name, w, style in (("ours", log_snr_density(objective, sde, loss.eps, t), "-"),
                               ("official", official_log_snr_density(loss, sde, loss.eps, t), "--")):
            w = w / torch.trapezoid(w, rho)
            ax.plot(rho.numpy(), w.numpy(), style, label=name)
            top, bottom = max(top, float(w.max())), min(bottom, float(w.min()))
        if top > 20 * bottom > 0:  # a log axis only where the weight spans decades
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1.25 * top)
        ax.set_xlabel("−log SNR")
        ax.set_ylabel("ε-loss weight density (unit area)")
        ax.set_title(label, fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: where each row's training loss puts its weight (τ = ε)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def manifest_weight_figure(manifest: Any, path: Path) -> Path | None:
    """``write_weight_figure`` for every row of a reproduction manifest that has a parity record
    (at paper scale: the rows' own objectives); None when the data set has no record."""
    if not record_path(manifest.dataset).exists():
        return None
    record = load_record(manifest.dataset)
    curves = []
    for row in manifest.rows:
        if row.id in record.rows:
            config = row.experiment(seed=0, dataset_name=manifest.dataset)
            curves.append((row.label, config.objective, record.rows[row.id].trained_loss, config.sde))
    return write_weight_figure(manifest.title, curves, path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m st_sweeps.parity [DATASET ...]``: write reproductions/parity/<dataset>_weights.png."""
    import argparse

    from st_sweeps.reproduce.manifest import DATASETS, load_manifest, manifest_path

    parser = argparse.ArgumentParser(prog="python -m st_sweeps.parity", description=main.__doc__)
    parser.add_argument("datasets", nargs="*", metavar="DATASET", default=list(DATASETS),
                        help=f"any of {', '.join(DATASETS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.datasets) - set(DATASETS))
    if unknown:
        parser.error(f"unknown data set(s) {', '.join(unknown)}; allowed: {', '.join(DATASETS)}")
    for dataset in args.datasets:
        out = manifest_weight_figure(load_manifest(manifest_path(dataset)), PARITY_DIR / f"{dataset}_weights.png")
        print(f"{dataset}: {out or 'no parity record'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
