"""benchmarks/latency_predictors.py: the predictors' maths, and one small run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.latency_predictors import (
    GRID,
    PREDICTORS,
    interpolate,
    layer_keeps,
    leave_one_out,
    main,
    predictions,
)
from nni_prune_tuners.profile import ModelProfile, parse_profile
from nni_prune_tuners.trial.profile import profile_model
from tests.nets import TwoConvNet


def _profile() -> ModelProfile:
    torch.manual_seed(0)
    return parse_profile(profile_model(TwoConvNet(), name="net", channel=True))


def test_interpolation_is_exact_on_the_grid_bilinear_between_and_clamped() -> None:
    table = np.add.outer(np.asarray(GRID), 2 * np.asarray(GRID))  # t = keep_in + 2 keep_out
    assert interpolate(table, 0.5, 0.25) == pytest.approx(1.0)
    assert interpolate(table, 0.6, 0.9) == pytest.approx(0.6 + 1.8)
    assert interpolate(table, 0.0, 2.0) == pytest.approx(GRID[0] + 2 * GRID[-1])


def test_keeps_are_whole_channels_and_one_where_no_group_sets_a_side() -> None:
    profile = _profile()
    keeps = layer_keeps(profile, {"features.0": 0.3, "features.2": 0.5})
    assert keeps == {"features.0": (1.0, 6 / 8), "features.2": (6 / 8, 0.5), "head": (0.5, 1.0)}


def test_predictions_weigh_the_layers_by_flops_by_time_and_by_output_elements() -> None:
    profile = _profile()
    keeps = {"features.0": (1.0, 0.5), "features.2": (0.5, 0.5), "head": (0.5, 1.0)}
    flat = {name: np.full((len(GRID), len(GRID)), 1.0) for name in keeps}
    flat["features.0"] = np.outer(GRID, GRID)  # time in proportion to both widths
    outputs = {"features.0": 512, "features.2": 1024, "head": 10}
    got = predictions(profile, keeps, flat, outputs, dense_seconds=3.0)
    flops = {n: float(profile.layers[n].flops or 0) for n in keeps}
    assert got["flops"] == pytest.approx(
        sum(flops[n] * keeps[n][0] * keeps[n][1] for n in keeps) / sum(flops.values()))
    assert got["layer time"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    assert got["activations"] == pytest.approx((256 + 512 + 10) / 1546)
    # the layers alone take the whole dense time: the table is their interpolated sum
    assert got["table"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)


def test_leave_one_out_recovers_a_linear_law_and_does_not_see_its_own_row() -> None:
    x = np.random.default_rng(0).uniform(size=(12, 2))
    y = 0.2 + 0.5 * x[:, 0] + 0.3 * x[:, 1]
    assert leave_one_out(x[:, 0], x[:, 1], y) == pytest.approx(y)
    y_noisy = y.copy()
    y_noisy[0] += 1.0
    assert leave_one_out(x[:, 0], x[:, 1], y_noisy)[0] == pytest.approx(y[0], abs=0.3)


def test_a_small_run_writes_every_predictor_for_every_allocation(tmp_path: Path) -> None:
    assert main(["--models", "mobilenet_digits", "--allocations", "6", "--repeats", "2",
                 "--sample-seconds", "0.002", "--targets", "0.3", "--per-target", "2",
                 "--profile-allocations", "5", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "latency_predictors.json").read_text())
    (result,) = data["results"]
    assert set(result["predictors"]) == set(PREDICTORS)
    assert len(result["rows"]) == 6
    assert all(0 < row["flops"] < 1 and row["measured_a"] > 0 for row in result["rows"])
    check = result["budget_check"]
    assert [(r["target"], r["budget"]) for r in check["rows"]] == [(0.3, "latency"), (0.3, "FLOPs")]
    latency_row, flops_row = check["rows"]
    # the measured model decides whether 0.3 is reachable (timings): at most the two allocations
    assert latency_row["allocations"] == len(latency_row["removed"]) <= 2
    assert flops_row["allocations"] == 2  # the FLOPs budget meets it, in whole channels
    assert all(abs(f - 0.3) < 0.05 for f in flops_row["flops_removed"])
    text = (tmp_path / "latency_predictors.md").read_text()
    assert "| mobilenet_digits |" in text and "| 0.30 | FLOPs | 2 |" in text


def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--models", "nope"])
    assert "--models: 'nope'" in capsys.readouterr().err
