"""The prune-your-own-model API (Contract 7): counts, schedule, frozen masks, bad input, NNI."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from nni_prune_tuners.trial import AgpSchedule, Pruner, agp_sparsity, level_mask, num_pruned
from nni_prune_tuners.trial.pruner import parse_params

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


class Net(nn.Module):
    """Dotted layer names, a layer left unpruned, BatchNorm (not prunable)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


SPARSITIES = {"features.0": 0.6, "features.3": 0.93, "head": 0.5}
PARAMS = {"prune_method": {"_name": "level", **{f"{n}_sparsity": s for n, s in SPARSITIES.items()}},
          "lr": 0.05}


def _model(device: str = "cpu", seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().to(device)


def _batch(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 1, 8, 8, generator=g).to(device), (torch.arange(32) % 10).to(device)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, device: str) -> None:
    x, y = _batch(device)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    return dict(model.named_modules())[name].weight


@pytest.mark.parametrize("device", DEVICES)
def test_level_prunes_exact_counts_at_epoch_zero(device: str) -> None:
    model = _model(device)
    dense = {n: level_mask(_weight(model, n).detach().clone(), s) for n, s in SPARSITIES.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = Pruner(model, PARAMS, epochs=2, optimizer=optimizer)
    assert pruner.method == "level" and pruner.targets == SPARSITIES
    pruner.on_epoch_start(0)
    for name, sparsity in SPARSITIES.items():
        weight = _weight(model, name)
        mask = pruner.masks[name]
        assert mask.device == weight.device and mask.dtype == weight.dtype
        assert torch.equal(mask, dense[name])  # the magnitudes of the weights it was given
        assert int((weight == 0).sum()) == num_pruned(weight.numel(), sparsity)
    sizes = {n: _weight(model, n).numel() for n in SPARSITIES}
    expected = sum(num_pruned(sizes[n], s) for n, s in SPARSITIES.items()) / sum(sizes.values())
    assert pruner.sparsity() == pytest.approx(expected, abs=1e-12)
    assert pruner.pruned
    masks = pruner.masks
    _train(model, optimizer, 5, device)
    pruner.on_epoch_start(1)  # Level masks are fixed: a later epoch changes nothing
    for name in SPARSITIES:
        assert torch.equal(pruner.masks[name], masks[name])
    assert pruner.layer_sparsity() == {
        n: num_pruned(sizes[n], s) / sizes[n] for n, s in SPARSITIES.items()}


def test_agp_follows_the_cubic_schedule_of_absolute_sparsity() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    schedule = AgpSchedule(initial_sparsity=0.1, start_epoch=1, end_epoch=5, frequency=2)
    params = {"prune_method": {**PARAMS["prune_method"], "_name": "agp"}}
    pruner = Pruner(model, params, epochs=7, optimizer=optimizer, agp=schedule)
    previous: dict[str, torch.Tensor] = {}
    for epoch in range(7):
        pruner.on_epoch_start(epoch)
        for name, final in SPARSITIES.items():
            weight = _weight(model, name)
            # absolute: round(s(t) * n) of the layer, never a fraction of what is left
            assert int((weight == 0).sum()) == num_pruned(weight.numel(),
                                                          agp_sparsity(epoch, final, schedule))
            if name in previous:
                assert torch.all(pruner.masks[name] <= previous[name])  # nested, never regrows
            previous[name] = pruner.masks[name].clone()
        assert pruner.intermediate(0.5, epoch)["pruned"] == (epoch >= 5)
        _train(model, optimizer, 3, "cpu")
    # hand check of one value: at epoch 3 the latest step is 3, progress 1/2
    assert agp_sparsity(3, 0.93, schedule) == pytest.approx(0.93 + (0.1 - 0.93) * 0.125)


def test_agp_default_schedule_ends_before_the_last_epoch() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    params = {"prune_method": {"_name": "agp", "head_sparsity": 0.8}}
    assert Pruner(model, params, epochs=8, optimizer=optimizer).schedule == AgpSchedule()
    short = Pruner(model, params, epochs=2, optimizer=optimizer)
    assert short.schedule.end_epoch == 1
    short.on_epoch_start(0)
    assert short.layer_sparsity()["head"] == 0.0  # s_i = 0 at the first step
    short.on_epoch_start(1)
    assert short.layer_sparsity()["head"] == 0.8


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: torch.optim.Adam(p, lr=0.01),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=1e-2),
], ids=["sgd-momentum-wd", "sgd-nesterov", "adam", "adamw"])
@pytest.mark.parametrize("method", ["level", "agp"])
def test_pruned_weights_and_their_optimizer_state_stay_zero(
    device: str, make_optimizer: Callable[[Any], torch.optim.Optimizer], method: str
) -> None:
    model = _model(device)
    optimizer = make_optimizer(model.parameters())
    _train(model, optimizer, 3, device)  # optimizer state is non-zero everywhere before pruning
    params = {"prune_method": {**PARAMS["prune_method"], "_name": method}}
    pruner = Pruner(model, params, epochs=5, optimizer=optimizer)
    for epoch in range(5):
        pruner.on_epoch_start(epoch)
        for name, mask in pruner.masks.items():  # state zeroed as soon as a mask prunes
            for value in optimizer.state[_weight(model, name)].values():
                if value.shape == mask.shape:
                    assert torch.all(value[mask == 0] == 0), name
        _train(model, optimizer, 20, device)
        for name, mask in pruner.masks.items():
            weight = _weight(model, name)
            assert torch.all(weight[mask == 0] == 0), name
            assert torch.all(weight[mask == 1] != 0), name  # the survivors did train
            state = optimizer.state[weight]
            moments = [v for k, v in state.items() if k != "step"]
            assert moments and all(torch.all(v[mask == 0] == 0) for v in moments), name
    assert pruner.layer_sparsity() == pytest.approx(
        {n: num_pruned(_weight(model, n).numel(), s) / _weight(model, n).numel()
         for n, s in SPARSITIES.items()}, abs=0)
    assert int((_weight(model, "features.0").grad == 0).sum()) >= num_pruned(72, 0.6)


