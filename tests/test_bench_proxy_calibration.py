"""The calibration-size study rescores proxy_rank's allocations with fewer batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import proxy_calibration, proxy_rank


@pytest.mark.slow
def test_a_model_without_batchnorm_scores_the_same_with_any_number_of_batches(
    tmp_path: Path,
) -> None:
    allocations = proxy_rank.random_allocations("mlp_digits", 0.9, 4, seed=0)
    study = {"model": "mlp_digits", "target": 0.9, "allocations": [
        {"kind": "random", "sparsities": s,
         "runs": {"0": {"accuracy": 0.1 * i, "proxy": proxy_rank.proxy_score("mlp_digits", s)}}}
        for i, s in enumerate(allocations)]}
    (tmp_path / "mlp_digits-0.9.json").write_text(json.dumps(study))
    argv = ["--models", "mlp_digits", "--targets", "0.9", "--settings", "1x0,2x100",
            "--timed", "1", "--out", str(tmp_path)]
    assert proxy_calibration.main(argv) == 0
    row = json.loads((tmp_path / "proxy_calibration.json").read_text())["mlp_digits-0.9"]
    assert row["1x0"]["tau"] == row["8x0"]["tau"]
    assert row["1x0"]["seconds"] > 0 and -1.0 <= row["2x100"]["tau"] <= 1.0
    assert "| mlp_digits | 0.9 |" in (tmp_path / "proxy_calibration.md").read_text()


def test_settings_are_batches_x_samples() -> None:
    assert proxy_calibration.parse_setting("2x540") == (2, 540)
    for bad in ("2", "0x10", "ax1"):
        with pytest.raises(ValueError, match=repr(bad)):
            proxy_calibration.parse_setting(bad)


def test_a_missing_study_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        proxy_calibration.main(["--models", "mlp_digits", "--targets", "0.9",
                                "--out", str(tmp_path)])
    assert "mlp_digits-0.9.json is missing" in capsys.readouterr().err
