"""The model profile (Contract 4): what the tuner knows about the model, without torch.

``nni-prune-tuners profile`` (:mod:`nni_prune_tuners.trial.profile`) writes it from a real
``nn.Module``; here we load and validate it, so a malformed profile fails at ``nnictl create``
(through the classArgs validator) with the offending key, rather than mid-experiment. Optional
fields (FLOPs, sensitivity curves, the ``proxy`` results of ``nni-prune-tuners presearch``,
Contract 9, the ``channel_groups`` and per-layer ``in_group``/``out_group`` of the ``channel``
method, Contract 10, and the ``latency`` model of ``profile --latency`` with per-layer
``outputs``) are read when present; an option that needs a missing one says how to get it.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nni_prune_tuners._json import check_count
from nni_prune_tuners.latency import LatencyModel, parse_latency
from nni_prune_tuners.proxy import ProxyResults, parse_proxy

_logger = logging.getLogger(__name__)

PROFILE_FORMAT = 1
#: How to get FLOPs into a profile written without them.
FLOPS_HINT = ("re-profile with --input-shape (one sample's shape, e.g. 3,32,32): "
              "nni-prune-tuners profile --model pkg:factory --input-shape ... --out profile.json")
N_QUANTILES = 101
#: The profile field each allocation heuristic reads (``uniform`` needs none).
_HEURISTIC_FIELDS = {
    "global_magnitude": "magnitude_quantiles",
    "lamp": "lamp_quantiles",
    "erk": "shape",
    "sensitivity": "sensitivity",
}

@dataclass(frozen=True)
class SensitivityCurve:
    """One-shot sensitivity of a layer: the metric with that layer alone pruned, no fine-tuning.

    ``sparsities`` increase from 0.0 (the dense model); ``accuracy[i]`` is the metric at
    ``sparsities[i]`` (higher is better).
    """

    sparsities: tuple[float, ...]
    accuracy: tuple[float, ...]

    def accuracy_at(self, sparsity: float) -> float:
        """The metric at ``sparsity``, linear between grid points, flat beyond the last one."""
        grid = self.sparsities
        if sparsity >= grid[-1]:
            return self.accuracy[-1]
        if sparsity <= grid[0]:
            return self.accuracy[0]
        right = bisect.bisect_right(grid, sparsity)
        lo, hi = grid[right - 1], grid[right]
        t = (sparsity - lo) / (hi - lo)
        return self.accuracy[right - 1] + t * (self.accuracy[right] - self.accuracy[right - 1])

    def drop(self, sparsity: float) -> float:
        """Predicted loss of the metric when the layer alone is pruned to ``sparsity``."""
        return self.accuracy[0] - self.accuracy_at(sparsity)


def channels_removed(sparsity: float, channels: int, *, key: str = "sparsity") -> int:
    """Whole channels a group of ``channels`` loses at ``sparsity``: ``round(s * n)``, never all.

    Shared by the torch side (:func:`nni_prune_tuners.trial.prune_channels`) and the torch-free
    FLOPs prediction, so both round alike (Python's half-to-even ``round``, as ``num_pruned``).

    Raises:
        ValueError: naming ``key`` and the value, for a sparsity outside [0, 1) or one that would
            remove every channel (at most ``(n - 1) / n`` keeps one).
    """
    if (isinstance(sparsity, bool) or not isinstance(sparsity, int | float)
            or not (math.isfinite(sparsity) and 0.0 <= sparsity < 1.0)):
        raise ValueError(f"{key} must be a number in [0, 1), got {sparsity!r}")
    removed = round(float(sparsity) * channels)
    if removed >= channels:
        raise ValueError(f"{key}={sparsity!r} would remove all {channels} channels; at most "
                         f"{(channels - 1) / channels:.6g} keeps one")
    return removed


@dataclass(frozen=True)
class ChannelGroupProfile:
    """A ``channel`` group (Contract 10): layers whose output channels are removed together.

    ``name`` is the group's first layer in ``named_modules()`` order, the ``<name>_sparsity``
    key of the ``channel`` branch; ``channels`` is how many output channels the group has.
    """

    name: str
    layers: tuple[str, ...]
    channels: int

    def keep(self, sparsity: float, *, rounded: bool = False) -> float:
        """Fraction of the group's channels left: ``1 - s``, or whole channels with ``rounded``."""
        removed = channels_removed(sparsity, self.channels, key=f"{self.name}_sparsity")
        return 1.0 - (removed / self.channels if rounded else float(sparsity))


@dataclass(frozen=True)
class LayerProfile:
    """One prunable layer: its weight's size and cost, and score quantiles for the heuristics.

    ``in_group`` / ``out_group`` (``channel`` profiles only) name the channel groups that set the
    layer's input channels and its output channels; None where no group does (the classifier's
    outputs, a depthwise convolution's input: its FLOPs follow its output channels alone).
    ``outputs`` (``profile --latency``) is the number of elements of its output per sample.
    """

    name: str
    params: int
    flops: float | None = None
    type: str | None = None
    shape: tuple[int, ...] | None = None
    magnitude_quantiles: tuple[float, ...] | None = None
    lamp_quantiles: tuple[float, ...] | None = None
    sensitivity: SensitivityCurve | None = None
    in_group: str | None = None
    out_group: str | None = None
    outputs: int | None = None


@dataclass(frozen=True)
class ModelProfile:
    """The prunable layers of a model, keyed by the names that search spaces use."""

    model: str
    layers: Mapping[str, LayerProfile]
    proxy: ProxyResults | None = None
    channel_groups: Mapping[str, ChannelGroupProfile] = field(default_factory=dict)
    latency: LatencyModel | None = None

    @property
    def prunable_params(self) -> int:
        return sum(layer.params for layer in self.layers.values())

    def channel_flops(self, sparsities: Mapping[str, float], *, rounded: bool = False) -> float:
        """FLOPs left after ``channel`` pruning at ``{group: s}`` (groups not named stay dense).

        ``sum(flops_l * keep(in_group_l) * keep(out_group_l))`` over every layer, ``keep = 1 - s``
        (or the whole-channel fraction the torch side really keeps, with ``rounded``): removing a
        group's channels cuts its own layers' FLOPs and those of the layers that read them.

        Raises:
            ValueError: for a profile without channel groups or FLOPs, a key that is not a group,
                or a sparsity outside [0, 1) or one that removes every channel.
        """
        if not self.channel_groups:
            raise ValueError("the profile has no channel_groups; re-profile with --methods "
                             "channel and --input-shape")
        keep = {}
        for group, sparsity in sparsities.items():
            if group not in self.channel_groups:
                raise ValueError(f"{group}_sparsity={sparsity!r} names no channel group; groups: "
                                 f"{list(self.channel_groups)}")
            keep[group] = self.channel_groups[group].keep(sparsity, rounded=rounded)
        total = 0.0
        for name, layer in self.layers.items():
            if layer.flops is None:
                raise ValueError(f"channel_flops needs 'flops' for layer {name!r}; {FLOPS_HINT}")
            total += (layer.flops * keep.get(layer.in_group or "", 1.0)
                      * keep.get(layer.out_group or "", 1.0))
        return total

    def kept_fractions(self, sparsities: Mapping[str, float]) -> tuple[float, float]:
        """``(F, A)``: the fractions of the prunable layers' FLOPs and output elements that the
        pruned model keeps, in the whole channels it really removes (groups not named stay dense).

        Raises:
            ValueError: for a layer without ``flops`` or ``outputs``, or a key that is no group.
        """
        missing = [n for n, layer in self.layers.items() if layer.outputs is None]
        if missing:
            raise ValueError(f"kept_fractions needs 'outputs' for layers {missing}")
        flops = self.channel_flops(sparsities, rounded=True) / self.channel_flops({})
        keep = {g: self.channel_groups[g].keep(s, rounded=True) for g, s in sparsities.items()}
        outputs = [(layer.outputs or 0, keep.get(layer.out_group or "", 1.0))
                   for layer in self.layers.values()]
        return flops, sum(n * k for n, k in outputs) / sum(n for n, _ in outputs)

    def weight(self, name: str, weight_by: str) -> float:
        """The layer's weight in the global sparsity: its parameter count or its FLOPs."""
        layer = self.layers[name]
        if weight_by == "params":
            return float(layer.params)
        if layer.flops is None:
            raise ValueError(f"weight_by='flops' needs 'flops' for layer {name!r}, but the profile "
                             f"was written without an input shape; {FLOPS_HINT}")
        return float(layer.flops)

    def supports(self, heuristic: str) -> bool:
        """Whether every layer carries the data that ``heuristic`` needs."""
        if heuristic == "uniform":
            return True
        field = _HEURISTIC_FIELDS[heuristic]
        return all(getattr(layer, field) is not None for layer in self.layers.values())

    @classmethod
    def from_layer_params(cls, layer_params: Mapping[str, Any]) -> ModelProfile:
        """A minimal profile from ``{layer: parameter count}`` (the ``layer_params`` classArg)."""
        if not isinstance(layer_params, Mapping) or not layer_params:
            raise ValueError(f"layer_params must be a non-empty mapping, got {layer_params!r}")
        layers = {}
        for name, count in layer_params.items():
            check_count(f"layer_params[{name!r}]", count)
            layers[str(name)] = LayerProfile(name=str(name), params=int(count))
        return cls(model="layer_params", layers=layers)


def _quantiles(key: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != N_QUANTILES:
        length = len(value) if isinstance(value, list) else type(value).__name__
        raise ValueError(f"{key} must be a list of {N_QUANTILES} numbers, got {length}")
    numbers = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise ValueError(f"{key} must hold finite numbers, got {item!r}")
        numbers.append(float(item))
    if any(b < a for a, b in itertools.pairwise(numbers)):
        raise ValueError(f"{key} must be non-decreasing")
    return tuple(numbers)


def _numbers(key: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise ValueError(f"{key} must be a list of at least 2 numbers, got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise ValueError(f"{key} must hold finite numbers, got {item!r}")
    return tuple(float(item) for item in value)


def _sensitivity(key: str, value: Any) -> SensitivityCurve | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be an object with 'sparsities' and 'accuracy', got {value!r}")
    sparsities = _numbers(f"{key}.sparsities", value.get("sparsities"))
    accuracy = _numbers(f"{key}.accuracy", value.get("accuracy"))
    if len(accuracy) != len(sparsities):
        raise ValueError(f"{key}: {len(sparsities)} sparsities but {len(accuracy)} accuracies")
    if sparsities[0] != 0.0 or sparsities[-1] >= 1.0 or any(
            b <= a for a, b in itertools.pairwise(sparsities)):
        raise ValueError(f"{key}.sparsities must increase from 0.0 and stay below 1, "
                         f"got {list(sparsities)}")
    return SensitivityCurve(sparsities=sparsities, accuracy=accuracy)


def _layer(index: int, raw: Any) -> LayerProfile:
    where = f"layers[{index}]"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be an object, got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name must be a non-empty string, got {name!r}")
    where = f"layers[{index}] ({name!r})"
    check_count(f"{where}.params", raw.get("params"))
    flops = raw.get("flops")
    if flops is not None and (isinstance(flops, bool) or not isinstance(flops, int | float)
                              or flops <= 0):
        raise ValueError(f"{where}.flops must be a positive number, got {flops!r}")
    shape = raw.get("shape")
    if shape is not None:
        if not isinstance(shape, list) or not shape:
            raise ValueError(f"{where}.shape must be a non-empty list of integers, got {shape!r}")
        for dim in shape:
            check_count(f"{where}.shape", dim)
        if math.prod(shape) != raw["params"]:
            raise ValueError(
                f"{where}.params={raw['params']} does not match shape {shape} "
                f"({math.prod(shape)} weights)"
            )
    outputs = raw.get("outputs")
    if outputs is not None:
        check_count(f"{where}.outputs", outputs)
    groups = {}
    for side in ("in_group", "out_group"):
        group = raw.get(side)
        if group is not None and (not isinstance(group, str) or not group):
            raise ValueError(f"{where}.{side} must be a group name or null, got {group!r}")
        groups[side] = group
    return LayerProfile(
        name=name,
        params=int(raw["params"]),
        flops=None if flops is None else float(flops),
        type=raw.get("type"),
        shape=None if shape is None else tuple(shape),
        magnitude_quantiles=_quantiles(f"{where}.magnitude_quantiles",
                                       raw.get("magnitude_quantiles")),
        lamp_quantiles=_quantiles(f"{where}.lamp_quantiles", raw.get("lamp_quantiles")),
        sensitivity=_sensitivity(f"{where}.sensitivity", raw.get("sensitivity")),
        in_group=groups["in_group"],
        out_group=groups["out_group"],
        outputs=outputs,
    )


def _channel_groups(value: Any, layers: Mapping[str, LayerProfile]) -> dict[str, ChannelGroupProfile]:
    """The optional ``channel_groups`` field (Contract 10), checked against the layers' groups."""
    if value is None:
        value = []
    if not isinstance(value, list):
        raise ValueError(f"channel_groups must be a list of objects, got {value!r}")
    groups: dict[str, ChannelGroupProfile] = {}
    for index, raw in enumerate(value):
        where = f"channel_groups[{index}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be an object with name, layers, channels, got {raw!r}")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.name must be a non-empty string, got {name!r}")
        if name in groups:
            raise ValueError(f"{where}: duplicate channel group name {name!r}")
        members = raw.get("layers")
        if not isinstance(members, list) or not members:
            raise ValueError(f"{where}.layers must be a non-empty list of layer names, "
                             f"got {members!r}")
        for member in members:
            if member not in layers:
                raise ValueError(f"{where}.layers names layer {member!r}, which is not in the "
                                 f"profile's layers")
        channels = raw.get("channels")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2:
            raise ValueError(f"{where}.channels must be an integer >= 2, got {channels!r}")
        groups[name] = ChannelGroupProfile(name=name, layers=tuple(members), channels=channels)
    for index, layer in enumerate(layers.values()):
        for side in ("in_group", "out_group"):
            group = getattr(layer, side)
            if group is not None and group not in groups:
                raise ValueError(f"layers[{index}] ({layer.name!r}).{side}={group!r} is not a "
                                 f"channel group; channel_groups: {list(groups)}")
        if layer.out_group is not None and layer.name not in groups[layer.out_group].layers:
            raise ValueError(f"layers[{index}] ({layer.name!r}).out_group={layer.out_group!r} but "
                             f"that group's layers do not list {layer.name!r}")
    return groups


def parse_profile(data: Any) -> ModelProfile:
    """Validate decoded profile JSON; errors name the offending key and value."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a profile must be a JSON object, got {type(data).__name__}")
    if data.get("format") != PROFILE_FORMAT:
        raise ValueError(f"profile format must be {PROFILE_FORMAT}, got {data.get('format')!r}")
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise ValueError(f"profile 'layers' must be a non-empty list, got {raw_layers!r}")
    layers: dict[str, LayerProfile] = {}
    for index, raw in enumerate(raw_layers):
        layer = _layer(index, raw)
        if layer.name in layers:
            raise ValueError(f"layers[{index}]: duplicate layer name {layer.name!r}")
        layers[layer.name] = layer
    groups = _channel_groups(data.get("channel_groups"), layers)
    profile = ModelProfile(model=str(data.get("model", "model")), layers=layers,
                           proxy=parse_proxy(data.get("proxy"), layers), channel_groups=groups,
                           latency=parse_latency(data.get("latency"), layers, groups))
    declared = data.get("prunable_params")
    if declared is not None and declared != profile.prunable_params:
        raise ValueError(
            f"prunable_params={declared!r} but the layers hold {profile.prunable_params} weights"
        )
    return profile


def load_profile(path: str | Path) -> ModelProfile:
    """Read and validate a profile JSON file; errors name the file and what is wrong in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"profile {str(path)!r} cannot be read: {error.strerror}") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"profile {str(path)!r} is not valid JSON: {error.msg} at line {error.lineno}, "
            f"column {error.colno}"
        ) from error
    try:
        return parse_profile(data)
    except ValueError as error:
        raise ValueError(f"profile {str(path)!r}: {error}") from error
