"""The experiment config tree: one frozen, typed dataclass per concern, loaded strictly from YAML.

Units are in the names (``*_steps``, ``lr``); randomness comes only from ``seed``; no devices,
live objects or host paths (data roots, output and tracking locations are run-time arguments).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

from st_sweeps.aux_prior import AuxPrior
from st_sweeps.config import dump_yaml, flatten, load_dataclass, load_file, to_dict
from st_sweeps.data import Dataset
from st_sweeps.errors import ConfigError, require, require_positive, require_range
from st_sweeps.likelihood_settings import LikelihoodSettings
from st_sweeps.networks import Network
from st_sweeps.objectives import Objective
from st_sweeps.sample_quality import PixelFD, SampleQuality
from st_sweeps.sampling import PCSampler, Sampler
from st_sweeps.sde import SDE, VPSDE
from st_sweeps.truncation import Truncation


@dataclass(frozen=True)
class DataConfig:
    dataset: Dataset = field(default_factory=lambda: Dataset.registry.build("digits", "data.dataset"))
    centered: bool = True  # model space [-1, 1] (True) or [0, 1]
    dequantize: bool = True  # uniform dequantization of 8-bit data during training


@dataclass(frozen=True)
class ModelConfig:
    network: Network = field(default_factory=lambda: Network.registry.build({"name": "ddpmpp"}, "network"))
    time_input: Literal["t999", "log_sigma", "unbounded"] = "t999"


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adam", "adamw"] = "adam"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 5000
    grad_clip_norm: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.9999

    def __post_init__(self) -> None:
        require_positive(self.lr, "lr")
        for i, b in enumerate(self.betas):
            require_range(b, f"betas[{i}]", 0.0, 1.0, high_open=True)
        require_positive(self.eps, "eps")
        require(self.weight_decay >= 0, "weight_decay", f"got {self.weight_decay!r}", "a number >= 0")
        require(self.warmup_steps >= 0, "warmup_steps", f"got {self.warmup_steps!r}", "an integer >= 0")
        require(self.grad_clip_norm >= 0, "grad_clip_norm", f"got {self.grad_clip_norm!r}", "a number >= 0 (0 disables)")
        require_range(self.ema_decay, "ema_decay", 0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128  # the global batch, whatever the number of workers
    micro_batch_size: int = 0  # 0: the whole batch at once; else gradient accumulation chunks
    # the score model's forward under autocast to bf16/fp16 (fp16 with loss scaling), on any
    # device; on CPU mainly for checking these paths, as it is slower there than fp32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False  # torch.compile the training forward (parameter names unchanged)
    channels_last: bool = False  # NHWC model and inputs for image data
    log_every_steps: int = 10
    eval_every_steps: int = 0  # 0: evaluate once, at the end
    checkpoint_every_steps: int = 0  # 0: only at evaluations and at the end
    keep_checkpoints: int = 3  # 0 keeps all
    diagnostics_bins: int = 16

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", f"got {self.steps!r}", "an integer >= 1")
        require(self.batch_size >= 1, "batch_size", f"got {self.batch_size!r}", "an integer >= 1")
        mb = self.micro_batch_size
        require(mb >= 0 and (mb == 0 or self.batch_size % mb == 0), "micro_batch_size",
                f"{mb!r} does not divide batch_size={self.batch_size}", "0 or a divisor of batch_size")
        for name in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
            v = getattr(self, name)
            require(v >= 0, name, f"got {v!r}", "an integer >= 0")
        require(self.log_every_steps >= 1, "log_every_steps", f"got {self.log_every_steps!r}", "an integer >= 1")
        require(self.diagnostics_bins >= 1, "diagnostics_bins", f"got {self.diagnostics_bins!r}", "an integer >= 1")

    @property
    def chunk_size(self) -> int:
        return self.micro_batch_size or self.batch_size


@dataclass(frozen=True)
class EvalConfig:
    # examples, passes, trace estimator, ODE solver and tolerances, dequantization of the NLL and
    # NELBO; ε is truncation.eps (st_sweeps.likelihood_settings)
    likelihood: LikelihoodSettings = field(default_factory=LikelihoodSettings)
    num_samples: int = 64  # samples for the grid and sample-quality figures (0 skips)
    # pc | euler_maruyama | ode, each with its own settings (st_sweeps.sampling.Sampler)
    sampler: Sampler = field(default_factory=PCSampler)
    # pixel_fd | fid | both | digits_fd | gmm_exact | none (st_sweeps.sample_quality; docs/METRICS.md)
    sample_quality: SampleQuality = field(default_factory=PixelFD)
    batch_size: int = 256

    # settings that moved into a nested config: an old file names them, and the error says where
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "sampler_steps": "sampler.n_steps", "predictor": "sampler.predictor", "corrector": "sampler.corrector",
        "snr": "sampler.snr", "corrector_steps": "sampler.n_corrector_steps", "sample_eps": "sampler.eps",
        "fid_reference_examples": "sample_quality.reference_examples",
        "inception_score_splits": "sample_quality.inception_score_splits",
        "nll_examples": "likelihood.examples", "nll_repeats": "likelihood.repeats", "nll_trace": "likelihood.trace",
        "nll_probes": "likelihood.probes", "nll_rtol": "likelihood.rtol", "nll_atol": "likelihood.atol",
        "nll_solver": "likelihood.solver", "nelbo_repeats": "likelihood.nelbo_repeats",
        "dequantization": "likelihood.dequantization.name",
        "dequantizer_steps": "likelihood.dequantization.steps", "dequantizer_lr": "likelihood.dequantization.lr",
        "dequantizer_batch_size": "likelihood.dequantization.batch_size",
        "dequantizer_hidden": "likelihood.dequantization.hidden",
    }

    def __post_init__(self) -> None:
        require(self.num_samples >= 0, "num_samples", f"got {self.num_samples!r}", "an integer >= 0")
        require(self.batch_size >= 1, "batch_size", f"got {self.batch_size!r}", "an integer >= 1")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    sde: SDE = field(default_factory=VPSDE)
    truncation: Truncation = field(default_factory=Truncation)
    objective: Objective = field(default_factory=lambda: Objective.registry.build("dsm", "objective"))
    terminal_prior: AuxPrior = field(default_factory=lambda: AuxPrior.registry.build("standard", "terminal_prior"))  # "How Much is Enough?" for T < 1
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name, "name", f"got {self.name!r}",
                "a non-empty name without '/'")
        self.sde.check_time_range(self.truncation.eps, "truncation.eps")
        require(self.eval.sampler.eps < self.sde.T, "eval.sampler.eps",
                f"{self.eval.sampler.eps!r} is not below sde.T={self.sde.T}", f"a number in (0, {self.sde.T})")
        require(self.eval.likelihood.dequantization.name == "uniform" or self.data.dataset.discrete,
                "eval.likelihood.dequantization",
                f"'variational' needs 8-bit data, but data.dataset.name={self.data.dataset.registry_name!r} is "
                "continuous (its NLL is a density, with no dequantization)", "uniform for continuous data")
        if self.model.time_input == "unbounded":
            require(hasattr(self.sde, "integrated_beta"), "model.time_input",
                    f"'unbounded' needs a VP-type SDE, got sde.name={self.sde.registry_name!r}",
                    "t999, log_sigma (or use sde vp/subvp)")
        self._check_sample_quality()
        ref = self.objective.reference_batch_size
        require(ref == 0 or self.train.chunk_size >= 1, "objective.reference_batch_size", f"got {ref}")

    def _check_sample_quality(self) -> None:
        """digits_fd and gmm_exact are defined on one kind of data each; refuse the others."""
        quality, data = self.eval.sample_quality, self.data.dataset.registry_name
        if quality.datasets is not None and data not in quality.datasets:
            allowed = [name for name in SampleQuality.registry.names()
                       if SampleQuality.registry.get(name).datasets in (None,) or
                       data in (SampleQuality.registry.get(name).datasets or ())]
            raise ConfigError("eval.sample_quality", f"{quality.name!r} is defined only for data.dataset "
                              f"{' or '.join(map(repr, quality.datasets))}, got {data!r}", allowed)


def load_experiment(path: str | Path, overrides: list[str] | Mapping[str, Any] = ()) -> ExperimentConfig:
    return load_file(ExperimentConfig, path, overrides)


def experiment_from_dict(data: Mapping[str, Any], where: str = "") -> ExperimentConfig:
    try:
        return load_dataclass(ExperimentConfig, data)
    except ConfigError as e:
        raise (e.at(where) if where else e) from None


def config_params(config: ExperimentConfig) -> dict[str, Any]:
    """Flat ``a.b.c -> value`` params for MLflow and tables."""
    return flatten(to_dict(config))


def config_yaml(config: ExperimentConfig) -> str:
    return dump_yaml(config)
