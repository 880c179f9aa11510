"""Score networks: shapes, the paper networks' exact sizes, the score parameterisation, gradient
flow, config validation and seeded initialisation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from st_sweeps.config import load_dataclass, to_dict
from st_sweeps.errors import ConfigError
from st_sweeps.networks import (
    MLP,
    PRESETS,
    DDPMpp,
    NCSNpp,
    Network,
    ScoreModel,
    count_parameters,
    time_input_names,
)
from st_sweeps.networks.layers import (
    FIRConv2d,
    fir_downsample,
    fir_kernel_2d,
    fir_upsample,
    sinusoidal_embedding,
    upfirdn2d,
)
from st_sweeps.sde import SDE

# Tiny U-Nets: two levels, one block each, 8 channels (a few tens of thousands of parameters).
TINY = dict(channels=8, channel_multipliers=(1, 2), blocks_per_resolution=1)

# The option combinations the paper presets use, on tiny networks (attention at the lower level).
PRESET_COMBOS = {
    "ddpmpp": DDPMpp(**TINY),  # plain, positional, BigGAN, no progressive paths
    "ncsnpp": NCSNpp(**TINY),  # FIR, Fourier, residual progressive input
    "ncsnpp_256": NCSNpp(**TINY, progressive_input="input_skip", progressive_output="output_skip"),
    "ddpmpp_deepest": DDPMpp(**TINY, resample="fir", time_embedding_dim=4, dropout=0.2),
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks run faster on one thread (and much faster on a shared, busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _with(cfg: DDPMpp | NCSNpp, **changes) -> DDPMpp | NCSNpp:
    fields = {k: v for k, v in to_dict(cfg).items() if k != "name"}
    fields.update(channel_multipliers=cfg.channel_multipliers, fir_kernel=cfg.fir_kernel,
                  attention_resolutions=cfg.attention_resolutions)
    fields.update(changes)
    return type(cfg)(**fields)


# --- shapes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2,), (5,), (1, 4, 4)])
@pytest.mark.parametrize("embedding", ["positional", "fourier"])
def test_mlp_output_shape(shape, embedding):
    net = MLP(hidden=16, layers=2, time_embedding_dim=8, time_embedding=embedding).build(shape, _generator())
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert net(x, torch.rand(3) * 999).shape == x.shape


UNET_CASES = [
    # (config, image shape): resampling, attention, progressive paths and embeddings varied
    (DDPMpp(**TINY, attention_resolutions=(4,)), (1, 8, 8)),
    (DDPMpp(**TINY, attention_resolutions=()), (1, 8, 8)),
    (NCSNpp(**TINY, attention_resolutions=(4,)), (1, 8, 8)),
    (DDPMpp(**TINY, attention_resolutions=(8,), resample="fir", time_embedding="fourier"), (3, 16, 16)),
    (NCSNpp(**TINY, attention_resolutions=(16,), resample="plain", time_embedding="positional"), (3, 16, 16)),
    (NCSNpp(**TINY, attention_resolutions=(8,), progressive_input="input_skip",
            progressive_output="output_skip"), (3, 16, 16)),
    (NCSNpp(**TINY, attention_resolutions=(), resblock="ddpm"), (3, 16, 16)),
    (DDPMpp(**TINY, attention_resolutions=(8,), resblock="ddpm", progressive_input="input_skip"), (3, 16, 16)),
    (DDPMpp(channels=8, channel_multipliers=(1, 1, 2), blocks_per_resolution=1, attention_resolutions=(16,),
            progressive_output="output_skip"), (3, 32, 32)),
    (NCSNpp(channels=8, channel_multipliers=(1, 2, 2), blocks_per_resolution=1, attention_resolutions=(8,)),
     (3, 32, 32)),
    (NCSNpp(channels=12, channel_multipliers=(1,), blocks_per_resolution=2, attention_resolutions=(),
            skip_rescale=False), (3, 32, 32)),
]


@pytest.mark.parametrize("cfg,shape", UNET_CASES, ids=[f"{c.registry_name}-{s[-1]}px-{i}"
                                                      for i, (c, s) in enumerate(UNET_CASES)])
def test_unet_output_shape(cfg, shape):
    net = cfg.build(shape, _generator())
    assert 1_000 < count_parameters(net) < 100_000
    x = torch.randn(2, *shape)
    with torch.no_grad():
        out = net(x, torch.tensor([0.5, 700.0]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


# --- the paper networks' sizes ------------------------------------------------------------------------

def official_parameter_count(cfg: DDPMpp | NCSNpp, shape: tuple[int, int, int]) -> tuple[int, int]:
    """(trainable, fixed) parameter counts of score_sde's NCSNpp module for ``cfg``, tallied layer
    by layer as its ``__init__`` creates them (yang-song/score_sde_pytorch models/ncsnpp.py,
    models/layerspp.py, models/layers.py, models/up_or_down_sampling.py; the Soft Truncation repo's
    models/ncsnpp.py adds ``embedding_dim`` for the deepest config). ``fixed`` is the Gaussian
    Fourier projection's W, an ``nn.Parameter`` with requires_grad=False there (a buffer here).
    This is an independent tally, not a call into st_sweeps."""
    channels, resolution = shape[0], shape[-1]
    nf, mults, n_blocks = cfg.channels, cfg.channel_multipliers, cfg.blocks_per_resolution
    emb = cfg.time_embedding_dim or nf
    temb = 4 * emb

    def conv(i: int, o: int, k: int) -> int:  # ddpm_conv3x3 / conv1x1 / NIN / FIR Conv2d: weight + bias
        return i * o * k * k + o

    def norm(c: int) -> int:
        return 2 * c

    def resnet(i: int, o: int | None = None, resample: bool = False) -> int:
        o = o or i
        n = norm(i) + conv(i, o, 3) + conv(temb, o, 1) + norm(o) + conv(o, o, 3)  # GN, Conv_0, Dense_0, GN, Conv_1
        if i != o or resample:  # NIN_0 (DDPM++ block) or Conv_2 (BigGAN block)
            n += conv(i, o, 1)
        return n

    def attn(c: int) -> int:  # AttnBlockpp: GroupNorm_0 + NIN_0..3
        return norm(c) + 4 * conv(c, c, 1)

    biggan = cfg.resblock == "biggan"
    resolutions = [resolution // 2 ** i for i in range(len(mults))]
    fixed = emb if cfg.time_embedding == "fourier" else 0
    n = conv(2 * emb if cfg.time_embedding == "fourier" else emb, temb, 1) + conv(temb, temb, 1)
    n += conv(channels, nf, 3)
    skips, ch, pyramid_ch = [nf], nf, channels
    for level, mult in enumerate(mults):
        for _ in range(n_blocks):
            n += resnet(ch, nf * mult)
            ch = nf * mult
            n += attn(ch) if resolutions[level] in cfg.attention_resolutions else 0
            skips.append(ch)
        if level != len(mults) - 1:
            n += resnet(ch, resample=True) if biggan else conv(ch, ch, 3)
            if cfg.progressive_input == "input_skip":
                n += conv(pyramid_ch, ch, 1)  # Combine's conv1x1 (the pyramid stays the image)
            elif cfg.progressive_input == "residual":
                n += conv(pyramid_ch, ch, 3)  # pyramid_downsample with_conv
                pyramid_ch = ch
            skips.append(ch)
    n += 2 * resnet(ch) + attn(ch)
    for level in reversed(range(len(mults))):
        for _ in range(n_blocks + 1):
            n += resnet(ch + skips.pop(), nf * mults[level])
            ch = nf * mults[level]
        n += attn(ch) if resolutions[level] in cfg.attention_resolutions else 0
        if cfg.progressive_output == "output_skip":
            n += norm(ch) + conv(ch, channels, 3)
        if level != 0:
            n += resnet(ch, resample=True) if biggan else conv(ch, ch, 3)
    if cfg.progressive_output != "output_skip":
        n += norm(ch) + conv(ch, channels, 3)
    assert not skips
    return n, fixed


# Trainable parameters of the paper networks. Sources:
# - the architecture: the presets' configs (see their docstrings) built by score_sde's
#   models/ncsnpp.py, tallied by ``official_parameter_count`` above;
# - an independent published count of that same code: Lin et al., "Latent Zoning Network" (NeurIPS
#   2025, arXiv:2509.15591v2, App. C "Hyperparameters") report the Rectified Flow decoder, which is
#   score_sde's NCSNpp module with these configs, at 61,804,419 parameters on CIFAR-10 (DDPM++ cont.)
#   and 65,574,549 at 256×256 (NCSN++ CelebA-HQ: 65,574,421 trainable + 128 fixed Fourier
#   frequencies, which PyTorch counts as a parameter there);
# - the rounded sizes usually quoted: DDPM++ cont. (VP) ≈ 62M, NCSN++ cont. (VE) ≈ 63M on CIFAR-10,
#   and NCSN++ CelebA-HQ 256 ≈ 65M (sp-uhh/sgmse issue #11, the maintainers' reply).
PAPER_PARAMETERS = {
    "ddpmpp_cifar10": 61_804_419,
    "ddpmpp_deep_cifar10": 106_632_579,
    "ncsnpp_cifar10": 62_758_787,
    "ncsnpp_deep_cifar10": 107_586_947,
    "ncsnpp_celebahq256": 65_574_421,
}
PUBLISHED_TOTAL = {"ddpmpp_cifar10": 61_804_419, "ncsnpp_celebahq256": 65_574_549}
ROUNDED = {"ddpmpp_cifar10": 62e6, "ncsnpp_cifar10": 63e6, "ncsnpp_celebahq256": 65e6}


def _meta_build(name: str) -> tuple[torch.nn.Module, DDPMpp | NCSNpp, tuple[int, int, int]]:
    factory, shape = PRESETS[name]
    cfg = factory()
    with torch.device("meta"):  # no memory, no initialisation, no forward pass
        return cfg.build(shape), cfg, shape


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS))
def test_paper_network_sizes(name):
    """Exact counts: our module == score_sde's architecture tally == the cited numbers."""
    net, cfg, shape = _meta_build(name)
    trainable, fixed = official_parameter_count(cfg, shape)
    assert count_parameters(net) == trainable == PAPER_PARAMETERS[name]
    assert count_parameters(net, trainable_only=False) == trainable  # Fourier frequencies are buffers
    if name in PUBLISHED_TOTAL:
        assert trainable + fixed == PUBLISHED_TOTAL[name]
    if name in ROUNDED:
        assert abs(trainable - ROUNDED[name]) / ROUNDED[name] < 0.01


