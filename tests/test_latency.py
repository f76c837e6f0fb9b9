"""The latency budget of ``channel`` pruning (issue #27 point 3, ``weight_by: latency``): the fit,
the profile field, the budget the tuner meets exactly, the checks, and the measurement on a real
module."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from nni_prune_tuners import flops
from nni_prune_tuners.config_check import check_config
from nni_prune_tuners.flops import latency_terms
from nni_prune_tuners.latency import (
    fastest_ratio,
    fit_latency,
    random_allocations,
)
from nni_prune_tuners.options import parse_tuner_options
from nni_prune_tuners.profile import parse_profile
from nni_prune_tuners.search_space import SearchSpaceError
from nni_prune_tuners.trial.latency import layer_outputs, measure_latency
from nni_prune_tuners.trial.profile import profile_model, search_space
from nni_prune_tuners.tuner import PruneTPETuner
from tests.nets import TwoConvNet, untrained_dense_cache
from trials import models

ROOT = Path(__file__).resolve().parents[1]
#: A latency law for the torch-free tests: a fifth fixed, half FLOPs, the rest output elements.
LAW = {"fixed": 0.2, "per_flops": 0.5, "per_outputs": 0.3}


@pytest.fixture(scope="module")
def resnet() -> dict[str, Any]:
    """The zoo ResNet's channel profile with its layers' outputs and :data:`LAW` as its model."""
    torch.manual_seed(0)
    model = models.ZOO["resnet_digits"]().eval()
    raw = profile_model(model, name="resnet_digits", channel=True)
    outputs = layer_outputs(model, torch.zeros((1, *models.ResNetDigits.input_shape)))
    for entry in raw["layers"]:
        entry["outputs"] = outputs[entry["name"]]
    raw["latency"] = {**LAW, "device": "cpu", "threads": 1, "batch": 64, "dense_ms": 10.2,
                      "allocations": 20, "mean_error": 0.05}
    return raw


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(raw))
    return path


def _space(raw: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    profile = parse_profile(raw)
    return search_space(list(profile.layers), methods=methods, low=0.0, high=0.9,
                        groups=list(profile.channel_groups.values()))  # type: ignore[arg-type]


def test_the_fit_recovers_a_law_as_measured_and_never_goes_negative() -> None:
    rng = np.random.default_rng(0)
    f, a = rng.uniform(0.1, 1.0, 12), rng.uniform(0.3, 1.0, 12)
    # pruned widths 10% slower than the law through the dense point: the fit follows them
    fixed, per_flops, per_outputs, error = fit_latency(f, a, 1.1 * (0.2 + 0.5 * f + 0.3 * a))
    assert (fixed, per_flops, per_outputs) == pytest.approx((0.22, 0.55, 0.33))
    assert error == pytest.approx(0.0, abs=1e-12)
    # time that falls as the FLOPs kept grow: least squares would give a negative coefficient
    assert min(fit_latency(f, a, 1.0 - 0.3 * f)[:3]) >= 0


@pytest.mark.parametrize(("args", "message"), [
    (([0.5] * 4, [0.5] * 4, [0.5] * 4), "at least 5 timed allocations"),
    (([0.5] * 5, [0.5] * 6, [0.5] * 5), "one ratio per allocation"),
    (([0.5] * 5, [0.5] * 5, [0.5, 0.4, 0.0, 0.3, 0.2]), "finite and > 0"),
])
def test_a_fit_without_enough_good_timings_is_refused(args: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_latency(*args)


def test_the_fastest_samples_make_the_ratio() -> None:
    samples = [{"dense": 2.0, "pruned": 1.5}, {"dense": 1.0, "pruned": 3.0}, {"dense": 4, "pruned": 0.6}]
    assert fastest_ratio(samples, "pruned", "dense") == pytest.approx(0.6)


def test_random_allocations_are_seeded_capped_and_spread(resnet: dict[str, Any]) -> None:
    profile = parse_profile(resnet)
    groups = list(profile.channel_groups)
    drawn = random_allocations(groups, 20, seed=0)
    assert drawn == random_allocations(groups, 20, seed=0) != random_allocations(groups, 20, seed=1)
    assert all(set(a) == set(groups) and 0 <= min(a.values()) <= max(a.values()) <= 0.8
               for a in drawn)
    kept = [profile.kept_fractions(a)[0] for a in drawn]
    assert max(kept) - min(kept) > 0.5  # nearly dense to heavily pruned


def test_kept_fractions_count_whole_channels(resnet: dict[str, Any]) -> None:
    profile = parse_profile(resnet)
    assert profile.kept_fractions({}) == (1.0, 1.0)
    group = next(iter(profile.channel_groups.values()))
    sparsities = {group.name: 0.5}
    f, a = profile.kept_fractions(sparsities)
    assert f == pytest.approx(profile.channel_flops(sparsities, rounded=True)
                              / profile.channel_flops({}))
    layers = profile.layers.values()
    removed = sum((layer.outputs or 0) * 0.5 for layer in layers if layer.out_group == group.name)
    assert a == pytest.approx(1 - removed / sum(layer.outputs or 0 for layer in layers))


def test_the_latency_budget_is_the_profiles_model(resnet: dict[str, Any]) -> None:
    profile = parse_profile(resnet)
    groups = list(profile.channel_groups)
    budget = latency_terms(profile, groups)
    assert budget.measure == "latency" and budget.removed(np.zeros(len(groups))) == pytest.approx(0)
    # whole-channel sparsities, so that the model's rounded fractions are the budget's own
    channels = np.array([profile.channel_groups[g].channels for g in groups])
    s = np.round(np.linspace(0.1, 0.7, len(groups)) * channels) / channels
    f, a = profile.kept_fractions(dict(zip(groups, s, strict=True)))
    assert budget.removed(s) == pytest.approx(1 - (0.2 + 0.5 * f + 0.3 * a), abs=1e-12)
    # the fixed fifth is never removed: at most 0.8, and the gradient still points one way
    assert budget.removed(np.full(len(groups), 0.999)) < 0.8
    assert np.all(budget.gradient(s) >= 0)
    # pruned widths that run faster than the dense ones: any pruning already removes a part
    fast = parse_profile({**resnet, "latency": {**resnet["latency"], "fixed": 0.1}})
    budget = latency_terms(fast, groups)
    assert budget.removed(np.zeros(len(groups))) == pytest.approx(0.1)
    assert budget.removed(s) == pytest.approx(1 - (0.1 + 0.5 * f + 0.3 * a), abs=1e-12)


def test_every_suggestion_removes_the_target_fraction_of_latency(
    tmp_path: Path, resnet: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    profile = parse_profile(resnet)
    budget = latency_terms(profile, list(profile.channel_groups))
    by_flops = flops.flops_terms(profile, list(profile.channel_groups))
    with caplog.at_level(logging.INFO, logger="nni_prune_tuners"):
        tuner = PruneTPETuner(target_sparsity=0.4, profile=str(_write(tmp_path, resnet)), seed=0,
                              weight_by="latency", channel_multiple=1)
        tuner.update_search_space(_space(resnet, ["channel"]))
    assert "is the fraction of latency removed" in caplog.text
    flops_removed = []
    for index in range(14):  # past the 10 startup trials: the allocation model's knapsack too
        params = tuner.generate_parameters(index)
        s = [params["prune_method"][f"{g}_sparsity"] for g in budget.groups]
        assert budget.removed(s) == pytest.approx(0.4, abs=1e-9)
        flops_removed.append(by_flops.removed(s))
        tuner.receive_trial_result(index, params, {"default": 1.0 - float(np.std(s))})
    # 40% of this latency takes more than 40% of the FLOPs: the fixed part is not removable
    assert min(flops_removed) > 0.45


def test_a_latency_budget_is_checked_before_any_trial(tmp_path: Path,
                                                      resnet: dict[str, Any]) -> None:
    without = {k: v for k, v in resnet.items() if k != "latency"}
    with pytest.raises(ValueError, match=r"weight_by='latency' needs a profile with a latency "
                                         r"model .*--latency"):
        parse_tuner_options({"target_sparsity": 0.4, "weight_by": "latency",
                             "profile": str(_write(tmp_path, without))})
    path = _write(tmp_path, resnet)
    tuner = PruneTPETuner(target_sparsity=0.4, profile=str(path), weight_by="latency")
    with pytest.raises(SearchSpaceError, match="branch 'prune_method=level': weight_by='latency' "
                                               "applies to channel branches only"):
        tuner.update_search_space(_space(resnet, ["level", "channel"]))
    tuner = PruneTPETuner(target_sparsity=0.85, profile=str(path), weight_by="latency")
    with pytest.raises(ValueError, match=r"target_sparsity=0.85 \(the fraction of latency "
                                               r"removed, channel method\) is infeasible"):
        tuner.update_search_space(_space(resnet, ["channel"]))


@pytest.mark.parametrize(("change", "message"), [
    ({"fixed": -0.1, "per_flops": 0.8}, "latency.fixed must be >= 0, got -0.1"),
    ({"fixed": 0, "per_flops": 0, "per_outputs": 0}, "must be > 0, got 0"),
    ({"per_outputs": "x"}, "latency.per_outputs must be a finite number, got 'x'"),
    ({"batch": 0}, "latency.batch must be a positive integer, got 0"),
    ({"device": 3}, "latency.device must be a string, got 3"),
])
def test_a_bad_latency_field_is_named(resnet: dict[str, Any], change: dict[str, Any],
                                      message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_profile({**resnet, "latency": {**resnet["latency"], **change}})


def test_a_latency_model_needs_the_layers_outputs_and_channel_groups(
        resnet: dict[str, Any]) -> None:
    layers = [{k: v for k, v in e.items() if k != "outputs"} for e in resnet["layers"]]
    with pytest.raises(ValueError, match="latency needs 'outputs' and 'flops' for every layer"):
        parse_profile({**resnet, "layers": layers})
    no_groups = {**resnet, "channel_groups": [],
                 "layers": [{**e, "in_group": None, "out_group": None} for e in resnet["layers"]]}
    with pytest.raises(ValueError, match="latency needs channel_groups"):
        parse_profile(no_groups)


def test_measured_on_a_real_module_the_profile_carries_a_model_that_parses() -> None:
    torch.manual_seed(0)
    model = TwoConvNet().train()
    raw = profile_model(model, name="net", input_shape=(1, 8, 8), channel=True)
    field = measure_latency(model, raw, input_shape=(1, 8, 8), batch=4, allocations=5, repeats=2,
                            sample_seconds=0.001)
    assert model.training  # the user's mode is restored
    assert [e["outputs"] for e in raw["layers"]] == [8 * 64, 16 * 64, 10]
    profile = parse_profile(raw)
    assert profile.latency is not None and profile.latency.allocations == 5
    assert min(field["fixed"], field["per_flops"], field["per_outputs"]) >= 0 <= field["mean_error"]
    assert field["device"] == "cpu" and field["batch"] == 4


@pytest.mark.parametrize(("extra", "message"), [
    (["--latency", "--methods", "level"], "--latency needs --out and --methods ...,channel"),
    (["--latency", "--methods", "channel", "--latency-allocations", "3"],
     "--latency-allocations >= 5, got 64 and 3"),
])
def test_bad_latency_options_are_one_line_before_any_work(tmp_path: Path, extra: list[str],
                                                          message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nni_prune_tuners.trial.profile", "--model",
         "trials.models:mlp_digits", "--out", str(tmp_path / "p.json"), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1], done.stderr
    assert not (tmp_path / "p.json").exists()



@pytest.mark.slow
def test_profile_latency_then_a_latency_budget_under_nnictl(registered: list[str],
                                                            tmp_path: Path) -> None:
    """The user's path: ``profile --latency`` measures the zoo MLP, ``check`` passes, and a real
    experiment with ``weight_by: latency`` runs to DONE, every trial at the target by the
    profile's model. The target is the middle of what the measured model lets the space remove,
    so it is feasible whatever the timings were."""
    from tests.experiment import nni_experiment, zoo_config

    spec = "trials.models:mlp_digits"
    profile_file, space_file = tmp_path / "profile.json", tmp_path / "space.json"
    done = subprocess.run(
        [sys.executable, "-m", "nni_prune_tuners.trial.profile", "--model", spec, "--methods",
         "channel", "--latency", "--latency-allocations", "6", "--high", "0.9", "--out",
         str(profile_file), "--search-space", str(space_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    profile = parse_profile(json.loads(profile_file.read_text()))
    assert profile.latency is not None and profile.latency.allocations == 6
    space = json.loads(space_file.read_text())
    (branch,) = space["prune_method"]["_value"]
    groups = [key.removesuffix("_sparsity") for key in branch if key != "_name"]
    budget = latency_terms(profile, groups)
    reach = [budget.removed([branch[f"{g}_sparsity"]["_value"][side] for g in groups])
             for side in (0, 1)]
    target = round(sum(reach) / 2, 4)  # inside the reachable range, whatever was measured
    untrained_dense_cache(tmp_path / "cache", "mlp_digits")  # untrained: no dense training
    config = zoo_config(
        model=spec, cache_dir=tmp_path / "cache", search_space=space_file,
        tuner={"name": "PruneTPE", "classArgs": {
            "optimize_mode": "maximize", "target_sparsity": target, "weight_by": "latency",
            # every width allowed: the target is met exactly, not within a multiple's step
            "channel_multiple": 1, "seed": 0, "profile": str(profile_file)}})
    config_file = tmp_path / "config.yml"
    config_file.write_text(yaml.safe_dump(config))
    assert check_config(config_file).branches == ("prune_method=channel",)
    with nni_experiment(config, workdir=tmp_path) as experiment:
        experiment.wait(timeout=300)
        trials = experiment.trials()
    assert [t.status for t in trials] == ["SUCCEEDED"] * 2
    for trial in trials:
        s = trial.parameters["prune_method"]
        assert abs(budget.removed([s[f"{g}_sparsity"] for g in groups]) - target) <= 1e-9
        assert trial.final["method"] == "channel"
