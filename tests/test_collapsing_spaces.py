"""Spaces that collapse (equal bounds, single options, pinned layers) behave as NNI's TPE.

The first tests port NNI 3.0's ``test/ut/sdk/test_builtin_tuners.py`` (``test_tpe``, exhaustive
mode) onto PruneTPE: every key of its ``assets/search_space.json`` (copied to
``tests/assets/nni_search_space.json``) alone and all together, three rounds of 50 parameters
through ``generate_multiple_parameters`` with its range checks, and keys named ``fail`` rejected.
The rest pin the contract of issue 25: a finite space ends with ``NoMoreTrialError`` after exactly
its number of configurations, with and without a target, under every ``allocation``; a space with
a continuous or unbounded part never ends and never raises.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import deque
from pathlib import Path
from typing import Any

import nni
import pytest

from nni_prune_tuners.options import ALLOCATIONS
from nni_prune_tuners.tuner import PruneTPETuner
from tests.profiles import SHAPES, write_profile

NNI_SPACE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "assets" / "nni_search_space.json").read_text())
ROUNDS, PER_ROUND = 3, 50
EPS = 1e-6


def _check_range(params: dict[str, Any], space: dict[str, Any]) -> None:
    """NNI's ``check_range``: the value lies in its range, on its grid, with its type."""
    for key, value in params.items():
        kind, bounds = space[key]["_type"], space[key]["_value"]
        if kind == "choice":
            assert value in bounds
        if kind == "randint":
            assert isinstance(value, int)
        if kind == "uniform":
            assert isinstance(value, float)
        if kind in ("randint", "uniform", "quniform", "loguniform", "qloguniform"):
            assert bounds[0] <= value <= bounds[1]
        if kind.startswith("q"):
            multiple = value / bounds[2]
            if bounds[0] + EPS < value < bounds[1] - EPS:
                assert round(multiple) == pytest.approx(multiple)
        if kind in ("qlognormal", "lognormal"):
            assert value >= 0


def _run_rounds(tuner: PruneTPETuner, space: dict[str, Any]) -> list[dict[str, Any]]:
    """NNI's ``search_space_test_one`` in exhaustive mode: every parameter generated, checked."""
    tuner.update_search_space(space)
    rng = random.Random(0)
    generated: list[dict[str, Any]] = []
    for round_ in range(ROUNDS):
        queue: deque[tuple[Any, ...]] = deque()
        ids = list(range(round_ * PER_ROUND, (round_ + 1) * PER_ROUND))
        parameters = tuner.generate_multiple_parameters(
            ids, st_callback=lambda *args, queue=queue: queue.append(args))
        for parameter_id, params in zip(ids, parameters, strict=False):
            _check_range(params, space)
            metric: Any = rng.uniform(-100, 100)
            if parameter_id % 2:
                metric = {"default": metric, "extra": "hello"}
            tuner.receive_trial_result(parameter_id, params, metric)
            tuner.trial_end(parameter_id, True)
        generated.extend(parameters)
    return generated


SUPPORTED = [key for key in NNI_SPACE if "fail" not in key]


@pytest.mark.parametrize("key", SUPPORTED)
def test_nnis_builtin_tuner_space_alone(key: str) -> None:
    generated = _run_rounds(PruneTPETuner(seed=0), {key: NNI_SPACE[key]})
    assert generated, "NNI's test requires at least one parameter"
    assert len({json.dumps(p, sort_keys=True) for p in generated}) == len(generated)


@pytest.mark.parametrize("key", [key for key in NNI_SPACE if "fail" in key])
def test_nnis_failing_keys_are_rejected(key: str) -> None:
    with pytest.raises(ValueError, match=key):
        PruneTPETuner(seed=0).update_search_space({key: NNI_SPACE[key]})


def test_nnis_full_supported_space() -> None:
    space = {key: NNI_SPACE[key] for key in SUPPORTED}
    assert len(_run_rounds(PruneTPETuner(seed=0), space)) == ROUNDS * PER_ROUND


@pytest.mark.parametrize(
    ("key", "configurations"),
    [("uniform_equal", 1), ("loguniform_equal", 1), ("qloguniform_equal", 1), ("choice_single", 1),
     ("randint_single", 1), ("choice_str", 6), ("quniform_ok", 5), ("quniform_clip", 3),
     ("quniform_clip_2", 2), ("randint_ok", 5)],
)
def test_a_finite_nni_space_yields_exactly_its_configurations(key: str, configurations: int) -> None:
    assert len(_run_rounds(PruneTPETuner(seed=0), {key: NNI_SPACE[key]})) == configurations


