"""The proxy as a second fidelity: a term of the allocation model whose weight the trials set.

Synthetic landscapes with a known truth: a proxy that predicts the fine-tuned metric gets a large
weight from a few trials, one that is noise or ranks by something else ends near zero (issue #26).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nni_prune_tuners import allocation, proxy
from nni_prune_tuners.budget import LinearBudget
from nni_prune_tuners.proxy import PROXY_MARGIN, proxy_separates
from nni_prune_tuners.sparsity import global_sparsity
from nni_prune_tuners.tuner import PruneTPETuner
from tests.profiles import analytic_profile, write_profile
from trials import analytic_trial

WEIGHTS = np.array([100.0, 400.0, 800.0, 1600.0, 400.0, 100.0])
LO, HI = np.zeros(6), np.full(6, 0.98)
BLOCK = LinearBudget(WEIGHTS, LO, HI, float(WEIGHTS.sum()), 0.8)
SENSITIVITY = np.array([3.0, 0.5, 0.2, 0.1, 0.6, 4.0])
#: Another network's sensitivities: a proxy that ranks by these predicts nothing here.
UNRELATED = np.array([0.2, 3.0, 0.1, 4.0, 0.5, 0.3])


def _metric(s: np.ndarray, sensitivity: np.ndarray) -> np.ndarray:
    return 0.95 - 0.01 * (allocation.log_density(s) ** 2 * sensitivity).sum(axis=-1)


def _allocations(rng: np.random.RandomState, n: int) -> np.ndarray:
    return np.array([BLOCK.rescale(rng.uniform(0.3, 0.97, len(WEIGHTS))) for _ in range(n)])


def _weight(proxy_scores: np.ndarray, proxy_at: np.ndarray, trials: np.ndarray,
            values: np.ndarray) -> float:
    term = allocation.proxy_term(proxy_at, proxy_scores, LO, HI)
    assert term is not None
    return float(allocation.fit(trials, values, terms=(term,)).term_coefficients[0])


@pytest.mark.parametrize("seed", range(5))
def test_the_trials_give_weight_to_a_proxy_that_predicts_and_none_to_one_that_does_not(
    seed: int,
) -> None:
    rng = np.random.RandomState(seed)
    proxy_at = _allocations(rng, 60)
    trials = _allocations(rng, 30)
    values = _metric(trials, SENSITIVITY) + rng.normal(0.0, 0.003, len(trials))
    # a one-shot proxy: another scale and offset, a little noise of its own
    predicts = 0.5 * _metric(proxy_at, SENSITIVITY) + rng.normal(0.0, 0.002, len(proxy_at))
    noise = rng.normal(0.0, 1.0, len(proxy_at))
    unrelated = _metric(proxy_at, UNRELATED)
    for n in (10, 30):
        assert _weight(predicts, proxy_at, trials[:n], values[:n]) > 0.5
    assert abs(_weight(noise, proxy_at, trials, values)) < 0.25
    assert abs(_weight(unrelated, proxy_at, trials, values)) < 0.25


def test_the_term_is_unitless() -> None:
    """Accuracy in percent or as a fraction, shifted or not: the same term."""
    rng = np.random.RandomState(0)
    at = _allocations(rng, 40)
    scores = _metric(at, SENSITIVITY)
    fraction = allocation.proxy_term(at, scores, LO, HI)
    percent = allocation.proxy_term(at, 100.0 * scores - 7.0, LO, HI)
    assert fraction is not None and percent is not None
    for a, b in zip(fraction.drops, percent.drops, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-9)
    assert not fraction.metric_units and fraction.mean == 0.0


def test_a_flat_proxy_or_a_single_evaluation_is_no_term() -> None:
    at = _allocations(np.random.RandomState(1), 20)
    assert allocation.proxy_term(at, np.full(20, 0.7), LO, HI) is None
    assert allocation.proxy_term(at[:1], np.array([0.7]), LO, HI) is None


def test_proposals_with_the_term_meet_the_target() -> None:
    rng = np.random.RandomState(2)
    at = _allocations(rng, 40)
    term = allocation.proxy_term(at, _metric(at, SENSITIVITY), LO, HI)
    assert term is not None
    trials = _allocations(rng, 8)
    posterior = allocation.fit(trials, _metric(trials, SENSITIVITY), terms=(term,))
    for fitted in (None, posterior):
        for incumbent in (None, trials[0]):
            s = allocation.propose(BLOCK, (term,), fitted, rng, incumbent=incumbent)
            assert global_sparsity(s, WEIGHTS) == pytest.approx(0.8, abs=1e-9)
            assert np.all(s >= LO - 1e-12) and np.all(s <= HI + 1e-12)
        s = allocation.few_layer_move(BLOCK, (term,), fitted, rng, trials[0], step=0.2)
        assert global_sparsity(s, WEIGHTS) == pytest.approx(0.8, abs=1e-9)


# -- in the tuner ----------------------------------------------------------------------------------

TARGET = 0.9
LAYERS = list(analytic_trial.LAYERS)
SPACE = {f"{name}_sparsity": {"_type": "uniform", "_value": [0.05, 0.98]} for name in LAYERS}
PARAMS = np.array([params for params, _ in analytic_trial.LAYERS.values()], dtype=float)


def _analytic_accuracy(sparsities: dict[str, float]) -> float:
    return float(analytic_trial.final_accuracy("level", sparsities))


def _presearched_profile(evaluations: int) -> dict[str, Any]:
    """The analytic profile with proxy evaluations scored by the analytic trial itself."""
    rng = np.random.RandomState(4)
    rows = []
    block = LinearBudget(PARAMS, np.full(len(LAYERS), 0.05), np.full(len(LAYERS), 0.98),
                             float(PARAMS.sum()), TARGET)
    for _ in range(evaluations):
        s = block.rescale(rng.uniform(0.5, 0.98, len(LAYERS)))
        sparsities = dict(zip(LAYERS, (float(v) for v in s), strict=True))
        rows.append({"sparsities": sparsities, "score": _analytic_accuracy(sparsities)})
    data = analytic_profile()
    data["proxy"] = {"target": TARGET, "weight_by": "params", "evaluations": rows,
                     "finalists": [rows[0]["sparsities"]]}
    return data


def _tuner(tmp_path: Path, **class_args: Any) -> PruneTPETuner:
    path = write_profile(tmp_path / "profile.json", _presearched_profile(30))
    tuner = PruneTPETuner(target_sparsity=TARGET, profile=str(path), seed=5, **class_args)
    tuner.update_search_space(SPACE)
    return tuner


@pytest.mark.parametrize(("class_args", "term"), [
    ({}, True), ({"allocation": "local"}, True), ({"allocation": "tpe"}, False),
    ({"proxy": False}, False),
])
def test_the_tuner_makes_the_evaluations_a_term_where_the_model_proposes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, class_args: dict[str, Any], term: bool
) -> None:
    with caplog.at_level(logging.INFO, logger="nni_prune_tuners"):
        _tuner(tmp_path, **class_args)
    said = "the proxy's 30 evaluations are a term of the allocation model; the trials set its weight"
    assert any(said in r.getMessage() for r in caplog.records) == term, caplog.text


def test_evaluations_that_miss_a_layer_of_the_branch_are_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _presearched_profile(10)
    for row in data["proxy"]["evaluations"]:
        row["sparsities"].pop("fc")
    path = write_profile(tmp_path / "profile.json", data)
    with caplog.at_level(logging.INFO, logger="nni_prune_tuners"):
        PruneTPETuner(target_sparsity=TARGET, profile=str(path), seed=5).update_search_space(SPACE)
    assert "the proxy evaluations do not cover its layers" in caplog.text


def test_branches_over_the_same_layers_and_bounds_share_one_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fits = []

    def counted(*args: Any, **kwargs: Any) -> allocation.Prior | None:
        fits.append(args)
        return real(*args, **kwargs)

    real = allocation.proxy_term
    monkeypatch.setattr(proxy, "proxy_term", counted)
    path = write_profile(tmp_path / "profile.json", _presearched_profile(10))
    branches = [{"_name": method, **SPACE} for method in ("agp", "level")]
    narrower = {"_name": "narrow", **SPACE,
                "fc_sparsity": {"_type": "uniform", "_value": [0.05, 0.9]}}
    tuner = PruneTPETuner(target_sparsity=TARGET, profile=str(path), seed=5)
    tuner.update_search_space({"prune_method": {"_type": "choice", "_value": branches}})
    assert len(fits) == 1
    tuner.update_search_space({"prune_method": {"_type": "choice",
                                                "_value": [*branches, narrower]}})
    assert len(fits) == 2  # other bounds: a fit of its own; the others are kept
    agp, level, narrow = (branch.proxy for branch in tuner.branches)
    assert agp is level and narrow is not agp


def _heuristic_allocations(tmp_path: Path) -> dict[str, dict[str, float]]:
    """The warm starts PruneTPE proposes without presearch, by heuristic."""
    plain = write_profile(tmp_path / "plain.json", analytic_profile())
    without = PruneTPETuner(target_sparsity=TARGET, profile=str(plain), seed=5)
    without.update_search_space(SPACE)
    return {w.heuristic: dict(w.sparsities) for w in without.warm_starts}


def test_heuristics_the_proxy_scored_below_every_finalist_are_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    heuristics = _heuristic_allocations(tmp_path)
    assert len(heuristics) >= 3
    data = _presearched_profile(2)  # two random allocations: the finalists, scored 0.5 and 0.6
    finalists = [row["sparsities"] for row in data["proxy"]["evaluations"]]
    for row, score in zip(data["proxy"]["evaluations"], (0.5, 0.6), strict=True):
        row["score"] = score
    above = "lamp"  # the proxy scored it above a finalist: still worth a trial
    data["proxy"]["evaluations"] += [{"sparsities": s, "score": 0.55 if name == above else 0.1}
                                     for name, s in heuristics.items() if name != "uniform"]
    data["proxy"]["finalists"] = finalists
    path = write_profile(tmp_path / "profile.json", data)
    with caplog.at_level(logging.INFO, logger="nni_prune_tuners"):
        tuner = PruneTPETuner(target_sparsity=TARGET, profile=str(path), seed=5)
        tuner.update_search_space(SPACE)
    # uniform was not scored by the proxy, so nothing says it is beaten
    assert [w.heuristic for w in tuner.warm_starts] == [
        "proxy finalist 1", "proxy finalist 2", "uniform", above]
    assert "the erk warm start is left out: the proxy scored it 0.1, clearly below each of " \
           "its finalists (0.5 at least)" in caplog.text
    with caplog.at_level(logging.INFO, logger="nni_prune_tuners"):
        kept = PruneTPETuner(target_sparsity=TARGET, profile=str(path), seed=5, proxy=False)
        kept.update_search_space(SPACE)
    assert [w.heuristic for w in kept.warm_starts] == list(heuristics)


@pytest.mark.parametrize(("higher", "lower", "dense", "separates"), [
    (0.6, 0.5, None, True),      # no dense score: any gap
    (0.5, 0.5, None, False),
    (0.128, 0.087, 0.936, False),  # near chance: 4 points of an 85-point gap
    (0.78, 0.54, 0.95, True),    # a quarter of the way to dense
    (0.5 + PROXY_MARGIN * 0.4, 0.5, 0.9, True),  # exactly the margin
    (0.6, 0.5, 0.4, True),       # scores above dense: the margin has nothing to measure
    (0.4, 0.5, 0.9, False),
])
def test_a_proxy_difference_counts_from_a_tenth_of_the_way_to_dense(
    higher: float, lower: float, dense: float | None, separates: bool
) -> None:
    assert proxy_separates(higher, lower, dense=dense) is separates


def _near_chance_profile(tmp_path: Path, heuristics: dict[str, dict[str, float]],
                         *, spread: float) -> Path:
    """Presearch results scored near a floor of 0.1 against a dense 0.94, as the zoo MobileNet's
    at 0.95: two finalists at 0.1 + ``spread``, every heuristic but uniform at 0.1."""
    data = _presearched_profile(2)
    for row in data["proxy"]["evaluations"]:
        row["score"] = 0.1 + spread
    data["proxy"]["finalists"] = [row["sparsities"] for row in data["proxy"]["evaluations"]]
    data["proxy"]["evaluations"] += [{"sparsities": s, "score": 0.1}
                                     for name, s in heuristics.items() if name != "uniform"]
    data["proxy"]["dense_score"] = 0.94
    return write_profile(tmp_path / "profile.json", data)


def test_a_proxy_whose_scores_all_lie_near_the_floor_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    heuristics = _heuristic_allocations(tmp_path)
    path = _near_chance_profile(tmp_path, heuristics, spread=0.03)
    with caplog.at_level(logging.INFO, logger="nni_prune_tuners"):
        tuner = PruneTPETuner(target_sparsity=TARGET, profile=str(path), seed=5)
        tuner.update_search_space(SPACE)
    assert [w.heuristic for w in tuner.warm_starts] == list(heuristics)
    assert all(branch.proxy is None for branch in tuner.branches)
    assert "ranking says nothing" in caplog.text
    # the same finalists far enough above the floor: they come first, and beat the heuristics
    path = _near_chance_profile(tmp_path, heuristics, spread=0.3)
    tuner = PruneTPETuner(target_sparsity=TARGET, profile=str(path), seed=5)
    tuner.update_search_space(SPACE)
    assert [w.heuristic for w in tuner.warm_starts] == [
        "proxy finalist 1", "proxy finalist 2", "uniform"]


def test_a_tuner_with_the_term_runs_on_and_meets_the_target(tmp_path: Path) -> None:
    tuner = _tuner(tmp_path)
    for trial in range(25):
        params = tuner.generate_parameters(trial)
        sparsities = {name: params[f"{name}_sparsity"] for name in LAYERS}
        assert global_sparsity([sparsities[n] for n in LAYERS], PARAMS) == pytest.approx(
            TARGET, abs=1e-9)
        tuner.receive_trial_result(trial, params, _analytic_accuracy(sparsities))
