"""PruneEarlyStop: helpers, options, rules and a dispatcher-shaped lifecycle, hand-made data."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nni.algorithms.hpo.medianstop_assessor import MedianstopAssessor
from nni.assessor import AssessResult
from schema import SchemaError

from benchmarks.assessor import Contender, RecordedTrial, replay
from nni_prune_tuners import assessor as mod
from nni_prune_tuners.assessor import (
    PruneEarlyStopAssessor,
    PruneEarlyStopClassArgsValidator,
)
from nni_prune_tuners.options import kept_percentile

GOOD, BAD = AssessResult.Good, AssessResult.Bad
NAN = math.nan


def level(values: Sequence[float]) -> list[dict[str, Any]]:
    """A Level trial's reports: pruned from the first epoch."""
    return [{"default": v, "epoch": e, "sparsity": 0.9, "pruned": True} for e, v in enumerate(values)]


def agp(ramp: Sequence[float], after: Sequence[float]) -> list[dict[str, Any]]:
    """An AGP trial's reports: ``ramp`` while the masks still grow, then ``after`` once final."""
    reports = [
        {"default": v, "epoch": e, "sparsity": 0.9 * (e + 1) / (len(ramp) + 1), "pruned": False}
        for e, v in enumerate(ramp)
    ]
    reports += [
        {"default": v, "epoch": len(ramp) + e, "sparsity": 0.9, "pruned": True} for e, v in enumerate(after)
    ]
    return reports


def feed(assessor: Any, trial_id: str, history: Sequence[Any]) -> list[AssessResult]:
    """Call ``assess_trial`` as the dispatcher does: with each growing prefix of the history."""
    return [assessor.assess_trial(trial_id, list(history[: i + 1])) for i in range(len(history))]


def complete(assessor: Any, histories: Iterable[Sequence[Any]], prefix: str = "ref") -> None:
    """Run trials to completion (reported one by one, then ended successfully)."""
    for i, history in enumerate(histories):
        feed(assessor, f"{prefix}{i}", history)
        assessor.trial_end(f"{prefix}{i}", True)


REFERENCE_CURVE = [0.80, 0.85, 0.88, 0.90, 0.91, 0.92]


