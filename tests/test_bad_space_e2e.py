"""A bad search space never leaves an experiment that lies (issue 9, item 1), under real nnictl."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.experiment import (
    WAIT_SECONDS,
    Experiment,
    analytic_config,
    dispatcher_log,
    nni_experiment,
    nnictl,
    prune_tpe,
)
from trials import analytic_trial

pytestmark = pytest.mark.slow


def _wait_for_error(experiment: Experiment, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
    """The first final status; the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = experiment.status()
        if status.get("status") in ("ERROR", "STOPPED", "DONE"):
            return status
        time.sleep(0.25)
    raise TimeoutError(f"experiment still {status} after {timeout}s\n{experiment.logs()}")


def _wait_until(done: Callable[[], bool], what: str, experiment: Experiment) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not done():
        assert time.monotonic() < deadline, f"{what} after {WAIT_SECONDS:.0f} s\n{experiment.logs()}"
        time.sleep(0.25)


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
    """Both updates reach the tuner while the first trial is still running, for certain: every
    trial waits for the go-ahead file, created only once the good update has been accepted.
    With one trial at a time, NNI asks for the next trial's parameters only when the first ends,
    after the update in the dispatcher's command stream: every later trial is AGP."""
    go_ahead = tmp_path / "go-ahead"
    config = analytic_config(tuner=prune_tpe(seed=2), search_space=analytic_trial.search_space(),
                             max_trials=3, concurrency=1, wait_for=go_ahead)
    with nni_experiment(config, workdir=tmp_path) as experiment:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"x": {"_type": "nope", "_value": [1]}}))
        good = tmp_path / "good.json"
        good.write_text(json.dumps(analytic_trial.search_space(methods=("agp",))))
        _wait_until(lambda: bool(experiment.get("trial-jobs")), "no trial job", experiment)
        nnictl("update", "searchspace", experiment.id, "--filename", str(bad), check=False)
        # the good update goes only once the dispatcher has rejected the bad one
        _wait_until(lambda: "rejected the new search space" in dispatcher_log(tmp_path),
                    "the bad search space not rejected", experiment)
        nnictl("update", "searchspace", experiment.id, "--filename", str(good))
        go_ahead.touch()
        experiment.wait(trials=3)
        trials = experiment.trials()
        sequence = experiment.sequence_ids()
        log = dispatcher_log(tmp_path)
    assert len(trials) == 3 and all(t.status == "SUCCEEDED" for t in trials)
    assert "rejected the new search space" in log and "'nope'" in log
    # the trials whose parameters were asked for after the good update are all AGP
    later = [t for t in trials if sequence[t.trial_id] > 0]
    assert [t.parameters["prune_method"]["_name"] for t in later] == ["agp", "agp"], trials
