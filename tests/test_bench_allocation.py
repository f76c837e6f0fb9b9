"""The allocation-search benchmark: landscapes are seeded, optima are right, the harness runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import allocation, best_known
from benchmarks.landscapes import (
    HEURISTICS,
    LANDSCAPES,
    NETWORK_LANDSCAPES,
    NETWORK_VERSION,
    NETWORKS,
    SHIPPED_DIR,
    SYNTHETIC,
    heuristic_allocation,
    landscape,
    layer_sparsities,
    network_factory,
    network_key,
    separable_optimum,
    softplus_excess,
)
from nni_prune_tuners.sparsity import global_sparsity
from nni_prune_tuners.tuner import PruneTPETuner

REPO = Path(__file__).resolve().parents[1]


def _params(allocation_: dict[str, float]) -> dict[str, float]:
    return {f"{layer}_sparsity": value for layer, value in allocation_.items()}


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_landscape_is_deterministic_for_a_seed(name: str) -> None:
    params = _params(landscape(name).allocations["lamp"])
    first = [landscape(name, noise_seed=3).evaluate(params) for _ in range(2)]
    land = landscape(name, noise_seed=3)
    sequence = [land.evaluate(params) for _ in range(3)]
    again = landscape(name, noise_seed=3)
    assert [again.evaluate(params) for _ in range(3)] == sequence
    assert first[0] == first[1] == sequence[0]
    other = landscape(name, noise_seed=4).evaluate(params)
    if name.startswith("interact"):
        assert len(set(sequence)) == 3 and other != sequence[0]
    else:
        assert len(set(sequence)) == 1 and other == sequence[0]


@pytest.mark.parametrize("name", ("analytic", *SYNTHETIC))
def test_optimum_beats_every_heuristic_and_meets_the_target(name: str) -> None:
    land = landscape(name)
    assert land.optimum is not None
    assert set(land.heuristics) == ({"uniform"} if name == "analytic" else set(HEURISTICS))
    assert all(land.optimum >= value for value in land.heuristics.values())
    assert land.optimum > max(land.heuristics.values()) + 0.05  # room for the search
    weights = list(land.weights.values())
    for allocation_ in land.allocations.values():
        values = [allocation_[layer] for layer in land.weights]
        assert global_sparsity(values, weights) == pytest.approx(land.target, abs=1e-9)


def test_separable_optimum_matches_brute_force_on_three_layers() -> None:
    weights = np.array([1000.0, 300.0, 50.0])
    knee = np.array([0.85, 0.7, 0.5])
    sensitivity = np.array([0.5, 2.0, 4.0])
    lo, hi, target = np.full(3, 0.05), np.full(3, 0.99), 0.8

    def damage(s: np.ndarray) -> np.ndarray:
        excess = softplus_excess(s, knee)
        return sensitivity * (excess + 4.0 * excess**2)

    best = separable_optimum(damage, weights, lo, hi, target)
    assert global_sparsity(best, weights) == pytest.approx(target, abs=1e-9)
    assert np.all((best >= lo) & (best <= hi))
    a, b = np.meshgrid(np.linspace(0.05, 0.99, 801), np.linspace(0.05, 0.99, 801))
    first = (target * weights.sum() - weights[1] * a - weights[2] * b) / weights[0]
    grid = np.stack([first, a, b], axis=-1).reshape(-1, 3)
    grid = grid[(grid[:, 0] >= 0.05) & (grid[:, 0] <= 0.99)]
    brute = float(np.min(np.sum(damage(grid), axis=1)))
    found = float(damage(best).sum())
    assert found <= brute + 1e-12
    assert found == pytest.approx(brute, abs=2e-4)


@pytest.mark.parametrize("heuristic", HEURISTICS)
def test_heuristic_allocations_are_prunetpes_warm_starts(heuristic: str) -> None:
    land = landscape("additive-1")
    tuner = PruneTPETuner(optimize_mode="maximize", seed=0, target_sparsity=land.target,
                          warm_start=[heuristic], **land.constraint)
    tuner.update_search_space(land.space)
    _, suggested = layer_sparsities(tuner.generate_parameters(0))
    expected = land.allocations[heuristic]
    assert suggested.keys() == expected.keys()
    assert all(suggested[k] == pytest.approx(expected[k], abs=1e-12) for k in expected)
    assert land.heuristics[heuristic] == pytest.approx(land.evaluate(_params(expected)))


def test_heuristic_allocation_without_a_profile_names_what_is_missing() -> None:
    bounds = np.full(2, 0.0), np.full(2, 0.99)
    with pytest.raises(ValueError, match="lamp"):
        heuristic_allocation("lamp", {"a": 10, "b": 20}, ["a", "b"], *bounds, 0.5)
    with pytest.raises(ValueError, match="'sensitivity'"):
        heuristic_allocation("sensitivity", {"a": 10, "b": 20}, ["a", "b"], *bounds, 0.5)


def test_unknown_landscape_is_named() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        landscape("nope")
    assert set(SYNTHETIC) | set(NETWORK_LANDSCAPES) | {"analytic"} == set(LANDSCAPES)


def test_synthetic_landscapes_do_not_import_torch() -> None:
    code = ("import sys; from benchmarks.landscapes import landscape; "
            "[landscape(n) for n in ('analytic', 'additive-0', 'interact-0')]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_repeats_counts_suggestions_equal_to_an_earlier_one() -> None:
    suggestions = [
        ("agp", [0.5, 0.9]),
        ("agp", [0.5 + 5e-7, 0.9]),  # within 1e-6: a repeat
        ("level", [0.5, 0.9]),  # another branch: new
        ("agp", [0.5, 0.9 + 2e-6]),  # beyond 1e-6: new
        ("level", [0.5, 0.9]),  # a repeat
    ]
    assert allocation.repeats(suggestions) == 2


def _result(name: str, target: float, ours: list[float], theirs: float) -> dict[str, object]:
    stats = {"mean": float(np.mean(ours)), "std": 0.0, "worst": min(ours)}
    return {
        "target": target,
        "heuristics": {"uniform": 0.30, "lamp": 0.40},
        "summary": {
            "prunetpe": {"best": {"60": stats}, "budget": 180},
            "tpe": {"best": {"180": {"mean": theirs, "std": 0.0, "worst": theirs}},
                    "budget": 180},
        },
    }


def test_targets_are_checked_as_the_issue_states_them() -> None:
    lines = allocation.targets({
        "mlp-0.90": _result("mlp-0.90", 0.9, [0.45, 0.42], 0.41),  # +3.5 points, worst above
        "mlp-0.95": _result("mlp-0.95", 0.95, [0.40, 0.40], 0.45),  # not above; below TPE
        "additive-0": _result("additive-0", 0.9, [0.2, 0.2], 0.1),  # only the TPE target
    })
    verdicts = [line.rsplit(": ", 1)[1] for line in lines]
    assert verdicts == ["MET", "MET", "MET", "NOT MET", "NOT MET", "MET"]
    assert any("worst seed@60 42.00" in line for line in lines)


def test_main_runs_end_to_end_and_writes_its_files(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = allocation.main(["--landscapes", "additive-0,interact-1", "--tuners",
                            "prunetpe,prunetpe-tpe,random", "--seeds", "2", "--cap", "random=1",
                            "--budget-cap", "prunetpe-tpe=8", "--budget", "12", "--workers", "1",
                            "--out", str(tmp_path)])
    assert code == 0
    payload = json.loads((tmp_path / "allocation.json").read_text())
    assert set(payload["landscapes"]) == {"additive-0", "interact-1"}
    summary = payload["landscapes"]["additive-0"]["summary"]
    assert set(summary) == {"prunetpe", "prunetpe-tpe", "random"}
    assert len(payload["runs"]) == 2 * (2 + 2 + 1)
    assert summary["random"]["seeds"] == 1
    for run in payload["runs"]:
        assert len(run["accuracies"]) == (8 if run["tuner"] == "prunetpe-tpe" else 12)
        assert run["max_deviation"] < 1e-9
    assert summary["prunetpe-tpe"]["budget"] == 8 and "12" not in summary["prunetpe-tpe"]["best"]
    # every PruneTPE run starts from its warm starts, so by n=4 it has the best heuristic
    best = max(payload["landscapes"]["additive-0"]["heuristics"].values())
    assert summary["prunetpe"]["curve_mean"][3] >= best - 1e-12
    assert payload["landscapes"]["interact-1"]["noise_floor"] == pytest.approx(0.003, rel=0.2)
    markdown = (tmp_path / "allocation.md").read_text()
    assert "**additive-0**" in markdown and "lamp alone" in markdown
    assert "| PruneTPE (allocation: tpe) | " in markdown and "| — |" in markdown
    assert (tmp_path / "allocation.png").stat().st_size > 0
    assert markdown.strip() in capsys.readouterr().out


@pytest.mark.parametrize(("budget", "header"), [
    (60, "| PruneTPE n=20 | PruneTPE n=60 | PruneTPE worst seed n=60 | PruneTPE local n=60 | "
         "PruneTPE tpe n=60 | NNI TPE n=60 | Anneal n=60 | Random n=60 |"),
    (180, "| PruneTPE n=20 | PruneTPE n=60 | PruneTPE worst seed n=60 | PruneTPE n=180 | "
          "PruneTPE local n=60 | PruneTPE tpe n=60 | NNI TPE n=60 | NNI TPE n=180 | "
          "Anneal n=180 | Random n=180 |"),
])
def test_overview_has_each_column_once_whatever_the_budget(budget: int, header: str) -> None:
    stat = {"mean": 0.5, "std": 0.01, "worst": 0.48}
    result = {"heuristics": {"lamp": 0.4}, "optimum": None, "optimum_kind": "exact",
              "summary": {"prunetpe-local": {"budget": 60, "best": {"20": stat, "60": stat}},
                          "tpe": {"budget": budget, "best": {"60": stat, str(budget): stat}}}}
    head, rule, row = allocation.overview({"resnet-0.90": result}).splitlines()
    assert header in head
    assert head.count("|") == rule.count("|") == row.count("|")
    cells = dict(zip(head.split(" | "), row.split(" | "), strict=True))
    assert cells["PruneTPE local n=60"] == cells["NNI TPE n=60"] == "50.00"


def test_reuse_takes_the_other_contenders_from_an_earlier_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    earlier = tmp_path / "earlier"
    common = ["--landscapes", "additive-0", "--seeds", "2", "--budget", "10", "--workers", "1"]
    assert allocation.main([*common, "--tuners", "prunetpe,random", "--out", str(earlier)]) == 0
    later = tmp_path / "later"
    assert allocation.main([*common, "--tuners", "prunetpe", "--budget", "6", "--reuse",
                            str(earlier / "allocation.json"), "--out", str(later)]) == 0
    before = json.loads((earlier / "allocation.json").read_text())["landscapes"]["additive-0"]
    after = json.loads((later / "allocation.json").read_text())
    summary = after["landscapes"]["additive-0"]["summary"]
    assert summary["random"] == before["summary"]["random"]  # reused as it was, budget 10
    assert summary["prunetpe"]["budget"] == 6  # run anew
    assert "--tuners prunetpe,random" in after["reused_from"]
    assert "the runs of random are reused from" in (later / "allocation.md").read_text()
    with pytest.raises(SystemExit):
        allocation.main([*common, "--reuse", str(tmp_path / "missing.json"), "--out", str(later)])
    assert "--reuse" in capsys.readouterr().err


@pytest.mark.parametrize("argv", (["--landscapes", "additive-9"], ["--cap", "tpe=0"],
                                  ["--cap", "nope=3"], ["--budget-cap", "tpe=x"]))
def test_main_rejects_bad_options(tmp_path: Path, argv: list[str],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        allocation.main([*argv, "--out", str(tmp_path)])
    assert argv[1] in capsys.readouterr().err


@pytest.mark.slow
def test_network_landscape_is_deterministic_and_unchanged_by_evaluations() -> None:
    first = landscape("mlp-0.90")
    params = _params(first.allocations["lamp"])
    scores = [first.evaluate(params) for _ in range(2)]
    first.evaluate(_params({layer: 0.99 for layer in first.weights}))  # prunes the shared model
    second = landscape("mlp-0.90")
    assert second.heuristics == first.heuristics
    assert second.evaluate(params) == scores[0] == scores[1] == first.heuristics["lamp"]
    assert first.optimum is not None and first.optimum >= max(first.heuristics.values())
    assert 0.1 < first.heuristics["lamp"] < 1.0
    # the held-out images are other images: same allocation, another accuracy, and repeatable
    held_out = first.holdout
    assert held_out is not None and set(first.holdout_heuristics) == set(HEURISTICS)
    assert held_out(params) == first.holdout_heuristics["lamp"] == second.holdout_heuristics["lamp"]
    assert held_out(params) != first.heuristics["lamp"]
    assert first.evaluate(params) == scores[0]  # scoring held out leaves validation as it was


def test_synthetic_landscapes_have_nothing_held_out() -> None:
    land = landscape("additive-0")
    assert land.holdout is None and land.holdout_heuristics == {}


def test_the_pick_after_n_trials_is_the_first_with_the_best_validation_accuracy() -> None:
    accuracies = [0.3, 0.5, 0.4, 0.5, 0.7]
    assert allocation.picks(accuracies, [1, 2, 4, 5, 9]) == {1: 0, 2: 1, 4: 1, 5: 4}


def test_holdout_table_sets_validation_beside_held_out_accuracy() -> None:
    stat = {"mean": 0.5, "std": 0.01, "worst": 0.48}
    result = {
        "heuristics": {"uniform": 0.30, "lamp": 0.40},
        "holdout_heuristics": {"uniform": 0.31, "lamp": 0.38},
        "optimum": 0.55,
        "optimum_holdout": 0.52,
        "summary": {"prunetpe": {"best": {"20": stat, "60": stat},
                                 "holdout": {"20": stat, "60": {**stat, "mean": 0.47}}}},
    }
    synthetic = {"heuristics": {"lamp": 0.4}, "holdout_heuristics": {}, "summary": {}}
    table = allocation.holdout_table({"mlp-0.90": result, "additive-0": synthetic})
    row = table.splitlines()[-1]
    assert row == ("| mlp-0.90 | 40.00 → 38.00 (lamp) | 50.00 → 50.00 ± 1.00 (48.00) | "
                   "50.00 → 47.00 ± 1.00 (48.00) | 55.00 → 52.00 |")
    assert "additive-0" not in table
    assert allocation.holdout_table({"additive-0": synthetic}) == ""


@pytest.mark.parametrize("net", NETWORKS)
def test_every_landscape_network_ships_weights_that_fit_it(net: str) -> None:
    """Another machine trains other weights: the benchmark's tables hold only with these."""
    import torch

    from trials import data
    from trials.prune_trial import data_variant

    model = network_factory(net)()
    variant = data_variant(model)
    shipped = SHIPPED_DIR / f"{network_key(net, variant, data.load_split(variant))}.pt"
    state = torch.load(shipped, map_location="cpu", weights_only=True)
    model.load_state_dict(state)  # strict: every tensor present, of the right shape
    assert all(torch.isfinite(value).all() for value in state.values())