def references(n: int = 5, spread: float = 0.01) -> list[list[dict[str, Any]]]:
    """``n`` completed Level trials around :data:`REFERENCE_CURVE`."""
    return [level([v + spread * (i - n // 2) for v in REFERENCE_CURVE]) for i in range(n)]


# ---------------------------------------------------------------- helpers


def test_parse_report_reads_contract5_dicts_and_plain_numbers() -> None:
    assert mod._parse_report({"default": 0.5, "epoch": 2, "pruned": False}) == (0.5, False, 2)
    assert mod._parse_report(0.7) == (0.7, True, None)
    assert mod._parse_report(3) == (3.0, True, None)
    # No `pruned` key means pruned (Contract 5: plain values mean pruned).
    assert mod._parse_report({"default": 0.5}).pruned is True


@pytest.mark.parametrize(
    "entry",
    [
        {"default": None},
        {"acc": 0.5},
        {"default": "0.5"},
        None,
        "x",
        [0.5],
        True,
        math.inf,
        -math.inf,
        NAN,
        {"default": math.inf},
    ],
)
def test_parse_report_unusable_values_become_nan(entry: object) -> None:
    assert math.isnan(mod._parse_report(entry).value)


def test_parse_report_ignores_non_integer_epochs() -> None:
    assert mod._parse_report({"default": 0.5, "epoch": "3"}).epoch is None
    assert mod._parse_report({"default": 0.5, "epoch": True}).epoch is None
    assert mod._parse_report({"default": 0.5, "epoch": 1.0}).epoch is None


def test_ordered_reports_collapses_duplicates_and_sorts_epochs() -> None:
    h = level([0.1, 0.2, 0.3])
    duplicated = [*h, {**h[-1], "default": 0.35}]
    shuffled = [h[0], h[2], h[1]]
    assert [r.value for r in mod._ordered_reports(duplicated)] == [0.1, 0.2, 0.35]
    assert [r.value for r in mod._ordered_reports(shuffled)] == [0.1, 0.2, 0.3]


def test_ordered_reports_keeps_positions_without_epochs() -> None:
    # Plain floats cannot tell a duplicated report from a plateau: position is the step, as in NNI.
    assert [r.value for r in mod._ordered_reports([0.1, 0.2, 0.2])] == [0.1, 0.2, 0.2]
    mixed = [{"default": 0.1, "epoch": 0}, 0.2]
    assert [r.value for r in mod._ordered_reports(mixed)] == [0.1, 0.2]


def test_aligned_values_level_vs_agp() -> None:
    assert mod._aligned_values(level([0.8, 0.85])) == [0.8, 0.85]
    assert mod._aligned_values(agp([0.6, 0.5, 0.55], [0.86, 0.89])) == [0.86, 0.89]
    assert mod._aligned_values(agp([0.6, 0.5], [])) == []
    assert mod._aligned_values([0.1, 0.2]) == [0.1, 0.2]
    assert mod._aligned_values([]) == []


def test_aligned_values_stay_aligned_after_a_stray_unpruned_report() -> None:
    h = agp([0.5], [0.8, 0.82])
    h[2] = {**h[2], "pruned": False}
    assert mod._aligned_values(h) == [0.8, 0.82]


def test_worst_to_finite_maps_nan_to_the_worst_end() -> None:
    assert mod._worst_to_finite([0.5, NAN], maximize=True) == {0: 0.5, 1: -mod._WORST_MAGNITUDE}
    assert mod._worst_to_finite([NAN], maximize=False) == {0: mod._WORST_MAGNITUDE}
    assert mod._worst_to_finite([1e308, -1e308], maximize=True) == {
        0: mod._WORST_MAGNITUDE,
        1: -mod._WORST_MAGNITUDE,
    }


# ---------------------------------------------------------------- options and validator


def test_defaults() -> None:
    assert kept_percentile() == 50.0
    assert kept_percentile(rule="percentile") == 25.0
    assert kept_percentile(rule="percentile", percentile=10) == 10.0
    assert kept_percentile(rule="median", percentile=50) == 50.0


BAD_ARGS = [
    ({"optimize_mode": "max"}, "optimize_mode"),
    ({"rule": "mean"}, "rule"),
    ({"percentile": 0}, "percentile"),
    ({"percentile": 100}, "percentile"),
    ({"percentile": -5.0}, "percentile"),
    ({"percentile": "25"}, "percentile"),
    ({"rule": "median", "percentile": 25}, "percentile"),
    ({"min_trials": -1}, "min_trials"),
    ({"min_trials": 2.0}, "min_trials"),
    ({"min_trials": True}, "min_trials"),
    ({"start_step": -1}, "start_step"),
    ({"start_step": "1"}, "start_step"),
]


@pytest.mark.parametrize(("kwargs", "key"), BAD_ARGS)
def test_validator_rejects_naming_the_key_and_value(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(SchemaError) as info:
        PruneEarlyStopClassArgsValidator().validate_class_args(**kwargs)
    assert key in str(info.value)
    assert repr(kwargs[key]) in str(info.value)


@pytest.mark.parametrize(("kwargs", "key"), BAD_ARGS)
def test_constructor_rejects_naming_the_key_and_value(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        PruneEarlyStopAssessor(**kwargs)


def test_validator_rejects_unknown_keys() -> None:
    with pytest.raises(SchemaError, match="'start_steps'"):
        PruneEarlyStopClassArgsValidator().validate_class_args(start_steps=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"optimize_mode": "minimize", "rule": "percentile", "percentile": 10.5},
        {"rule": "percentile"},
        {"min_trials": 0, "start_step": 0, "percentile": None},
    ],
)
def test_validator_accepts_what_the_constructor_accepts(kwargs: dict[str, Any]) -> None:
    PruneEarlyStopClassArgsValidator().validate_class_args(**kwargs)
    PruneEarlyStopAssessor(**kwargs)


def test_constructor_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        PruneEarlyStopAssessor("maximize")  # type: ignore[misc]


# ---------------------------------------------------------------- rules


def test_agp_dip_before_final_masks_is_never_grounds_to_stop() -> None:
    """The AGP trial that ends best dips while ramping; aligned, it is never stopped."""
    dipping = agp([0.60, 0.50, 0.55], [0.86, 0.90, 0.93])
    ours = PruneEarlyStopAssessor()
    complete(ours, references())
    assert feed(ours, "agp", dipping) == [GOOD] * 6
    # Epoch by epoch (NNI's Medianstop on the `default` values), it would have been killed.
    medianstop = MedianstopAssessor()
    complete(medianstop, [[r["default"] for r in h] for h in references()])
    assert BAD in feed(medianstop, "agp", [r["default"] for r in dipping])


def test_hopeless_agp_trial_is_stopped_after_the_grace_step_only() -> None:
    ours = PruneEarlyStopAssessor(start_step=1)
    complete(ours, references())
    # Terrible during the ramp and on aligned step 0: still Good; aligned step 1 is judged.
    results = feed(ours, "agp", agp([0.1, 0.1, 0.1], [0.5, 0.6, 0.7]))
    assert results == [GOOD, GOOD, GOOD, GOOD, BAD, BAD]


def test_start_step_zero_judges_the_first_aligned_step() -> None:
    ours = PruneEarlyStopAssessor(start_step=0)
    complete(ours, references())
    assert feed(ours, "agp", agp([0.1], [0.5])) == [GOOD, BAD]


def test_level_trial_is_compared_with_agp_references_after_their_ramp() -> None:
    """AGP references are aligned too: a Level trial meets their recovered values."""
    ours = PruneEarlyStopAssessor()
    complete(ours, [agp([0.3, 0.2], [0.85 + 0.01 * i, 0.9 + 0.01 * i, 0.92]) for i in range(5)])
    assert feed(ours, "lvl-good", level([0.88, 0.93, 0.95])) == [GOOD] * 3
    assert feed(ours, "lvl-bad", level([0.40, 0.45, 0.50])) == [GOOD, BAD, BAD]


def test_best_so_far_is_compared_not_the_latest_value() -> None:
    ours = PruneEarlyStopAssessor()
    complete(ours, references())
    # 0.95 at aligned step 1 beats every reference at steps 2-3 even though it later drops.
    assert feed(ours, "t", level([0.5, 0.95, 0.3, 0.3])) == [GOOD] * 4


def test_too_few_references_stop_nothing() -> None:
    ours = PruneEarlyStopAssessor(min_trials=5)
    complete(ours, references(4))
    assert feed(ours, "t", level([0.1, 0.1, 0.1])) == [GOOD] * 3
    complete(ours, references(1), prefix="more")
    assert feed(ours, "u", level([0.1, 0.1, 0.1])) == [GOOD, BAD, BAD]


def test_references_must_reach_the_same_aligned_step() -> None:
    ours = PruneEarlyStopAssessor(min_trials=3)
    short = [level([0.9, 0.9]) for _ in range(3)]  # aligned steps 0-1 only
    complete(ours, short)
    assert feed(ours, "t", level([0.1, 0.1, 0.1])) == [GOOD, BAD, GOOD]


def test_stopped_and_failed_trials_are_not_references() -> None:
    ours = PruneEarlyStopAssessor(min_trials=1)
    feed(ours, "killed", level([0.95, 0.95]))
    ours.trial_end("killed", False)
    assert feed(ours, "t", level([0.1, 0.1])) == [GOOD, GOOD]


def test_minimize_mode() -> None:
    losses = [[1.0 - v for v in REFERENCE_CURVE] for _ in range(5)]
    ours = PruneEarlyStopAssessor(optimize_mode="minimize")
    complete(ours, [level(h) for h in losses])
    assert feed(ours, "low", level([0.15, 0.10, 0.05])) == [GOOD] * 3
    assert feed(ours, "high", level([0.5, 0.5, 0.5])) == [GOOD, BAD, BAD]
    # Maximising the same losses would have stopped the good one instead.
    wrong = PruneEarlyStopAssessor(optimize_mode="maximize")
    complete(wrong, [level(h) for h in losses])
    assert BAD in feed(wrong, "low", level([0.12, 0.10, 0.05]))


def test_percentile_rule_keeps_only_the_top_percent() -> None:
    refs = [level([v, v, v]) for v in (0.5, 0.6, 0.7, 0.8, 0.9)]
    median = PruneEarlyStopAssessor(rule="median")
    top25 = PruneEarlyStopAssessor(rule="percentile", percentile=25)
    top90 = PruneEarlyStopAssessor(rule="percentile", percentile=90)
    for a in (median, top25, top90):
        complete(a, refs)
    trial = level([0.75, 0.75, 0.75])  # above the median 0.7, below the 75th percentile 0.8
    assert feed(median, "t", trial)[-1] is GOOD
    assert feed(top25, "t", trial)[-1] is BAD
    assert feed(top90, "t", level([0.55, 0.55]))[-1] is GOOD


def test_nan_in_the_trial_counts_as_worst() -> None:
    ours = PruneEarlyStopAssessor()
    complete(ours, references())
    assert feed(ours, "all-nan", level([NAN, NAN]))[-1] is BAD
    # A NaN next to a good value does not hide that value.
    assert feed(ours, "some-nan", level([NAN, 0.95, NAN])) == [GOOD] * 3


def test_nan_references_count_as_worst_not_as_missing() -> None:
    ours = PruneEarlyStopAssessor()
    diverged = [level([NAN, NAN, NAN]) for _ in range(3)]
    complete(ours, [*references(2), *diverged])
    # Median of (0.845, 0.855, worst, worst, worst) is worst: a finite 0.5 is not stopped. Were the
    # NaNs ignored (numpy.nanpercentile), the median would be 0.85 and the trial stopped.
    assert feed(ours, "t", level([0.5, 0.5])) == [GOOD, GOOD]


def test_plain_float_histories_are_median_stopping_over_epochs() -> None:
    ours = PruneEarlyStopAssessor()
    complete(ours, [[v + 0.01 * i for v in REFERENCE_CURVE] for i in range(5)])
    assert feed(ours, "good", [0.9, 0.9, 0.9]) == [GOOD] * 3
    assert feed(ours, "bad", [0.1, 0.2, 0.3]) == [GOOD, BAD, BAD]


def test_dicts_without_pruned_key_are_pruned() -> None:
    ours = PruneEarlyStopAssessor()
    complete(ours, [[{"default": v} for v in REFERENCE_CURVE] for _ in range(5)])
    assert feed(ours, "bad", [{"default": 0.1}, {"default": 0.2}]) == [GOOD, BAD]


def test_duplicated_and_reordered_reports_give_the_same_verdict() -> None:
    ours = PruneEarlyStopAssessor()
    complete(ours, references())
    h = agp([0.3], [0.5, 0.6, 0.7])
    assert ours.assess_trial("dup", [*h, h[-1], h[-1]]) is BAD
    assert ours.assess_trial("reordered", [h[0], h[2], h[1]]) is BAD
    assert ours.assess_trial("dup-early", [h[0], h[1], h[1]]) is GOOD  # still aligned step 0


def test_ended_trial_is_never_judged_again() -> None:
    ours = PruneEarlyStopAssessor()
    complete(ours, references())
    assert ours.assess_trial("t", level([0.1, 0.1])) is BAD
    ours.trial_end("t", False)
    assert ours.assess_trial("t", level([0.1, 0.1, 0.1])) is GOOD
    ours.trial_end("late", True)  # ended without reports: harmless, and never judged afterwards
    assert ours.assess_trial("late", level([0.1, 0.1])) is GOOD


def test_stale_shorter_history_does_not_shrink_the_reference() -> None:
    ours = PruneEarlyStopAssessor(min_trials=1)
    ours.assess_trial("r", level([0.9, 0.9, 0.9]))
    ours.assess_trial("r", level([0.9]))
    ours.trial_end("r", True)
    assert ours.assess_trial("t", level([0.1, 0.1, 0.1])) is BAD


def test_assessment_errors_are_logged_and_keep_the_trial(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ours = PruneEarlyStopAssessor()

    def boom(*_: object) -> bool:
        raise RuntimeError("boom")

    monkeypatch.setattr(ours._pruner, "prune", boom)
    with caplog.at_level(logging.ERROR, logger=mod.__name__):
        assert ours.assess_trial("t", [0.5]) is GOOD
    assert "could not assess trial t" in caplog.text


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=3)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
entries = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"default": json_values},
        optional={"epoch": json_values, "pruned": json_values, "sparsity": json_values},
    ),
)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(entries, min_size=1, max_size=6), min_size=1, max_size=8))
def test_never_raises_on_arbitrary_json_histories(histories: list[list[Any]]) -> None:
    ours = PruneEarlyStopAssessor(min_trials=1, start_step=0)
    for i, history in enumerate(histories):
        for result in feed(ours, str(i), history):
            assert result in (GOOD, BAD)
        ours.trial_end(str(i), i % 2 == 0)


