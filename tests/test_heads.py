"""Attention heads as channel groups (Contracts 10, 11): found, removed whole, counted in FLOPs.

Tiny random-weight configurations of HF BERT, GPT-2, LLaMA with grouped-query attention and
ViT, torch's ``nn.TransformerEncoderLayer``, and torchvision's ``vit_b_16`` design rebuilt from
``nn.MultiheadAttention`` (torchvision itself does not load beside the CPU torch pinned here).
FLOPs removed are measured independently with ``torch.utils.flop_counter.FlopCounterMode`` (the
math attention kernel, so the products are counted as matmuls).
"""

from __future__ import annotations

import copy
import io
import logging
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nni_prune_tuners.trial import channel_groups, prune_channels
from nni_prune_tuners.trial.channel import channel_analysis, channel_layers
from nni_prune_tuners.trial.heads import ATTENTION_TERM_SUFFIX, HeadPrunedMultiheadAttention
from trials.models import vit_digits

IDS = torch.randint(0, 90, (2, 16), generator=torch.Generator().manual_seed(0))


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def _macs(model: nn.Module, inputs: Any) -> float:
    """Multiply-accumulates of one forward, counted by torch (attention products as matmuls)."""
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            _call(model, inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    return counter.get_total_flops() / 2


def _hf(name: str) -> tuple[nn.Module, Any]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64}
    if name == "bert":
        model = transformers.BertForSequenceClassification(
            transformers.BertConfig(vocab_size=90, **small))
        return model.eval(), {"input_ids": IDS}
    if name == "llama":
        model = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(vocab_size=90, num_key_value_heads=2, **small))
        return model.eval(), {"input_ids": IDS, "use_cache": False}
    if name == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=90, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0))
        return model.eval(), {"input_ids": IDS, "use_cache": False}
    model = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=4, num_labels=5, **small))
    return model.eval(), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


class _EncoderBlock(nn.Module):
    """torchvision's ViT ``EncoderBlock``: pre-norm ``nn.MultiheadAttention`` and an MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.self_attention(self.ln_1(x), self.ln_1(x), self.ln_1(x), need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class TorchvisionViT(nn.Module):
    """torchvision's ``vit_b_16`` design, tiny: conv patches, class token, MHA encoder blocks."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.layers = nn.Sequential(*(_EncoderBlock(dim, heads) for _ in range(depth)))
        self.ln = nn.LayerNorm(dim)
        self.heads = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embedding
        return self.heads(self.ln(self.layers(x))[:, 0])


def _mha_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "torchvision_vit":
        return TorchvisionViT().eval(), torch.randn(2, 3, 16, 16)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    return nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                         nn.Linear(32, 5)).eval(), torch.randn(2, 7, 32)


def _heads(groups: list[Any]) -> dict[str, int]:
    return {g.name: g.channels for g in groups if g.kind == "heads"}


EXPECTED_HEADS = {
    "bert": {f"bert.encoder.layer.{i}.attention.self.query": 4 for i in range(2)},
    "llama": {f"model.layers.{i}.self_attn.q_proj": 2 for i in range(2)},  # units: 2 KV heads
    "gpt2": {f"transformer.h.{i}.attn.c_attn": 4 for i in range(2)},
    "vit": {f"vit.layers.{i}.attention.q_proj": 4 for i in range(2)},
}


@pytest.mark.parametrize("name", ["bert", "llama", "gpt2", "vit"])
def test_hf_heads_are_groups_removed_whole_and_the_model_saves_and_loads(name: str) -> None:
    model, inputs = _hf(name)
    groups = channel_groups(model, inputs)
    assert _heads(groups) == EXPECTED_HEADS[name]
    with torch.no_grad():
        shapes = [t.shape for t in _call(model, inputs).values() if isinstance(t, torch.Tensor)]
    first = next(iter(EXPECTED_HEADS[name]))
    pruned = prune_channels(model, {first: 0.5}, inputs)
    attention = pruned.get_submodule(first.rsplit(".", 1)[0])
    with torch.no_grad():
        out = _call(pruned, inputs)
    assert [t.shape for t in out.values() if isinstance(t, torch.Tensor)] == shapes
    buffer = io.BytesIO()
    torch.save(pruned, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        again = _call(loaded, inputs)
    assert torch.equal(out.logits, again.logits)
    heads = {"bert": "num_attention_heads", "vit": "num_attention_heads", "gpt2": "num_heads",
             "llama": "num_heads"}[name]
    assert getattr(attention, heads) == 2


def test_grouped_query_heads_go_with_their_key_value_head_and_the_config_follows() -> None:
    model, inputs = _hf("llama")
    dense = copy.deepcopy(model)
    layer = "model.layers.{}.self_attn"
    with torch.no_grad():  # KV head 0 (and its 2 query heads) has the lowest L1 norm in both layers
        for i in range(2):
            attention = model.get_submodule(layer.format(i))
            attention.k_proj.weight[:8] *= 0.01
            attention.q_proj.weight[:16] *= 0.01
    kept_q = model.get_submodule(layer.format(0)).q_proj.weight[16:].clone()
    pruned = prune_channels(model, {f"{layer.format(i)}.q_proj": 0.5 for i in range(2)}, inputs)
    attention = pruned.get_submodule(layer.format(0))
    assert (attention.q_proj.out_features, attention.k_proj.out_features) == (16, 8)
    assert torch.equal(attention.q_proj.weight, kept_q)
    assert attention.num_key_value_groups == 2 and attention.num_key_value_heads == 1
    config = pruned.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 8)
    rebuilt = type(dense)(config).eval()  # the updated config builds the pruned shapes
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt(**inputs).logits, pruned(**inputs).logits)


