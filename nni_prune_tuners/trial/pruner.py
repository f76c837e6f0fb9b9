"""``Pruner``: prune a user's own model inside an NNI trial in a few lines (Contract 7).

The trial keeps its own model, data and training loop; the pruner reads the parameters NNI sent,
applies Level or AGP masks at the start of each epoch, keeps pruned weights at zero after every
optimizer step, and formats the Contract 5 metrics. Everything runs on the weights' own device:
masks are created there and the step hook is pure tensor arithmetic, so a CUDA model incurs no
host synchronisation per step. The pruner chooses no device; the trial does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from nni_prune_tuners.trial.masking import (
    AgpSchedule,
    WeightMasker,
    agp_mask,
    agp_sparsity,
    layer_weight,
    level_mask,
    prunable_layers,
)

_logger = logging.getLogger(__name__)

METHODS = ("agp", "level")
SPARSITY_SUFFIX = "_sparsity"
#: The nested choice that carries the method in the seed's search spaces.
METHOD_KEY = "prune_method"
#: The seed's AGP schedule ends at epoch 3; shorter trials end it at their last epoch.
_DEFAULT_AGP_END = 3


def _sparsity_value(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number in [0, 1), got {value!r}")
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{key} must be in [0, 1), got {value!r}")
    return float(value)


def _collect(params: Mapping[str, Any], found: dict[str, float], where: str) -> None:
    for key, value in params.items():
        if key == "_name":
            continue
        path = f"{where}{key}"
        if isinstance(key, str) and key.endswith(SPARSITY_SUFFIX):
            layer = key[: -len(SPARSITY_SUFFIX)]
            if not layer:
                raise ValueError(f"{path!r} names no layer")
            if layer in found:
                raise ValueError(f"layer {layer!r} has two sparsities (again at {path!r})")
            found[layer] = _sparsity_value(path, value)
        elif isinstance(value, Mapping):
            _collect(value, found, f"{path}.")


def parse_params(params: Any, *, method: str | None = None) -> tuple[str, dict[str, float]]:
    """The pruning method and ``{layer: sparsity}`` of NNI parameters, nested or flat.

    Nested (Contract 2): the method is ``params["prune_method"]["_name"]``. Flat: give ``method``.
    Keys ending in ``_sparsity`` are layer sparsities wherever they sit; other keys are the trial's
    other hyperparameters and are ignored.

    Raises:
        ValueError: naming the offending key and value: no method, an unknown method, two
            disagreeing methods, a sparsity that is not a number in [0, 1), or no layer at all.
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping (nni.get_next_parameter()), got {params!r}")
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown prune method method={method!r}; expected one of {list(METHODS)}")
    nested: str | None = None
    if METHOD_KEY in params:
        branch = params[METHOD_KEY]
        if not isinstance(branch, Mapping) or "_name" not in branch:
            raise ValueError(f"{METHOD_KEY!r} must be a nested choice with '_name', got {branch!r}")
        nested = branch["_name"]
        if nested not in METHODS:
            raise ValueError(
                f"unknown prune method {METHOD_KEY}._name={nested!r}; expected one of {list(METHODS)}"
            )
        if method is not None and method != nested:
            raise ValueError(f"method={method!r} disagrees with {METHOD_KEY}._name={nested!r}")
    chosen = method if method is not None else nested
    if chosen is None:
        raise ValueError(
            f"no prune method: params have no {METHOD_KEY!r} choice; pass method='agp' or 'level'"
        )
    sparsities: dict[str, float] = {}
    _collect(params, sparsities, "")
    if not sparsities:
        raise ValueError(f"params name no layer: expected keys like 'conv0{SPARSITY_SUFFIX}', "
                         f"got {sorted(map(str, params))}")
    return chosen, sparsities


def _listing(names: Iterable[str], limit: int = 20) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


