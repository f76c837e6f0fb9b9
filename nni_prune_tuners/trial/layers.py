"""What a prunable layer is, its weight, and its FLOPs.

A prunable layer is a Conv1d/2d/3d or Linear module, named by its ``named_modules()`` name; only
its ``weight`` is pruned (biases never are). Masking, channel surgery, the profile and the
presearch all ask here, so that they agree on which layers exist and what they cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nni_prune_tuners.trial.inputs import ExampleInputs, call_model, eval_mode

#: Module types whose ``weight`` can be pruned (biases are never pruned).
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Return the prunable modules of ``model`` by ``named_modules()`` name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def layer_weight(module: nn.Module) -> torch.Tensor:
    """The ``weight`` tensor of a prunable module (typed, so callers need no casts)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{type(module).__name__} has no weight tensor to prune")
    return weight


def count_flops(model: nn.Module, example_inputs: ExampleInputs) -> dict[str, int]:
    """Multiply-accumulates per sample of every Conv/Linear layer, counted on the real module.

    Conv: ``output elements * in_channels / groups * kernel size``; Linear: ``out_features *
    in_features * positions`` (tokens). Divided by the batch size of ``example_inputs``. Layers the
    forward does not call are left out.
    """
    flops: dict[str, int] = {}
    handles: list[RemovableHandle] = []
    for name, module in prunable_layers(model).items():
        def hook(mod: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
            batch = out.shape[0] if out.dim() > 1 else 1
            if isinstance(mod, nn.Linear):
                macs = out.numel() * mod.in_features
            else:
                conv: Any = mod
                macs = out.numel() * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)
            flops[name] = flops.get(name, 0) + macs // batch

        handles.append(module.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return flops


def layer_flops(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs of each prunable weight for one input sample, from a forward pass on zeros.

    Convolutions: weight parameters times output spatial size; Linear: parameters times the
    positions it is applied at (1 for a plain ``(batch, features)`` input).
    """
    layers = prunable_layers(model)
    flops: dict[str, int] = {}
    handles: list[RemovableHandle] = []
    for name, module in layers.items():
        def hook(mod: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
            positions = out.shape[2:] if not isinstance(mod, nn.Linear) else out.shape[1:-1]
            flops[name] = layer_weight(mod).numel() * math.prod(positions)

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            model(torch.zeros(1, *input_shape, device=device))
    except RuntimeError as exc:
        raise ValueError(f"forward pass on input shape {tuple(input_shape)} failed: {exc}") from exc
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [name for name in layers if name not in flops]
    if missing:
        raise ValueError(f"layers {missing} were not called by the forward pass")
    return flops


def listing(names: Iterable[str], limit: int = 20) -> str:
    """Names for an error message: the first ``limit``, then how many in all."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"
