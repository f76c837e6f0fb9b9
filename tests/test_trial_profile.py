"""Installed profiling: the CLI outside the checkout, optional FLOPs, sensitivity curves."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nni_prune_tuners.options import parse_tuner_options
from nni_prune_tuners.profile import SensitivityCurve, load_profile, parse_profile
from nni_prune_tuners.trial import level_mask
from nni_prune_tuners.trial import profile as tp
from trials import profile_model as pm

CONSOLE = Path(sys.executable).with_name("nni-prune-tuners")

USER_MODULE = '''
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def energy(model):
    """A deterministic metric: the summed squares of every weight."""
    return float(sum((m.weight ** 2).sum() for m in model if hasattr(m, "weight")))


def nan(model):
    return float("nan")
'''


def _energy(model: nn.Module) -> float:
    return float(sum((p.detach() ** 2).sum() for n, p in model.named_parameters()
                     if n.endswith("weight")))


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def test_profile_without_input_shape_skips_flops(caplog: pytest.LogCaptureFixture) -> None:
    # the logger's own level: a benchmark test run before may have quietened the package
    with caplog.at_level("INFO", logger="nni_prune_tuners"):
        profile = tp.profile_model(_model(), name="user", input_shape=None)
    assert "FLOPs skipped" in caplog.text
    assert [sorted(layer) for layer in profile["layers"]] == [
        ["lamp_quantiles", "magnitude_quantiles", "name", "params", "shape", "type"]] * 2
    parsed = parse_profile(profile)
    assert parsed.prunable_params == 36 + 192
    assert all(layer.flops is None for layer in parsed.layers.values())
    assert parsed.supports("lamp") and not parsed.supports("sensitivity")
    with_shape = tp.profile_model(_model(), name="user", input_shape=(1, 6, 6))
    assert [layer["flops"] for layer in with_shape["layers"]] == [36 * 16, 192]


def test_weight_by_flops_says_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    tp.write_json(path, tp.profile_model(_model(), name="user"))
    args = {"optimize_mode": "maximize", "target_sparsity": 0.5, "profile": str(path)}
    assert parse_tuner_options(args).profile is not None  # params weighting needs no FLOPs
    with pytest.raises(ValueError, match=r"FLOPs.*\['0', '3'\].*re-profile with --input-shape"):
        parse_tuner_options({**args, "weight_by": "flops"})
    with pytest.raises(ValueError, match="--input-shape"):
        load_profile(path).weight("0", "flops")
    with pytest.raises(ValueError, match="'layer_params' carries parameter counts only"):
        parse_tuner_options({"target_sparsity": 0.5, "layer_params": {"a": 4}, "weight_by": "flops"})


def test_sensitivity_curves_prune_one_layer_at_a_time() -> None:
    model = _model()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    grid = (0.25, 0.5, 0.9)
    curves = tp.sensitivity_curves(model, _energy, sparsities=grid)
    assert list(curves) == ["0", "3"]
    total = _energy(model)
    for index, name in ((0, "0"), (3, "3")):
        weight = dense[f"{index}.weight"]
        expected = [total] + [
            total - float(((weight * (1 - level_mask(weight, s))) ** 2).sum()) for s in grid]
        assert curves[name]["sparsities"] == [0.0, *grid]
        assert curves[name]["accuracy"] == pytest.approx(expected, rel=1e-6)
    assert all(torch.equal(v, dense[k]) for k, v in model.state_dict().items())  # restored
    with pytest.raises(ValueError, match="increase"):
        tp.sensitivity_curves(model, _energy, sparsities=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        tp.sensitivity_curves(model, _energy, sparsities=(0.5, 1.0))
    with pytest.raises(ValueError, match="finite"):
        tp.sensitivity_curves(model, lambda m: math.nan, sparsities=(0.5,))
    with pytest.raises(ValueError, match="conv9"):
        tp.sensitivity_curves(model, _energy, layers=["conv9"])


def test_profile_reads_sensitivity_and_interpolates() -> None:
    profile = tp.profile_model(_model(), name="user")
    tp.add_sensitivity(profile, {"0": {"sparsities": [0.0, 0.5, 0.9], "accuracy": [0.9, 0.8, 0.4]}})
    parsed = parse_profile(profile)
    curve = parsed.layers["0"].sensitivity
    assert curve == SensitivityCurve(sparsities=(0.0, 0.5, 0.9), accuracy=(0.9, 0.8, 0.4))
    assert parsed.layers["3"].sensitivity is None and not parsed.supports("sensitivity")
    assert curve.accuracy_at(0.25) == pytest.approx(0.85)
    assert curve.accuracy_at(0.7) == pytest.approx(0.6)
    assert curve.accuracy_at(0.95) == 0.4 and curve.drop(0.0) == 0.0
    assert curve.drop(0.9) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("sensitivity", "message"),
    [
        ([0.1], "must be an object"),
        ({"sparsities": [0.0, 0.5], "accuracy": [0.9]}, "at least 2"),
        ({"sparsities": [0.0, 0.5, 0.9], "accuracy": [0.9, 0.8]}, "3 sparsities but 2"),
        ({"sparsities": [0.1, 0.5], "accuracy": [0.9, 0.8]}, "from 0.0"),
        ({"sparsities": [0.0, 0.5, 0.5], "accuracy": [0.9, 0.8, 0.7]}, "increase"),
        ({"sparsities": [0.0, 1.0], "accuracy": [0.9, 0.8]}, "below 1"),
        ({"sparsities": [0.0, 0.5], "accuracy": [0.9, "x"]}, "finite"),
    ],
)
def test_profile_rejects_bad_sensitivity(sensitivity: Any, message: str) -> None:
    profile = tp.profile_model(_model(), name="user")
    profile["layers"][0]["sensitivity"] = sensitivity
    with pytest.raises(ValueError, match=rf"layers\[0\] \('0'\)\.sensitivity.*{message}"):
        parse_profile(profile)


def _run_outside_checkout(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run in a folder holding only the user's module: ``trials`` is not importable there."""
    (cwd / "usermod.py").write_text(USER_MODULE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("how", ["module", "console"])
def test_installed_cli_profiles_a_user_model(tmp_path: Path, how: str) -> None:
    if how == "console" and not CONSOLE.exists():
        pytest.skip("nni-prune-tuners console script not installed")
    command = ([sys.executable, "-m", "nni_prune_tuners.trial.profile"] if how == "module"
               else [str(CONSOLE), "profile"])
    check = _run_outside_checkout(tmp_path, sys.executable, "-c", "import trials")
    assert check.returncode != 0  # the checkout is out of reach
    done = _run_outside_checkout(
        tmp_path, *command, "--model", "usermod:make", "--out", "p.json", "--search-space",
        "s.json", "--sensitivity", "--eval", "usermod:energy", "--sensitivity-sparsities", "0.5,0.9")
    assert done.returncode == 0, done.stderr
    assert "FLOPs skipped" in done.stderr
    profile = json.loads((tmp_path / "p.json").read_text())
    assert profile["model"] == "make" and profile["sensitivity_eval"] == "usermod:energy"
    assert [layer["name"] for layer in profile["layers"]] == ["0", "3"]
    assert all("flops" not in layer for layer in profile["layers"])
    curve = profile["layers"][1]["sensitivity"]
    assert curve["sparsities"] == [0.0, 0.5, 0.9]
    assert curve["accuracy"][0] > curve["accuracy"][1] > curve["accuracy"][2] > 0
    assert parse_profile(profile).supports("sensitivity")
    space = json.loads((tmp_path / "s.json").read_text())
    assert [o["_name"] for o in space["prune_method"]["_value"]] == ["agp", "level"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "p.json", "--sensitivity"], "--sensitivity needs --eval"),
        (["--out", "p.json", "--eval", "usermod:energy"], "only used with --sensitivity"),
        (["--out", "p.json", "--sensitivity", "--eval", "usermod"], "eval must look like"),
        (["--out", "p.json", "--sensitivity", "--eval", "usermod:nan"], "finite float"),
        (["--out", "p.json", "--sensitivity", "--eval", "usermod:energy",
          "--sensitivity-sparsities", "0.5,x"], "--sensitivity-sparsities"),
        (["--out", "p.json", "--state-dict", "missing.pt"], "missing.pt"),
        (["--out", "p.json", "--input-shape", "1,2,2"], "input shape"),
    ],
)
def test_cli_rejects_bad_input(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (each subprocess would spend 3 s importing torch); the console's own one-line
    error is tested in test_failures_trial.py."""
    (tmp_path / "usermod.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "usermod", raising=False)
    try:
        status = tp.main(["--model", "usermod:make", *argv])
    except SystemExit as exited:  # argparse's own errors
        status = exited.code
    assert status == 2
    stderr = capsys.readouterr().err
    assert "profile: error:" in stderr and message in stderr
    assert not (tmp_path / "p.json").exists()


def test_checkout_wrapper_profiles_without_input_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m trials.profile_model`` is the same tool: no input shape, no FLOPs, no error."""
    (tmp_path / "usermod_wrapper.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "p.json"
    assert pm.main(["--model", "usermod_wrapper:make", "--out", str(out)]) == 0
    assert all("flops" not in layer for layer in json.loads(out.read_text())["layers"])
