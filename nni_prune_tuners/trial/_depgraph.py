"""Torch-Pruning's dependency graph (DepGraph, Fang et al., CVPR 2023) as named channel groups.

Which layers' channels are tied (residual additions, depthwise convolutions, the projections an
attention product joins), before :mod:`nni_prune_tuners.trial.channel` proves each group by a
forward pass and removes channels. Torch-Pruning is imported when first needed: Level and AGP
trials do not need it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nni_prune_tuners.trial.inputs import ExampleInputs, call_model
from nni_prune_tuners.trial.layers import PRUNABLE_TYPES, prunable_layers


@dataclass(frozen=True)
class ChannelGroup:
    """Layers whose output channels are removed together (Contract 10).

    Attributes:
        name: the group's first layer in ``named_modules()`` order; the search-space key is
            ``<name>_sparsity``.
        layers: the names of the layers whose output channels the group sets, in model order.
        channels: the number of output channels each of those layers has (and the group prunes).
    """

    name: str
    layers: tuple[str, ...]
    channels: int


def _output_layers(model: nn.Module, example_inputs: ExampleInputs) -> list[nn.Module]:
    """Prunable layers whose output tensor is one of the model's outputs (the classifier)."""
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # the tensor kept: ids stay unique
    handles: list[RemovableHandle] = []
    for module in prunable_layers(model).values():
        def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                produced[id(out)] = (mod, out)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            output = call_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    tensors = [output] if isinstance(output, torch.Tensor) else (
        list(output.values()) if isinstance(output, Mapping) else list(output)
        if isinstance(output, tuple | list) else [])
    return [produced[id(t)][0] for t in tensors if id(t) in produced and produced[id(t)][1] is t]


def _torch_pruning() -> Any:
    """Torch-Pruning, imported when first needed: Level and AGP trials do not need it."""
    try:
        import torch_pruning
    except ImportError as exc:
        raise ImportError("the channel method needs Torch-Pruning: pip install "
                          "'nni-prune-tuners[trial]' (or torch-pruning==1.6.1)") from exc
    return torch_pruning


def _dependency_graph(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """Torch-Pruning's ``DependencyGraph`` of ``model`` traced on ``example_inputs``."""
    tp = _torch_pruning()
    try:
        with warnings.catch_warnings():
            # cls tokens and position embeddings: pruning their last dimension is what we want
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as exc:  # Torch-Pruning raises whatever the traced ops raise
        raise ValueError(f"the dependency analysis of {type(model).__name__} failed on the "
                         f"example inputs: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class _RawGroup:
    """A Torch-Pruning group as names: the root (layer, out-channel handler) and its members."""

    group: ChannelGroup
    root: str
    outputs: tuple[str, ...]  # prunable layers whose output channels it removes
    inputs: tuple[str, ...]  # prunable layers whose input channels it removes
    #: per output layer, (its channel index, the root's channel index) of each tied channel
    index_maps: tuple[tuple[str, tuple[tuple[int, int], ...]], ...]


def _raw_groups(model: nn.Module, example_inputs: ExampleInputs) -> list[_RawGroup]:
    """Torch-Pruning's groups of ``model`` (classifier excluded), not yet checked by a forward."""
    names = {module: name for name, module in model.named_modules()}
    order = {name: index for index, name in enumerate(names.values())}
    graph = _dependency_graph(model, example_inputs)
    ignored = _output_layers(model, example_inputs)
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE_TYPES):
        outputs: set[str] = set()
        inputs: set[str] = set()
        maps: dict[str, tuple[tuple[int, int], ...]] = {}
        for item in group.items:
            module = item.dep.target.module
            if not isinstance(module, PRUNABLE_TYPES) or module not in names:
                continue
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                outputs.add(names[module])
                maps[names[module]] = tuple((int(getattr(i, "idx", i)), int(getattr(i, "root_idx", i)))
                                            for i in item.idxs)
            elif graph.is_in_channel_pruning_fn(item.dep.handler):
                inputs.add(names[module])
        members = tuple(sorted(outputs, key=order.__getitem__))
        channels = len(group.items[0].idxs)
        if not members or channels < 2:
            continue
        root = names[group.items[0].dep.target.module]
        groups.append(_RawGroup(ChannelGroup(members[0], members, channels), root, members,
                                tuple(sorted(inputs, key=order.__getitem__)),
                                tuple((name, maps[name]) for name in members)))
    return sorted(groups, key=lambda raw: order[raw.group.name])


