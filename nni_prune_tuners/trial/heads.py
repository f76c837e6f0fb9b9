"""Attention heads as channel groups (Contracts 10, 11): found by layout, removed whole.

Torch-Pruning ties the q/k/v outputs to the output projection's inputs, but removing single
channels breaks the reshape into heads (so the forward check leaves those groups dense), and it
does not know grouped-query attention. Here the attention modules of the common layouts are
recognised by their attributes, and a group's unit is one key/value head together with the query
heads that read it (one head without GQA): the group's sparsity is the fraction of heads removed.
The surgery slices the projections and updates the attributes the forward reshapes by.

Layouts: HF BERT-style (``query``/``key``/``value`` + the parent's ``output.dense``), HF
``q_proj``/``k_proj``/``v_proj``/``o_proj`` with ``head_dim`` (LLaMA, Qwen, Mistral, ViT), HF GPT-2
(a packed ``c_attn`` Conv1D and ``c_proj``), ``q``/``k``/``v``/``out`` with ``heads`` and ``head_dim``
(the zoo), and ``nn.MultiheadAttention`` (its packed ``in_proj_weight``; torchvision's ViT and
``nn.TransformerEncoderLayer``), which becomes :class:`HeadPrunedMultiheadAttention`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nni_prune_tuners.trial._mha import HeadPrunedMultiheadAttention
from nni_prune_tuners.trial.inputs import ExampleInputs, call_model, eval_mode
from nni_prune_tuners.trial.layers import IN_PROJ, layer_weight

_logger = logging.getLogger(__name__)

#: The name of ``nn.MultiheadAttention``'s packed q/k/v projection as a layer: ``<mha>.in_proj``
#: (:data:`~nni_prune_tuners.trial.layers.IN_PROJ`, the name Level and AGP use too).
MHA_IN_PROJ_SUFFIX = "." + IN_PROJ
#: A FLOPs term of the attention products (QK^T and AV) is named ``<attention module>#attention``.
ATTENTION_TERM_SUFFIX = "#attention"

#: Attributes the forward reshapes by: a number of heads, of key/value heads, or heads * head_dim.
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "heads")
_KV_ATTRS = ("num_key_value_heads",)
_WIDTH_ATTRS = ("all_head_size", "split_size")


@dataclass(frozen=True)
class _Slot:
    """Where one projection's heads live: rows ``start + u * per_unit`` on ``axis`` of a weight."""

    layer: str
    param: str
    bias: str | None
    axis: int
    start: int
    per_unit: int


@dataclass(frozen=True)
class Attention:
    """One attention module: its q/k/v slots, the layer reading the heads, and the head counts."""

    module: str
    slots: tuple[_Slot, _Slot, _Slot]
    out: str
    out_axis: int
    heads: int
    kv_heads: int
    head_dim: int
    packed_mha: bool = False

    @property
    def layers(self) -> tuple[str, ...]:
        """The layer names whose outputs the group sets (``<mha>.in_proj`` for MHA)."""
        if self.packed_mha:
            return (self.module + MHA_IN_PROJ_SUFFIX,)
        return tuple(dict.fromkeys(slot.layer for slot in self.slots))

    @property
    def group_size(self) -> int:
        return self.heads // self.kv_heads


def _child(name: str, attr: str) -> str:
    return f"{name}.{attr}" if name else attr


def _separate(name: str, names: Sequence[str], out: str, heads: int, kv_heads: int,
              head_dim: int, modules: dict[str, nn.Module]) -> Attention | None:
    """Three Linear projections ``names`` (q, k, v) and a Linear ``out`` reading the heads."""
    q, k, v = (modules.get(_child(name, n)) for n in names)
    o = modules.get(out)
    if not all(isinstance(m, nn.Linear) for m in (q, k, v, o)):
        return None
    group = heads // kv_heads
    slots = (_Slot(_child(name, names[0]), "weight", "bias", 0, 0, group * head_dim),
             _Slot(_child(name, names[1]), "weight", "bias", 0, 0, head_dim),
             _Slot(_child(name, names[2]), "weight", "bias", 0, 0, head_dim))
    return Attention(name, slots, out, 1, heads, kv_heads, head_dim)


