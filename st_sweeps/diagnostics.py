"""Loss by diffusion time: the mean per-example loss in log-spaced bins of t over [ε, T].

This is the figure that motivates Soft Truncation: with likelihood weighting the loss (and its
variance) is dominated by the smallest diffusion times.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch


class LossByTime:
    # examples held before they are binned: binning is a handful of small tensor operations (and
    # on a GPU a copy to the host) whatever the count, so it is done in batches, off the step
    FLUSH_EVERY = 65536

    def __init__(self, eps: float, T: float, bins: int):
        self.edges = torch.logspace(math.log10(eps), math.log10(T), bins + 1, dtype=torch.float64)
        self.sums = torch.zeros(bins, dtype=torch.float64)
        self.sq_sums = torch.zeros(bins, dtype=torch.float64)
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_examples = 0

    def add(self, t: torch.Tensor, loss: torch.Tensor) -> None:
        """t, loss: [B] (one loss per example, at its diffusion time). Binned in order, in
        batches: every reading (``table``, ``state_dict``, ``save``) sees all that was added."""
        t, loss = t.detach().reshape(-1), loss.detach().reshape(-1)
        if t.numel() != loss.numel():  # objectives that split a batch report one t per example
            return
        self._pending.append((t, loss))
        self._pending_examples += t.numel()
        if self._pending_examples >= self.FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        # float64 on the host, in the order added: the same sums as binning each batch at once
        t = torch.cat([a.to("cpu", torch.float64) for a, _ in self._pending])
        loss = torch.cat([b.to("cpu", torch.float64) for _, b in self._pending])
        self._pending.clear()
        self._pending_examples = 0
        idx = torch.bucketize(t, self.edges[1:-1])
        ok = torch.isfinite(loss)
        if not bool(ok.all()):
            idx, loss = idx[ok], loss[ok]
        self.sums.index_add_(0, idx, loss)
        self.sq_sums.index_add_(0, idx, loss ** 2)
        self.counts.index_add_(0, idx, torch.ones_like(loss))

    def table(self) -> list[dict[str, Any]]:
        self._flush()
        rows = []
        for i in range(len(self.counts)):
            n = float(self.counts[i])
            mean = float(self.sums[i] / n) if n else None
            var = float(self.sq_sums[i] / n - (self.sums[i] / n) ** 2) if n > 1 else None
            rows.append({"t_low": float(self.edges[i]), "t_high": float(self.edges[i + 1]), "count": int(n),
                         "mean_loss": mean, "std_loss": math.sqrt(max(var, 0.0)) if var is not None else None})
        return rows

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._flush()
        return {"sums": self.sums.clone(), "sq_sums": self.sq_sums.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._pending.clear()
        self._pending_examples = 0
        self.sums.copy_(state["sums"])
        self.sq_sums.copy_(state["sq_sums"])
        self.counts.copy_(state["counts"])

    def reset(self) -> None:
        self._pending.clear()
        self._pending_examples = 0
        for t in (self.sums, self.sq_sums, self.counts):
            t.zero_()

    def save(self, directory: str | Path, step: int, tracker: Any = None) -> Path | None:
        """Write the table (JSON) and its plot (PNG); log both as artifacts; start a new window."""
        if tracker is None:
            self.reset()
            return None
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        rows = self.table()
        data_path = directory / f"loss_by_time_step_{step:09d}.json"
        data_path.write_text(json.dumps({"step": step, "bins": rows}, indent=1))
        png = directory / f"loss_by_time_step_{step:09d}.png"
        plot_loss_by_time(rows, png, title=f"loss by diffusion time (step {step})")
        tracker.log_artifact(data_path, "diagnostics")
        tracker.log_artifact(png, "diagnostics")
        self.reset()
        return png


def plot_loss_by_time(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mids = [math.sqrt(r["t_low"] * r["t_high"]) for r in rows if r["mean_loss"] is not None]
    means = [r["mean_loss"] for r in rows if r["mean_loss"] is not None]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    ax.plot(mids, means, marker="o")
    ax.set_xscale("log")
    if means and min(means) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("diffusion time t")
    ax.set_ylabel("mean per-example loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