def test_step_hooks_do_no_host_synchronisation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hooks that run every step use tensor ops only: no item/tolist/bool/int/cpu."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = Pruner(model, PARAMS, epochs=1, optimizer=optimizer)
    pruner.on_epoch_start(0)
    x, y = _batch()
    loss = nn.functional.cross_entropy(model(x), y)

    def forbidden(*_: Any, **__: Any) -> Any:
        raise AssertionError("host synchronisation in a step hook")

    with monkeypatch.context() as patch:
        for attr in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"):
            patch.setattr(torch.Tensor, attr, forbidden)
        loss.backward()  # runs the gradient hooks
        for hook in optimizer._optimizer_step_post_hooks.values():
            hook(optimizer, (), {})
    assert all(torch.all(_weight(model, n).grad[m == 0] == 0) for n, m in pruner.masks.items())


def test_flat_params_with_method_and_other_keys_ignored() -> None:
    flat = {"features.3_sparsity": 0.5, "lr": 0.1, "batch_size": 32,
            "optim": {"_name": "sgd", "momentum": 0.9}}
    assert parse_params(flat, method="level") == ("level", {"features.3": 0.5})
    nested = {"prune_method": {"_name": "agp", "head_sparsity": 0.3, "warmup": 2}, "lr": 0.1}
    assert parse_params(nested) == ("agp", {"head": 0.3})
    assert parse_params(nested, method="agp") == ("agp", {"head": 0.3})
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = Pruner(model, flat, epochs=1, optimizer=optimizer, method="level")
    pruner.on_epoch_start(0)
    assert pruner.layer_sparsity() == {"features.3": 0.5}
    assert int((_weight(model, "head") == 0).sum()) == 0  # not named: stays dense


def _bad_cases() -> list[tuple[dict[str, Any], str]]:
    level = PARAMS["prune_method"]
    return [
        ({"params": {"prune_method": {**level, "conv9_sparsity": 0.5}}}, "conv9"),
        ({"params": {"prune_method": {**level, "features.1_sparsity": 0.5}}}, "features.1"),
        ({"params": {"prune_method": {**level, "head_sparsity": 1.0}}}, "head_sparsity"),
        ({"params": {"prune_method": {**level, "head_sparsity": -0.1}}}, "head_sparsity"),
        ({"params": {"prune_method": {**level, "head_sparsity": math.nan}}}, "head_sparsity"),
        ({"params": {"prune_method": {**level, "head_sparsity": "0.5"}}}, "head_sparsity"),
        ({"params": {"prune_method": {**level, "_name": "slim"}}}, "slim"),
        ({"params": {"head_sparsity": 0.5}}, "method"),
        ({"params": {"head_sparsity": 0.5}, "method": "taylor"}, "taylor"),
        ({"method": "agp"}, "disagrees"),
        ({"params": {"prune_method": {"_name": "level"}}}, "no layer"),
        ({"params": [0.5]}, "mapping"),
        ({"optimizer": "other-model"}, "optimizer"),
        ({"optimizer": "head-only"}, "features.0, features.3"),
        ({"optimizer": None}, "optimizer"),
        ({"epochs": 0}, "epochs"),
        ({"params": {"prune_method": {**level, "_name": "agp"}}, "epochs": 3,
          "agp": AgpSchedule(end_epoch=3)}, "end_epoch"),
    ]


