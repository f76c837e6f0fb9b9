"""PruneTPE proposes the presearch finalists of the profile first (Contract 9, issue #26)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nni_prune_tuners.export import planned_warm_starts
from nni_prune_tuners.options import parse_tuner_options
from nni_prune_tuners.profile import parse_profile
from nni_prune_tuners.sparsity import global_sparsity
from nni_prune_tuners.tuner import PruneTPETuner
from tests.profiles import analytic_profile, write_profile
from trials import analytic_trial

TARGET = 0.9
PARAMS = {name: params for name, (params, _) in analytic_trial.LAYERS.items()}
#: Level bounds [0.05, 0.98]; AGP capped at 0.93, so a finalist with a layer above it is rescaled.
SPACE = {"prune_method": {"_type": "choice", "_value": [
    {"_name": "level", **{f"{n}_sparsity": {"_type": "uniform", "_value": [0.05, 0.98]}
                          for n in PARAMS}},
    {"_name": "agp", **{f"{n}_sparsity": {"_type": "uniform", "_value": [0.05, 0.93]}
                        for n in PARAMS}},
]}}


def _exact(raw: dict[str, float], target: float = TARGET) -> dict[str, float]:
    """``raw`` with conv2 set so that the parameter-weighted global sparsity is ``target``."""
    names = list(PARAMS)
    weights = np.array([PARAMS[n] for n in names], dtype=float)
    rest = sum(PARAMS[n] * raw[n] for n in names if n != "conv2")
    values = {**raw, "conv2": (target * weights.sum() - rest) / PARAMS["conv2"]}
    assert abs(global_sparsity([values[n] for n in names], weights) - target) < 1e-12
    return values


FINALISTS = [
    _exact({"conv0": 0.5, "conv1": 0.85, "fc": 0.95}),
    _exact({"conv0": 0.2, "conv1": 0.92, "fc": 0.9}),  # every layer <= 0.93
]


def _profile(**proxy: Any) -> dict[str, Any]:
    data = analytic_profile()
    data["proxy"] = {
        "target": TARGET, "weight_by": "params", "method": "level", "metric": "m:acc",
        "calibrated": True, "seconds": 12.5, "dense_score": 0.9,
        "evaluations": [{"sparsities": f, "score": [0.8, 0.7][i]} for i, f in enumerate(FINALISTS)],
        "finalists": FINALISTS, "future_field": {"ignored": True}, **proxy,
    }
    return data


def _tuner(tmp_path: Path, data: dict[str, Any], **class_args: Any) -> PruneTPETuner:
    path = write_profile(tmp_path / "profile.json", data)
    tuner = PruneTPETuner(**{"target_sparsity": TARGET, "profile": str(path), "seed": 2,
                             "warm_start": ["uniform", "lamp"], **class_args})
    tuner.update_search_space(SPACE)
    return tuner


def _layers(params: dict[str, Any]) -> dict[str, float]:
    branch = params["prune_method"]
    return {k.removesuffix("_sparsity"): v for k, v in branch.items() if k != "_name"}


def test_finalists_come_first_in_every_branch_before_the_heuristics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="nni_prune_tuners"):
        tuner = _tuner(tmp_path, _profile())
        proposed = [tuner.generate_parameters(i) for i in range(6)]
    assert [(w.heuristic, w.branch) for w in tuner.warm_starts] == [
        ("proxy finalist 1", "prune_method=level"), ("proxy finalist 1", "prune_method=agp"),
        ("proxy finalist 2", "prune_method=level"), ("proxy finalist 2", "prune_method=agp"),
        ("uniform", "prune_method=level"), ("uniform", "prune_method=agp"),
        ("lamp", "prune_method=level"), ("lamp", "prune_method=agp"),
    ]
    lines = [r.getMessage() for r in caplog.records if "warm start (" in r.getMessage()]
    assert lines[:5] == [
        "parameter 0: the proxy finalist 1 warm start (prune_method=level)",
        "parameter 1: the proxy finalist 1 warm start (prune_method=agp)",
        "parameter 2: the proxy finalist 2 warm start (prune_method=level)",
        "parameter 3: the proxy finalist 2 warm start (prune_method=agp)",
        "parameter 4: the uniform warm start (prune_method=level)",
    ]
    # where the finalist fits (the level bounds), it is what the proxy scored
    for params, finalist in ((proposed[0], FINALISTS[0]), (proposed[2], FINALISTS[1])):
        assert params["prune_method"]["_name"] == "level"
        assert _layers(params) == pytest.approx(finalist, abs=1e-12)
    # the agp branch caps layers at 0.93: finalist 1 (fc at 0.95) is rescaled to meet it
    agp = _layers(proposed[1])
    assert proposed[1]["prune_method"]["_name"] == "agp" and max(agp.values()) <= 0.93
    assert agp != pytest.approx(FINALISTS[0], abs=1e-3)
    assert global_sparsity([agp[n] for n in PARAMS], [PARAMS[n] for n in PARAMS]) == \
        pytest.approx(TARGET, abs=1e-9)
    assert _layers(proposed[3]) == pytest.approx(FINALISTS[1], abs=1e-12)  # fits agp as well


@pytest.mark.parametrize(
    ("proxy", "class_args", "reason"),
    [
        ({"target": 0.8}, {}, "presearch ran at target 0.8, the experiment's target_sparsity is 0.9"),
        ({"target": TARGET + 1e-6}, {}, "presearch ran at target 0.900001"),
        ({"weight_by": "flops"}, {}, "presearch weighted layers by flops, the experiment's "
                                     "weight_by is params"),
        ({}, {"proxy": False},
         "proxy: false: the profile's proxy results (2 finalists, 2 evaluations) are not used"),
    ],
)
def test_proxy_results_for_another_experiment_are_ignored_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, proxy: dict[str, Any],
    class_args: dict[str, Any], reason: str,
) -> None:
    with caplog.at_level(logging.INFO, logger="nni_prune_tuners"):
        tuner = _tuner(tmp_path, _profile(**proxy), **class_args)
    assert [w.heuristic for w in tuner.warm_starts] == ["uniform"] * 2 + ["lamp"] * 2
    assert any(reason in r.getMessage() for r in caplog.records), caplog.text


def test_a_target_within_1e9_counts_as_the_same(tmp_path: Path) -> None:
    tuner = _tuner(tmp_path, _profile(target=TARGET + 5e-10))
    assert tuner.warm_starts[0].heuristic == "proxy finalist 1"


def test_a_single_evaluation_keeps_its_finalist_first(tmp_path: Path) -> None:
    # no spread to judge against the dense score: the one presearched allocation is a warm start
    one = _profile(evaluations=[{"sparsities": FINALISTS[0], "score": 0.15}],
                   finalists=[FINALISTS[0]])
    tuner = _tuner(tmp_path, one)
    assert [w.heuristic for w in tuner.warm_starts[:2]] == ["proxy finalist 1"] * 2


def test_export_names_a_finalist_warm_start(tmp_path: Path) -> None:
    write_profile(tmp_path / "profile.json", _profile())
    config = {"trialCodeDirectory": str(tmp_path), "searchSpace": SPACE,
              "tuner": {"name": "PruneTPE", "classArgs": {
                  "target_sparsity": TARGET, "profile": "profile.json", "seed": 2,
                  "warm_start": ["uniform"]}}}
    assert [w.heuristic for w in planned_warm_starts(config)][:2] == ["proxy finalist 1"] * 2


def test_proxy_class_arg_must_be_a_bool(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "profile.json", _profile())
    with pytest.raises(ValueError, match=r"^PruneTPE classArgs: proxy must be true or false, "
                       r"got 'yes'$"):
        parse_tuner_options({"target_sparsity": TARGET, "profile": str(path), "proxy": "yes"})


def test_profile_reads_the_proxy_field_as_numbers() -> None:
    proxy = parse_profile(_profile()).proxy
    assert proxy is not None
    assert (proxy.target, proxy.weight_by, proxy.method, proxy.metric, proxy.calibrated,
            proxy.seconds, proxy.dense_score) == (TARGET, "params", "level", "m:acc", True, 12.5,
                                                  0.9)
    assert [dict(f) for f in proxy.finalists] == FINALISTS
    assert [e.score for e in proxy.evaluations] == [0.8, 0.7]
    assert parse_profile(analytic_profile()).proxy is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("target", 1.0, "proxy.target must be a number in (0, 1), got 1.0"),
        ("target", "0.9", "proxy.target must be a number in (0, 1), got '0.9'"),
        ("weight_by", "macs", "proxy.weight_by must be 'params' or 'flops', got 'macs'"),
        ("calibrated", "yes", "proxy.calibrated must be true or false, got 'yes'"),
        ("seconds", -1, "proxy.seconds must be a number >= 0, got -1"),
        ("dense_score", "high", "proxy.dense_score must be a finite number, got 'high'"),
        ("finalists", None, "proxy.finalists must be a list"),
        ("finalists", [{"conv9": 0.5}], "proxy.finalists[0] names layer 'conv9', which is not in "
                                        "the profile's layers"),
        ("finalists", [{"conv0": 1.0}], "proxy.finalists[0]['conv0'] must be a number in [0, 1), "
                                        "got 1.0"),
        ("evaluations", [{"sparsities": {"conv0": 0.5}, "score": float("nan")}],
         "proxy.evaluations[0].score must be a finite number, got nan"),
        ("evaluations", [{"score": 0.5}], "proxy.evaluations[0].sparsities must be a non-empty"),
    ],
)
def test_a_bad_proxy_field_is_named_in_one_line(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_profile(_profile(**{field: value}))
    assert message in str(info.value) and "\n" not in str(info.value)
