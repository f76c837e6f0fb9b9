"""``export`` of a ``channel`` best trial: group ratios as they are, NNI's channel vocabulary, and
the reload path (``NNI_PRUNE_PARAMS=@best.json``) back into ``Pruner`` (issue #27 point 2)."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from nni_prune_tuners.export import channel_config_list, export_best
from nni_prune_tuners.trial import PARAMS_ENV, Pruner, next_parameters
from nni_prune_tuners.trial.profile import profile_model
from trials import models

GROUPS = {"stem": 0.5, "layer1.0.conv1": 0.25, "layer2.0.conv2": 0.0, "layer3.0.conv1": 0.375}


def _channel(groups: dict[str, float]) -> dict[str, Any]:
    return {"prune_method": {"_name": "channel", **{f"{g}_sparsity": s for g, s in groups.items()}},
            "lr": 0.01}


def _hyper(parameter_id: int, params: dict[str, Any]) -> str:
    return json.dumps({"parameter_id": parameter_id, "parameter_source": "algorithm",
                       "parameters": params, "parameter_index": 0})


def _metric(value: dict[str, Any]) -> str:
    return json.dumps(json.dumps(value))


def _experiment(folder: Path, profile: Path | None,
                ratios: tuple[float | None, float | None] = (None, None)) -> None:
    """A synthetic NNI database: two channel trials, the second one best; ``ratios``: each
    trial's ``latency_ratio`` (none reported where None)."""
    (folder / "db").mkdir(parents=True)
    worse = {**GROUPS, "stem": 0.25}
    jobs = [(1, "A", "RUNNING", _hyper(0, _channel(worse))),
            (2, "B", "RUNNING", _hyper(1, _channel(GROUPS))),
            (6, "A", "SUCCEEDED", None), (7, "B", "SUCCEEDED", None)]
    final = {"sparsity": 0.6, "method": "channel", "flops_removed": 0.5}
    finals = [{**final, "default": score} for score in (0.7, 0.8)]
    for metric, ratio in zip(finals, ratios, strict=True):
        if ratio is not None:
            metric["latency_ratio"] = ratio
    metrics = [(4, "A", "0", "FINAL", 0, _metric(finals[0])),
               (5, "B", "1", "FINAL", 1, _metric(finals[1]))]
    connection = sqlite3.connect(folder / "db" / "nni.sqlite")
    connection.executescript(
        "create table TrialJobEvent (timestamp integer, trialJobId text, event text, data text);"
        "create table MetricData (timestamp integer, trialJobId text, parameterId text, "
        "type text, sequence integer, data text);"
        "create table ExperimentProfile (params text, revision integer);"
    )
    connection.executemany("insert into TrialJobEvent values (?, ?, ?, ?)", jobs)
    connection.executemany("insert into MetricData values (?, ?, ?, ?, ?, ?)", metrics)
    class_args: dict[str, Any] = {"optimize_mode": "maximize"}
    config: dict[str, Any] = {"tuner": {"name": "PruneTPE", "classArgs": class_args}}
    if profile is not None:  # relative to trialCodeDirectory, as the tuner reads it
        class_args["profile"] = profile.name
        config["trialCodeDirectory"] = str(profile.parent)
    connection.execute("insert into ExperimentProfile values (?, 1)", (json.dumps(config),))
    connection.commit()
    connection.close()


def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.ZOO["resnet_digits"]().eval()


def _input(model: torch.nn.Module) -> torch.Tensor:
    return torch.zeros((1, *cast(tuple[int, ...], model.input_shape)))


def test_channel_config_list_is_one_dependency_group_per_channel_group() -> None:
    layers = {"stem": ("stem", "layer1.0.conv2"), "b": ("b",)}
    assert channel_config_list({"stem": 0.5, "b": 0.0, "c": 0.25}, layers) == [
        {"op_names": ["stem", "layer1.0.conv2"], "target_names": ["weight"], "sparse_ratio": 0.5,
         "granularity": "out_channel", "dependency_group_id": "stem"},
        {"op_names": ["c"], "target_names": ["weight"], "sparse_ratio": 0.25,
         "granularity": "out_channel", "dependency_group_id": "c"},
    ]


def test_a_channel_best_trial_exports_its_groups_and_reloads_into_pruner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _resnet()
    profile = tmp_path / "code" / "profile.json"
    profile.parent.mkdir()
    profile.write_text(json.dumps(profile_model(model, name="resnet_digits", channel=True)))
    _experiment(tmp_path / "exp", profile)

    best = export_best("exp", tmp_path / "best.json", experiment_dir=tmp_path / "exp")
    assert (best["trial_id"], best["method"]) == ("B", "channel")
    assert best["groups"] == GROUPS
    assert best["metric"]["flops_removed"] == 0.5
    stem, block, deep = best["config_list"]  # the dense group is left out
    assert stem["op_names"] == ["stem", "layer1.0.conv2", "layer1.1.conv2"]
    assert (stem["sparse_ratio"], stem["granularity"], stem["dependency_group_id"]) == (
        0.5, "out_channel", "stem")
    assert block["op_names"] == ["layer1.0.conv1"] and deep["sparse_ratio"] == 0.375
    assert all(e["granularity"] == "out_channel" for e in best["config_list"])  # not Level's

    monkeypatch.delenv("NNI_PLATFORM", raising=False)
    monkeypatch.setenv(PARAMS_ENV, f"@{tmp_path / 'best.json'}")
    params = next_parameters()
    assert params == _channel(GROUPS)
    pruner = Pruner(model, params, epochs=1, example_inputs=_input(model),
                    optimizer_factory=lambda m: torch.optim.SGD(m.parameters(), lr=params["lr"]))
    assert pruner.group_sparsity() == GROUPS
    assert pruner.config_list() == best["config_list"]


def test_without_a_profile_groups_are_named_by_their_first_layer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _experiment(tmp_path, None)
    with caplog.at_level(logging.WARNING, logger="nni_prune_tuners.export"):
        best = export_best("exp", tmp_path / "best.json", experiment_dir=tmp_path)
    assert best["groups"] == GROUPS
    assert [e["op_names"] for e in best["config_list"]] == [["stem"], ["layer1.0.conv1"],
                                                            ["layer3.0.conv1"]]
    assert "first layer only" in caplog.text
