"""Structured (``channel``) pruning, torch side (Contract 10): groups, real surgery, FLOPs."""

from __future__ import annotations

import copy
import io
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nni_prune_tuners.trial import (
    ChannelGroup,
    channel_groups,
    channel_layers,
    prune_channels,
)
from nni_prune_tuners.trial.channel import ChannelLayer, _raw_groups, channel_analysis, model_flops
from trials import models

ZOO = ["resnet_digits", "mobilenet_digits", "vit_digits", "mlp_digits"]


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.ZOO[name]().eval()


def _inputs(model: nn.Module, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.input_shape, generator=torch.Generator().manual_seed(3))


def _by_name(groups: list[ChannelGroup]) -> dict[str, ChannelGroup]:
    return {group.name: group for group in groups}


def _predicted(layers: list[ChannelLayer], groups: list[ChannelGroup],
               sparsities: dict[str, float], *, rounded: bool) -> float:
    """The profile's torch-free formula: sum(flops * keep(in_group) * keep(out_group))."""
    channels = {group.name: group.channels for group in groups}

    def keep(group: str | None) -> float:
        if group is None or group not in sparsities:
            return 1.0
        s = sparsities[group]
        return 1.0 - (round(s * channels[group]) / channels[group] if rounded else s)

    return sum(layer.flops * keep(layer.in_group) * keep(layer.out_group) for layer in layers)


