"""One-shot sensitivity curves of a model's layers (``profile --sensitivity``)."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nni_prune_tuners.trial.layers import layer_weight, prunable_layers
from nni_prune_tuners.trial.masking import level_mask

_logger = logging.getLogger(__name__)

#: Layer sparsities of a sensitivity curve (0.0, the dense model, is always the first point).
SENSITIVITY_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


def check_grid(sparsities: Sequence[float]) -> tuple[float, ...]:
    grid = tuple(float(s) for s in sparsities)
    if not grid or any(not (math.isfinite(s) and 0.0 <= s < 1.0) for s in grid):
        raise ValueError(f"sensitivity sparsities must be numbers in [0, 1), got {list(sparsities)}")
    if any(b <= a for a, b in itertools.pairwise(grid)):
        raise ValueError(f"sensitivity sparsities must increase, got {list(sparsities)}")
    return grid if grid[0] == 0.0 else (0.0, *grid)


def checked_score(evaluate: Callable[[nn.Module], float], model: nn.Module, where: str) -> float:
    with torch.no_grad():
        value = evaluate(model)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"the eval function returned {value!r} for {where}; expected a finite float")
    return float(value)


def sensitivity_curves(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    *,
    sparsities: Sequence[float] = SENSITIVITY_SPARSITIES,
    layers: Sequence[str] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """One-shot sensitivity of each layer: ``evaluate(model)`` with that layer alone Level-pruned.

    For each layer and each sparsity of the grid (0.0, the dense model, is always first) the
    layer's weight is masked with :func:`level_mask` of its dense values, the model is scored
    without fine-tuning (``evaluate`` runs under ``torch.no_grad``), and the weight is restored,
    so every point starts from the same dense model (NNI 2's ``SensitivityAnalysis``). Returns
    ``{layer: {"sparsities": [...], "accuracy": [...]}}`` in model order.
    """
    grid = check_grid(sparsities)
    prunable = prunable_layers(model)
    chosen = list(prunable) if layers is None else list(layers)
    unknown = [name for name in chosen if name not in prunable]
    if unknown:
        raise ValueError(f"unknown layers {unknown} for the sensitivity analysis")
    was_training = model.training
    dense = checked_score(evaluate, model, "the dense model")
    curves: dict[str, dict[str, list[float]]] = {}
    try:
        for name in chosen:
            weight = layer_weight(prunable[name])
            saved = weight.detach().clone()
            accuracy = [dense]
            try:
                for sparsity in grid[1:]:
                    with torch.no_grad():
                        weight.copy_(saved * level_mask(saved, sparsity))
                    accuracy.append(checked_score(evaluate, model, f"layer {name!r} at {sparsity}"))
            finally:
                with torch.no_grad():
                    weight.copy_(saved)
            curves[name] = {"sparsities": list(grid), "accuracy": accuracy}
            _logger.info("sensitivity of %s: %s", name,
                         " ".join(f"{s:g}:{a:.4f}" for s, a in zip(grid, accuracy, strict=True)))
    finally:
        model.train(was_training)
    return curves


def add_sensitivity(profile: dict[str, Any], curves: Mapping[str, Mapping[str, list[float]]]) -> None:
    """Store ``curves`` as the optional per-layer ``sensitivity`` field (format stays 1)."""
    for entry in profile["layers"]:
        if entry["name"] in curves:
            entry["sensitivity"] = dict(curves[entry["name"]])


