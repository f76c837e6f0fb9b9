"""A classArgs typo under ``nnictl create`` without ``check`` (issue #28 point 1).

NNI 3.0 does not run the registered validator for a current config: the dispatcher builds the
tuner and assessor, and a constructor that raised used to leave a traceback in dispatcher.log and
the experiment in ERROR only after ``Tuner did not connect in 10 seconds``. Now the dispatcher
ends with our message as one line: sent to the manager (ERROR at once, NNI's status says
``Dispatcher stream error, tuner may have crashed.``, nnimanager.log says ``Dispatcher error:
<ours>``), the last line of dispatcher.log, and on the dispatcher's stderr (nnictl_stderr.log),
with no traceback.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.experiment import analytic_config, nni_experiment, prune_tpe

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("role", "typo", "message"), [
    ("tuner", "target_sparsty",
     "PruneTPE classArgs: unknown key 'target_sparsty': did you mean 'target_sparsity'?"),
    ("assessor", "min_trails",
     "PruneEarlyStop classArgs: unknown key 'min_trails': did you mean 'min_trials'?"),
])
def test_class_args_typo_ends_the_experiment_with_our_message(
    registered: list[str], tmp_path: Path, role: str, typo: str, message: str
) -> None:
    from trials import analytic_trial

    tuner = prune_tpe(seed=1)
    assessor = {"name": "PruneEarlyStop", "classArgs": {"optimize_mode": "maximize"}}
    if role == "tuner":
        tuner["classArgs"][typo] = tuner["classArgs"].pop("target_sparsity")
    else:
        assessor["classArgs"][typo] = 3
    space = {f"{layer}_sparsity": {"_type": "uniform", "_value": [0.1, 0.99]}
             for layer in analytic_trial.layer_params()}
    config = analytic_config(tuner=tuner, search_space=space, assessor=assessor)
    started = time.monotonic()
    with nni_experiment(config, workdir=tmp_path) as exp:
        status: dict[str, object] = {}
        while time.monotonic() - started < 60:
            status = exp.status()
            if status.get("status") == "ERROR":
                break
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        assert status.get("status") == "ERROR", status
        assert status["errors"] == ["Dispatcher stream error, tuner may have crashed."], status
        assert exp.get("trial-jobs") == []
    assert elapsed < 9, f"ERROR after {elapsed:.1f} s: the manager waited for the tuner to connect"
    (log,) = tmp_path.rglob("log")  # the experiment's log folder
    manager = (log / "nnimanager.log").read_text()
    assert f"Dispatcher error: {message}" in manager
    assert "did not connect" not in manager
    dispatcher = (log / "dispatcher.log").read_text().strip().splitlines()
    assert dispatcher[-1].endswith(message), dispatcher
    assert not any("Traceback" in line for line in dispatcher), dispatcher
    stderr = (log / "nnictl_stderr.log").read_text()
    assert f"error: {message}" in stderr.splitlines()
    assert "Traceback" not in stderr
