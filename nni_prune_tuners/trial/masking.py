"""Level and AGP weight masks, and a masker that keeps pruned weights at zero during fine-tuning.

Importance, schedule and mask application are separate pieces (as in Torch-Pruning):
:func:`level_mask` is the one small pure ``compute_mask``; :func:`agp_sparsity` is a plain function
of the epoch; :class:`WeightMasker` applies masks in place and keeps them applied. :class:`LevelStrategy` and
:class:`AgpStrategy` put them together as ``Pruner``'s mask strategies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nni_prune_tuners.params import AGP, LEVEL, sparsity_key
from nni_prune_tuners.trial.layers import layer_weight, listing, prunable_layers

if TYPE_CHECKING:
    from nni_prune_tuners.trial.pruner import StrategySetup

_logger = logging.getLogger(__name__)

def _check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ValueError(f"{name} must be a number in [0, 1), got {sparsity!r}")
    if not (math.isfinite(sparsity) and 0.0 <= sparsity < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {sparsity!r}")
    return float(sparsity)


def num_pruned(numel: int, sparsity: float) -> int:
    """Number of weights a layer of ``numel`` weights loses at ``sparsity``: ``round(s * n)``.

    Python's ``round`` (half to even) is used, so the count is exact and reproducible everywhere.
    NNI's own ``LevelPruner`` floors instead (``int(n * s)``); the two differ only when the
    fractional part of ``n * s`` is at least one half.
    """
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel!r}")
    return min(numel, round(_check_sparsity(sparsity) * numel))


def level_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Magnitude (Level) mask zeroing exactly ``round(sparsity * numel)`` weights of ``weight``.

    The smallest ``|w|`` are pruned; ties are broken by flat index (lower index pruned first), so
    the mask is deterministic on every device. Selection is by ``kthvalue`` (linear time), not a
    full sort. Returns a mask of ``weight``'s dtype and device, 1 = kept, 0 = pruned.
    """
    k = num_pruned(weight.numel(), sparsity)
    return _mask_from_scores(weight.detach().abs(), k)


def agp_mask(
    weight: torch.Tensor, sparsity: float, previous: torch.Tensor | None = None
) -> torch.Tensor:
    """Magnitude mask for one AGP step at absolute ``sparsity``; earlier pruned weights stay pruned.

    Scoring the previously pruned weights below every live one makes masks nested from step to
    step even when live weights are exactly zero (the schedule never decreases).
    """
    scores = weight.detach().abs()
    if previous is not None:
        scores = torch.where(previous.to(torch.bool), scores, torch.full_like(scores, -1.0))
    return _mask_from_scores(scores, num_pruned(weight.numel(), sparsity))


