"""Small modules the tests share."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class TwoConvNet(nn.Module):
    """Two convolutions (8 and 16 channels, so two channel groups) and a classifier on 1x8x8."""

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def untrained_dense_cache(cache: Path, name: str) -> nn.Module:
    """Seed the reference trial's dense cache of zoo model ``name`` with untrained weights, so
    that a trial run in a test skips dense training; returns the model those weights are of."""
    from trials import models
    from trials.prune_trial import dense_cache_path

    torch.manual_seed(0)
    model = models.ZOO[name]()
    path = dense_cache_path(cache, model=f"trials.models:{name}", data=str(model.data_variant))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model
