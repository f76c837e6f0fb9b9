"""The digits data set (scikit-learn ``load_digits``): fixed stratified splits, no download."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

_logger = logging.getLogger(__name__)

#: The split never depends on a trial's seed, so every trial is scored on the same examples.
SPLIT_SEED = 0
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DigitsSplit:
    """Float images ``(N, 1, 8, 8)`` scaled to [0, 1] and integer labels, per split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: torch.device | str) -> DigitsSplit:
        """Return the split with every tensor on ``device``."""
        return DigitsSplit(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


@functools.cache
def digits_split() -> DigitsSplit:
    """Load digits once per process and split it 60/20/20, stratified by label.

    Cached because the benchmarks run thousands of trials in one process.
    """
    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=VAL_FRACTION / (1.0 - TEST_FRACTION),
        stratify=y_rest,
        random_state=SPLIT_SEED,
    )
    _logger.debug("digits split: %d train, %d val, %d test", len(y_train), len(y_val), len(y_test))
    return DigitsSplit(
        *(torch.from_numpy(a) for a in (x_train, y_train, x_val, y_val, x_test, y_test))
    )
