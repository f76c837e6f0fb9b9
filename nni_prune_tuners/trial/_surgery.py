"""The channel and head groups of a model, each proven by a forward pass, and their removal.

Two sources of groups: Torch-Pruning's dependency graph (:mod:`._depgraph`: residual additions,
depthwise convolutions, MLP hidden units) and the attention layouts of :mod:`.heads` (whole heads).
A group is kept only if removing one of its units leaves a model that runs forward to outputs of
the original shape; the others stay dense and are listed (:class:`DenseGroup`) with the reason.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from nni_prune_tuners.trial._depgraph import (
    ChannelGroup,
    DenseGroup,
    _dependency_graph,
    _raw_groups,
    _RawGroup,
)
from nni_prune_tuners.trial.heads import (
    MHA_IN_PROJ_SUFFIX,
    Attention,
    find_attention,
    remove_units,
    unit_importance,
    update_configs,
)
from nni_prune_tuners.trial.inputs import ExampleInputs, call_model, eval_mode, output_shapes
from nni_prune_tuners.trial.layers import layer_weight, prunable_layers

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _HeadGroup:
    """An attention module's heads as a group: its unit is a key/value head with its query heads."""

    group: ChannelGroup
    attention: Attention


Candidate = _RawGroup | _HeadGroup


@dataclass
class Analysis:
    """The groups that prune cleanly, in model order, and those left dense (with why)."""

    groups: list[Candidate] = field(default_factory=list)
    dense: list[DenseGroup] = field(default_factory=list)


def _head_group(attention: Attention) -> _HeadGroup:
    layers = attention.layers
    return _HeadGroup(ChannelGroup(layers[0], layers, attention.kv_heads, kind="heads"), attention)


def _prunes_cleanly(
    model: nn.Module, example_inputs: ExampleInputs, groups: Sequence[Candidate],
    shapes: list[tuple[int, ...]],
) -> str | None:
    """Why removing one unit of each of ``groups`` (on a copy) breaks the forward, else None."""
    trial = copy.deepcopy(model)
    try:
        with eval_mode(trial):
            remove(trial, example_inputs, {c.group.name: [0] for c in groups}, groups)
            with torch.no_grad():
                got = output_shapes(call_model(trial, example_inputs))
    except Exception as exc:  # any failure of the surgery or the forward means: not prunable
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None if got == shapes else f"the outputs change shape from {shapes} to {got}"


def _candidates(model: nn.Module, example_inputs: ExampleInputs, dense: list[DenseGroup]) -> list[Candidate]:
    """Head groups, and Torch-Pruning's groups that do not set a q/k/v output, in model order."""
    attentions, refused = find_attention(model)
    for name, reason in refused:
        _logger.info("the heads of %s stay dense: %s", name, reason)
        dense.append(DenseGroup(name, reason))
    head_layers = {slot.layer for attention in attentions for slot in attention.slots}
    raw = [r for r in _raw_groups(model, example_inputs, dense, head_layers)
           if not head_layers & set(r.outputs)]
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}

    def position(candidate: Candidate) -> int:
        return order.get(candidate.group.name, order.get(
            candidate.group.name.removesuffix(MHA_IN_PROJ_SUFFIX), len(order)))

    heads = [_head_group(a) for a in attentions if a.kv_heads > 1]  # one unit: nothing to choose
    return sorted([*raw, *heads], key=position)


def analyse(model: nn.Module, example_inputs: ExampleInputs) -> Analysis:
    """The groups whose units can really be removed, one unit of each at a time proven."""
    analysis = Analysis()
    with eval_mode(model):
        candidates = _candidates(model, example_inputs, analysis.dense)
        with torch.no_grad():
            shapes = output_shapes(call_model(model, example_inputs))
        if not candidates or _prunes_cleanly(model, example_inputs, candidates, shapes) is None:
            analysis.groups = candidates
            return analysis
        for candidate in candidates:  # greedy: a group joins if the groups kept so far still prune
            reason = _prunes_cleanly(model, example_inputs, [*analysis.groups, candidate], shapes)
            if reason is None:
                analysis.groups.append(candidate)
            else:
                _logger.info("channel group %s (%s) is not prunable, it stays dense: %s",
                             candidate.group.name, ", ".join(candidate.group.layers), reason)
                analysis.dense.append(DenseGroup(candidate.group.name, reason))
    return analysis


def _importance(module: nn.Module) -> torch.Tensor:
    """L1 norm of each output channel's weights (Li et al., ICLR 2017)."""
    weight = layer_weight(module).detach()
    return weight.abs().reshape(weight.shape[0], -1).sum(dim=1).double().cpu()


def removal(model: nn.Module, candidate: Candidate, removed: int) -> list[int]:
    """The ``removed`` units of lowest L1 norm summed over the group's layers (ties: lower first)."""
    if isinstance(candidate, _HeadGroup):
        score = unit_importance(model, candidate.attention)
    else:
        layers = prunable_layers(model)
        score = torch.zeros(candidate.group.channels, dtype=torch.float64)
        for name, pairs in candidate.index_maps:
            norms = _importance(layers[name])
            for idx, root_idx in pairs:
                score[root_idx] += norms[idx]
    order = torch.sort(score, stable=True).indices
    return sorted(int(i) for i in order[:removed])


def remove(
    model: nn.Module, example_inputs: ExampleInputs, indices: Mapping[str, list[int]],
    groups: Sequence[Candidate],
) -> None:
    """Remove ``indices[group]`` units of each group (in place): channels first, then heads."""
    raw = [g for g in groups if isinstance(g, _RawGroup) and indices.get(g.group.name)]
    if raw:
        graph = _dependency_graph(model, example_inputs)
        layers = prunable_layers(model)
        for group in raw:
            root = layers[group.root]
            handler = graph.get_pruner_of_module(root).prune_out_channels
            graph.get_pruning_group(root, handler, idxs=indices[group.group.name]).prune()
    heads = [g for g in groups if isinstance(g, _HeadGroup) and indices.get(g.group.name)]
    for head in heads:
        remove_units(model, head.attention, indices[head.group.name])
    if heads:
        update_configs(model, find_attention(model)[0])
