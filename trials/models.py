"""Models for the reference trial, named by ``module:factory`` (``trials.models:digits_cnn``).

``digits_cnn`` (the default, 8x8 digits) plus a zoo of small architectures on the hard 16x16
digits variant (:func:`trials.data.hard_digits_split`): ``resnet_digits``, ``mobilenet_digits``,
``vit_digits`` and ``mlp_digits``; and ``text_stdlib``, a character-level Transformer on
:func:`trials.data.stdlib_text_split`. Every model class has ``input_shape`` (one sample's shape, which
``profile_model`` uses for FLOPs) and ``data_variant`` (the :data:`trials.data.DATA_VARIANTS` key it
trains on). Each zoo model trains dense on two CPU cores in about a minute.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from trials.data import TEXT_MODULES, TEXT_VOCAB, TEXT_WINDOW

_logger = logging.getLogger(__name__)

HARD_SHAPE: tuple[int, ...] = (1, 16, 16)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits whose prunable layers are ``conv0``, ``conv1`` and ``fc``.

    The names match the seed's search space; ``input_shape`` lets ``profile_model`` build a sample
    input without being told.
    """

    input_shape: tuple[int, ...] = (1, 8, 8)
    data_variant = "digits"

    def __init__(self, *, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width!r}")
        self.conv0 = nn.Conv2d(1, width, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(width, 2 * width, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * width * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv0(x)))
        x = self.pool(torch.relu(self.conv1(x)))
        return self.fc(torch.flatten(x, 1))


def digits_cnn() -> DigitsCNN:
    """Factory used by the trial and by ``python -m trials.profile_model``."""
    return DigitsCNN()


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 convs with BatchNorm, identity or 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetDigits(nn.Module):
    """A CIFAR-style ResNet for 16x16 digits: stem, three stages of basic blocks, linear head.

    With the defaults (widths 16/32/64, blocks 2/1/1) it has 12 prunable layers: ``stem``,
    ``layerN.M.conv1``/``conv2``, ``layerN.0.shortcut.0`` and ``fc``.
    """

    input_shape: tuple[int, ...] = HARD_SHAPE
    data_variant = "digits_hard"

    def __init__(
        self, *, widths: tuple[int, ...] = (16, 32, 64), blocks: tuple[int, ...] = (2, 1, 1),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths and blocks must be non-empty and equally long, got "
                             f"{widths!r} and {blocks!r}")
        _check_positive(num_classes=num_classes, **{f"widths[{i}]": w for i, w in enumerate(widths)},
                        **{f"blocks[{i}]": b for i, b in enumerate(blocks)})
        self.stem = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        in_channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True), start=1):
            layers = []
            for index in range(count):
                stride = 2 if stage > 1 and index == 0 else 1
                layers.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
        self.num_stages = len(widths)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_digits() -> ResNetDigits:
    """ResNet zoo model (12 prunable conv/linear layers, BatchNorm) on the hard digits."""
    return ResNetDigits()


class SeparableBlock(nn.Module):
    """MobileNet (Howard et al. 2017) block: 3x3 depthwise conv then 1x1 pointwise conv, each with BN.

    ``depthwise`` and ``pointwise`` are separate ``Conv2d`` modules, so they are pruned separately.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1,
                                   groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.depthwise(x)))
        return torch.relu(self.bn2(self.pointwise(x)))


class MobileNetDigits(nn.Module):
    """A MobileNet-v1-style network for 16x16 digits: a stem conv, depthwise-separable blocks, head.

    Prunable layers: ``stem``, ``blocks.N.depthwise``, ``blocks.N.pointwise`` and ``fc``.
    """

    input_shape: tuple[int, ...] = HARD_SHAPE
    data_variant = "digits_hard"

    #: (output channels, stride) of each separable block.
    DEFAULT_CFG: tuple[tuple[int, int], ...] = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1))

    def __init__(
        self, *, stem_width: int = 16, cfg: tuple[tuple[int, int], ...] = DEFAULT_CFG,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        _check_positive(stem_width=stem_width, num_classes=num_classes)
        if not cfg:
            raise ValueError(f"cfg must name at least one block, got {cfg!r}")
        self.stem = nn.Conv2d(1, stem_width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(stem_width)
        blocks = []
        in_channels = stem_width
        for out_channels, stride in cfg:
            _check_positive(out_channels=out_channels, stride=stride)
            blocks.append(SeparableBlock(in_channels, out_channels, stride))
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def mobilenet_digits() -> MobileNetDigits:
    """MobileNet zoo model (5 separable blocks: 12 prunable layers) on the hard digits."""
    return MobileNetDigits()


class Attention(nn.Module):
    """Multi-head self-attention with explicit ``q``, ``k``, ``v`` and ``out`` linears.

    Separate ``nn.Linear`` layers make each projection a layer of its own. The forward reshapes by
    ``heads`` and ``head_dim``, not by the input's width, so the ``channel`` method can remove whole
    heads (``heads`` is then updated) while the residual stream keeps its width.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads, got heads={heads!r}")
        self.heads, self.head_dim = heads, dim // heads  # what the forward reshapes by
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.out(y.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim))


