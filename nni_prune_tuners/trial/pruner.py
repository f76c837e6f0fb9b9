"""``Pruner``: prune a user's own model inside an NNI trial in a few lines (Contract 7).

The trial keeps its own model, data and training loop; the pruner reads the parameters NNI sent
(:mod:`nni_prune_tuners.params`) and hands the work to one strategy, chosen once here from the
method: :class:`~nni_prune_tuners.trial.masking.LevelStrategy` or
:class:`~nni_prune_tuners.trial.masking.AgpStrategy` apply masks at the start of each epoch and
keep pruned weights at zero after every optimizer step; with ``prune_method: channel``
(Contract 10) :class:`~nni_prune_tuners.trial.channel.ChannelStrategy` removes whole channels for
real when it is built, and builds the optimizer after that. The pruner formats the Contract 5
metrics. Everything runs on the weights' own device: masks are created there and the step hook is
pure tensor arithmetic, so a CUDA model incurs no host synchronisation per step. The pruner
chooses no device; the trial does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from nni_prune_tuners import params as grammar
from nni_prune_tuners.params import AGP, CHANNEL, LEVEL
from nni_prune_tuners.trial.channel import ChannelGroup, ChannelStrategy
from nni_prune_tuners.trial.masking import AgpSchedule, AgpStrategy, LevelStrategy

_logger = logging.getLogger(__name__)

#: The seed's AGP schedule ends at epoch 3; shorter trials end it at their last epoch.
_DEFAULT_AGP_END = 3


def parse_params(params: Any, *, method: str | None = None) -> tuple[str, dict[str, float]]:
    """The pruning method and ``{layer: sparsity}`` of NNI parameters, nested or flat.

    :func:`nni_prune_tuners.params.parse` without the other hyperparameters; see there for the
    grammar and the ``ValueError`` it raises.
    """
    parsed = grammar.parse(params, method=method)
    assert parsed.method is not None  # parse names a method or raises
    return parsed.method, parsed.sparsities


#: ``optimizer_factory``: builds the training optimizer over the model it is given.
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


class StrategySetup(NamedTuple):
    """What a strategy is built from, checked by ``Pruner`` before any strategy sees it."""

    model: nn.Module
    targets: dict[str, float]
    epochs: int
    optimizer: torch.optim.Optimizer | None
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None
    schedule: AgpSchedule
    example_inputs: Any


class Strategy(Protocol):
    """How one method prunes; ``Pruner`` formats and checks, the strategy does the work."""

    method: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    groups: list[ChannelGroup]

    @property
    def masks(self) -> dict[str, torch.Tensor]: ...
    @property
    def pruned(self) -> bool: ...
    def on_epoch_start(self, epoch: int) -> bool: ...
    def layer_sparsity(self) -> dict[str, float]: ...
    def sparsity(self) -> float: ...
    def group_sparsity(self) -> dict[str, float]: ...
    def flops_removed(self) -> float: ...
    def final_extras(self) -> dict[str, Any]: ...
    def config_list(self) -> list[dict[str, Any]]: ...
    def remove(self) -> None: ...


#: The strategy of each method.
STRATEGIES: dict[str, Callable[[StrategySetup], Strategy]] = {
    LEVEL: LevelStrategy, AGP: AgpStrategy, CHANNEL: ChannelStrategy}


def _checked_factory(factory: OptimizerFactory) -> Callable[[nn.Module], torch.optim.Optimizer]:
    def build(model: nn.Module) -> torch.optim.Optimizer:
        optimizer = factory(model)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer_factory must return a torch.optim.Optimizer, "
                             f"got {optimizer!r}")
        return optimizer

    return build


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
        example_inputs: what ``model`` is called with, on its device: one tensor, a tuple of
            positional inputs or a dict of keyword inputs (token ids for a language model), the
            object ``--example-inputs`` returns. ``channel`` requires it (the dependency
            analysis and the FLOPs count); Level and AGP accept it and do not need it.

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
        _check_options(model, epochs, optimizer, optimizer_factory, agp)
        self.method, self.targets = parse_params(params, method=method)
        self.epochs = epochs
        self.schedule = agp if agp is not None else AgpSchedule(
            end_epoch=min(_DEFAULT_AGP_END, epochs - 1))
        self._strategy = STRATEGIES[self.method](StrategySetup(
            model, dict(self.targets), epochs, optimizer,
            _checked_factory(optimizer_factory) if optimizer_factory is not None else None,
            self.schedule, example_inputs))
        #: The model to train: ``model``, pruned in place with ``channel``.
        self.model = self._strategy.model
        #: The optimizer to train with: ``optimizer``, or the one ``optimizer_factory`` built.
        self.optimizer = self._strategy.optimizer
        #: ``channel``: every channel group of the model (ChannelGroup), searched or not.
        self.groups = self._strategy.groups

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The current mask of each masked layer (1 = kept), on its weight's device.

        Empty for ``channel``: its channels are gone, nothing is masked.
        """
        return dict(self._strategy.masks)

    @property
    def pruned(self) -> bool:
        """Whether every layer's mask has reached its final sparsity (Contract 5's ``pruned``)."""
        return self._strategy.pruned

    def on_epoch_start(self, epoch: int) -> None:
        """Update the masks before training ``epoch``: Level prunes once; AGP follows its schedule.

        AGP targets the absolute sparsity ``agp_sparsity(epoch, final)`` of each layer; weights
        pruned earlier stay pruned, and a mask never shrinks (an epoch revisited changes nothing).
        ``channel`` pruned in the constructor: this only checks ``epoch``.
        """
        self._check_epoch(epoch)
        if self._strategy.on_epoch_start(epoch) and _logger.isEnabledFor(logging.INFO):
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
        return self._strategy.layer_sparsity()

    def sparsity(self) -> float:
        """Measured parameter-weighted sparsity over the pruned layers (zeros / weights).

        ``channel``: the share of every prunable layer's dense weights removed.
        """
        return self._strategy.sparsity()

    def group_sparsity(self) -> dict[str, float]:
        """``channel``: each searched group's measured fraction of output channels removed."""
        return self._strategy.group_sparsity()

    def flops_removed(self) -> float:
        """``channel``: the fraction of the FLOPs removed, counted on the pruned module
        (:func:`~nni_prune_tuners.trial.count_flops` against the dense one)."""
        return self._strategy.flops_removed()

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
        return {"default": float(metric), "sparsity": self.sparsity(), "method": self.method,
                **self._strategy.final_extras()}

    def config_list(self) -> list[dict[str, Any]]:
        """NNI's pruning ``config_list`` for the layers pruned here, in model order.

        NNI's ``LevelPruner`` prunes ``int(n * s)`` weights where this pruner prunes
        ``round(n * s)``: the masks agree unless the fraction of ``n * s`` is at least one half.
        ``channel``: NNI 3.0's ``L1NormPruner`` vocabulary, one entry per group with all its
        layers, ``granularity: out_channel`` and the group as ``dependency_group_id``
        (:func:`nni_prune_tuners.export.channel_config_list`).
        """
        return self._strategy.config_list()

    def remove(self) -> None:
        """Make the zeros permanent and drop every hook and ``weight_mask`` buffer.

        ``channel`` has neither (the channels are gone): nothing to do.
        """
        self._strategy.remove()


def _check_options(
    model: nn.Module, epochs: int, optimizer: torch.optim.Optimizer | None,
    optimizer_factory: OptimizerFactory | None, agp: AgpSchedule | None,
) -> None:
    """``Pruner``'s options, each named with its value, before the parameters are read."""
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

