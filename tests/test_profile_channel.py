"""The ``channel`` fields of the profile (Contract 10): the profiler writes them, the torch-free
parser validates them and predicts the FLOPs a channel allocation leaves."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nni_prune_tuners.profile import channels_removed, parse_profile
from nni_prune_tuners.trial import count_flops, prune_channels
from nni_prune_tuners.trial.profile import main, profile_model, search_space
from trials import models

ZOO = ["resnet_digits", "mobilenet_digits", "vit_digits", "mlp_digits"]


def _profile(name: str) -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(0)
    model = models.ZOO[name]().eval()
    return model, profile_model(model, name=name, channel=True)


@pytest.mark.parametrize("name", ZOO)
def test_profile_predicts_the_flops_of_the_really_pruned_model(name: str) -> None:
    model, raw = _profile(name)
    profile = parse_profile(json.loads(json.dumps(raw)))
    assert list(profile.channel_groups) == [g["name"] for g in raw["channel_groups"]]
    x = torch.zeros(1, *model.input_shape)
    assert profile.channel_flops({}) == sum(count_flops(model, x).values())
    rng = random.Random(7)
    for _ in range(3):
        sparsities = {name: rng.uniform(0.0, (g.channels - 1) / g.channels)
                      for name, g in profile.channel_groups.items()}
        real = sum(count_flops(prune_channels(copy.deepcopy(model), sparsities, x), x).values())
        assert abs(profile.channel_flops(sparsities, rounded=True) / real - 1.0) < 0.01


def test_profile_fields_of_a_residual_model() -> None:
    _, raw = _profile("resnet_digits")
    layers = {entry["name"]: entry for entry in raw["layers"]}
    assert raw["channel_groups"][0] == {
        "name": "stem", "layers": ["stem", "layer1.0.conv2", "layer1.1.conv2"], "channels": 16}
    assert (layers["layer1.0.conv2"]["in_group"], layers["layer1.0.conv2"]["out_group"]) == (
        "layer1.0.conv1", "stem")
    assert (layers["fc"]["in_group"], layers["fc"]["out_group"]) == ("layer3.0.conv2", None)
    assert (layers["stem"]["in_group"], layers["stem"]["flops"]) == (None, 16 * 9 * 16 * 16)


def test_channel_needs_an_input_shape() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="needs an input shape"):
        profile_model(model, name="mlp", channel=True)
    assert "channel_groups" not in profile_model(model, name="mlp", input_shape=(4,))


def test_search_space_channel_branch_keys_and_bounds() -> None:
    from nni_prune_tuners.trial import ChannelGroup

    groups = [ChannelGroup("a", ("a", "b"), 16), ChannelGroup("c", ("c",), 300)]
    space = search_space(["a", "b", "c"], methods=["level", "channel"], low=0.05, high=0.98,
                         groups=groups)
    level, channel = space["prune_method"]["_value"]
    assert set(level) == {"_name", "a_sparsity", "b_sparsity", "c_sparsity"}
    assert channel == {"_name": "channel",
                       "a_sparsity": {"_type": "uniform", "_value": [0.05, 15 / 16]},
                       "c_sparsity": {"_type": "uniform", "_value": [0.05, 0.98]}}
    assert channels_removed(15 / 16, 16) == 15  # the top bound keeps one channel
    with pytest.raises(ValueError, match="no prunable channel group"):
        search_space(["a"], methods=["channel"], low=0.05, high=0.9)
    with pytest.raises(ValueError, match="'a' has 2 channels"):
        search_space(["a"], methods=["channel"], low=0.6, high=0.9,
                     groups=[ChannelGroup("a", ("a",), 2)])


def test_cli_writes_groups_and_the_channel_branch(tmp_path: Path) -> None:
    out, space = tmp_path / "profile.json", tmp_path / "space.json"
    assert main(["--model", "trials.models:mlp_digits", "--methods", "level,channel",
                 "--out", str(out), "--search-space", str(space)]) == 0
    profile = json.loads(out.read_text())
    assert profile["channel_groups"] == [{"name": "fc1", "layers": ["fc1"], "channels": 300},
                                         {"name": "fc2", "layers": ["fc2"], "channels": 100}]
    assert [(e["in_group"], e["out_group"]) for e in profile["layers"]] == [
        (None, "fc1"), ("fc1", "fc2"), ("fc2", None)]
    branches = json.loads(space.read_text())["prune_method"]["_value"]
    assert [b["_name"] for b in branches] == ["level", "channel"]
    assert set(branches[1]) == {"_name", "fc1_sparsity", "fc2_sparsity"}
    parse_profile(profile)


def test_cli_rejects_an_unknown_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "trials.models:mlp_digits", "--methods", "level,chanel",
                 "--out", str(tmp_path / "p.json")]) == 2
    assert "--methods must be a comma list of ['agp', 'level', 'channel']" in capsys.readouterr().err


def _minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "format": 1, "model": "m",
        "layers": [{"name": "a", "params": 8, "flops": 80, "out_group": "a"},
                   {"name": "b", "params": 8, "flops": 40, "in_group": "a"}],
        "channel_groups": [{"name": "a", "layers": ["a"], "channels": 4}],
    }
    data.update(extra)
    return data


def test_parser_reads_and_predicts() -> None:
    profile = parse_profile(_minimal())
    assert profile.layers["b"].in_group == "a" and profile.layers["b"].out_group is None
    assert profile.channel_flops({"a": 0.5}) == pytest.approx(60.0)
    assert profile.channel_flops({"a": 0.3}, rounded=True) == pytest.approx(0.75 * 120)


def test_parser_keeps_old_profiles_working() -> None:
    data = _minimal()
    del data["channel_groups"]
    for layer in data["layers"]:
        layer.pop("in_group", None)
        layer.pop("out_group", None)
    profile = parse_profile(data)
    assert dict(profile.channel_groups) == {}
    with pytest.raises(ValueError, match="no channel_groups"):
        profile.channel_flops({})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["layers"][1].update(in_group="zzz"),
         "layers[1] ('b').in_group='zzz' is not a channel group"),
        (lambda d: d["layers"][0].update(out_group="zzz"),
         "layers[0] ('a').out_group='zzz' is not a channel group"),
        (lambda d: d["layers"][0].update(out_group=3), "layers[0] ('a').out_group must be"),
        (lambda d: d["channel_groups"][0].update(layers=["q"]),
         "channel_groups[0].layers names layer 'q'"),
        (lambda d: d["channel_groups"][0].update(channels=1), "channel_groups[0].channels"),
        (lambda d: d["channel_groups"].append(dict(d["channel_groups"][0])),
         "duplicate channel group name 'a'"),
        (lambda d: d.update(channel_groups={"a": 1}), "channel_groups must be a list"),
        (lambda d: d["layers"][1].update(out_group="a"),
         "layers[1] ('b').out_group='a' but that group's layers do not list 'b'"),
    ],
)
def test_parser_names_bad_channel_fields(change: Any, message: str) -> None:
    data = _minimal()
    change(data)
    with pytest.raises(ValueError) as info:
        parse_profile(data)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("sparsities", "message"),
    [({"b": 0.5}, "b_sparsity=0.5 names no channel group"),
     ({"a": 0.9}, "a_sparsity=0.9 would remove all 4 channels"),
     ({"a": 1.0}, "a_sparsity must be a number in [0, 1)")],
)
def test_predicting_bad_sparsities_names_them(sparsities: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_profile(_minimal()).channel_flops(sparsities)
    assert message in str(info.value)
