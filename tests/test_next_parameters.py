"""A trial written from the README runs one configuration by hand (issue 28.5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nni_prune_tuners.trial import PARAMS_ENV, next_parameters

PARAMS = {"prune_method": {"_name": "level", "conv1_sparsity": 0.5}}
# the README's own-model block, cut to what runs in a second
SCRIPT = """
import torch
from torch import nn
from nni_prune_tuners.trial import Pruner, next_parameters

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
pruner = Pruner(model, next_parameters(), epochs=1, optimizer=optimizer)
pruner.on_epoch_start(0)
print(f"sparsity {pruner.layer_sparsity()['conv1']:.2f}")
"""


@pytest.fixture
def outside_nni(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("NNI_PLATFORM", raising=False)
    monkeypatch.delenv(PARAMS_ENV, raising=False)
    return monkeypatch


def test_parameters_from_json(outside_nni: pytest.MonkeyPatch) -> None:
    outside_nni.setenv(PARAMS_ENV, json.dumps(PARAMS))
    assert next_parameters() == PARAMS


def test_parameters_from_a_file_and_from_exports_output(outside_nni: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    plain = tmp_path / "params.json"
    plain.write_text(json.dumps(PARAMS))
    outside_nni.setenv(PARAMS_ENV, f"@{plain}")
    assert next_parameters() == PARAMS
    exported = tmp_path / "best.json"
    exported.write_text(json.dumps({"trial_id": "x", "parameters": PARAMS, "config_list": []}))
    outside_nni.setenv(PARAMS_ENV, f"@{exported}")
    assert next_parameters() == PARAMS


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, f"not running under NNI and {PARAMS_ENV} is unset"),
        ("{not json", f"{PARAMS_ENV} is not valid JSON"),
        ("[1, 2]", f"{PARAMS_ENV} must hold a JSON object"),
        ("@/nonexistent/params.json", f"cannot read {PARAMS_ENV} file '/nonexistent/params.json'"),
    ],
)
def test_bad_or_missing_parameters_name_the_variable(outside_nni: pytest.MonkeyPatch,
                                                     value: str | None, message: str) -> None:
    if value is not None:
        outside_nni.setenv(PARAMS_ENV, value)
    with pytest.raises(ValueError, match=message):
        next_parameters()


def test_a_readme_style_trial_runs_by_hand(tmp_path: Path) -> None:
    script = tmp_path / "my_trial.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "NNI_PLATFORM"}
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env={**env, PARAMS_ENV: json.dumps(PARAMS)}, cwd=tmp_path, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "sparsity 0.50"
