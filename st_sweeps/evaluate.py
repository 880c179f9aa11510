"""One evaluation of a trained (EMA) model: NLL and NELBO in bits/dim, samples with their NFE,
and sample quality (pixel-space Fréchet distance without weights; FID when Inception weights
exist — never a substitute number under the name FID).

Work is sharded over ranks and reduced, so the figures are global whatever the worker count.
Evaluation noise is derived from (seed, "eval") only, so successive evaluations of one run and
trials of one sweep are compared on common random numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from st_sweeps import dist
from st_sweeps.data import ImageData
from st_sweeps.data.transforms import to_model_space, to_uint8
from st_sweeps.experiment import ExperimentConfig
from st_sweeps.plots import save_image_grid, save_scatter
from st_sweeps.seeding import generator

INCEPTION_WEIGHTS_ENV = "ST_SWEEPS_INCEPTION_WEIGHTS"
FID_CACHE_ENV = "ST_SWEEPS_FID_CACHE"


def _shard(n: int) -> slice:
    per = n // dist.world_size()
    return slice(dist.rank() * per, (dist.rank() + 1) * per)


def likelihood_metrics(config: ExperimentConfig, model: nn.Module, test_data: ImageData, terminal_prior: Any,
                       device: torch.device) -> dict[str, float]:
    from st_sweeps.likelihood import LikelihoodConfig, nelbo_bits_per_dim, nll_bits_per_dim

    ev = config.eval
    n = min(ev.nll_examples, len(test_data.images))
    n -= n % dist.world_size()
    if n == 0:
        return {}
    rows = _shard(n)
    x0 = to_model_space(test_data.images[rows], generator(config.seed, "eval", "data"), centered=config.data.centered,
                        flip=False, dequantize=False).to(device)
    lik = LikelihoodConfig(eps=config.truncation.eps, rtol=ev.nll_rtol, atol=ev.nll_atol, trace=ev.nll_trace,
                           n_probes=ev.nll_probes, n_repeats=ev.nll_repeats)
    common = dict(discrete=test_data.discrete, centered=config.data.centered, prior_logp=terminal_prior.log_prob)
    nll = nll_bits_per_dim(model, config.sde, x0, lik, generator=generator(config.seed, "eval", "nll", dist.rank()),
                           **common)
    lik_nelbo = LikelihoodConfig(eps=config.truncation.eps, rtol=ev.nll_rtol, atol=ev.nll_atol, trace=ev.nll_trace,
                                 n_probes=ev.nll_probes, n_repeats=ev.nelbo_repeats)
    nelbo = nelbo_bits_per_dim(model, config.sde, x0, lik_nelbo,
                               generator=generator(config.seed, "eval", "nelbo", dist.rank()), **common)
    return combine_over_ranks({**nll.as_metrics(), **nelbo.as_metrics()}, device)


def combine_over_ranks(local: dict[str, float], device: torch.device) -> dict[str, float]:
    """Global figures from equal-sized shards: means average; a standard error of a mean over
    W equal shards is sqrt(mean(se_r²) / W); example counts add up."""
    w = dist.world_size()
    squared = {k: (v * v if k.endswith("_stderr") else v) for k, v in local.items()}
    mean = dist.all_reduce_mean(squared, device)
    out = {}
    for k, v in mean.items():
        if v != v:  # NaN: undefined (e.g. a spread over one repeat); a missing value, not a number
            continue
        if k.endswith("_stderr"):
            out[k] = (v / w) ** 0.5
        elif k.endswith("_examples"):
            out[k] = v * w
        else:
            out[k] = v
    return out


def draw_samples(config: ExperimentConfig, model: nn.Module, shape: tuple[int, ...], terminal_prior: Any,
                 device: torch.device) -> tuple[torch.Tensor, int]:
    from st_sweeps.sampling import SamplerConfig, sample

    ev = config.eval
    n_local = ev.num_samples // dist.world_size()
    sampler = SamplerConfig(name=ev.sampler, n_steps=ev.sampler_steps, predictor=ev.predictor, corrector=ev.corrector,
                            snr=ev.snr, n_corrector_steps=ev.corrector_steps, eps=ev.sample_eps, rtol=ev.nll_rtol,
                            atol=ev.nll_atol)
    out = []
    nfe = 0
    gen = generator(config.seed, "eval", "samples", dist.rank())
    for start in range(0, n_local, ev.batch_size):
        b = min(ev.batch_size, n_local - start)
        res = sample(sampler, model, config.sde, (b, *shape), generator=gen, device=device,
                     prior_sample=terminal_prior.sample)
        out.append(res.x.detach())
        nfe = max(nfe, res.nfe)
    x = torch.cat(out) if out else torch.empty((0, *shape), device=device)
    return dist.all_gather_cat(x), nfe


def inception_weights_path() -> str | None:
    """A user-given weights file (env var), else None: torch-fidelity then looks in its own cache."""
    return os.environ.get(INCEPTION_WEIGHTS_ENV) or None


def sample_quality_metrics(config: ExperimentConfig, samples: torch.Tensor, train_data: ImageData,
                           out_dir: Path, step: int, tracker: Any) -> dict[str, float]:
    from st_sweeps.fid import compute_fid, missing_weights_message, pixel_frechet_distance, reference_stats

    want = config.eval.sample_quality
    metrics: dict[str, float] = {}
    ref_raw = train_data.images
    if train_data.discrete:
        gen_u8 = to_uint8(samples.cpu(), centered=config.data.centered)
        ref = ref_raw
    else:
        gen_u8, ref = samples.cpu().float(), ref_raw.float()
    if want in ("pixel_fd", "both"):
        metrics["eval/pixel_fd"] = float(pixel_frechet_distance(gen_u8, ref))
    if want in ("fid", "both"):
        if not train_data.discrete:
            tracker.set_tags({"eval/fid_missing_reason": "FID needs 8-bit image data"})
        else:
            cache = Path(os.environ.get(FID_CACHE_ENV) or Path.home() / ".cache" / "st_sweeps" / "fid")
            weights = inception_weights_path()
            missing = missing_weights_message(weights)
            if missing is not None:
                missing += f" For st_sweeps runs, setting {INCEPTION_WEIGHTS_ENV}=/path/to/that/file also works."
            if missing is not None:  # recorded as missing, with the how-to; never a number
                tracker.set_tags({"eval/fid_missing_reason": missing})
                _warn_once(missing)
            else:
                n_ref = config.eval.fid_reference_examples or len(ref)
                stats = reference_stats(ref[:n_ref], cache, key=f"{train_data.name}-train", weights_path=weights)
                fid = compute_fid(gen_u8, stats, weights_path=weights)
                if fid.value is None:
                    tracker.set_tags({"eval/fid_missing_reason": fid.missing_reason})
                else:
                    metrics["eval/fid"] = float(fid.value)
    return metrics


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"[st_sweeps] {message}", flush=True)


def save_samples(samples: torch.Tensor, discrete: bool, centered: bool, out_dir: Path, step: int, tracker: Any) -> None:
    path = out_dir / "samples" / f"samples_step_{step:09d}.png"
    if samples.ndim == 4:
        u8 = to_uint8(samples.cpu(), centered=centered) if discrete else to_uint8(samples.cpu().clamp(-1, 1), True)
        save_image_grid(u8[:64], path, scale=4 if samples.shape[-1] <= 16 else 1)
    elif samples.ndim == 2 and samples.shape[1] == 2:
        save_scatter(samples, path, title=f"samples (step {step})")
    else:
        return
    tracker.log_artifact(path, "samples")


def evaluate_model(config: ExperimentConfig, model: nn.Module, train_data: ImageData, test_data: ImageData,
                   terminal_prior: Any, *, step: int, device: torch.device, out_dir: Path,
                   tracker: Any) -> dict[str, float]:
    """The metrics dict (fixed keys) for one evaluation; artifacts go to out_dir and the tracker."""
    model.eval()
    metrics = likelihood_metrics(config, model, test_data, terminal_prior, device)
    if config.eval.num_samples:
        samples, nfe = draw_samples(config, model, tuple(train_data.shape), terminal_prior, device)
        metrics["eval/nfe_sampling"] = float(nfe)
        if dist.is_main():
            metrics.update(sample_quality_metrics(config, samples, train_data, out_dir, step, tracker))
            save_samples(samples, train_data.discrete, config.data.centered, out_dir, step, tracker)
        metrics = dict(dist.broadcast_object(metrics))  # type: ignore[arg-type]
    return metrics
