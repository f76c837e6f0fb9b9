"""Level/AGP masks: exact counts, ties, the cubic schedule, mask freezing, NNI cross-check."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from trials.masking import (
    AgpSchedule,
    WeightMasker,
    agp_mask,
    agp_sparsity,
    layer_weight,
    level_mask,
    measured_sparsity,
    num_pruned,
    prunable_layers,
)
from trials.models import digits_cnn


def _reference_level_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Sort by (|w|, flat index) and prune the first round(s*n): the rule, written plainly."""
    flat = weight.abs().reshape(-1).tolist()
    order = sorted(range(len(flat)), key=lambda i: (flat[i], i))
    mask = torch.ones(len(flat))
    mask[order[: round(sparsity * len(flat))]] = 0.0
    return mask.reshape(weight.shape)


@pytest.mark.parametrize("shape", [(7,), (16, 1, 3, 3), (32, 16, 3, 3), (10, 128)])
@pytest.mark.parametrize("sparsity", [0.0, 0.01, 0.5, 0.62, 0.93, 0.999])
def test_level_mask_prunes_exactly_round_s_n(shape: tuple[int, ...], sparsity: float) -> None:
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    mask = level_mask(weight, sparsity)
    assert mask.shape == weight.shape and mask.dtype == weight.dtype
    assert int((mask == 0).sum()) == round(sparsity * weight.numel())
    torch.testing.assert_close(mask, _reference_level_mask(weight, sparsity))


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(-3, 3), min_size=1, max_size=40),
    sparsity=st.floats(0.0, 0.999),
)
def test_level_mask_breaks_ties_by_index(values: list[int], sparsity: float) -> None:
    weight = torch.tensor(values, dtype=torch.float32)
    expected = _reference_level_mask(weight, sparsity)
    torch.testing.assert_close(level_mask(weight, sparsity), expected)


def test_level_mask_keeps_largest_magnitudes() -> None:
    weight = torch.tensor([[0.1, -5.0], [2.0, -0.3]])
    assert level_mask(weight, 0.5).tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_num_pruned_uses_round_and_validates() -> None:
    assert num_pruned(144, 0.62) == 89
    assert num_pruned(4608, 0.93) == 4285
    assert num_pruned(10, 0.36) == 4  # 3.6 rounds up where NNI's int() floors to 3
    assert num_pruned(0, 0.5) == 0
    for bad in (1.0, -0.01, math.nan, True):
        with pytest.raises(ValueError, match="sparsity"):
            num_pruned(10, bad)


def test_agp_schedule_seed_defaults_match_hand_computed_cubic() -> None:
    # s(t) = s_f + (s_i - s_f) * (1 - t/3)^3 with s_i = 0, t0 = 0, t_end = 3, frequency 1
    final = 0.8
    expected = [0.0, 0.8 * 19 / 27, 0.8 * 26 / 27, 0.8, 0.8, 0.8]
    got = [agp_sparsity(e, final) for e in range(6)]
    assert got == pytest.approx(expected, abs=1e-12)


def test_agp_schedule_with_offset_start_and_frequency() -> None:
    sched = AgpSchedule(initial_sparsity=0.1, start_epoch=1, end_epoch=5, frequency=2)
    # steps at 1, 3 and 5; before 1 dense; at 3 progress is 1/2: 0.8 + (0.1 - 0.8) * 0.5^3
    expected = [0.0, 0.1, 0.1, 0.7125, 0.7125, 0.8, 0.8]
    assert [agp_sparsity(e, 0.8, sched) for e in range(7)] == pytest.approx(expected, abs=1e-12)
    assert [sched.is_step(e) for e in range(7)] == [False, True, False, True, False, True, False]


