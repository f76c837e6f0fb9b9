"""PruneTPE in real nnictl experiments on the torch-free analytic trial."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.experiment import analytic_config, nni_experiment, nnictl, prune_tpe
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
        experiment.wait(timeout=300)
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
