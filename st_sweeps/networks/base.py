"""The base of the network configs and their registry, apart from the package's ``__init__`` so that
the entries (``mlp``, ``unet``) can import it without depending on import order."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from st_sweeps.config import Registry


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
