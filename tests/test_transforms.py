"""Stored images <-> model space: dequantization bins, centring, flips, exact inverse."""

from __future__ import annotations

import pytest
import torch

from st_sweeps.data.transforms import random_hflip, resize_images, to_model_space, to_uint8


def all_levels() -> torch.Tensor:
    """Every 8-bit value, 4 times: uint8 [4, 1, 16, 16]."""
    return torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(4, 1, 1, 1)


def asymmetric_batch(b: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (b, 3, 5, 7), generator=g, dtype=torch.uint8)


def test_dequantized_values_lie_in_their_bin():
    v = all_levels()
    x = to_model_space(v, torch.Generator().manual_seed(1), centered=False, flip=False, dequantize=True)
    vf = v.to(torch.float64)
    assert x.dtype == torch.float32
    assert torch.all(x.double() >= vf / 256) and torch.all(x.double() < (vf + 1) / 256)
    # the noise fills the bin, not a point in it
    frac = x.double() * 256 - vf
    assert frac.min() < 0.05 and frac.max() > 0.95


def test_dequantized_bin_stays_half_open_when_noise_is_near_one(monkeypatch):
    v = torch.full((1, 1, 1, 3), 255, dtype=torch.uint8)
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, 1 - 2.0**-24))
    x = to_model_space(v, torch.Generator(), centered=False, flip=False, dequantize=True)
    assert torch.all(x < 1.0) and torch.all(x > 255 / 256)


def test_without_dequantization_pixels_map_to_v_over_255_and_centre_to_minus_one_one():
    v = all_levels()
    x = to_model_space(v, None, centered=False, flip=False, dequantize=False)
    assert torch.equal(x, v.float() / 255)
    c = to_model_space(v, None, centered=True, flip=False, dequantize=False)
    assert c.min() == -1.0 and c.max() == 1.0
    cd = to_model_space(v, torch.Generator().manual_seed(0), centered=True, flip=False, dequantize=True)
    assert cd.min() >= -1.0 and cd.max() < 1.0


def test_flip_is_a_per_example_horizontal_mirror_deterministic_under_the_generator():
    batch = asymmetric_batch()
    out = to_model_space(batch, torch.Generator().manual_seed(3), centered=False, flip=True, dequantize=False)
    again = to_model_space(batch, torch.Generator().manual_seed(3), centered=False, flip=True, dequantize=False)
    assert torch.equal(out, again)
    plain, mirrored = batch.float() / 255, batch.flip(-1).float() / 255
    flipped = torch.tensor([torch.equal(o, m) for o, m in zip(out, mirrored)])
    kept = torch.tensor([torch.equal(o, p) for o, p in zip(out, plain)])
    assert torch.all(flipped ^ kept)  # each example is exactly one of the two
    assert 10 < int(flipped.sum()) < 54  # about half are mirrored
    expected = torch.rand(len(batch), generator=torch.Generator().manual_seed(3)) < 0.5
    assert torch.equal(flipped, expected)


def test_random_hflip_mirrors_width_only():
    x = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(1, 1, 3, 8).repeat(40, 1, 1, 1)
    y = random_hflip(x, torch.Generator().manual_seed(0))
    for yi in y:
        assert torch.equal(yi, x[0]) or torch.equal(yi, x[0].flip(-1))


@pytest.mark.parametrize("centered", [False, True])
def test_to_uint8_inverts_to_model_space_without_dequantization(centered):
    v = all_levels()
    x = to_model_space(v, None, centered=centered, flip=False, dequantize=False)
    assert torch.equal(to_uint8(x, centered), v)


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-0.5, 0.0, 0.5 / 255, 0.49 / 255, 1.0, 2.0])
    assert to_uint8(x, centered=False).tolist() == [0, 0, 0, 0, 255, 255]  # round half to even at 0.5
    assert to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]), centered=True).tolist() == [0, 0, 128, 255, 255]


def test_float_data_pass_through_unchanged():
    x = torch.randn(5, 2, dtype=torch.float64)
    out = to_model_space(x, torch.Generator(), centered=True, flip=True, dequantize=True)
    assert out.dtype == torch.float32 and torch.equal(out, x.float())


def test_randomness_needs_a_generator():
    with pytest.raises(ValueError, match="Generator"):
        to_model_space(all_levels(), None, centered=False, flip=True, dequantize=False)


def test_resize_keeps_constants_and_shrinks_to_size():
    img = torch.full((2, 3, 96, 96), 77, dtype=torch.uint8)
    out = resize_images(img, 48)
    assert out.shape == (2, 3, 48, 48) and out.dtype == torch.uint8 and torch.all(out == 77)
    assert resize_images(img, 96) is img
    # antialiased: a 1-pixel checkerboard averages to grey instead of aliasing
    checker = ((torch.arange(96)[:, None] + torch.arange(96)[None]) % 2 * 255).to(torch.uint8)[None, None]
    grey = resize_images(checker, 48).float()[..., 1:-1, 1:-1]  # away from the edge padding
    assert (grey - 127.5).abs().max() <= 1