# ---------------------------------------------------------------- lifecycle


class FakeDispatcher:
    """The assessor half of ``nni.runtime.msg_dispatcher.MsgDispatcher``, copied in behaviour.

    Metrics carry a per-trial sequence number and may arrive duplicated or out of order; the
    assessor sees the contiguous prefix of the history each time it grows, is never called for a
    trial that ended, and hears ``trial_end`` only for trials that reported something.
    """

    def __init__(self, assessor: Any) -> None:
        self.assessor = assessor
        self.histories: dict[str, dict[int, Any]] = {}
        self.ended: set[str] = set()
        self.killed: list[str] = []
        self.calls = 0

    def metric(self, trial_id: str, sequence: int, value: Any) -> None:
        if trial_id in self.ended:
            return
        history = self.histories.setdefault(trial_id, {})
        history[sequence] = value
        ordered = []
        while len(ordered) in history:
            ordered.append(history[len(ordered)])
        if len(ordered) < sequence:  # a gap: wait for the missing report
            return
        self.calls += 1
        if self.assessor.assess_trial(trial_id, ordered) is BAD and trial_id not in self.killed:
            self.killed.append(trial_id)

    def end(self, trial_id: str, event: str) -> None:
        self.ended.add(trial_id)
        if self.histories.pop(trial_id, None) is not None:
            self.assessor.trial_end(trial_id, event == "SUCCEEDED")


