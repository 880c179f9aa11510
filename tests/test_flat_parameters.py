"""One buffer behind a module's parameters and gradients: layout, identity and fallbacks."""

from __future__ import annotations

import torch
from torch import nn

from st_sweeps.flat_parameters import FlatGradients, flat_buffer, flatten_parameters


def small_net(channels_last: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 4, 1),
                        nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    return net.to(memory_format=torch.channels_last) if channels_last else net


def test_flattening_keeps_identity_values_shapes_and_strides() -> None:
    for channels_last in (False, True):
        net = small_net(channels_last)
        before = [(p, p.detach().clone(), p.shape, p.stride()) for p in net.parameters()]
        flat = flatten_parameters(net)
        assert flat is not None and flat.numel() == sum(p.numel() for p, *_ in before)
        for (p, value, shape, stride), q in zip(before, net.parameters()):
            assert q is p  # an optimizer built before still holds the right tensors
            assert q.shape == shape and q.stride() == stride and torch.equal(q, value)
        assert flat_buffer(list(net.parameters())).data_ptr() == flat.data_ptr()
        # writes through the parameters land in the buffer, in parameters() order
        first = next(net.parameters())
        with torch.no_grad():
            first.fill_(7.0)
        assert torch.all(flat[:first.numel()] == 7.0)


def test_a_forward_and_an_optimizer_step_see_the_same_parameters() -> None:
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    plain, flattened = small_net(), small_net()
    flatten_parameters(flattened)
    for net in (plain, flattened):
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for p, q in zip(plain.parameters(), flattened.parameters()):
        assert torch.equal(p, q)


def test_no_flat_buffer_after_a_parameter_moves_or_for_mixed_dtypes() -> None:
    net = small_net()
    flatten_parameters(net)
    params = list(net.parameters())
    params[2].data = params[2].data.clone()  # re-homed, as module.to or a careless assignment does
    assert flat_buffer(params) is None
    assert flat_buffer(list(small_net().parameters())) is None  # never flattened
    mixed = small_net()
    mixed[0].double()
    assert flatten_parameters(mixed) is None
    assert all(p.dtype == torch.float64 for p in mixed[0].parameters())  # left as it was


def test_flat_gradients_equal_fresh_ones_and_reattach() -> None:
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    plain, flat_net = small_net(True), small_net(True)
    flatten_parameters(flat_net)
    grads = FlatGradients.for_parameters(list(flat_net.parameters()))
    assert grads is not None and grads.attached()
    for step in range(3):
        plain.zero_grad(set_to_none=True)
        grads.zero_()
        for chunk in (x[:2], x[2:]):  # accumulation over two chunks, as the trainer does
            plain(chunk * (step + 1)).square().sum().backward()
            flat_net(chunk * (step + 1)).square().sum().backward()
        assert grads.attached()
        for p, q in zip(plain.parameters(), flat_net.parameters()):
            assert torch.equal(p.grad, q.grad)  # bit-equal: 0 + g = g, same order of sums
            assert q.grad.stride() == q.stride()
        norm = torch.linalg.vector_norm(grads.buffer)
        assert torch.allclose(norm, torch.nn.utils.get_total_norm([p.grad for p in plain.parameters()]))
    flat_net.zero_grad(set_to_none=True)  # somebody drops the views
    assert not grads.attached()
    grads.zero_()
    assert grads.attached() and all(torch.all(p.grad == 0) for p in flat_net.parameters())


def test_frozen_or_mixed_parameters_get_no_flat_gradients() -> None:
    net = small_net()
    net[0].weight.requires_grad_(False)
    assert FlatGradients.for_parameters(list(net.parameters())) is None
    assert FlatGradients.for_parameters([]) is None