def _random_sparsities(groups: list[ChannelGroup], seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    return {g.name: rng.uniform(0.0, (g.channels - 1) / g.channels) for g in groups}


def test_resnet_residual_stages_are_one_group_each() -> None:
    model = _model("resnet_digits")
    groups = _by_name(channel_groups(model, _inputs(model)))
    # the stem and every conv2 of stage 1 meet at the identity shortcuts' additions
    assert groups["stem"] == ChannelGroup("stem", ("stem", "layer1.0.conv2", "layer1.1.conv2"), 16)
    assert groups["layer2.0.conv2"].layers == ("layer2.0.conv2", "layer2.0.shortcut.0")
    assert groups["layer3.0.conv2"] == ChannelGroup(
        "layer3.0.conv2", ("layer3.0.conv2", "layer3.0.shortcut.0"), 64)
    for inner, channels in [("layer1.0.conv1", 16), ("layer1.1.conv1", 16),
                            ("layer2.0.conv1", 32), ("layer3.0.conv1", 64)]:
        assert groups[inner] == ChannelGroup(inner, (inner,), channels)
    assert len(groups) == 7
    assert all("fc" not in group.layers for group in groups.values())  # the classifier


def test_mobilenet_depthwise_convs_join_their_producer() -> None:
    model = _model("mobilenet_digits")
    x = _inputs(model)
    groups = channel_groups(model, x)
    assert [g.layers for g in groups] == [
        ("stem", "blocks.0.depthwise"),
        ("blocks.0.pointwise", "blocks.1.depthwise"),
        ("blocks.1.pointwise", "blocks.2.depthwise"),
        ("blocks.2.pointwise", "blocks.3.depthwise"),
        ("blocks.3.pointwise", "blocks.4.depthwise"),
        ("blocks.4.pointwise",),
    ]
    assert [g.channels for g in groups] == [16, 32, 64, 64, 128, 128]
    layers = {layer.name: layer for layer in channel_layers(model, x, groups=groups)}
    # a depthwise conv's FLOPs follow its own channels once: no in_group
    assert layers["blocks.1.depthwise"] == ChannelLayer(
        "blocks.1.depthwise", layers["blocks.1.depthwise"].flops, None, "blocks.0.pointwise")
    assert (layers["blocks.1.pointwise"].in_group, layers["blocks.1.pointwise"].out_group) == (
        "blocks.0.pointwise", "blocks.1.pointwise")
    assert (layers["fc"].in_group, layers["fc"].out_group) == ("blocks.4.pointwise", None)


def test_vit_heads_are_groups_and_what_its_forward_cannot_shrink_stays_dense() -> None:
    model = _model("vit_digits")
    x = _inputs(model)
    raw = {r.group.name: r.group.layers for r in _raw_groups(model, x)}
    # the dependency analysis ties the residual stream (patch_embed, every attn.out and mlp.fc2)
    assert raw["patch_embed"] == ("patch_embed", "blocks.0.attn.out", "blocks.0.mlp.fc2",
                                  "blocks.1.attn.out", "blocks.1.mlp.fc2", "blocks.2.attn.out",
                                  "blocks.2.mlp.fc2")
    # (the cls token and position embedding shrink with it); each block's heads (4 of 16
    # channels) are a group of their own, and the MLPs' hidden features are channel groups
    analysis = channel_analysis(model, x)
    assert analysis.groups[0] == ChannelGroup("patch_embed", raw["patch_embed"], 64)
    assert analysis.groups[1:] == [
        group for i in range(3) for group in (
            ChannelGroup(f"blocks.{i}.attn.q", tuple(f"blocks.{i}.attn.{p}" for p in "qkv"), 4,
                         kind="heads"),
            ChannelGroup(f"blocks.{i}.mlp.fc1", (f"blocks.{i}.mlp.fc1",), 128))]
    assert analysis.dense == []


class _SingleHeadAttention(nn.Module):
    """Attention that reads its widths from its weights: its q/k/v group is prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.q, self.k, self.v = nn.Linear(32, 24), nn.Linear(32, 24), nn.Linear(32, 24)
        self.out = nn.Linear(24, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        y = F.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h))
        return self.head((h + self.out(y)).mean(1))


def test_attention_projections_are_one_group_and_prune() -> None:
    torch.manual_seed(0)
    model = _SingleHeadAttention().eval()
    x = torch.randn(2, 6, 8)
    groups = channel_groups(model, x)
    assert groups == [ChannelGroup("embed", ("embed", "out"), 32),
                      ChannelGroup("q", ("q", "k", "v"), 24)]
    prune_channels(model, {"q": 0.5, "embed": 0.25}, x)
    assert [model.q.out_features, model.k.out_features, model.v.out_features] == [12, 12, 12]
    assert (model.out.in_features, model.out.out_features, model.head.in_features) == (12, 24, 24)
    assert model(x).shape == (2, 5)


@pytest.mark.parametrize("name", ZOO)
def test_pruned_flops_match_the_formula(name: str) -> None:
    dense = _model(name)
    x = _inputs(dense)
    groups = channel_groups(dense, x)
    layers = channel_layers(dense, x, groups=groups)
    assert {layer.name: layer.flops for layer in layers} == model_flops(dense, x)
    for seed in range(3):
        sparsities = _random_sparsities(groups, seed)
        pruned = prune_channels(copy.deepcopy(dense), sparsities, x)
        real = sum(model_flops(pruned, x).values())
        predicted = _predicted(layers, groups, sparsities, rounded=True)
        assert abs(predicted / real - 1.0) < 0.01, (seed, predicted, real)


@pytest.mark.parametrize("name", ZOO)
def test_pruned_model_is_smaller_and_keeps_the_output_shape(name: str) -> None:
    model = _model(name)
    x = _inputs(model)
    dense_out = model(x)
    dense_params = sum(p.numel() for p in model.parameters())
    groups = channel_groups(model, x)
    rows = {name: module.weight.shape[0] for name, module in model.named_modules()
            if hasattr(module, "weight")}
    result = prune_channels(model, {g.name: 0.5 for g in groups}, x)
    assert result is model
    assert model(x).shape == dense_out.shape
    assert model(_inputs(model, batch=5)).shape == (5, *dense_out.shape[1:])
    assert sum(p.numel() for p in model.parameters()) < 0.8 * dense_params
    for group in groups:  # every layer of a group lost the same round(0.5 * n) channels (heads)
        for layer in group.layers:
            weight = dict(model.named_modules())[layer].weight
            per_unit = rows[layer] // group.channels
            assert weight.shape[0] == (group.channels - round(0.5 * group.channels)) * per_unit


def test_the_lowest_l1_channels_summed_over_the_group_go() -> None:
    model = _model("resnet_digits")
    x = _inputs(model)
    group = _by_name(channel_groups(model, x))["layer2.0.conv2"]
    modules = dict(model.named_modules())
    norms = sum(modules[layer].weight.detach().abs().flatten(1).sum(1) for layer in group.layers)
    kept = torch.sort(torch.argsort(norms, descending=True)[:8]).values
    expected = modules["layer2.0.conv2"].weight.detach()[kept].clone()
    prune_channels(model, {"layer2.0.conv2": 0.75}, x)
    assert torch.equal(dict(model.named_modules())["layer2.0.conv2"].weight.detach(), expected)


@pytest.mark.parametrize("name", ["resnet_digits", "vit_digits"])
def test_save_and_load_the_whole_pruned_module(name: str) -> None:
    model = _model(name)
    x = _inputs(model)
    prune_channels(model, _random_sparsities(channel_groups(model, x), 0), x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)


def test_fine_tuning_after_pruning_keeps_the_smaller_shapes() -> None:
    model = _model("resnet_digits")
    x = _inputs(model, batch=8)
    target = torch.arange(8) % 10
    prune_channels(model, _random_sparsities(channel_groups(model, x), 1), x)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # after pruning
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert not torch.equal(model.stem.weight, before["stem.weight"])  # it really trained


def test_channel_groups_does_not_change_the_model() -> None:
    model = _model("resnet_digits")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    channel_groups(model, _inputs(model))
    assert model.training  # traced in eval mode, the mode restored
    for key, value in model.state_dict().items():  # BatchNorm statistics did not move
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    ("sparsities", "named"),
    [
        ({"nope": 0.5}, "'nope'"),
        ({"fc": 0.5}, "'fc'"),  # the classifier is no group
        ({"layer1.0.conv2": 0.5}, "'layer1.0.conv2'"),  # a member, not the group's name
        ({"stem": 0.99}, "sparsities['stem']=0.99"),  # round(0.99 * 16) = 16: every channel
        ({"stem": 1.0}, "sparsities['stem']"),
        ({"stem": -0.1}, "sparsities['stem']"),
        ({"stem": float("nan")}, "sparsities['stem']"),
        ({"stem": True}, "sparsities['stem']"),
        ({"layer1.0.conv1": 0.5, "stem": 0.97}, "sparsities['stem']=0.97"),
    ],
)
def test_bad_sparsities_are_named_before_anything_changes(
    sparsities: dict[str, float], named: str
) -> None:
    model = _model("resnet_digits")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        prune_channels(model, sparsities, _inputs(model))
    message = str(info.value)
    assert named in message and "\n" not in message, message
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in before.items()}
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_zero_and_unnamed_groups_stay_dense() -> None:
    model = _model("mlp_digits")
    x = _inputs(model)
    prune_channels(model, {"fc1": 0.0}, x)
    assert (model.fc1.out_features, model.fc2.out_features) == (300, 100)
    prune_channels(model, {"fc2": 0.25}, x)
    assert (model.fc1.out_features, model.fc2.out_features, model.fc3.in_features) == (300, 75, 75)


def test_grouped_convolutions_that_cannot_shrink_stay_dense() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1, groups=2), nn.ReLU(),
                          nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    x = torch.randn(2, 3, 8, 8)
    # a channel of conv 0 or 2 cannot go alone without unbalancing the two convolution groups
    assert channel_groups(model, x) == [ChannelGroup("4", ("4",), 8)]
    prune_channels(model, {"4": 0.5}, x)
    assert model(x).shape == (2, 4)


def test_a_classifier_behind_an_op_is_still_no_group() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.log_softmax(self.fc2(torch.relu(self.fc1(x))), dim=1)

    assert channel_groups(Net(), torch.randn(2, 6)) == [ChannelGroup("fc1", ("fc1",), 12)]
