"""Score networks: a registry of network configs (``mlp``, ``ddpmpp``, ``ncsnpp``) and the
``ScoreModel`` that turns a network's output into a score.

A network config is a frozen dataclass of hyperparameters; ``build(data_shape, generator)``
returns an ``nn.Module`` with ``forward(x, time_input) -> tensor shaped like x``, where
``data_shape`` is one example's shape (no batch dimension) and ``time_input`` is [B] float (what
the network sees as time: see ``score_model.time_input_names``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from st_sweeps.registry import Registry


class Network:
    """Base of the network configs; entries are registered frozen dataclasses."""

    registry: ClassVar[Registry["Network"]] = Registry("network")

    def build(self, data_shape: tuple[int, ...], generator: torch.Generator | None = None) -> nn.Module:
        """The module for examples of ``data_shape``, its weights drawn from ``generator``
        (the global RNG when None)."""
        raise NotImplementedError


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# The entries register themselves on import; Network must exist before these lines run.
from st_sweeps.networks.mlp import MLP, MLPNet  # noqa: E402
from st_sweeps.networks.score_model import ScoreModel, time_input_names  # noqa: E402
from st_sweeps.networks.unet import (  # noqa: E402
    PRESETS,
    DDPMpp,
    NCSNpp,
    UNet,
    UNetConfig,
    ddpmpp_cifar10,
    ddpmpp_deep_cifar10,
    ddpmpp_deepest_cifar10,
    ncsnpp_celebahq256,
    ncsnpp_cifar10,
    ncsnpp_deep_cifar10,
)

__all__ = [
    "Network", "count_parameters", "MLP", "MLPNet", "UNetConfig", "DDPMpp", "NCSNpp", "UNet",
    "ScoreModel", "time_input_names", "PRESETS", "ddpmpp_cifar10", "ddpmpp_deep_cifar10",
    "ddpmpp_deepest_cifar10", "ncsnpp_cifar10", "ncsnpp_deep_cifar10", "ncsnpp_celebahq256",
]
