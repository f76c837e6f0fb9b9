"""PruneEarlyStop in a real nnictl experiment on the torch-free analytic trial."""

from __future__ import annotations

from pathlib import Path

import pytest
from nni.tools.package_utils.tuner_factory import create_validator_instance
from schema import SchemaError

from nni_prune_tuners.assessor import PruneEarlyStopClassArgsValidator
from nni_prune_tuners.export import early_stopped
from tests.experiment import (
    analytic_config,
    assessor_stops,
    manager_log,
    nni_experiment,
    prune_tpe,
)
from trials import analytic_trial

pytestmark = pytest.mark.slow

# Paced like real epochs, the assessor judges each report while the trial still runs (its kill
# may or may not land before a good trial ends: nothing below depends on which).
EPOCH_SECONDS = 0.3
MAX_TRIALS = 10
# NNI's trial number of the planted hopeless trial. With two trials at a time, trial n starts
# once n - 1 trials have ended; the first five to end cannot be stopped (min_trials: 5, so
# nothing is judged before five have completed) and all complete. From trial 6 on, the
# assessor has its five references when the hopeless trial's AGP ramp arrives.
HOPELESS = 8
DEFAULT_START_STEP = 1


def test_registered_validator_is_ours(registered: list[str]) -> None:
    """The meta file wires the validator: NNI's own lookup finds it by the registered name."""
    validator = create_validator_instance("assessors", "PruneEarlyStop")
    assert isinstance(validator, PruneEarlyStopClassArgsValidator)
    with pytest.raises(SchemaError, match="percentile"):
        validator.validate_class_args(rule="percentile", percentile=100)


def test_experiment_stops_some_trials_but_not_the_best(registered: list[str], tmp_path: Path) -> None:
    """A trial with no hope is stopped (for certain: it waits for the kill), the best never is.

    The planted trial reports chance accuracy on AGP's schedule and then re-reports its last
    epoch until the assessor has it killed, so the early stop does not depend on how fast the
    machine is. Which other trials are stopped depends on the order results arrive in; the
    assertions hold whichever they are.
    """
    # below every real report: even all layers at the space's 0.98, mid-recovery
    worst = analytic_trial.final_accuracy("level", dict.fromkeys(analytic_trial.LAYERS, 0.98))
    assert worst - 0.04 > analytic_trial.HOPELESS_ACCURACY
    config = analytic_config(
        tuner=prune_tpe(seed=7),
        search_space=analytic_trial.search_space(),
        max_trials=MAX_TRIALS,
        concurrency=2,
        assessor={"name": "PruneEarlyStop"},
        epoch_seconds=EPOCH_SECONDS,
        hopeless=[HOPELESS],
    )
    with nni_experiment(config, workdir=tmp_path) as experiment:
        experiment.wait()
        trials = experiment.trials()
        sequence = experiment.sequence_ids()
        logs = experiment.logs()

    assert len(trials) == MAX_TRIALS
    status = {t.trial_id: t.status for t in trials}
    # NNI 3.0's local (v3) training service marks a trial killed by the assessor USER_CANCELED,
    # not EARLY_STOPPED (V3asV1.cancelTrialJob records isEarlyStopped only after the trial has
    # ended). Nothing else cancels trials here, so check the kills the dispatcher sent instead.
    killed = early_stopped(manager_log(tmp_path))
    decided = assessor_stops(tmp_path)
    assert set(decided) == killed, (decided, killed, logs)
    stopped = [t for t in trials if t.status in ("EARLY_STOPPED", "USER_CANCELED")]
    assert {t.trial_id for t in stopped} <= killed, (status, logs)
    # a kill sent on a trial's last epoch can arrive after the trial has already succeeded
    assert {t.status for t in trials} <= {"SUCCEEDED", "EARLY_STOPPED", "USER_CANCELED"}, logs

    (hopeless,) = [t for t in trials if sequence[t.trial_id] == HOPELESS]
    assert hopeless.trial_id in killed, f"the hopeless trial was not stopped\n{logs}"
    assert hopeless in stopped and hopeless.final is None, hopeless

    # Every stop was decided at aligned step `start_step` or later: never during the AGP ramp
    # (the hopeless trial's two ramp reports at chance came with five references in place).
    assert all(step >= DEFAULT_START_STEP for step in decided.values()), decided
    assert decided[hopeless.trial_id] == DEFAULT_START_STEP, decided
    for trial in stopped:
        epochs = {r["epoch"] for r in trial.intermediates}
        first_pruned = min(r["epoch"] for r in trial.intermediates if r["pruned"])
        assert len(epochs) >= first_pruned + DEFAULT_START_STEP + 1, trial

    # What every other trial would have reached had it run to the end: the analytic objective
    # knows. The best one was never judged worse than the median, so never stopped.
    would_reach = {
        t.trial_id: analytic_trial.final_accuracy(*analytic_trial.parse_parameters(t.parameters))
        for t in trials if t is not hopeless
    }
    best = max((t for t in trials if t is not hopeless), key=lambda t: would_reach[t.trial_id])
    assert best.trial_id not in killed, (best, would_reach, decided)
    assert best.status == "SUCCEEDED", (best, would_reach)
