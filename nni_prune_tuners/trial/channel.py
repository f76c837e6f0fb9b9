"""Structured (``channel``) pruning, Contract 10: remove whole output channels for real.

Level and AGP masks keep every tensor dense, so the pruned model is as slow as the dense one
without sparse kernels. Here whole output channels (Conv) and output features (Linear) are
removed, and every tensor that reads them shrinks too, so the model gets smaller and faster.

Torch-Pruning's dependency graph (DepGraph, Fang et al., CVPR 2023) finds which layers' channels
are tied (residual additions, depthwise convolutions, the q/k/v projections an attention product
joins) and does the surgery; NNI 3.0's ``ModelSpeedup`` cannot trace any model on torch 2.13
(docs/channel.md). A group Torch-Pruning proposes is kept only if removing one of its channels
leaves a model that still runs forward to outputs of the original shape: that drops the final
classifier, and groups a forward pass cannot shrink (e.g. an attention block that reshapes by the
width of its *input*, as the zoo's ViT does, keeps q/k/v and its residual stream dense).

Usage (the pruned model is ``model`` changed in place)::

    groups = channel_groups(model, example_inputs)            # [ChannelGroup(name, layers, channels)]
    model = prune_channels(model, {groups[0].name: 0.5}, example_inputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)  # build the optimizer AFTER pruning

An optimizer built before pruning holds the old, larger parameters: rebuild it from
``model.parameters()`` after :func:`prune_channels`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nni_prune_tuners.params import CHANNEL, sparsity_key
from nni_prune_tuners.profile import channels_removed
from nni_prune_tuners.trial._depgraph import ChannelGroup, _dependency_graph, _raw_groups, _RawGroup
from nni_prune_tuners.trial.inputs import ExampleInputs, call_model, eval_mode, output_shapes
from nni_prune_tuners.trial.layers import (
    count_flops,
    layer_weight,
    listing,
    prunable_layers,
)

if TYPE_CHECKING:
    from nni_prune_tuners.trial.pruner import StrategySetup

_logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ChannelLayer:
    """A prunable layer's dense FLOPs and the groups that scale them (the profile's fields).

    The FLOPs left after pruning are ``flops * keep(in_group) * keep(out_group)``, ``keep = 1 - s``
    and 1 for None. ``in_group`` is the group that sets the layer's input channels *per output
    channel* (``in_channels / groups`` of a convolution): a depthwise convolution's inputs are its
    outputs' own channels, so its ``in_group`` is None and its FLOPs scale with ``out_group`` once.
    """

    name: str
    flops: int
    in_group: str | None
    out_group: str | None


def _prunes_cleanly(
    model: nn.Module, example_inputs: ExampleInputs, groups: Sequence[_RawGroup],
    shapes: list[tuple[int, ...]],
) -> str | None:
    """Why removing one channel of each of ``groups`` (on a copy) breaks the forward, else None."""
    trial = copy.deepcopy(model)
    try:
        with eval_mode(trial):
            _remove(trial, example_inputs, {raw.group.name: [0] for raw in groups}, groups)
            with torch.no_grad():
                got = output_shapes(call_model(trial, example_inputs))
    except Exception as exc:  # any failure of the surgery or the forward means: not prunable
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None if got == shapes else f"the outputs change shape from {shapes} to {got}"


def _checked_groups(model: nn.Module, example_inputs: ExampleInputs) -> list[_RawGroup]:
    """The groups whose channels can really be removed, one channel of each at a time proven."""
    with eval_mode(model):
        raw = _raw_groups(model, example_inputs)
        with torch.no_grad():
            shapes = output_shapes(call_model(model, example_inputs))
        if not raw or _prunes_cleanly(model, example_inputs, raw, shapes) is None:
            return raw
        kept: list[_RawGroup] = []
        for candidate in raw:  # greedy: a group joins if the groups kept so far still prune
            reason = _prunes_cleanly(model, example_inputs, [*kept, candidate], shapes)
            if reason is None:
                kept.append(candidate)
            else:
                _logger.info("channel group %s (%s) is not prunable, it stays dense: %s",
                             candidate.group.name, ", ".join(candidate.group.layers), reason)
        return kept


def channel_groups(model: nn.Module, example_inputs: ExampleInputs) -> list[ChannelGroup]:
    """The channel groups of ``model`` in ``named_modules()`` order of their first layer.

    Layers whose output channels are tied (residual additions, depthwise and grouped
    convolutions, projections joined by an attention product) form one group; the final
    classifier (whose outputs are the model's outputs) and groups whose removal breaks the
    forward pass are left out. ``example_inputs`` is what ``model`` is called with (a tensor, a
    tuple of positional inputs or a dict of keyword inputs); the model is traced in eval mode and
    is not changed.

    Raises:
        ValueError: when the dependency analysis fails on ``example_inputs``.
    """
    return [raw.group for raw in _checked_groups(model, example_inputs)]


def _importance(module: nn.Module) -> torch.Tensor:
    """L1 norm of each output channel's weights (Li et al., ICLR 2017)."""
    weight = layer_weight(module).detach()
    return weight.abs().reshape(weight.shape[0], -1).sum(dim=1).double().cpu()


def _removal(model: nn.Module, raw: _RawGroup, removed: int) -> list[int]:
    """The ``removed`` channels of lowest L1 norm summed over the group's layers."""
    layers = prunable_layers(model)
    score = torch.zeros(raw.group.channels, dtype=torch.float64)
    for name, pairs in raw.index_maps:
        norms = _importance(layers[name])
        for idx, root_idx in pairs:
            score[root_idx] += norms[idx]
    order = torch.sort(score, stable=True).indices  # ties: lower index removed first
    return sorted(int(i) for i in order[:removed])


def _remove(
    model: nn.Module, example_inputs: ExampleInputs, indices: Mapping[str, list[int]],
    groups: Sequence[_RawGroup],
) -> None:
    """Remove ``indices[group]`` output channels of each group (in place)."""
    graph = _dependency_graph(model, example_inputs)
    layers = prunable_layers(model)
    for raw in groups:
        idxs = indices.get(raw.group.name)
        if not idxs:
            continue
        root = layers[raw.root]
        handler = graph.get_pruner_of_module(root).prune_out_channels
        graph.get_pruning_group(root, handler, idxs=idxs).prune()


def _check_sparsities(
    sparsities: Mapping[str, Any], groups: Mapping[str, _RawGroup]
) -> dict[str, int]:
    if not isinstance(sparsities, Mapping):
        raise ValueError(f"sparsities must be a mapping of group name: ratio, got {sparsities!r}")
    removed = {}
    for name, sparsity in sparsities.items():
        if name not in groups:
            raise ValueError(f"sparsities[{name!r}]={sparsity!r}: {name!r} is not a channel group; "
                             f"groups: {list(groups)}")
        removed[name] = channels_removed(sparsity, groups[name].group.channels,
                                         key=f"sparsities[{name!r}]")
    return removed


def prune_channels(
    model: nn.Module, sparsities: Mapping[str, float], example_inputs: ExampleInputs
) -> nn.Module:
    """Remove ``round(s * channels)`` output channels of each group ``{name: s}``, for real.

    Channels are ranked by L1 norm of their weights summed over the group's layers; at least one
    channel of every group is kept. Every tensor that reads a removed channel (BatchNorm, the next
    layers' inputs, a residual branch) shrinks with it, so the result runs forward on the
    original inputs to outputs of the original shape, with fewer parameters and FLOPs. Groups not
    named stay dense. The model is changed in place and returned.

    The pruned shapes live in the modules, not in a state dict: save the whole module
    (``torch.save(model, path)``, loaded with ``torch.load(path, weights_only=False)``), or prune
    a freshly built model with the same ``sparsities`` before ``load_state_dict``. Build the
    optimizer after pruning (one built before holds the old, larger parameters).

    Raises:
        ValueError: naming the key and value, before anything in the model changes, for a key
            that is not a group of :func:`channel_groups`, a ratio outside [0, 1), or one that
            would remove every channel of its group.
    """
    checked = {raw.group.name: raw for raw in _checked_groups(model, example_inputs)}
    removed = _check_sparsities(sparsities, checked)
    chosen = [checked[name] for name in checked if removed.get(name)]
    indices = {raw.group.name: _removal(model, raw, removed[raw.group.name]) for raw in chosen}
    with eval_mode(model):
        with torch.no_grad():
            shapes = output_shapes(call_model(model, example_inputs))
        _remove(model, example_inputs, indices, chosen)
        with torch.no_grad():
            got = output_shapes(call_model(model, example_inputs))
    if got != shapes:  # every group was proven one channel at a time; this would be a bug
        raise RuntimeError(f"channel pruning at {dict(sparsities)} changed the outputs' shapes "
                           f"from {shapes} to {got}")
    _logger.info("removed %s channels of %d groups: %d parameters left", sum(removed.values()),
                 len(chosen), sum(p.numel() for p in model.parameters()))
    return model


def channel_layers(
    model: nn.Module, example_inputs: ExampleInputs, *, groups: Sequence[ChannelGroup] | None = None
) -> list[ChannelLayer]:
    """Per prunable layer, its dense FLOPs and the groups that scale them (profile fields).

    ``groups`` (default: :func:`channel_groups`) must come from the same model. The prediction
    ``sum(flops * keep(in_group) * keep(out_group))`` equals :func:`count_flops` of the model
    :func:`prune_channels` returns, with the kept fraction of whole channels as ``keep``.

    Raises:
        ValueError: for a group not of this model, or a layer the forward pass does not call.
    """
    flops = count_flops(model, example_inputs)
    layers = prunable_layers(model)
    missing = [name for name in layers if name not in flops]
    if missing:
        raise ValueError(f"layers {missing} were not called by the forward pass")
    with eval_mode(model):
        raw = {r.group.name: r for r in _raw_groups(model, example_inputs)}
    chosen = list(groups) if groups is not None else channel_groups(model, example_inputs)
    out_group: dict[str, str] = {}
    in_group: dict[str, str] = {}
    for group in chosen:
        if group.name not in raw or raw[group.name].group != group:
            raise ValueError(f"groups names {group!r}, which is not a channel group of "
                             f"{type(model).__name__}")
        for name in raw[group.name].outputs:
            out_group[name] = group.name
        for name in raw[group.name].inputs:
            in_group[name] = group.name
    result = []
    for name in layers:
        source = in_group.get(name)
        if source is not None and source == out_group.get(name):
            # depthwise: its inputs are its outputs' own channels; in_channels / groups stays 1
            source = None
        result.append(ChannelLayer(name, int(flops[name]), source, out_group.get(name)))
    return result


class ChannelStrategy:
    """``Pruner``'s channel strategy: the channels go for real, once, in the constructor.

    The optimizer is built after pruning, by the factory, on the smaller parameters.

    Attributes:
        groups: every channel group of the dense model, searched or not.
        pruned_layers: every prunable layer of the pruned model (the layers measured).
    """

    method = CHANNEL

    def __init__(self, setup: StrategySetup) -> None:
        if setup.optimizer is not None:
            raise ValueError("optimizer: with prune_method channel the optimizer must be built "
                             "after pruning (it would hold the old, larger parameters); pass "
                             "optimizer_factory=lambda model: torch.optim.SGD(model.parameters()"
                             ", ...) and train with pruner.optimizer")
        if setup.example_inputs is None:
            raise ValueError("example_inputs is required for prune_method channel: what the model "
                             "is called with (e.g. one batch of inputs), to trace its channel groups")
        model, inputs, self.targets = setup.model, setup.example_inputs, dict(setup.targets)
        groups = {group.name: group for group in channel_groups(model, inputs)}
        for name, sparsity in self.targets.items():
            if name not in groups:
                raise ValueError(f"'{sparsity_key(name)}': {name!r} is not a channel group of "
                                 f"{type(model).__name__}; groups: {listing(groups)}")
            channels_removed(sparsity, groups[name].channels, key=sparsity_key(name))
        self.groups = [groups[name] for name in groups]
        self._dense_flops = sum(count_flops(model, inputs).values())
        self._dense_weights = {name: layer_weight(m).numel()
                               for name, m in prunable_layers(model).items()}
        dense = list(model.parameters())  # kept alive until checked, so ids are not reused
        self.model = prune_channels(model, self.targets, inputs)
        self._flops = sum(count_flops(self.model, inputs).values())
        self.pruned_layers = prunable_layers(self.model)
        assert setup.make_optimizer is not None  # Pruner checked: one of the two
        self.optimizer = setup.make_optimizer(self.model)
        kept = {id(p) for p in self.model.parameters()}
        stale = {id(p) for p in dense} - kept
        if any(id(p) in stale for group in self.optimizer.param_groups for p in group["params"]):
            raise ValueError("optimizer_factory returned an optimizer that holds parameters of the "
                             "model before pruning: build it from the model it is given")
        _logger.info("channel: %d groups pruned, %.4f of the FLOPs and %.4f of the weights removed",
                     sum(1 for s in self.targets.values() if s > 0), self.flops_removed(),
                     self.sparsity())

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return {}

    @property
    def pruned(self) -> bool:
        return True

    def on_epoch_start(self, epoch: int) -> bool:
        return False

    def layer_sparsity(self) -> dict[str, float]:
        return {name: 1.0 - layer_weight(m).numel() / self._dense_weights[name]
                for name, m in self.pruned_layers.items()}

    def sparsity(self) -> float:
        left = sum(layer_weight(m).numel() for m in self.pruned_layers.values())
        return 1.0 - left / sum(self._dense_weights.values())

    def group_sparsity(self) -> dict[str, float]:
        return {group.name: (group.channels - layer_weight(self.pruned_layers[group.name]).shape[0])
                / group.channels for group in self.groups if group.name in self.targets}

    def flops_removed(self) -> float:
        return 1.0 - self._flops / self._dense_flops

    def final_extras(self) -> dict[str, Any]:
        return {"flops_removed": self.flops_removed()}

    def config_list(self) -> list[dict[str, Any]]:
        from nni_prune_tuners.export import channel_config_list

        return channel_config_list(self.targets, {group.name: group.layers for group in self.groups})

    def remove(self) -> None:
        """Nothing to remove: the channels are gone, nothing is masked."""
