"""Each weighting against its formula, written here from μ, σ, g² independently of the module."""

from __future__ import annotations

import pytest
import torch

from st_sweeps.config import load_dataclass
from st_sweeps.errors import ConfigError
from st_sweeps.objectives import DSM, Objective
from st_sweeps.sde import ReciprocalVESDE, VESDE, VPSDE, SubVPSDE
from st_sweeps.truncation import ImportanceSampler, UniformSampler
from st_sweeps.weighting import Weighting

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(), "rve": ReciprocalVESDE()}
T_VALUES = torch.tensor([1e-5, 1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)


def _expected(name: str, params: dict, sde, t: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    mu, sigma, g2 = sde.mean_scale(t), sde.std(t), sde.g2(t)
    snr = mu ** 2 / sigma ** 2
    if name == "variance":
        return sigma ** 2
    if name in ("likelihood", "likelihood_is"):
        return g2
    if name == "debiased":  # w = 1/√SNR on the ε-loss; ‖ε_θ − ε‖² = σ²‖s_θ − target‖²
        return sigma ** 2 / snr.sqrt()
    if name == "p2":
        return sigma ** 2 / (params["k"] + snr) ** params["gamma"]
    if name == "min_snr":
        return sigma ** 2 * torch.minimum(torch.ones_like(snr), params["gamma"] / snr)
    raise AssertionError(name)


CASES = [("variance", {}), ("likelihood", {}), ("likelihood_is", {}), ("debiased", {}),
         ("p2", {"k": 1.0, "gamma": 1.0}), ("p2", {"k": 0.5, "gamma": 0.5}),
         ("min_snr", {"gamma": 5.0}), ("min_snr", {"gamma": 0.1})]


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("name, params", CASES)
def test_weighting_equals_its_formula(name: str, params: dict, sde_name: str) -> None:
    sde = SDES[sde_name]
    w = Weighting.registry.build({"name": name, **params}, "weighting")
    t = T_VALUES * sde.T
    got = w(sde, t)
    assert got.shape == t.shape and torch.all(got > 0)
    torch.testing.assert_close(got, _expected(name, params, sde, t), rtol=1e-9, atol=0)


def test_defaults_and_registry_names() -> None:
    assert Weighting.registry.names() == ["debiased", "likelihood", "likelihood_is", "min_snr", "p2", "variance"]
    p2 = Weighting.registry.build("p2", "weighting")
    assert (p2.k, p2.gamma) == (1.0, 1.0)
    assert Weighting.registry.build("min_snr", "weighting").gamma == 5.0


def test_min_snr_switches_at_snr_equal_gamma() -> None:
    """Below SNR = γ (noisy) it is σ² exactly; above (clean) it is σ² γ/SNR."""
    sde, w = VPSDE(), Weighting.registry.build({"name": "min_snr", "gamma": 5.0}, "w")
    t = torch.linspace(1e-4, 1, 200, dtype=torch.float64)
    noisy = sde.snr(t) <= 5.0
    assert noisy.any() and (~noisy).any()
    torch.testing.assert_close(w(sde, t)[noisy], sde.std(t)[noisy] ** 2)
    assert torch.all(w(sde, t)[~noisy] < sde.std(t)[~noisy] ** 2)


def test_unknown_name_lists_the_allowed_names() -> None:
    with pytest.raises(ConfigError) as err:
        load_dataclass(DSM, {"weighting": {"name": "likelihod"}})
    assert err.value.field == "weighting.name"
    for name in Weighting.registry.names():
        assert name in str(err.value)


@pytest.mark.parametrize("spec, field", [
    ({"name": "p2", "k": -1.0}, "k"), ({"name": "p2", "gamma": -0.5}, "gamma"),
    ({"name": "p2", "k": float("inf")}, "k"), ({"name": "min_snr", "gamma": 0.0}, "gamma"),
    ({"name": "min_snr", "gamma": float("nan")}, "gamma"), ({"name": "variance", "gamma": 1.0}, "gamma"),
])
def test_bad_parameters_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        Weighting.registry.build(spec, "objective.weighting")
    assert err.value.field == f"objective.weighting.{field}"


def test_likelihood_is_forces_the_importance_sampler() -> None:
    for name in Weighting.registry.names():
        required = Weighting.registry.build(name, "w").time_sampler_name
        assert required == ("importance" if name == "likelihood_is" else None)
    obj = Objective.registry.build({"name": "dsm", "weighting": "likelihood_is"}, "objective")
    assert obj.sampler == ImportanceSampler()
    obj = Objective.registry.build({"name": "dsm", "weighting": "likelihood_is", "time_sampler": "importance"}, "o")
    assert obj.sampler == ImportanceSampler()
    assert Objective.registry.build({"name": "dsm", "weighting": "likelihood"}, "o").sampler == UniformSampler()
    for name in ("stf", "dsm"):
        with pytest.raises(ConfigError) as err:
            Objective.registry.build({"name": name, "weighting": "likelihood_is", "time_sampler": "uniform"},
                                     "objective")
        assert err.value.field == "objective.time_sampler"
        assert "importance" in str(err.value)
