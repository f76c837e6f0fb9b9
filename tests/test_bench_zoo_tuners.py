"""The zoo fine-tuning comparison: heuristics read off PruneTPE's warm starts, and a tiny real run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks import zoo_tuners


def _trial(parameter_id: int, accuracy: float) -> dict:
    return {"parameter_id": parameter_id, "accuracy": accuracy}


def test_heuristics_are_the_best_branch_of_each_warm_start_in_proposal_order() -> None:
    # completion order differs from proposal order; two branches per heuristic
    ids = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 10]
    accuracies = {i: 0.1 * (i // 2) + (0.01 if i % 2 else 0.0) for i in ids}
    run = {"trials": [_trial(i, accuracies[i]) for i in ids]}
    values = zoo_tuners.heuristics([run, run], branches=2)
    assert list(values) == list(zoo_tuners.WARM_STARTS)
    assert values["uniform"] == [pytest.approx(0.01)] * 2
    assert values["sensitivity"] == [pytest.approx(0.41)] * 2


def test_the_pick_is_the_best_validation_trial_so_far_and_scored_on_test() -> None:
    run = {"trials": [{"accuracy": 0.5, "test_accuracy": 0.40},
                      {"accuracy": 0.7, "test_accuracy": 0.60},
                      {"accuracy": 0.7, "test_accuracy": 0.90},
                      {"accuracy": 0.9, "test_accuracy": 0.20}]}
    assert zoo_tuners.pick_test_accuracy(run, 1) == 0.40
    assert zoo_tuners.pick_test_accuracy(run, 3) == 0.60  # the first of equals
    assert zoo_tuners.pick_test_accuracy(run, 4) == 0.20  # test accuracy is not what picks


def test_a_presearch_on_half_the_validation_split_is_kept_apart() -> None:
    job = zoo_tuners.ZooJob("mlp_digits", "prunetpe-presearch", 0, 20, 2, 0.9, "half")
    assert job.cache_name() == "mlp_digits-0.9-prunetpe-presearch-halfval-seed0-n20-e2.json"
    full = dataclasses.replace(job, proxy_val="all")
    assert full.cache_name() == "mlp_digits-0.9-prunetpe-presearch-seed0-n20-e2.json"
    # a run without presearch does not depend on it: one kept run serves both settings
    alone = dataclasses.replace(job, tuner="prunetpe")
    assert alone.cache_name() == dataclasses.replace(alone, proxy_val="all").cache_name()


def test_presearch_cost_is_in_units_of_the_same_runs_trials() -> None:
    runs = [{"presearch_seconds": 30.0, "trial_seconds": 100.0, "trials": [{}] * 10},
            {"presearch_seconds": 10.0, "trial_seconds": 50.0, "trials": [{}] * 10}]
    assert zoo_tuners.presearch_cost(runs) == {"mean": 2.5, "min": 2.0, "max": 3.0}
    assert zoo_tuners.presearch_cost([{"presearch_seconds": None}]) is None


@pytest.mark.slow
def test_a_tiny_run_on_the_mlp(tmp_path: Path) -> None:
    argv = ["--models", "mlp_digits", "--seeds", "1", "--budget", "10", "--workers", "1",
            "--out", str(tmp_path), "--cache", str(tmp_path / "runs")]
    assert zoo_tuners.main(argv) == 0
    payload = json.loads((tmp_path / "zoo_tuners.json").read_text())
    summary = payload["models"]["mlp_digits"]["summary"]
    assert set(summary) == {"prunetpe", "tpe"}
    assert all(s["violation_rate"] == 0.0 for s in summary.values())
    assert set(payload["models"]["mlp_digits"]["heuristics"]) == set(zoo_tuners.WARM_STARTS)
    markdown = (tmp_path / "zoo_tuners.md").read_text()
    assert "each heuristic alone" in markdown and "held-out test accuracy" in markdown
    assert all(0.0 < t["test_accuracy"] <= 1.0 for r in payload["runs"] for t in r["trials"])


def test_a_tiny_presearch_run_at_another_target_is_kept_and_reused(tmp_path: Path) -> None:
    """The presearch contender searches the proxy at the run's target with its seed; a second
    invocation reads the finished run back instead of running it again."""
    argv = ["--models", "mlp_digits", "--tuners", "prunetpe-presearch", "--seeds", "1",
            "--budget", "10", "--workers", "1", "--target", "0.95", "--out", str(tmp_path),
            "--cache", str(tmp_path / "runs")]
    assert zoo_tuners.main(argv) == 0
    payload = json.loads((tmp_path / "zoo_tuners.json").read_text())
    (run,) = payload["runs"]
    assert run["tuner"] == "prunetpe-presearch" and run["presearch_seconds"] > 0
    assert len(run["trials"]) == 10 and payload["target"] == 0.95
    assert all(abs(t["sparsity"] - 0.95) < 1e-3 for t in run["trials"])
    assert payload["models"]["mlp_digits"]["presearch_trials"]["mean"] > 0
    (kept,) = (tmp_path / "runs").iterdir()
    assert kept.name == "mlp_digits-0.95-prunetpe-presearch-seed0-n10-e2.json"
    stamp = kept.stat().st_mtime_ns
    assert zoo_tuners.main(argv) == 0
    assert kept.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "zoo_tuners.json").read_text())["runs"] == [run]
    # one table beside a longer run: the kept presearch run is capped at its 10 trials
    both = [*argv[:3], "prunetpe-presearch,prunetpe", *argv[4:7], "11",
            "--budget-cap", "prunetpe-presearch=10", *argv[8:]]
    assert zoo_tuners.main(both) == 0
    assert kept.stat().st_mtime_ns == stamp
    rows = [line for line in (tmp_path / "zoo_tuners.md").read_text().splitlines()
            if line.startswith("| PruneTPE")]
    assert len(rows) == 4 and rows[0].split(" | ")[2] == "—"  # presearch has no n=11