def _mask_from_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Zero the ``k`` lowest ``scores`` (ties by lower flat index) and return a float mask."""
    flat = scores.reshape(-1)
    if k <= 0:
        return torch.ones_like(scores)
    if k >= flat.numel():
        return torch.zeros_like(scores)
    threshold = torch.kthvalue(flat, k).values
    keep = flat > threshold
    pruned_at_threshold = k - int((flat < threshold).sum())
    ties = torch.nonzero(flat == threshold).reshape(-1)
    if ties.numel() > pruned_at_threshold:
        # Of the weights tied at the threshold, the lowest-index ones are pruned first.
        keep[ties[pruned_at_threshold:]] = True
    return keep.reshape(scores.shape).to(scores.dtype)


@dataclass(frozen=True)
class AgpSchedule:
    """Zhu & Gupta (2017) cubic schedule options; defaults are the seed's (0, 0, 3, 1).

    Args:
        initial_sparsity: sparsity of the first pruning step at ``start_epoch``.
        start_epoch: first epoch (0-based) whose masks are pruned.
        end_epoch: epoch at which the masks reach the layer's final sparsity.
        frequency: epochs between two pruning steps.
    """

    initial_sparsity: float = 0.0
    start_epoch: int = 0
    end_epoch: int = 3
    frequency: int = 1

    def __post_init__(self) -> None:
        _check_sparsity(self.initial_sparsity, "initial_sparsity")
        for name in ("start_epoch", "end_epoch", "frequency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {self.start_epoch!r}")
        if self.end_epoch < self.start_epoch:
            raise ValueError(
                f"end_epoch must be >= start_epoch ({self.start_epoch}), got {self.end_epoch!r}"
            )
        if self.frequency < 1:
            raise ValueError(f"frequency must be >= 1, got {self.frequency!r}")

    def is_step(self, epoch: int) -> bool:
        """True when masks are recomputed before training ``epoch``."""
        if epoch < self.start_epoch or epoch > self.end_epoch:
            return False
        return epoch == self.end_epoch or (epoch - self.start_epoch) % self.frequency == 0


def agp_sparsity(epoch: int, final_sparsity: float, schedule: AgpSchedule | None = None) -> float:
    """Absolute target sparsity of one layer for ``epoch`` under the cubic AGP schedule.

    ``s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** 3`` evaluated at the latest
    pruning step ``t <= epoch`` (steps at ``t0, t0 + frequency, ...`` and always at ``t_end``);
    0 (dense) before ``t0``, ``s_f`` from ``t_end`` on. A layer whose final sparsity is below
    ``initial_sparsity`` starts at its final sparsity, so masks never have to grow back. The value
    is absolute: each step prunes to ``s(t)`` of the layer, never a fraction of what is left.
    """
    sched = schedule if schedule is not None else AgpSchedule()
    final = _check_sparsity(final_sparsity, "final_sparsity")
    initial = min(sched.initial_sparsity, final)
    if epoch < sched.start_epoch:
        return 0.0
    if epoch >= sched.end_epoch:
        return final
    last_step = epoch - (epoch - sched.start_epoch) % sched.frequency
    progress = (last_step - sched.start_epoch) / (sched.end_epoch - sched.start_epoch)
    return final + (initial - final) * (1.0 - progress) ** 3


def measured_sparsity(weights: Iterable[torch.Tensor]) -> float:
    """Parameter-weighted fraction of exact zeros over ``weights`` (0.0 for no weights)."""
    zeros = total = 0
    for w in weights:
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


class WeightMasker:
    """Applies weight masks in place and keeps pruned weights at exactly zero while training.

    Equivalent to ``weight = weight_orig * weight_mask`` but with no cost in the forward pass: the
    weight itself is zeroed, its gradient is masked by a hook, the optimizer's per-parameter state
    (momentum, Adam moments) is zeroed where a mask is applied, and the weight is re-masked after
    every optimizer step, so neither momentum nor weight decay can revive a pruned weight.
    The current mask of each layer is also kept as the buffer ``weight_mask`` of its module.
    """

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        for module in layers.values():
            layer_weight(module)
        self.layers = dict(layers)
        self.masks: dict[str, torch.Tensor] = {}
        self._optimizers: list[torch.optim.Optimizer] = []
        self._handles: list[RemovableHandle] = []

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Mask ``optimizer``'s state on every mask update and re-mask weights after its steps."""
        self._optimizers.append(optimizer)
        self._handles.append(optimizer.register_step_post_hook(self._after_step))

    def apply(self, name: str, mask: torch.Tensor) -> None:
        """Set the mask of layer ``name`` and zero its pruned weights and optimizer state."""
        weight = layer_weight(self.layers[name])
        if mask.shape != weight.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, "
                             f"expected {tuple(weight.shape)}")
        mask = mask.to(device=weight.device, dtype=weight.dtype)
        if name not in self.masks:
            self._handles.append(weight.register_hook(self._grad_hook(name)))
        self.masks[name] = mask
        self.layers[name].register_buffer("weight_mask", mask, persistent=False)
        with torch.no_grad():
            weight.mul_(mask)
            for optimizer in self._optimizers:
                for value in optimizer.state.get(weight, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                        value.mul_(mask)

    def _grad_hook(self, name: str) -> Any:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * self.masks[name]

        return hook

    def _after_step(self, *_: Any) -> None:
        # Pure tensor ops on the weights' device, batched in one foreach call: no host sync.
        if not self.masks:
            return
        weights = [layer_weight(self.layers[name]) for name in self.masks]
        with torch.no_grad():
            torch._foreach_mul_(weights, list(self.masks.values()))

    def remove(self) -> None:
        """Drop hooks and ``weight_mask`` buffers; the weights keep their zeros."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for name in self.masks:
            delattr(self.layers[name], "weight_mask")
        self.masks.clear()
        self._optimizers.clear()

    def sparsity(self, names: Iterable[str] | None = None) -> float:
        """Measured parameter-weighted sparsity of the weights of ``names`` (default: all)."""
        chosen = self.layers if names is None else names
        return measured_sparsity(layer_weight(self.layers[n]).detach() for n in chosen)


class MaskStrategy:
    """``Pruner``'s mask strategy: the targeted layers keep their shapes, pruned weights stay zero.

    A subclass says how far each layer goes at an epoch (:meth:`_next_sparsity`) and which
    weights go (:meth:`_mask`); the masker applies the masks and keeps them applied.

    Attributes:
        targeted: the layers the parameters name, in model order (the layers measured).
    """

    method = ""

    def __init__(self, setup: StrategySetup) -> None:
        layers = prunable_layers(setup.model)
        for name in setup.targets:
            if name not in layers:
                raise ValueError(
                    f"unknown layer {name!r} in '{sparsity_key(name)}': the model has no "
                    f"Conv1d/2d/3d, Linear, HF Conv1D or attention projection of that name; "
                    f"prunable: {listing(layers)}"
                )
        self._check(setup)
        optimizer = setup.optimizer
        if optimizer is None:
            assert setup.make_optimizer is not None  # Pruner checked: one of the two
            optimizer = setup.make_optimizer(setup.model)
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [n for n in setup.targets if id(layer_weight(layers[n])) not in held]
        if missing:
            raise ValueError(
                f"optimizer does not hold the weights of layers {listing(missing)}: build it from "
                f"this model's parameters (model.parameters())"
            )
        self.model = setup.model
        self.optimizer = optimizer
        self.targets = dict(setup.targets)
        self.targeted = {name: layers[name] for name in layers if name in self.targets}
        self.groups: list[Any] = []
        self._current: dict[str, float] = {}
        self._removed = False
        self._masker = WeightMasker(self.targeted)
        self._masker.attach(optimizer)

    def _check(self, setup: StrategySetup) -> None:
        """Options of the variant, checked before anything changes."""

    def _next_sparsity(self, name: str, final: float, epoch: int) -> float | None:
        """The sparsity ``name`` reaches at ``epoch``, or None to leave its mask as it is."""
        raise NotImplementedError

    def _mask(self, name: str, sparsity: float) -> torch.Tensor:
        raise NotImplementedError

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return dict(self._masker.masks)

    @property
    def pruned(self) -> bool:
        return all(self._current.get(n) == s for n, s in self.targets.items())

    def on_epoch_start(self, epoch: int) -> bool:
        """Update the masks before ``epoch``; whether any changed."""
        if self._removed:
            raise RuntimeError("on_epoch_start after remove(): the pruner no longer masks")
        changed = False
        for name, final in self.targets.items():
            step = self._next_sparsity(name, final, epoch)
            if step is None:
                continue
            self._masker.apply(name, self._mask(name, step))
            self._current[name] = step
            changed = True
        return changed

    def _zeros(self) -> dict[str, tuple[int, int]]:
        """``{layer: (zeros, weights)}``, counted on the device with one transfer."""
        weights = [layer_weight(m).detach() for m in self.targeted.values()]
        zeros = [(w == 0).sum() for w in weights]
        counts = torch.stack([z.to(zeros[0].device) for z in zeros]).tolist()
        return {name: (c, w.numel()) for name, c, w in zip(self.targeted, counts, weights, strict=True)}

    def layer_sparsity(self) -> dict[str, float]:
        return {name: zeros / size for name, (zeros, size) in self._zeros().items()}

    def sparsity(self) -> float:
        counts = self._zeros().values()
        return sum(z for z, _ in counts) / sum(n for _, n in counts)

    def group_sparsity(self) -> dict[str, float]:
        raise RuntimeError(f"group_sparsity() is for prune_method channel, not {self.method}")

    def flops_removed(self) -> float:
        raise RuntimeError(f"flops_removed() is for prune_method channel, not {self.method}: "
                           f"masks keep every tensor, and its FLOPs, dense")

    def final_extras(self) -> dict[str, Any]:
        return {}

    def config_list(self) -> list[dict[str, Any]]:
        from nni_prune_tuners.export import to_config_list

        return to_config_list({name: self.targets[name] for name in self.targeted})

    def remove(self) -> None:
        if self._removed:
            return
        with torch.no_grad():
            for name, mask in self._masker.masks.items():
                layer_weight(self.targeted[name]).mul_(mask)
        self._masker.remove()
        self._removed = True


class LevelStrategy(MaskStrategy):
    """Level: each layer's exact final mask at the first epoch, by magnitude."""

    method = LEVEL

    def _next_sparsity(self, name: str, final: float, epoch: int) -> float | None:
        return None if name in self._current else final

    def _mask(self, name: str, sparsity: float) -> torch.Tensor:
        return level_mask(layer_weight(self.targeted[name]), sparsity)


class AgpStrategy(MaskStrategy):
    """AGP: the absolute sparsity of the cubic schedule at each epoch; a mask never shrinks."""

    method = AGP

    def _check(self, setup: StrategySetup) -> None:
        self.schedule = setup.schedule
        if setup.epochs <= self.schedule.end_epoch:
            raise ValueError(f"epochs must exceed the AGP end_epoch ({self.schedule.end_epoch}) "
                             f"so the masks reach their final sparsity, got epochs={setup.epochs}")

    def _next_sparsity(self, name: str, final: float, epoch: int) -> float | None:
        step = agp_sparsity(epoch, final, self.schedule)
        return None if name in self._current and step <= self._current[name] else step

    def _mask(self, name: str, sparsity: float) -> torch.Tensor:
        weight = layer_weight(self.targeted[name])
        return agp_mask(weight, sparsity, self._masker.masks.get(name))
