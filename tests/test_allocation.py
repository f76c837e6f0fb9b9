"""The allocation engine: budget solver, posterior, proposals, and the sampler inside PruneTPE."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import nni
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nni_prune_tuners import allocation
from nni_prune_tuners.allocation import AllocationSampler
from nni_prune_tuners.budget import LinearBudget
from nni_prune_tuners.dedup import SeenConfigurations
from nni_prune_tuners.tuner import PruneTPETuner
from tests.profiles import analytic_profile, write_profile
from trials import analytic_trial


def brute_force(values: np.ndarray, grids: np.ndarray, weights: np.ndarray, budget: float) -> float:
    best = -np.inf
    layers = np.arange(len(weights))
    for combo in itertools.product(range(grids.shape[1]), repeat=len(weights)):
        if np.dot(weights, grids[layers, combo]) >= budget - 1e-9:
            best = max(best, float(values[layers, combo].sum()))
    return best


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(2, 5))
@example(10401492, 1, 2)  # the budget equals the least choice up to 5.6e-17 of rounding
def test_solve_budget_matches_brute_force(seed: int, layers: int, points: int) -> None:
    rng = np.random.RandomState(seed)
    # grid values on twentieths and integer weights: costs are whole budget units, so exact
    grids = np.array([np.sort(rng.choice(19, points, replace=False)) / 20 for _ in range(layers)])
    weights = rng.randint(1, 5, layers).astype(float)
    values = rng.normal(size=(layers, points))
    budget = rng.randint(1, int(20 * np.dot(weights, grids.max(axis=1))) + 1) / 20
    slack = budget - float(np.dot(weights, grids.min(axis=1)))
    units = max(1, round(20 * slack))  # costs above the least each layer prunes: whole units
    chosen = allocation.solve_budget(values, grids, weights, budget, units=units)
    assert np.dot(weights, chosen) >= budget - 1e-9
    got = sum(values[i, list(grids[i]).index(chosen[i])] for i in range(layers))
    assert got == pytest.approx(brute_force(values, grids, weights, budget), abs=1e-9)


def test_solve_budget_says_when_the_budget_is_out_of_reach() -> None:
    grids = np.array([[0.1, 0.2], [0.1, 0.3]])
    with pytest.raises(ValueError, match="no allowed allocation"):
        allocation.solve_budget(np.zeros((2, 2)), grids, np.ones(2), 0.6)


def block(layers: int = 6, target: float = 0.9, seed: int = 0) -> LinearBudget:
    rng = np.random.RandomState(seed)
    weights = np.exp(rng.uniform(np.log(500), np.log(5e5), layers))
    return LinearBudget(weights, np.full(layers, 0.05), np.full(layers, 0.98),
                            float(weights.sum()), target)


def test_proposals_meet_the_target_inside_the_bounds_and_local_ones_stay_near() -> None:
    budget = block()
    rng = np.random.RandomState(1)
    samples = np.array([budget.rescale(rng.uniform(0.2, 1.0, 6)) for _ in range(12)])
    posterior = allocation.fit(samples, rng.normal(size=12))
    gaps: dict[bool, list[float]] = {False: [], True: []}
    for local in (False, True):
        for _ in range(20):
            s = allocation.propose(budget, (), posterior, rng, incumbent=samples[0] if local else None)
            assert np.dot(budget.weights, s) / budget.total == pytest.approx(0.9, abs=1e-9)
            assert np.all(s >= 0.05 - 1e-12) and np.all(s <= 0.98 + 1e-12)
            distance = allocation.log_density(s) - allocation.log_density(samples[0])
            gaps[local].append(float(np.abs(distance).max()))
    assert np.mean(gaps[True]) < 0.5 * np.mean(gaps[False])


def test_few_layer_moves_meet_the_target_and_follow_the_model() -> None:
    """Few-layer moves stay at the target near the incumbent; ranked by a model in which
    layer 0 is fragile, they take sparsity from layer 0 rather than give it."""
    budget = block(layers=10)
    rng = np.random.RandomState(2)
    samples = np.array([budget.rescale(rng.uniform(0.2, 1.0, 10)) for _ in range(40)])
    fragile = -10 * allocation.log_density(samples[:, 0]) - allocation.log_density(samples).sum(1)
    incumbent = budget.rescale(np.full(10, 0.9))
    shifts: dict[bool, list[float]] = {False: [], True: []}
    for ranked in (False, True):
        posterior = allocation.fit(samples, fragile) if ranked else None
        for _ in range(30):
            s = allocation.few_layer_move(budget, (), posterior, rng, incumbent, step=0.2)
            assert np.dot(budget.weights, s) / budget.total == pytest.approx(0.9, abs=1e-9)
            assert np.all(s >= 0.05 - 1e-12) and np.all(s <= 0.98 + 1e-12)
            shift = allocation.log_density(s) - allocation.log_density(incumbent)
            assert np.abs(shift).max() < 1.5
            shifts[ranked].append(float(shift[0]))
    assert np.mean(shifts[True]) < np.mean(shifts[False]) - 0.05
    assert np.mean(shifts[True]) < 0


def test_posterior_learns_an_additive_response() -> None:
    """More data: predictions approach the truth and the posterior draws narrow."""
    rng = np.random.RandomState(3)
    budget = block(layers=5)
    sensitivity = np.array([3.0, 0.2, 1.0, 0.05, 0.5])

    def truth(s: np.ndarray) -> np.ndarray:
        return -(allocation.log_density(s) ** 2 * sensitivity).sum(axis=-1)

    test = np.array([budget.rescale(rng.uniform(0.2, 1.0, 5)) for _ in range(50)])
    errors, spreads = [], []
    for n in (8, 120):
        samples = np.array([budget.rescale(rng.uniform(0.2, 1.0, 5)) for _ in range(n)])
        posterior = allocation.fit(samples, truth(samples))
        features = allocation.design(test)
        predicted = posterior.mean + posterior.scale * features @ posterior.coefficients
        errors.append(float(np.abs(predicted - truth(test)).mean()))
        draws = np.array([features @ posterior.draw(rng) for _ in range(30)]) * posterior.scale
        spreads.append(float(draws.std(axis=0).mean()))
    assert errors[1] < 0.5 * errors[0]
    assert spreads[1] < 0.5 * spreads[0]


def test_thompson_proposals_find_the_sensitive_layer() -> None:
    """Fitted on a response where layer 0 is fragile, proposals keep layer 0 sparser than uniform."""
    rng = np.random.RandomState(4)
    budget = block(layers=4)
    samples = np.array([budget.rescale(rng.uniform(0.2, 1.0, 4)) for _ in range(40)])
    values = -10 * allocation.log_density(samples[:, 0]) ** 2 - allocation.log_density(samples).sum(1)
    posterior = allocation.fit(samples, values)
    proposals = np.array([allocation.propose(budget, (), posterior, rng) for _ in range(10)])
    assert np.median(proposals[:, 0]) < np.median(samples[:, 0])


def test_choose_move_follows_what_paid_off() -> None:
    rng = np.random.RandomState(0)
    unknown = [allocation.choose_move({}, rng) for _ in range(400)]
    assert 0.4 < unknown.count("local") / len(unknown) < 0.6
    tallies = {"global": (1, 12), "local": (10, 12)}
    assert [allocation.choose_move(tallies, rng) for _ in range(200)].count("local") >= 190
    with pytest.raises(ValueError, match="local: 5 successes of 3"):
        allocation.choose_move({"local": (5, 3)}, rng)


def test_local_moves_take_over_where_global_proposals_fall_off_a_cliff() -> None:
    """Like a network at chance once any layer is over-pruned: only the neighbourhood of the
    warm start (uniform 0.9) is any good, so global proposals fail and local ones pay off."""
    layers = [f"l{i}" for i in range(8)]
    tuner = PruneTPETuner(seed=1, target_sparsity=0.9,
                          layer_params={name: 1000 * (i + 1) for i, name in enumerate(layers)})
    tuner.update_search_space({f"{name}_sparsity": {"_type": "uniform", "_value": [0.05, 0.995]}
                               for name in layers})
    for i in range(40):
        params = tuner.generate_parameters(i)
        s = np.array([params[f"{name}_sparsity"] for name in layers])
        distance = np.abs(allocation.log_density(s) - allocation.log_density([0.9])).max()
        tuner.receive_trial_result(i, params, 0.1 if distance > 0.5 else 0.9 - 0.1 * distance)
    sampler = tuner.study.sampler
    assert isinstance(sampler, AllocationSampler)
    assert sampler.moves["local"] >= 3 * sampler.moves["global"]


def test_local_allocation_proposes_only_few_layer_moves_after_the_warm_starts() -> None:
    """``allocation: local`` on the same cliff: no global proposal, and each move changes few
    layers by much (the rescale shifts the others a little)."""
    layers = [f"l{i}" for i in range(12)]
    tuner = PruneTPETuner(seed=1, target_sparsity=0.9, allocation="local",
                          layer_params={name: 1000 * (i + 1) for i, name in enumerate(layers)})
    tuner.update_search_space({f"{name}_sparsity": {"_type": "uniform", "_value": [0.05, 0.995]}
                               for name in layers})
    best: tuple[float, np.ndarray] | None = None
    moved = []
    for i in range(30):
        params = tuner.generate_parameters(i)
        s = allocation.log_density([params[f"{name}_sparsity"] for name in layers])
        distance = np.abs(s - allocation.log_density([0.9])).max()
        value = 0.1 if distance > 0.5 else 0.9 - 0.1 * distance
        tuner.receive_trial_result(i, params, value)
        if best is not None:
            moved.append(int((np.abs(s - best[1]) > 0.02).sum()))
        if best is None or value > best[0]:
            best = (value, s)
    sampler = tuner.study.sampler
    assert isinstance(sampler, AllocationSampler)
    assert sampler.moves == {"global": 0, "local": 29}
    assert np.median(moved) <= 6


def test_a_branch_behind_the_other_still_reaches_its_optimum() -> None:
    """Seed 3 of the analytic landscape: Level leads early (91.9, its optimum) and AGP, whose
    optimum is 93.7, starts from 81.7. Local moves alone climb AGP too slowly to overtake within
    60 trials; a branch behind the best gets the model's global proposals."""
    from benchmarks.driver import Evaluation, drive
    from benchmarks.landscapes import landscape, layer_sparsities

    land = landscape("analytic")

    def trial(params: Any) -> Evaluation:
        method, layers = layer_sparsities(params)
        return Evaluation(land.evaluate(params), land.target, method or "", layers)

    tuner = PruneTPETuner(seed=3, target_sparsity=land.target, **land.constraint)
    run = drive(tuner, land.space, trial, budget=60, concurrency=2)
    best = max(run.trials, key=lambda t: t.accuracy)
    assert best.method == "agp" and best.accuracy > 0.935