def test_deepest_network_size():
    """The Soft Truncation repo's "deepest" DDPM++ (configs/vp/CIFAR10/ddpmpp_fid_st_deepest.py):
    no published count; checked against the score_sde architecture tally."""
    net, cfg, shape = _meta_build("ddpmpp_deepest_cifar10")
    assert count_parameters(net) == official_parameter_count(cfg, shape)[0] == 373_929_475


def test_presets_round_trip_through_yaml_form():
    for name, (factory, _) in PRESETS.items():
        cfg = factory()
        spec = to_dict(cfg)
        assert Network.registry.build(spec, "network") == cfg, name


# --- the score parameterisation -------------------------------------------------------------------------

class _Recorder(torch.nn.Module):
    """A stand-in network: returns x + c and remembers c."""

    def forward(self, x, time_input):
        self.seen = time_input
        return x + time_input.reshape(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "rve"])
def test_score_is_minus_network_over_sigma(sde_name):
    sde = SDE.registry.build(sde_name, "sde")
    net = MLP(hidden=16, layers=1, time_embedding_dim=8).build((3,), _generator())
    model = ScoreModel(net, sde, "log_sigma" if sde_name in ("ve", "rve") else "t999")
    x, t = torch.randn(4, 3), torch.tensor([1e-3, 0.1, 0.5, 1.0])
    with torch.no_grad():
        expected = -net(x, model.time_input(t)) / sde.std(t)[:, None]
        torch.testing.assert_close(model(x, t), expected)


