"""Training speed: ``Trainer`` against a plain, hand-written DSM loop on the same network and batch.

Baseline (the "reference step"): index a batch, ``to_model_space`` (dequantize, centre, flip where
the data set flips), sample t ~ U[ε, T] and z, perturb, the σ²-weighted DSM loss, backward, Adam
step — on the same ``ScoreModel`` (DDPM++ U-Net) built from the same config. No EMA, no loss-by-time
diagnostics, no learning-rate schedule, no gradient clipping, no logging, no checkpoints.

Trainer arms, on the same config (``dsm`` with ``variance`` weighting, hence the same t law):

- ``Trainer.train_step``: one optimiser step as the trainer does it — (seed, step, chunk)-keyed
  generators, data order by position, lr warm-up, gradient clipping, EMA, loss-by-time bins;
- ``Trainer.fit``: the whole loop at the default log cadence (metrics every 10 steps to
  ``metrics.jsonl``), with one evaluation at the end whose model evaluation is stubbed out
  (its cost is the evaluation's, not the trainer's) but whose checkpoint and loss-by-time
  artifacts are written. That event is timed separately and amortised at the default cadence
  (one evaluation + checkpoint per ``train.steps`` = 1000 steps).

The arms run interleaved in rotating order, after a warm-up round; figures are medians.
Peak memory: each arm runs in its own subprocess, which reports its peak RSS above the RSS it had
once the data were loaded (so the trainer's EMA copy and bookkeeping count). On CUDA the same
script also compares bf16 + channels_last + torch.compile with fp32 and computes the model FLOP
utilisation (FLOPs from ``torch.utils.flop_counter``); that path is skipped on a CPU-only machine.

    python -m benchmarks.train_speed --quick
    python -m benchmarks.train_speed --quick --append      # add the section to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.common import (Section, add_common_args, command_line, emit, fmt, interleaved, median, mode_of,
                               pct, peak_rss_mib, python_env, rel_spread, reset_peak_rss, rss_mib, set_threads)

MODULE = "benchmarks.train_speed"
DEFAULT_STEPS = 1000  # TrainConfig().steps: with eval_every_steps = 0, one evaluation + checkpoint per run


# ----------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Size:
    name: str
    label: str
    dataset: dict[str, Any]
    network: dict[str, Any]
    batch: int
    steps: dict[str, int]  # timed steps per block, by mode
    reps: dict[str, int]  # interleaved repetitions, by mode
    fake_cifar_images: int = 0  # > 0: write a CIFAR-10-format data root with this many random images


SIZES = {
    "tiny": Size("tiny", "tiny U-Net, digits 1×8×8", {"name": "digits"},
                 {"name": "ddpmpp", "channels": 16, "channel_multipliers": [1, 2], "blocks_per_resolution": 1,
                  "attention_resolutions": [], "dropout": 0.0},
                 batch=32, steps={"smoke": 3, "quick": 60, "full": 200}, reps={"smoke": 1, "quick": 7, "full": 9}),
    "small": Size("small", "small U-Net, CIFAR-shaped 3×32×32", {"name": "cifar10"},
                  {"name": "ddpmpp", "channels": 32, "channel_multipliers": [1, 2, 2], "blocks_per_resolution": 1,
                   "attention_resolutions": [8], "dropout": 0.1},
                  batch=16, steps={"smoke": 2, "quick": 10, "full": 30}, reps={"smoke": 1, "quick": 5, "full": 7},
                  fake_cifar_images=50_000),
}
SIZES_BY_MODE = {"smoke": ["tiny"], "quick": ["tiny", "small"], "full": ["tiny", "small"]}


def experiment_dict(size: Size, steps: int, **train: Any) -> dict[str, Any]:
    return {
        "name": f"bench-{size.name}", "seed": 0,
        "data": {"dataset": size.dataset},
        "sde": {"name": "vp"},
        "truncation": {"eps": 1e-5, "prior": {"name": "fixed"}},
        "objective": {"name": "dsm", "weighting": "variance"},
        "model": {"network": size.network},
        "train": {"steps": steps, "batch_size": size.batch, **train},
    }


def write_fake_cifar(root: Path, n_train: int, n_test: int = 100, seed: int = 0) -> Path:
    """Random uint8 images in the official CIFAR-10 python layout (five train batches, one test)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-n_train // 5)
    for i in range(5):
        n = min(per, n_train - i * per)
        (folder / f"data_batch_{i + 1}").write_bytes(
            pickle.dumps({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)}))
    return root


