"""The checkout's profiler: :mod:`nni_prune_tuners.trial.profile` plus the trained digits weights.

``python -m trials.profile_model --model trials.models:digits_cnn --out profile.json`` works as
``python -m nni_prune_tuners.trial.profile`` does (all options, FLOPs optional, sensitivity
curves), and profiles the models of ``trials.models`` on their cached dense weights
(``--cache-dir``, trained on first use with the trial's recipe) unless ``--state-dict`` names
others. ``--sensitivity --eval trials.profile_model:val_accuracy`` scores the zoo on the
validation split of each model's own data variant. The profiling logic lives in the installed
package so that users profile their own models without this checkout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from nni_prune_tuners.trial.inputs import load_factory
from nni_prune_tuners.trial.layers import layer_flops
from nni_prune_tuners.trial.profile import (
    PROFILE_FORMAT,
    QUANTILE_LEVELS,
    add_sensitivity,
    build_parser,
    lamp_scores,
    profile_model,
    quantiles,
    run,
    search_space,
    sensitivity_curves,
    to_json,
)
from trials.data import DigitsSplit, load_split
from trials.prune_trial import RECIPES, accuracy, data_variant, dense_state_dict

_logger = logging.getLogger(__name__)

__all__ = [
    "PROFILE_FORMAT",
    "QUANTILE_LEVELS",
    "add_sensitivity",
    "half_val_accuracy",
    "lamp_scores",
    "layer_flops",
    "load_factory",
    "main",
    "profile_model",
    "quantiles",
    "search_space",
    "sensitivity_curves",
    "to_json",
    "val_accuracy",
]

_splits: dict[tuple[str, torch.device], DigitsSplit] = {}


def _split(model: nn.Module) -> DigitsSplit:
    """The model's own data variant on the model's device, loaded and moved there once: on a
    GPU every evaluation would otherwise copy the whole split to the device again."""
    key = (data_variant(model), next(model.parameters()).device)
    if key not in _splits:
        _splits[key] = load_split(key[0]).to(key[1])
    return _splits[key]


def val_accuracy(model: nn.Module, *, samples: int | None = None) -> float:
    """Validation accuracy of a zoo model on its own data variant, on the model's device: on the
    first ``samples`` of the split (None: all of it).

    The ``--eval`` function of the sensitivity analysis in the checkout (``fn(model) -> float``).
    """
    split = _split(model)
    return accuracy(model, split.x_val[:samples], split.y_val[:samples])


def half_val_accuracy(model: nn.Module) -> float:
    """:func:`val_accuracy` on the first half of the validation split: presearch's cheaper
    ``--eval``, a third of the cost at the same ranking (``benchmarks.proxy_calibration``)."""
    return val_accuracy(model, samples=len(_split(model).y_val) // 2)


def _build_parser() -> argparse.ArgumentParser:
    parser = build_parser("python -m trials.profile_model")
    parser.add_argument("--cache-dir", type=Path, help="dense-weights cache of the zoo models")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; returns the exit status (2 on bad input)."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def dense_weights(
        spec: str, _factory: Callable[[], nn.Module]
    ) -> Mapping[str, torch.Tensor] | None:
        return dense_state_dict(args.cache_dir, model=spec) if spec in RECIPES else None

    return run(args, command="profile_model", default_weights=dense_weights)


if __name__ == "__main__":
    sys.exit(main())
