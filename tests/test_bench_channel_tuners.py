"""The channel fine-tuning comparison: the uniform warm start read off PruneTPE's runs, NNI's
speedup attempt, and a tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import channel_tuners


def _trial(parameter_id: int, accuracy: float, test: float) -> dict:
    return {"parameter_id": parameter_id, "accuracy": accuracy, "test_accuracy": test,
            "sparsity": 0.5}


def test_uniform_is_the_first_proposal_of_each_run_whatever_finished_first() -> None:
    runs = [{"trials": [_trial(1, 0.9, 0.8), _trial(0, 0.6, 0.5)]},
            {"trials": [_trial(0, 0.8, 0.7), _trial(1, 0.1, 0.1)]}]
    uniform = channel_tuners.uniform_summary(runs)
    assert uniform["val"]["mean"] == pytest.approx(0.7)
    assert uniform["val"]["std"] == pytest.approx(0.1)
    assert uniform["test"]["worst"] == pytest.approx(0.5)


def test_the_section_measures_the_margin_in_noise_floors() -> None:
    runs = [{"trials": [_trial(0, 0.6, 0.5), _trial(1, 0.9, 0.8)]},
            {"trials": [_trial(0, 0.8, 0.7), _trial(1, 0.7, 0.6)]}]
    text, numbers = channel_tuners.section("m", 0.5, runs, 2, {"ok": False, "error": "E: x"})
    assert numbers["noise_floor"] == pytest.approx(0.1)
    assert numbers["margin"] == pytest.approx(0.85 - 0.7)
    assert "1.5 noise floors" in text and "fails: `E: x`" in text


@pytest.mark.slow
def test_a_tiny_run_on_the_mlp(tmp_path: Path) -> None:
    argv = ["--models", "mlp_digits", "--targets", "0.5", "--seeds", "1", "--budget", "3",
            "--workers", "1", "--out", str(tmp_path)]
    assert channel_tuners.main(argv) == 0
    payload = json.loads((tmp_path / "channel_tuners.json").read_text())
    (run,) = payload["runs"]
    assert len(run["trials"]) == 3
    assert all(abs(t["sparsity"] - 0.5) < 0.05 for t in run["trials"])  # whole channels round
    numbers = payload["results"]["mlp_digits-0.5"]
    assert numbers["nni_l1"]["ok"] or numbers["nni_l1"]["error"]
    assert "uniform ratios, test" in (tmp_path / "channel_tuners.md").read_text()
    assert list((tmp_path / "channel_tuners" / "runs").glob("mlp_digits-0.5-seed0-n3-e2*.json"))
