"""One evaluation of a trained (EMA) model: NLL and NELBO in bits/dim, samples with their NFE,
and sample quality (pixel-space Fréchet distance without weights; FID and the Inception Score
when Inception weights exist — never a substitute number under those names; on the 8×8 digits a
classifier-feature Fréchet distance, on mixture data exact-density figures: docs/METRICS.md).

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
from st_sweeps.fid import INCEPTION_WEIGHTS_ENV, inception_weights_path
from st_sweeps.plots import save_image_grid, save_scatter
from st_sweeps.seeding import generator

FID_CACHE_ENV = "ST_SWEEPS_FID_CACHE"


def _shard(n: int) -> slice:
    per = n // dist.world_size()
    return slice(dist.rank() * per, (dist.rank() + 1) * per)


def likelihood_metrics(config: ExperimentConfig, model: nn.Module, test_data: ImageData, terminal_prior: Any,
                       device: torch.device, train_data: ImageData | None = None) -> dict[str, float]:
    """NLL and NELBO in bits/dim on the first ``eval.likelihood.examples`` test examples (uniform
    dequantization for 8-bit data: ``eval/nll_bpd``, ``eval/nelbo_bpd``, ...). With
    ``eval.likelihood.dequantization: variational`` also the variational-dequantization bounds
    (``eval/nll_bpd_vardeq``, ``eval/nelbo_bpd_vardeq``, ...; ODE from x_ε with residual and
    without, the score_sde protocol skipped) with q fitted on ``train_data`` (required then)."""
    import dataclasses

    from st_sweeps.likelihood import nelbo_bits_per_dim, nll_bits_per_dim

    settings = config.eval.likelihood
    n = min(settings.examples, len(test_data.images))
    n -= n % dist.world_size()
    if n == 0:
        return {}
    rows = _shard(n)
    x0 = to_model_space(test_data.images[rows], generator(config.seed, "eval", "data"), centered=config.data.centered,
                        flip=False, dequantize=False).to(device)
    lik = settings.ode_config(config.truncation.eps)
    common = dict(discrete=test_data.discrete, centered=config.data.centered, prior_logp=terminal_prior.log_prob)
    nll = nll_bits_per_dim(model, config.sde, x0, lik, generator=generator(config.seed, "eval", "nll", dist.rank()),
                           **common)
    lik_nelbo = settings.nelbo_config(config.truncation.eps)
    nelbo = nelbo_bits_per_dim(model, config.sde, x0, lik_nelbo,
                               generator=generator(config.seed, "eval", "nelbo", dist.rank()), **common)
    metrics = {**nll.as_metrics(), **nelbo.as_metrics()}
    if settings.dequantization.name == "variational":
        if train_data is None or not test_data.discrete:
            raise ValueError("likelihood_metrics: eval.likelihood.dequantization='variational' needs 8-bit data and the "
                             "training split (train_data) to fit the dequantizer on")
        deq, fit_bpd = fit_eval_dequantizer(config, model, train_data, terminal_prior, device)
        nll_v = nll_bits_per_dim(model, config.sde, x0, dataclasses.replace(lik, score_sde_protocol=False),
                                 generator=generator(config.seed, "eval", "nll_vardeq", dist.rank()), dequantizer=deq,
                                 **common)
        nelbo_v = nelbo_bits_per_dim(model, config.sde, x0, lik_nelbo, dequantizer=deq,
                                     generator=generator(config.seed, "eval", "nelbo_vardeq", dist.rank()), **common)
        metrics.update({**nll_v.as_metrics(), **nelbo_v.as_metrics(), "eval/dequantizer_fit_bpd": fit_bpd})
    return combine_over_ranks(metrics, device)


def fit_eval_dequantizer(config: ExperimentConfig, model: nn.Module, train_data: ImageData, terminal_prior: Any,
                         device: torch.device) -> tuple[nn.Module, float]:
    """q(u|x) for the variational-dequantization bounds, and its final training bound in bits/dim.

    As in Song et al. 2021 (maximum likelihood training of score models): with the score model
    frozen, q is fitted to maximise E_q[−NELBO(y) − log q(u|x)] on training images, where NELBO
    is the SDE's bound with the residual term (``nelbo_nats(..., differentiable=True)``, same ε
    and terminal prior as the evaluation); the NLL is then evaluated with the ODE. Rank 0 fits
    and broadcasts, so every shard uses one q; all draws come from (seed, "eval",
    "dequantizer", ...), so q does not depend on the world size. The returned figure is the
    mean over the last (up to) 50 steps of the training objective as bits/dim (NELBO + log q,
    offset included): a bound on the training images' NLL, to check the fit converged.
    """
    from st_sweeps.dequantization import Dequantizer, fit_dequantizer
    from st_sweeps.likelihood import nelbo_nats, to_bits_per_dim
    from st_sweeps.likelihood_settings import VariationalDequantization

    fit = config.eval.likelihood.dequantization
    if not isinstance(fit, VariationalDequantization):
        raise ValueError("fit_eval_dequantizer: eval.likelihood.dequantization is "
                         f"{fit.name!r}; only 'variational' has a q to fit")
    shape = tuple(train_data.shape)
    deq = Dequantizer(shape, hidden=fit.hidden,
                      generator=generator(config.seed, "eval", "dequantizer", "init")).to(device)
    history: list[float] = []
    if dist.is_main():
        g_elbo = generator(config.seed, "eval", "dequantizer", "elbo")

        def log_density(y: torch.Tensor) -> torch.Tensor:
            _, with_residual = nelbo_nats(model, config.sde, y, eps=config.truncation.eps, generator=g_elbo,
                                          prior_logp=terminal_prior.log_prob, differentiable=True)
            return -with_residual

        history = fit_dequantizer(deq, log_density, train_data.images, centered=config.data.centered,
                                  steps=fit.steps, lr=fit.lr, batch_size=fit.batch_size,
                                  generator=generator(config.seed, "eval", "dequantizer", "fit"))
    state = {k: v.detach().cpu() for k, v in deq.state_dict().items()}
    state, history = dist.broadcast_object((state, history))  # type: ignore[misc]
    deq.load_state_dict(state)
    deq.eval()
    tail = torch.tensor(history[-50:], dtype=torch.float64)
    fit_bpd = to_bits_per_dim(-tail.mean(), train_data.images[0].numel(), discrete=True,
                              centered=config.data.centered)
    return deq, float(fit_bpd)


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
    from st_sweeps.sampling import sample

    ev = config.eval
    n_local = ev.num_samples // dist.world_size()
    out = []
    nfe = 0
    gen = generator(config.seed, "eval", "samples", dist.rank())
    for start in range(0, n_local, ev.batch_size):
        b = min(ev.batch_size, n_local - start)
        res = sample(ev.sampler, model, config.sde, (b, *shape), generator=gen, device=device,
                     prior_sample=terminal_prior.sample)
        out.append(res.x.detach())
        nfe = max(nfe, res.nfe)
    x = torch.cat(out) if out else torch.empty((0, *shape), device=device)
    return dist.all_gather_cat(x), nfe


def _fid_cache_dir() -> Path:
    """Where FID reference statistics and the digits classifier are cached."""
    return Path(os.environ.get(FID_CACHE_ENV) or Path.home() / ".cache" / "st_sweeps" / "fid")


def sample_quality_metrics(config: ExperimentConfig, samples: torch.Tensor, train_data: ImageData,
                           out_dir: Path, step: int, tracker: Any) -> dict[str, float]:
    """``eval.sample_quality``: pixel_fd and/or fid (``both``), digits_fd (classifier-feature
    Fréchet distance and KID, 8×8 digits: ``st_sweeps.digits_fd``), gmm_exact (exact density and
    two-sample tests on mixture data: ``st_sweeps.gmm_quality``), or none."""
    from st_sweeps.fid import compute_fid, fetch_missing_weights, pixel_frechet_distance, reference_stats

    quality = config.eval.sample_quality
    want = quality.name
    metrics: dict[str, float] = {}
    ref_raw = train_data.images
    if train_data.discrete:
        gen_u8 = to_uint8(samples.cpu(), centered=config.data.centered)
        ref = ref_raw
    else:
        gen_u8, ref = samples.cpu().float(), ref_raw.float()
    if quality.pixel_fd:
        metrics["eval/pixel_fd"] = float(pixel_frechet_distance(gen_u8, ref))
    if want == "digits_fd":  # the config allows it for the 8×8 digits only
        from st_sweeps.digits_fd import digits_fd

        metrics.update(digits_fd(gen_u8, cache_dir=_fid_cache_dir()).as_metrics())
    if want == "gmm_exact":  # the config allows it for Gaussian-mixture data only
        from st_sweeps.gmm_quality import gmm_quality

        if train_data.mixture is None:
            raise ValueError(f"eval.sample_quality='gmm_exact' needs data with an exact mixture, got {train_data.name!r}")
        # the fresh reference draws are common to every evaluation of the run (seed, "eval")
        metrics.update(gmm_quality(train_data.mixture, samples.cpu(),
                                   generator(config.seed, "eval", "gmm_reference")).as_metrics())
    metrics.update(fd_stderr_metrics(metrics, gen_u8, ref, generator(config.seed, "eval", "fd_bootstrap")))
    if quality.fid:
        if not train_data.discrete:
            tracker.set_tags({"eval/fid_missing_reason": "FID needs 8-bit image data"})
        else:
            cache = _fid_cache_dir()
            weights = inception_weights_path()
            missing = fetch_missing_weights(weights)  # downloads them where there is internet
            if missing is not None:
                missing += f" For st_sweeps runs, setting {INCEPTION_WEIGHTS_ENV}=/path/to/that/file also works."
            if missing is not None:  # recorded as missing, with the how-to; never a number
                tracker.set_tags({"eval/fid_missing_reason": missing})
                _warn_once(missing)
            else:
                n_ref = quality.reference_examples or len(ref)
                stats = reference_stats(ref[:n_ref], cache, key=f"{train_data.name}-train", weights_path=weights)
                # also the Inception Score, from the same Inception pass
                fid = compute_fid(gen_u8, stats, weights_path=weights, is_splits=quality.inception_score_splits)
                metrics.update({k: float(v) for k, v in fid.as_metrics().items()})
                if fid.value is None:
                    tracker.set_tags({"eval/fid_missing_reason": fid.missing_reason})
                elif fid.inception_score_missing_reason is not None:  # e.g. fewer samples than IS splits
                    tracker.set_tags({"eval/inception_score_missing_reason": fid.inception_score_missing_reason})
    return metrics


FD_BOOTSTRAP_REPEATS = 50
FD_BOOTSTRAP_MAX_DIM = 1024  # above this many features a resample costs as much as a pixel_fd of CIFAR


def fd_bootstrap_stderr(features: torch.Tensor, reference: torch.Tensor, gen: torch.Generator,
                        repeats: int = FD_BOOTSTRAP_REPEATS) -> float:
    """Standard error of a Fréchet distance from the generated set's own data: the std of the
    distance over ``repeats`` bootstrap resamples (with replacement) of the generated features
    [N, F]. The reference [M, F] stays fixed: every trial of a sweep shares it."""
    from st_sweeps.fid import frechet_distance, gaussian_fit

    ref = gaussian_fit(reference)
    n = len(features)
    values = [frechet_distance(*gaussian_fit(features[torch.randint(0, n, (n,), generator=gen)]), *ref)
              for _ in range(repeats)]
    return float(torch.tensor(values, dtype=torch.float64).std())


def fd_stderr_metrics(metrics: dict[str, float], generated: torch.Tensor, reference: torch.Tensor,
                      gen: torch.Generator) -> dict[str, float]:
    """``eval/pixel_fd_stderr`` and ``eval/digits_fd_stderr`` beside the distances ``metrics``
    holds (bootstrap over the samples, ``fd_bootstrap_stderr``); none for more than
    ``FD_BOOTSTRAP_MAX_DIM`` features (a missing value, not a number)."""
    out: dict[str, float] = {}

    def pixels(x: torch.Tensor) -> torch.Tensor:
        return (x.double() / 255.0 if x.dtype == torch.uint8 else x.double()).flatten(1)

    if "eval/pixel_fd" in metrics and generated[0].numel() <= FD_BOOTSTRAP_MAX_DIM and len(generated) >= 2:
        out["eval/pixel_fd_stderr"] = fd_bootstrap_stderr(pixels(generated), pixels(reference), gen)
    if "eval/digits_fd" in metrics and len(generated) >= 2:
        from st_sweeps.digits_fd import classifier_path, digits_split, load_classifier

        model, _ = load_classifier(classifier_path(_fid_cache_dir()))
        with torch.no_grad():  # the classifier's feature layer, as digits_fd hands it to torch-fidelity
            features = [model(x.float() / 255.0)[0].double() for x in (generated, digits_split("train")[0])]
        out["eval/digits_fd_stderr"] = fd_bootstrap_stderr(*features, gen)
    return out


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
    metrics = likelihood_metrics(config, model, test_data, terminal_prior, device, train_data=train_data)
    if config.eval.num_samples:
        samples, nfe = draw_samples(config, model, tuple(train_data.shape), terminal_prior, device)
        metrics["eval/nfe_sampling"] = float(nfe)
        if dist.is_main():
            metrics.update(sample_quality_metrics(config, samples, train_data, out_dir, step, tracker))
            save_samples(samples, train_data.discrete, config.data.centered, out_dir, step, tracker)
        metrics = dict(dist.broadcast_object(metrics))  # type: ignore[arg-type]
    return metrics