def test_resnet20_landscape_network_has_22_layers_and_batchnorm() -> None:
    from torch import nn

    from benchmarks.landscapes import resnet20_digits
    from trials.masking import prunable_layers

    model = resnet20_digits()
    assert len(prunable_layers(model)) == 22
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.slow
def test_best_known_search_starts_at_the_best_heuristic_and_stays_at_the_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    land = landscape("mlp8-0.90")
    value, found = best_known.local_search(land, evaluations=40, seed=3)
    assert value >= max(land.heuristics.values())
    assert best_known.local_search(land, evaluations=40, seed=3) == (value, found)
    assert land.evaluate(_params(found)) == value
    weights = np.array([land.weights[layer] for layer in found])
    values = np.array(list(found.values()))
    assert abs(float(weights @ values / weights.sum()) - 0.9) < 1e-9
    assert np.all((values >= 0.05 - 1e-12) & (values <= 0.995 + 1e-12))

    for name in ("mlp8-0.90", "mlp8-0.95"):
        assert best_known.main(["--landscapes", name, "--evaluations", "5", "--restarts", "2",
                                "--out", str(tmp_path / "best_known.json")]) == 0
    record = best_known.load(tmp_path / "best_known.json")
    assert set(record) == {"mlp8-0.90", "mlp8-0.95"}
    assert record["mlp8-0.90"]["value"] == max(record["mlp8-0.90"]["per_restart"])
    assert "mlp8-0.95: best known" in capsys.readouterr().out
    assert best_known.of(land, record) == record["mlp8-0.90"]

    record["mlp8-0.90"]["network"] = "mlp8_digits1077-360_v1"  # found on other weights
    assert best_known.of(land, record) is None
    assert land.network is not None and land.network.endswith(f"_v{NETWORK_VERSION}")