def test_score_broadcasts_over_image_dims():
    sde = SDE.registry.build("vp", "sde")
    model = ScoreModel(_Recorder(), sde, "t999")
    x, t = torch.randn(2, 3, 4, 4), torch.tensor([0.25, 0.75])
    expected = -(x + 999 * t[:, None, None, None]) / sde.std(t)[:, None, None, None]
    torch.testing.assert_close(model(x, t), expected)
    torch.testing.assert_close(model.net.seen, 999 * t)


def test_time_input_names():
    assert time_input_names() == ["t999", "log_sigma", "unbounded"]


def test_log_sigma_time_input():
    t = torch.tensor([1e-5, 0.3, 1.0], dtype=torch.float64)
    for name in ("ve", "rve", "vp"):
        sde = SDE.registry.build(name, "sde")
        torch.testing.assert_close(ScoreModel(_Recorder(), sde, "log_sigma").time_input(t), torch.log(sde.std(t)))
    ve = SDE.registry.build({"name": "ve", "sigma_min": 0.01, "sigma_max": 50.0}, "sde")
    ends = ScoreModel(_Recorder(), ve, "log_sigma").time_input(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([math.log(0.01), math.log(50.0)], dtype=torch.float64))


@pytest.mark.parametrize("sde_name", ["vp", "subvp"])
def test_unbounded_time_input(sde_name):
    sde = SDE.registry.build(sde_name, "sde")
    eps = 1e-5
    model = ScoreModel(_Recorder(), sde, "unbounded", eps=eps)
    t = torch.linspace(eps, 1.0, 1001, dtype=torch.float64)
    c = model.time_input(t)
    assert c[0].item() == pytest.approx(0.0, abs=1e-9)
    assert c[-1].item() == pytest.approx(999.0, rel=1e-12)
    assert (c.diff() > 0).all()

    def a(b: float) -> float:  # A_c(t) = log(1 − e^{−B} + c) + B, c = 1e-3
        return math.log(1 - math.exp(-b) + 1e-3) + b

    def big_b(s: float) -> float:
        return 0.1 * s + 0.5 * (20.0 - 0.1) * s * s

    lo, hi = a(big_b(eps)), a(big_b(1.0))
    assert model.time_input(torch.tensor([0.3], dtype=torch.float64)).item() == pytest.approx(
        999 * (a(big_b(0.3)) - lo) / (hi - lo), rel=1e-10)
    assert model.time_input(torch.tensor([0.3])).dtype == torch.float32


