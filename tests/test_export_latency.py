"""``export`` never picks a pruned model that runs no faster than dense (issue #41 point 2): a
channel trial reports its measured ``latency_ratio``; the best trial at or above 1 is passed
over for the best faster one, and said so in the log and the JSON."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nni_prune_tuners.experiment_records import ExportError
from nni_prune_tuners.export import export_best
from tests.test_export_channel import _experiment


def test_the_best_trial_slower_than_dense_is_passed_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _experiment(tmp_path, None, ratios=(0.71, 1.0))  # B scores best but is no faster than dense
    with caplog.at_level(logging.WARNING, logger="nni_prune_tuners.export"):
        best = export_best("exp", tmp_path / "best.json", experiment_dir=tmp_path)
    assert best["trial_id"] == "A"
    assert best["metric"]["latency_ratio"] == 0.71
    assert best["slower_than_dense"] == [{"trial_id": "B", "metric": 0.8, "latency_ratio": 1.0}]
    assert "trials B score better than trial A but ran at or above" in caplog.text


def test_a_faster_best_trial_is_exported_as_before(tmp_path: Path) -> None:
    _experiment(tmp_path, None, ratios=(1.3, 0.64))
    best = export_best("exp", tmp_path / "best.json", experiment_dir=tmp_path)
    assert (best["trial_id"], best["slower_than_dense"]) == ("B", [])


def test_trials_without_a_measured_latency_count_as_faster(tmp_path: Path) -> None:
    _experiment(tmp_path, None, ratios=(None, None))
    best = export_best("exp", tmp_path / "best.json", experiment_dir=tmp_path)
    assert (best["trial_id"], best["slower_than_dense"]) == ("B", [])


def test_no_trial_faster_than_dense_is_a_one_line_error(tmp_path: Path) -> None:
    _experiment(tmp_path, None, ratios=(1.05, 1.2))
    with pytest.raises(ExportError, match=r"every succeeded trial ran at or above the dense "
                                          r"model's latency .*trial A, at 1\.050"):
        export_best("exp", tmp_path / "best.json", experiment_dir=tmp_path)
    assert not (tmp_path / "best.json").exists()
