"""A bad search space never leaves an experiment that lies (issue 9, item 1), under real nnictl."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.experiment import analytic_config, dispatcher_log, nni_experiment, nnictl, prune_tpe
from trials import analytic_trial

pytestmark = pytest.mark.slow


def _wait_for_error(experiment, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = experiment.status()
        if status.get("status") in ("ERROR", "STOPPED", "DONE"):
            return status
        time.sleep(0.25)
    raise TimeoutError(f"experiment still {status} after {timeout}s\n{experiment.logs()}")


def test_unknown_layer_at_create_ends_in_error(registered: list[str], tmp_path: Path) -> None:
    space = analytic_trial.search_space()
    space["prune_method"]["_value"][0]["conv9_sparsity"] = {"_type": "uniform", "_value": [0.1, 0.9]}
    config = analytic_config(tuner=prune_tpe(seed=1), search_space=space, max_trials=4)
    with nni_experiment(config, workdir=tmp_path) as experiment:
        status = _wait_for_error(experiment)
        assert status["status"] == "ERROR", status
        assert experiment.get("trial-jobs") == []
        manager_log = "\n".join(p.read_text() for p in tmp_path.rglob("nnimanager.log"))
        # NNI's status names only a "Dispatcher stream error"; its manager log has our message
        assert "Dispatcher error: PruneTPE: invalid search space" in manager_log
        assert "layer 'conv9' is not in the profile" in manager_log


def test_bad_update_mid_run_is_rejected_and_a_good_one_applies(
    registered: list[str], tmp_path: Path
) -> None:
    config = analytic_config(tuner=prune_tpe(seed=2), search_space=analytic_trial.search_space(),
                             max_trials=3, concurrency=1, epoch_seconds=0.5)
    with nni_experiment(config, workdir=tmp_path) as experiment:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"x": {"_type": "nope", "_value": [1]}}))
        good = tmp_path / "good.json"
        good.write_text(json.dumps(analytic_trial.search_space(methods=("agp",))))
        while not experiment.get("trial-jobs"):
            time.sleep(0.5)
        nnictl("update", "searchspace", experiment.id, "--filename", str(bad), check=False)
        # the good update goes only once the dispatcher has rejected the bad one
        deadline = time.monotonic() + 60
        while "rejected the new search space" not in dispatcher_log(tmp_path):
            assert time.monotonic() < deadline, experiment.logs()
            time.sleep(0.25)
        nnictl("update", "searchspace", experiment.id, "--filename", str(good))
        experiment.wait(timeout=240, trials=3)
        trials = experiment.trials()
        log = dispatcher_log(tmp_path)
    assert len(trials) == 3 and all(t.status == "SUCCEEDED" for t in trials)
    assert "rejected the new search space" in log and "'nope'" in log
    # the trials started after the good update are all AGP
    assert trials[-1].parameters["prune_method"]["_name"] == "agp"