class Mlp(nn.Module):
    """Transformer feed-forward block: ``fc1``, GELU, ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer encoder block (attention and MLP, each with a residual)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTDigits(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al. 2021) on 4x4 patches of 16x16 digits.

    Prunable layers: ``patch_embed`` (a linear on flattened patches), ``blocks.N.attn.{q,k,v,out}``,
    ``blocks.N.mlp.{fc1,fc2}`` and ``head``: 20 with the default depth 3.
    """

    input_shape: tuple[int, ...] = HARD_SHAPE
    data_variant = "digits_hard"

    def __init__(
        self, *, patch: int = 4, dim: int = 64, depth: int = 3, heads: int = 4, mlp_ratio: int = 2,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        _check_positive(patch=patch, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
                        num_classes=num_classes)
        channels, height, width = self.input_shape
        if height % patch or width % patch:
            raise ValueError(f"patch must divide the image side {height}, got {patch!r}")
        self.patch = patch
        tokens = (height // patch) * (width // patch)
        self.patch_embed = nn.Linear(channels * patch * patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (B, tokens, C*p*p)
        tokens = self.patch_embed(patches)
        cls = self.cls_token.expand(len(x), -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vit_digits() -> ViTDigits:
    """Vision Transformer zoo model (20 prunable linears) on the hard digits."""
    return ViTDigits()


class MlpDigits(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998; the classic pruning benchmark of Han et al. 2015).

    Prunable layers ``fc1`` (256 -> 300), ``fc2`` (300 -> 100) and ``fc3`` (100 -> 10).
    """

    input_shape: tuple[int, ...] = HARD_SHAPE
    data_variant = "digits_hard"

    def __init__(self, *, hidden: tuple[int, int] = (300, 100), num_classes: int = 10) -> None:
        super().__init__()
        _check_positive(hidden0=hidden[0], hidden1=hidden[1], num_classes=num_classes)
        self.fc1 = nn.Linear(math.prod(self.input_shape), hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(torch.relu(self.fc2(x)))


def mlp_digits() -> MlpDigits:
    """LeNet-300-100 zoo model on the hard digits (3 prunable linears)."""
    return MlpDigits()


class TextTransformer(nn.Module):
    """A character-level Transformer classifier: which standard-library module a line is from.

    Inputs are ``(N, 48)`` character codes as floats (what :func:`trials.data.stdlib_text_split`
    gives, and zeros for ``--input-shape 48``), cast to token ids. Prunable layers:
    ``blocks.N.attn.{q,k,v,out}``, ``blocks.N.mlp.{fc1,fc2}`` and ``head``; the ``channel``
    method removes heads, MLP hidden units and residual channels.
    """

    input_shape: tuple[int, ...] = (TEXT_WINDOW,)
    data_variant = "stdlib_text"

    def __init__(self, *, dim: int = 48, depth: int = 2, heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        _check_positive(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio)
        self.embed = nn.Embedding(TEXT_VOCAB, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, TEXT_WINDOW, dim) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(TEXT_MODULES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.long().clamp(0, TEXT_VOCAB - 1)) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


def text_stdlib() -> TextTransformer:
    """Character-level Transformer zoo model (13 prunable linears) on the stdlib text task."""
    return TextTransformer()


#: The zoo by factory name (``digits_cnn`` included), for the CLIs, benchmarks and tests.
ZOO = {
    "digits_cnn": digits_cnn,
    "resnet_digits": resnet_digits,
    "mobilenet_digits": mobilenet_digits,
    "vit_digits": vit_digits,
    "mlp_digits": mlp_digits,
    "text_stdlib": text_stdlib,
}
