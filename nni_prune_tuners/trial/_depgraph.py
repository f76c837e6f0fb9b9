"""Torch-Pruning's dependency graph (DepGraph, Fang et al., CVPR 2023) as named channel groups.

Which layers' channels are tied (residual additions, depthwise convolutions, the projections an
attention product joins), before :mod:`nni_prune_tuners.trial.channel` proves each group by a
forward pass and removes channels. Torch-Pruning is imported when first needed: Level and AGP
trials do not need it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nni_prune_tuners.trial.inputs import ExampleInputs, call_model
from nni_prune_tuners.trial.layers import PRUNABLE_TYPES, prunable_layers

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelGroup:
    """Layers whose output channels are removed together (Contract 10).

    Attributes:
        name: the group's first layer in ``named_modules()`` order; the search-space key is
            ``<name>_sparsity``.
        layers: the names of the layers whose output channels the group sets, in model order.
        channels: the number of units the group prunes: the output channels each of those
            layers has, or for ``kind="heads"`` the key/value heads (each with its query heads).
        kind: ``"channels"``, or ``"heads"`` for an attention module's heads removed whole.
    """

    name: str
    layers: tuple[str, ...]
    channels: int
    kind: str = "channels"


@dataclass(frozen=True)
class DenseGroup:
    """A group left dense because its analysis or surgery failed (the profile's ``dense_groups``).

    Attributes:
        name: the group's first layer (or root layer, or the attention module), or the model's
            class name when the whole dependency analysis failed.
        reason: why, in one line.
    """

    name: str
    reason: str


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


def _all_groups(
    graph: Any, ignored: list[nn.Module], names: Mapping[nn.Module, str], dense: list[DenseGroup],
    skip: Collection[str],
) -> Iterator[Any]:
    """Torch-Pruning's ``get_all_groups``, but a root whose analysis raises is left dense.

    Roots named in ``skip`` (attention projections, whose heads are groups of their own) are not
    analysed: with grouped-query attention Torch-Pruning's analysis of them does not end.
    """
    ignored = ignored + list(graph.IGNORED_LAYERS_IN_TRACING)
    visited: set[nn.Module] = {module for module in names if names[module] in skip}
    for module in list(graph.module2node):
        pruner = graph.get_pruner_of_module(module)
        if (module in ignored or not isinstance(module, PRUNABLE_TYPES) or module in visited
                or pruner is None or pruner.get_out_channels(module) is None):
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                            list(range(pruner.get_out_channels(module))))
        except Exception as exc:  # e.g. a ZeroDivisionError on a channel shuffle
            reason = f"the dependency analysis failed: {type(exc).__name__}: {exc}".splitlines()[0]
            _logger.info("channel group of %s stays dense: %s", names.get(module, "?"), reason)
            dense.append(DenseGroup(names.get(module, type(module).__name__), reason))
            continue
        outputs = [dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)]
        visited.update(outputs)
        if not any(member in ignored for member in outputs):
            yield group


def _raw_groups(
    model: nn.Module, example_inputs: ExampleInputs, dense: list[DenseGroup] | None = None,
    skip: Collection[str] = (),
) -> list[_RawGroup]:
    """Torch-Pruning's groups of ``model`` (classifier excluded), not yet checked by a forward.

    Groups whose analysis fails are appended to ``dense``; when the whole graph cannot be built
    although the model runs on ``example_inputs``, every group is, under the model's class name.
    """
    dense = [] if dense is None else dense
    names = {module: name for name, module in model.named_modules()}
    order = {name: index for index, name in enumerate(names.values())}
    try:
        ignored = _output_layers(model, example_inputs)
    except Exception as exc:  # the model's own error on these inputs
        raise ValueError(f"{type(model).__name__} does not run on the example inputs: "
                         f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
    try:
        graph = _dependency_graph(model, example_inputs)
    except ValueError as exc:
        _logger.info("every channel group of %s stays dense: %s", type(model).__name__, exc)
        dense.append(DenseGroup(type(model).__name__, str(exc).splitlines()[0]))
        return []
    groups = []
    for group in _all_groups(graph, ignored, names, dense, skip):
        raw = _named(graph, group, names, order)
        if raw is not None:
            groups.append(raw)
    return sorted(groups, key=lambda raw: order[raw.group.name])


def _named(graph: Any, group: Any, names: Mapping[nn.Module, str],
           order: Mapping[str, int]) -> _RawGroup | None:
    """A Torch-Pruning group as names; None when it sets no prunable layer or one channel."""
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
        return None
    root = names[group.items[0].dep.target.module]
    return _RawGroup(ChannelGroup(members[0], members, channels), root, members,
                     tuple(sorted(inputs, key=order.__getitem__)),
                     tuple((name, maps[name]) for name in members))
