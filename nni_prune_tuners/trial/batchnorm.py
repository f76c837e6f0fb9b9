"""Re-estimate BatchNorm statistics after pruning: a cheap, gradient-free evaluation proxy.

Pruning shifts every activation distribution, so the running means and variances a network
learned dense no longer fit; a ResNet pruned one-shot to 0.9 then scores at chance whatever the
allocation. Recomputing the statistics on a few training batches ("adaptive BatchNorm", Li et
al., EagleEye, ECCV 2020) restores, with forward passes only, a score that EagleEye found to
correlate with accuracy after fine-tuning: one-shot allocation search on BatchNorm networks needs it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable

import torch
from torch import nn

_logger = logging.getLogger(__name__)


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute the running statistics of every BatchNorm layer of ``model`` from ``batches``.

    The statistics are reset and re-estimated as a cumulative average over all the batches (not
    an exponential one, so the order of the batches does not matter). Only the BatchNorm layers
    run in training mode, so dropout stays off; weights are not touched, no gradient is taken,
    and every module's training flag is restored afterwards.

    Returns:
        The number of BatchNorm layers recalibrated (0: the model has none and nothing ran).

    Raises:
        ValueError: when the model has BatchNorm layers and ``batches`` is empty (the model is
            left as it was).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    remaining = iter(batches)
    first = next(remaining, None)
    if first is None:
        raise ValueError("recalibrate_batchnorm needs at least one batch")
    modes = {module: module.training for module in model.modules()}
    momenta = [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        with torch.no_grad():
            for batch in itertools.chain((first,), remaining):
                model(batch)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        for module, training in modes.items():
            module.training = training
    _logger.debug("recalibrated %d BatchNorm layers", len(norms))
    return len(norms)
