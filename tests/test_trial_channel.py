"""The reference trial with ``prune_method: channel`` (Contract 10): channels removed for real right
after the dense weights load, the optimizer built after that, ``flops_removed`` reported beside
``sparsity``, and ``--save`` writing the whole smaller module. The dense caches are seeded with
untrained weights, so no dense training happens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from nni_prune_tuners.profile import parse_profile
from nni_prune_tuners.trial import count_flops
from nni_prune_tuners.trial.profile import profile_model
from tests.nets import untrained_dense_cache
from trials.prune_trial import run_trial

ROOT = Path(__file__).resolve().parents[1]


def _channel_params(raw: dict[str, Any], ratio: float) -> dict[str, Any]:
    groups = parse_profile(raw).channel_groups
    return {"prune_method": {"_name": "channel",
                             **{f"{g}_sparsity": ratio for g in groups}}}


@pytest.mark.parametrize("name", ["mlp_digits", "resnet_digits"])
def test_standalone_cli_prunes_channels_and_saves_the_module(tmp_path: Path, name: str) -> None:
    model = untrained_dense_cache(tmp_path, name)
    raw = profile_model(model.eval(), name=name, channel=True)
    params = _channel_params(raw, 0.5)
    save = tmp_path / "pruned.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "trials.prune_trial", "--model", f"trials.models:{name}",
         "--params", json.dumps(params), "--epochs", "1", "--cache-dir", str(tmp_path),
         "--save", str(save)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stdout)
    assert final["method"] == "channel"
    assert final["dense_acc"] < 0.3  # the seeded, untrained weights: the cache was used
    profile = parse_profile(raw)
    predicted = 1 - profile.channel_flops(
        {k[: -len("_sparsity")]: v for k, v in params["prune_method"].items() if k != "_name"},
        rounded=True) / profile.channel_flops({})
    assert final["flops_removed"] == pytest.approx(predicted, abs=1e-9)
    assert 0.3 < final["flops_removed"] < 0.8 and 0.2 < final["sparsity"] < 0.9
    assert 0 < final["latency_ratio"] < 10  # measured against the dense model (export reads it)
    pruned = torch.load(save, weights_only=False)
    assert isinstance(pruned, torch.nn.Module)
    x = torch.zeros(2, *model.input_shape)
    assert pruned.eval()(x).shape == model.eval()(x).shape
    assert sum(count_flops(pruned, x[:1]).values()) == pytest.approx(
        (1 - final["flops_removed"]) * sum(count_flops(model, x[:1]).values()))


def test_run_trial_reports_flops_beside_sparsity_and_fine_tunes_the_small_model(
    tmp_path: Path
) -> None:
    model = untrained_dense_cache(tmp_path, "mlp_digits")
    raw = profile_model(model.eval(), name="mlp_digits", channel=True)
    reports: list[dict[str, Any]] = []
    result = run_trial(_channel_params(raw, 0.7), epochs=2, cache_dir=tmp_path,
                       model="trials.models:mlp_digits", report=reports.append)
    assert [r["epoch"] for r in reports] == [0, 1] and all(r["pruned"] for r in reports)
    assert all(r["sparsity"] == result.sparsity for r in reports)
    assert result.flops_removed is not None and result.model is not None
    assert result.target_sparsity == pytest.approx(result.flops_removed, abs=1e-12)
    assert result.accuracy > result.dense_accuracy  # fine-tuning the pruned model learned
    first = next(m for m in result.model.modules() if isinstance(m, torch.nn.Linear))
    dense_first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert first.out_features < dense_first.out_features
    assert result.final_metrics()["flops_removed"] == result.flops_removed
    assert result.latency_ratio is not None and result.latency_ratio > 0
    assert result.final_metrics()["latency_ratio"] == result.latency_ratio


def test_a_key_that_is_not_a_channel_group_fails_before_training(tmp_path: Path) -> None:
    model = untrained_dense_cache(tmp_path, "mlp_digits")
    last = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    params = {"prune_method": {"_name": "channel", f"{last}_sparsity": 0.5}}
    with pytest.raises(ValueError, match=rf"'{last}_sparsity': '{last}' is not a channel group"):
        run_trial(params, epochs=1, cache_dir=tmp_path, model="trials.models:mlp_digits")
