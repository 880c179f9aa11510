"""A residual MLP score network for low-dimensional data (2-D mixtures and the like).

    temb = Dense(SiLU(Dense(embed(c))))                             [B, hidden]
    h    = Dense(flatten(x))                                        [B, hidden]
    h    = h + Dense(SiLU(Dense(SiLU(h)) + Dense(temb)))   × layers
    out  = Dense(SiLU(h)) reshaped like x
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from st_sweeps.errors import ConfigError, require
from st_sweeps.networks.base import Network
from st_sweeps.networks.layers import GaussianFourierEmbedding, Linear, SinusoidalEmbedding, initialise

TIME_EMBEDDINGS = ("positional", "fourier")


@Network.registry.register("mlp")
@dataclass(frozen=True)
class MLP(Network):
    """Residual MLP on flattened examples; any data shape (typically [D])."""

    hidden: int = 256
    layers: int = 3  # residual blocks
    time_embedding_dim: int = 64
    time_embedding: Literal["positional", "fourier"] = "positional"
    fourier_scale: float = 16.0  # fourier embedding only

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "time_embedding_dim"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
                    f"must be a positive integer, got {value!r}", "an integer >= 1")
        require(self.time_embedding in TIME_EMBEDDINGS, "time_embedding", f"got {self.time_embedding!r}",
                TIME_EMBEDDINGS)
        require(self.fourier_scale > 0, "fourier_scale", f"must be > 0, got {self.fourier_scale!r}", "a number > 0")

    def build(self, data_shape: tuple[int, ...], generator: torch.Generator | None = None) -> "MLPNet":
        shape = tuple(data_shape)
        if not shape or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ConfigError("data_shape", f"got {list(shape)}", "one example's shape with positive sizes, e.g. [2]")
        return initialise(MLPNet(self, shape), generator)


class _Block(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.fc0 = Linear(hidden, hidden)
        self.temb = Linear(hidden, hidden)
        self.fc1 = Linear(hidden, hidden)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return h + self.fc1(F.silu(self.fc0(F.silu(h)) + self.temb(temb)))


class MLPNet(nn.Module):
    """``forward(x [B, *data_shape], time_input [B]) -> [B, *data_shape]``."""

    def __init__(self, cfg: MLP, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = data_shape
        dim = math.prod(data_shape)
        self.time_embed = (GaussianFourierEmbedding(cfg.time_embedding_dim, cfg.fourier_scale)
                           if cfg.time_embedding == "fourier" else SinusoidalEmbedding(cfg.time_embedding_dim))
        self.temb0 = Linear(self.time_embed.out_dim, cfg.hidden)
        self.temb1 = Linear(cfg.hidden, cfg.hidden)
        self.inp = Linear(dim, cfg.hidden)
        self.blocks = nn.ModuleList(_Block(cfg.hidden) for _ in range(cfg.layers))
        self.out = Linear(cfg.hidden, dim)

    def forward(self, x: Tensor, time_input: Tensor) -> Tensor:
        temb = self.time_embed(time_input.to(x.dtype).reshape(-1))
        temb = self.temb1(F.silu(self.temb0(temb)))  # [B, hidden]
        h = self.inp(x.flatten(1))
        for blk in self.blocks:
            h = blk(h, temb)
        return self.out(F.silu(h)).reshape(x.shape)