def test_unbounded_needs_a_vp_sde():
    with pytest.raises(ConfigError) as e:
        ScoreModel(_Recorder(), SDE.registry.build("ve", "sde"), "unbounded")
    assert e.value.field == "time_input"
    assert "VP" in str(e.value)


def test_unknown_time_input():
    with pytest.raises(ConfigError) as e:
        ScoreModel(_Recorder(), SDE.registry.build("vp", "sde"), "t1000")
    assert e.value.field == "time_input"
    assert "log_sigma" in str(e.value)


def test_eps_outside_time_range():
    with pytest.raises(ConfigError) as e:
        ScoreModel(_Recorder(), SDE.registry.build("vp", "sde"), "unbounded", eps=0.0)
    assert e.value.field == "eps"


# --- every parameter gets a gradient (DDP needs no unused parameters) ------------------------------------

@pytest.mark.parametrize("combo", sorted(PRESET_COMBOS))
def test_gradient_reaches_every_parameter(combo):
    cfg = PRESET_COMBOS[combo]
    shape = (3, 8, 8)
    cfg = _with(cfg, attention_resolutions=(4,))
    net = cfg.build(shape, _generator())
    x, weights = torch.randn(2, *shape, generator=_generator(1)), torch.randn(2, *shape, generator=_generator(2))
    c = torch.tensor([3.0, 800.0]) if cfg.time_embedding == "positional" else torch.tensor([-3.0, 2.0])
    (net(x, c) * weights).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not bool((p.grad != 0).any())]
    assert not missing


