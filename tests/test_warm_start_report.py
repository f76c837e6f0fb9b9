"""Which trial was which warm start: the tuner logs it, export says it (issue 28.4)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from nni_prune_tuners.experiment_records import TrialRecord
from nni_prune_tuners.export import (
    branch_label,
    compare_with_warm_starts,
    describe_comparison,
    planned_warm_starts,
    warm_start_of,
)
from nni_prune_tuners.search_space import active_sets, parse_search_space
from nni_prune_tuners.tuner import PruneTPETuner, WarmStart
from tests.profiles import write_profile
from trials import analytic_trial

SPACE = analytic_trial.search_space()


def _config(code: Path) -> dict[str, Any]:
    write_profile(code / "profile.json")
    return {"trialCodeDirectory": str(code), "searchSpace": SPACE,
            "tuner": {"name": "PruneTPE", "classArgs": {"target_sparsity": 0.9,
                                                        "profile": "profile.json", "seed": 3,
                                                        "warm_start": ["uniform", "lamp"]}}}


def _tuner(config: dict[str, Any]) -> PruneTPETuner:
    args = dict(config["tuner"]["classArgs"])
    args["profile"] = str(Path(config["trialCodeDirectory"]) / args["profile"])
    tuner = PruneTPETuner(**args)
    tuner.update_search_space(SPACE)
    return tuner


def test_each_warm_start_is_logged_by_heuristic_and_branch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tuner = _tuner(_config(tmp_path))
    with caplog.at_level(logging.INFO, logger="nni_prune_tuners"):
        for parameter_id in range(5):
            tuner.generate_parameters(parameter_id)
    lines = [r.getMessage() for r in caplog.records if "warm start (" in r.getMessage()]
    assert lines == [
        "parameter 0: the uniform warm start (prune_method=agp)",
        "parameter 1: the uniform warm start (prune_method=level)",
        "parameter 2: the lamp warm start (prune_method=agp)",
        "parameter 3: the lamp warm start (prune_method=level)",
    ]


def _records(tuner: PruneTPETuner, scores: list[float]) -> list[TrialRecord]:
    return [TrialRecord(f"T{i}", tuner.generate_parameters(i), "SUCCEEDED", {"default": score})
            for i, score in enumerate(scores)]


def test_export_names_the_heuristic_the_best_trial_was(tmp_path: Path) -> None:
    config = _config(tmp_path)
    tuner = _tuner(config)
    planned = planned_warm_starts(config)
    assert planned == tuner.warm_starts and len(planned) == 4
    trials = _records(tuner, [0.80, 0.81, 0.95, 0.82, 0.90])  # T2: lamp in the agp branch
    comparison = compare_with_warm_starts(trials[2], trials, planned)
    assert comparison is not None
    assert comparison["best_is"] == {"heuristic": "lamp", "branch": "prune_method=agp"}
    assert describe_comparison("T2", comparison) == (
        "best trial T2 is the lamp warm start (prune_method=agp)")


def test_export_says_by_how_much_the_search_beat_the_best_heuristic(tmp_path: Path) -> None:
    config = _config(tmp_path)
    trials = _records(_tuner(config), [0.80, 0.81, 0.85, 0.82, 0.90])  # T4: the search's own
    comparison = compare_with_warm_starts(trials[4], trials, planned_warm_starts(config))
    assert comparison is not None and comparison["best_is"] is None
    assert comparison["best_warm_start"]["trial_id"] == "T2"
    assert comparison["gain"] == pytest.approx(0.05)
    assert "beat the best warm start (lamp, prune_method=agp, trial T2: 0.85) by +0.05" in (
        describe_comparison("T4", comparison))


def test_a_moved_profile_only_loses_the_comparison(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path)
    (tmp_path / "profile.json").unlink()
    with caplog.at_level(logging.WARNING, logger="nni_prune_tuners.export"):
        assert planned_warm_starts(config) == []
    assert "cannot tell which trials were warm starts" in caplog.text
    assert planned_warm_starts({"tuner": {"name": "TPE", "classArgs": {}}}) == []


NESTED = {"prune_method": {"_type": "choice", "_value": [
    {"_name": "agp", "schedule": {"_type": "choice", "_value": [{"_name": "cubic"}, {"_name": "linear"}]},
     "conv0_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]}},
    {"_name": "agp2", "conv0_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]}}]}}


def test_branch_label_is_written_as_the_search_space_writes_it() -> None:
    labels = [active.label for active in active_sets(parse_search_space(NESTED))]
    assert labels == ["prune_method=agp, prune_method/agp/schedule=cubic",
                      "prune_method=agp, prune_method/agp/schedule=linear", "prune_method=agp2"]
    ran = {"prune_method": {"_name": "agp", "schedule": {"_name": "linear"}, "conv0_sparsity": 0.5}}
    assert branch_label(ran) == labels[1]
    assert branch_label({"prune_method": {"_name": "agp2", "conv0_sparsity": 0.5}}) == labels[2]
    assert branch_label({"conv0_sparsity": 0.5}) == "top level"


def test_a_warm_start_is_matched_by_its_exact_branch() -> None:
    planned = [WarmStart("lamp", "prune_method=agp2", {"conv0": 0.5}),
               WarmStart("erk", "prune_method=agp, prune_method/agp/schedule=cubic", {"conv0": 0.5})]
    def trial(parameters: dict[str, Any]) -> TrialRecord:
        return TrialRecord("T", parameters, "SUCCEEDED", {"default": 0.5})

    agp = trial({"prune_method": {"_name": "agp", "schedule": {"_name": "linear"},
                                  "conv0_sparsity": 0.5}})
    assert warm_start_of(agp, planned) is None  # neither agp2 nor the cubic schedule
    cubic = trial({"prune_method": {"_name": "agp", "schedule": {"_name": "cubic"},
                                    "conv0_sparsity": 0.5}})
    assert warm_start_of(cubic, planned) is planned[1]
    assert warm_start_of(trial({"prune_method": {"_name": "agp2", "conv0_sparsity": 0.5}}),
                         planned) is planned[0]
    assert warm_start_of(trial({"conv0_sparsity": 0.5}), planned) is None
