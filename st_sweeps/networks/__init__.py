"""Score networks: a registry of network configs (``mlp``, ``ddpmpp``, ``ncsnpp``) and the
``ScoreModel`` that turns a network's output into a score.

A network config is a frozen dataclass of hyperparameters; ``build(data_shape, generator)``
returns an ``nn.Module`` with ``forward(x, time_input) -> tensor shaped like x``, where
``data_shape`` is one example's shape (no batch dimension) and ``time_input`` is [B] float (what
the network sees as time: see ``score_model.time_input_names``).
"""

from __future__ import annotations

from st_sweeps.networks.base import Network, count_parameters
from st_sweeps.networks.mlp import MLP, MLPNet
from st_sweeps.networks.score_model import ScoreModel, time_input_names
from st_sweeps.networks.unet import (
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
