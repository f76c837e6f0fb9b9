"""PruneEarlyStop: an NNI assessor that compares pruning trials only once their masks are final.

An AGP trial's accuracy dips while its sparsity ramps up and recovers after the masks reach
their final sparsity, whereas a Level trial is pruned from its first epoch. Comparing the two epoch
by epoch (as NNI's ``Medianstop`` does) stops exactly the AGP trials that would have ended best.
This assessor re-indexes every trial's intermediate results from its first report with
``pruned: true`` (the *aligned step*, Contract 5 of the design) and applies Optuna's percentile /
median pruning rule on those aligned steps, never on the ramp before them.

The rule itself is Optuna's public :class:`optuna.pruners.PercentilePruner` (``MedianPruner`` is
the same class at percentile 50), run against an in-memory study that holds the completed trials'
aligned intermediate values. Both NNI callbacks arrive on the dispatcher's single assessor thread.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import optuna
from nni.assessor import Assessor, AssessResult
from nni.utils import ClassArgsValidator
from optuna.trial import TrialState, create_trial

from nni_prune_tuners.dispatcher import exit_dispatcher
from nni_prune_tuners.options import (
    ASSESSOR_ARGS,
    is_number,
    kept_percentile,
    unknown_key_message,
    validate_assessor_class_args,
)

__all__ = ["PruneEarlyStopAssessor", "PruneEarlyStopClassArgsValidator"]

_logger = logging.getLogger(__name__)

# NaN / infinite / missing values are "worst". Optuna's percentile helper interpolates between
# neighbours, and interpolating with an infinity yields NaN (read as "do not prune"), so the worst
# value is a finite number beyond any real metric.
_WORST_MAGNITUDE = 1e300


class _Report(NamedTuple):
    """One intermediate result, normalised: ``value`` is NaN when missing or not a finite number."""

    value: float
    pruned: bool
    epoch: int | None


def _to_float(value: object) -> float:
    """The metric as a finite float, or NaN when it is absent, not a number, NaN or infinite."""
    if not is_number(value):
        return math.nan
    result = float(value)  # type: ignore[arg-type]
    return result if math.isfinite(result) else math.nan


def _parse_report(entry: object) -> _Report:
    """Normalise one history entry: a Contract-5 dict or a plain number (which means pruned)."""
    if isinstance(entry, Mapping):
        epoch = entry.get("epoch")
        return _Report(
            value=_to_float(entry.get("default")),
            pruned=bool(entry.get("pruned", True)),
            epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
        )
    return _Report(value=_to_float(entry), pruned=True, epoch=None)


def _ordered_reports(history: Sequence[object]) -> list[_Report]:
    """Reports in epoch order with duplicated epochs collapsed (the latest report wins).

    Only when every entry names its epoch can duplicates and reordering be told apart from genuine
    repeats; otherwise (plain floats) the position in the history is the step, as in NNI.
    """
    reports = [_parse_report(entry) for entry in history]
    if not reports or any(report.epoch is None for report in reports):
        return reports
    by_epoch = {report.epoch: report for report in reports}
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]  # type: ignore[type-var]


def _aligned_values(history: Sequence[object]) -> list[float]:
    """Values from the first report whose masks are final on; index ``k`` is aligned step ``k``.

    Once a trial reported ``pruned: true`` its later steps all count, so a malformed later
    ``pruned: false`` cannot shift the alignment.
    """
    reports = _ordered_reports(history)
    first = next((i for i, report in enumerate(reports) if report.pruned), len(reports))
    return [report.value for report in reports[first:]]


def _worst_to_finite(values: Sequence[float], maximize: bool) -> dict[int, float]:
    """Optuna intermediate values keyed by aligned step, NaN replaced by the worst finite value.

    Values are clipped to +-``_WORST_MAGNITUDE`` so that Optuna's interpolation cannot overflow.
    """
    worst = -_WORST_MAGNITUDE if maximize else _WORST_MAGNITUDE
    return {
        step: worst if math.isnan(value) else min(max(value, -_WORST_MAGNITUDE), _WORST_MAGNITUDE)
        for step, value in enumerate(values)
    }


class PruneEarlyStopClassArgsValidator(ClassArgsValidator):
    """Rejects bad ``PruneEarlyStop`` classArgs before an experiment starts, naming the key."""

    def validate_class_args(self, **kwargs: Any) -> None:
        validate_assessor_class_args(kwargs)


class PruneEarlyStopAssessor(Assessor):
    """Median / percentile early stopping on steps counted from when each trial's masks are final.

    A running trial is stopped at its aligned step ``k`` when its best aligned value so far is worse
    than the given percentile of the completed trials' values at aligned step ``k``. Reports before
    a trial's ``pruned: true`` never count, neither as grounds to stop it nor as its best value.
    Plain-number histories (NNI's convention) are read as pruned from the first report, which makes
    the assessor Optuna's ``MedianPruner`` over epochs.

    Args:
        optimize_mode: ``maximize`` (accuracy, the default, as in NNI) or ``minimize``.
        rule: ``median`` (default) or ``percentile``.
        percentile: With ``rule: percentile``, the top percentage of trials that is kept at each
            aligned step (Optuna's meaning); in (0, 100), default 25. Leave unset with ``median``.
        min_trials: Completed (not stopped, not failed) trials that must have reached the same
            aligned step before anything is stopped; default 5, Optuna's ``n_startup_trials``
            default, because a median over fewer curves is mostly noise.
        start_step: Aligned steps of grace; a trial is judged from aligned step ``start_step``
            (0-based) on. Default 1: aligned step 0 is the first epoch after AGP's last and largest
            pruning jump, and one epoch of recovery costs little.

    Raises:
        ValueError: An option is out of range or of the wrong type; the message names it.
        TypeError: An unknown option, named with the closest valid one. Inside NNI's dispatcher
            either ends the dispatcher with the message instead
            (:func:`nni_prune_tuners.dispatcher.exit_dispatcher`).
    """

    def __init__(
        self,
        *,
        optimize_mode: str = "maximize",
        rule: str = "median",
        percentile: float | None = None,
        min_trials: int = 5,
        start_step: int = 1,
        **unknown: Any,
    ) -> None:
        try:
            message = unknown_key_message("PruneEarlyStop", unknown, ASSESSOR_ARGS)
            if message is not None:
                raise TypeError(message)
            percentile_kept = kept_percentile(
                optimize_mode=optimize_mode,
                rule=rule,
                percentile=percentile,
                min_trials=min_trials,
                start_step=start_step,
            )
        except (TypeError, ValueError) as error:
            text = str(error)
            exit_dispatcher(text if text.startswith("PruneEarlyStop") else
                            f"PruneEarlyStop classArgs: {text}")
            raise
        self._maximize = optimize_mode == "maximize"
        self._pruner = optuna.pruners.PercentilePruner(
            percentile_kept,
            n_startup_trials=min_trials,
            n_warmup_steps=start_step,
            interval_steps=1,
            n_min_trials=max(1, min_trials),
        )
        self._references = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            direction="maximize" if self._maximize else "minimize",
        )
        self._running: dict[str, list[float]] = {}
        self._ended: set[str] = set()

    def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
        """Judge a trial on its whole history; never raises, as that would kill NNI's dispatcher."""
        if trial_job_id in self._ended:
            return AssessResult.Good
        try:
            return self._assess(trial_job_id, trial_history)
        except Exception:
            _logger.exception("PruneEarlyStop: could not assess trial %s; keeping it", trial_job_id)
            return AssessResult.Good

    def trial_end(self, trial_job_id: str, success: bool) -> None:
        """Forget a finished trial; a successful one becomes a reference curve."""
        self._ended.add(trial_job_id)
        aligned = self._running.pop(trial_job_id, None)
        if not success or not aligned:
            return
        try:
            values = _worst_to_finite(aligned, self._maximize)
            self._references.add_trial(
                create_trial(
                    state=TrialState.COMPLETE,
                    value=values[len(values) - 1],
                    params={},
                    distributions={},
                    intermediate_values=values,
                )
            )
        except Exception:
            _logger.exception("PruneEarlyStop: could not record trial %s", trial_job_id)

    def _assess(self, trial_job_id: str, trial_history: Sequence[object]) -> AssessResult:
        aligned = _aligned_values(trial_history)
        previous = self._running.get(trial_job_id)
        if previous is None or len(aligned) >= len(previous):
            self._running[trial_job_id] = aligned
        if not aligned:
            return AssessResult.Good
        values = _worst_to_finite(aligned, self._maximize)
        running = create_trial(state=TrialState.RUNNING, intermediate_values=values)
        if not self._pruner.prune(self._references, running):
            return AssessResult.Good
        _logger.info(
            "PruneEarlyStop: stopping trial %s at aligned step %d (best so far %g)",
            trial_job_id,
            len(aligned) - 1,
            max(values.values()) if self._maximize else min(values.values()),
        )
        return AssessResult.Bad
