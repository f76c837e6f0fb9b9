"""The model zoo: shapes, data variants, prunable layers per architecture, search spaces, profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nni_prune_tuners.profile import load_profile
from nni_prune_tuners.search_space import parse_search_space
from nni_prune_tuners.trial import Pruner
from trials import models
from trials.data import DATA_VARIANTS
from trials.masking import layer_weight, num_pruned, prunable_layers
from trials.models import ZOO

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
HARD_ZOO = ["resnet_digits", "mobilenet_digits", "vit_digits", "mlp_digits"]


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return ZOO[name]()


@pytest.mark.parametrize("name", list(ZOO))
def test_every_model_runs_on_its_input_shape(name: str) -> None:
    model = _build(name)
    assert model.data_variant in DATA_VARIANTS
    assert getattr(models, name) is ZOO[name]
    out = model(torch.rand(5, *model.input_shape))
    assert out.shape == (5, 4 if model.data_variant == "stdlib_text" else 10)  # 4 modules, 10 digits


@pytest.mark.parametrize("name", HARD_ZOO)
def test_zoo_trains_on_the_hard_16x16_digits(name: str) -> None:
    model = _build(name)
    assert model.data_variant == "digits_hard" and tuple(model.input_shape) == (1, 16, 16)


def test_digits_cnn_is_unchanged() -> None:
    model = _build("digits_cnn")
    assert model.data_variant == "digits" and tuple(model.input_shape) == (1, 8, 8)
    sizes = {n: layer_weight(m).numel() for n, m in prunable_layers(model).items()}
    assert sizes == {"conv0": 144, "conv1": 4608, "fc": 1280}


@pytest.mark.parametrize("name", list(ZOO))
def test_every_prunable_layer_is_used_by_forward(name: str) -> None:
    """A layer the forward pass never calls would be pruned for nothing (and has no FLOPs)."""
    model = _build(name)
    called: set[str] = set()
    for layer, module in prunable_layers(model).items():
        module.register_forward_hook(lambda *_, layer=layer: called.add(layer))
    model(torch.zeros(2, *model.input_shape))
    assert called == set(prunable_layers(model))


def test_resnet_has_batchnorm_residual_blocks_and_ten_prunable_layers() -> None:
    model = _build("resnet_digits")
    layers = prunable_layers(model)
    assert len(layers) >= 10
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert {"stem", "layer1.0.conv1", "layer2.0.shortcut.0", "fc"} <= set(layers)
    block = model.layer1[0]
    x = torch.rand(2, 16, 16, 16)
    with torch.no_grad():  # the block adds its input back: zero convs leave relu(x)
        for conv in (block.conv1, block.conv2):
            conv.weight.zero_()
        assert torch.allclose(block.eval()(x), torch.relu(x))


def test_mobilenet_separates_depthwise_and_pointwise_layers() -> None:
    layers = prunable_layers(_build("mobilenet_digits"))
    depthwise = {n: m for n, m in layers.items() if n.endswith(".depthwise")}
    pointwise = {n: m for n, m in layers.items() if n.endswith(".pointwise")}
    assert len(depthwise) == len(pointwise) >= 4
    for module in depthwise.values():
        assert isinstance(module, nn.Conv2d)
        assert module.groups == module.in_channels == module.out_channels
        assert module.kernel_size == (3, 3)
    for module in pointwise.values():
        assert isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
        assert module.groups == 1


def test_vit_attention_and_mlp_linears_are_dotted_prunable_layers() -> None:
    model = _build("vit_digits")
    layers = prunable_layers(model)
    assert len(layers) >= 12
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    for block in range(len(model.blocks)):
        for part in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.fc1", "mlp.fc2"):
            assert isinstance(layers[f"blocks.{block}.{part}"], nn.Linear)


def test_vit_attention_matches_torch_multihead_attention() -> None:
    """The explicit q/k/v/out projections compute standard multi-head attention."""
    torch.manual_seed(0)
    attn = models.Attention(16, heads=4)
    ref = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]))
        ref.in_proj_bias.copy_(torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]))
        ref.out_proj.weight.copy_(attn.out.weight)
        ref.out_proj.bias.copy_(attn.out.bias)
    x = torch.randn(3, 7, 16)
    expected, _ = ref(x, x, x, need_weights=False)
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_mlp_is_lenet_300_100() -> None:
    layers = prunable_layers(_build("mlp_digits"))
    assert {n: tuple(layer_weight(m).shape) for n, m in layers.items()} == {
        "fc1": (300, 256), "fc2": (100, 300), "fc3": (10, 100)
    }


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (models.ResNetDigits, {"widths": (16, 32), "blocks": (1,)}, "equally long"),
        (models.ResNetDigits, {"widths": (16, 0), "blocks": (1, 1)}, r"widths\[1\]"),
        (models.MobileNetDigits, {"cfg": ()}, "cfg"),
        (models.MobileNetDigits, {"stem_width": 0}, "stem_width"),
        (models.ViTDigits, {"patch": 3}, "patch"),
        (models.ViTDigits, {"dim": 30, "heads": 4}, "divisible"),
        (models.MlpDigits, {"hidden": (300, 0)}, "hidden1"),
    ],
)
def test_bad_model_options_raise(factory: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)


@pytest.mark.parametrize("name", list(ZOO))
def test_pruner_prunes_every_zoo_layer_exactly(name: str) -> None:
    model = _build(name)
    layers = prunable_layers(model)
    params = {"prune_method": {"_name": "level", **{f"{n}_sparsity": 0.9 for n in layers}}}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = Pruner(model, params, epochs=1, optimizer=optimizer)
    pruner.on_epoch_start(0)
    loss = model(torch.rand(4, *model.input_shape)).sum()
    loss.backward()
    optimizer.step()
    for layer, module in layers.items():
        weight = layer_weight(module)
        assert int((weight == 0).sum()) == num_pruned(weight.numel(), 0.9), layer


def _space_layers(space: Any) -> list[list[str]]:
    (method,) = parse_search_space(space)
    return [[p.layer for p in branch.parameters if p.is_layer_sparsity]
            for branch in method.branches if branch is not None]


@pytest.mark.parametrize("name", HARD_ZOO)
def test_search_space_names_every_prunable_layer(name: str) -> None:
    space = json.loads((SPACES / f"{name}.json").read_text())
    layers = list(prunable_layers(_build(name)))
    (method,) = parse_search_space(space)
    assert [b.name for b in method.branches if b is not None] == ["agp", "level"]
    assert _space_layers(space) == [layers, layers]
    for option in space["prune_method"]["_value"]:
        for key, spec in option.items():
            if key != "_name":
                assert spec == {"_type": "uniform", "_value": [0.05, 0.98]}


@pytest.mark.parametrize("name", HARD_ZOO)
def test_profile_matches_the_model(name: str) -> None:
    path = SPACES / f"{name}.profile.json"
    profile = load_profile(path)
    raw = json.loads(path.read_text())
    layers = prunable_layers(_build(name))
    assert raw["model"] == name
    assert [e["name"] for e in raw["layers"]] == list(layers)
    assert [e["params"] for e in raw["layers"]] == [layer_weight(m).numel() for m in layers.values()]
    assert all(e["flops"] >= e["params"] for e in raw["layers"])
    assert list(profile.layers) == list(layers)
    assert profile.supports("lamp") and profile.supports("global_magnitude")