@pytest.mark.parametrize("name", ["bert", "llama", "vit"])
def test_flops_removed_measured_independently_match_the_profile_terms(name: str) -> None:
    model, inputs = _hf(name)
    groups = channel_groups(model, inputs)
    layers = channel_layers(model, inputs, groups=groups)
    tokens = 17 if name == "vit" else 16  # 16 patches and the class token
    products = [layer.flops for layer in layers if layer.name.endswith(ATTENTION_TERM_SUFFIX)]
    assert products == [2 * 32 * tokens * tokens] * 2  # QK^T and AV: heads * head_dim = 32
    sparsities = {g.name: 0.5 if g.kind == "heads" else 0.3 for g in groups}
    keep = {g.name: 1 - round(sparsities[g.name] * g.channels) / g.channels for g in groups}

    def left(terms: list[Any]) -> float:
        return sum(t.flops * keep.get(t.in_group or "", 1.0) * keep.get(t.out_group or "", 1.0)
                   for t in terms) / sum(t.flops for t in terms)

    dense = _macs(model, inputs)
    assert sum(layer.flops for layer in layers) * 2 == pytest.approx(dense, rel=1e-9)  # batch 2
    measured = 1 - _macs(prune_channels(model, sparsities, inputs), inputs) / dense
    # the bound: the prediction the tuner meets equals the measured FLOPs removed within 1e-6
    assert measured == pytest.approx(1 - left(layers), abs=1e-6)


@pytest.mark.parametrize("name", ["torchvision_vit", "transformer_encoder"])
def test_multihead_attention_heads_are_removed_and_the_module_still_runs(name: str) -> None:
    model, x = _mha_model(name)
    analysis = channel_analysis(model, x)
    heads = _heads(analysis.groups)
    assert len(heads) == 2 and all(n.endswith(".in_proj") for n in heads)
    assert set(heads.values()) == {4}
    assert any(g.kind == "channels" for g in analysis.groups)  # the MLP hidden units
    with torch.no_grad():
        dense_out = model(x)
    first = next(iter(heads))
    attention = model.get_submodule(first.removesuffix(".in_proj"))
    dense_attention = copy.deepcopy(attention)
    tokens = torch.randn(2, 7, 32)
    dense_macs = _macs(dense_attention, (tokens, tokens, tokens))
    pruned = prune_channels(model, {name: 0.75 for name in heads}, x)
    assert isinstance(attention, HeadPrunedMultiheadAttention) and attention.num_heads == 1
    assert attention.in_proj_weight.shape == (3 * 8, 32) and attention.out_proj.weight.shape == (32, 8)
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == dense_out.shape
    # projections and products of the attention both scale with its heads: 1 of 4 kept
    assert _macs(attention, (tokens, tokens, tokens)) / dense_macs == pytest.approx(0.25)
    buffer = io.BytesIO()
    torch.save(pruned, buffer)
    buffer.seek(0)
    with torch.no_grad():
        assert torch.equal(torch.load(buffer, weights_only=False)(x), out)


def test_head_pruned_attention_matches_torch_with_the_same_heads_left() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=False).eval()
    pruned = copy.deepcopy(mha)
    pruned.__class__ = HeadPrunedMultiheadAttention
    x = torch.randn(5, 3, 16)
    mask = torch.ones(5, 5, dtype=torch.bool).triu(1)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, -1] = True
    with torch.no_grad():
        want, weights = mha(x, x, x, attn_mask=mask, key_padding_mask=padding)
        got, got_weights = pruned(x, x, x, attn_mask=mask, key_padding_mask=padding)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(got_weights, weights, atol=1e-6)


def test_zoo_vit_heads_are_searchable() -> None:
    torch.manual_seed(0)
    model = vit_digits().eval()
    x = torch.randn(2, *model.input_shape)
    heads = _heads(channel_groups(model, x))
    assert heads == {f"blocks.{i}.attn.q": 4 for i in range(3)}
    pruned = prune_channels(model, {"blocks.0.attn.q": 0.5}, x)
    assert pruned.blocks[0].attn.heads == 2 and pruned.blocks[0].attn.q.out_features == 32


class _Shuffle(nn.Module):
    """Channel shuffle, whose reshape Torch-Pruning cannot always follow."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.b(y).mean((2, 3)))


def test_a_group_whose_analysis_fails_stays_dense_and_is_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch_pruning

    real = torch_pruning.DependencyGraph.get_pruning_group

    def failing(self: Any, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if getattr(module, "in_channels", None) == 3:
            raise ZeroDivisionError("integer division or modulo by zero")
        return real(self, module, *args, **kwargs)

    monkeypatch.setattr(torch_pruning.DependencyGraph, "get_pruning_group", failing)
    caplog.set_level(logging.INFO, logger="nni_prune_tuners.trial._depgraph")
    analysis = channel_analysis(_Shuffle().eval(), torch.randn(1, 3, 4, 4))
    assert [g.name for g in analysis.groups] == ["b"]
    assert [(d.name, d.reason.split(":")[1].strip()) for d in analysis.dense] == [
        ("a", "ZeroDivisionError")]
    assert any("a stays dense" in r.getMessage() for r in caplog.records)
