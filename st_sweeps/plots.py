"""Small image and figure writers shared by evaluation and reports."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def image_grid(images_uint8: torch.Tensor, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """[N, C, H, W] uint8 -> one [rows·(H+pad), cols·(W+pad), C] uint8 array."""
    x = images_uint8.detach().cpu()
    n, c, h, w = x.shape
    cols = columns or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = x[i].permute(1, 2, 0).numpy()
    return grid


def save_image_grid(images_uint8: torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images_uint8)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path


def save_scatter(points: torch.Tensor, path: str | Path, title: str = "samples") -> Path:
    """2-D samples as a scatter plot (the grid of low-dimensional data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    p = points.detach().cpu().float().numpy()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=110)
    ax.scatter(p[:, 0], p[:, 1], s=3, alpha=0.6)
    ax.set_title(title)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
