"""Pure tensor transforms between stored images and the model's coordinates.

Stored 8-bit images are uint8 ``[B, C, H, W]`` with values v ∈ {0, …, 255}. The model works in
float32 "model space":

- ``centered=False``: [0, 1]; ``centered=True``: [−1, 1] through x ↦ 2x − 1 (DDPM++/NCSN++ configs
  of the paper use centred data for VP and uncentred for VE/RVE).
- Uniform dequantization (Kim et al. 2022, Sec. "Evaluation"; the official code's
  ``x ← (255 x + U) / 256`` for x = v / 255): x = (v + U) / 256 with U ~ U[0, 1), so every pixel
  lies in its bin [v/256, (v+1)/256). Without dequantization x = v / 255, so 0 ↦ 0 and 255 ↦ 1.
- Random horizontal flip, per example with probability ½ (training batches only; the official
  code flips when ``random_flip`` is set and not when evaluating).

Synthetic (float) data are generated directly in model space: they pass through unchanged.
Randomness always comes from an explicit ``torch.Generator`` (on the batch's device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["to_model_space", "to_uint8", "random_hflip", "resize_images"]


def random_hflip(batch: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability ½: ``[B, C, H, W] -> [B, C, H, W]``.

    One Bernoulli(½) draw per example from ``generator`` (exactly B draws of ``torch.rand``).
    """
    flip = torch.rand(batch.shape[0], generator=generator, device=batch.device) < 0.5  # [B]
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch)


def to_model_space(batch: Tensor, generator: torch.Generator | None, *, centered: bool, flip: bool,
                   dequantize: bool) -> Tensor:
    """Stored batch -> float32 model-space batch.

    uint8 ``[B, C, H, W]``: optional random horizontal flip (first, so the flip draws do not
    depend on ``dequantize``), then x = (v + U)/256 with U ~ U[0, 1) when ``dequantize`` else
    x = v/255, then x ↦ 2x − 1 when ``centered``.
    float input (synthetic data, already in model space): returned as float32, unchanged.
    ``generator`` may be None only when neither ``flip`` nor ``dequantize`` needs randomness.
    """
    if batch.dtype != torch.uint8:
        if not batch.is_floating_point():
            raise TypeError(f"to_model_space: expected uint8 images or float data, got {batch.dtype}")
        return batch.to(torch.float32)
    if batch.ndim != 4:
        raise ValueError(f"to_model_space: uint8 images must be [B, C, H, W], got shape {tuple(batch.shape)}")
    if (flip or dequantize) and generator is None:
        raise ValueError("to_model_space: flip/dequantize need an explicit torch.Generator")
    if flip:
        batch = random_hflip(batch, generator)
    x = batch.to(torch.float32)
    if dequantize:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        upper = (x + 1.0) / 256.0  # exact in float32
        # v + U can round up to v + 1 in float32 (U within 2^-17 of 1): keep the bin half-open
        x = torch.minimum((x + u) / 256.0, torch.nextafter(upper, torch.zeros_like(upper)))
    else:
        x = x / 255.0
    if centered:
        x = 2.0 * x - 1.0
    return x


def to_uint8(x: Tensor, centered: bool) -> Tensor:
    """Model space -> uint8 images: v = clamp(round(255 x'), 0, 255), x' = (x + 1)/2 if centred.

    Inverts ``to_model_space(..., dequantize=False, flip=False)`` exactly; used for sample grids
    and FID. (A dequantized pixel (v + U)/256 maps back to v or v + 1.)
    """
    if centered:
        x = (x + 1.0) / 2.0
    return torch.round(x.to(torch.float32) * 255.0).clamp_(0, 255).to(torch.uint8)


def resize_images(images: Tensor, size: int) -> Tensor:
    """Resize uint8 ``[N, C, H, W]`` to ``[N, C, size, size]`` with antialiased bilinear filtering.

    The filter of the official pipeline (``tf.image.resize(..., antialias=True)``, whose default
    method is bilinear): a triangle kernel widened by the scale factor when shrinking, as PIL's
    BILINEAR. Computed in float32, then rounded and clamped back to uint8 (the data stay 8-bit).
    """
    if images.shape[-2:] == (size, size):
        return images
    x = F.interpolate(images.to(torch.float32), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
    return torch.round(x).clamp_(0, 255).to(torch.uint8)
