"""The tuner-comparison benchmark's driver and report, on the fast analytic objective."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nni.tuner import Tuner

from benchmarks import tuners
from benchmarks.driver import Evaluation, drive
from nni_prune_tuners import search_space as ss
from trials import analytic_trial

BUDGET = 12


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path_factory.mktemp("bench")
    argv = ["--objective", "analytic", "--seeds", "1", "--budget", str(BUDGET),
            "--tuners", "prunetpe,tpe", "--out", str(out), "--workers", "1"]
    assert tuners.main(argv) == 0
    payload = json.loads((out / "tuners.json").read_text())
    return payload, (out / "tuners.md").read_text(), out


def test_outputs_and_structure(outcome: tuple[dict[str, Any], str, Path]) -> None:
    payload, markdown, out = outcome
    assert (out / "tuners.png").stat().st_size > 0
    assert set(payload["objectives"]) == {"analytic"}
    summary = payload["objectives"]["analytic"]["summary"]
    assert set(summary) == {"prunetpe", "tpe"}
    for stats in summary.values():
        assert set(stats["best"]) == {"10", str(BUDGET)}
        assert len(stats["curve_mean"]) == BUDGET
        assert stats["violation_rate"] == 0.0
    assert [(r["tuner"], r["seed"], len(r["trials"])) for r in payload["runs"]] == [
        ("prunetpe", 0, BUDGET), ("tpe", 0, BUDGET)]
    reach = payload["objectives"]["analytic"]["reach"]
    assert set(reach) == {"prunetpe"} and set(reach["prunetpe"]) == {"tpe"}
    for name in ("PruneTPE", "NNI TPE + in-trial rescaling", "n=10", f"n={BUDGET}"):
        assert name in markdown


def test_every_trial_meets_the_target(outcome: tuple[dict[str, Any], str, Path]) -> None:
    payload, _, _ = outcome
    for run in payload["runs"]:
        for trial in run["trials"]:
            assert trial["sparsity"] == pytest.approx(tuners.TARGET, abs=1e-9)
            assert analytic_trial.global_sparsity(trial["layers"]) == pytest.approx(
                tuners.TARGET, abs=1e-9)
            assert trial["accuracy"] == analytic_trial.final_accuracy(trial["method"], trial["layers"])


def test_unrescaled_tpe_misses_the_target() -> None:
    run = tuners.run_job(tuners.Job("analytic", tuners.UNCONSTRAINED, 0, BUDGET, None))
    summary = tuners.summarise([run], BUDGET)
    assert summary["violation_rate"] == 1.0  # uniform raw samples are never exactly at 0.9
    assert summary["best_on_target"][str(BUDGET)] == {"mean": None, "std": None, "worst": None}
    assert "on-target trials only" in tuners.table("analytic", {tuners.UNCONSTRAINED: summary})


def test_driver_keeps_two_in_flight() -> None:
    """The second suggestion is asked before the first result arrives, as with concurrency 2."""
    calls: list[str] = []

    class Recorder(Tuner):
        def update_search_space(self, space: Any) -> None:
            calls.append("space")

        def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
            calls.append(f"ask {parameter_id}")
            return {"x": parameter_id}

        def receive_trial_result(self, parameter_id: int, parameters: Any, value: Any,
                                 **kwargs: Any) -> None:
            calls.append(f"result {parameter_id} {value['default']}")

        def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
            calls.append(f"end {parameter_id}")

    run = drive(Recorder(), {}, lambda p: Evaluation(p["x"] / 10, 0.9, "level", {}),
                budget=3)
    assert calls == ["space", "ask 0", "ask 1", "result 0 0.0", "end 0", "ask 2",
                     "result 1 0.1", "end 1", "result 2 0.2", "end 2"]
    assert [t.parameter_id for t in run.trials] == [0, 1, 2]


def test_rescaled_meets_the_target_and_keeps_ratios() -> None:
    space = analytic_trial.search_space()
    parameters = ss.parse_search_space(space)
    raw = {"prune_method": {"_name": "agp", "conv0_sparsity": 0.1, "conv1_sparsity": 0.2,
                            "conv2_sparsity": 0.3, "fc_sparsity": 0.2}}
    out = tuners.rescaled(raw, parameters, tuners.layer_weights("analytic", None), 0.5)
    _, layers = analytic_trial.parse_parameters(out)
    assert analytic_trial.global_sparsity(layers) == pytest.approx(0.5, abs=1e-12)
    assert layers["conv1"] == pytest.approx(2 * layers["conv0"])
    assert raw["prune_method"]["conv0_sparsity"] == 0.1  # the tuner's copy is untouched


def test_summary_helpers() -> None:
    curve = tuners.best_so_far([0.5, 0.7, 0.6, 0.9], keep=[False, True, True, False])
    np.testing.assert_array_equal(curve, [np.nan, 0.7, 0.7, 0.7])
    assert tuners.trials_to_reach(curve, 0.7) == 2
    assert tuners.trials_to_reach(curve, 0.8) is None
    assert tuners.meets_target([0.9, 0.9009, 0.8985]).tolist() == [True, True, False]
    assert tuners.checkpoints(60) == [10, 20, 50, 60]
    assert tuners.checkpoints(20) == [10, 20]


def test_heuristics_alone_are_prunetpes_warm_starts(
    outcome: tuple[dict[str, Any], str, Path]
) -> None:
    payload, markdown, _ = outcome
    heuristics = payload["objectives"]["analytic"]["heuristics"]
    # the analytic objective has layer_params, not a profile: only the uniform warm start
    assert set(heuristics) == {"uniform (prune_method=agp)", "uniform (prune_method=level)"}
    runs = payload["runs"]
    first_two = sorted(t["accuracy"] for r in runs if r["tuner"] == "prunetpe"
                       for t in r["trials"][:2])
    assert sorted(h["mean"] for h in heuristics.values()) == pytest.approx(first_two)
    assert all(h["std"] == 0.0 for h in heuristics.values())  # the analytic trial is exact
    assert "| best heuristic alone: uniform" in markdown
    assert "Noise floor: the sd of one configuration" in markdown
