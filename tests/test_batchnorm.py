"""recalibrate_batchnorm: statistics from the given batches, nothing else changed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nni_prune_tuners.trial import recalibrate_batchnorm


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.BatchNorm1d(3), nn.Linear(3, 2))


def test_statistics_are_the_batches_exact_mean_and_variance() -> None:
    model = _net()
    batches = [torch.randn(8, 4) * 3 + 1 for _ in range(3)]
    weights = {k: v.clone() for k, v in model.state_dict().items()
               if "running" not in k and "batches" not in k}
    model.train()

    assert recalibrate_batchnorm(model, iter(batches)) == 1

    with torch.no_grad():
        features = model[0](torch.cat(batches))
    norm = model[2]
    assert isinstance(norm, nn.BatchNorm1d)
    # a cumulative average of per-batch statistics: exact for equal batches' means
    torch.testing.assert_close(norm.running_mean, features.mean(0))
    per_batch_var = torch.stack([f.var(0) for f in features.split(8)])
    torch.testing.assert_close(norm.running_var, per_batch_var.mean(0))
    assert norm.momentum == pytest.approx(0.1)
    assert model.training and all(m.training for m in model.modules())
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_dropout_stays_off_so_the_result_is_deterministic() -> None:
    model = _net().eval()
    batch = torch.randn(16, 4)
    recalibrate_batchnorm(model, [batch])
    first = model[2].running_mean.clone()
    recalibrate_batchnorm(model, [batch])
    assert torch.equal(model[2].running_mean, first)
    assert not model.training


def test_no_batches_is_an_error_and_changes_nothing() -> None:
    model = _net()
    model[2].running_mean.fill_(2.0)
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(model, [])
    assert torch.equal(model[2].running_mean, torch.full((3,), 2.0))


def test_a_model_without_batchnorm_is_left_alone() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    assert recalibrate_batchnorm(model, []) == 0


def test_the_readme_one_shot_proxy_keeps_the_masks_and_reports() -> None:
    from nni_prune_tuners.trial import Pruner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    params = {"0_sparsity": 0.5, "4_sparsity": 0.9}
    pruner = Pruner(model, params, epochs=1, optimizer=optimizer, method="level")
    pruner.on_epoch_start(0)
    recalibrate_batchnorm(model, (torch.randn(16, 1, 8, 8) for _ in range(4)))
    report = pruner.final(0.5)
    assert report["method"] == "level"
    assert pruner.layer_sparsity() == pytest.approx({"0": 0.5, "4": 0.9}, abs=0.01)
    assert int(model[1].num_batches_tracked) == 4