# ----------------------------------------------------------------------------------- the arms
def make_trainer_class() -> type:
    """A Trainer whose data come from a cache shared by the repetitions (loading is setup, not
    training) and that times its evaluation and checkpoint events."""
    from st_sweeps.trainer import Trainer

    class BenchTrainer(Trainer):
        data_cache: dict[str, Any] = {}

        def _load_data(self, data_root: Any) -> Any:
            key = f"{self.config.data.dataset!r}@{data_root}"
            if key not in self.data_cache:
                self.data_cache[key] = super()._load_data(data_root)
            return self.data_cache[key]

        def evaluate(self) -> dict[str, float]:
            t0 = time.perf_counter()
            try:
                return super().evaluate()
            finally:
                self.event_seconds = getattr(self, "event_seconds", 0.0) + time.perf_counter() - t0

        def save_checkpoint(self) -> Path | None:
            t0 = time.perf_counter()
            try:
                return super().save_checkpoint()
            finally:
                self.event_seconds = getattr(self, "event_seconds", 0.0) + time.perf_counter() - t0

    return BenchTrainer


def no_evaluation(*args: Any, **kwargs: Any) -> dict[str, float]:
    return {}


class ReferenceLoop:
    """The plain DSM loop: what a minimal hand-written training script does per step."""

    def __init__(self, config: Any, train_images: torch.Tensor, device: torch.device):
        from st_sweeps.networks import ScoreModel
        from st_sweeps.seeding import generator

        self.sde, self.eps, self.device = config.sde, config.truncation.eps, device
        net = config.model.network.build(tuple(train_images.shape[1:]), generator=generator(config.seed, "init"))
        self.model = ScoreModel(net, config.sde, config.model.time_input, eps=self.eps).to(device)
        o = config.optim
        self.opt = torch.optim.Adam(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps)
        self.images = train_images
        self.flip = bool(getattr(config.data.dataset, "random_flip", False))
        self.batch = config.train.batch_size
        self.gen = torch.Generator().manual_seed(0)
        self.model.train()

    def step(self) -> float:
        from st_sweeps.data.transforms import to_model_space

        g, b = self.gen, self.batch
        idx = torch.randint(len(self.images), (b,), generator=g)
        x0 = to_model_space(self.images[idx], g, centered=True, flip=self.flip, dequantize=True).to(self.device)
        t = self.eps + (self.sde.T - self.eps) * torch.rand(b, generator=g).to(self.device)
        z = torch.randn(x0.shape, generator=g).to(self.device)
        mu, sigma = self.sde.mean_scale(t)[:, None, None, None], self.sde.std(t)[:, None, None, None]
        score = self.model(mu * x0 + sigma * z, t)
        loss = 0.5 * (sigma ** 2 * (score + z / sigma) ** 2).flatten(1).sum(1).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


@dataclass
class Timings:
    blocks: dict[str, list[float]]
    events: list[float] = field(default_factory=list)
    steps: int = 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_size(size: Size, mode: str, data_root: Path | None, device: torch.device) -> Timings:
    from st_sweeps.experiment import experiment_from_dict

    steps, reps = size.steps[mode], size.reps[mode]
    warmup = 1 if mode != "smoke" else 0
    Bench = make_trainer_class()
    # the train_step arm: one trainer that keeps stepping through the repetitions
    work = Path(tempfile.mkdtemp(prefix="st_bench_speed_"))
    config = experiment_dict(size, DEFAULT_STEPS)
    stepper = Bench(experiment_from_dict(config), work / "stepper", device=str(device), data_root=data_root,
                    progress=False, evaluate_fn=no_evaluation)
    reference = ReferenceLoop(stepper.config, stepper.train_data.images, device)
    events: list[float] = []
    runs = [0]

    def reference_block() -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            reference.step()
        sync(device)
        return time.perf_counter() - t0

    def step_block() -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            stepper.train_step()
        sync(device)
        return time.perf_counter() - t0

    def fit_block() -> float:
        runs[0] += 1
        trainer = Bench(experiment_from_dict(experiment_dict(size, steps)), work / f"fit{runs[0]}",
                        device=str(device), data_root=data_root, progress=False, evaluate_fn=no_evaluation)
        sync(device)
        t0 = time.perf_counter()
        trainer.fit()
        sync(device)
        total = time.perf_counter() - t0
        events.append(getattr(trainer, "event_seconds", 0.0))
        return total

    blocks = interleaved({"reference": reference_block, "train_step": step_block, "fit": fit_block},
                         reps=reps, warmup=warmup)
    return Timings(blocks, events[warmup:], steps)


