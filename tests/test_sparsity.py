"""The global-sparsity maths of Contract 3, against hand-computed cases and random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nni_prune_tuners import sparsity


def test_global_sparsity_is_weighted_mean() -> None:
    assert sparsity.global_sparsity([0.5, 1.0], [100, 300]) == pytest.approx(0.875)
    # model scope: an unsearched dense layer of 400 weights halves it
    assert sparsity.global_sparsity([0.5, 1.0], [100, 300], total=800) == pytest.approx(0.4375)


def test_rescale_without_clipping_scales_all_layers_by_one_factor() -> None:
    values = sparsity.rescale_to_target([0.2, 0.4], [0.0, 0.0], [0.99, 0.99], [100, 100], 0.6)
    # 100*(0.2c) + 100*(0.4c) = 120 -> c = 2
    np.testing.assert_allclose(values, [0.4, 0.8])


def test_rescale_clips_at_upper_bound_and_redistributes() -> None:
    # raw ratio 1:4, weights 300:100, target 0.5 -> layer 2 saturates at 0.9 before the target
    values = sparsity.rescale_to_target([0.1, 0.4], [0.0, 0.0], [0.9, 0.9], [300, 100], 0.5)
    # 300*s1 + 100*0.9 = 200 -> s1 = 110/300
    np.testing.assert_allclose(values, [110 / 300, 0.9])


def test_rescale_respects_lower_bound() -> None:
    values = sparsity.rescale_to_target([0.01, 0.5], [0.2, 0.0], [0.9, 0.9], [100, 100], 0.3)
    # layer 1 stays at its lower bound 0.2 for small c; 20 + 100*(0.5c) = 60 -> c = 0.8
    np.testing.assert_allclose(values, [0.2, 0.4])


def test_rescale_rejects_unreachable_target() -> None:
    with pytest.raises(ValueError, match="reachable"):
        sparsity.rescale_to_target([0.5, 0.5], [0.0, 0.0], [0.5, 0.5], [1, 1], 0.8)


def test_feasibility_names_where_and_range() -> None:
    with pytest.raises(ValueError, match=r"branch 'agp'.*\[0\.100000, 0\.900000\]"):
        sparsity.check_feasible(0.95, [0.1, 0.1], [0.9, 0.9], [1, 1], where="branch 'agp'")
    sparsity.check_feasible(0.9, [0.1, 0.1], [0.9, 0.9], [1, 1])


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.floats(1e-3, 1.0), st.floats(0.0, 0.5), st.floats(0.5, 0.99), st.integers(1, 10**7)
        ),
        min_size=1,
        max_size=12,
    ),
    fraction=st.floats(0.0, 1.0),
)
def test_rescale_hits_any_feasible_target(
    data: list[tuple[float, float, float, int]], fraction: float
) -> None:
    raw, lo, hi, weights = (np.array(column, dtype=float) for column in zip(*data, strict=True))
    low, high = sparsity.achievable_range(lo, hi, weights)
    target = low + fraction * (high - low)
    values = sparsity.rescale_to_target(raw, lo, hi, weights, target)
    assert sparsity.global_sparsity(values, weights) == pytest.approx(target, abs=1e-9)
    assert np.all(values >= lo) and np.all(values <= hi)
    # unclipped layers keep the raw ratios
    free = (values > lo + 1e-12) & (values < hi - 1e-12)
    if free.sum() >= 2:
        ratios = values[free] / raw[free]
        np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)


def test_quantile_cdf_interpolates_between_percentiles() -> None:
    quantiles = np.linspace(0.0, 1.0, 101)  # uniform scores on [0, 1]
    assert sparsity.quantile_cdf(0.25, quantiles) == pytest.approx(0.25)
    assert sparsity.quantile_cdf(-1.0, quantiles) == 0.0
    assert sparsity.quantile_cdf(2.0, quantiles) == 1.0


def test_threshold_allocation_prunes_small_scores_first() -> None:
    # layer A scores uniform on [0, 1], layer B uniform on [1, 2]; same size
    a = np.linspace(0.0, 1.0, 101)
    b = np.linspace(1.0, 2.0, 101)
    np.testing.assert_allclose(sparsity.threshold_allocation([a, b], [100, 100], 0.25), [0.5, 0.0],
                               atol=1e-9)
    np.testing.assert_allclose(sparsity.threshold_allocation([a, b], [100, 100], 0.75), [1.0, 0.5],
                               atol=1e-9)


def test_erk_allocation_matches_hand_computation() -> None:
    shapes = [(10, 10), (100, 100)]
    # scores 20/100 and 200/10000; density_i = eps * score_i; keep 0.5 * 10100 weights
    eps = 0.5 * 10100 / (0.2 * 100 + 0.02 * 10000)
    assert eps * 0.2 > 1.0  # the small layer saturates and is kept dense
    expected_big = 1.0 - (0.5 * 10100 - 100) / 10000
    np.testing.assert_allclose(sparsity.erk_allocation(shapes, 0.5), [0.0, expected_big])
    values = sparsity.erk_allocation(shapes, 0.5)
    assert sparsity.global_sparsity(values, [100, 10000]) == pytest.approx(0.5)


def test_same_allocation_needs_the_same_layers_each_within_the_tolerance() -> None:
    from nni_prune_tuners.sparsity import same_allocation

    a = {"fc1": 0.5, "fc2": 0.9}
    assert same_allocation(a, {"fc2": 0.9 + 5e-7, "fc1": 0.5}, tolerance=1e-6)
    assert not same_allocation(a, {"fc1": 0.5, "fc2": 0.9 + 2e-6}, tolerance=1e-6)
    assert not same_allocation(a, {"fc1": 0.5}, tolerance=1e-6)
    assert not same_allocation(a, {**a, "fc3": 0.1}, tolerance=1e-6)
