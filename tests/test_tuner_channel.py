"""PruneTPE over a ``channel`` branch (Contract 10, issue #27 point 3): every suggestion removes
exactly the target fraction of FLOPs, the checks name bad group keys and missing profile fields in
one line, real pruning lands within the whole-channel rounding bound, and a real nnictl experiment
runs to DONE."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from nni_prune_tuners import flops
from nni_prune_tuners.config_check import check_config
from nni_prune_tuners.profile import parse_profile
from nni_prune_tuners.trial import count_flops, prune_channels
from nni_prune_tuners.trial.profile import profile_model, search_space
from nni_prune_tuners.tuner import PruneTPETuner
from tests.nets import untrained_dense_cache
from trials import models

ROOT = Path(__file__).resolve().parents[1]


def _write_profile(tmp: Path, name: str, *, channel: bool = True) -> tuple[Path, dict[str, Any]]:
    torch.manual_seed(0)
    raw = profile_model(models.ZOO[name]().eval(), name=name, channel=channel)
    path = tmp / f"{name}.profile.json"
    path.write_text(json.dumps(raw))
    return path, raw


def _space(raw: dict[str, Any], methods: list[str], high: float = 0.9) -> dict[str, Any]:
    profile = parse_profile(raw)
    return search_space(list(profile.layers), methods=methods, low=0.0, high=high,
                        groups=list(profile.channel_groups.values()))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("channel_profiles")
    return {name: _write_profile(tmp, name) for name in ("resnet_digits", "mobilenet_digits")}


def _channel_sparsities(params: dict[str, Any]) -> dict[str, float]:
    branch = params["prune_method"]
    return {key[: -len("_sparsity")]: value for key, value in branch.items() if key != "_name"}


def _suggest(tuner: PruneTPETuner, count: int, score: Any) -> list[dict[str, Any]]:
    suggestions = []
    for index in range(count):
        params = tuner.generate_parameters(index)
        suggestions.append(params)
        tuner.receive_trial_result(index, params, {"default": score(params)})
    return suggestions


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenet_digits"])
@pytest.mark.parametrize("allocation", ["model", "tpe"])
def test_every_suggestion_removes_the_target_fraction_of_flops(
    zoo: dict[str, tuple[Path, dict[str, Any]]], name: str, allocation: str
) -> None:
    path, raw = zoo[name]
    profile = parse_profile(raw)
    budget = flops.flops_terms(profile, list(profile.channel_groups))
    tuner = PruneTPETuner(target_sparsity=0.5, profile=str(path), seed=0, allocation=allocation,
                          channel_multiple=1)
    tuner.update_search_space(_space(raw, ["channel"]))
    assert [w.heuristic for w in tuner.warm_starts] == ["uniform"]
    # an additive landscape in which the first group (the stem's stream) is the sensitive one
    weights = np.array([5.0] + [1.0] * (len(budget.groups) - 1))

    def score(params: dict[str, Any]) -> float:
        s = np.array([_channel_sparsities(params)[g] for g in budget.groups])
        return float(1.0 - np.dot(weights, s**2))

    suggestions = _suggest(tuner, 30, score)
    rows = np.array([[_channel_sparsities(p)[g] for g in budget.groups] for p in suggestions])
    for row in rows:
        assert abs(budget.removed(row) - 0.5) <= 1e-9
    for i in range(len(rows)):  # Contract 8: all different (within 1e-6 per value)
        for j in range(i):
            assert np.max(np.abs(rows[i] - rows[j])) > 1e-6
    if allocation == "model":  # the model learns to spare the sensitive group
        assert np.mean(rows[-10:, 0]) < np.mean(rows[-10:, 1:])


def test_a_space_with_both_kinds_of_branch(zoo: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    path, raw = zoo["resnet_digits"]
    profile = parse_profile(raw)
    budget = flops.flops_terms(profile, list(profile.channel_groups))
    tuner = PruneTPETuner(target_sparsity=0.6, profile=str(path), seed=1, weight_by="flops",
                          channel_multiple=1)
    tuner.update_search_space(_space(raw, ["level", "channel"]))
    plan = [(w.heuristic, w.branch) for w in tuner.warm_starts]
    assert ("uniform", "prune_method=channel") in plan
    assert [h for h, b in plan if b == "prune_method=channel"] == ["uniform"]
    weights = {name: float(layer.flops or 0) for name, layer in profile.layers.items()}
    for params in _suggest(tuner, 12, lambda p: 0.5):
        branch = params["prune_method"]
        if branch["_name"] == "channel":
            s = _channel_sparsities(params)
            assert abs(budget.removed([s[g] for g in budget.groups]) - 0.6) <= 1e-9
        else:
            layers = _channel_sparsities(params)
            total = sum(weights[n] * v for n, v in layers.items()) / sum(weights.values())
            assert abs(total - 0.6) <= 1e-9


def test_the_channel_branch_says_what_its_target_means(
    zoo: dict[str, tuple[Path, dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    path, raw = zoo["mobilenet_digits"]
    tuner = PruneTPETuner(target_sparsity=0.5, profile=str(path), seed=0)
    with caplog.at_level(logging.INFO, logger="nni_prune_tuners"):
        tuner.update_search_space(_space(raw, ["level", "channel"]))
    lines = [r.getMessage() for r in caplog.records if "prune_method=channel" in r.getMessage()]
    assert any("fraction of FLOPs removed" in line and "half a step between widths per group" in line
               for line in lines)
    assert any("do not apply to channel groups" in line and "lamp" in line for line in lines)


def _one_line_error(tuner: PruneTPETuner, space: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as error:
        tuner.update_search_space(space)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_key_that_is_not_a_group_is_named_with_the_known_groups(
    zoo: dict[str, tuple[Path, dict[str, Any]]]
) -> None:
    path, raw = zoo["resnet_digits"]
    space = _space(raw, ["channel"])
    space["prune_method"]["_value"][0]["layer1.0.conv2_sparsity"] = {
        "_type": "uniform", "_value": [0.0, 0.5]}
    message = _one_line_error(PruneTPETuner(target_sparsity=0.5, profile=str(path)), space)
    assert "'prune_method/channel/layer1.0.conv2_sparsity'" in message or \
        "layer1.0.conv2_sparsity" in message
    assert "is not a channel group of the profile" in message
    assert "known groups: ['stem', 'layer1.0.conv1'" in message


def test_a_bound_that_removes_every_channel_is_named(
    zoo: dict[str, tuple[Path, dict[str, Any]]]
) -> None:
    path, raw = zoo["resnet_digits"]
    space = _space(raw, ["channel"])
    space["prune_method"]["_value"][0]["stem_sparsity"] = {"_type": "uniform", "_value": [0, 0.99]}
    message = _one_line_error(PruneTPETuner(target_sparsity=0.5, profile=str(path)), space)
    assert "stem_sparsity" in message and "would remove all 16 channels" in message


def test_an_infeasible_flops_target_names_the_branch_and_range(
    zoo: dict[str, tuple[Path, dict[str, Any]]]
) -> None:
    path, raw = zoo["resnet_digits"]
    space = _space(raw, ["channel"], high=0.3)
    message = _one_line_error(PruneTPETuner(target_sparsity=0.7, profile=str(path)), space)
    assert "branch 'prune_method=channel'" in message and "FLOPs" in message
    assert "allow removing [0.000000, " in message


def test_a_channel_branch_needs_channel_groups_in_the_profile(
    zoo: dict[str, tuple[Path, dict[str, Any]]], tmp_path: Path
) -> None:
    _, raw = zoo["resnet_digits"]
    plain, _ = _write_profile(tmp_path, "resnet_digits", channel=False)
    message = _one_line_error(PruneTPETuner(target_sparsity=0.5, profile=str(plain)),
                              _space(raw, ["level", "channel"]))
    assert "branch 'prune_method=channel'" in message
    assert "profile the model with --methods channel" in message


def test_check_accepts_a_channel_space_and_names_a_bad_key(
    zoo: dict[str, tuple[Path, dict[str, Any]]], tmp_path: Path
) -> None:
    path, raw = zoo["mobilenet_digits"]
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(_space(raw, ["level", "channel"])))
    config = {
        "searchSpaceFile": str(space_file),
        "trialCommand": "python -m trials.prune_trial",
        "trialCodeDirectory": str(ROOT),
        "trialConcurrency": 1,
        "tuner": {"name": "PruneTPE", "classArgs": {"target_sparsity": 0.5,
                                                     "profile": str(path)}},
        "trainingService": {"platform": "local"},
    }
    config_file = tmp_path / "config.yml"
    config_file.write_text(yaml.safe_dump(config))
    checked = check_config(config_file)
    assert checked.branches == ("prune_method=level", "prune_method=channel")
    space = _space(raw, ["channel"])
    space["prune_method"]["_value"][0]["fc_sparsity"] = {"_type": "uniform", "_value": [0, 0.5]}
    space_file.write_text(json.dumps(space))
    with pytest.raises(ValueError, match=r"fc_sparsity.*'fc' is not a channel group of the "
                                         r"profile; known groups: \['stem'"):
        check_config(config_file)


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenet_digits"])
def test_real_pruning_lands_within_the_rounding_bound(
    zoo: dict[str, tuple[Path, dict[str, Any]]], name: str
) -> None:
    """The tuner's continuous allocations, pruned for real: the FLOPs counted on the module
    differ from the target only by the whole-channel rounding, within its stated bound."""
    path, raw = zoo[name]
    profile = parse_profile(raw)
    budget = flops.flops_terms(profile, list(profile.channel_groups))
    bound = flops.rounding_bound(budget)
    tuner = PruneTPETuner(target_sparsity=0.5, profile=str(path), seed=3, channel_multiple=1)
    tuner.update_search_space(_space(raw, ["channel"]))
    torch.manual_seed(0)
    model = models.ZOO[name]().eval()
    x = torch.zeros(1, *model.input_shape)
    dense = sum(count_flops(model, x).values())
    for params in _suggest(tuner, 3, lambda p: 0.5):
        s = _channel_sparsities(params)
        pruned = prune_channels(copy.deepcopy(model), s, x)
        measured = 1.0 - sum(count_flops(pruned, x).values()) / dense
        assert abs(measured - 0.5) <= bound
        assert measured == pytest.approx(budget.rounded_removed([s[g] for g in budget.groups]),
                                         abs=1e-12)


@pytest.mark.slow
def test_channel_experiment_runs_under_nnictl(registered: list[str], tmp_path: Path) -> None:
    """PruneTPE over a level/channel space of the zoo MLP, the reference trial pruning channels
    for real; the dense cache holds untrained weights, so no dense training happens."""
    from tests.experiment import nni_experiment, zoo_config

    name, spec = "mlp_digits", "trials.models:mlp_digits"
    path, raw = _write_profile(tmp_path, name)
    untrained_dense_cache(tmp_path / "cache", name)
    config = zoo_config(
        model=spec, cache_dir=tmp_path / "cache", search_space=_space(raw, ["channel"]),
        tuner={"name": "PruneTPE", "classArgs": {
            "optimize_mode": "maximize", "target_sparsity": 0.5, "seed": 0,
            "channel_multiple": 1, "profile": str(path)}})
    profile = parse_profile(raw)
    budget = flops.flops_terms(profile, list(profile.channel_groups))
    with nni_experiment(config, workdir=tmp_path) as experiment:
        experiment.wait(timeout=300)
        trials = experiment.trials()
    assert [t.status for t in trials] == ["SUCCEEDED"] * 2
    for trial in trials:
        s = _channel_sparsities(trial.parameters)
        assert trial.parameters["prune_method"]["_name"] == "channel"
        assert abs(budget.removed([s[g] for g in budget.groups]) - 0.5) <= 1e-9
        assert trial.final["method"] == "channel"
        assert abs(trial.final["flops_removed"] - 0.5) <= flops.rounding_bound(budget)
        assert 0 < trial.final["sparsity"] < 1 and len(trial.intermediates) == 1
