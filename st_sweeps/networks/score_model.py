"""``ScoreModel``: a network and an SDE as a score function s_θ(x, t) ≈ ∇log p_t(x).

    s_θ(x, t) = −net(x, c(t)) / σ(t)

so the network predicts the noise z of x_t = μ(t) x_0 + σ(t) z (the DSM target −z/σ becomes a
unit-scale target for the network at every t). What the network sees as time, c(t):

- ``"t999"``: 999·t (DDPM++ with the positional embedding; score_sde's continuous VP models);
- ``"log_sigma"``: log σ(t) (NCSN++ with Gaussian Fourier features);
- ``"unbounded"``: UDDPM++ (Kim et al. 2022, App.): A_c(t) = log(1 − e^{−B(t)} + c) + B(t),
  c = 1e-3, with B(t) = ∫₀ᵗ β the VP/sub-VP integrated rate, mapped linearly from [A_c(ε), A_c(T)]
  onto [0, 999]. A_c ≈ −log SNR for large B but stays finite as t → 0 (≈ log c), so small-t
  inputs are not squashed into one embedding position.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from st_sweeps.errors import ConfigError, require
from st_sweeps.sde import SDE, broadcast_to

TimeInput = Literal["t999", "log_sigma", "unbounded"]
_TIME_INPUTS: tuple[str, ...] = ("t999", "log_sigma", "unbounded")
UNBOUNDED_C = 1e-3


def time_input_names() -> list[str]:
    """The accepted values of ``time_input``."""
    return list(_TIME_INPUTS)


def unbounded_time(integrated_beta: Tensor, c: float = UNBOUNDED_C) -> Tensor:
    """A_c = log(1 − e^{−B} + c) + B, elementwise (increasing in B)."""
    return torch.log(-torch.expm1(-integrated_beta) + c) + integrated_beta


class ScoreModel(nn.Module):
    """``forward(x, t [B]) -> score`` shaped like x. ``time_input(t)`` gives c(t) [B].

    ``eps`` is the smallest time (the low end of the "unbounded" normalisation); ``unbounded_c``
    the constant c of A_c.
    """

    def __init__(self, net: nn.Module, sde: SDE, time_input: TimeInput = "t999", eps: float = 1e-5,
                 unbounded_c: float = UNBOUNDED_C):
        super().__init__()
        require(time_input in _TIME_INPUTS, "time_input", f"got {time_input!r}", _TIME_INPUTS)
        sde.check_time_range(eps, "eps")
        self.net = net
        self.sde = sde
        self.time_input_name = time_input
        self.eps = eps
        self.unbounded_c = unbounded_c
        if time_input == "unbounded":
            if not hasattr(sde, "integrated_beta"):
                raise ConfigError("time_input",
                                  f"'unbounded' needs a VP or sub-VP SDE (one with integrated_beta), "
                                  f"got {type(sde).__name__}",
                                  "t999 or log_sigma for this SDE; unbounded with vp or subvp")
            require(unbounded_c > 0, "unbounded_c", f"must be > 0, got {unbounded_c!r}", "a number > 0")
            ends = torch.tensor([eps, sde.T], dtype=torch.float64)
            lo, hi = unbounded_time(sde.integrated_beta(ends), unbounded_c).tolist()
            self._unbounded_range = (lo, hi)

    def time_input(self, t: Tensor) -> Tensor:
        """c(t), [B] in t's dtype."""
        if self.time_input_name == "t999":
            return 999.0 * t
        if self.time_input_name == "log_sigma":
            if hasattr(self.sde, "log_std"):
                return self.sde.log_std(t)
            return torch.log(self.sde.std(t))
        lo, hi = self._unbounded_range
        a = unbounded_time(self.sde.integrated_beta(t.double()), self.unbounded_c)
        return (999.0 * (a - lo) / (hi - lo)).to(t.dtype)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.net(x, self.time_input(t))
        # a bf16/fp16 network output (autocast) is divided by σ(t) in at least fp32: near ε the
        # score is ~1/σ, beyond what a 16-bit division keeps
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        return -out / broadcast_to(self.sde.std(t), out).to(out.dtype)

    def extra_repr(self) -> str:
        return f"time_input={self.time_input_name!r}, sde={self.sde!r}, eps={self.eps}"
