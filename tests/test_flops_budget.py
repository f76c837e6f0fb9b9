"""The FLOPs budget of a ``channel`` branch (nni_prune_tuners.flops, Contract 10): the formula,
its monotonicity, the exact rescale on the zoo's profiles, infeasible targets, the rounding bound,
and the allocation model's linearised knapsack."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from nni_prune_tuners import allocation, flops, sparsity
from nni_prune_tuners.budget import LinearBudget
from nni_prune_tuners.profile import ModelProfile, parse_profile


def _layer(name: str, flops_: int, in_group: str | None, out_group: str | None) -> dict[str, Any]:
    return {"name": name, "params": 10, "flops": flops_, "in_group": in_group,
            "out_group": out_group}


def _synthetic_budget_profile() -> tuple[ModelProfile, flops.ProductTerms]:
    """A residual chain: ``stem`` is the stream (stem, conv2 and the shortcut add), ``conv1`` a
    block's inner width, ``mix`` a layer that reads and writes its own group (product rule), the
    classifier dense on its outputs."""
    raw: dict[str, Any] = {
        "format": 1, "model": "synthetic",
        "layers": [
            _layer("stem", 1000, None, "stem"),
            _layer("conv1", 4000, "stem", "conv1"),
            _layer("conv2", 4000, "conv1", "stem"),
            _layer("mix", 500, "mix", "mix"),
            _layer("head", 100, "stem", None),
        ],
        "channel_groups": [
            {"name": "stem", "layers": ["stem", "conv2"], "channels": 16},
            {"name": "conv1", "layers": ["conv1"], "channels": 32},
            {"name": "mix", "layers": ["mix"], "channels": 8},
        ],
    }
    profile = parse_profile(raw)
    return profile, flops.flops_terms(profile, ["stem", "conv1", "mix"])


def test_flops_removed_is_the_profiles_formula() -> None:
    profile, budget = _synthetic_budget_profile()
    dense = profile.channel_flops({})
    assert budget.total == dense == 9600
    rng = np.random.RandomState(0)
    for _ in range(20):
        s = rng.uniform(0.0, 0.85, 3)
        named = dict(zip(budget.groups, s.tolist(), strict=True))
        assert budget.removed(s) == pytest.approx(1 - profile.channel_flops(named) / dense, abs=1e-15)
        assert budget.rounded_removed(s) == pytest.approx(
            1 - profile.channel_flops(named, rounded=True) / dense, abs=1e-15)
    # by hand: stem at 0.5 halves stem, conv1's input, conv2's output and the head's input
    assert budget.removed([0.5, 0.0, 0.0]) == pytest.approx(0.5 * 9100 / 9600)
    # a layer between two groups keeps the product: conv1 at (0.5, 0.5) keeps a quarter
    assert budget.removed([0.5, 0.5, 0.0]) == pytest.approx(
        1 - (500 + 1000 + 1000 + 500 + 50) / 9600)


def test_a_group_searched_alone_leaves_the_others_dense() -> None:
    profile, _ = _synthetic_budget_profile()
    budget = flops.flops_terms(profile, ["conv1"])
    assert budget.removed([0.25]) == pytest.approx(0.25 * 8000 / 9600)
    with pytest.raises(ValueError, match=r"'nope' is not a channel group of the profile; known "
                                         r"groups: \['stem', 'conv1', 'mix'\]"):
        flops.flops_terms(profile, ["nope"])


def test_gradient_is_the_derivative_and_non_negative() -> None:
    _, budget = _synthetic_budget_profile()
    rng = np.random.RandomState(1)
    for _ in range(20):
        s = rng.uniform(0.0, 0.9, 3)
        grad = budget.gradient(s)
        assert np.all(grad >= 0)
        for g in range(3):
            step = np.zeros(3)
            step[g] = 1e-6
            numeric = (budget.removed(s + step) - budget.removed(s - step)) / 2e-6
            assert grad[g] == pytest.approx(numeric, rel=1e-6)  # incl. mix: in == out, 2 f keep


def test_flops_removed_is_monotone_in_the_common_factor() -> None:
    _, budget = _synthetic_budget_profile()
    lo, hi = np.array([0.0, 0.1, 0.0]), np.array([15 / 16, 0.9, 7 / 8])
    rng = np.random.RandomState(2)
    for _ in range(20):
        raw = rng.uniform(0.01, 1.0, 3)
        factors = np.linspace(0.0, float(np.max(hi / raw)) * 1.2, 400)
        removed = [budget.removed(np.clip(c * raw, lo, hi)) for c in factors]
        assert np.all(np.diff(removed) >= -1e-15)
        assert removed[0] == pytest.approx(budget.removed(lo))
        assert removed[-1] == pytest.approx(budget.removed(hi))


def test_rescale_meets_the_target_inside_the_bounds_and_keeps_ratios() -> None:
    _, budget = _synthetic_budget_profile()
    lo, hi = np.array([0.0, 0.1, 0.0]), np.array([15 / 16, 0.9, 7 / 8])
    rng = np.random.RandomState(3)
    for target in (0.2, 0.5, 0.8):
        for _ in range(20):
            raw = rng.uniform(0.01, 1.0, 3)
            s = flops.rescale_to_flops(raw, lo, hi, budget, target)
            assert abs(budget.removed(s) - target) <= 1e-9
            assert np.all(lo <= s) and np.all(s <= hi)
            free = (s > lo) & (s < hi)
            if free.sum() >= 2:
                ratios = s[free] / raw[free]
                assert np.allclose(ratios, ratios[0], rtol=1e-9)


def test_infeasible_targets_name_the_branch_and_the_reachable_range() -> None:
    _, budget = _synthetic_budget_profile()
    lo, hi = np.array([0.1, 0.1, 0.1]), np.array([0.5, 0.5, 0.5])
    low, high = flops.achievable_range(lo, hi, budget)
    assert 0 < low < high < 1
    for target in (high + 0.01, low - 0.01):
        with pytest.raises(ValueError) as error:
            flops.check_feasible(target, lo, hi, budget, where="branch 'prune_method=channel'")
        message = str(error.value)
        assert "\n" not in message
        assert "branch 'prune_method=channel'" in message and "FLOPs" in message
        assert f"[{low:.6f}, {high:.6f}]" in message
    flops.check_feasible((low + high) / 2, lo, hi, budget, where="x")
    with pytest.raises(ValueError, match="scaling cannot bring the FLOPs removed"):
        flops.rescale_to_flops(np.ones(3), lo, hi, budget, high + 0.01)


def test_rounding_to_whole_channels_stays_within_the_bound() -> None:
    _, budget = _synthetic_budget_profile()
    bound = flops.rounding_bound(budget)
    assert 0 < bound < 0.1
    rng = np.random.RandomState(4)
    worst = max(abs(budget.rounded_removed(s) - budget.removed(s))
                for s in rng.uniform(0.0, [15 / 16, 31 / 32, 7 / 8], (500, 3)))
    assert worst <= bound


def _channel_block(budget: flops.ProductTerms, lo: np.ndarray, hi: np.ndarray,
                   target: float) -> flops.ChannelBudget:
    return flops.ChannelBudget(budget, lo, hi, target)


def _zoo_budget(name: str) -> tuple[flops.ProductTerms, np.ndarray, np.ndarray]:
    import torch

    from nni_prune_tuners.trial.profile import profile_model
    from trials import models

    torch.manual_seed(0)
    profile = parse_profile(profile_model(models.ZOO[name]().eval(), name=name, channel=True))
    groups = list(profile.channel_groups.values())
    budget = flops.flops_terms(profile, [g.name for g in groups])
    hi = np.array([(g.channels - 1) / g.channels for g in groups])
    return budget, np.zeros(len(groups)), hi


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenet_digits"])
def test_rescale_meets_the_target_on_the_zoo(name: str) -> None:
    budget, lo, hi = _zoo_budget(name)
    rng = np.random.RandomState(5)
    for target in (0.3, 0.5, 0.7):
        uniform = flops.uniform_ratio(lo, hi, budget, target)
        assert abs(budget.removed(uniform) - target) <= 1e-9 and np.ptp(uniform) < 1e-12
        for _ in range(30):
            s = flops.rescale_to_flops(rng.uniform(0.01, 1.0, len(lo)), lo, hi, budget, target)
            assert abs(budget.removed(s) - target) <= 1e-9
            assert np.all(lo <= s) and np.all(s <= hi)
        # the allocation model's proposals from the prior meet it too
        block = _channel_block(budget, lo, hi, target)
        for _ in range(5):
            s = allocation.propose(block, (), None, rng)
            assert abs(budget.removed(s) - target) <= 1e-9


def _objective(s: np.ndarray, sensitivity: np.ndarray) -> float:
    return float(-np.dot(sensitivity, allocation.log_density(s) ** 2))


def test_linearised_knapsack_meets_the_target_and_beats_uniform() -> None:
    """One group (the stream, read by every layer) much more sensitive: the knapsack spares it."""
    _, budget = _synthetic_budget_profile()
    lo, hi = np.zeros(3), np.array([15 / 16, 31 / 32, 7 / 8])
    sensitivity = np.array([20.0, 1.0, 1.0])
    for target in (0.3, 0.5, 0.7):
        block = _channel_block(budget, lo, hi, target)
        grids = allocation.layer_grids(lo, hi)
        values = -sensitivity[:, None] * allocation.log_density(grids) ** 2
        solved = block.rescale(block.solve(values, grids))
        uniform = flops.uniform_ratio(lo, hi, budget, target)
        assert abs(budget.removed(solved) - target) <= 1e-9
        assert _objective(solved, sensitivity) > _objective(uniform, sensitivity)
        assert solved[0] < uniform[0]  # the sensitive group is spared
        # near the best of many random allocations at the same target (the grid is 48 points
        # in log-density, so not on it): within a tenth of what it gains over uniform
        rng = np.random.RandomState(6)
        randoms = [block.rescale(rng.uniform(0.01, 1.0, 3)) for _ in range(500)]
        best = max(_objective(r, sensitivity) for r in randoms)
        gain = best - _objective(uniform, sensitivity)
        assert _objective(solved, sensitivity) >= best - 0.1 * gain


def test_linearised_knapsack_stops_when_the_allocation_stops_changing() -> None:
    _, budget = _synthetic_budget_profile()
    lo, hi = np.zeros(3), np.array([15 / 16, 31 / 32, 7 / 8])
    grids = allocation.layer_grids(lo, hi)
    values = -np.array([20.0, 1.0, 1.0])[:, None] * allocation.log_density(grids) ** 2
    start = flops.uniform_ratio(lo, hi, budget, 0.5)
    few = allocation.solve_product_budget(values, grids, budget, 0.5, start, rounds=5)
    more = allocation.solve_product_budget(values, grids, budget, 0.5, start, rounds=50)
    np.testing.assert_array_equal(few, more)  # converged within 5 rounds
    # each entry is a grid point of its group
    assert all(np.any(np.isclose(grids[i], few[i], rtol=0, atol=1e-15)) for i in range(3))


def test_linear_blocks_solve_exactly_as_before() -> None:
    """A linear budget solves with solve_budget itself."""
    rng = np.random.RandomState(7)
    lo, hi = np.full(4, 0.1), np.full(4, 0.95)
    weights = np.array([100.0, 2000.0, 500.0, 50.0])
    block = LinearBudget(weights, lo, hi, float(weights.sum()), 0.8)
    grids = allocation.layer_grids(lo, hi)
    values = rng.standard_normal((4, allocation.GRID)).cumsum(axis=1)
    np.testing.assert_array_equal(
        block.solve(values, grids),
        allocation.solve_budget(values, grids, weights, 0.8 * weights.sum()))
    np.testing.assert_array_equal(
        block.rescale(np.full(4, 0.5)),
        sparsity.rescale_to_target(np.full(4, 0.5), lo, hi, weights, 0.8,
                                   total=float(weights.sum())))
