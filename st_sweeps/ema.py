"""Exponential moving average of weights, with score_sde's warm-up of the decay."""

from __future__ import annotations

import copy

import torch
from torch import nn

from st_sweeps.flat_parameters import flat_buffer, flatten_parameters


class EMA:
    """Keeps a shadow copy of a module's parameters and buffers.

    decay_t = min(decay, (1 + n) / (10 + n)) after n updates: without the warm-up the average
    would be dominated for ~1/(1 − decay) steps by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must lie in [0, 1), got {decay!r}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)
        # a model whose parameters share one buffer (flatten_parameters) is then averaged with
        # one lerp over the buffer instead of one per tensor
        flatten_parameters(self.shadow)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.num_updates += 1
        pairs = self._pairs(model)
        if pairs.flat is not None:
            pairs.flat[0].lerp_(pairs.flat[1], 1.0 - d)
        elif pairs.foreach_ok:  # the same lerp per tensor, in one call
            torch._foreach_lerp_(pairs.shadow, pairs.source, 1.0 - d)
        else:  # a model moved to another dtype or device after the EMA was made
            for p, q in zip(pairs.shadow, pairs.source):
                p.lerp_(q.to(p.dtype), 1.0 - d)
        for b, src in zip(pairs.shadow_buffers, pairs.source_buffers):
            b.copy_(src)

    def _pairs(self, model: nn.Module) -> _Pairs:
        """Shadow and source tensors matched by name, cached for ``model``: parameters are
        updated in place by optimisers and ``load_state_dict``, so they stay valid; ``.to`` and
        ``.double`` re-home them, which ``_Pairs.unmoved`` notices, and the pairs are found anew."""
        if getattr(self, "_pairs_for", None) is not model or not self._pairs_cache.unmoved():
            self._pairs_cache = _Pairs(self.shadow, model)
            self._pairs_for = model
        return self._pairs_cache

    def state_dict(self) -> dict:
        return {"shadow": self.shadow.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.num_updates = int(state["num_updates"])


class _Pairs:
    """The tensors one EMA update reads and writes, found once per model."""

    def __init__(self, shadow: nn.Module, model: nn.Module):
        src = dict(model.named_parameters())
        names = [name for name, _ in shadow.named_parameters()]
        self.shadow = [p for _, p in shadow.named_parameters()]
        self.source = [src[name] for name in names]
        self.foreach_ok = bool(self.source) and all(p.dtype == q.dtype and p.device == q.device
                                                    for p, q in zip(self.shadow, self.source))
        src_b = dict(model.named_buffers())
        self.shadow_buffers = [b for _, b in shadow.named_buffers()]
        self.source_buffers = [src_b[name] for name, _ in shadow.named_buffers()]
        # one lerp over two buffers is the per-tensor lerp only if both hold the tensors back to
        # back in the same order, each with the same shape and strides
        shadow_flat, source_flat = flat_buffer(self.shadow), flat_buffer(self.source)
        same_layout = self.foreach_ok and all(p.shape == q.shape and p.stride() == q.stride()
                                              for p, q in zip(self.shadow, self.source))
        self.flat = (shadow_flat, source_flat) \
            if same_layout and shadow_flat is not None and source_flat is not None else None
        self._addresses = self._where()

    def _where(self) -> list[int]:
        return list(map(torch.Tensor.data_ptr, self.shadow)) + list(map(torch.Tensor.data_ptr, self.source))

    def unmoved(self) -> bool:
        """Every parameter of both still lives where the flat buffers were found (``.to`` may
        have re-assigned some since): ~10 µs for 2 × 130 tensors."""
        return self._where() == self._addresses
