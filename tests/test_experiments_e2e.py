"""Real nnictl experiments: resume keeps the tuner's history, legacy configs, bad classArgs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.experiment import (
    Experiment,
    analytic_config,
    dispatcher_log,
    free_port,
    nni_experiment,
    nnictl,
    prune_tpe,
)
from trials import analytic_trial

pytestmark = pytest.mark.slow

TUNER = prune_tpe(seed=5)


def test_resume_keeps_history(registered: list[str], tmp_path: Path) -> None:
    config = analytic_config(tuner=TUNER, search_space=analytic_trial.search_space(), max_trials=2)
    with nni_experiment(config, workdir=tmp_path) as experiment:
        experiment.wait()
        first = experiment.trials()
        experiment_id = experiment.id
    port = free_port()
    try:
        nnictl("resume", experiment_id, "--port", str(port))
        nnictl("update", "trialnum", experiment_id, "--value", "4")
        resumed = Experiment(id=experiment_id, port=port, workdir=tmp_path)
        # DONE with four trial jobs, all of them finished: the resumed DONE is not the old one
        resumed.wait(trials=4)
        trials = resumed.trials()
    finally:
        nnictl("stop", "--port", str(port), check=False)
    log = dispatcher_log(tmp_path)
    assert len(trials) == 4, [t.status for t in trials]
    assert all(t.status == "SUCCEEDED" for t in trials)
    imported = [int(n) for n in re.findall(r"imported (\d+) of \d+ history rows", log)]
    assert sum(imported) == 2, log
    new = [t.parameters for t in trials if t.trial_id not in {f.trial_id for f in first}]
    assert len(new) == 2
    uniform = [p for p in (t.parameters for t in trials)
               if all(v == pytest.approx(0.9) for k, v in p["prune_method"].items() if k != "_name")]
    # the uniform warm start (the first two trials) ran once per branch, before resume: a resumed
    # tuner that had lost its history would propose it again
    assert len(uniform) == 2, uniform
    for trial in trials:
        _, sparsities = analytic_trial.parse_parameters(trial.parameters)
        assert analytic_trial.global_sparsity(sparsities) == pytest.approx(0.9, abs=1e-9)


def test_legacy_config_format_runs(registered: list[str], tmp_path: Path) -> None:
    """The seed's v1 format (builtinTunerName, searchSpacePath, trial.codeDir) still works."""
    (tmp_path / "space.json").write_text(json.dumps(analytic_trial.search_space()))
    legacy = {
        "authorName": "seed",
        "experimentName": "legacy",
        "trialConcurrency": 2,
        "maxTrialNum": 3,
        "trainingServicePlatform": "local",
        "searchSpacePath": "space.json",
        "useAnnotation": False,
        "logDir": str(tmp_path / "nni-experiments"),
        "nniManagerIp": "127.0.0.1",
        "tuner": {"builtinTunerName": "PruneTPE", "classArgs": TUNER["classArgs"]},
        "trial": {"command": f"{sys.executable} -m trials.analytic_trial",
                  "codeDir": str(Path(__file__).resolve().parent.parent), "gpuNum": 0},
    }
    path = tmp_path / "legacy.yml"
    path.write_text(yaml.safe_dump(legacy))
    port = free_port()
    created = nnictl("create", "--config", str(path), "--port", str(port), check=False)
    try:
        assert created.returncode == 0, created.stdout + created.stderr
        experiment = Experiment(id="", port=port, workdir=tmp_path)
        experiment.wait()
        trials = experiment.trials()
    finally:
        nnictl("stop", "--port", str(port), check=False)
    assert [t.status for t in trials] == ["SUCCEEDED"] * 3
    for trial in trials:
        _, sparsities = analytic_trial.parse_parameters(trial.parameters)
        assert analytic_trial.global_sparsity(sparsities) == pytest.approx(0.9, abs=1e-9)


def test_bad_class_args_fail_the_experiment_with_the_key(registered: list[str], tmp_path: Path) -> None:
    """NNI 3.0 does not call validators for v2 configs: the dispatcher fails, naming the key."""
    tuner = {"name": "PruneTPE", "classArgs": {"target_sparsity": 1.5,
                                                "layer_params": analytic_trial.layer_params()}}
    config = analytic_config(tuner=tuner, search_space=analytic_trial.search_space())
    with nni_experiment(config, workdir=tmp_path) as experiment, pytest.raises(RuntimeError):
        experiment.wait()  # raises RuntimeError at ERROR; a TimeoutError would fail the test
    assert "target_sparsity must be a number in (0, 1)" in dispatcher_log(tmp_path)