@pytest.mark.parametrize(
    ("space", "configurations"),
    [
        ({"lr": {"_type": "loguniform", "_value": [1e-3, 1e-3]}}, 1),
        ({"u": {"_type": "uniform", "_value": [1, 1]},
          "c": {"_type": "choice", "_value": ["a", "b"]}}, 2),
        ({"c": {"_type": "choice", "_value": [{"_name": "x", "u": {"_type": "uniform",
                                                                    "_value": [0.5, 0.5]}},
                                               {"_name": "y"}]}}, 2),
    ],
)
def test_pinned_hyperparameters_make_a_finite_space(space: dict[str, Any],
                                                    configurations: int) -> None:
    tuner = PruneTPETuner(seed=3)
    tuner.update_search_space(space)
    for parameter_id in range(configurations):
        tuner.receive_trial_result(parameter_id, tuner.generate_parameters(parameter_id), 0.5)
    with pytest.raises(nni.NoMoreTrialError):
        tuner.generate_parameters(configurations)


@pytest.mark.parametrize("key", ["qnormal_ok", "qlognormal_ok", "normal_ok"])
def test_an_unbounded_space_never_ends(key: str) -> None:
    generated = _run_rounds(PruneTPETuner(seed=0), {key: NNI_SPACE[key]})
    assert len(generated) == ROUNDS * PER_ROUND


def test_a_narrow_unbounded_space_repeats_its_least_proposed_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``qlognormal [0, 0.5, 1]`` holds a handful of likely values: once they are all proposed,
    the least-proposed one is proposed again, logged, and nothing is raised."""
    tuner = PruneTPETuner(seed=0)
    tuner.update_search_space({"q": {"_type": "qlognormal", "_value": [0, 0.5, 1]}})
    with caplog.at_level(logging.INFO, logger="nni_prune_tuners"):
        values = []
        for parameter_id in range(40):
            params = tuner.generate_parameters(parameter_id)
            tuner.receive_trial_result(parameter_id, params, float(parameter_id % 7))
            values.append(params["q"])
    assert len(set(values)) < len(values)
    assert "proposing again the one proposed least" in caplog.text
    counts = [values.count(v) for v in set(values)]
    assert max(counts) - min(counts) <= max(1, len(values) // len(set(values)))


# -- with a target --------------------------------------------------------------------------------


def _target_tuner(tmp_path: Path, allocation: str) -> PruneTPETuner:
    profile = write_profile(tmp_path / "profile.json")
    return PruneTPETuner(seed=4, target_sparsity=0.5, profile=str(profile), allocation=allocation,
                         warm_start=[])


def _sparsity(low: float, high: float) -> dict[str, Any]:
    return {"_type": "uniform", "_value": [low, high]}


@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_every_layer_pinned_at_the_target_is_finite(tmp_path: Path, allocation: str) -> None:
    tuner = _target_tuner(tmp_path, allocation)
    tuner.update_search_space({
        "conv0_sparsity": _sparsity(0.5, 0.5), "conv1_sparsity": _sparsity(0.5, 0.5),
        "lr": {"_type": "choice", "_value": [0.1, 0.01, 0.001]},
    })
    proposed = set()
    for parameter_id in range(3):
        params = tuner.generate_parameters(parameter_id)
        tuner.receive_trial_result(parameter_id, params, 0.5)
        assert params["conv0_sparsity"] == params["conv1_sparsity"] == 0.5
        proposed.add(params["lr"])
    assert proposed == {0.1, 0.01, 0.001}
    with pytest.raises(nni.NoMoreTrialError):
        tuner.generate_parameters(3)


@pytest.mark.parametrize("allocation", ALLOCATIONS)
@pytest.mark.parametrize(
    "space",
    [
        # one pinned layer leaves the budget a single allocation: it repeats instead of raising
        {"conv0_sparsity": _sparsity(0.5, 0.5), "conv1_sparsity": _sparsity(0.0, 0.9)},
        {"conv0_sparsity": _sparsity(0.0, 0.9), "conv1_sparsity": _sparsity(0.0, 0.9),
         "lr": {"_type": "loguniform", "_value": [1e-3, 1e-3]}},
        {"conv0_sparsity": _sparsity(0.0, 0.9), "conv1_sparsity": _sparsity(0.0, 0.9),
         "q": {"_type": "qnormal", "_value": [0, 1, 1]}},
    ],
    ids=["one-layer-pinned", "pinned-lr", "qnormal"],
)
def test_a_target_space_with_a_continuous_part_never_raises(
    tmp_path: Path, allocation: str, space: dict[str, Any]
) -> None:
    tuner = _target_tuner(tmp_path, allocation)
    tuner.update_search_space(space)
    for parameter_id in range(25):
        params = tuner.generate_parameters(parameter_id)
        tuner.receive_trial_result(parameter_id, params, float(parameter_id % 5))
        sizes = {name: math.prod(SHAPES[name]) for name in ("conv0", "conv1")}
        pruned = sum(sizes[name] * params[f"{name}_sparsity"] for name in sizes)
        assert pruned / sum(sizes.values()) == pytest.approx(0.5, abs=1e-9)