def test_gradient_reaches_every_mlp_parameter():
    net = MLP(hidden=16, layers=2, time_embedding_dim=8, time_embedding="fourier").build((2,), _generator())
    (net(torch.randn(4, 2), torch.randn(4)) * torch.randn(4, 2)).sum().backward()
    assert all(p.grad is not None and bool((p.grad != 0).any()) for p in net.parameters())


# --- config validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,field", [
    (dict(channel_multipliers=()), "channel_multipliers"),
    (dict(channel_multipliers=(1, 0)), "channel_multipliers[1]"),
    (dict(dropout=-0.1), "dropout"),
    (dict(dropout=1.0), "dropout"),
    (dict(channels=0), "channels"),
    (dict(blocks_per_resolution=0), "blocks_per_resolution"),
    (dict(resample="bilinear"), "resample"),
    (dict(time_embedding="learned"), "time_embedding"),
    (dict(progressive_output="residual"), "progressive_output"),
    (dict(progressive_input="skip"), "progressive_input"),
    (dict(resblock="wide"), "resblock"),
    (dict(init_scale=-1.0), "init_scale"),
    (dict(fir_kernel=(1,)), "fir_kernel"),
    (dict(time_embedding_dim=0), "time_embedding_dim"),
])
@pytest.mark.parametrize("cls", [DDPMpp, NCSNpp])
def test_bad_unet_config_names_the_field(cls, changes, field):
    with pytest.raises(ConfigError) as e:
        cls(**changes)
    assert e.value.field == field
    assert e.value.allowed


def test_resolution_not_divisible():
    with pytest.raises(ConfigError) as e:
        NCSNpp(channel_multipliers=(1, 2, 2, 2)).build((3, 12, 12))
    assert e.value.field == "channel_multipliers"
    assert "12" in str(e.value) and "8" in str(e.value)


def test_unreachable_attention_resolution():
    with pytest.raises(ConfigError) as e:
        DDPMpp(**TINY, attention_resolutions=(2,)).build((3, 16, 16))
    assert e.value.field == "attention_resolutions"
    assert "16, 8" in str(e.value)


@pytest.mark.parametrize("shape", [(3, 16), (3, 16, 8), (16,)])
def test_unet_needs_square_images(shape):
    with pytest.raises(ConfigError) as e:
        DDPMpp(**TINY, attention_resolutions=()).build(shape)
    assert e.value.field == "data_shape"


def test_bad_mlp_config():
    with pytest.raises(ConfigError) as e:
        MLP(hidden=0)
    assert e.value.field == "hidden"
    with pytest.raises(ConfigError) as e:
        MLP(time_embedding="sinusoid")
    assert e.value.field == "time_embedding"


def test_registry_build_from_yaml_mapping():
    assert Network.registry.names() == ["ddpmpp", "mlp", "ncsnpp"]
    cfg = Network.registry.build({"name": "ncsnpp", "channels": 16, "channel_multipliers": [1, 2]}, "model.network")
    assert isinstance(cfg, NCSNpp) and cfg.channel_multipliers == (1, 2) and cfg.resample == "fir"
    with pytest.raises(ConfigError) as e:
        Network.registry.build({"name": "ddpmpp", "dropout": -0.5}, "model.network")
    assert e.value.field == "model.network.dropout"
    with pytest.raises(ConfigError) as e:
        Network.registry.build({"name": "ddpmpp", "resample": "nearest"}, "model.network")
    assert e.value.field == "model.network.resample"
    with pytest.raises(ConfigError) as e:
        load_dataclass(MLP, {"hiden": 3}, "network")
    assert e.value.field == "network.hiden"


# --- initialisation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,shape", [(NCSNpp(**TINY, attention_resolutions=(4,)), (3, 8, 8)),
                                       (MLP(hidden=16, layers=2, time_embedding="fourier"), (2,))])