def test_agp_schedule_edge_cases() -> None:
    # final below the initial sparsity: the layer starts at its final sparsity, never un-prunes
    assert agp_sparsity(0, 0.05, AgpSchedule(initial_sparsity=0.2)) == pytest.approx(0.05)
    # end not on the frequency grid: the last step is still at end_epoch
    sched = AgpSchedule(start_epoch=0, end_epoch=3, frequency=2)
    assert [sched.is_step(e) for e in range(5)] == [True, False, True, True, False]
    assert agp_sparsity(3, 0.5, sched) == 0.5
    assert agp_sparsity(7, 0.5, AgpSchedule(start_epoch=2, end_epoch=2)) == 0.5


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"initial_sparsity": 1.0}, "initial_sparsity"),
        ({"start_epoch": -1}, "start_epoch"),
        ({"start_epoch": 4, "end_epoch": 3}, "end_epoch"),
        ({"frequency": 0}, "frequency"),
        ({"end_epoch": 2.5}, "end_epoch"),
    ],
)
def test_agp_schedule_rejects_bad_options(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        AgpSchedule(**kwargs)  # type: ignore[arg-type]


def test_agp_masks_are_nested_even_with_zero_weights() -> None:
    weight = torch.tensor([0.0, 0.0, 0.5, 0.0, 0.2, 0.9, 0.0, 0.3])
    previous = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    mask = agp_mask(weight, 0.5, previous)
    assert int((mask == 0).sum()) == 4
    assert torch.all(mask <= previous)  # index 3 and 6 stay pruned despite ties at zero


def _train_masked(optimizer_name: str, *, agp_steps: bool) -> tuple[nn.Module, WeightMasker]:
    torch.manual_seed(0)
    model = digits_cnn()
    layers = prunable_layers(model)
    masker = WeightMasker({"conv1": layers["conv1"], "fc": layers["fc"]})
    params = model.parameters()
    optimizer: torch.optim.Optimizer
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2)
    else:
        optimizer = torch.optim.AdamW(params, lr=0.01, weight_decay=1e-2)
    masker.attach(optimizer)
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(32) % 10
    targets = [0.3, 0.6, 0.9] if agp_steps else [0.9]
    for step in range(30):
        if step % 10 == 0 and step // 10 < len(targets):
            s = targets[step // 10]
            for name in masker.layers:
                w = layer_weight(masker.layers[name])
                masker.apply(name, agp_mask(w, s, masker.masks.get(name)))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, masker


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
@pytest.mark.parametrize("agp_steps", [False, True])
def test_pruned_weights_stay_zero_through_fine_tuning(optimizer_name: str, agp_steps: bool) -> None:
    model, masker = _train_masked(optimizer_name, agp_steps=agp_steps)
    weights = []
    for name, mask in masker.masks.items():
        weight = layer_weight(masker.layers[name])
        assert int((mask == 0).sum()) == num_pruned(weight.numel(), 0.9)
        assert torch.all(weight[mask == 0] == 0)
        assert torch.all(weight[mask == 1] != 0)
        weights.append(weight)
    assert masker.sparsity() == pytest.approx(
        sum(num_pruned(w.numel(), 0.9) for w in weights)
        / sum(w.numel() for w in weights)
    )
    assert measured_sparsity([layer_weight(model.conv0)]) == 0.0  # unnamed layer stays dense


def test_optimizer_state_is_masked_when_a_mask_is_applied() -> None:
    layer = nn.Linear(4, 4)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    masker = WeightMasker({"fc": layer})
    masker.attach(optimizer)
    layer(torch.ones(2, 4)).sum().backward()
    optimizer.step()  # momentum buffer is now non-zero everywhere
    mask = level_mask(layer.weight, 0.5)
    masker.apply("fc", mask)
    buf = optimizer.state[layer.weight]["momentum_buffer"]
    assert torch.all(buf[mask == 0] == 0) and torch.all(layer.weight[mask == 0] == 0)
    assert torch.equal(layer.weight_mask, mask)
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.ones(2, 4)).sum().backward()
        assert torch.all(layer.weight.grad[mask == 0] == 0)
        optimizer.step()
    assert torch.all(layer.weight[mask == 0] == 0)
    masker.remove()
    assert not hasattr(layer, "weight_mask") and masker.masks == {}


def test_masker_rejects_bad_mask_shape() -> None:
    masker = WeightMasker({"fc": nn.Linear(4, 3)})
    with pytest.raises(ValueError, match="shape"):
        masker.apply("fc", torch.ones(4, 4))


def test_prunable_layers_include_dotted_names() -> None:
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Sequential(nn.Conv3d(1, 1, 1)))
    model.add_module("head", nn.Linear(2, 2))
    assert list(prunable_layers(model)) == ["0", "2.0", "head"]


def _nni_level_masks(model: nn.Module, sparsities: dict[str, float]) -> dict[str, torch.Tensor]:
    from nni.compression.pruning import LevelPruner

    config = [
        {"op_names": [name], "sparse_ratio": s, "target_names": ["weight"]}
        for name, s in sparsities.items()
    ]
    _, masks = LevelPruner(model, config).compress()
    return {name: masks[name]["weight"].float() for name in sparsities}


def test_level_masks_equal_nni_level_pruner() -> None:
    """Same weights, same layer sparsities -> the same masks as NNI's own LevelPruner.

    NNI prunes ``int(n * s)`` weights where we prune ``round(n * s)``; the sparsities here have
    fractional parts of ``n * s`` below one half, so both counts agree (see the next test).
    """
    pytest.importorskip("nni.compression.pruning")
    torch.manual_seed(3)
    model = digits_cnn()
    layers = prunable_layers(model)
    sparsities = {"conv0": 0.62, "conv1": 0.93, "fc": 0.5}
    for name, s in sparsities.items():
        n = layer_weight(layers[name]).numel()
        assert math.floor(n * s) == round(n * s)
    ours = {n: level_mask(layer_weight(layers[n]).detach().clone(), s)
            for n, s in sparsities.items()}
    nni_masks = _nni_level_masks(model, sparsities)
    for name in sparsities:
        torch.testing.assert_close(ours[name], nni_masks[name], msg=name)


def test_nni_level_pruner_floors_the_count() -> None:
    pytest.importorskip("nni.compression.pruning")
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(10, 1))  # 10 weights, s = 0.36: NNI 3, we 4
    ours = level_mask(model[0].weight.detach().clone(), 0.36)
    theirs = _nni_level_masks(model, {"0": 0.36})["0"]
    assert int((ours == 0).sum()) == 4 and int((theirs == 0).sum()) == 3
    assert torch.all(ours <= theirs)  # the same order: ours prunes one more


def test_trials_masking_re_exports_the_installed_subpackage() -> None:
    """One implementation: the checkout's names are the installable package's objects."""
    from nni_prune_tuners.trial import layers, masking
    from trials import masking as checkout

    for name in checkout.__all__:
        installed = layers if hasattr(layers, name) else masking
        assert getattr(checkout, name) is getattr(installed, name), name
