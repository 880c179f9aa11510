"""The DDPM++ / NCSN++ U-Net family (Song et al., ICLR 2021, App. H) as one configurable module.

Layout, for L = len(channel_multipliers) levels at resolutions R, R/2, ..., R/2^{L−1}:

    time:  embed(c) → Dense(·, 4E) → SiLU → Dense(4E, 4E)  = temb        (E = time_embedding_dim)
    down:  conv3×3(C → nf); per level: ``blocks_per_resolution`` ResBlocks (+ attention at the
           listed resolutions), then (except at the last level) a ×½ resampler — a BigGAN block
           that downsamples, or a conv Downsample for "ddpm" blocks — combined with the
           progressive input (the image pyramid) when asked. Every output is kept as a skip.
    mid:   ResBlock, attention, ResBlock.
    up:    per level from the lowest resolution: blocks_per_resolution + 1 ResBlocks on
           [h, skip] concatenations, attention at the listed resolutions, the progressive output
           branch, then (except at the top) a ×2 resampler.
    out:   GN → SiLU → conv3×3(→ C), or the sum of the output-skip pyramid.

``progressive_input``: "residual" (NCSN++ CIFAR-10) carries a pyramid through a resampling 3×3
conv and adds it to h at every level ((pyr + h)/√2 when ``skip_rescale``); "input_skip"
(CelebA-HQ 256) downsamples the image itself and adds a 1×1 conv of it to h.
``progressive_output``: "output_skip" sums a GN→SiLU→conv3×3 image read out at every level,
upsampled level by level, and that sum is the output.

The network sees time only through ``time_input`` [B]: DDPM++ uses 999·t with the positional
embedding, NCSN++ log σ(t) with Gaussian Fourier features; ``ScoreModel`` computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from st_sweeps.errors import ConfigError, require
from st_sweeps.networks.base import Network
from st_sweeps.networks.layers import (
    SQRT_HALF,
    AttentionBlock,
    Conv2d,
    Downsample,
    GaussianFourierEmbedding,
    Linear,
    ResBlock,
    SinusoidalEmbedding,
    Upsample,
    group_norm,
    initialise,
)

TIME_EMBEDDINGS = ("positional", "fourier")
RESAMPLES = ("plain", "fir")
RESBLOCKS = ("biggan", "ddpm")
PROGRESSIVE_INPUTS = ("none", "residual", "input_skip")
PROGRESSIVE_OUTPUTS = ("none", "output_skip")


def _positive_int(value: object, field: str) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, field,
            f"must be a positive integer, got {value!r}", "an integer >= 1")


def _one_of(value: object, field: str, allowed: tuple[str, ...]) -> None:
    require(value in allowed, field, f"got {value!r}", allowed)


@dataclass(frozen=True)
class UNetConfig(Network):
    """Hyperparameters of the U-Net; defaults are DDPM++ cont. (VP) on CIFAR-10."""

    channels: int = 128  # nf, the width at the top level
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 2)  # width of level i = channels · m_i
    blocks_per_resolution: int = 4
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    time_embedding: Literal["positional", "fourier"] = "positional"
    fourier_scale: float = 16.0  # std of the Fourier frequencies (fourier embedding only)
    time_embedding_dim: int | None = None  # E; None = channels. temb width is 4E
    resample: Literal["plain", "fir"] = "plain"
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)  # FIR taps (resample: fir only)
    resblock: Literal["biggan", "ddpm"] = "biggan"
    skip_rescale: bool = True  # divide every residual/skip sum by √2
    progressive_input: Literal["none", "residual", "input_skip"] = "none"
    progressive_output: Literal["none", "output_skip"] = "none"
    init_scale: float = 0.0  # scale of each residual branch's last layer (0 → 1e-10)
    # x ↦ 2x − 1 before the first layer (the input pyramid sees it too): the official NCSN++ does
    # this for data in [0, 1] (data.centered false), so its layers see [−1, 1]-scaled inputs
    center_input: bool = False

    def __post_init__(self) -> None:
        for name in ("channel_multipliers", "attention_resolutions", "fir_kernel"):
            value = getattr(self, name)
            require(isinstance(value, (tuple, list)), name, f"must be a list, got {value!r}", "a list of integers")
            object.__setattr__(self, name, tuple(value))
        _positive_int(self.channels, "channels")
        require(len(self.channel_multipliers) >= 1, "channel_multipliers", "must not be empty",
                "a non-empty list of positive integers, e.g. [1, 2, 2, 2]")
        for i, m in enumerate(self.channel_multipliers):
            _positive_int(m, f"channel_multipliers[{i}]")
        _positive_int(self.blocks_per_resolution, "blocks_per_resolution")
        for i, r in enumerate(self.attention_resolutions):
            _positive_int(r, f"attention_resolutions[{i}]")
        require(isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0, "dropout",
                f"got {self.dropout!r}", "a number in [0, 1)")
        _one_of(self.time_embedding, "time_embedding", TIME_EMBEDDINGS)
        require(self.fourier_scale > 0, "fourier_scale", f"must be > 0, got {self.fourier_scale!r}", "a number > 0")
        if self.time_embedding_dim is not None:
            _positive_int(self.time_embedding_dim, "time_embedding_dim")
        _one_of(self.resample, "resample", RESAMPLES)
        require(len(self.fir_kernel) >= 2 and sum(self.fir_kernel) != 0, "fir_kernel",
                f"got {self.fir_kernel!r}", "at least two taps with a non-zero sum, e.g. [1, 3, 3, 1]")
        _one_of(self.resblock, "resblock", RESBLOCKS)
        require(isinstance(self.skip_rescale, bool), "skip_rescale", f"got {self.skip_rescale!r}", "true, false")
        _one_of(self.progressive_input, "progressive_input", PROGRESSIVE_INPUTS)
        _one_of(self.progressive_output, "progressive_output", PROGRESSIVE_OUTPUTS)
        require(self.init_scale >= 0, "init_scale", f"must be >= 0, got {self.init_scale!r}", "a number >= 0")

    def resolutions(self, resolution: int) -> list[int]:
        """The U-Net's resolutions, top level first, for images resolution × resolution."""
        levels = len(self.channel_multipliers)
        factor = 2 ** (levels - 1)
        if resolution % factor:
            reachable = [n for n in range(1, levels + 1) if resolution % 2 ** (n - 1) == 0]
            raise ConfigError("channel_multipliers",
                              f"{levels} levels halve the resolution {levels - 1} times, but the image "
                              f"resolution {resolution} is not divisible by {factor}",
                              f"at most {max(reachable)} levels for resolution {resolution}")
        resolutions = [resolution // 2 ** i for i in range(levels)]
        for r in self.attention_resolutions:
            if r not in resolutions:
                raise ConfigError("attention_resolutions",
                                  f"{r} is not one of the U-Net's resolutions for {resolution}×{resolution} images",
                                  resolutions)
        return resolutions

    def build(self, data_shape: tuple[int, ...], generator: torch.Generator | None = None) -> "UNet":
        shape = tuple(data_shape)
        if len(shape) != 3 or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ConfigError("data_shape", f"a U-Net needs one image's shape [C, H, W], got {list(shape)}",
                              "[C, H, W] with positive sizes")
        if shape[1] != shape[2]:
            raise ConfigError("data_shape", f"images must be square, got {shape[1]}×{shape[2]}", "H == W")
        return initialise(UNet(self, shape[0], shape[2]), generator)


@Network.registry.register("ddpmpp")
@dataclass(frozen=True)
class DDPMpp(UNetConfig):
    """DDPM++ (Song et al. 2021): positional time embedding of 999·t, plain resampling, BigGAN
    residual blocks, no progressive paths (score_sde configs/vp/cifar10_ddpmpp_continuous.py)."""


@Network.registry.register("ncsnpp")
@dataclass(frozen=True)
class NCSNpp(UNetConfig):
    """NCSN++ (Song et al. 2021): Gaussian Fourier embedding of log σ (scale 16), FIR resampling,
    BigGAN residual blocks, residual progressive input (score_sde
    configs/ve/cifar10_ncsnpp_continuous.py)."""

    time_embedding: Literal["positional", "fourier"] = "fourier"
    resample: Literal["plain", "fir"] = "fir"
    progressive_input: Literal["none", "residual", "input_skip"] = "residual"


# --- the module -----------------------------------------------------------------------------------

class _Level(nn.Module):
    """One resolution of the down or up path (attribute bag; the U-Net drives it)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleList()
        self.resample: nn.Module | None = None
        self.pyramid: nn.Module | None = None  # progressive input resampler or output read-out conv
        self.pyramid_norm: nn.Module | None = None  # group norm before the output read-out
        self.combine: nn.Module | None = None  # input skip: 1×1 conv of the downsampled image


class UNet(nn.Module):
    """``forward(x [B,C,H,W], time_input [B]) -> [B,C,H,W]``. See the module docstring."""

    def __init__(self, cfg: UNetConfig, in_channels: int, resolution: int):
        super().__init__()
        self.cfg = cfg
        resolutions = cfg.resolutions(resolution)
        nf = cfg.channels
        emb = cfg.time_embedding_dim or nf
        temb_dim = 4 * emb
        fir = cfg.fir_kernel if cfg.resample == "fir" else None
        self.biggan = cfg.resblock == "biggan"
        self.num_levels = len(resolutions)

        self.time_embed = (GaussianFourierEmbedding(emb, cfg.fourier_scale) if cfg.time_embedding == "fourier"
                           else SinusoidalEmbedding(emb))
        self.temb0 = Linear(self.time_embed.out_dim, temb_dim)
        self.temb1 = Linear(temb_dim, temb_dim)

        def block(in_ch: int, out_ch: int | None = None, resample: str | None = None) -> ResBlock:
            return ResBlock(in_ch, out_ch, temb_dim, dropout=cfg.dropout, skip_rescale=cfg.skip_rescale,
                            init_scale=cfg.init_scale, resample=resample, fir_taps=fir, kind=cfg.resblock)

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, skip_rescale=cfg.skip_rescale, init_scale=cfg.init_scale)

        # down path
        self.conv_in = Conv2d(in_channels, nf, 3)
        skips = [nf]
        ch = nf
        pyramid_ch = in_channels
        self.down = nn.ModuleList()
        for i, (mult, res) in enumerate(zip(cfg.channel_multipliers, resolutions)):
            level = _Level()
            for _ in range(cfg.blocks_per_resolution):
                level.blocks.append(block(ch, nf * mult))
                ch = nf * mult
                if res in cfg.attention_resolutions:
                    level.attention.append(attention(ch))
                skips.append(ch)
            if i < self.num_levels - 1:
                level.resample = block(ch, resample="down") if self.biggan else Downsample(ch, with_conv=True,
                                                                                          fir_taps=fir)
                if cfg.progressive_input == "input_skip":
                    level.pyramid = Downsample(in_channels, with_conv=False, fir_taps=fir)
                    level.combine = Conv2d(in_channels, ch, 1)
                elif cfg.progressive_input == "residual":
                    level.pyramid = Downsample(pyramid_ch, ch, with_conv=True, fir_taps=fir)
                    pyramid_ch = ch
                skips.append(ch)
            self.down.append(level)

        # middle
        self.mid = nn.ModuleList([block(ch), attention(ch), block(ch)])

        # up path (levels stored from the lowest resolution up)
        self.up = nn.ModuleList()
        for i in reversed(range(self.num_levels)):
            level = _Level()
            out_ch = nf * cfg.channel_multipliers[i]
            for _ in range(cfg.blocks_per_resolution + 1):
                level.blocks.append(block(ch + skips.pop(), out_ch))
                ch = out_ch
            if resolutions[i] in cfg.attention_resolutions:
                level.attention.append(attention(ch))
            if cfg.progressive_output == "output_skip":
                level.pyramid_norm = group_norm(ch)
                level.pyramid = Conv2d(ch, in_channels, 3, init_scale=cfg.init_scale)
            if i > 0:
                level.resample = block(ch, resample="up") if self.biggan else Upsample(ch, with_conv=True,
                                                                                      fir_taps=fir)
            self.up.append(level)
        assert not skips
        self.pyramid_up = (Upsample(in_channels, with_conv=False, fir_taps=fir)
                           if cfg.progressive_output == "output_skip" else None)

        if cfg.progressive_output == "output_skip":
            self.norm_out = self.conv_out = None
        else:
            self.norm_out = group_norm(ch)
            self.conv_out = Conv2d(ch, in_channels, 3, init_scale=cfg.init_scale)

    def _resample(self, level: _Level, h: Tensor, temb: Tensor) -> Tensor:
        return level.resample(h, temb) if self.biggan else level.resample(h)

    def forward(self, x: Tensor, time_input: Tensor) -> Tensor:
        cfg = self.cfg
        temb = self.time_embed(time_input.to(x.dtype).reshape(-1))  # [B, E or 2E]
        temb = self.temb1(F.silu(self.temb0(temb)))  # [B, 4E]

        if cfg.center_input:
            x = 2 * x - 1
        pyramid = x if cfg.progressive_input != "none" else None
        hs = [self.conv_in(x)]
        for level in self.down:
            for j, blk in enumerate(level.blocks):
                h = blk(hs[-1], temb)
                if len(level.attention):
                    h = level.attention[j](h)
                hs.append(h)
            if level.resample is not None:
                h = self._resample(level, hs[-1], temb)
                if cfg.progressive_input == "input_skip":
                    pyramid = level.pyramid(pyramid)
                    h = level.combine(pyramid) + h
                elif cfg.progressive_input == "residual":
                    pyramid = level.pyramid(pyramid) + h
                    pyramid = pyramid * SQRT_HALF if cfg.skip_rescale else pyramid
                    h = pyramid
                hs.append(h)

        h = hs[-1]
        h = self.mid[0](h, temb)
        h = self.mid[1](h)
        h = self.mid[2](h, temb)

        out_pyramid = None
        for level in self.up:
            for blk in level.blocks:
                h = blk(torch.cat([h, hs.pop()], dim=1), temb)
            if len(level.attention):
                h = level.attention[0](h)
            if level.pyramid is not None:
                read_out = level.pyramid(F.silu(level.pyramid_norm(h)))
                out_pyramid = read_out if out_pyramid is None else self.pyramid_up(out_pyramid) + read_out
            if level.resample is not None:
                h = self._resample(level, h, temb)
        assert not hs

        if out_pyramid is not None:
            return out_pyramid
        return self.conv_out(F.silu(self.norm_out(h)))


# --- presets: the paper's networks ----------------------------------------------------------------

def ddpmpp_cifar10() -> DDPMpp:
    """DDPM++ cont. (VP), CIFAR-10 32×32 — score_sde configs/vp/cifar10_ddpmpp_continuous.py
    (the Soft Truncation repo's configs/vp/CIFAR10/ddpmpp_nll.py uses the same network):
    nf 128, (1, 2, 2, 2), 4 blocks, attention at 16, BigGAN blocks, plain resampling,
    positional embedding, dropout 0.1, skip rescale, init_scale 0."""
    return DDPMpp()


def ddpmpp_deep_cifar10() -> DDPMpp:
    """DDPM++ cont. (deep, VP), CIFAR-10 — score_sde configs/subvp/cifar10_ddpmpp_deep_continuous.py
    and the Soft Truncation repo's configs/vp/CIFAR10/ddpmpp_nll_st_deep.py: as DDPM++ with 8
    residual blocks per resolution."""
    return DDPMpp(blocks_per_resolution=8)


def ddpmpp_deepest_cifar10() -> DDPMpp:
    """The Soft Truncation repo's "deepest" DDPM++ FID config, CIFAR-10 — configs/vp/CIFAR10/
    ddpmpp_fid_st_deepest.py: nf 512, (1, 1, 1), 8 blocks, FIR resampling, dropout 0.2, and a
    128-wide positional embedding (its ``embedding_dim``), i.e. a 512-wide temb."""
    return DDPMpp(channels=512, channel_multipliers=(1, 1, 1), blocks_per_resolution=8, dropout=0.2,
                  resample="fir", time_embedding_dim=128)


def ncsnpp_cifar10() -> NCSNpp:
    """NCSN++ cont. (VE), CIFAR-10 — score_sde configs/ve/cifar10_ncsnpp_continuous.py; the same
    network is UNCSN++ (RVE) in the Soft Truncation repo's configs/ve/CIFAR10/uncsnpp_st.py:
    nf 128, (1, 2, 2, 2), 4 blocks, attention at 16, BigGAN blocks, FIR (1, 3, 3, 1), residual
    progressive input, Fourier embedding (scale 16) of log σ, dropout 0.1."""
    return NCSNpp()


def ncsnpp_deep_cifar10() -> NCSNpp:
    """NCSN++ cont. (deep, VE), CIFAR-10 — score_sde configs/ve/cifar10_ncsnpp_deep_continuous.py
    and the Soft Truncation repo's configs/ve/cifar10_uncsn_deep_1e-5.py: as NCSN++ with 8
    residual blocks per resolution."""
    return NCSNpp(blocks_per_resolution=8)


def ncsnpp_celebahq256() -> NCSNpp:
    """NCSN++ cont. (VE), CelebA-HQ 256×256 — score_sde configs/ve/celebahq_256_ncsnpp_continuous.py
    and the Soft Truncation repo's configs/ve/celebahq/uncsnpp_st.py: nf 128,
    (1, 1, 2, 2, 2, 2, 2), 2 blocks, attention at 16, FIR, output skip + input skip, dropout 0
    (the 256-px configs turn dropout off; the CIFAR-10 ones keep 0.1)."""
    return NCSNpp(channel_multipliers=(1, 1, 2, 2, 2, 2, 2), blocks_per_resolution=2, dropout=0.0,
                  progressive_input="input_skip", progressive_output="output_skip")


# name -> (config factory, one example's shape)
PRESETS: dict[str, tuple[Callable[[], UNetConfig], tuple[int, int, int]]] = {
    "ddpmpp_cifar10": (ddpmpp_cifar10, (3, 32, 32)),
    "ddpmpp_deep_cifar10": (ddpmpp_deep_cifar10, (3, 32, 32)),
    "ddpmpp_deepest_cifar10": (ddpmpp_deepest_cifar10, (3, 32, 32)),
    "ncsnpp_cifar10": (ncsnpp_cifar10, (3, 32, 32)),
    "ncsnpp_deep_cifar10": (ncsnpp_deep_cifar10, (3, 32, 32)),
    "ncsnpp_celebahq256": (ncsnpp_celebahq256, (3, 256, 256)),
}
