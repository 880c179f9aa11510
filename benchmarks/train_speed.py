"""Training speed: ``Trainer`` against a plain, hand-written DSM loop on the same network and batch.

Baseline (the "reference step"): index a batch, ``to_model_space`` (dequantize, centre, flip where
the data set flips), sample t ~ U[ε, T] and z, perturb, the σ²-weighted DSM loss, backward, Adam
step — on the same ``ScoreModel`` (DDPM++ U-Net) built from the same config, with the same Adam
implementation as the trainer (``build_adam``: PyTorch's fused kernel where the device has one), so
that the overhead compares like with like. No EMA, no loss-by-time diagnostics, no learning-rate
schedule, no gradient clipping, no logging, no checkpoints. A second reference row runs the same
loop with ``torch.optim.Adam``'s default implementation (on a CPU a Python loop over the tensors),
what a hand-written script gets without asking: the difference is what the fused optimizer saves.

Trainer arms, on the same config (``dsm`` with ``variance`` weighting, hence the same t law, and
no gradient clipping, which the reference does not do either):

- ``Trainer.train_step``: one optimiser step as the trainer does it — (seed, step, chunk)-keyed
  generators, data order by position, lr warm-up, the gradient norm (logged, and checked for
  divergence), EMA, loss-by-time bins;
- ``Trainer.fit``: blocks of steps of one long run at the default log cadence (metrics every 10
  steps to ``metrics.jsonl``); ``fit`` is left after each block and entered again, and its start-up
  (run files, resume check) is subtracted;
- ``Trainer.fit`` with its once-per-run work spread over a run of ``train.steps`` = 1000 steps, the
  default (evaluation and checkpoint only at the end): the work is timed on a fresh short run in
  every round — config file and params, the resume check, the final checkpoint and loss-by-time
  JSON/PNG (the model evaluation itself is stubbed out: it is the evaluation's cost, not the
  trainer's), and what the run's first step costs beyond a later one (optimizer state, first calls);
- ``Trainer.train_step`` with gradient clipping at 1.0 (the default recipe), for its cost.

The arms run in short blocks, interleaved in rotating order over many rounds after a warm-up
round. Times are medians; an overhead is the median over rounds of (arm / reference in the same
round), which cancels a shared machine's swings of load better than a ratio of medians, shown with
the quartiles of those ratios; and, as a second estimate, the ratio of the fastest blocks (noise
from neighbours only ever slows a block down). Wall and CPU time (this process) are both
reported: with one thread the CPU time leaves out the time a neighbour held the core, but also
fsync waits.

Peak memory: each arm runs in its own subprocess, which reports its peak RSS above the RSS it had
once torch was warmed up and the data loaded (so the trainer's EMA copy and bookkeeping count).
On CUDA the same script also compares bf16 + channels_last + torch.compile with fp32 and computes
the model FLOP utilisation (FLOPs from ``torch.utils.flop_counter``); that path is skipped on a
CPU-only machine.

    python -m benchmarks.train_speed --quick
    python -m benchmarks.train_speed --quick --append      # add the section to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.common import (Elapsed, Section, Stopwatch, add_common_args, command_line, emit, fmt, interleaved,
                               markdown_table, median, mode_of, pct, peak_rss_mib, python_env,
                               reset_peak_rss, rss_mib, set_threads)

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
    pairs: dict[str, int] = field(default_factory=dict)  # alternating single reference/trainer steps, by mode


SIZES = {
    "tiny": Size("tiny", "tiny U-Net, digits 1×8×8", {"name": "digits"},
                 {"name": "ddpmpp", "channels": 16, "channel_multipliers": [1, 2], "blocks_per_resolution": 1,
                  "attention_resolutions": [], "dropout": 0.0},
                 batch=32, steps={"smoke": 3, "quick": 10, "full": 10}, reps={"smoke": 1, "quick": 40, "full": 100},
                 pairs={"smoke": 2, "quick": 400, "full": 1000}),
    "small": Size("small", "small U-Net, CIFAR-shaped 3×32×32", {"name": "cifar10"},
                  {"name": "ddpmpp", "channels": 32, "channel_multipliers": [1, 2, 2], "blocks_per_resolution": 1,
                   "attention_resolutions": [8], "dropout": 0.1},
                  batch=16, steps={"smoke": 2, "quick": 3, "full": 5}, reps={"smoke": 1, "quick": 12, "full": 30},
                  fake_cifar_images=50_000, pairs={"smoke": 2, "quick": 40, "full": 100}),
}
SIZES_BY_MODE = {"smoke": ["tiny"], "quick": ["tiny", "small"], "full": ["tiny", "small"]}


def experiment_dict(size: Size, steps: int, clip: float = 0.0, **train: Any) -> dict[str, Any]:
    """The benchmark's experiment: DSM with σ² weighting (t ~ U[ε, T], like the reference) and,
    unless ``clip`` is given, no gradient clipping (the reference has none: clipping is part of
    the optimisation recipe, not trainer overhead; its cost is measured in an arm of its own)."""
    return {
        "name": f"bench-{size.name}", "seed": 0,
        "data": {"dataset": size.dataset},
        "sde": {"name": "vp"},
        "truncation": {"eps": 1e-5, "prior": {"name": "fixed"}},
        "objective": {"name": "dsm", "weighting": "variance"},
        "model": {"network": size.network},
        "optim": {"grad_clip_norm": clip},
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

        # once per run, not per step: timed apart and amortised over a run of DEFAULT_STEPS
        events = Elapsed(0.0, 0.0)  # their total so far (immutable: each trainer sums its own)

        def _timed_event(self, fn: Callable[..., Any], *args: Any) -> Any:
            with Stopwatch() as sw:
                out = fn(*args)
            self.events = self.events + sw.elapsed
            return out

        def write_run_files(self) -> None:
            self._timed_event(super().write_run_files)

        def resume_if_possible(self, path: Any = None) -> bool:
            return self._timed_event(super().resume_if_possible, path)

        def evaluate(self) -> dict[str, float]:
            return self._timed_event(super().evaluate)

        def save_checkpoint(self) -> Path | None:
            return self._timed_event(super().save_checkpoint)

        # the fit arm runs one long run in blocks: fit() leaves through BlockEnd when a block is done
        stop_at: int | None = None

        def train_step(self) -> dict[str, float]:
            if self.stop_at is not None and self.step >= self.stop_at:
                raise BlockEnd
            return super().train_step()

    return BenchTrainer


class BlockEnd(Exception):
    """Raised by the benchmark's trainer to leave ``fit`` after a block of steps."""


