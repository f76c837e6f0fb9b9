"""Reading NNI's trial records: parameters follow the metrics when NNI swapped them, and the
assessor's kills count as early stops."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from nni_prune_tuners.experiment_records import (
    TrialRecord,
    assemble_trials,
    early_stopped,
    shown_status,
)
from nni_prune_tuners.export import export_best


def _hyper(parameter_id: int, conv0: float) -> str:
    params = {"prune_method": {"_name": "level", "conv0_sparsity": conv0, "conv1_sparsity": 0.9}}
    return json.dumps({"parameter_id": parameter_id, "parameter_source": "algorithm",
                       "parameters": params, "parameter_index": 0})


def _metric(value: dict) -> str:
    return json.dumps(json.dumps(value))


JOBS = [
    (1, "A", "RUNNING", _hyper(14, 0.1)),
    (2, "B", "RUNNING", _hyper(15, 0.5)),
    (6, "A", "SUCCEEDED", None),
    (7, "B", "SUCCEEDED", None),
    (8, "abcde", "RUNNING", _hyper(16, 0.3)),
    (9, "abcde", "USER_CANCELED", None),
]
# NNI's local training service handed A the parameters recorded for B and vice versa
METRICS = [
    (3, "A", "15", "PERIODICAL", _metric({"default": 0.5, "epoch": 0, "pruned": True})),
    (4, "B", "14", "FINAL", _metric({"default": 0.8, "sparsity": 0.9, "method": "level"})),
    (5, "A", "15", "FINAL", _metric({"default": 0.6, "sparsity": 0.9, "method": "level"})),
]

MANAGER_LOG = """\
[2026-11-25 10:00:01] INFO (NNIManager) Trial job abcde status changed from WAITING to RUNNING
[2026-11-25 10:00:05] INFO (NNIManager) NNIManager received command from dispatcher: KI, "abcde"
[2026-11-25 10:00:05] INFO (NNIManager) cancelTrialJob: "abcde"
[2026-11-25 10:00:09] INFO (NNIManager) NNIManager received command from dispatcher: ME, {"trial_job_id": "fghij"}
"""  # noqa: E501 (a real log line)


def test_parameters_follow_the_metrics() -> None:
    a, b, _ = assemble_trials(JOBS, METRICS)
    assert (a.trial_id, a.status, a.score) == ("A", "SUCCEEDED", 0.6)
    assert a.parameters["prune_method"]["conv0_sparsity"] == 0.5
    assert b.parameters["prune_method"]["conv0_sparsity"] == 0.1
    assert len(a.intermediates) == 1 and b.intermediates == []


def test_resumed_parameter_ids_resolve_to_the_latest_job() -> None:
    """After ``nnictl resume`` NNI numbers parameters from 0 again."""
    jobs = [(1, "old", "SUCCEEDED", _hyper(0, 0.2)), (10, "new", "SUCCEEDED", _hyper(0, 0.7))]
    metrics = [(5, "old", "0", "FINAL", _metric({"default": 0.5})),
               (15, "new", "0", "FINAL", _metric({"default": 0.6}))]
    old, new = assemble_trials(jobs, metrics)
    assert old.parameters["prune_method"]["conv0_sparsity"] == 0.2
    assert new.parameters["prune_method"]["conv0_sparsity"] == 0.7


def test_export_best_uses_the_parameters_that_ran(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    connection = sqlite3.connect(tmp_path / "db" / "nni.sqlite")
    connection.executescript(
        "create table TrialJobEvent (timestamp integer, trialJobId text, event text, data text);"
        "create table MetricData (timestamp integer, trialJobId text, parameterId text, "
        "type text, sequence integer, data text);"
        "create table ExperimentProfile (params text, revision integer);"
    )
    connection.executemany("insert into TrialJobEvent values (?, ?, ?, ?)", JOBS)
    connection.executemany("insert into MetricData values (?, ?, ?, ?, ?, ?)",
                           [(*row[:4], i, row[4]) for i, row in enumerate(METRICS)])
    config = {"tuner": {"name": "PruneTPE", "classArgs": {"optimize_mode": "maximize"}}}
    connection.execute("insert into ExperimentProfile values (?, 1)", (json.dumps(config),))
    connection.commit()
    connection.close()

    best = export_best("exp", tmp_path / "best.json", experiment_dir=tmp_path)
    assert best["trial_id"] == "B"
    assert best["config_list"][0] == {"op_names": ["conv0"], "target_names": ["weight"],
                                      "sparse_ratio": 0.1}
    assert json.loads((tmp_path / "best.json").read_text())["config_list"] == best["config_list"]
    assert best["statuses"] == {"SUCCEEDED": 2, "USER_CANCELED": 1}

    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "nnimanager.log").write_text(MANAGER_LOG)
    best = export_best("exp", tmp_path / "best.json", experiment_dir=tmp_path)
    assert best["statuses"] == {"SUCCEEDED": 2, "EARLY_STOPPED": 1}


def test_trials_the_assessor_stopped_show_as_early_stopped() -> None:
    """NNI 3.0 marks them USER_CANCELED; the dispatcher's kill in nnimanager.log says why."""
    killed = early_stopped(MANAGER_LOG)
    assert killed == {"abcde"}
    assert shown_status(TrialRecord("abcde", {}, "USER_CANCELED"), killed) == "EARLY_STOPPED"
    assert shown_status(TrialRecord("fghij", {}, "USER_CANCELED"), killed) == "USER_CANCELED"
    assert shown_status(TrialRecord("abcde", {}, "SUCCEEDED"), killed) == "SUCCEEDED"
