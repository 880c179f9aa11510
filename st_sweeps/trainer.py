"""The standalone trainer: the paper's training procedure on one process (or one DDP rank).

Split into build / step / evaluate / checkpoint. Every random draw is derived from
(seed, step, stream) — τ from (seed, step), each chunk's data order, noise, flips and dropout
from (seed, step, global chunk index) — so a resumed run is bit-identical to an uninterrupted
one, and N workers with the same global batch and chunk size see exactly the same examples and
noise as one worker accumulating N chunks.

Imports neither ray nor mlflow: wrappers plug in through ``wrap_model``, ``tracker`` and
``on_evaluation``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TextIO

import numpy as np
import torch
from torch import nn

from st_sweeps import checkpoint as ckpt
from st_sweeps import dist
from st_sweeps.config import to_dict
from st_sweeps.data import ImageData
from st_sweeps.data.transforms import to_model_space
from st_sweeps.diagnostics import LossByTime
from st_sweeps.ema import EMA
from st_sweeps.errors import ConfigError
from st_sweeps.experiment import ExperimentConfig, config_params, config_yaml
from st_sweeps.flat_parameters import FlatGradients, flatten_parameters
from st_sweeps.networks import ScoreModel
from st_sweeps.seeding import derive_seed, generator
from st_sweeps.tracking import JsonlTracker, MultiTracker, NullTracker, Tracker

Reporter = Callable[[int, dict[str, float], "Path | None"], None]

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# devices with torch.optim's fused Adam kernels (torch >= 2.4; the check is only made at the first step)
_FUSED_OPTIMIZER_DEVICES = frozenset({"cpu", "cuda"})
# how a run executes, not what it computes (the same weights and losses to float rounding): a
# checkpoint resumes or evaluates across them, e.g. a compiled GPU run on a CPU without compile
EXECUTION_ONLY = frozenset({"train.compile", "train.channels_last"})


class NonFiniteLossError(RuntimeError):
    def __init__(self, step: int, last_finite: float | None, last_finite_step: int | None, run_dir: Path):
        self.step = step
        where = (f"last finite loss {last_finite:.6g} at step {last_finite_step}"
                 if last_finite is not None else "no finite loss before it")
        super().__init__(f"non-finite loss at step {step} ({where}); the run stopped before the optimiser "
                         f"step, and checkpoints in {run_dir / 'checkpoints'} are untouched")


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def diagnostics(self) -> Path:
        return self.root / "diagnostics"

    @property
    def samples(self) -> Path:
        return self.root / "samples"


def select_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=8)
def autocast_runs_in(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a matmul under ``torch.autocast(device.type, dtype)`` really runs in ``dtype``:
    for a dtype its device does not support, autocast warns and switches itself off."""
    if not torch.amp.is_autocast_available(device.type):
        return False
    a = torch.ones(2, 2, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast(device.type, dtype=dtype):
            return torch.mm(a, a).dtype == dtype


def build_adam(params: Iterable[nn.Parameter], *, adamw: bool = False, **hyper: Any) -> torch.optim.Optimizer:
    """Adam (or AdamW) in PyTorch's fused implementation wherever the parameters' device has it
    (CPU and CUDA in torch 2.x), else its default one. The same update rule: fused runs the
    per-tensor loop in one kernel call, where the default on a CPU is a Python loop of seven
    operations per tensor (3.3 ms against 0.57 ms a step for the 130 tensors of the tiny U-Net)."""
    params = list(params)
    cls = torch.optim.AdamW if adamw else torch.optim.Adam
    fused = bool(params) and all(p.device.type in _FUSED_OPTIMIZER_DEVICES and p.is_floating_point() for p in params)
    return cls(params, fused=True, **hyper) if fused else cls(params, **hyper)


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=generator(seed, "epoch", epoch))


@functools.lru_cache(maxsize=4)
def _cached_epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    # a function of its arguments alone, so caching changes nothing but the cost: one
    # randperm(n) per epoch instead of one per chunk (about 1 ms per step at n = 50,000).
    # Never handed out: global_indices copies what it takes.
    return epoch_permutation(seed, epoch, n)


def global_indices(seed: int, n: int, start: int, count: int) -> torch.Tensor:
    """Data indices for global example positions [start, start + count): each epoch is a fresh
    permutation derived from (seed, epoch), so the order depends on nothing but the position."""
    out = []
    pos = start
    while pos < start + count:
        epoch, offset = divmod(pos, n)
        take = min(n - offset, start + count - pos)
        out.append(_cached_epoch_permutation(seed, epoch, n)[offset:offset + take])
        pos += take
    return torch.cat(out)  # a new tensor, also for a single piece