class Pruner:
    """Prunes the layers that NNI's parameters name, Level or AGP, and keeps them pruned.

    Args:
        model: the model to prune, already on its device with its trained weights loaded.
        params: exactly what ``nni.get_next_parameter()`` returned (nested or flat).
        epochs: number of fine-tuning epochs the trial runs (``on_epoch_start(0 .. epochs-1)``).
        optimizer: the optimizer that trains ``model``; it must hold every pruned weight. A step
            post-hook re-applies the masks after each ``optimizer.step()``, and its state
            (momentum, Adam moments) is zeroed where a mask prunes.
        method: ``"agp"`` or ``"level"`` for flat parameters (default: the nested ``_name``).
        agp: AGP schedule; default the seed's cubic ramp from epoch 0 to
            ``min(3, epochs - 1)``, so that the masks are final before the last epoch.

    Raises:
        ValueError: naming the bad input (layer, sparsity, method, optimizer, epochs), before
            anything touches the model or the optimizer.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Mapping[str, Any],
        *,
        epochs: int,
        optimizer: torch.optim.Optimizer,
        method: str | None = None,
        agp: AgpSchedule | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
        if agp is not None and not isinstance(agp, AgpSchedule):
            raise ValueError(f"agp must be an AgpSchedule, got {agp!r}")
        self.method, self.targets = parse_params(params, method=method)
        layers = prunable_layers(model)
        for name in self.targets:
            if name not in layers:
                raise ValueError(
                    f"unknown layer {name!r} in '{name}{SPARSITY_SUFFIX}': the model has no "
                    f"Conv1d/2d/3d or Linear module of that name; prunable: {_listing(layers)}"
                )
        self.schedule = agp if agp is not None else AgpSchedule(
            end_epoch=min(_DEFAULT_AGP_END, epochs - 1))
        if self.method == "agp" and epochs <= self.schedule.end_epoch:
            raise ValueError(f"epochs must exceed the AGP end_epoch ({self.schedule.end_epoch}) "
                             f"so the masks reach their final sparsity, got epochs={epochs}")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [n for n in self.targets if id(layer_weight(layers[n])) not in held]
        if missing:
            raise ValueError(
                f"optimizer does not hold the weights of layers {_listing(missing)}: build it from "
                f"this model's parameters (model.parameters())"
            )
        self.epochs = epochs
        self._layers = {name: layers[name] for name in layers if name in self.targets}
        self._current: dict[str, float] = {}
        self._removed = False
        self._masker = WeightMasker(self._layers)
        self._masker.attach(optimizer)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The current mask of each masked layer (1 = kept), on its weight's device."""
        return dict(self._masker.masks)

    @property
    def pruned(self) -> bool:
        """Whether every layer's mask has reached its final sparsity (Contract 5's ``pruned``)."""
        return all(self._current.get(n) == s for n, s in self.targets.items())

    def on_epoch_start(self, epoch: int) -> None:
        """Update the masks before training ``epoch``: Level prunes once; AGP follows its schedule.

        AGP targets the absolute sparsity ``agp_sparsity(epoch, final)`` of each layer; weights
        pruned earlier stay pruned, and a mask never shrinks (an epoch revisited changes nothing).
        """
        self._check_epoch(epoch)
        if self._removed:
            raise RuntimeError("on_epoch_start after remove(): the pruner no longer masks")
        changed = False
        for name, final in self.targets.items():
            if self.method == "level":
                if name in self._current:
                    continue
                mask, step = level_mask(layer_weight(self._layers[name]), final), final
            else:
                step = agp_sparsity(epoch, final, self.schedule)
                if name in self._current and step <= self._current[name]:
                    continue
                weight = layer_weight(self._layers[name])
                mask = agp_mask(weight, step, self._masker.masks.get(name))
            self._masker.apply(name, mask)
            self._current[name] = step
            changed = True
        if changed and _logger.isEnabledFor(logging.INFO):
            _logger.info("epoch %d: %s masks updated, sparsity %.4f of %d layers",
                         epoch, self.method, self.sparsity(), len(self.targets))

    def _check_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < self.epochs:
            raise ValueError(f"epoch must be an int in [0, {self.epochs}), got {epoch!r}")

    def layer_sparsity(self) -> dict[str, float]:
        """Measured fraction of exact zeros in each pruned layer's weight."""
        weights = [layer_weight(m).detach() for m in self._layers.values()]
        zeros = [(w == 0).sum() for w in weights]
        counts = torch.stack([z.to(zeros[0].device) for z in zeros]).tolist()
        return {name: c / w.numel() for name, c, w in zip(self._layers, counts, weights, strict=True)}

    def sparsity(self) -> float:
        """Measured parameter-weighted sparsity over the pruned layers."""
        sizes = {name: layer_weight(m).numel() for name, m in self._layers.items()}
        measured = self.layer_sparsity()
        return sum(measured[n] * sizes[n] for n in sizes) / sum(sizes.values())

    def intermediate(self, metric: float, epoch: int) -> dict[str, Any]:
        """The per-epoch dict for ``nni.report_intermediate_result`` (Contract 5)."""
        self._check_epoch(epoch)
        return {"default": float(metric), "epoch": epoch, "sparsity": self.sparsity(),
                "pruned": self.pruned}

    def final(self, metric: float) -> dict[str, Any]:
        """The dict for ``nni.report_final_result`` (Contract 5): metric, sparsity and method."""
        if not self.pruned:
            _logger.warning("final result reported before the masks reached their final sparsity "
                            "(call on_epoch_start for every epoch)")
        return {"default": float(metric), "sparsity": self.sparsity(), "method": self.method}

    def config_list(self) -> list[dict[str, Any]]:
        """NNI's pruning ``config_list`` for the layers pruned here, in model order.

        NNI's ``LevelPruner`` prunes ``int(n * s)`` weights where this pruner prunes
        ``round(n * s)``: the masks agree unless the fraction of ``n * s`` is at least one half.
        """
        return [{"op_names": [name], "target_names": ["weight"], "sparse_ratio": self.targets[name]}
                for name in self._layers]

    def remove(self) -> None:
        """Make the zeros permanent and drop every hook and ``weight_mask`` buffer."""
        if self._removed:
            return
        with torch.no_grad():
            for name, mask in self._masker.masks.items():
                layer_weight(self._layers[name]).mul_(mask)
        self._masker.remove()
        self._removed = True
