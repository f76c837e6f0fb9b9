"""The proxy-rank benchmark's statistics (benchmarks.proxy_rank), on made-up runs."""

from __future__ import annotations

import math

import pytest

from benchmarks import proxy_rank


def _data(proxy: list[float], tuned: list[float], again: list[float]) -> dict[str, object]:
    allocations = []
    for i, (p, t) in enumerate(zip(proxy, tuned, strict=True)):
        runs = {"0": {"proxy": p, "accuracy": t, "seconds": 2.0}}
        if i < len(again):
            runs["1"] = {"accuracy": again[i], "seconds": 2.0}
        allocations.append({"kind": "random", "sparsities": {}, "runs": runs})
    return {"model": "m", "target": 0.9, "allocations": allocations,
            "presearch": {"seconds": 5.0}}


def test_tau_noise_floor_and_presearch_cost() -> None:
    row = proxy_rank.summarise(_data([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.8, 0.7],
                                     [0.52, 0.58, 0.81, 0.72]))
    assert row["tau"] == pytest.approx(4 / 6)  # 5 concordant pairs, 1 discordant
    assert row["tau_between_seeds"] == pytest.approx(1.0)
    # the repeated allocations in the better half (both seeds >= the median 0.65): the last two
    differences = [-0.01, -0.02]
    mean = sum(differences) / 2
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences))
    assert row["noise_floor"] == pytest.approx(sd / math.sqrt(2)) and row["noise_pairs"] == 2
    assert row["presearch_in_trials"] == pytest.approx(2.5)
    assert row["best_proxy_pick"] == 0.7 and row["best_tuned"] == 0.8
    assert row["tau_top_half"] == pytest.approx(-1.0)  # 0.8 and 0.7: the proxy has them reversed
    assert "| m | 0.9 | 4 | 0.67 | -1.00 | 1.00 (n=4) | 0.50 (n=2) |" in proxy_rank.table([row])


def test_random_allocations_meet_the_target_inside_the_bounds() -> None:
    from nni_prune_tuners.profile import load_profile

    profile = load_profile(proxy_rank.SPACES / "mlp_digits.profile.json")
    for allocation in proxy_rank.random_allocations("mlp_digits", 0.9, 5, seed=0):
        weights = {name: profile.layers[name].params for name in allocation}
        reached = sum(weights[n] * s for n, s in allocation.items()) / sum(weights.values())
        assert reached == pytest.approx(0.9, abs=1e-9)
        assert all(0.05 <= s <= 0.98 for s in allocation.values())