class Trainer:
    def __init__(self, config: ExperimentConfig, run_dir: str | Path, *, device: str | None = None,
                 data_root: str | Path | None = None, tracker: Tracker | None = None,
                 wrap_model: Callable[[nn.Module], nn.Module] | None = None,
                 on_evaluation: Reporter | None = None, progress: bool = True,
                 evaluate_fn: Callable[..., dict[str, float]] | None = None):
        self.config = config
        self.paths = RunPaths(Path(run_dir))
        self.device = select_device(device)
        self.amp_dtype = self._autocast_dtype()  # before the data and model: a bad precision fails fast
        self.rank, self.world = dist.rank(), dist.world_size()
        self.progress = progress and self.rank == 0
        self.on_evaluation = on_evaluation
        self._evaluate_fn = evaluate_fn
        chunk = config.train.micro_batch_size or config.train.batch_size // self.world
        n_chunks = config.train.batch_size // max(chunk, 1)
        if chunk < 1 or config.train.batch_size % chunk or n_chunks % self.world:
            raise ConfigError("train.micro_batch_size",
                              f"batch_size={config.train.batch_size} cannot be split into equal chunks over "
                              f"{self.world} workers", "a chunk size whose chunk count is a multiple of the workers")
        self.chunk_size, self.n_chunks = chunk, n_chunks
        trackers: list[Tracker] = [tracker or NullTracker()]
        if self.rank == 0:
            trackers.append(JsonlTracker(self.paths.metrics))
        self.tracker: Tracker = MultiTracker(*trackers)

        self.train_data, self.test_data = self._load_data(data_root)
        self.model = self._build_model().to(self.device)
        flatten_parameters(self.model)  # on the device, in its final layout: the EMA update is then one lerp
        self.ema = EMA(self.model, config.optim.ema_decay)
        self.optimizer = self._build_optimizer()
        self._params = list(self.model.parameters())
        self._flat_grads = FlatGradients.for_parameters(self._params)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.net = wrap_model(self.model) if wrap_model else self.model
        # compiled from outside the (DDP-wrapped) model, never in place: parameter names, so
        # model, EMA and checkpoint keys, stay those of the eager model (an in-place
        # ``model.net = torch.compile(model.net)`` prefixes them with "_orig_mod." and hands the
        # EMA a compiled copy), and DDP is compiled whole, PyTorch's recommended order
        self._forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
            torch.compile(self.net) if config.train.compile else self.net)
        self.diagnostics = LossByTime(config.truncation.eps, config.sde.T, config.train.diagnostics_bins)
        self.terminal_prior = self._fit_terminal_prior()
        self.step = 0
        self.last_finite: tuple[int, float] | None = None

    # ------------------------------------------------------------------ build
    def _load_data(self, data_root: str | Path | None) -> tuple[ImageData, ImageData]:
        ds = self.config.data.dataset
        root = Path(data_root) if data_root else None
        return ds.load(root, "train"), ds.load(root, "test")

    def _build_model(self) -> ScoreModel:
        net = self.config.model.network.build(tuple(self.train_data.shape), generator=generator(self.config.seed, "init"))
        model = ScoreModel(net, self.config.sde, self.config.model.time_input, eps=self.config.truncation.eps)
        if self.config.train.channels_last and len(self.train_data.shape) == 3:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.config.optim
        return build_adam(self.model.parameters(), adamw=o.name == "adamw", lr=o.lr, betas=o.betas, eps=o.eps,
                          weight_decay=o.weight_decay)

    def _autocast_dtype(self) -> torch.dtype | None:
        """The dtype the score model's forward autocasts to (None: fp32, no autocast), on any
        device whose autocast really runs it: never a silent fp32 run in its place."""
        p = self.config.train.precision
        if p == "fp32":
            return None
        if not autocast_runs_in(self.device, _AUTOCAST_DTYPES[p]):
            allowed = ["fp32"] + [k for k, d in _AUTOCAST_DTYPES.items() if autocast_runs_in(self.device, d)]
            raise ConfigError("train.precision", f"autocast to {p} does not run on {self.device.type} "
                              f"with torch {torch.__version__}", allowed)
        return _AUTOCAST_DTYPES[p]

    def _fit_terminal_prior(self) -> Any:
        n = min(len(self.train_data.images), 4096)
        x0 = self._to_model_space(self.train_data.images[:n], generator(self.config.seed, "terminal_prior"))
        return self.config.terminal_prior.fit(self.config.sde, x0, generator(self.config.seed, "terminal_prior_fit"))

    # ------------------------------------------------------------------ data
    def _to_model_space(self, raw: torch.Tensor, gen: torch.Generator, train: bool = True) -> torch.Tensor:
        d = self.config.data
        flip = train and bool(getattr(d.dataset, "random_flip", False))
        return to_model_space(raw, gen, centered=d.centered, flip=flip, dequantize=d.dequantize and train)

    def _chunk_batch(self, step: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Generator]:
        cfg = self.config
        gen = generator(cfg.seed, "chunk", step, chunk)
        n = len(self.train_data.images)
        start = step * cfg.train.batch_size + chunk * self.chunk_size
        idx = global_indices(cfg.seed, n, start, self.chunk_size)
        x0 = self._to_model_space(self.train_data.images[idx], gen)
        ref = None
        n_ref = cfg.objective.reference_batch_size
        if n_ref:
            ref_idx = torch.randint(n, (n_ref,), generator=gen)
            ref = self._to_model_space(self.train_data.images[ref_idx], gen).to(self.device)
        x0 = x0.to(self.device)
        if cfg.train.channels_last and x0.ndim == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        return x0, ref, gen

    # ------------------------------------------------------------------ step
    def lr_at(self, step: int) -> float:
        o = self.config.optim
        return o.lr * min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else o.lr

    def train_step(self) -> dict[str, float]:
        cfg, step = self.config, self.step
        tau = cfg.truncation.prior.sample(cfg.truncation.eps, cfg.sde.T, generator(cfg.seed, "tau", step))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        if not self.model.training:  # a walk over every module: only when something switched it off
            self.model.train()
        if self._flat_grads is not None:
            self._flat_grads.zero_()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        my_chunks = range(self.rank, self.n_chunks, self.world)
        scale = self.chunk_size * self.world / cfg.train.batch_size  # DDP averages over ranks
        total = 0.0
        for i, chunk in enumerate(my_chunks):
            x0, ref, gen = self._chunk_batch(step, chunk)
            self._seed_dropout(derive_seed(cfg.seed, "dropout", step, chunk))
            times: list[torch.Tensor] = []

            def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                times.append(t.detach())
                return self.score(x, t)

            sync = contextlib.nullcontext() if i == len(my_chunks) - 1 or not hasattr(self.net, "no_sync") \
                else self.net.no_sync()
            with sync:
                per_example = cfg.objective.loss(cfg.sde, score_fn, x0, tau, gen, reference=ref)
                loss = per_example.float().mean()
                self.scaler.scale(loss * scale).backward()
            total += float(loss.detach()) * self.chunk_size / (cfg.train.batch_size / self.world)
            self.diagnostics.add(torch.cat(times), per_example.detach().float())
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.optim.grad_clip_norm or math.inf
        grad_norm = self._clip_gradients(max_norm)
        # with fp16 loss scaling an infinite gradient only means "skip this step and lower the
        # scale"; a non-finite loss, or a non-finite gradient without scaling, is divergence
        if not math.isfinite(total) or (not math.isfinite(grad_norm) and not self.scaler.is_enabled()):
            last = self.last_finite
            raise NonFiniteLossError(step, last[1] if last else None, last[0] if last else None, self.paths.root)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.model)
        self.last_finite = (step, total)
        self.step += 1
        return {"train/loss": total, "train/tau": float(tau), "train/lr": self.lr_at(step),
                "train/grad_norm": grad_norm, "train/clipped": float(clipped(grad_norm, max_norm))}

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context the training forward runs in: autocast to ``train.precision``, or none."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """s_θ(x, t) as training computes it (compiled, in the training precision), returned in
        x's dtype. Only the score model's forward runs under autocast (the network; its output is
        divided by σ(t) in at least float32); the SDE marginals, the target, the weighting and
        the loss around it stay float32."""
        if self.config.train.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # a no-op when x_t kept x_0's layout
        with self.autocast():
            s = self._forward(x, t)
        return s.to(x.dtype)

    def _seed_dropout(self, seed: int) -> None:
        """The global RNG (dropout) for one chunk: CPU, and the model's GPU when it has one.

        Same states as ``torch.manual_seed(seed)`` on the generators the model uses; that
        function also queues a seed for every CUDA device not yet initialised, formatting a stack
        trace each time (about 0.1 ms a chunk, measured)."""
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            torch.cuda.default_generators[index].manual_seed(seed)

    def _clip_gradients(self, max_norm: float) -> float:
        """``clip_grad_norm_``, without its multiplication by exactly 1 when the norm is within
        bounds (the usual case once training has settled): the same gradients, one pass fewer."""
        flat = self._flat_grads if self._flat_grads is not None and self._flat_grads.attached() else None
        if flat is not None:  # one norm (and below one multiplication) over the buffer
            total = torch.linalg.vector_norm(flat.buffer)
        else:
            grads = [p.grad for p in self._params if p.grad is not None]
            if not grads:
                return 0.0
            if grads[0].device.type == "cpu":
                # CPU has no fused multi-tensor norm: one norm per tensor costs ~1.5 µs each (0.2 ms,
                # about 1 % of a small U-Net's step); one norm over a transient flat copy is ~8x faster
                total = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
            else:
                total = torch.nn.utils.get_total_norm(grads)
        coef = max_norm / (total + 1e-6)  # the factor clip_grads_with_norm_ would clamp to <= 1
        if not float(coef) >= 1.0:  # < 1, or NaN (which clip_grad_norm_ also multiplies in)
            if flat is not None:
                flat.buffer.mul_(coef.clamp(max=1.0))
            else:
                torch.nn.utils.clip_grads_with_norm_(self._params, max_norm, total)
        return float(total)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": to_dict(self.config),
            "last_finite": list(self.last_finite) if self.last_finite else None,
            "diagnostics": self.diagnostics.state_dict(),
            "terminal_prior": self.terminal_prior.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved, current = _flat(state["config"]), _flat(to_dict(self.config))
        diff = sorted(k for k in set(saved) | set(current)
                      if k not in EXECUTION_ONLY and saved.get(k) != current.get(k))
        if diff:
            raise ConfigError("config", f"the checkpoint was written by a different config (differs at {', '.join(diff[:8])}); "
                              "use a new run directory, or the config the run started with")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.last_finite = tuple(state["last_finite"]) if state["last_finite"] else None  # type: ignore[assignment]
        self.diagnostics.load_state_dict(state["diagnostics"])
        torch.set_rng_state(state["rng"]["torch"])
        _set_numpy_state(state["rng"]["numpy"])
        _set_python_state(state["rng"]["python"])

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes; the others wait, so no rank runs ahead of a half-written file."""
        path = None
        if self.rank == 0:
            path = ckpt.save_atomic(self.state_dict(), ckpt.checkpoint_path(self.paths.checkpoints, self.step))
            ckpt.prune(self.paths.checkpoints, self.config.train.keep_checkpoints)
        dist.barrier()
        return path

    def resume_if_possible(self, path: str | Path | None = None) -> bool:
        """Load ``path``, or else the newest checkpoint of the run that loads: a damaged newer one
        (cut short by a crash or a full disk) is set aside with a warning (checkpoint.load_latest).
        A damaged ``path`` raises CheckpointError naming it and what is wrong."""
        if path:
            self.load_state_dict(ckpt.load(path, self.device))
            return True
        found = ckpt.load_latest(self.paths.checkpoints, self.device, set_aside=self.rank == 0)
        if found is None:
            return False
        self.load_state_dict(found[1])
        return True

    # ------------------------------------------------------------------ evaluate
    def evaluate(self) -> dict[str, float]:
        from st_sweeps.evaluate import evaluate_model

        fn = self._evaluate_fn or evaluate_model
        metrics = fn(self.config, self.ema.shadow, self.train_data, self.test_data, self.terminal_prior,
                     step=self.step, device=self.device, out_dir=self.paths.root, tracker=self.tracker)
        self.diagnostics.save(self.paths.diagnostics, self.step, tracker=self.tracker if self.rank == 0 else None)
        return metrics

    # ------------------------------------------------------------------ loop
    def write_run_files(self) -> None:
        if self.rank != 0:
            return
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.paths.config.write_text(config_yaml(self.config))
        self.tracker.log_params(config_params(self.config))

    def fit(self) -> dict[str, float]:
        cfg = self.config.train
        self.write_run_files()
        resumed = self.resume_if_possible()
        if resumed and self.rank == 0:
            self.tracker.set_tags({"resumed_from_step": str(self.step)})
        bar = _progress(self.progress, cfg.steps, self.step)
        window_loss, window_clipped, window_steps, t_window = 0.0, 0.0, 0, time.perf_counter()
        final: dict[str, float] = {}
        while self.step < cfg.steps:
            metrics = self.train_step()
            window_loss += metrics["train/loss"]
            window_clipped += metrics.pop("train/clipped")
            window_steps += 1
            step = self.step
            if step % cfg.log_every_steps == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - t_window
                # the share of the window's steps whose gradient clipping fired: with a summed loss
                # at large D it can fire on every step, and then the per-step loss scale is lost
                logged = dist.all_reduce_mean({**metrics, "train/loss": window_loss / window_steps,
                                               "train/clip_fraction": window_clipped / window_steps}, self.device)
                logged["perf/steps_per_s"] = window_steps / max(elapsed, 1e-9)
                logged["perf/images_per_s"] = logged["perf/steps_per_s"] * self.config.train.batch_size
                if self.rank == 0:
                    self.tracker.log_metrics(logged, step)
                if bar is not None:
                    bar.set_postfix(loss=f"{logged['train/loss']:.4g}", it_s=f"{logged['perf/steps_per_s']:.2f}")
                window_loss, window_clipped, window_steps, t_window = 0.0, 0.0, 0, time.perf_counter()
            if bar is not None:
                bar.update(1)
            is_eval = step == cfg.steps or (cfg.eval_every_steps and step % cfg.eval_every_steps == 0)
            is_ckpt = is_eval or (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0)
            if is_ckpt and not is_eval:
                self.save_checkpoint()
            if is_eval:
                final = self.evaluate()
                if self.rank == 0:
                    self.tracker.log_metrics(final, step)
                path = self.save_checkpoint()
                if self.on_evaluation is not None:
                    self.on_evaluation(step, dict(final), path)
        if bar is not None:
            bar.close()
        return final


