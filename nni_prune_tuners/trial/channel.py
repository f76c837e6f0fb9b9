"""Structured (``channel``) pruning, Contract 10: remove whole output channels for real.

Level and AGP masks keep every tensor dense, so the pruned model is as slow as the dense one
without sparse kernels. Here whole output channels (Conv) and output features (Linear) are
removed, and every tensor that reads them shrinks too, so the model gets smaller and faster.

Torch-Pruning's dependency graph (DepGraph, Fang et al., CVPR 2023) finds which layers' channels
are tied (residual additions, depthwise convolutions, the q/k/v projections an attention product
joins) and does the surgery; NNI 3.0's ``ModelSpeedup`` cannot trace any model on torch 2.13
(docs/channel.md). A group Torch-Pruning proposes is kept only if removing one of its channels
leaves a model that still runs forward to outputs of the original shape: that drops the final
classifier, and groups a forward pass cannot shrink. Attention heads are groups of their own,
removed whole (:mod:`nni_prune_tuners.trial.heads`, grouped-query aware); a group that the
analysis or the surgery cannot handle stays dense, named in a log line and in
:func:`channel_analysis`'s ``dense`` (the profile's ``dense_groups``), and the model does not fail.

Usage (the pruned model is ``model`` changed in place)::

    groups = channel_groups(model, example_inputs)            # [ChannelGroup(name, layers, channels)]
    model = prune_channels(model, {groups[0].name: 0.5}, example_inputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)  # build the optimizer AFTER pruning

An optimizer built before pruning holds the old, larger parameters: rebuild it from
``model.parameters()`` after :func:`prune_channels`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nni_prune_tuners.params import CHANNEL, sparsity_key
from nni_prune_tuners.profile import channels_removed
from nni_prune_tuners.trial._depgraph import ChannelGroup, DenseGroup, _raw_groups
from nni_prune_tuners.trial._surgery import Candidate, _HeadGroup, analyse, removal, remove
from nni_prune_tuners.trial.heads import ATTENTION_TERM_SUFFIX, attention_flops, find_attention
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
    An attention module's products (QK^T and AV, no weights) are a term ``<module>#attention``
    whose ``out_group`` is its head group.
    """

    name: str
    flops: int
    in_group: str | None
    out_group: str | None


@dataclass(frozen=True)
class ChannelAnalysis:
    """The prunable groups (:func:`channel_groups`) and those left dense, with why."""

    groups: list[ChannelGroup]
    dense: list[DenseGroup]


def channel_analysis(model: nn.Module, example_inputs: ExampleInputs) -> ChannelAnalysis:
    """:func:`channel_groups` and the groups left dense (the profile's ``dense_groups``).

    Raises:
        ValueError: when ``model`` does not run on ``example_inputs``.
    """
    analysis = analyse(model, example_inputs)
    return ChannelAnalysis([c.group for c in analysis.groups], analysis.dense)


def channel_groups(model: nn.Module, example_inputs: ExampleInputs) -> list[ChannelGroup]:
    """The channel and head groups of ``model`` in ``named_modules()`` order of their first layer.

    Layers whose output channels are tied (residual additions, depthwise and grouped
    convolutions) form one group; an attention module's heads form one group of
    ``kind="heads"`` whose units are its key/value heads, each with its query heads. The final
    classifier (whose outputs are the model's outputs) and groups whose removal breaks the
    forward pass are left out (see :func:`channel_analysis`). ``example_inputs`` is what
    ``model`` is called with (a tensor, a tuple of positional inputs or a dict of keyword
    inputs); the model is traced in eval mode and is not changed.

    Raises:
        ValueError: when ``model`` does not run on ``example_inputs``.
    """
    return channel_analysis(model, example_inputs).groups


