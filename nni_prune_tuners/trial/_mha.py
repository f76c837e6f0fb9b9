"""``nn.MultiheadAttention`` with some heads removed.

torch's own forward derives ``head_dim = embed_dim // num_heads``: with heads removed the q/k/v
width ``num_heads * head_dim`` is less than ``embed_dim`` (the residual stream, kept), so a
pruned module needs a forward that keeps ``head_dim``. The parameters and attributes stay those of
``nn.MultiheadAttention`` (``in_proj_weight`` of ``3 * num_heads * head_dim`` rows, ``out_proj``),
so code that reads them and ``torch.save`` / ``torch.load`` keep working.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _additive(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A boolean mask (True: not attended) as ``-inf`` where True, a float mask as it is."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros_like(mask, dtype=like.dtype).masked_fill(mask, float("-inf"))


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """Self/cross attention of ``num_heads`` heads of ``head_dim``, read by ``out_proj``.

    Supports what torchvision's ViT and ``nn.TransformerEncoderLayer`` pass: ``attn_mask``
    (``(L, S)`` or ``(N * num_heads, L, S)``), ``key_padding_mask``, ``is_causal``,
    ``need_weights`` and ``batch_first``.
    """

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
        attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, queries, keys = query.shape[0], query.shape[1], key.shape[1]
        width = self.num_heads * self.head_dim
        biases = (self.in_proj_bias.split(width) if self.in_proj_bias is not None else (None,) * 3)

        def heads(x: torch.Tensor, index: int) -> torch.Tensor:
            y = F.linear(x, self.in_proj_weight[index * width:(index + 1) * width], biases[index])
            return y.view(batch, x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(query, 0), heads(key, 1), heads(value, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(queries, keys, dtype=torch.bool, device=q.device).triu(1)
        mask = _additive(attn_mask, scores)
        if mask is not None:
            scores = scores + (mask.view(batch, self.num_heads, queries, keys) if mask.dim() == 3 else mask)
        padding = _additive(key_padding_mask, scores)
        if padding is not None:
            scores = scores + padding.view(batch, 1, 1, keys)
        weights = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(batch, queries, width))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, weights if batched else weights.squeeze(0)
