"""PruneTPE driven exactly as NNI's dispatcher drives it, with failures and resume."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from nni_prune_tuners import sparsity
from nni_prune_tuners.search_space import SearchSpaceError
from nni_prune_tuners.tuner import PruneTPEClassArgsValidator, PruneTPETuner
from tests.profiles import analytic_profile, write_profile
from tests.test_search_space import EVERY_TYPE
from trials import analytic_trial

TARGET = 0.9
LOW, HIGH = 0.05, 0.98
SPACE = analytic_trial.search_space(low=LOW, high=HIGH)


@pytest.fixture
def profile_path(tmp_path: Path) -> Path:
    return write_profile(tmp_path / "profile.json")


def make_tuner(profile_path: Path, **extra: Any) -> PruneTPETuner:
    args = {"target_sparsity": TARGET, "profile": str(profile_path), "seed": 7, **extra}
    tuner = PruneTPETuner(**args)
    tuner.update_search_space(SPACE)
    return tuner


def evaluate(params: dict[str, Any]) -> float:
    method, sparsities = analytic_trial.parse_parameters(params)
    return analytic_trial.final_accuracy(method, sparsities)


def assert_meets_target(params: dict[str, Any]) -> None:
    _, sparsities = analytic_trial.parse_parameters(params)
    assert set(params) == {"prune_method"}
    assert set(params["prune_method"]) == {"_name", *(f"{n}_sparsity" for n in analytic_trial.LAYERS)}
    assert abs(analytic_trial.global_sparsity(sparsities) - TARGET) <= 1e-9
    assert all(LOW <= s <= HIGH for s in sparsities.values())


# -- classArgs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"optimize_mode": "max"}, "optimize_mode must be 'maximize' or 'minimize'"),
        ({"target_sparsity": 1.0, "layer_params": {"a": 1}}, r"target_sparsity must be .* \(0, 1\)"),
        ({"target_sparsity": 0, "layer_params": {"a": 1}}, r"target_sparsity must be .* \(0, 1\)"),
        ({"target_sparsity": "0.9", "layer_params": {"a": 1}}, "target_sparsity must be"),
        ({"target_sparsity": 0.9}, "target_sparsity=0.9 needs 'profile'"),
        ({"warm_up": 3}, "unknown key 'warm_up': the keys are optimize_mode, seed, target_sparsity"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"n_startup_trials": 2.5}, "n_startup_trials must be an integer"),
        ({"weight_by": "bytes"}, "weight_by must be 'params', 'flops' or 'latency'"),
        ({"sparsity_scope": "all"}, "sparsity_scope must be 'searched' or 'model'"),
        ({"warm_start": ["snip"]}, r"warm_start must be a list drawn from .*, got \['snip'\]$"),
        ({"allocation": "es"}, "allocation must be 'model', 'local' or 'tpe', got 'es'$"),
        ({"allocation": "local", "learn_from": "raw"},
         "learn_from='raw' needs allocation='tpe', not 'local'"),
        ({"target_sparsity": 0.9, "layer_params": {"a": 1}, "warm_start": ["lamp"]},
         r"the profile lacks the data for \['lamp'\]"),
        ({"warm_start": ["uniform"]}, "warm_start=.* needs target_sparsity"),
        ({"target_sparsity": 0.9, "profile": "/nonexistent/profile.json"}, "cannot be read"),
        ({"layer_params": {"a": 1}, "profile": "x.json"}, "either 'profile' or 'layer_params'"),
        ({"layer_params": {"a": -1}}, r"layer_params\['a'\] must be a positive integer"),
    ],
)
def test_bad_class_args_rejected_by_validator_and_constructor(args: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PruneTPEClassArgsValidator().validate_class_args(**args)
    with pytest.raises(ValueError, match=message):
        PruneTPETuner(**args)


def test_malformed_profile_rejected(tmp_path: Path) -> None:
    data = analytic_profile()
    data["layers"][0]["params"] = 0
    path = write_profile(tmp_path / "p.json", data)
    with pytest.raises(ValueError, match=r"layers\[0\] \('conv0'\)\.params"):
        PruneTPEClassArgsValidator().validate_class_args(target_sparsity=0.5, profile=str(path))


# -- search space -------------------------------------------------------------------------------


def test_unknown_layer_is_named(profile_path: Path) -> None:
    tuner = PruneTPETuner(target_sparsity=TARGET, profile=str(profile_path))
    space = {"classifier.0_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]}}
    with pytest.raises(SearchSpaceError, match=r"layer 'classifier.0' is not in the profile"):
        tuner.update_search_space(space)


def test_infeasible_target_names_branch_and_range(profile_path: Path) -> None:
    tuner = PruneTPETuner(target_sparsity=0.95, profile=str(profile_path))
    space = {"prune_method": {"_type": "choice", "_value": [
        {"_name": "agp", "conv1_sparsity": {"_type": "uniform", "_value": [0.1, 0.99]}},
        {"_name": "level", "conv1_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]}},
    ]}}
    with pytest.raises(ValueError, match=r"branch 'prune_method=level'.*\[0\.100000, 0\.900000\]"):
        tuner.update_search_space(space)


def test_target_needs_continuous_layer_sparsities(profile_path: Path) -> None:
    tuner = PruneTPETuner(target_sparsity=TARGET, profile=str(profile_path))
    with pytest.raises(SearchSpaceError, match="'conv0_sparsity': with target_sparsity"):
        tuner.update_search_space({"conv0_sparsity": {"_type": "choice", "_value": [0.5, 0.9]}})


# -- suggestions --------------------------------------------------------------------------------


def test_warm_starts_come_first_for_every_branch(profile_path: Path) -> None:
    tuner = make_tuner(profile_path)
    profile = analytic_profile()
    params = [tuner.generate_parameters(i) for i in range(8)]
    for p in params:
        assert_meets_target(p)
    methods = [p["prune_method"]["_name"] for p in params]
    assert methods == ["agp", "level"] * 4
    uniform = params[0]["prune_method"]
    assert all(uniform[f"{n}_sparsity"] == pytest.approx(TARGET) for n in analytic_trial.LAYERS)
    # global magnitude: the allocation of one threshold over the profile's quantiles
    expected = sparsity.threshold_allocation(
        [layer["magnitude_quantiles"] for layer in profile["layers"]],
        [layer["params"] for layer in profile["layers"]], TARGET,
    )
    expected = sparsity.rescale_to_target(
        np.maximum(expected, 1e-6), [LOW] * 4, [HIGH] * 4, [lay["params"] for lay in profile["layers"]],
        TARGET,
    )
    magnitude = params[2]["prune_method"]
    np.testing.assert_allclose(
        [magnitude[f"{n}_sparsity"] for n in analytic_trial.LAYERS], expected, atol=1e-12
    )


def test_every_suggestion_meets_target_and_tpe_learns(profile_path: Path) -> None:
    tuner = make_tuner(profile_path, n_startup_trials=5)
    scores = []
    for i in range(40):
        params = tuner.generate_parameters(i)
        assert_meets_target(params)
        scores.append(evaluate(params))
        tuner.receive_trial_result(i, params, {"default": scores[-1], "sparsity": TARGET})
    assert max(scores[20:]) > max(scores[:8])  # beyond the heuristics


def test_same_seed_same_suggestions(profile_path: Path) -> None:
    runs = []
    for _ in range(2):
        tuner = make_tuner(profile_path, n_startup_trials=3)
        suggestions = []
        for i in range(14):
            params = tuner.generate_parameters(i)
            suggestions.append(params)
            tuner.receive_trial_result(i, params, evaluate(params))
        runs.append(suggestions)
    assert runs[0] == runs[1]


def test_model_scope_and_flops_weighting(profile_path: Path) -> None:
    profile = analytic_profile()
    flops = {layer["name"]: layer["flops"] for layer in profile["layers"]}
    tuner = PruneTPETuner(target_sparsity=0.5, profile=str(profile_path), weight_by="flops",
                          sparsity_scope="model", seed=1)
    tuner.update_search_space({
        "conv1_sparsity": {"_type": "uniform", "_value": [0.1, 0.95]},
        "conv2_sparsity": {"_type": "uniform", "_value": [0.1, 0.95]},
    })
    for i in range(12):
        params = tuner.generate_parameters(i)
        pruned = sum(flops[name] * params[f"{name}_sparsity"] for name in ("conv1", "conv2"))
        assert pruned / sum(flops.values()) == pytest.approx(0.5, abs=1e-9)
        tuner.receive_trial_result(i, params, 0.5)


def test_plain_tpe_without_target_accepts_every_type() -> None:
    tuner = PruneTPETuner(optimize_mode="minimize", seed=0, n_startup_trials=3)
    tuner.update_search_space(EVERY_TYPE)
    for i in range(10):
        params = tuner.generate_parameters(i)
        assert set(params) == set(EVERY_TYPE)
        tuner.receive_trial_result(i, params, float(params["u"]) ** 2)
    assert tuner.study.best_value >= 0


# -- lifecycle ----------------------------------------------------------------------------------


def states(tuner: PruneTPETuner) -> list[str]:
    return [t.state.name for t in tuner.study.trials]


def test_dispatcher_lifecycle_with_failures(profile_path: Path) -> None:
    tuner = make_tuner(profile_path)
    a, b = tuner.generate_parameters(1), tuner.generate_parameters(2)  # two in flight
    tuner.receive_trial_result(1, a, evaluate(a))
    tuner.trial_end(1, True)
    tuner.trial_end(2, False)  # killed / failed / early-stopped: no final result
    c = tuner.generate_parameters(3)
    tuner.receive_trial_result(3, c, math.nan)
    tuner.trial_end(3, True)
    d = tuner.generate_parameters(4)
    tuner.receive_trial_result(4, d, {"accuracy": 0.5})  # no 'default': malformed
    e = tuner.generate_parameters(5)
    tuner.receive_trial_result(5, e, math.inf)
    tuner.trial_end(99, False)  # unknown id: ignored
    assert states(tuner) == ["COMPLETE", "PRUNED", "FAIL", "FAIL", "FAIL"]
    assert_meets_target(b)


def test_customized_trial_is_learned(profile_path: Path) -> None:
    tuner = make_tuner(profile_path)
    params = {"prune_method": {"_name": "level", **{f"{n}_sparsity": 0.9
                                                     for n in analytic_trial.LAYERS}}}
    tuner.receive_trial_result(42, params, 0.75, customized=True)
    assert states(tuner) == ["COMPLETE"]
    assert tuner.study.trials[0].params["prune_method"] == 1


def test_resume_imports_history_and_skips_unknown_rows(profile_path: Path) -> None:
    first = make_tuner(profile_path)
    history = []
    for i in range(4):
        params = first.generate_parameters(i)
        history.append({"parameter": params, "value": {"default": evaluate(params)}})
    history.append({"parameter": {"prune_method": {"_name": "snip", "conv0_sparsity": 0.5}},
                    "value": 0.3})
    history.append({"parameter": history[0]["parameter"], "value": math.nan})

    resumed = make_tuner(profile_path)
    resumed.import_data(history)
    assert states(resumed) == ["COMPLETE"] * 4
    # the four warm starts already tried are not proposed again
    fifth = resumed.generate_parameters(10)
    tried = [h["parameter"] for h in history[:4]]
    assert fifth not in tried


def test_resumed_tuner_draws_a_new_random_stream(profile_path: Path) -> None:
    first = make_tuner(profile_path, warm_start=[])
    params = first.generate_parameters(0)
    resumed = make_tuner(profile_path, warm_start=[])
    resumed.import_data([{"parameter": params, "value": evaluate(params)}])
    # same seed: without a new stream the resumed tuner would propose the first run's first trial
    assert resumed.generate_parameters(1) != params


def test_search_space_update_mid_run_replays_history(profile_path: Path) -> None:
    tuner = make_tuner(profile_path)
    for i in range(3):
        params = tuner.generate_parameters(i)
        tuner.receive_trial_result(i, params, evaluate(params))
    running = tuner.generate_parameters(3)
    tuner.update_search_space(analytic_trial.search_space(methods=("agp",), low=LOW, high=HIGH))
    # only the agp trials fit the new space
    agp = 2 if running["prune_method"]["_name"] == "level" else 1
    assert len(tuner.study.trials) == agp
    tuner.receive_trial_result(3, running, evaluate(running))  # the old trial still lands
    params = tuner.generate_parameters(4)
    assert params["prune_method"]["_name"] == "agp"


def test_learn_from_raw_keeps_the_raw_sample(profile_path: Path) -> None:
    for mode in ("raw", "rescaled"):
        tuner = make_tuner(profile_path, learn_from=mode, warm_start=[], n_startup_trials=1,
                           allocation="tpe")
        params = tuner.generate_parameters(0)
        told = tuner.study.trials[0].params
        branch = params["prune_method"]
        sent = [branch[f"{n}_sparsity"] for n in analytic_trial.LAYERS]
        learned = [told[f"prune_method/{branch['_name']}/{n}_sparsity"]
                   for n in analytic_trial.LAYERS]
        assert (sent == learned) == (mode == "rescaled")


def test_optuna_study_direction_follows_optimize_mode(profile_path: Path) -> None:
    tuner = make_tuner(profile_path, optimize_mode="minimize")
    assert tuner.study.direction == optuna.study.StudyDirection.MINIMIZE


def test_package_imports_without_torch_nor_transformers() -> None:
    code = (
        "import sys, nni_prune_tuners, nni_prune_tuners.tuner, nni_prune_tuners.assessor, "
        "nni_prune_tuners.registration, nni_prune_tuners.__main__, nni_prune_tuners.export, "
        "nni_prune_tuners.config_check; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m); "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_bad_space_mid_run_is_rejected_and_the_current_one_kept(profile_path: Path) -> None:
    tuner = make_tuner(profile_path)
    first = tuner.generate_parameters(0)
    tuner.receive_trial_result(0, first, evaluate(first))
    tuner.update_search_space({"x": {"_type": "nope", "_value": [1]}})
    assert_meets_target(tuner.generate_parameters(1))
    with pytest.raises(SearchSpaceError, match="unknown _type 'nope'"):
        PruneTPETuner(target_sparsity=TARGET, profile=str(profile_path)).update_search_space(
            {"x": {"_type": "nope", "_value": [1]}}
        )
