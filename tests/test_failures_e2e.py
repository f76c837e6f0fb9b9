"""``check`` and ``nnictl create`` agree on search-space files that are not strict JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nni_prune_tuners.config_check import check_config
from tests.experiment import analytic_config, nni_experiment, prune_tpe, write_config
from trials import analytic_trial

pytestmark = pytest.mark.slow


def test_trailing_comma_space_runs_in_nni_and_passes_check(registered: list[str], tmp_path: Path) -> None:
    """NNI 3.0 reads the file with a YAML fallback and runs it; check used to refuse it."""
    text = json.dumps(analytic_trial.search_space(), indent=1)
    trailing = text.replace("]\n", "],\n")  # a trailing comma after each branch list's last item
    (tmp_path / "space.json").write_text(trailing)
    with pytest.raises(json.JSONDecodeError):
        json.loads(trailing)
    config = analytic_config(tuner=prune_tpe(seed=3), search_space={}, max_trials=2)
    del config["searchSpace"]
    config["searchSpaceFile"] = str(tmp_path / "space.json")

    checked = check_config(write_config(config, tmp_path))
    assert checked.search_space == analytic_trial.search_space()
    assert len(checked.warnings) == 1 and "is not strict JSON" in checked.warnings[0]

    with nni_experiment(config, workdir=tmp_path / "run") as experiment:
        experiment.wait()
        trials = experiment.trials()
    assert [t.status for t in trials] == ["SUCCEEDED"] * 2
    for trial in trials:
        _, sparsities = analytic_trial.parse_parameters(trial.parameters)
        assert analytic_trial.global_sparsity(sparsities) == pytest.approx(0.9, abs=1e-9)
    assert yaml.safe_load(trailing) == analytic_trial.search_space()
