"""The pure parts of benchmarks/channel_latency.py: interleaved timing, the uniform ratio, the table."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.channel_latency import (
    bench_model,
    markdown,
    multiple_sparsities,
    onnx_markdown,
    operator_markdown,
    tuner_picks,
    uniform_sparsities,
)
from nni_prune_tuners.flops import flops_terms
from nni_prune_tuners.latency import interleaved_medians
from nni_prune_tuners.profile import parse_profile
from nni_prune_tuners.trial.profile import profile_model
from tests.nets import TwoConvNet
from trials import models


def test_runs_interleave_in_alternating_order_and_warmup_is_dropped() -> None:
    ticks = itertools.count()
    order: list[str] = []
    cost = {"dense": 10, "pruned": 4}

    def clock() -> float:
        return float(next(ticks))

    def run(name: str) -> Callable[[], object]:
        def call() -> None:
            order.append(name)
            for _ in range(cost[name] - 1):  # each tick of the clock is one unit of work
                next(ticks)
        return call

    medians, samples = interleaved_medians({"dense": run("dense"), "pruned": run("pruned")},
                                           repeats=3, warmup=1, clock=clock)
    assert order == ["dense", "pruned", "pruned", "dense", "dense", "pruned", "pruned", "dense"]
    assert len(samples) == 3
    assert medians == {"dense": 10.0, "pruned": 4.0}
    with pytest.raises(ValueError, match="repeats"):
        interleaved_medians({"dense": run("dense")}, repeats=0)


def test_uniform_sparsities_share_one_ratio_that_meets_the_flops_target() -> None:
    torch.manual_seed(0)
    profile = parse_profile(profile_model(TwoConvNet(), name="net", channel=True))
    sparsities = uniform_sparsities(profile, 0.5)
    assert list(sparsities) == ["features.0", "features.2"]
    assert len(set(sparsities.values())) == 1
    budget = flops_terms(profile, list(sparsities))
    assert budget.removed(list(sparsities.values())) == pytest.approx(0.5, abs=1e-9)


def test_markdown_has_one_line_per_row() -> None:
    row = {"model": "m", "target": 0.5, "flops_removed": 0.512, "ratio_uniform": 0.294,
           "params_dense": 82426, "params_pruned": 41299, "batch": 64, "dense_ms": 10.7,
           "pruned_ms": 5.65, "latency_ratio": 0.528, "ratio_min": 0.48, "ratio_max": 0.57,
           "ratio_of_fastest": 0.5, "widths": "whole channels"}
    table = markdown([row, {**row, "widths": "PruneTPE pick, seed 3", "ratio_uniform": None}])
    assert table.count("\n") == 3
    assert ("| m | 50% / 51.2% | whole channels | 0.294 | 82,426 / 41,299 | 64 | 10.700 | "
            "5.650 | **0.53** (0.48-0.57) | 0.50 |") in table
    assert "| PruneTPE pick, seed 3 | — |" in table


def _run(model: str, target: float, seed: int, accuracies: list[float]) -> dict[str, Any]:
    return {"objective": model, "target": target, "seed": seed,
            "trials": [{"accuracy": a, "layers": {"g": i / 10}} for i, a in enumerate(accuracies)]}


def test_each_runs_pick_is_its_first_best_validation_trial_in_seed_order() -> None:
    runs = [_run("m", 0.5, 1, [0.2, 0.9, 0.9]), _run("m", 0.5, 0, [0.7, 0.1]),
            _run("m", 0.7, 0, [0.5]), _run("other", 0.5, 0, [0.5])]
    assert tuner_picks(runs, "m", 0.5) == [("PruneTPE pick, seed 0", {"g": 0.0}),
                                           ("PruneTPE pick, seed 1", {"g": 0.1})]
    assert tuner_picks(runs, "m", 0.9) == []


def test_a_pick_is_timed_beside_the_uniform_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models.ZOO, "two_conv", TwoConvNet)
    rows = bench_model("two_conv", targets=[0.5], batches=[2], repeats=1, sample_seconds=1e-4,
                       picks={0.5: [("PruneTPE pick, seed 0",
                                     {"features.0": 0.75, "features.2": 0.0})]})
    assert [row["widths"] for row in rows] == ["whole channels", "PruneTPE pick, seed 0"]
    pick = rows[1]
    assert pick["ratio_uniform"] is None and pick["params_pruned"] < pick["params_dense"]
    assert 0 < pick["flops_removed"] < 1 and pick["pruned_ms"] > 0


def test_operator_times_find_the_convolutions_of_both_variants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(models.ZOO, "two_conv", TwoConvNet)
    (row,) = bench_model("two_conv", targets=[0.9], batches=[2], repeats=1,
                         sample_seconds=1e-3, operators=True)
    # times are the machine's: only that both variants' convolutions were found is asserted
    assert row["convolution_ratio"] > 0 and row["operator_ratio"] > 0
    assert "| two_conv |" in operator_markdown([row])
    assert operator_markdown([{k: v for k, v in row.items() if k != "operator_ratio"}]).count(
        "\n") == 1


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenet_digits"])
def test_widths_in_multiples_meet_the_target_within_the_landing_bound(name: str) -> None:
    torch.manual_seed(0)
    profile = parse_profile(profile_model(models.ZOO[name]().eval(), name=name, channel=True))
    sparsities = multiple_sparsities(profile, 0.5, 8)
    terms = flops_terms(profile, list(sparsities))
    for group, ratio in sparsities.items():
        n = profile.channel_groups[group].channels
        kept = n - round(ratio * n)
        assert kept % 8 == 0 or kept == n
    assert abs(terms.removed(list(sparsities.values())) - 0.5) <= 0.125


def test_torch_and_onnx_runtime_are_timed_side_by_side(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setitem(models.ZOO, "two_conv", TwoConvNet)
    (row,) = bench_model("two_conv", targets=[0.5], batches=[2], repeats=1, sample_seconds=1e-3,
                         onnx=tmp_path)
    assert row["ort_dense_ms"] > 0 and row["ort_pruned_ms"] > 0 and row["ort_ratio"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.onnx", "1.onnx"]
    table = onnx_markdown([row])
    assert table.count("\n") == 2 and "| two_conv |" in table


def test_variants_run_in_bfloat16_where_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The precision of ``make bench-full``'s GPU rows (there on CUDA); bfloat16 runs on CPU too."""
    monkeypatch.setitem(models.ZOO, "two_conv", TwoConvNet)
    (row,) = bench_model("two_conv", targets=[0.5], batches=[2], repeats=1, sample_seconds=1e-4,
                         dtype="bfloat16")
    assert row["pruned_ms"] > 0 and row["dense_ms"] > 0 and "ort_ratio" not in row