# ----------------------------------------------------------------------------------- memory probes
def memory_probe(size_name: str, arm: str, steps: int, data_root: str | None) -> dict[str, float]:
    """In a fresh process: peak RSS above the data-loaded baseline over ``steps`` steps of one arm."""
    from st_sweeps.experiment import experiment_from_dict

    size = SIZES[size_name]
    Bench = make_trainer_class()
    config = experiment_from_dict(experiment_dict(size, steps))
    root = Path(data_root) if data_root else None
    Bench.data_cache[f"{config.data.dataset!r}@{root}"] = config.data.dataset.load(root, "train"), \
        config.data.dataset.load(root, "test")
    base = rss_mib()
    reset_peak_rss()
    with tempfile.TemporaryDirectory(prefix="st_bench_mem_") as tmp:
        if arm == "reference":
            train_images = Bench.data_cache[f"{config.data.dataset!r}@{root}"][0].images
            loop = ReferenceLoop(config, train_images, torch.device("cpu"))
            for _ in range(steps):
                loop.step()
        else:
            Bench(config, tmp, device="cpu", data_root=root, progress=False, evaluate_fn=no_evaluation).fit()
    return {"baseline_mib": base or float("nan"), "peak_mib": peak_rss_mib() or float("nan")}


def run_probe(size: Size, arm: str, steps: int, data_root: Path | None, threads: int) -> float:
    cmd = [sys.executable, "-m", MODULE, "--probe", f"{size.name}:{arm}:{steps}", "--threads", str(threads)]
    if data_root:
        cmd += ["--data-root", str(data_root)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=python_env(), timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {size.name}:{arm} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["peak_mib"] - result["baseline_mib"]


# ----------------------------------------------------------------------------------- CUDA only
PEAK_TFLOPS = {  # dense tensor-core bf16 and plain fp32 peaks from the vendors' data sheets
    "H100": {"bf16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp32": 19.5}, "L4": {"bf16": 121.0, "fp32": 30.3},
}


def step_flops(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> int:
    """FLOPs of one forward + backward of the score model on a batch (flop_counter's count)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(x, t).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def cuda_rows(size: Size, mode: str, data_root: Path | None, peak_tflops: float | None) -> list[list[str]]:
    """fp32 against bf16 + channels_last + compile, steps/s, peak memory and MFU (CUDA only)."""
    from st_sweeps.experiment import experiment_from_dict

    device = torch.device("cuda")
    Bench = make_trainer_class()
    steps = size.steps[mode] * 5
    name = torch.cuda.get_device_name(0)
    peaks = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    rows = []
    base_rate = None
    for label, train in (("fp32", {}), ("bf16 + channels_last + compile",
                                        {"precision": "bf16", "channels_last": True, "compile": True})):
        with tempfile.TemporaryDirectory(prefix="st_bench_cuda_") as tmp:
            trainer = Bench(experiment_from_dict(experiment_dict(size, DEFAULT_STEPS, **train)), tmp, device="cuda",
                            data_root=data_root, progress=False, evaluate_fn=no_evaluation)
            for _ in range(3):  # warm-up (and compilation)
                trainer.train_step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            torch.cuda.synchronize()
            rate = steps / (time.perf_counter() - t0)
            mem = torch.cuda.max_memory_allocated() / 2**20
            x0, _, _ = trainer._chunk_batch(0, 0)
            t = torch.rand(x0.shape[0], device=device) * 0.999 + 1e-3
            flops = step_flops(trainer.model, x0, t)  # the eager model: compile does not change the count
        base_rate = base_rate or rate
        peak = peak_tflops or (peaks["bf16" if "bf16" in label else "fp32"] if peaks else None)
        achieved = flops * rate / 1e12
        rows.append([size.label, label, fmt(rate), fmt(rate * size.batch), f"{rate / base_rate:.2f}×", fmt(mem),
                     fmt(flops / 1e9), fmt(achieved), f"{100 * achieved / peak:.1f} %" if peak else "–"])
    return rows


# ----------------------------------------------------------------------------------- report
def run(args: argparse.Namespace) -> Section:
    mode = mode_of(args)
    set_threads(args.threads)
    device = torch.device("cpu")
    rows, mem_rows, notes = [], [], []
    with tempfile.TemporaryDirectory(prefix="st_bench_data_") as tmp:
        for name in args.sizes or SIZES_BY_MODE[mode]:
            size = SIZES[name]
            data_root = None
            if size.fake_cifar_images:
                n = size.fake_cifar_images if mode != "smoke" else 1000
                data_root = write_fake_cifar(Path(tmp) / name, n)
            timing = time_size(size, mode, data_root, device)
            ref = median(timing.blocks["reference"]) / timing.steps
            step = median(timing.blocks["train_step"]) / timing.steps
            fit_total = timing.blocks["fit"]
            event = median(timing.events) if timing.events else 0.0
            fit_loop = median(t - e for t, e in zip(fit_total, timing.events)) / timing.steps
            amortised = (fit_loop * DEFAULT_STEPS + event) / DEFAULT_STEPS
            for label, per_step, spread in (
                    ("reference loop", ref, rel_spread(timing.blocks["reference"])),
                    ("Trainer.train_step", step, rel_spread(timing.blocks["train_step"])),
                    ("Trainer.fit (log every 10)", fit_loop, rel_spread(fit_total))):
                over = None if label == "reference loop" else 100 * (per_step / ref - 1)
                rows.append([size.label, size.batch, label, fmt(1e3 * per_step), fmt(1 / per_step),
                             fmt(size.batch / per_step), pct(over), f"{100 * spread:.0f} %"])
            rows.append([size.label, size.batch, f"Trainer.fit + 1 eval/ckpt per {DEFAULT_STEPS} steps",
                         fmt(1e3 * amortised), fmt(1 / amortised), fmt(size.batch / amortised),
                         pct(100 * (amortised / ref - 1)), "–"])
            notes.append(f"- {size.label}: {timing.steps} steps per block, {len(timing.blocks['reference'])} "
                         f"interleaved repetitions; one evaluation event (checkpoint + loss-by-time JSON/PNG, "
                         f"model evaluation stubbed) took {fmt(1e3 * event)} ms.")
            probe_steps = 2 if mode == "smoke" else 5
            ref_mem = run_probe(size, "reference", probe_steps, data_root, args.threads)
            tr_mem = run_probe(size, "trainer", probe_steps, data_root, args.threads)
            mem_rows.append([size.label, fmt(ref_mem), fmt(tr_mem), f"{tr_mem / ref_mem:.2f}×" if ref_mem > 0 else "–"])
            if torch.cuda.is_available():
                notes.append("- CUDA: " + markdown_cuda(cuda_rows(size, mode, data_root, args.peak_tflops)))
    from benchmarks.common import markdown_table

    table = markdown_table(["model, data", "batch", "arm", "ms/step", "steps/s", "images/s",
                            "overhead vs reference", "spread (max−min)/median"], rows)
    table += "\n\nPeak memory (RSS above the data-loaded process, over a short run in a fresh process):\n\n"
    table += markdown_table(["model, data", "reference loop (MiB)", "Trainer.fit (MiB)", "ratio"], mem_rows)
    if not torch.cuda.is_available():
        notes.append("- No CUDA device here: the bf16 + channels_last + torch.compile against fp32 comparison and the "
                     "model FLOP utilisation (torch.utils.flop_counter) run only on a GPU machine and were not "
                     "measured.")
    return Section("Training speed: Trainer vs a plain DSM loop", command_line(MODULE, args.argv), args.threads,
                   table, notes, mode)


def markdown_cuda(rows: list[list[str]]) -> str:
    from benchmarks.common import markdown_table

    return "\n\n" + markdown_table(["model, data", "precision", "steps/s", "images/s", "speed-up", "peak MiB",
                                    "GFLOP/step", "TFLOP/s", "MFU"], rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="CUDA only: the device's peak TFLOP/s for MFU (default: from a table of known GPUs)")
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), help="only these model sizes (default: by mode)")
    p.add_argument("--probe", help=argparse.SUPPRESS)  # internal: SIZE:ARM:STEPS memory probe
    p.add_argument("--data-root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv
    if args.probe:
        set_threads(args.threads)
        size, arm, steps = args.probe.split(":")
        print(json.dumps(memory_probe(size, arm, int(steps), args.data_root)))
        return 0
    emit(run(args), args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