def test_same_seed_same_init(cfg, shape):
    a = cfg.build(shape, _generator(7)).state_dict()
    torch.manual_seed(123)  # the global RNG must not matter
    torch.rand(10)
    b = cfg.build(shape, _generator(7)).state_dict()
    c = cfg.build(shape, _generator(8)).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].std() > 0)


def test_residual_branches_start_near_zero():
    """init_scale 0 (the paper's setting): each branch's last layer is drawn with variance scale
    1e-10 (weights ~1e-5), so the U-Net's output starts near 0, as in score_sde."""
    net = DDPMpp(**TINY, attention_resolutions=(4,)).build((3, 8, 8), _generator())
    with torch.no_grad():
        out = net(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 500.0]))
    assert out.abs().max() < 1e-3
    assert net.conv_out.weight.abs().max() < 1e-4


def test_fourier_frequencies_are_saved_but_not_trained():
    net = NCSNpp(**TINY, attention_resolutions=(4,)).build((3, 8, 8), _generator())
    assert "time_embed.freqs" in net.state_dict()
    assert "time_embed.freqs" not in dict(net.named_parameters())
    assert net.time_embed.freqs.std() == pytest.approx(16.0, rel=0.5)


# --- layers -----------------------------------------------------------------------------------------------

def test_fir_resampling_keeps_constants_and_shapes():
    k = fir_kernel_2d((1, 3, 3, 1))
    x = torch.full((1, 2, 8, 8), 3.0)
    up, down = fir_upsample(x, k), fir_downsample(x, k)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 3.0))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 3.0))


def test_fused_fir_convs_equal_resample_then_conv():
    """The fused up conv is FIR upsampling followed by a 'same' 3×3 conv (away from the border,
    where the fused op pads once); the fused down conv is FIR smoothing then a stride-2 conv."""
    x = torch.randn(1, 3, 8, 8, generator=_generator(3))
    k = fir_kernel_2d((1, 3, 3, 1))
    up, down = FIRConv2d(3, 5, "up", (1, 3, 3, 1)), FIRConv2d(3, 5, "down", (1, 3, 3, 1))
    for conv in (up, down):
        conv.init_weights(_generator(4))
        torch.nn.init.normal_(conv.bias, generator=_generator(5))
    with torch.no_grad():
        fused = up(x)
        reference = torch.nn.functional.conv2d(fir_upsample(x, k), up.weight, up.bias, padding=1)
        assert fused.shape == (1, 5, 16, 16)
        torch.testing.assert_close(fused[..., 2:-2, 2:-2], reference[..., 2:-2, 2:-2])
        reference = torch.nn.functional.conv2d(upfirdn2d(x, k, pad=(2, 2)), down.weight, down.bias, stride=2)
        torch.testing.assert_close(down(x), reference)


def test_sinusoidal_embedding_formula():
    emb = sinusoidal_embedding(torch.tensor([0.0, 10.0]), 8)
    freqs = torch.exp(-math.log(10000.0) / 3 * torch.arange(4.0))
    torch.testing.assert_close(emb[1], torch.cat([torch.sin(10 * freqs), torch.cos(10 * freqs)]))
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(4), torch.ones(4)]))


@pytest.mark.parametrize("progressive_input", ["none", "residual"])
def test_center_input_feeds_two_x_minus_one_to_every_layer(progressive_input):
    """center_input (the official NCSN++ on data in [0, 1]): the same weights applied to 2x − 1,
    the input pyramid included."""
    cfg = NCSNpp(channels=8, channel_multipliers=(1, 2), blocks_per_resolution=1, attention_resolutions=(),
                 progressive_input=progressive_input, dropout=0.0)
    centered = dataclasses.replace(cfg, center_input=True)
    shape = (3, 8, 8)
    plain_net, centered_net = cfg.build(shape, _generator()), centered.build(shape, _generator())
    centered_net.load_state_dict(plain_net.state_dict())
    x, t = torch.rand(2, *shape), torch.tensor([0.3, -1.0])
    with torch.no_grad():
        torch.testing.assert_close(centered_net(x, t), plain_net(2 * x - 1, t))
        assert not torch.allclose(centered_net(x, t), plain_net(x, t))
