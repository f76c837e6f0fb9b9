"""Models for the reference trial, named by ``module:factory`` (``trials.models:digits_cnn``)."""

from __future__ import annotations

import logging

import torch
from torch import nn

_logger = logging.getLogger(__name__)


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits whose prunable layers are ``conv0``, ``conv1`` and ``fc``.

    The names match the seed's search space; ``input_shape`` lets ``profile_model`` build a sample
    input without being told.
    """

    input_shape: tuple[int, ...] = (1, 8, 8)

    def __init__(self, *, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width!r}")
        self.conv0 = nn.Conv2d(1, width, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(width, 2 * width, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * width * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv0(x)))
        x = self.pool(torch.relu(self.conv1(x)))
        return self.fc(torch.flatten(x, 1))


def digits_cnn() -> DigitsCNN:
    """Factory used by the trial and by ``python -m trials.profile_model``."""
    return DigitsCNN()
