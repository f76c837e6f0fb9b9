"""Loading and validating the model profile (Contract 4)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from nni_prune_tuners.profile import ModelProfile, load_profile
from tests.profiles import analytic_profile, write_profile


def test_valid_profile_loads(tmp_path: Path) -> None:
    profile = load_profile(write_profile(tmp_path / "p.json"))
    assert list(profile.layers) == ["conv0", "conv1", "conv2", "fc"]
    assert profile.prunable_params == 144 + 4608 + 18432 + 5120
    assert profile.weight("conv1", "flops") == 4608 * 36
    assert all(profile.supports(h) for h in ("uniform", "global_magnitude", "lamp", "erk"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format=2), "format must be 1, got 2"),
        (lambda d: d["layers"][1].update(params=-3), r"layers\[1\] \('conv1'\).params"),
        (lambda d: d["layers"][0].update(shape=[16, 1, 3, 4]), "does not match shape"),
        (lambda d: d["layers"][2].update(magnitude_quantiles=[0.0] * 5),
         r"'conv2'\).magnitude_quantiles must be a list of 101"),
        (lambda d: d["layers"][2]["lamp_quantiles"].reverse(), "must be non-decreasing"),
        (lambda d: d["layers"].append(copy.deepcopy(d["layers"][0])), "duplicate layer name"),
        (lambda d: d.update(prunable_params=1), "prunable_params=1 but the layers hold"),
        (lambda d: d.update(layers=[]), "'layers' must be a non-empty list"),
    ],
)
def test_malformed_profile_names_the_key(tmp_path: Path, edit, message: str) -> None:
    data = analytic_profile()
    edit(data)
    with pytest.raises(ValueError, match=message):
        load_profile(write_profile(tmp_path / "p.json", data))


def test_unreadable_and_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        load_profile(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"format": 1,}')
    with pytest.raises(ValueError, match=r"not valid JSON.*line 1"):
        load_profile(tmp_path / "bad.json")


def test_layer_params_profile_supports_uniform_only() -> None:
    profile = ModelProfile.from_layer_params({"a": 10, "b.0": 20})
    assert profile.supports("uniform") and not profile.supports("lamp")
    with pytest.raises(ValueError, match=r"layer_params\['a'\] must be a positive integer"):
        ModelProfile.from_layer_params({"a": 0})
