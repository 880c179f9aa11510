"""The compute estimate: measured seconds per step of each paper-size network, scaled to GPU-hours."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Mapping

from st_sweeps.config import to_dict
from st_sweeps.experiment import ExperimentConfig, experiment_from_dict
from st_sweeps.reproduce.manifest import Manifest


# The authors' figure (docs/SOURCES.md): CIFAR-10 runs of about 1.3M steps at
# batch 128 took "a few days on 4 V100s" — read here as 2 to 4 days.
AUTHORS_STEPS, AUTHORS_BATCH, AUTHORS_GPUS, AUTHORS_DAYS = 1_300_000, 128, 4, (2.0, 4.0)


ANCHOR_PRESET = "ddpmpp_cifar10"  # the network we assume behind that figure (DDPM++/NCSN++ cost about the same)


def time_training_steps(config: ExperimentConfig, device: str | None = None, batch_size: int | None = None,
                        steps: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Seconds per optimiser step of ``config``'s network and objective at ``batch_size`` on
    ``device``: random inputs of the data set's shape, a τ draw, the loss, backward, Adam. The
    fastest of ``steps`` timed steps (after ``warmup``) counts, so that other load on a shared
    machine inflates the figure as little as possible. Returns {device, batch_size,
    seconds_per_step, seconds_per_step_median, steps_timed}."""
    import torch

    from st_sweeps.networks import ScoreModel
    from st_sweeps.trainer import build_adam, select_device

    dev = select_device(device)
    b = batch_size or config.train.batch_size
    gen = torch.Generator().manual_seed(0)
    net = config.model.network.build(tuple(config.data.dataset.shape), gen)
    model = ScoreModel(net, config.sde, config.model.time_input, eps=config.truncation.eps).to(dev)
    opt = build_adam(model.parameters(), lr=config.optim.lr)  # the trainer's implementation
    x0 = (torch.rand((b, *config.data.dataset.shape), generator=gen) * 2 - 1).to(dev)
    n_ref = config.objective.reference_batch_size
    ref = torch.rand((n_ref, *config.data.dataset.shape), generator=gen).to(dev) if n_ref else None

    def one_step() -> None:
        tau = config.truncation.prior.sample(config.truncation.eps, config.sde.T, gen)
        opt.zero_grad(set_to_none=True)
        loss = config.objective.loss(config.sde, model, x0, tau, gen, reference=ref).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip_norm or math.inf)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    model.train()
    for _ in range(warmup):
        one_step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - start)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} thread(s))"
    return {"device": name, "batch_size": b, "seconds_per_step": min(times),
            "seconds_per_step_median": statistics.median(times), "steps_timed": steps}


def measure_estimate(manifest: Manifest, device: str | None, batch_size: int | None) -> dict[str, Any]:
    """Time every row's paper-size network (and the anchor network of the authors' figure)."""
    from st_sweeps.networks import PRESETS
    from st_sweeps.trainer import select_device

    dev = select_device(device)
    rows: dict[str, Any] = {}
    for row in manifest.rows:
        config = row.experiment(0, manifest.dataset)
        b = batch_size or (config.train.batch_size if dev.type == "cuda" else min(2, config.train.batch_size))
        print(f"timing {manifest.dataset}/{row.id}: paper network, batch {b} on {dev} …", flush=True)
        rows[row.id] = time_training_steps(config, str(dev), b)
    anchor_row = {"data": {"dataset": {"name": "cifar10"}}, "sde": {"name": "vp"},
                  "objective": {"name": "dsm", "weighting": "variance"},
                  "model": {"network": to_dict(PRESETS[ANCHOR_PRESET][0]())}}
    anchor_cfg = experiment_from_dict(anchor_row)
    b = batch_size or (AUTHORS_BATCH if dev.type == "cuda" else 2)
    print(f"timing the anchor network ({ANCHOR_PRESET}, 32 px), batch {b} …", flush=True)
    return {"rows": rows, "anchor": {"preset": ANCHOR_PRESET, **time_training_steps(anchor_cfg, str(dev), b)}}


def estimate_rows(manifest: Manifest, measured: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per row: hours on the measuring device (linear in batch), and V100-hours from the authors'
    figure scaled by images processed and by the measured cost per image relative to the anchor."""
    out: dict[str, dict[str, float]] = {}
    anchor = measured["anchor"]
    anchor_per_image = anchor["seconds_per_step"] / anchor["batch_size"]
    authors_images = AUTHORS_STEPS * AUTHORS_BATCH
    for row in manifest.rows:
        m = measured["rows"].get(row.id)
        if m is None:
            continue
        config = row.experiment(0, manifest.dataset)
        images = config.train.steps * config.train.batch_size
        per_image = m["seconds_per_step"] / m["batch_size"]
        relative = per_image / anchor_per_image
        lo, hi = (AUTHORS_GPUS * 24 * d * images / authors_images * relative for d in AUTHORS_DAYS)
        out[row.id] = {"device_hours": images * per_image / 3600, "relative_cost_per_image": relative,
                       "v100_hours_low": lo, "v100_hours_high": hi}
    return out


def estimate_lines(manifest: Manifest, measured: Mapping[str, Any] | None) -> list[str]:
    if not measured:
        return ["- Not measured in this output folder: run with `--estimate` (times a few training steps of each "
                "paper-size network on this machine) to add it."]
    est = estimate_rows(manifest, measured)
    any_row = next(iter(measured["rows"].values()))
    lines = [f"- Measured on {any_row['device']}: the fastest of a few optimiser steps of each paper-size network "
             f"at a reduced batch, scaled linearly to the paper's batch and steps (assumption: time grows linearly with batch; "
             "accelerators are usually faster per image at larger batches, so this overestimates there).",
             f"- V100-hours: the authors' figure (about {AUTHORS_STEPS:,} steps at batch {AUTHORS_BATCH} in 2–4 days "
             f"on {AUTHORS_GPUS} V100s, i.e. {AUTHORS_GPUS * 24 * AUTHORS_DAYS[0]:.0f}–"
             f"{AUTHORS_GPUS * 24 * AUTHORS_DAYS[1]:.0f} V100-hours, assumed for the `{ANCHOR_PRESET}` network at "
             "32 px) scaled by images processed and by each network's measured cost per image relative to that "
             "network (assumption: relative costs carry over from the measuring device to a V100).", ""]
    lines.append("| row | paper batch × steps | measured s/step (batch) | hours on the measuring device | "
                 "cost per image vs. anchor | est. V100-hours |")
    lines.append("|---|---|---|---|---|---|")
    for row in manifest.rows:
        if row.id not in est:
            continue
        e, m = est[row.id], measured["rows"][row.id]
        config = row.experiment(0, manifest.dataset)
        lines.append(f"| {row.label} | {config.train.batch_size} × {config.train.steps:,} | "
                     f"{m['seconds_per_step']:.2f} ({m['batch_size']}) | {e['device_hours']:,.0f} | "
                     f"{e['relative_cost_per_image']:.2f}× | {e['v100_hours_low']:,.0f}–{e['v100_hours_high']:,.0f} |")
    return lines