def _hf_bert(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> Attention | None:
    """BERT-style: ``query``/``key``/``value``, the heads read by the parent's ``output.dense``."""
    heads = getattr(module, "num_attention_heads", None)
    size = getattr(module, "attention_head_size", None)
    if not isinstance(heads, int) or not isinstance(size, int) or "." not in name:
        return None
    out = f"{name.rsplit('.', 1)[0]}.output.dense"
    return _separate(name, ("query", "key", "value"), out, heads, heads, size, modules)


def _qkvo(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> Attention | None:
    """``q_proj``/``k_proj``/``v_proj``/``o_proj`` with ``head_dim`` (LLaMA, Qwen, Mistral, HF ViT)."""
    size = getattr(module, "head_dim", None)
    q, k = getattr(module, "q_proj", None), getattr(module, "k_proj", None)
    if not isinstance(size, int) or not isinstance(q, nn.Linear) or not isinstance(k, nn.Linear):
        return None
    heads, kv_heads = q.out_features // size, k.out_features // size
    if heads * size != q.out_features or not kv_heads or heads % kv_heads:
        return None
    return _separate(name, ("q_proj", "k_proj", "v_proj"), _child(name, "o_proj"), heads, kv_heads,
                     size, modules)


def _zoo(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> Attention | None:
    """``q``/``k``/``v``/``out`` with ``heads`` and ``head_dim`` (the zoo's ViT)."""
    heads, size = getattr(module, "heads", None), getattr(module, "head_dim", None)
    if not isinstance(heads, int) or not isinstance(size, int):
        return None
    return _separate(name, ("q", "k", "v"), _child(name, "out"), heads, heads, size, modules)


def _gpt2(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> Attention | None:
    """GPT-2: a packed ``c_attn`` Conv1D (weight ``[in, 3 * width]``) and ``c_proj`` reading the heads."""
    heads, size = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    conv1d = [type(getattr(module, attr, None)).__name__ == "Conv1D" for attr in ("c_attn", "c_proj")]
    if (not isinstance(heads, int) or not isinstance(size, int) or not all(conv1d)
            or getattr(module, "is_cross_attention", False)):
        return None
    width, layer = heads * size, _child(name, "c_attn")
    slots = tuple(_Slot(layer, "weight", "bias", 1, i * width, size) for i in range(3))
    return Attention(name, (slots[0], slots[1], slots[2]), _child(name, "c_proj"), 0, heads, heads, size)


def _mha(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> Attention | None:
    """``nn.MultiheadAttention`` with its packed ``in_proj_weight`` (rows q, k, v)."""
    if not isinstance(module, nn.MultiheadAttention) or isinstance(module, HeadPrunedMultiheadAttention):
        return None
    if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
        raise ValueError("only a packed in_proj_weight without bias_k/bias_v/add_zero_attn is supported")
    heads, size = module.num_heads, module.head_dim
    slots = tuple(_Slot(name, "in_proj_weight", "in_proj_bias", 0, i * heads * size, size) for i in range(3))
    return Attention(name, (slots[0], slots[1], slots[2]), _child(name, "out_proj"), 1, heads, heads,
                     size, packed_mha=True)


_LAYOUTS: tuple[Callable[[str, nn.Module, dict[str, nn.Module]], Attention | None], ...] = (
    _mha, _hf_bert, _qkvo, _gpt2, _zoo)


def find_attention(model: nn.Module) -> tuple[list[Attention], list[tuple[str, str]]]:
    """The attention modules of ``model`` of a known layout, and ``(name, why not)`` of others."""
    modules = dict(model.named_modules())
    found, refused = [], []
    for name, module in modules.items():
        for layout in _LAYOUTS:
            try:
                attention = layout(name, module, modules)
            except ValueError as exc:
                refused.append((name, f"{type(module).__name__}: {exc}"))
                break
            if attention is not None:
                found.append(attention)
                break
    return found, refused


def _rows(slot: _Slot, units: Sequence[int]) -> list[int]:
    return [slot.start + u * slot.per_unit + i for u in units for i in range(slot.per_unit)]


def unit_importance(model: nn.Module, attention: Attention) -> torch.Tensor:
    """L1 norm of each unit's q/k/v rows (a key/value head with its query heads)."""
    modules = dict(model.named_modules())
    score = torch.zeros(attention.kv_heads, dtype=torch.float64)
    for slot in attention.slots:
        weight = getattr(modules[slot.layer], slot.param).detach()
        for unit in range(attention.kv_heads):
            rows = torch.tensor(_rows(slot, [unit]), device=weight.device)
            score[unit] += float(weight.index_select(slot.axis, rows).abs().sum())
    return score


def _slice(module: nn.Module, param: str, axis: int, index: list[int]) -> None:
    old = getattr(module, param)
    picked = old.detach().index_select(axis, torch.tensor(index, device=old.device)).clone()
    setattr(module, param, nn.Parameter(picked, requires_grad=old.requires_grad))


def _assign(module: nn.Module, values: dict[str, Any]) -> None:
    """Set plain attributes (``nn.Module``'s typing reads every attribute as a tensor or module)."""
    for attr, value in values.items():
        setattr(module, attr, value)


def _sync_features(module: nn.Module) -> None:
    """The size attributes of a Linear or HF Conv1D after its weight changed shape."""
    weight = layer_weight(module)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = int(weight.shape[0]), int(weight.shape[1])
    elif hasattr(module, "nf"):
        _assign(module, {"nf": int(weight.shape[1])})


def remove_units(model: nn.Module, attention: Attention, removed: Sequence[int]) -> None:
    """Remove the key/value heads ``removed`` (and their query heads) of ``attention``, in place."""
    modules = dict(model.named_modules())
    kept = [u for u in range(attention.kv_heads) if u not in set(removed)]
    by_param: dict[tuple[str, str], list[_Slot]] = {}
    for slot in attention.slots:
        by_param.setdefault((slot.layer, slot.param), []).append(slot)
    for (layer, param), slots in by_param.items():
        index = [row for slot in sorted(slots, key=lambda s: s.start) for row in _rows(slot, kept)]
        _slice(modules[layer], param, slots[0].axis, index)
        if slots[0].bias and getattr(modules[layer], slots[0].bias) is not None:
            _slice(modules[layer], slots[0].bias, 0, index)
        if not attention.packed_mha:
            _sync_features(modules[layer])
    q_slot = attention.slots[0]
    _slice(modules[attention.out], "weight", attention.out_axis,
           _rows(_Slot("", "", None, 0, 0, q_slot.per_unit), kept))
    _sync_features(modules[attention.out])
    _set_heads(modules[attention.module], attention, len(kept))


def _set_heads(module: nn.Module, attention: Attention, kept_units: int) -> None:
    """Update the attributes the forward reshapes by (HF config: see :func:`update_configs`)."""
    heads, kv_heads = kept_units * attention.group_size, kept_units
    if attention.packed_mha:
        module.__class__ = HeadPrunedMultiheadAttention
        _assign(module, {"_qkv_same_embed_dim": False})  # no fused fast path: embed_dim / num_heads
    for attrs, value in ((_HEAD_ATTRS, heads), (_KV_ATTRS, kv_heads),
                         (_WIDTH_ATTRS, heads * attention.head_dim)):
        for attr in attrs:
            if isinstance(getattr(module, attr, None), int):
                setattr(module, attr, value)
    if attention.kv_heads != attention.heads and not hasattr(module, "num_key_value_heads"):
        _assign(module, {"num_heads": heads, "num_key_value_heads": kv_heads})


def update_configs(model: nn.Module, attentions: Sequence[Attention]) -> None:
    """Write the head counts into HF configs that rebuild the pruned shapes (``head_dim`` read).

    A config shared by attention modules now of different head counts cannot describe them: it
    is left as it is (save the module with ``torch.save``), and a log line says so.
    """
    modules = dict(model.named_modules())
    counts: dict[int, tuple[Any, set[tuple[int, int, int]]]] = {}
    for attention in attentions:
        module = modules[attention.module]
        config = getattr(module, "config", None)
        if config is None or not hasattr(module, "q_proj"):
            continue
        q, k = module.q_proj, module.k_proj
        shape = (q.out_features // attention.head_dim, k.out_features // attention.head_dim,
                 attention.head_dim)
        counts.setdefault(id(config), (config, set()))[1].add(shape)
    for config, shapes in counts.values():
        if len(shapes) > 1:
            _logger.info("%s not updated: its layers now have different head counts %s; save the "
                         "model with torch.save", type(config).__name__, sorted(shapes))
            continue
        (config.num_attention_heads, kv_heads, config.head_dim), = shapes
        if hasattr(config, "num_key_value_heads"):
            config.num_key_value_heads = kv_heads


def attention_flops(
    model: nn.Module, example_inputs: ExampleInputs, attentions: Sequence[Attention]
) -> dict[str, int]:
    """Multiply-accumulates per sample of the attention products (QK^T and AV) of each module.

    ``2 * heads * head_dim * queries * keys``, with ``queries`` and ``keys`` the token counts of
    one forward of ``example_inputs`` (summed over calls); keyed ``<module>#attention``.
    """
    modules = dict(model.named_modules())
    flops: dict[str, int] = {}
    handles: list[RemovableHandle] = []
    for attention in attentions:
        term = attention.module + ATTENTION_TERM_SUFFIX
        width = attention.heads * attention.head_dim

        def add(queries: int, keys: int, term: str = term, width: int = width) -> None:
            flops[term] = flops.get(term, 0) + 2 * width * queries * keys

        if attention.packed_mha:
            first = modules[attention.module].batch_first

            def pre(_mod: nn.Module, args: tuple[Any, ...], add: Any = add, first: bool = first) -> None:
                query, key = args[0], args[1]
                axis = 1 if first and query.dim() == 3 else 0
                add(query.shape[axis], key.shape[axis])

            handles.append(modules[attention.module].register_forward_pre_hook(pre))
        else:
            def post(_mod: nn.Module, _inp: Any, out: torch.Tensor, add: Any = add) -> None:
                tokens = out.shape[-2] if out.dim() > 2 else out.shape[0]
                add(tokens, tokens)

            handles.append(modules[attention.slots[0].layer].register_forward_hook(post))
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return flops
