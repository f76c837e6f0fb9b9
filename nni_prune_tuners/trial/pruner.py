"""``Pruner``: prune a user's own model inside an NNI trial in a few lines (Contract 7).

The trial keeps its own model, data and training loop; the pruner reads the parameters NNI sent,
applies Level or AGP masks at the start of each epoch, keeps pruned weights at zero after every
optimizer step, and formats the Contract 5 metrics. With ``prune_method: channel`` (Contract 10)
it removes whole channels for real when it is built, and builds the optimizer after that.
Everything runs on the weights' own device: masks are created there and the step hook is pure
tensor arithmetic, so a CUDA model incurs no host synchronisation per step. The pruner chooses
no device; the trial does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from nni_prune_tuners.profile import channels_removed
from nni_prune_tuners.trial.channel import (
    ChannelGroup,
    channel_groups,
    count_flops,
    prune_channels,
)
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

#: The mask methods: tensors keep their dense shape, zeros are kept by a step hook.
METHODS = ("agp", "level")
#: The structured method: whole channels removed for real (Contract 10).
CHANNEL = "channel"
#: Every method ``Pruner`` and :func:`parse_params` accept.
PRUNE_METHODS = (*METHODS, CHANNEL)
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
    Keys ending in ``_sparsity`` are layer sparsities (``channel``: group ratios) wherever they sit;
    other keys are the trial's other hyperparameters and are ignored.

    Raises:
        ValueError: naming the offending key and value: no method, an unknown method, two
            disagreeing methods, a sparsity that is not a number in [0, 1), or no layer at all.
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping (nni.get_next_parameter()), got {params!r}")
    if method is not None and method not in PRUNE_METHODS:
        raise ValueError(f"unknown prune method method={method!r}; "
                         f"expected one of {list(PRUNE_METHODS)}")
    nested: str | None = None
    if METHOD_KEY in params:
        branch = params[METHOD_KEY]
        if not isinstance(branch, Mapping) or "_name" not in branch:
            raise ValueError(f"{METHOD_KEY!r} must be a nested choice with '_name', got {branch!r}")
        nested = branch["_name"]
        if nested not in PRUNE_METHODS:
            raise ValueError(f"unknown prune method {METHOD_KEY}._name={nested!r}; "
                             f"expected one of {list(PRUNE_METHODS)}")
        if method is not None and method != nested:
            raise ValueError(f"method={method!r} disagrees with {METHOD_KEY}._name={nested!r}")
    chosen = method if method is not None else nested
    if chosen is None:
        raise ValueError(
            f"no prune method: params have no {METHOD_KEY!r} choice; pass method='agp', "
            f"'level' or 'channel'"
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


#: ``optimizer_factory``: builds the training optimizer over the model it is given.
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


def _build_optimizer(factory: OptimizerFactory, model: nn.Module) -> torch.optim.Optimizer:
    optimizer = factory(model)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer_factory must return a torch.optim.Optimizer, got {optimizer!r}")
    return optimizer


class Pruner:
    """Prunes what NNI's parameters name, Level, AGP or ``channel``, and keeps it pruned.

    Level and AGP mask weights (``model`` keeps its shapes) and need the optimizer that trains it,
    given as ``optimizer`` or built by ``optimizer_factory(model)``. ``channel`` removes whole
    output channels of each ``<group>_sparsity`` group for real, here in the constructor (the
    pruned module is :attr:`model`, ``model`` changed in place), then builds the optimizer with
    ``optimizer_factory(pruner.model)`` (:attr:`optimizer`). A factory, not a rebuild of an
    optimizer built before pruning: it runs the user's own constructor on the pruned parameters,
    so the optimizer class, its param groups (built by name, e.g. no weight decay on BatchNorm)
    and hyperparameters are exactly what the user wrote. Rebuilding an instance would have to
    guess its constructor from ``defaults``, map per-group options through parameters that no
    longer exist, and would leave any LR scheduler bound to the old, dead optimizer.

    Args:
        model: the model to prune, already on its device with its trained weights loaded.
        params: exactly what ``nni.get_next_parameter()`` returned (nested or flat).
        epochs: number of fine-tuning epochs the trial runs (``on_epoch_start(0 .. epochs-1)``).
        optimizer: Level/AGP: the optimizer that trains ``model``; it must hold every pruned
            weight. A step post-hook re-applies the masks after each ``optimizer.step()``, and
            its state (momentum, Adam moments) is zeroed where a mask prunes. Not for
            ``channel``: an optimizer built before pruning holds the old, larger parameters.
        optimizer_factory: ``fn(model) -> Optimizer``, called once on the model to train
            (``channel``: after pruning), e.g. ``lambda m: torch.optim.SGD(m.parameters(),
            lr=0.01)``; the result is :attr:`optimizer`. Give it or ``optimizer``, not both.
        method: ``"agp"``, ``"level"`` or ``"channel"`` for flat parameters (default: the
            nested ``_name``).
        agp: AGP schedule; default the seed's cubic ramp from epoch 0 to
            ``min(3, epochs - 1)``, so that the masks are final before the last epoch.
        example_inputs: ``channel`` only, required: what ``model`` is called with (one batch of
            inputs on its device) for the dependency analysis and the FLOPs count.

    Raises:
        ValueError: naming the bad input (layer, group, sparsity, method, optimizer, epochs,
            example_inputs), before anything touches the model or the optimizer.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Mapping[str, Any],
        *,
        epochs: int,
        optimizer: torch.optim.Optimizer | None = None,
        optimizer_factory: OptimizerFactory | None = None,
        method: str | None = None,
        agp: AgpSchedule | None = None,
        example_inputs: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        if optimizer is not None and optimizer_factory is not None:
            raise ValueError("give optimizer or optimizer_factory, not both")
        if optimizer_factory is not None and not callable(optimizer_factory):
            raise ValueError(f"optimizer_factory must be callable (model -> Optimizer), "
                             f"got {optimizer_factory!r}")
        if optimizer_factory is None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer (or pass "
                             f"optimizer_factory), got {optimizer!r}")
        if agp is not None and not isinstance(agp, AgpSchedule):
            raise ValueError(f"agp must be an AgpSchedule, got {agp!r}")
        self.method, self.targets = parse_params(params, method=method)
        self.epochs = epochs
        self.model = model
        self._current: dict[str, float] = {}
        self._removed = False
        #: ``channel``: every channel group of the model (ChannelGroup), searched or not.
        self.groups: list[ChannelGroup] = []
        self.schedule = agp if agp is not None else AgpSchedule(
            end_epoch=min(_DEFAULT_AGP_END, epochs - 1))
        if self.method == CHANNEL:
            if optimizer is not None:
                raise ValueError("optimizer: with prune_method channel the optimizer must be built "
                                 "after pruning (it would hold the old, larger parameters); pass "
                                 "optimizer_factory=lambda model: torch.optim.SGD(model.parameters()"
                                 ", ...) and train with pruner.optimizer")
            assert optimizer_factory is not None
            self.optimizer = self._prune_channels(model, optimizer_factory, example_inputs)
            return
        layers = prunable_layers(model)
        for name in self.targets:
            if name not in layers:
                raise ValueError(
                    f"unknown layer {name!r} in '{name}{SPARSITY_SUFFIX}': the model has no "
                    f"Conv1d/2d/3d or Linear module of that name; prunable: {_listing(layers)}"
                )
        if self.method == "agp" and epochs <= self.schedule.end_epoch:
            raise ValueError(f"epochs must exceed the AGP end_epoch ({self.schedule.end_epoch}) "
                             f"so the masks reach their final sparsity, got epochs={epochs}")
        if optimizer is None:
            assert optimizer_factory is not None
            optimizer = _build_optimizer(optimizer_factory, model)
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [n for n in self.targets if id(layer_weight(layers[n])) not in held]
        if missing:
            raise ValueError(
                f"optimizer does not hold the weights of layers {_listing(missing)}: build it from "
                f"this model's parameters (model.parameters())"
            )
        self.optimizer = optimizer
        self._layers = {name: layers[name] for name in layers if name in self.targets}
        self._masker = WeightMasker(self._layers)
        self._masker.attach(optimizer)

    def _prune_channels(
        self, model: nn.Module, factory: OptimizerFactory, example_inputs: Any
    ) -> torch.optim.Optimizer:
        """Check the groups and ratios, remove the channels, build the optimizer (``channel``)."""
        if example_inputs is None:
            raise ValueError("example_inputs is required for prune_method channel: what the model "
                             "is called with (e.g. one batch of inputs), to trace its channel groups")
        groups = {group.name: group for group in channel_groups(model, example_inputs)}
        for name, sparsity in self.targets.items():
            if name not in groups:
                raise ValueError(f"'{name}{SPARSITY_SUFFIX}': {name!r} is not a channel group of "
                                 f"{type(model).__name__}; groups: {_listing(groups)}")
            channels_removed(sparsity, groups[name].channels, key=f"{name}{SPARSITY_SUFFIX}")
        self.groups = [groups[name] for name in groups]
        self._example_inputs = example_inputs
        self._dense_flops = sum(count_flops(model, example_inputs).values())
        self._dense_weights = {name: layer_weight(m).numel()
                               for name, m in prunable_layers(model).items()}
        dense = list(model.parameters())  # kept alive until checked, so ids are not reused
        self.model = prune_channels(model, self.targets, example_inputs)
        self._flops = sum(count_flops(self.model, example_inputs).values())
        self._layers = prunable_layers(self.model)
        optimizer = _build_optimizer(factory, self.model)
        kept = {id(p) for p in self.model.parameters()}
        stale = {id(p) for p in dense} - kept
        if any(id(p) in stale for group in optimizer.param_groups for p in group["params"]):
            raise ValueError("optimizer_factory returned an optimizer that holds parameters of the "
                             "model before pruning: build it from the model it is given")
        del dense
        self._current = dict(self.targets)
        _logger.info("channel: %d groups pruned, %.4f of the FLOPs and %.4f of the weights removed",
                     sum(1 for s in self.targets.values() if s > 0), self.flops_removed(),
                     self.sparsity())
        return optimizer

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The current mask of each masked layer (1 = kept), on its weight's device.

        Empty for ``channel``: its channels are gone, nothing is masked.
        """
        if self.method == CHANNEL:
            return {}
        return dict(self._masker.masks)

    @property
    def pruned(self) -> bool:
        """Whether every layer's mask has reached its final sparsity (Contract 5's ``pruned``)."""
        return all(self._current.get(n) == s for n, s in self.targets.items())

    def on_epoch_start(self, epoch: int) -> None:
        """Update the masks before training ``epoch``: Level prunes once; AGP follows its schedule.

        AGP targets the absolute sparsity ``agp_sparsity(epoch, final)`` of each layer; weights
        pruned earlier stay pruned, and a mask never shrinks (an epoch revisited changes nothing).
        ``channel`` pruned in the constructor: this only checks ``epoch``.
        """
        self._check_epoch(epoch)
        if self.method == CHANNEL:
            return
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
        """Measured fraction of exact zeros in each pruned layer's weight.

        ``channel``: the fraction of each prunable layer's weight removed (output channels of its
        own group, input channels of the group before it), every prunable layer.
        """
        if self.method == CHANNEL:
            return {name: 1.0 - layer_weight(m).numel() / self._dense_weights[name]
                    for name, m in self._layers.items()}
        weights = [layer_weight(m).detach() for m in self._layers.values()]
        zeros = [(w == 0).sum() for w in weights]
        counts = torch.stack([z.to(zeros[0].device) for z in zeros]).tolist()
        return {name: c / w.numel() for name, c, w in zip(self._layers, counts, weights, strict=True)}

    def sparsity(self) -> float:
        """Measured parameter-weighted sparsity over the pruned layers.

        ``channel``: the share of every prunable layer's dense weights removed.
        """
        if self.method == CHANNEL:
            left = sum(layer_weight(m).numel() for m in self._layers.values())
            return 1.0 - left / sum(self._dense_weights.values())
        sizes = {name: layer_weight(m).numel() for name, m in self._layers.items()}
        measured = self.layer_sparsity()
        return sum(measured[n] * sizes[n] for n in sizes) / sum(sizes.values())

    def group_sparsity(self) -> dict[str, float]:
        """``channel``: each searched group's measured fraction of output channels removed."""
        if self.method != CHANNEL:
            raise RuntimeError(f"group_sparsity() is for prune_method channel, not {self.method}")
        return {group.name: 1.0 - layer_weight(self._layers[group.name]).shape[0] / group.channels
                for group in self.groups if group.name in self.targets}

    def flops_removed(self) -> float:
        """``channel``: the fraction of the FLOPs removed, counted on the pruned module
        (:func:`~nni_prune_tuners.trial.count_flops` against the dense one)."""
        if self.method != CHANNEL:
            raise RuntimeError(f"flops_removed() is for prune_method channel, not {self.method}: "
                               f"masks keep every tensor, and its FLOPs, dense")
        return 1.0 - self._flops / self._dense_flops

    def intermediate(self, metric: float, epoch: int) -> dict[str, Any]:
        """The per-epoch dict for ``nni.report_intermediate_result`` (Contract 5)."""
        self._check_epoch(epoch)
        return {"default": float(metric), "epoch": epoch, "sparsity": self.sparsity(),
                "pruned": self.pruned}

    def final(self, metric: float) -> dict[str, Any]:
        """The dict for ``nni.report_final_result`` (Contract 5): metric, sparsity and method;
        ``channel`` adds ``flops_removed``, as the reference trial does."""
        if not self.pruned:
            _logger.warning("final result reported before the masks reached their final sparsity "
                            "(call on_epoch_start for every epoch)")
        result = {"default": float(metric), "sparsity": self.sparsity(), "method": self.method}
        if self.method == CHANNEL:
            result["flops_removed"] = self.flops_removed()
        return result

    def config_list(self) -> list[dict[str, Any]]:
        """NNI's pruning ``config_list`` for the layers pruned here, in model order.

        NNI's ``LevelPruner`` prunes ``int(n * s)`` weights where this pruner prunes
        ``round(n * s)``: the masks agree unless the fraction of ``n * s`` is at least one half.
        ``channel``: NNI 3.0's ``L1NormPruner`` vocabulary, one entry per group with all its
        layers, ``granularity: out_channel`` and the group as ``dependency_group_id``
        (:func:`nni_prune_tuners.export.channel_config_list`).
        """
        if self.method == CHANNEL:
            from nni_prune_tuners.export import channel_config_list

            return channel_config_list(self.targets,
                                       {group.name: group.layers for group in self.groups})
        return [{"op_names": [name], "target_names": ["weight"], "sparse_ratio": self.targets[name]}
                for name in self._layers]

    def remove(self) -> None:
        """Make the zeros permanent and drop every hook and ``weight_mask`` buffer.

        ``channel`` has neither (the channels are gone): nothing to do.
        """
        if self._removed or self.method == CHANNEL:
            return
        with torch.no_grad():
            for name, mask in self._masker.masks.items():
                layer_weight(self._layers[name]).mul_(mask)
        self._masker.remove()
        self._removed = True
