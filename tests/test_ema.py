"""The EMA against its formula, on flat and per-tensor parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from st_sweeps.ema import EMA
from st_sweeps.flat_parameters import flat_buffer, flatten_parameters


def net_with_buffer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))


def perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(1.0)


@pytest.mark.parametrize("flat", [True, False])
def test_update_follows_the_warmed_up_formula(flat: bool) -> None:
    model = net_with_buffer()
    if flat:
        flatten_parameters(model)
    ema = EMA(model, decay=0.9)
    assert flat_buffer(list(ema.shadow.parameters())) is not None  # the shadow is always one buffer
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(25):
        perturb(model, n)
        d = min(0.9, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(model)
        for name, p in model.named_parameters():
            expected[name] = d * expected[name] + (1 - d) * p.detach()
    state = ema.shadow.state_dict()
    for name, _ in model.named_parameters():
        torch.testing.assert_close(state[name], expected[name], rtol=1e-5, atol=1e-6)
    for name, b in model.named_buffers():  # buffers (BatchNorm statistics) are copied, not averaged
        assert torch.equal(state[name], b)
    assert ema.num_updates == 25


def test_flat_and_per_tensor_updates_agree() -> None:
    a, b = net_with_buffer(), net_with_buffer()
    flatten_parameters(a)
    ema_a, ema_b = EMA(a, 0.99), EMA(b, 0.99)
    for n in range(10):
        perturb(a, n)
        perturb(b, n)
        ema_a.update(a)
        ema_b.update(b)
    for p, q in zip(ema_a.shadow.parameters(), ema_b.shadow.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_model_re_homed_after_the_first_update_is_still_followed() -> None:
    model = net_with_buffer()
    flatten_parameters(model)
    ema = EMA(model, 0.5)
    ema.update(model)
    reference = EMA(copy.deepcopy(model), 0.5)
    reference.shadow.load_state_dict(ema.shadow.state_dict())
    reference.num_updates = ema.num_updates
    model[0].weight.data = model[0].weight.data.clone()  # no longer in the flat buffer
    perturb(model, 1)
    ema.update(model)
    unflat = copy.deepcopy(model)
    reference.update(unflat)
    for p, q in zip(ema.shadow.parameters(), reference.shadow.parameters()):
        torch.testing.assert_close(p, q)
    model.double()  # another dtype: the per-tensor path with a cast
    ema.update(model)
    assert all(p.dtype == torch.float32 for p in ema.shadow.parameters())


def test_state_dict_round_trip_keeps_the_flat_shadow() -> None:
    model = net_with_buffer()
    flatten_parameters(model)
    ema = EMA(model, 0.9)
    perturb(model, 0)
    ema.update(model)
    other = EMA(net_with_buffer(), 0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1
    assert flat_buffer(list(other.shadow.parameters())) is not None  # loaded in place
    for p, q in zip(ema.shadow.parameters(), other.shadow.parameters()):
        assert torch.equal(p, q)


def test_decay_outside_the_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="decay"):
        EMA(net_with_buffer(), 1.0)
