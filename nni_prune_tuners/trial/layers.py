"""What a prunable layer is, its weight viewed as [out, in], and its FLOPs (Contract 11).

A prunable layer is a weight a user calls a layer: the ``weight`` of a Conv1d/2d/3d or Linear
module (``nn.MultiheadAttention``'s ``out_proj`` included), of HuggingFace's
``transformers.pytorch_utils.Conv1D`` (stored [in, out]), and the input projection of an
``nn.MultiheadAttention``: ``<mha>.in_proj`` (the packed ``in_proj_weight``, [3E, E]) or, when
``kdim``/``vdim`` differ from ``embed_dim``, ``<mha>.q_proj``, ``<mha>.k_proj`` and
``<mha>.v_proj``. Biases, embeddings and norms are never layers. Masking, channel surgery, the
profile and the presearch all ask here, so that they agree on which layers exist and what they cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nni_prune_tuners.trial.inputs import ExampleInputs, batch_size, call_model, eval_mode

#: torch module types whose ``weight`` can be pruned (HF ``Conv1D`` is recognised by name).
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: The suffix naming the packed q/k/v input projection of an ``nn.MultiheadAttention``.
IN_PROJ = "in_proj"
#: The suffixes of its separate projections (``kdim`` or ``vdim`` differ from ``embed_dim``).
QKV_PROJ = {"q_proj": "q_proj_weight", "k_proj": "k_proj_weight", "v_proj": "v_proj_weight"}


def is_hf_conv1d(module: nn.Module) -> bool:
    """HuggingFace's ``Conv1D`` (GPT-2): a Linear stored [in, out]; by name, so that the
    package never imports transformers."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


class AttentionProjection(nn.Module):
    """An ``nn.MultiheadAttention`` input projection weight as a layer of its own.

    torch reads ``in_proj_weight`` (or ``q/k/v_proj_weight``) inside ``F.multi_head_attention_forward``
    without a module of its own; this view gives it one for masking (its ``weight`` is the
    attention's parameter itself). It is not registered in the model: a mask buffer lives here.
    """

    def __init__(self, attention: nn.MultiheadAttention, attr: str) -> None:
        super().__init__()
        object.__setattr__(self, "attention", attention)  # not a submodule: no double listing
        self.attention: nn.MultiheadAttention
        self.attr = attr

    @property
    def weight(self) -> torch.Tensor:
        """The attention's own parameter (masks change it in place)."""
        return layer_weight(self.attention, self.attr)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The prunable layers of ``model`` by name, in ``named_modules()`` order.

    Values are the modules holding the weight, or an :class:`AttentionProjection` for an
    attention's input projection (named ``<mha>.in_proj`` or ``<mha>.q_proj`` etc.).
    """
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES) or is_hf_conv1d(module):
            layers[name] = module
        elif isinstance(module, nn.MultiheadAttention):
            prefix = f"{name}." if name else ""
            if module.in_proj_weight is not None:
                layers[prefix + IN_PROJ] = AttentionProjection(module, "in_proj_weight")
            else:
                for suffix, attr in QKV_PROJ.items():
                    layers[prefix + suffix] = AttentionProjection(module, attr)
    return layers


def layer_weight(module: nn.Module, attr: str = "weight") -> torch.Tensor:
    """The weight tensor of a prunable layer as stored (masks apply to it), typed."""
    weight = getattr(module, attr, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{type(module).__name__} has no {attr} tensor to prune")
    return weight


def out_in_weight(module: nn.Module) -> torch.Tensor:
    """The weight viewed as [out, in, ...]: HF ``Conv1D`` stores [in, out] and is transposed."""
    weight = layer_weight(module)
    return weight.t() if is_hf_conv1d(module) else weight


def _attention_hook(
    attention: nn.MultiheadAttention, names: Mapping[str, str], flops: dict[str, int]
) -> Any:
    """A forward hook counting an attention's projections from the query, key and value it got.

    A projection costs ``embed_dim`` MACs per element of its input (``in_features`` per output
    feature); ``out_proj`` acts on the attended queries, as many elements as ``query``.
    """
    def hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any) -> None:
        given = dict(zip(("query", "key", "value"), args, strict=False)) | kwargs
        numel = {key: int(given[key].numel()) for key in ("query", "key", "value")}
        embed = attention.embed_dim
        counts = {"out_proj": numel["query"] * embed, "q_proj": numel["query"] * embed,
                  "k_proj": numel["key"] * embed, "v_proj": numel["value"] * embed}
        counts[IN_PROJ] = counts["q_proj"] + counts["k_proj"] + counts["v_proj"]
        for suffix, name in names.items():
            flops[name] = flops.get(name, 0) + counts[suffix]

    return hook


def _module_macs(module: nn.Module, out: torch.Tensor) -> int:
    """MACs of one call of a Conv/Linear/Conv1D module that produced ``out``."""
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    if is_hf_conv1d(module):
        return out.numel() * layer_weight(module).shape[0]
    conv: Any = module
    return out.numel() * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)


def count_flops(model: nn.Module, example_inputs: ExampleInputs) -> dict[str, int]:
    """Multiply-accumulates per sample of every prunable layer, counted on the real module.

    Conv: ``output elements * in_channels / groups * kernel size``; Linear and HF Conv1D:
    ``output elements * in_features``; an ``nn.MultiheadAttention``'s projections, which torch
    applies without calling a module, from the query, key and value the attention is called with.
    Divided by the batch (:func:`~nni_prune_tuners.trial.inputs.batch_size`). The forward runs in
    eval mode with autograd on, which keeps torch's fused transformer fast paths (that call no
    submodule) out of the way. Layers the forward does not use are left out.
    """
    layers = prunable_layers(model)
    attentions = {n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    by_attention: dict[str, dict[str, str]] = {}  # attention -> {projection suffix: layer}
    for name, module in layers.items():
        parent, _, suffix = name.rpartition(".")
        if isinstance(module, AttentionProjection) or (suffix == "out_proj" and parent in attentions):
            by_attention.setdefault(parent, {})[suffix] = name
    covered = {name for names in by_attention.values() for name in names.values()}
    macs: dict[str, int] = {}
    handles: list[RemovableHandle] = []
    for name, module in layers.items():
        if name in covered:
            continue

        def hook(mod: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
            macs[name] = macs.get(name, 0) + _module_macs(mod, out)

        handles.append(module.register_forward_hook(hook))
    for owner, names in by_attention.items():
        attention: Any = model.get_submodule(owner)
        handles.append(attention.register_forward_hook(
            _attention_hook(attention, names, macs), with_kwargs=True))
    try:
        with eval_mode(model), torch.enable_grad():
            call_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    batch = batch_size(example_inputs)
    return {name: macs[name] // batch for name in layers if name in macs}


def layer_flops(model: nn.Module, example_inputs: ExampleInputs) -> dict[str, int]:
    """:func:`count_flops` of every prunable layer, refusing a layer the forward never uses: the
    profile needs the FLOPs of each one."""
    flops = count_flops(model, example_inputs)
    missing = [name for name in prunable_layers(model) if name not in flops]
    if missing:
        raise ValueError(f"layers [{listing(missing)}] were not used by the forward pass")
    return flops


def listing(names: Iterable[str], limit: int = 20) -> str:
    """Names for an error message: the first ``limit``, then how many in all."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"