def test_seen_configurations_compare_within_tolerance() -> None:
    seen = SeenConfigurations()
    seen.add({"m": {"_name": "agp", "a_sparsity": 0.5, "b_sparsity": 0.25}, "lr": 0.1})
    assert {"m": {"_name": "agp", "a_sparsity": 0.5 + 5e-7, "b_sparsity": 0.25}, "lr": 0.1} in seen
    assert {"m": {"_name": "agp", "a_sparsity": 0.5 + 2e-6, "b_sparsity": 0.25}, "lr": 0.1} not in seen
    assert {"m": {"_name": "level", "a_sparsity": 0.5, "b_sparsity": 0.25}, "lr": 0.1} not in seen
    assert len(seen) == 1


# -- inside PruneTPE ----------------------------------------------------------------------------


TWO_LAYERS = {"prune_method": {"_type": "choice", "_value": [
    {"_name": "agp", "conv0_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]},
     "conv1_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]}},
    {"_name": "level", "conv0_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]},
     "conv1_sparsity": {"_type": "uniform", "_value": [0.01, 0.9]}}]}}


def _values(params: dict[str, Any]) -> tuple[Any, ...]:
    branch = params["prune_method"]
    return (branch["_name"], *(branch[k] for k in sorted(branch) if k != "_name"))


@pytest.mark.parametrize("engine", ["model", "tpe"])
def test_no_repeats_where_rescaling_pins_samples_to_a_corner(engine: str) -> None:
    """The seed's 2-layer branch at 0.85: most raw samples rescale onto the same bound."""
    tuner = PruneTPETuner(seed=0, target_sparsity=0.85, allocation=engine,
                          layer_params={"conv0": 144, "conv1": 4608})
    tuner.update_search_space(TWO_LAYERS)
    proposed = []
    for i in range(40):
        params = tuner.generate_parameters(i)
        tuner.receive_trial_result(i, params, float(np.random.RandomState(i).uniform()))
        proposed.append(_values(params))
    for a, b in itertools.combinations(proposed, 2):
        assert a[0] != b[0] or max(abs(x - y) for x, y in zip(a[1:], b[1:], strict=True)) > 1e-6


def test_a_finite_space_is_proposed_once_each_then_exhausted() -> None:
    space = {"lr": {"_type": "choice", "_value": [0.1, 0.01]},
             "block": {"_type": "choice", "_value": [{"_name": "a", "k": {"_type": "randint",
                                                                          "_value": [0, 3]}},
                                                     {"_name": "b"}]}}
    tuner = PruneTPETuner(seed=1)
    tuner.update_search_space(space)
    seen = []
    for i in range(8):
        params = tuner.generate_parameters(i)
        tuner.receive_trial_result(i, params, 0.5)
        seen.append(repr(sorted(params.items())))
    assert len(set(seen)) == 8  # 2 learning rates x (3 values of k + branch b)
    with pytest.raises(nni.NoMoreTrialError):
        tuner.generate_parameters(8)


def test_nnis_own_finite_dedup_case() -> None:
    """NNI's test_hpo_dedup space (its sigma-0 normal aside): six configurations, then exhausted."""
    tuner = PruneTPETuner(seed=5)
    tuner.update_search_space({"x": {"_type": "choice", "_value": ["a", "b"]},
                               "y": {"_type": "quniform", "_value": [0, 1, 0.6]}})
    seen = set()
    for i in range(6):
        params = tuner.generate_parameters(i)
        tuner.receive_trial_result(i, params, 1.0)
        seen.add((params["x"], params["y"]))
    assert seen == {(x, y) for x in "ab" for y in (0.0, 0.6, 1.0)}
    with pytest.raises(nni.NoMoreTrialError):
        tuner.generate_parameters(6)


@pytest.mark.parametrize("engine", ["model", "local"])
def test_four_simultaneous_suggestions_differ_and_spread(tmp_path: Path, engine: str) -> None:
    profile = write_profile(tmp_path / "profile.json")
    tuner = PruneTPETuner(seed=2, target_sparsity=0.9, profile=str(profile), allocation=engine)
    tuner.update_search_space(analytic_trial.search_space())
    for i in range(16):  # the warm starts and a history, finished one by one
        params = tuner.generate_parameters(i)
        method, layers = analytic_trial.parse_parameters(params)
        tuner.receive_trial_result(i, params, analytic_trial.final_accuracy(method, layers))
    batch = [tuner.generate_parameters(100 + i) for i in range(4)]  # four in flight
    vectors = [np.array([b["prune_method"][f"{n}_sparsity"] for n in analytic_trial.LAYERS])
               for b in batch]
    distances = [np.abs(a - b).max() for a, b in itertools.combinations(vectors, 2)]
    assert min(distances) > 0.01


def test_failed_pruned_and_nan_trials_do_not_stop_the_model(tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "profile.json")
    tuner = PruneTPETuner(seed=3, target_sparsity=0.9, profile=str(profile))
    tuner.update_search_space(analytic_trial.search_space())
    for i in range(30):
        params = tuner.generate_parameters(i)
        if i % 5 == 1:
            tuner.trial_end(i, False)  # killed by the assessor or crashed: told PRUNED
            continue
        if i % 5 == 2:
            tuner.receive_trial_result(i, params, float("nan"))
        else:
            method, layers = analytic_trial.parse_parameters(params)
            tuner.receive_trial_result(i, params, analytic_trial.final_accuracy(method, layers))
        tuner.trial_end(i, True)
    states = {t.state.name for t in tuner.study.trials}
    assert {"COMPLETE", "PRUNED", "FAIL"} <= states


# -- sensitivity curves ---------------------------------------------------------------------------


GRID = [0.0, 0.5, 0.8, 0.9, 0.95, 0.98]


def sensitive_profile() -> dict[str, Any]:
    """The analytic profile with one-shot curves: its sensitivities, read off the analytic trial."""
    profile = analytic_profile()
    for layer in profile["layers"]:
        accuracy = [analytic_trial.final_accuracy("level", {layer["name"]: s}) for s in GRID]
        layer["sensitivity"] = {"sparsities": GRID, "accuracy": accuracy}
    return profile


def test_the_sensitivity_allocation_is_the_budget_optimum_of_the_curves() -> None:
    weights = np.array([100.0, 100.0, 800.0])
    prior = allocation.Prior(
        tuple(np.array([0.0, 0.5, 0.9, 0.99]) for _ in range(3)),
        (np.array([0.0, 0.3, 0.6, 0.9]),  # fragile
         np.array([0.0, 0.0, 0.01, 0.02]),  # robust
         np.array([0.0, 0.01, 0.05, 0.3])),
    )
    budget = LinearBudget(weights, np.full(3, 0.0), np.full(3, 0.99), float(weights.sum()), 0.8)
    chosen = allocation.sensitivity_allocation(budget, prior)
    assert np.dot(weights, chosen) / weights.sum() == pytest.approx(0.8, abs=1e-9)
    # brute force over a fine grid of the two free layers; the third takes what is left
    best = np.inf
    for a in np.linspace(0.0, 0.99, 100):
        for b in np.linspace(0.0, 0.99, 100):
            c = (0.8 * 1000 - 100 * a - 100 * b) / 800
            if 0.0 <= c <= 0.99:
                best = min(best, float(prior.drop(np.array([a, b, c])).sum()))
    assert float(prior.drop(chosen).sum()) <= best + 1e-3
    assert chosen[0] < chosen[1]  # the fragile layer is kept denser than the robust one


def test_sensitivity_warm_start_and_prior_come_with_curves_in_the_profile(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "profile.json", sensitive_profile())
    tuner = PruneTPETuner(seed=0, target_sparsity=0.9, profile=str(path))
    tuner.update_search_space(analytic_trial.search_space())
    assert tuner.pending_warm_starts == 2 * 5  # five heuristics in two branches
    proposed = [tuner.generate_parameters(i) for i in range(10)]
    accuracies = [analytic_trial.final_accuracy(*analytic_trial.parse_parameters(p))
                  for p in proposed]
    # the curves are the analytic trial's own (additive) damage: their optimum is the best start
    assert max(accuracies) == pytest.approx(max(accuracies[8:]), abs=1e-4)
    plain = PruneTPETuner(seed=0, target_sparsity=0.9, profile=str(write_profile(tmp_path / "p2")))
    plain.update_search_space(analytic_trial.search_space())
    assert plain.pending_warm_starts == 2 * 4