def no_evaluation(*args: Any, **kwargs: Any) -> dict[str, float]:
    return {}


class ReferenceLoop:
    """The plain DSM loop: what a minimal hand-written training script does per step."""

    def __init__(self, config: Any, train_images: torch.Tensor, device: torch.device, fused: bool = True):
        from st_sweeps.networks import ScoreModel
        from st_sweeps.seeding import generator
        from st_sweeps.trainer import build_adam

        self.sde, self.eps, self.device = config.sde, config.truncation.eps, device
        net = config.model.network.build(tuple(train_images.shape[1:]), generator=generator(config.seed, "init"))
        self.model = ScoreModel(net, config.sde, config.model.time_input, eps=self.eps).to(device)
        o = config.optim
        hyper = {"lr": o.lr, "betas": o.betas, "eps": o.eps}
        self.opt = build_adam(self.model.parameters(), **hyper) if fused else \
            torch.optim.Adam(self.model.parameters(), **hyper)
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
    blocks: dict[str, list[Elapsed]]  # per arm, one entry per repetition
    events: list[Elapsed]  # per fit repetition: its once-per-run work (run files, resume check, evaluation, checkpoint)
    first_step_extra: list[Elapsed]  # per fit repetition: its first step's time beyond a later step's
    steps: int
    warmup: int
    paired: list[tuple[float, float]]  # CPU seconds of (reference step, Trainer.train_step), alternating
    paired_fit: list[tuple[float, float]]  # CPU seconds of (reference step, one step of Trainer.fit), alternating


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_size(size: Size, mode: str, data_root: Path | None, device: torch.device) -> Timings:
    from st_sweeps.experiment import experiment_from_dict

    steps, reps = size.steps[mode], size.reps[mode]
    warmup = 1 if mode != "smoke" else 0
    Bench = make_trainer_class()
    work = Path(tempfile.mkdtemp(prefix="st_bench_speed_"))
    # the train_step arm: one trainer that keeps stepping through the repetitions
    stepper = Bench(experiment_from_dict(experiment_dict(size, DEFAULT_STEPS)), work / "stepper", device=str(device),
                    data_root=data_root, progress=False, evaluate_fn=no_evaluation)
    clipper = Bench(experiment_from_dict(experiment_dict(size, DEFAULT_STEPS, clip=1.0)), work / "clipper",
                    device=str(device), data_root=data_root, progress=False, evaluate_fn=no_evaluation)
    reference = ReferenceLoop(stepper.config, stepper.train_data.images, device)
    unfused = ReferenceLoop(stepper.config, stepper.train_data.images, device, fused=False)
    events: list[Elapsed] = []
    first_extra: list[Elapsed] = []

    def block(fn: Callable[[], Any]) -> Callable[[], Elapsed]:
        def timed() -> Elapsed:
            sync(device)
            with Stopwatch() as sw:
                fn()
                sync(device)
            return sw.elapsed
        return timed

    def reference_steps() -> None:
        for _ in range(steps):
            reference.step()

    def unfused_steps() -> None:
        for _ in range(steps):
            unfused.step()

    def trainer_steps() -> None:
        for _ in range(steps):
            stepper.train_step()

    def clipped_steps() -> None:
        for _ in range(steps):
            clipper.train_step()

    # the fit arm: one run much longer than the benchmark, trained in blocks (fit() left after
    # each through BlockEnd, so its once-per-run start-up repeats per block: timed and subtracted)
    fitter = Bench(experiment_from_dict(experiment_dict(size, 10**9)), work / "fitter", device=str(device),
                   data_root=data_root, progress=False, evaluate_fn=no_evaluation)
    fit_loops: list[Elapsed] = []

    def fit_for(n: int) -> Elapsed:
        """fit() for ``n`` more steps of the long run; returns the start-up time inside it."""
        fitter.stop_at = fitter.step + n
        before = fitter.events
        try:
            fitter.fit()
        except BlockEnd:
            pass
        return fitter.events - before

    def fit_block() -> Elapsed:
        start_up: list[Elapsed] = []
        elapsed = block(lambda: start_up.append(fit_for(steps)))()
        fit_loops.append(elapsed - start_up[0])
        return elapsed

    def fresh_run() -> Elapsed:
        """A whole short run, for its once-per-run work: run files, resume check, final
        evaluation (stubbed) and checkpoint, and its first step's time beyond a later step's."""
        trainer = Bench(experiment_from_dict(experiment_dict(size, steps)), tempfile.mkdtemp(dir=work),
                        device=str(device), data_root=data_root, progress=False, evaluate_fn=no_evaluation)
        first = block(trainer.train_step)()
        elapsed = block(trainer.fit)()
        inside = trainer.events
        loop = elapsed - inside
        later = Elapsed(loop.wall / (steps - 1), loop.cpu / (steps - 1))
        events.append(inside)
        first_extra.append(Elapsed(max(first.wall - later.wall, 0.0), max(first.cpu - later.cpu, 0.0)))
        return elapsed

    try:
        blocks = interleaved({"reference": block(reference_steps), "unfused": block(unfused_steps),
                              "train_step": block(trainer_steps),
                              "fit": fit_block, "fresh_run": fresh_run, "clipped": block(clipped_steps)},
                             reps=reps, warmup=warmup)
        paired = paired_steps(reference.step, stepper.train_step, size.pairs[mode], device)

        # one step of fit() (logging every 10th), its start-up subtracted
        paired_fit = paired_steps(reference.step, lambda: fit_for(1), size.pairs[mode], device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    blocks["fit"] = fit_loops[warmup:]
    return Timings(blocks, events[warmup:], first_extra[warmup:], steps, warmup, paired, paired_fit)


def paired_steps(reference: Callable[[], Any], arm: Callable[[], Any], pairs: int,
                 device: torch.device) -> list[tuple[float, float]]:
    """Single steps of the two, alternating (the order flipped every pair): the finest
    interleaving there is, so a neighbour's burst or a cache-cold start hits both alike."""
    out = []
    for i in range(pairs):
        order = [reference, arm] if i % 2 == 0 else [arm, reference]
        seconds = {}
        for fn in order:
            sync(device)
            with Stopwatch() as sw:
                excluded = fn()
                sync(device)
            # an arm may return time inside it that is not the step's (fit's start-up per entry)
            seconds[fn] = sw.elapsed.cpu - (excluded.cpu if isinstance(excluded, Elapsed) else 0.0)
        out.append((seconds[reference], seconds[arm]))
    return out


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
    warm_up_torch(tuple(config.data.dataset.shape))
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


def warm_up_torch(shape: tuple[int, ...]) -> None:
    """One conv forward/backward and Adam step on throwaway data: torch's one-off allocations
    (autograd engine, kernels' scratch space) then land before the baseline, not in either arm."""
    net = torch.nn.Sequential(torch.nn.Conv2d(shape[0], 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.SiLU())
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, *shape)).square().mean().backward()
    opt.step()
    del net, opt


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
def size_rows(size: Size, timing: Timings) -> tuple[list[list[Any]], str]:
    """Table rows and a note. Times per step are medians over repetitions; overheads are medians
    of the ratios within each round (arm / reference of the same round), which cancels the slow
    swings of a shared machine's load better than a ratio of medians."""
    n = timing.steps
    ref = timing.blocks["reference"]
    loops = timing.blocks["fit"]  # n steps of a long run each, fit's start-up subtracted
    once = [e + x for e, x in zip(timing.events, timing.first_step_extra)]
    # the once-per-run work once per DEFAULT_STEPS steps instead of once per block of n steps
    amortised = [loop + Elapsed(e.wall * n / DEFAULT_STEPS, e.cpu * n / DEFAULT_STEPS)
                 for loop, e in zip(loops, once)]
    arms = [("reference loop (Adam as the trainer's: fused)", ref),
            ("reference loop with torch.optim.Adam's default implementation (what fused saves, not overhead)",
             timing.blocks["unfused"]),
            ("Trainer.train_step", timing.blocks["train_step"]),
            ("Trainer.fit, log every 10 steps", loops),
            (f"Trainer.fit, once-per-run work spread over {DEFAULT_STEPS} steps", amortised),
            ("Trainer.train_step, gradient clipping at 1.0 (recipe, not overhead)", timing.blocks["clipped"])]
    rows = []
    for label, blocks in arms:
        wall, cpu = median(b.wall for b in blocks) / n, median(b.cpu for b in blocks) / n
        if blocks is ref:
            over_wall = over_cpu = fastest = "–"
        else:
            ratios = sorted(b.cpu / r.cpu for b, r in zip(blocks, ref))
            q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
            over_cpu = pct(100 * (median(ratios) - 1)) + (f" [{100 * (q1 - 1):+.1f}, {100 * (q3 - 1):+.1f}]"
                                                           if len(ratios) >= 4 else "")
            over_wall = pct(100 * (median(b.wall / r.wall for b, r in zip(blocks, ref)) - 1))
            fastest = pct(100 * (min(b.cpu for b in blocks) / min(r.cpu for r in ref) - 1))
        rows.append([size.label, size.batch, label, fmt(1e3 * wall), fmt(1e3 * cpu), fmt(size.batch / wall),
                     over_wall, over_cpu, fastest])
    event = Elapsed(median(e.wall for e in timing.events), median(e.cpu for e in timing.events))
    extra = Elapsed(median(e.wall for e in timing.first_step_extra), median(e.cpu for e in timing.first_step_extra))
    note = (f"- {size.label}: blocks of {n} steps, {len(ref)} interleaved rounds after {timing.warmup} warm-up "
            f"round(s); a run's once-only work (config file and params, resume check, the final checkpoint and "
            f"loss-by-time JSON/PNG; the model evaluation itself stubbed) took {fmt(1e3 * event.wall)} ms wall, "
            f"{fmt(1e3 * event.cpu)} ms CPU, and its first step {fmt(1e3 * extra.cpu)} ms CPU more than a later "
            f"one (optimizer state, first calls), measured on a fresh {n}-step run in every round; the fit rows "
            f"time blocks of {n} steps of one long run.")
    if timing.paired:
        note += " Paired single steps (reference and arm alternating, CPU time; median of the pair ratios, " \
                "then ratio of the total times): "
        parts = []
        for label, pairs in (("Trainer.train_step", timing.paired), ("one step of Trainer.fit", timing.paired_fit)):
            ratios = [a / r for r, a in pairs]
            total = sum(a for _, a in pairs) / sum(r for r, _ in pairs)
            parts.append(f"{label} {pct(100 * (median(ratios) - 1))}, {pct(100 * (total - 1))} ({len(pairs)} pairs)")
        ref_step = median(r for r, _ in timing.paired_fit)
        once = median(e.cpu + x.cpu for e, x in zip(timing.events, timing.first_step_extra))
        spread = once / DEFAULT_STEPS / ref_step
        fit_ratio = median(a / r for r, a in timing.paired_fit)
        parts.append(f"fit with its once-per-run work spread over {DEFAULT_STEPS} steps "
                     f"{pct(100 * (fit_ratio + spread - 1))}")
        note += "; ".join(parts) + "."
    return rows, note