def _check_sparsities(
    sparsities: Mapping[str, Any], groups: Mapping[str, Candidate]
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
    """Remove ``round(s * channels)`` output channels (or heads) of each group ``{name: s}``.

    Channels are ranked by L1 norm of their weights summed over the group's layers (heads by
    their q/k/v rows); at least one unit of every group is kept. Every tensor that reads a
    removed channel (BatchNorm, the next layers' inputs, a residual branch, an attention's
    output projection) shrinks with it, and the attributes an attention module reshapes by
    (and its HF config, where one count fits all its layers) are updated, so the result runs
    forward on the original inputs to outputs of the original shape. Groups not named stay
    dense. The model is changed in place and returned.

    The pruned shapes live in the modules, not in a state dict: save the whole module
    (``torch.save(model, path)``, loaded with ``torch.load(path, weights_only=False)``), or prune
    a freshly built model with the same ``sparsities`` before ``load_state_dict``. Build the
    optimizer after pruning (one built before holds the old, larger parameters).

    Raises:
        ValueError: naming the key and value, before anything in the model changes, for a key
            that is not a group of :func:`channel_groups`, a ratio outside [0, 1), or one that
            would remove every channel of its group.
    """
    checked = {c.group.name: c for c in analyse(model, example_inputs).groups}
    removed = _check_sparsities(sparsities, checked)
    chosen = [checked[name] for name in checked if removed.get(name)]
    indices = {c.group.name: removal(model, c, removed[c.group.name]) for c in chosen}
    with eval_mode(model):
        with torch.no_grad():
            shapes = output_shapes(call_model(model, example_inputs))
        remove(model, example_inputs, indices, chosen)
        with torch.no_grad():
            got = output_shapes(call_model(model, example_inputs))
    if got != shapes:  # every group was proven one unit at a time; this would be a bug
        raise RuntimeError(f"channel pruning at {dict(sparsities)} changed the outputs' shapes "
                           f"from {shapes} to {got}")
    _logger.info("removed %s channels or heads of %d groups: %d parameters left",
                 sum(removed.values()), len(chosen), sum(p.numel() for p in model.parameters()))
    return model


def model_flops(model: nn.Module, example_inputs: ExampleInputs) -> dict[str, int]:
    """:func:`count_flops` of the prunable layers plus each attention's products (per sample)."""
    flops = count_flops(model, example_inputs)
    flops.update(attention_flops(model, example_inputs, find_attention(model)[0]))
    return flops


def _scaling_groups(
    model: nn.Module, example_inputs: ExampleInputs, chosen: Sequence[ChannelGroup]
) -> tuple[dict[str, str], dict[str, str]]:
    """Per layer (or attention term), the group of its inputs and of its outputs."""
    heads = {c.group.name: c for c in analyse(model, example_inputs).groups
             if isinstance(c, _HeadGroup)}
    skip = {slot.layer for head in heads.values() for slot in head.attention.slots}
    with eval_mode(model):
        raw = {r.group.name: r for r in _raw_groups(model, example_inputs, skip=skip)}
    out_group: dict[str, str] = {}
    in_group: dict[str, str] = {}
    for group in chosen:
        if group.name in heads and heads[group.name].group == group:
            attention = heads[group.name].attention
            out_group.update({name: group.name for name in group.layers})
            out_group[attention.module + ATTENTION_TERM_SUFFIX] = group.name
            in_group[attention.out] = group.name
            continue
        if group.name not in raw or raw[group.name].group != group:
            raise ValueError(f"groups names {group!r}, which is not a channel group of "
                             f"{type(model).__name__}")
        out_group.update({name: group.name for name in raw[group.name].outputs})
        in_group.update({name: group.name for name in raw[group.name].inputs})
    return in_group, out_group


def channel_layers(
    model: nn.Module, example_inputs: ExampleInputs, *, groups: Sequence[ChannelGroup] | None = None
) -> list[ChannelLayer]:
    """Per prunable layer and attention term, its dense FLOPs and the groups that scale them.

    ``groups`` (default: :func:`channel_groups`) must come from the same model. The prediction
    ``sum(flops * keep(in_group) * keep(out_group))`` equals :func:`model_flops` of the model
    :func:`prune_channels` returns, with the kept fraction of whole channels (heads) as ``keep``.

    Raises:
        ValueError: for a group not of this model, or a layer the forward pass does not call.
    """
    flops = model_flops(model, example_inputs)
    layers = prunable_layers(model)
    missing = [name for name in layers if name not in flops]
    if missing:
        raise ValueError(f"layers {missing} were not called by the forward pass")
    chosen = list(groups) if groups is not None else channel_groups(model, example_inputs)
    in_group, out_group = _scaling_groups(model, example_inputs, chosen)
    result = []
    for name in [*layers, *(n for n in flops if n.endswith(ATTENTION_TERM_SUFFIX))]:
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
        self._dense_flops = sum(model_flops(model, inputs).values())
        self._dense_weights = {name: layer_weight(m).numel()
                               for name, m in prunable_layers(model).items()}
        dense = list(model.parameters())  # kept alive until checked, so ids are not reused
        self.model = prune_channels(model, self.targets, inputs)
        self._flops = sum(model_flops(self.model, inputs).values())
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
        """Measured on the pruned layers; heads as the fraction of units the surgery removed."""
        return {group.name: (channels_removed(self.targets[group.name], group.channels)
                             if group.kind == "heads" else group.channels
                             - layer_weight(self.pruned_layers[group.name]).shape[0])
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
