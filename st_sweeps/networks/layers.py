"""Building blocks of the score networks: time embeddings, resampling (plain and FIR), attention,
residual blocks, and the DDPM-style initialisation they share.

Architecture facts follow the DDPM++/NCSN++ family of Song et al. (ICLR 2021, App. H) as released
in score_sde: group norm with min(C/4, 32) groups and eps 1e-6, SiLU, "fan_avg" uniform
initialisation (Glorot) with the last layer of every residual branch scaled by ``init_scale``
(0 → 1e-10, nearly zero but still passing gradients), skip sums divided by √2, and the FIR
resampling filter (1, 3, 3, 1) of StyleGAN2 (Karras et al. 2020), with its padding arithmetic.

Initialisation is a separate pass, :func:`initialise`, that draws every weight from one
``torch.Generator``, so the same seed gives the same network whatever the global RNG did.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SQRT_HALF = 1.0 / math.sqrt(2.0)


# --- initialisation -------------------------------------------------------------------------------

def _fans(shape: torch.Size) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight [out, in, *kernel]."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def fan_avg_uniform_(weight: Tensor, scale: float, generator: torch.Generator | None) -> None:
    """U(±√(3 s / fan_avg)) with fan_avg = (fan_in + fan_out)/2: DDPM's "variance scaling"
    initialiser (Glorot uniform with gain² = s). A scale of 0 means 1e-10, as in score_sde, so
    a zero-initialised output layer still lets gradients reach the layers before it."""
    s = 1e-10 if scale == 0 else scale
    fan_in, fan_out = _fans(weight.shape)
    bound = math.sqrt(3.0 * s / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        weight.uniform_(-bound, bound, generator=generator)


class Initialisable:
    """Mixin: a layer that knows how to draw its own parameters from a generator."""

    def init_weights(self, generator: torch.Generator | None) -> None:  # pragma: no cover
        raise NotImplementedError


def initialise(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Draw every parameter of ``module`` in a fixed order from ``generator``.

    Layers of this package draw their own (``init_weights``); group norms get weight 1, bias 0.
    Meta tensors (parameter counting without memory) are left alone.
    """
    if any(p.is_meta for p in module.parameters()):
        return module
    for m in module.modules():
        if isinstance(m, Initialisable):
            m.init_weights(generator)
        elif isinstance(m, nn.GroupNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class Linear(nn.Linear, Initialisable):
    def __init__(self, in_features: int, out_features: int, init_scale: float = 1.0):
        super().__init__(in_features, out_features)
        self.init_scale = init_scale

    def init_weights(self, generator: torch.Generator | None) -> None:
        fan_avg_uniform_(self.weight, self.init_scale, generator)
        nn.init.zeros_(self.bias)


class Conv2d(nn.Conv2d, Initialisable):
    """Square convolution, 'same' padding unless told otherwise, DDPM initialisation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1,
                 padding: int | None = None, init_scale: float = 1.0):
        super().__init__(in_ch, out_ch, kernel, stride=stride,
                         padding=kernel // 2 if padding is None else padding)
        self.init_scale = init_scale

    def init_weights(self, generator: torch.Generator | None) -> None:
        fan_avg_uniform_(self.weight, self.init_scale, generator)
        nn.init.zeros_(self.bias)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(C/4, 32) groups (score_sde), stepping down to a divisor of C for the
    small or odd widths of test networks."""
    groups = max(1, min(channels // 4, 32))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


# --- time embeddings ------------------------------------------------------------------------------

def sinusoidal_embedding(time_input: Tensor, dim: int, max_positions: float = 10000.0) -> Tensor:
    """Transformer/DDPM positional embedding of a [B] float: [sin(c ω_k), cos(c ω_k)], with
    ω_k = max_positions^{−k/(dim/2 − 1)}, k = 0..dim/2−1; zero-padded to ``dim`` if odd."""
    half = dim // 2
    step = math.log(max_positions) / max(half - 1, 1)
    freqs = torch.exp(-step * torch.arange(half, device=time_input.device, dtype=torch.float32))
    args = time_input.float()[:, None] * freqs[None, :]  # [B, half]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.to(time_input.dtype if time_input.is_floating_point() else torch.float32)


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int, max_positions: float = 10000.0):
        super().__init__()
        self.dim = dim
        self.max_positions = max_positions
        self.out_dim = dim

    def forward(self, time_input: Tensor) -> Tensor:  # [B] -> [B, dim]
        return sinusoidal_embedding(time_input, self.dim, self.max_positions)


class GaussianFourierEmbedding(nn.Module, Initialisable):
    """Random Fourier features [sin(2π c w), cos(2π c w)], w ~ N(0, scale²) of size ``dim``
    (Tancik et al. 2020; NCSN++ feeds c = log σ with scale 16). The frequencies are fixed:
    a persistent buffer (saved with the weights, never trained), so they are not parameters."""

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        self.scale = scale
        self.register_buffer("freqs", torch.empty(dim))
        self.out_dim = 2 * dim
        if not self.freqs.is_meta:
            self.init_weights(None)

    def init_weights(self, generator: torch.Generator | None) -> None:
        with torch.no_grad():
            self.freqs.normal_(0.0, self.scale, generator=generator)

    def forward(self, time_input: Tensor) -> Tensor:  # [B] -> [B, 2 dim]
        args = 2 * math.pi * time_input[:, None] * self.freqs[None, :].to(time_input.dtype)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


# --- resampling -----------------------------------------------------------------------------------

def fir_kernel_2d(taps: Sequence[float]) -> Tensor:
    """Separable 2-D FIR filter from 1-D taps, normalised to sum 1 (so constants pass unchanged)."""
    total = float(sum(taps)) ** 2
    return torch.tensor([[a * b / total for b in taps] for a in taps], dtype=torch.float32)


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Zero-insertion upsampling by ``up``, padding (before, after) on both axes, convolution with
    the 2-D ``kernel`` (applied per channel), then keeping every ``down``-th sample."""
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))  # a zero after each sample, both axes
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip(0, 1).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def fir_upsample(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """[B,C,H,W] -> [B,C,2H,2W] with the FIR filter (gain factor² makes up for inserted zeros)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor ** 2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def fir_downsample(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """[B,C,H,W] -> [B,C,H/2,W/2]: low-pass with the FIR filter, then decimate."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample(x: Tensor, factor: int = 2) -> Tensor:
    return F.interpolate(x, scale_factor=factor, mode="nearest")


def naive_downsample(x: Tensor, factor: int = 2) -> Tensor:
    return F.avg_pool2d(x, factor, stride=factor)


class FIRConv2d(nn.Module, Initialisable):
    """3×3 convolution fused with FIR resampling by 2 (StyleGAN2's ``upsample_conv_2d`` and
    ``conv_downsample_2d``): up = transposed strided convolution then FIR smoothing; down = FIR
    smoothing then strided convolution. Weight [out, in, k, k] plus bias."""

    def __init__(self, in_ch: int, out_ch: int, mode: str, fir_taps: Sequence[float], kernel: int = 3,
                 init_scale: float = 1.0):
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"mode must be 'up' or 'down', got {mode!r}")
        self.mode = mode
        self.init_scale = init_scale
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("fir", fir_kernel_2d(fir_taps), persistent=False)

    def init_weights(self, generator: torch.Generator | None) -> None:
        fan_avg_uniform_(self.weight, self.init_scale, generator)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        k = self.weight.shape[-1]
        n = self.fir.shape[0]
        if self.mode == "up":
            # zero-insert then correlate with w == transposed conv with w flipped and transposed
            w = self.weight.flip(-1, -2).transpose(0, 1)
            x = F.conv_transpose2d(x, w, stride=2)  # [B, out, 2H + k − 2, ...]
            p = (n - 2) - (k - 1)
            x = upfirdn2d(x, self.fir * 4, pad=((p + 1) // 2 + 1, p // 2 + 1))
        else:
            p = (n - 2) + (k - 1)
            x = upfirdn2d(x, self.fir, pad=((p + 1) // 2, p // 2))
            x = F.conv2d(x, self.weight, stride=2)
        return x + self.bias[None, :, None, None]


class _Resample(nn.Module):
    """×2 up- or downsampling, optionally with a 3×3 convolution to ``out_ch`` channels; with
    ``fir_taps`` an FIR filter (fused with the convolution if any)."""

    def __init__(self, direction: str, in_ch: int, out_ch: int | None, with_conv: bool,
                 fir_taps: Sequence[float] | None):
        super().__init__()
        out_ch = out_ch or in_ch
        self.conv: nn.Module | None = None
        if fir_taps is not None:
            self.register_buffer("fir", fir_kernel_2d(fir_taps), persistent=False)
            if with_conv:
                self.conv = FIRConv2d(in_ch, out_ch, direction, fir_taps)
        else:
            self.fir = None
            if with_conv:  # down: stride 2 on the input padded by one on the right/bottom ('SAME' in TF)
                self.conv = (Conv2d(in_ch, out_ch, 3) if direction == "up"
                             else Conv2d(in_ch, out_ch, 3, stride=2, padding=0))
        if self.conv is None and out_ch != in_ch:
            raise ValueError(f"a{'n' if direction == 'up' else ''} {direction}sample without a convolution "
                             "cannot change the channel count")


class Upsample(_Resample):
    """×2 upsampling, optionally with a 3×3 convolution to ``out_ch`` channels.

    plain: nearest neighbour (then the conv); fir: FIR filter (fused with the conv if any)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = True,
                 fir_taps: Sequence[float] | None = None):
        super().__init__("up", in_ch, out_ch, with_conv, fir_taps)

    def forward(self, x: Tensor) -> Tensor:
        if self.fir is not None:
            return self.conv(x) if self.conv is not None else fir_upsample(x, self.fir)
        x = naive_upsample(x)
        return self.conv(x) if self.conv is not None else x


class Downsample(_Resample):
    """×2 downsampling, optionally with a 3×3 convolution to ``out_ch`` channels.

    plain: stride-2 conv on the input padded by one on the right/bottom ('SAME' in TF), or 2×2
    average pooling without a conv; fir: FIR filter (fused with the conv if any)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = True,
                 fir_taps: Sequence[float] | None = None):
        super().__init__("down", in_ch, out_ch, with_conv, fir_taps)

    def forward(self, x: Tensor) -> Tensor:
        if self.fir is not None:
            return self.conv(x) if self.conv is not None else fir_downsample(x, self.fir)
        if self.conv is None:
            return naive_downsample(x)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


# --- attention and residual blocks ----------------------------------------------------------------

class AttentionBlock(nn.Module, Initialisable):
    """Single-head self-attention over all pixels (DDPM's AttnBlock), residual, the sum divided
    by √2 when ``skip_rescale``. q, k, v are one 1×1 conv to 3C (the same parameters as three
    C→C "NIN" layers, each initialised as its own C×C layer with scale 0.1); the output
    projection is initialised with ``init_scale``."""

    def __init__(self, channels: int, skip_rescale: bool = True, init_scale: float = 0.0):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = Conv2d(channels, channels, 1, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def init_weights(self, generator: torch.Generator | None) -> None:
        for chunk in self.qkv.weight.data.chunk(3, dim=0):
            fan_avg_uniform_(chunk, 0.1, generator)
        nn.init.zeros_(self.qkv.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # [B, HW, C]
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # [B, HW, C]
        out = self.proj(out.transpose(-1, -2).reshape(b, c, h, w))
        return (x + out) * SQRT_HALF if self.skip_rescale else x + out


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding (DDPM++ "ddpm" and BigGAN++ "biggan").

        h = Conv₁(Dropout(act(GN(Conv₀(resample(act(GN(x)))) + Dense(act(temb))))))
        out = (shortcut(resample(x)) + h) [/ √2]

    ``resample`` is "up", "down" or None (only BigGAN blocks resample; FIR when ``fir_taps``).
    The shortcut is a 1×1 conv whenever the channels change or the block resamples (for a
    "ddpm" block, DDPM's NIN: the same parameter count, initialised with scale 0.1).
    """

    def __init__(self, in_ch: int, out_ch: int | None, temb_dim: int, *, dropout: float,
                 skip_rescale: bool, init_scale: float, resample: str | None = None,
                 fir_taps: Sequence[float] | None = None, kind: str = "biggan"):
        super().__init__()
        out_ch = out_ch or in_ch
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        if kind == "ddpm" and resample is not None:
            raise ValueError("'ddpm' residual blocks do not resample; use Upsample/Downsample")
        self.resample = resample
        if fir_taps is not None and resample is not None:
            self.register_buffer("fir", fir_kernel_2d(fir_taps), persistent=False)
        else:
            self.fir = None
        self.norm0 = group_norm(in_ch)
        self.conv0 = Conv2d(in_ch, out_ch, 3)
        self.temb = Linear(temb_dim, out_ch)
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = Conv2d(out_ch, out_ch, 3, init_scale=init_scale)
        self.shortcut: Conv2d | None = None
        if in_ch != out_ch or resample is not None:
            self.shortcut = Conv2d(in_ch, out_ch, 1, init_scale=0.1 if kind == "ddpm" else 1.0)
        self.skip_rescale = skip_rescale

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return fir_upsample(x, self.fir) if self.fir is not None else naive_upsample(x)
        if self.resample == "down":
            return fir_downsample(x, self.fir) if self.fir is not None else naive_downsample(x)
        return x

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self._resample(F.silu(self.norm0(x)))
        h = self.conv0(h) + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        x = self._resample(x)
        if self.shortcut is not None:
            x = self.shortcut(x)
        return (x + h) * SQRT_HALF if self.skip_rescale else x + h
