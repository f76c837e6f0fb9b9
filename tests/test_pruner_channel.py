"""The own-model API with ``prune_method: channel`` (Contract 7 + 10, issue #27 point 2)."""

from __future__ import annotations

import io
from typing import Any, cast

import pytest
import torch
from torch import nn

from nni_prune_tuners.trial import Pruner, count_flops, prune_channels
from tests.test_pruner_api import Net  # two channel groups: features.0 (8), features.3 (16)

EPOCHS = 2


PARAMS: dict[str, Any] = {"prune_method": {"_name": "channel", "features.0_sparsity": 0.5,
                           "features.3_sparsity": 0.25}, "lr": 0.05}


def _model(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 1, 8, 8, generator=g), torch.arange(32) % 10


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def test_the_loop_trains_the_pruned_model_with_an_optimizer_built_after_pruning() -> None:
    model: nn.Module = _model()
    x, y = _batch()
    dense_flops = sum(count_flops(model, x[:1]).values())
    pruner = Pruner(model, PARAMS, epochs=EPOCHS, optimizer_factory=_sgd, example_inputs=x[:1])
    model, optimizer = pruner.model, pruner.optimizer
    net: Any = model  # the layers' attributes, as the user's code sees them
    assert [group.name for group in pruner.groups] == ["features.0", "features.3"]
    assert net.features[0].weight.shape == (4, 1, 3, 3)
    assert net.features[1].num_features == 4
    assert net.features[3].weight.shape == (12, 4, 3, 3)
    assert net.head.weight.shape == (10, 12 * 4 * 4)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters()}
    assert pruner.group_sparsity() == {"features.0": 0.5, "features.3": 0.25}
    for epoch in range(EPOCHS):
        pruner.on_epoch_start(epoch)
        model.train()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        report = pruner.intermediate(0.5, epoch)
        assert report == {"default": 0.5, "epoch": epoch, "sparsity": pruner.sparsity(),
                          "pruned": True}
    assert net.features[0].weight.shape == (4, 1, 3, 3)  # training keeps the smaller shapes
    pruned_flops = sum(count_flops(model, x[:1]).values())
    final = pruner.final(0.75)
    assert final == {"default": 0.75, "sparsity": pruner.sparsity(), "method": "channel",
                     "flops_removed": pytest.approx(1 - pruned_flops / dense_flops, abs=1e-12)}
    dense_weights = 8 * 9 + 16 * 8 * 9 + 10 * 256
    assert pruner.sparsity() == pytest.approx(1 - (4 * 9 + 12 * 4 * 9 + 10 * 192) / dense_weights)
    assert pruner.layer_sparsity()["head"] == pytest.approx(0.25)
    assert pruner.masks == {}
    pruner.remove()  # nothing to remove; harmless
    assert model(x).shape == (32, 10)


def test_it_prunes_what_prune_channels_prunes() -> None:
    x = _batch()[0][:1]
    reference = prune_channels(_model(), {"features.0": 0.5, "features.3": 0.25}, x)
    pruner = Pruner(_model(), PARAMS, epochs=1, optimizer_factory=_sgd, example_inputs=x)
    for got, want in zip(pruner.model.state_dict().values(), reference.state_dict().values(),
                         strict=True):
        assert torch.equal(got, want)