def test_lifecycle_replay_with_concurrency_duplicates_and_reordering() -> None:
    """Ten trials, two in flight, replayed through a dispatcher-shaped driver."""
    good_refs = [level([0.80 + 0.01 * i, 0.85, 0.88, 0.90]) for i in range(3)]
    agp_refs = [agp([0.4, 0.3], [0.86, 0.89, 0.92, 0.93]) for _ in range(2)]
    winner = agp([0.2, 0.1], [0.87, 0.92, 0.95, 0.97])  # dips hardest, ends best
    loser = level([0.5, 0.55, 0.6, 0.62])
    loser_agp = agp([0.4, 0.3], [0.5, 0.5, 0.55, 0.6])
    trials = {
        "A": good_refs[0],
        "B": good_refs[1],
        "C": agp_refs[0],
        "D": good_refs[2],
        "E": agp_refs[1],
        "F": winner,
        "G": loser,
        "H": loser_agp,
        "I": [],
        "J": level([0.90, 0.93, 0.95, 0.96]),
    }
    d = FakeDispatcher(PruneEarlyStopAssessor(min_trials=5, start_step=1))
    ids = list(trials)
    for pair in (ids[0:2], ids[2:4], ids[4:6], ids[6:8], ids[8:10]):
        longest = max(len(trials[t]) for t in pair)
        for step in range(longest):
            for t in pair:
                if t in d.killed or step >= len(trials[t]):
                    continue
                if t == "J" and step == 1:  # J's reports 1 and 2 arrive swapped, 2 duplicated
                    d.metric(t, 2, trials[t][2])
                    d.metric(t, 2, trials[t][2])
                    d.metric(t, 1, trials[t][1])
                elif not (t == "J" and step == 2):
                    d.metric(t, step, trials[t][step])
        for t in pair:
            d.end(t, "EARLY_STOPPED" if t in d.killed else "SUCCEEDED")
    assert d.killed == ["G", "H"]
    assert "F" not in d.killed
    # Only trials that reported are ended in the assessor; I never reported anything.
    assert "I" not in d.assessor._running and "I" in d.ended
    # A late metric of a stopped trial never reaches the assessor again.
    before = d.calls
    d.metric("G", 4, 0.1)
    assert d.calls == before


def test_replay_benchmark_accounting() -> None:
    """The benchmark's simulated experiment charges epochs and keeps the best as described."""
    trials = [RecordedTrial("level", level([v] * 4), v) for v in (0.9, 0.5, 0.8, 0.95)]
    none = replay(trials, Contender("none", None))
    assert (none.epochs_used, none.epochs_total, none.stopped) == (16, 16, [])
    assert none.best_survived and none.best_kept == 0.95

    class StopHalf(PruneEarlyStopAssessor):
        def assess_trial(self, trial_job_id: str, trial_history: list[Any]) -> AssessResult:
            return BAD if trial_job_id == "1" and len(trial_history) == 2 else GOOD

    outcome = replay(trials, Contender("stop trial 1", StopHalf))
    assert outcome.stopped == [1] and outcome.epochs_used == 14
    assert outcome.best_survived and outcome.best_kept == 0.95


def test_assessor_module_does_not_import_torch() -> None:
    code = "import sys, nni_prune_tuners.assessor; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
