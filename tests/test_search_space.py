"""NNI search spaces <-> Optuna: validation messages, sampling shape, and replay."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from nni_prune_tuners import search_space as ss
from nni_prune_tuners.study import sample

REPO = Path(__file__).resolve().parent.parent
SEED_WITH_TRAILING_COMMAS = """{
  "prune_method": {"_type": "choice", "_value": [
    {"_name": "agp", "conv0_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]},},
    {"_name": "level", "conv0_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]}}
  ]}
}
"""

EVERY_TYPE = {
    "c": {"_type": "choice", "_value": ["a", 2, [3]]},
    "r": {"_type": "randint", "_value": [2, 5]},
    "u": {"_type": "uniform", "_value": [-1, 1]},
    "qu": {"_type": "quniform", "_value": [0, 10, 2.5]},
    "lu": {"_type": "loguniform", "_value": [1e-3, 1]},
    "qlu": {"_type": "qloguniform", "_value": [1, 100, 1]},
    "n": {"_type": "normal", "_value": [0, 1]},
    "qn": {"_type": "qnormal", "_value": [0, 1, 0.5]},
    "ln": {"_type": "lognormal", "_value": [0, 1]},
    "qln": {"_type": "qlognormal", "_value": [0, 1, 0.5]},
}


def test_seed_space_file_is_accepted() -> None:
    parameters = ss.load_search_space(REPO / "search_spaces" / "seed_nested.json")
    sets = ss.active_sets(parameters)
    assert [s.label for s in sets] == ["prune_method=agp", "prune_method=level"]
    assert [p.layer for p in sets[1].layer_sparsities] == ["conv0", "conv1"]
    assert sets[1].layer_sparsities[1].bounds == (0.01, 0.9)


def test_trailing_commas_rejected_with_line_number(tmp_path: Path) -> None:
    path = tmp_path / "space.json"
    path.write_text(SEED_WITH_TRAILING_COMMAS)
    with pytest.raises(ss.SearchSpaceError, match=r"not valid JSON: .* line 3"):
        ss.load_search_space(path)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"x": {"_type": "gaussian", "_value": [0, 1]}}, r"'x': unknown _type 'gaussian'"),
        ({"x": {"_type": "uniform", "_value": [0, 1, 2]}}, r"'x': uniform needs a list of 2"),
        ({"x": {"_type": "uniform", "_value": [1, 0]}}, r"'x': bounds reversed"),
        ({"x": {"_type": "randint", "_value": [3, 3]}}, r"'x': randint needs integers"),
        ({"x": {"_type": "loguniform", "_value": [0, 1]}}, r"'x': loguniform needs low > 0"),
        ({"x": {"_type": "normal", "_value": [0, 0]}}, r"'x': normal needs sigma > 0"),
        ({"x": {"_type": "quniform", "_value": [0, 1, 0]}}, r"'x': quniform needs q > 0"),
        ({"x": {"_type": "choice", "_value": []}}, r"'x': choice needs a non-empty list"),
        ({"x": {"_value": [0, 1]}}, r"'x' must be an object with '_type'"),
        ({"m": {"_type": "choice", "_value": [
            {"_name": "a", "fc_sparsity": {"_type": "uniform", "_value": [0.2, 0.1]}}]}},
         r"'m/a/fc_sparsity': bounds reversed"),
        ({"m": {"_type": "choice", "_value": [{"_name": "a"}, {"_name": "a"}]}},
         r"'m': duplicate _name 'a'"),
        ({}, "non-empty JSON object"),
    ],
)
def test_invalid_spaces_name_the_key(space: dict, message: str) -> None:
    with pytest.raises(ss.SearchSpaceError, match=message):
        ss.parse_search_space(space)


def _sample_many(space: dict, n: int = 200) -> list[dict]:
    parameters = ss.parse_search_space(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    samples = []
    for _ in range(n):
        trial = study.ask()
        samples.append(sample(trial, parameters))
        study.tell(trial, 0.0)
    return samples


def test_every_nni_type_samples_inside_its_domain() -> None:
    samples = _sample_many(EVERY_TYPE)
    for params in samples:
        assert set(params) == set(EVERY_TYPE)
        assert params["c"] in ("a", 2, [3])
        assert isinstance(params["r"], int) and 2 <= params["r"] < 5
        assert -1 <= params["u"] <= 1
        assert params["qu"] in (0.0, 2.5, 5.0, 7.5, 10.0)
        assert 1e-3 <= params["lu"] <= 1
        assert 1 <= params["qlu"] <= 100 and params["qlu"] == round(params["qlu"])
        assert params["qn"] / 0.5 == round(params["qn"] / 0.5)
        assert params["ln"] > 0
    normals = [p["n"] for p in samples]
    assert abs(sum(normals) / len(normals)) < 0.25  # follows the N(0, 1) prior


def test_nested_choice_is_nni_shaped_and_replays() -> None:
    space = json.loads((REPO / "search_spaces" / "seed_nested.json").read_text())
    parameters = ss.parse_search_space(space)
    for params in _sample_many(space, 20):
        branch = params["prune_method"]
        assert branch["_name"] in ("agp", "level")
        assert set(branch) == {"_name", "conv0_sparsity", "conv1_sparsity"}
        samples = ss.to_samples(params, parameters)
        index = 0 if branch["_name"] == "agp" else 1
        assert samples["prune_method"] == index
        assert samples[f"prune_method/{branch['_name']}/conv1_sparsity"] == branch["conv1_sparsity"]


def test_to_samples_inverts_every_type() -> None:
    parameters = ss.parse_search_space(EVERY_TYPE)
    by_key = {p.key: p for p in parameters}
    for params in _sample_many(EVERY_TYPE, 30):
        samples = ss.to_samples(params, parameters)
        for key, value in params.items():
            again = by_key[key].to_value(samples[key])
            if key == "c":
                assert again == value
            else:
                assert again == pytest.approx(value, rel=1e-6, abs=1e-9)


def test_to_samples_rejects_unknown_and_out_of_range() -> None:
    parameters = ss.parse_search_space({"u": {"_type": "uniform", "_value": [0, 1]}})
    with pytest.raises(ValueError, match="unexpected parameters"):
        ss.to_samples({"u": 0.5, "v": 1}, parameters)
    with pytest.raises(ValueError, match=r"outside \[0.0, 1.0\]"):
        ss.to_samples({"u": 2.0}, parameters)
    with pytest.raises(ValueError, match="missing parameter"):
        ss.to_samples({}, parameters)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"_type": "uniform", "_value": [0.1, 1.0]},
         r"'conv0_sparsity': sparsity bounds \[0.1, 1.0\] must lie inside \[0, 1\)"),
        ({"_type": "uniform", "_value": [-0.1, 0.5]}, r"inside \[0, 1\)"),
        ({"_type": "normal", "_value": [0.5, 0.1]},
         r"'conv0_sparsity': with target_sparsity a layer sparsity must be one of uniform, "
         r"loguniform, got _type 'normal'"),
        ({"_type": "choice", "_value": [0.5, 0.9]}, r"got _type 'choice'"),
    ],
)
def test_layer_sparsity_rules_apply_with_a_target(spec: dict, message: str) -> None:
    (parameter,) = ss.parse_search_space({"conv0_sparsity": spec})
    with pytest.raises(ss.SearchSpaceError, match=message):
        ss.check_layer_sparsity(parameter)


@pytest.mark.parametrize(
    "spec",
    [
        {"_type": "uniform", "_value": [0, 1]},
        {"_type": "choice", "_value": ["relu", "gelu"]},
        {"_type": "normal", "_value": [0.5, 0.1]},
        {"_type": "randint", "_value": [0, 4]},
    ],
)
def test_without_a_target_a_sparsity_key_is_any_hyperparameter(spec: dict) -> None:
    """NNI's TPE accepts these; so does PruneTPE when it does not rescale (issue 9, item 5)."""
    from nni_prune_tuners.tuner import PruneTPETuner

    tuner = PruneTPETuner(seed=0)
    tuner.update_search_space({"act_sparsity": spec, "lr": {"_type": "uniform", "_value": [0, 1]}})
    for i in range(12):
        params = tuner.generate_parameters(i)
        tuner.receive_trial_result(i, params, params["lr"])
    assert "act_sparsity" in params