@pytest.mark.parametrize(("case", "message"), _bad_cases())
def test_bad_input_raises_before_any_change(case: dict[str, Any], message: str) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, optimizer, 1, "cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state_before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    kwargs: dict[str, Any] = {"epochs": 2, "optimizer": optimizer, **case}
    if kwargs["optimizer"] == "other-model":
        kwargs["optimizer"] = torch.optim.SGD(_model(seed=1).parameters(), lr=0.1)
    elif kwargs["optimizer"] == "head-only":
        kwargs["optimizer"] = torch.optim.SGD(model.head.parameters(), lr=0.1)
    params = kwargs.pop("params", PARAMS)
    with pytest.raises(ValueError, match=message):
        Pruner(model, params, **kwargs)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(hasattr(m, "weight_mask") for m in model.modules())
    assert not optimizer._optimizer_step_post_hooks
    assert all(p._backward_hooks is None or not p._backward_hooks for p in model.parameters())
    for p, s in optimizer.state.items():
        assert all(torch.equal(v, state_before[id(p)][k]) for k, v in s.items())


def test_bad_epoch_is_rejected() -> None:
    model = _model()
    pruner = Pruner(model, PARAMS, epochs=2, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    for bad in (-1, 2, 1.0, True):
        with pytest.raises(ValueError, match="epoch"):
            pruner.on_epoch_start(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="epoch"):
            pruner.intermediate(0.5, bad)  # type: ignore[arg-type]


def test_metrics_follow_contract_5() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = Pruner(model, PARAMS, epochs=2, optimizer=optimizer)
    pruner.on_epoch_start(0)
    inter = pruner.intermediate(torch.tensor(0.75), 0)
    assert inter == {"default": 0.75, "epoch": 0, "sparsity": pruner.sparsity(), "pruned": True}
    assert all(type(v) is t for v, t in zip(inter.values(), (float, int, float, bool), strict=True))
    assert pruner.final(0.8) == {"default": 0.8, "sparsity": pruner.sparsity(), "method": "level"}
    assert pruner.sparsity() == pytest.approx((43 + 1071 + 1280) / (72 + 1152 + 2560), abs=1e-12)


def test_config_list_is_accepted_by_nni_level_pruner() -> None:
    """NNI 3.0's LevelPruner takes the config_list and, where floor == round, makes our masks."""
    pytest.importorskip("nni.compression.pruning")
    from nni.compression.pruning import LevelPruner

    model = _model(seed=3)
    reference = _model(seed=3)
    for name, s in SPARSITIES.items():
        n = _weight(model, name).numel()
        assert math.floor(n * s) == round(n * s), name
    pruner = Pruner(model, PARAMS, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    pruner.on_epoch_start(0)
    config = pruner.config_list()
    assert config == [{"op_names": [n], "target_names": ["weight"], "sparse_ratio": s}
                      for n, s in SPARSITIES.items()]
    _, nni_masks = LevelPruner(reference, config).compress()
    for name in SPARSITIES:
        torch.testing.assert_close(nni_masks[name]["weight"].float(), pruner.masks[name], msg=name)


def test_remove_keeps_the_zeros_and_drops_every_hook() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = Pruner(model, PARAMS, epochs=1, optimizer=optimizer)
    pruner.on_epoch_start(0)
    _train(model, optimizer, 3, "cpu")
    masks = pruner.masks
    pruner.remove()
    pruner.remove()  # idempotent
    assert not any(hasattr(m, "weight_mask") for m in model.modules())
    assert not optimizer._optimizer_step_post_hooks
    assert set(model.state_dict()) == set(_model().state_dict())  # nothing left in the state
    for name, mask in masks.items():
        assert torch.all(_weight(model, name)[mask == 0] == 0)
    x, y = _batch()
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert any(torch.any(_weight(model, n).grad[m == 0] != 0) for n, m in masks.items())
    with pytest.raises(RuntimeError, match="remove"):
        pruner.on_epoch_start(0)


def test_package_import_leaves_the_trial_subpackage_and_torch_out() -> None:
    code = ("import sys, nni_prune_tuners; "
            "assert 'nni_prune_tuners.trial' not in sys.modules; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