def run(args: argparse.Namespace) -> Section:
    mode = mode_of(args)
    set_threads(args.threads)
    device = torch.device("cpu")
    rows: list[list[Any]] = []
    mem_rows: list[list[Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="st_bench_data_") as tmp:
        for name in args.sizes or SIZES_BY_MODE[mode]:
            size = SIZES[name]
            data_root = None
            if size.fake_cifar_images:
                data_root = write_fake_cifar(Path(tmp) / name, size.fake_cifar_images if mode != "smoke" else 1000)
            timing = time_size(size, mode, data_root, device)
            size_table, note = size_rows(size, timing)
            rows += size_table
            notes.append(note)
            probe_steps = 2 if mode == "smoke" else 5
            ref_mem = run_probe(size, "reference", probe_steps, data_root, args.threads)
            tr_mem = run_probe(size, "trainer", probe_steps, data_root, args.threads)
            mem_rows.append([size.label, fmt(ref_mem), fmt(tr_mem),
                             f"{tr_mem / ref_mem:.2f}×" if ref_mem > 0 else "–"])
            if torch.cuda.is_available():
                notes.append("- CUDA: " + markdown_cuda(cuda_rows(size, mode, data_root, args.peak_tflops)))
    table = markdown_table(["model, data", "batch", "arm", "ms/step (wall)", "ms/step (CPU)", "images/s (wall)",
                            "overhead (wall)", "overhead (CPU) [quartiles]", "overhead (CPU, fastest blocks)"], rows)
    table += ("\n\nPeak memory: RSS above the process once torch was warmed up and the data loaded, over a "
              "short run in a fresh process:\n\n")
    table += markdown_table(["model, data", "reference loop (MiB)", "Trainer.fit (MiB)", "ratio"], mem_rows)
    if not torch.cuda.is_available():
        notes.append("- No CUDA device here: the bf16 + channels_last + torch.compile against fp32 comparison and the "
                     "model FLOP utilisation (torch.utils.flop_counter) run only on a GPU machine and were not "
                     "measured.")
    return Section("Training speed: Trainer vs a plain DSM loop", command_line(MODULE, args.argv), args.threads,
                   table, notes, mode)


def markdown_cuda(rows: list[list[str]]) -> str:
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
