"""PruneTPE in real nnictl experiments on the torch-free analytic trial."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.experiment import NNICTL, analytic_config, nni_experiment, nnictl, prune_tpe
from trials import analytic_trial

pytestmark = pytest.mark.slow


def test_register_lists_algorithms(registered: list[str]) -> None:
    listing = nnictl("algo", "list").stdout
    for name in ("PruneTPE", "PruneEarlyStop"):
        assert f"| {name} " in listing


def test_experiment_meets_target(registered: list[str], tmp_path: Path) -> None:
    config = analytic_config(
        tuner=prune_tpe(seed=3),
        search_space=analytic_trial.search_space(),
        max_trials=6,
        concurrency=2,
    )
    with nni_experiment(config, workdir=tmp_path) as experiment:
        experiment.wait()
        trials = experiment.trials()
    assert len(trials) == 6
    for trial in trials:
        assert trial.status == "SUCCEEDED", trial
        branch = trial.parameters["prune_method"]
        assert set(branch) == {"_name", *(f"{n}_sparsity" for n in analytic_trial.LAYERS)}
        method, sparsities = analytic_trial.parse_parameters(trial.parameters)
        assert method in ("agp", "level")
        assert all(0.05 <= s <= 0.98 for s in sparsities.values())
        assert analytic_trial.global_sparsity(sparsities) == pytest.approx(0.9, abs=1e-9)
        assert trial.final["sparsity"] == pytest.approx(0.9, abs=1e-9)


def test_register_twice_then_unregister(tmp_path: Path) -> None:
    """Registration is idempotent and unregister removes both, in a private NNI config dir."""
    env = {**os.environ, "NNI_CONFIG_DIR": str(tmp_path)}

    def run(*args: str) -> str:
        done = subprocess.run([*args], env=env, capture_output=True, text=True, check=True)
        return done.stdout + done.stderr

    module = [sys.executable, "-m", "nni_prune_tuners"]
    run(*module, "register")
    run(*module, "register")
    listing = run(NNICTL, "algo", "list")
    assert listing.count("| PruneTPE ") == 1 and listing.count("| PruneEarlyStop ") == 1
    assert "unregistered: PruneEarlyStop, PruneTPE" in run(*module, "unregister")
    listing = run(NNICTL, "algo", "list")
    assert "PruneTPE" not in listing and "PruneEarlyStop" not in listing
    assert "nothing was registered" in run(*module, "unregister")