def test_the_pruned_module_saves_and_loads_whole() -> None:
    x = _batch()[0]
    pruner = Pruner(_model(), PARAMS, epochs=1, optimizer_factory=_sgd, example_inputs=x[:1])
    buffer = io.BytesIO()
    torch.save(pruner.model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    loaded.eval()
    pruner.model.eval()
    torch.testing.assert_close(loaded(x), pruner.model(x))
    with pytest.raises(RuntimeError, match="size mismatch"):  # a dense model cannot take it
        _model().load_state_dict(pruner.model.state_dict())


def test_config_list_is_nni_l1norm_vocabulary() -> None:
    pruner = Pruner(_model(), PARAMS, epochs=1, optimizer_factory=_sgd,
                    example_inputs=_batch()[0][:1])
    assert pruner.config_list() == [
        {"op_names": ["features.0"], "target_names": ["weight"], "sparse_ratio": 0.5,
         "granularity": "out_channel", "dependency_group_id": "features.0"},
        {"op_names": ["features.3"], "target_names": ["weight"], "sparse_ratio": 0.25,
         "granularity": "out_channel", "dependency_group_id": "features.3"},
    ]


def test_nni_l1norm_pruner_masks_the_channels_removed_here() -> None:
    """NNI 3.0's L1NormPruner takes the config_list of a residual group and, where floor ==
    round, masks exactly the output channels ``prune_channels`` removes."""
    pytest.importorskip("nni.compression.pruning")
    from nni.compression.pruning import L1NormPruner

    from trials import models

    torch.manual_seed(0)
    dense = models.ZOO["resnet_digits"]().eval()
    reference = models.ZOO["resnet_digits"]().eval()
    reference.load_state_dict(dense.state_dict())
    x = torch.zeros((1, *cast(tuple[int, ...], dense.input_shape)))
    params = {"prune_method": {"_name": "channel", "stem_sparsity": 0.5,
                               "layer2.0.conv1_sparsity": 0.25}}
    pruner = Pruner(dense, params, epochs=1, optimizer_factory=_sgd, example_inputs=x)
    config = pruner.config_list()
    assert config[0]["op_names"] == ["stem", "layer1.0.conv2", "layer1.1.conv2"]
    _, masks = L1NormPruner(reference, config).compress()

    def kept_by_nni(layer: str) -> list[int]:
        return masks[layer]["weight"].flatten(1).any(dim=1).nonzero().flatten().tolist()

    def kept_here(layer: str, inputs: list[int] | None) -> list[int]:
        """The dense filters the pruned layer's filters are (its inputs cut to ``inputs``)."""
        dense_weight = dict(reference.named_modules())[layer].weight.detach()
        if inputs is not None:
            dense_weight = dense_weight[:, inputs]
        pruned = dict(pruner.model.named_modules())[layer].weight.detach()
        return [next(i for i, w in enumerate(dense_weight) if torch.equal(w, row)) for row in pruned]

    stem = kept_here("stem", None)
    assert stem == kept_by_nni("stem") == kept_by_nni("layer1.0.conv2") == kept_by_nni(
        "layer1.1.conv2")
    assert len(stem) == 8
    assert kept_here("layer2.0.conv1", stem) == kept_by_nni("layer2.0.conv1")


def test_level_and_agp_take_an_optimizer_factory_too() -> None:
    """One loop for a space with level, agp and channel branches."""
    model = _model()
    level = {"prune_method": {"_name": "level", "features.3_sparsity": 0.5}}
    pruner = Pruner(model, level, epochs=1, optimizer_factory=_sgd, example_inputs=None)
    assert pruner.model is model
    pruner.on_epoch_start(0)
    x, y = _batch()
    nn.functional.cross_entropy(model(x), y).backward()
    pruner.optimizer.step()
    assert pruner.layer_sparsity() == {"features.3": 0.5}


def _bad_cases() -> list[tuple[dict[str, Any], str]]:
    channel = PARAMS["prune_method"]
    return [
        ({"example_inputs": None}, "example_inputs"),
        ({"params": {"prune_method": {**channel, "head_sparsity": 0.5}}}, "'head' is not a channel"),
        ({"params": {"prune_method": {**channel, "features.9_sparsity": 0.5}}}, "features.9"),
        ({"params": {"prune_method": {**channel, "features.0_sparsity": 0.95}}},
         "features.0_sparsity=0.95 would remove all 8"),
        ({"params": {"prune_method": {**channel, "features.0_sparsity": 1.0}}}, "features.0_sparsity"),
        ({"optimizer_factory": None, "optimizer": "prebuilt"}, "built after pruning"),
        ({"optimizer": "prebuilt"}, "not both"),
        ({"optimizer_factory": "sgd"}, "optimizer_factory must be callable"),
        ({"optimizer_factory": None}, "optimizer"),
        ({"epochs": 0}, "epochs"),
    ]


@pytest.mark.parametrize(("case", "message"), _bad_cases())
def test_bad_input_raises_before_any_change(case: dict[str, Any], message: str) -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs: dict[str, Any] = {"epochs": 1, "optimizer_factory": _sgd,
                              "example_inputs": _batch()[0][:1], **case}
    if kwargs.get("optimizer") == "prebuilt":
        kwargs["optimizer"] = _sgd(model)
    params = kwargs.pop("params", PARAMS)
    with pytest.raises(ValueError, match=message) as raised:
        Pruner(model, params, **kwargs)
    assert "\n" not in str(raised.value)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_a_factory_that_returns_the_old_optimizer_is_named() -> None:
    model = _model()
    stale = _sgd(model)
    with pytest.raises(ValueError, match="before pruning"):
        Pruner(model, PARAMS, epochs=1, optimizer_factory=lambda _m: stale,
               example_inputs=_batch()[0][:1])
    with pytest.raises(ValueError, match="must return a torch"):
        Pruner(_model(), PARAMS, epochs=1, optimizer_factory=cast(Any, lambda _m: None),
               example_inputs=_batch()[0][:1])


def test_mask_only_queries_are_named_for_level() -> None:
    model = _model()
    pruner = Pruner(model, {"prune_method": {"_name": "level", "head_sparsity": 0.5}}, epochs=1,
                    optimizer=_sgd(model))
    with pytest.raises(RuntimeError, match="channel"):
        pruner.flops_removed()
    with pytest.raises(RuntimeError, match="channel"):
        pruner.group_sparsity()
