"""Channel widths a kernel likes (``channel_multiple``, issue #41 point 1): every group keeps a
multiple of ``m`` channels (or its full width), the budget solve and the rescale work on those
widths, the FLOPs removed land within the stated bound of the target, and ``m = 1`` is the
continuous budget of before."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nni_prune_tuners import flops, widths
from nni_prune_tuners.allocation.model import layer_grids
from nni_prune_tuners.profile import parse_profile
from nni_prune_tuners.trial import count_flops, prune_channels
from nni_prune_tuners.tuner import PruneTPETuner
from tests.test_tuner_channel import _channel_sparsities, _space, _suggest, _write_profile
from trials import models


def test_allowed_widths_are_multiples_or_the_full_width_inside_the_bounds() -> None:
    assert widths.allowed_widths(20, 8, 0.0, 0.95).tolist() == [8, 16, 20]
    assert widths.allowed_widths(32, 8, 0.0, 0.9).tolist() == [8, 16, 24, 32]
    assert widths.allowed_widths(32, 8, 0.3, 0.9).tolist() == [8, 16]
    assert widths.allowed_widths(6, 8, 0.0, 0.8).tolist() == [6]  # narrower than m: dense
    assert widths.allowed_widths(16, 1, 0.0, 0.9).tolist() == list(range(2, 17))
    with pytest.raises(ValueError, match=r"no multiple of channel_multiple=8"):
        widths.allowed_widths(16, 8, 0.6, 0.9)


def _budget(name: str, multiple: int, target: float, tmp: Path) -> tuple[flops.WidthBudget,
                                                                        dict[str, Any]]:
    _, raw = _write_profile(tmp, name)
    profile = parse_profile(raw)
    terms = flops.flops_terms(profile, list(profile.channel_groups))
    lo = np.zeros(len(terms.groups))
    hi = np.minimum(0.9, (terms.channels - 1) / terms.channels)
    allowed = tuple(widths.allowed_widths(int(n), multiple, 0.0, float(h))
                    for n, h in zip(terms.channels, hi, strict=True))
    return flops.WidthBudget(terms, lo, hi, target, allowed), raw


def _kept(budget: flops.WidthBudget, s: np.ndarray) -> np.ndarray:
    return (1.0 - s) * budget.terms.channels


@pytest.mark.parametrize(("name", "multiple"), [
    ("resnet_digits", 4), ("resnet_digits", 8), ("mobilenet_digits", 4),
    ("mobilenet_digits", 8), ("mobilenet_digits", 16)])
def test_rescale_keeps_allowed_widths_within_the_bound(name: str, multiple: int,
                                                       tmp_path: Path) -> None:
    budget, _ = _budget(name, multiple, 0.5, tmp_path)
    assert isinstance(budget, flops.WidthBudget)
    rng = np.random.RandomState(0)
    misses = []
    for _ in range(40):
        s = budget.rescale(rng.uniform(0.05, 0.9, len(budget.lo)))
        kept = _kept(budget, s)
        assert np.allclose(kept, np.rint(kept), atol=1e-9)
        for width, allowed in zip(np.rint(kept).astype(int), budget.widths, strict=True):
            assert width in allowed.tolist()
        assert np.all(s >= budget.lo) and np.all(s <= budget.hi)
        misses.append(abs(budget.terms.removed(s) - 0.5))
        # exact widths: the trial's whole-channel rounding changes nothing
        assert budget.terms.rounded_removed(s) == pytest.approx(budget.terms.removed(s), abs=1e-12)
    assert max(misses) <= budget.bound
    assert budget.bound < 0.5  # a bound that says something


def test_solve_chooses_among_allowed_widths(tmp_path: Path) -> None:
    budget, _ = _budget("mobilenet_digits", 8, 0.5, tmp_path)
    assert isinstance(budget, flops.WidthBudget)
    grids = layer_grids(budget.lo, budget.hi)
    values = -grids * np.linspace(1.0, 2.0, len(grids))[:, None]  # later groups cost more
    solved = budget.solve(values, grids)
    for width, allowed in zip(np.rint(_kept(budget, solved)).astype(int), budget.widths,
                              strict=True):
        assert width in allowed.tolist()
    final = budget.rescale(solved)
    assert abs(budget.terms.removed(final) - 0.5) <= budget.bound


def test_multiple_one_is_the_continuous_budget(tmp_path: Path) -> None:
    """``channel_multiple: 1`` proposes what PruneTPE proposed before: continuous sparsities
    that meet the FLOPs target exactly (the trial rounds to whole channels)."""
    path, raw = _write_profile(tmp_path, "resnet_digits")
    tuner = PruneTPETuner(target_sparsity=0.5, profile=str(path), seed=0, channel_multiple=1)
    tuner.update_search_space(_space(raw, ["channel"]))
    budget = tuner_budget(tuner)
    assert type(budget) is flops.ChannelBudget
    assert budget.bound == flops.rounding_bound(budget.terms)
    for params in _suggest(tuner, 3, lambda p: 0.5):
        s = _channel_sparsities(params)
        assert budget.terms.removed([s[g] for g in budget.terms.groups]) == pytest.approx(0.5,
                                                                                        abs=1e-9)


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenet_digits"])
def test_tuner_suggestions_prune_for_real_at_allowed_widths(name: str, tmp_path: Path) -> None:
    path, raw = _write_profile(tmp_path, name)
    profile = parse_profile(raw)
    tuner = PruneTPETuner(target_sparsity=0.5, profile=str(path), seed=1, channel_multiple=8)
    tuner.update_search_space(_space(raw, ["channel"]))
    budget = tuner_budget(tuner)
    torch.manual_seed(0)
    model = models.ZOO[name]().eval()
    x = torch.zeros(1, *model.input_shape)
    dense = sum(count_flops(model, x).values())
    for params in _suggest(tuner, 4, lambda p: 0.5):
        s = _channel_sparsities(params)
        pruned = prune_channels(copy.deepcopy(model), s, x)
        for group, ratio in s.items():
            n = profile.channel_groups[group].channels
            kept = n - round(ratio * n)
            assert kept % 8 == 0 or kept == n, (group, kept, n)
        measured = 1.0 - sum(count_flops(pruned, x).values()) / dense
        assert abs(measured - 0.5) <= budget.bound


def tuner_budget(tuner: PruneTPETuner) -> flops.ChannelBudget:
    budget = tuner.branches[0].budget
    assert isinstance(budget, flops.ChannelBudget)
    return budget


@pytest.mark.parametrize("value", [0, -8, True, 8.0, "8"])
def test_channel_multiple_is_validated_up_front(value: object) -> None:
    with pytest.raises(ValueError, match=rf"channel_multiple must be an integer >= 1, got {value!r}"):
        PruneTPETuner(channel_multiple=value)


def test_bounds_without_an_allowed_width_are_one_line(tmp_path: Path) -> None:
    path, raw = _write_profile(tmp_path, "mobilenet_digits")
    space = _space(raw, ["channel"])
    branch = space["prune_method"]["_value"][0]
    branch["stem_sparsity"] = {"_type": "uniform", "_value": [0.6, 0.9]}
    tuner = PruneTPETuner(target_sparsity=0.5, profile=str(path), seed=0, channel_multiple=16)
    with pytest.raises(ValueError, match=r"stem_sparsity.*no multiple of channel_multiple=16"):
        tuner.update_search_space(space)


def test_a_target_the_widths_cannot_reach_is_one_line(tmp_path: Path) -> None:
    """The ResNet's 16-channel groups keep all 16 at ``m = 16``: half the FLOPs are out of reach."""
    path, raw = _write_profile(tmp_path, "resnet_digits")
    tuner = PruneTPETuner(target_sparsity=0.5, profile=str(path), seed=0, channel_multiple=16)
    with pytest.raises(ValueError, match=r"target_sparsity=0.5 .* is infeasible for branch "
                                         r"'prune_method=channel' with channel_multiple=16"):
        tuner.update_search_space(_space(raw, ["channel"]))