def clipped(grad_norm: float, max_norm: float) -> bool:
    """Whether ``_clip_gradients`` scaled the gradients down (its factor max_norm/(norm + 1e-6) < 1)."""
    return not max_norm / (grad_norm + 1e-6) >= 1.0


def _flat(d: Mapping[str, Any]) -> dict[str, Any]:
    from st_sweeps.config import flatten

    return flatten(d)


PLAIN_PROGRESS_INTERVAL_S = 30.0  # off a terminal, a progress line at most this often
_PLAIN_PROGRESS_FORMAT = ("{desc} step {n_fmt}/{total_fmt} ({percentage:.0f}%) {rate_fmt}, "
                          "{elapsed}<{remaining}{postfix}")


def _progress(enabled: bool, total: int, initial: int, file: TextIO | None = None) -> Any:
    """tqdm's live bar on a terminal (or in a notebook). Elsewhere (CI, nohup, ``| tee``, Ray
    workers) a redrawn bar floods the log with carriage returns, so the same tqdm writes plain
    lines instead, ``train step 300/2000 (15%) 41.20 step/s, 00:07<00:41, loss=…``: one at the
    start, then at most one every PLAIN_PROGRESS_INTERVAL_S seconds, and one at the end."""
    if not enabled:
        return None
    import tqdm.autonotebook
    import tqdm.std
    from tqdm.auto import tqdm as live_bar

    stream = sys.stderr if file is None else file
    if tqdm.autonotebook.tqdm is not tqdm.std.tqdm or _isatty(stream):
        return live_bar(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, file=stream)

    class PlainLines(tqdm.std.tqdm):
        def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
            super().set_postfix(ordered_dict, refresh=False, **kwargs)  # shown in the next timed line

    return PlainLines(total=total, initial=initial, desc="train", unit=" step", file=_Lines(stream),
                      bar_format=_PLAIN_PROGRESS_FORMAT, mininterval=PLAIN_PROGRESS_INTERVAL_S, miniters=1)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class _Lines:
    """The file tqdm writes to off a terminal: each redraw (``\\r`` + status + padding) becomes one
    line with single spaces; blank writes (the final newline) and a repeat of the last line vanish
    (``close`` redraws a bar whose last step was just drawn)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        for part in text.replace("\r", "\n").split("\n"):
            line = " ".join(part.split())
            if line and line != self.last:
                self.stream.write(line + "\n")
                self.last = line
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_state(s: Mapping[str, Any]) -> None:
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_state(s: list[Any]) -> None:
    random.setstate((s[0], tuple(s[1]), s[2]))


def train(config: ExperimentConfig, run_dir: str | Path, **kwargs: Any) -> dict[str, float]:
    """Train (resuming from ``run_dir`` if it holds a checkpoint) and return the last evaluation."""
    return Trainer(config, run_dir, **kwargs).fit()
