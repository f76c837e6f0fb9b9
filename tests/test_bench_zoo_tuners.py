"""The zoo fine-tuning comparison: heuristics read off PruneTPE's warm starts, and a tiny real run."""

from __future__ import annotations

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


@pytest.mark.slow
def test_a_tiny_run_on_the_mlp(tmp_path: Path) -> None:
    argv = ["--models", "mlp_digits", "--seeds", "1", "--budget", "10", "--workers", "1",
            "--out", str(tmp_path)]
    assert zoo_tuners.main(argv) == 0
    payload = json.loads((tmp_path / "zoo_tuners.json").read_text())
    summary = payload["models"]["mlp_digits"]["summary"]
    assert set(summary) == {"prunetpe", "tpe"}
    assert all(s["violation_rate"] == 0.0 for s in summary.values())
    assert set(payload["models"]["mlp_digits"]["heuristics"]) == set(zoo_tuners.WARM_STARTS)
    assert "each heuristic alone" in (tmp_path / "zoo_tuners.md").read_text()


def test_a_tiny_presearch_run_on_the_mlp(tmp_path: Path) -> None:
    """The presearch contender searches the proxy with its seed, then proposes its finalists."""
    argv = ["--models", "mlp_digits", "--tuners", "prunetpe-presearch", "--seeds", "1",
            "--budget", "10", "--workers", "1", "--out", str(tmp_path)]
    assert zoo_tuners.main(argv) == 0
    (run,) = json.loads((tmp_path / "zoo_tuners.json").read_text())["runs"]
    assert run["tuner"] == "prunetpe-presearch" and run["presearch_seconds"] > 0
    assert len(run["trials"]) == 10
