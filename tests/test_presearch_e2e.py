"""A presearched profile in a real nnictl experiment (issue #26, point 6).

The README's own-model trial on a tiny model: ``profile``, then ``presearch`` on the one-shot
proxy (the model has no BatchNorm, so no calibration), then PruneTPE with that profile under
nnictl to DONE. The first trial of each branch is the proxy's finalist; the dispatcher says the
proxy's evaluations became a term of each branch's allocation model; the model's own proposals
after the warm starts meet the target too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.experiment import dispatcher_log, nni_experiment
from tests.test_own_model_e2e import EPOCHS, HEADER, LAYER_PARAMS, TARGET, readme_trial

pytestmark = pytest.mark.slow

EVALUATIONS = 12
TRIALS = 6  # two finalists and two uniform warm starts (both branches), then two of the model


def _command(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "nni_prune_tuners", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_presearched_profile_runs_under_nnictl(registered: list[str], tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "own_model.py").write_text(HEADER)
    (code / "own_trial.py").write_text(HEADER + readme_trial())
    _command("profile", "--model", "own_model:load_trained_model", "--input-shape", "20",
             "--methods", "agp,level", "--search-space", "space.json", "--out", "profile.json",
             cwd=code)
    said = _command("presearch", "--model", "own_model:load_trained_model", "--profile",
                    "profile.json", "--search-space", "space.json", "--target", str(TARGET),
                    "--eval", "own_model:evaluate", "--evaluations", str(EVALUATIONS),
                    "--finalists", "1", "--out", "profile.json", cwd=code)
    assert f"{EVALUATIONS} evaluations in " in said, said
    proxy = json.loads((code / "profile.json").read_text())["proxy"]
    (finalist,) = proxy["finalists"]

    config = {
        "searchSpaceFile": str(code / "space.json"),
        "trialCommand": f"{sys.executable} own_trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": 2,
        "maxTrialNumber": TRIALS,
        "tuner": {"name": "PruneTPE", "classArgs": {
            "optimize_mode": "maximize", "target_sparsity": TARGET, "profile": "profile.json",
            "warm_start": ["uniform"], "seed": 4}},
        "trainingService": {"platform": "local"},
    }
    with nni_experiment(config, workdir=tmp_path / "nni") as experiment:
        experiment.wait()
        trials = experiment.trials()
        sequence = experiment.sequence_ids()
    assert len(trials) == TRIALS
    by_number = sorted(trials, key=lambda t: sequence[t.trial_id])
    for trial in by_number:
        assert trial.status == "SUCCEEDED", trial
        assert trial.final is not None
        assert trial.final["sparsity"] == pytest.approx(TARGET, abs=2 / sum(LAYER_PARAMS.values()))
        assert [m["epoch"] for m in trial.intermediates] == list(range(EPOCHS))
    # the space's bounds hold the finalist in both branches: proposed as it is, first
    for trial in by_number[:2]:
        branch = trial.parameters["prune_method"]
        assert {layer: branch[f"{layer}_sparsity"] for layer in LAYER_PARAMS} == pytest.approx(
            finalist, abs=1e-9)
    assert {t.parameters["prune_method"]["_name"] for t in by_number[:2]} == {"agp", "level"}
    log = dispatcher_log(tmp_path / "nni")
    for branch in ("prune_method=agp", "prune_method=level"):
        assert (f"branch {branch}: the proxy's {EVALUATIONS} evaluations are a term of the "
                "allocation model") in log, log[-3000:]
