"""README's "your own model" trial, run as written under a real nnictl experiment to DONE.

The trial file is the README's code block (found by its ``from nni_prune_tuners.trial import
Pruner`` line) after a header that defines what the README leaves to the user: a tiny model with
its dense training, ``train_one_epoch``, ``evaluate``, ``device`` and ``EPOCHS``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.experiment import REPO, nni_experiment

pytestmark = pytest.mark.slow

LAYER_PARAMS = {"fc1": 20 * 32, "fc2": 32 * 4}
TARGET = 0.7
EPOCHS = 3

HEADER = f'''
from collections import OrderedDict

import torch
from torch import nn

torch.set_num_threads(1)
device = "cuda" if torch.cuda.is_available() else "cpu"
EPOCHS = {EPOCHS}
_g = torch.Generator().manual_seed(0)
_x = torch.randn(512, 20, generator=_g)
_y = (_x @ torch.randn(20, 4, generator=_g)).argmax(1)
X_TRAIN, Y_TRAIN, X_VAL, Y_VAL = (t.to(device) for t in (_x[:384], _y[:384], _x[384:], _y[384:]))


def train_one_epoch(model, optimizer):
    model.train()
    for start in range(0, len(X_TRAIN), 64):
        loss = nn.functional.cross_entropy(model(X_TRAIN[start:start + 64]),
                                           Y_TRAIN[start:start + 64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def evaluate(model):
    model.eval()
    with torch.no_grad():
        return float((model(X_VAL).argmax(1) == Y_VAL).float().mean())


def load_trained_model():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(20, 32), act=nn.ReLU(), fc2=nn.Linear(32, 4)))
    model.to(device)
    dense_optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(20):
        train_one_epoch(model, dense_optimizer)
    return model

'''


def readme_trial() -> str:
    """The README's code block that adapts a training loop with ``Pruner``."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
              if "from nni_prune_tuners.trial import Pruner" in b]
    assert len(blocks) == 1, "README.md needs one python block importing Pruner"
    return blocks[0]


def test_readme_trial_is_short() -> None:
    code = [line for line in readme_trial().splitlines() if line.strip()]
    assert len(code) <= 14, code


def test_own_model_trial_under_nnictl(registered: list[str], tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "own_trial.py").write_text(HEADER + readme_trial())
    branch = {name: {"_type": "uniform", "_value": [0.05, 0.95]} for name in
              (f"{layer}_sparsity" for layer in LAYER_PARAMS)}
    config = {
        "searchSpace": {
            "prune_method": {"_type": "choice", "_value": [
                {"_name": "agp", **branch}, {"_name": "level", **branch}]},
            "batch_size": {"_type": "choice", "_value": [32, 64]},  # ignored by the pruner
        },
        "trialCommand": f"{sys.executable} own_trial.py",
        "trialCodeDirectory": str(code),
        "trialConcurrency": 2,
        "maxTrialNumber": 4,
        "tuner": {"name": "PruneTPE", "classArgs": {
            "optimize_mode": "maximize", "target_sparsity": TARGET,
            "layer_params": LAYER_PARAMS, "seed": 5}},
        "trainingService": {"platform": "local"},
    }
    with nni_experiment(config, workdir=tmp_path) as experiment:
        experiment.wait()
        trials = experiment.trials()
    assert len(trials) == 4
    for trial in trials:
        assert trial.status == "SUCCEEDED", trial
        method = trial.parameters["prune_method"]["_name"]
        assert trial.final is not None and trial.final["method"] == method
        # measured zeros: each layer rounds to whole weights
        assert trial.final["sparsity"] == pytest.approx(TARGET, abs=2 / sum(LAYER_PARAMS.values()))
        assert 0.0 <= trial.final["default"] <= 1.0
        epochs = [m["epoch"] for m in trial.intermediates]
        assert epochs == list(range(EPOCHS))
        pruned = [m["pruned"] for m in trial.intermediates]
        assert pruned == ([True] * EPOCHS if method == "level" else [False, False, True])