def test_roughness_separates_the_smooth_landscape_from_its_noise() -> None:
    from benchmarks.roughness import roughness

    i, j = np.indices((12, 12))
    plane = 0.4 + 0.01 * i + 0.002 * j
    assert roughness(plane) == pytest.approx((0.0, 0.4 + 0.01 * 9 + 0.002 * 9))
    checkerboard = plane + 0.05 * np.where((i + j) % 2, 1.0, -1.0)
    sd, smooth = roughness(checkerboard)
    assert sd == pytest.approx(0.96 * 0.05)  # a 5x5 window holds 13 of the centre's sign, 12 not
    assert smooth == pytest.approx(0.4 + 0.01 * 9 + 0.002 * 8 + 0.05 / 25)  # centre (9, 8): +1
    outside = plane.copy()
    outside[:, 6:] = np.nan  # beyond the budget's bounds: only whole neighbourhoods count
    assert roughness(outside)[1] == pytest.approx(0.4 + 0.01 * 9 + 0.002 * 3)
    for nothing_whole in (np.full((4, 4), 0.5), np.where(i % 4 == 0, np.nan, plane)):
        with pytest.raises(ValueError, match="neighbourhood"):
            roughness(nothing_whole)


def test_roughness_probe_reports_a_three_layer_network(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import roughness

    assert roughness.main(["--landscapes", "mlp8-0.90", "--points", "6", "--span", "0.2"]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| mlp8-0.90 | 91.89 |")  # ERK's 88.89 + 3
    with pytest.raises(SystemExit):
        roughness.main(["--landscapes", "resnet-0.90"])
