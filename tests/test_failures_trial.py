"""The reference trial when its inputs are broken: a corrupt dense-model cache is retrained and
named, an unwritable ``--save`` or an unknown ``--device`` fail before any training."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trials import prune_trial
from trials.models import digits_cnn

REPO = Path(__file__).resolve().parent.parent
PARAMS = json.dumps({"prune_method": {"_name": "level", "conv0_sparsity": 0.5, "conv1_sparsity": 0.8}})


def valid_cache_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(digits_cnn().state_dict(), buffer)
    return buffer.getvalue()


CORRUPTIONS = {
    "empty": lambda: b"",
    "truncated": lambda: valid_cache_bytes()[:2000],
    "random bytes": lambda: os.urandom(4000),
    "not a state dict": lambda: (torch.save([1, 2], buffer := io.BytesIO()), buffer.getvalue())[1],
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_dense_cache_is_named_and_retrained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    path = prune_trial.dense_cache_path(tmp_path)
    path.write_bytes(CORRUPTIONS[kind]())
    with caplog.at_level(logging.WARNING, logger="trials.prune_trial"):
        state = prune_trial.dense_state_dict(tmp_path)
    assert f"dense-model cache {path.resolve()} is corrupt (" in caplog.text
    assert set(state) == set(digits_cnn().state_dict())
    reloaded = torch.load(path, weights_only=True)  # replaced by a good file
    assert all(torch.equal(reloaded[k], v) for k, v in state.items())
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


@pytest.mark.slow
def test_trial_goes_on_after_a_truncated_cache(tmp_path: Path) -> None:
    """The trial as NNI runs it: the torch error used to fail every trial, naming no file."""
    path = prune_trial.dense_cache_path(tmp_path)
    path.write_bytes(valid_cache_bytes()[:3000])
    run = subprocess.run(
        [sys.executable, "-m", "trials.prune_trial", "--params", PARAMS, "--epochs", "1",
         "--cache-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert f"dense-model cache {path.resolve()} is corrupt" in run.stderr
    assert "Traceback" not in run.stderr
    assert json.loads(run.stdout)["sparsity"] > 0


def test_unwritable_save_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("not a folder")
    save = tmp_path / "file" / "pruned.pt"
    cache = tmp_path / "cache"
    status = prune_trial.main(["--params", PARAMS, "--save", str(save), "--cache-dir", str(cache)])
    assert status == 2
    assert capsys.readouterr().err.strip() == (
        f"prune_trial: error: --save '{save}' cannot be written: '{tmp_path / 'file'}' is not a directory")
    assert not cache.exists()  # nothing was trained


def test_save_is_written_after_the_result_is_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save = tmp_path / "new" / "pruned.pt"
    status = prune_trial.main(["--params", PARAMS, "--epochs", "1", "--save", str(save),
                               "--cache-dir", str(REPO / "trials" / "cache")])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["method"] == "level"
    assert float((torch.load(save, weights_only=True)["conv0.weight"] == 0).float().mean()) == 0.5


@pytest.mark.parametrize(("device", "message"), [
    ("tpu", "unknown device 'tpu': expected cpu, cuda, cuda:N or another torch device type"),
    ("cuda:0", "device 'cuda:0': CUDA is not available on this machine"),
])
def test_bad_device_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, message: str
) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    status = prune_trial.main(["--params", PARAMS, "--device", device, "--cache-dir", str(tmp_path)])
    assert status == 2
    assert capsys.readouterr().err.strip() == f"prune_trial: error: {message}"


def test_profile_missing_state_dict_is_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "trials.profile_model", "--model", "trials.models:digits_cnn",
         "--state-dict", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "profile.json")],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(
        f"profile_model: error: --state-dict '{tmp_path / 'missing.pt'}' cannot be loaded: ")
    assert "Traceback" not in run.stderr
