"""PruneEarlyStop in a real nnictl experiment on the torch-free analytic trial."""

from __future__ import annotations

from pathlib import Path

import pytest
from nni.tools.package_utils.tuner_factory import create_validator_instance
from schema import SchemaError

from nni_prune_tuners.assessor import PruneEarlyStopClassArgsValidator
from nni_prune_tuners.export import early_stopped
from tests.experiment import analytic_config, nni_experiment, prune_tpe
from trials import analytic_trial

pytestmark = pytest.mark.slow

# Without a pause the analytic trial reports all its epochs at once and ends before the
# assessor's kill reaches it; paced like real epochs, it can be stopped.
EPOCH_SECONDS = 0.6


def manager_log(workdir: Path) -> str:
    return "\n".join(path.read_text() for path in workdir.rglob("nnimanager.log"))


def test_registered_validator_is_ours(registered: list[str]) -> None:
    """The meta file wires the validator: NNI's own lookup finds it by the registered name."""
    validator = create_validator_instance("assessors", "PruneEarlyStop")
    assert isinstance(validator, PruneEarlyStopClassArgsValidator)
    with pytest.raises(SchemaError, match="percentile"):
        validator.validate_class_args(rule="percentile", percentile=100)


def test_experiment_stops_some_trials_but_not_the_best(registered: list[str], tmp_path: Path) -> None:
    max_trials = 16
    config = analytic_config(
        tuner=prune_tpe(seed=7),
        search_space=analytic_trial.search_space(),
        max_trials=max_trials,
        concurrency=2,
        assessor={"name": "PruneEarlyStop"},
        epoch_seconds=EPOCH_SECONDS,
    )
    with nni_experiment(config, workdir=tmp_path) as experiment:
        experiment.wait(timeout=400)
        trials = experiment.trials()
        logs = experiment.logs()

    assert len(trials) == max_trials
    # NNI 3.0's local (v3) training service marks a trial killed by the assessor USER_CANCELED,
    # not EARLY_STOPPED (V3asV1.cancelTrialJob records isEarlyStopped only after the trial has
    # ended). Nothing else cancels trials here, so check the kills the dispatcher sent instead.
    killed = early_stopped(manager_log(tmp_path))
    stopped = [t for t in trials if t.status in ("EARLY_STOPPED", "USER_CANCELED")]
    status = {t.trial_id: t.status for t in trials}
    assert {t.trial_id for t in stopped} <= killed, (status, logs)
    # a kill sent on a trial's last epoch can arrive after the trial has already succeeded
    assert all(status[k] in ("SUCCEEDED", "EARLY_STOPPED", "USER_CANCELED") for k in killed), status
    assert {t.status for t in trials} <= {"SUCCEEDED", "EARLY_STOPPED", "USER_CANCELED"}, logs
    assert stopped, f"no trial was stopped early\n{logs}"

    # What every trial would have reached had it run to the end: the analytic objective knows.
    would_reach = {
        t.trial_id: analytic_trial.final_accuracy(*analytic_trial.parse_parameters(t.parameters))
        for t in trials
    }
    best = max(trials, key=lambda t: would_reach[t.trial_id])
    assert best.status == "SUCCEEDED", (best, would_reach)

    default_start_step = 1
    for trial in stopped:
        # Judged only from aligned step `start_step` on: never during the AGP ramp.
        first_pruned = next(i for i, r in enumerate(trial.intermediates) if r["pruned"])
        assert len(trial.intermediates) >= first_pruned + default_start_step + 1, trial
    # a kill decided on the last epoch may land after the final report; earlier ones cut the trial
    cut_short = [t for t in stopped if len(t.intermediates) < analytic_trial.EPOCHS]
    assert cut_short, [(t.trial_id, len(t.intermediates)) for t in stopped]
    assert all(t.final is None for t in cut_short)
