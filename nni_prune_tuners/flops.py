"""The FLOPs budget of a ``channel`` branch (Contract 10): the fraction of the model's FLOPs removed.

In a ``channel`` branch a group's sparsity ``s_g`` is the fraction of its output channels removed,
so it cuts its own layers' FLOPs and those of the layers that read its channels. With ``keep(g) =
1 - s_g`` (1 for no group), the FLOPs removed are

    ``R(s) = 1 - sum_l flops_l * keep(in_group_l) * keep(out_group_l) / sum_l flops_l``

over every prunable layer of the profile: not linear in ``s`` (a layer between two searched groups
contributes a product), so the linear rescale of Contract 3 does not apply. Here are ``R``, its
gradient (what the allocation model's knapsack linearises with), the feasible range, and the
rescale to a target: the same family as Contract 3, ``s = clip(c * raw, lo, hi)``, with ``c``
solved by Brent's method, since ``R(s(c))`` is continuous and monotone (see
:func:`rescale_to_flops`).

The real model removes whole channels (``round(s * n)`` of a group of ``n``), so the FLOPs it
measures differ from ``R(s)`` by that rounding: at most half a channel per group,
:func:`rounding_bound`.

With ``weight_by: latency`` the same form is the profile's measured latency model
(:class:`~nni_prune_tuners.latency.LatencyModel`): its FLOPs term spreads over the layers as
above, its output-elements term is one more term per layer that scales with the layer's output
channels alone, and its fixed part is a term no group scales; ``R`` is then the fraction of the
measured dense latency removed (the terms need not sum to 1, so ``R`` at no pruning need not be
0), and everything below (gradient, feasible range, rescale) holds unchanged.
Pure numpy; nothing here knows torch, Optuna or NNI.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from nni_prune_tuners import widths as discrete
from nni_prune_tuners.allocation.solve import BUDGET_UNITS, solve_product_budget
from nni_prune_tuners.budget import Budget
from nni_prune_tuners.latency import LATENCY_HINT
from nni_prune_tuners.profile import FLOPS_HINT, ModelProfile
from nni_prune_tuners.sparsity import TOLERANCE

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ProductTerms:
    """The measure a ``channel`` branch removes, over its searched groups: a sum of product terms.

    Attributes:
        groups: the searched groups, in the order of the sparsity arrays.
        channels: each searched group's number of channels.
        flops: every prunable layer's dense FLOPs (the denominator is their sum).
        in_index, out_index: per layer, the index in ``groups`` of the group that sets its input
            (per output channel) and its output channels; ``-1`` where none of the searched
            groups does (the layer's FLOPs do not scale on that side).
        measure: what is removed, for messages: ``FLOPs``, or ``latency`` where the terms are
            the profile's latency model (then ``flops`` holds each term's share of it).
        dense: the measure of the dense model, what ``R`` is a fraction of; None: the sum of
            the terms. The latency model's terms are ratios to the measured dense time, so 1.
    """

    groups: tuple[str, ...]
    channels: IntArray
    flops: FloatArray
    in_index: IntArray
    out_index: IntArray
    measure: str = "FLOPs"
    dense: float | None = None

    def __post_init__(self) -> None:
        if not len(self.groups) == len(self.channels):
            raise ValueError("groups and channels must have the same length")
        if not len(self.flops) == len(self.in_index) == len(self.out_index) or not len(self.flops):
            raise ValueError("flops, in_index and out_index must have the same, non-zero length")
        if np.any(self.flops < 0) or not float(self.flops.sum()) > 0:
            raise ValueError("flops must be >= 0 with a positive sum")
        if self.dense is not None and not self.dense > 0:
            raise ValueError(f"dense must be > 0, got {self.dense}")
        for name, index in (("in_index", self.in_index), ("out_index", self.out_index)):
            if np.any(index < -1) or np.any(index >= len(self.groups)):
                raise ValueError(f"{name} must be -1 or a group index < {len(self.groups)}")

    @property
    def total(self) -> float:
        """The dense model's measure: ``dense``, else the sum of the terms (the dense FLOPs of
        every prunable layer)."""
        return self.dense if self.dense is not None else float(self.flops.sum())

    def _keeps(self, sparsities: FloatArray | Sequence[float]) -> tuple[FloatArray, FloatArray]:
        s = np.asarray(sparsities, dtype=np.float64)
        if s.shape != (len(self.groups),):
            raise ValueError(f"expected {len(self.groups)} group sparsities, got shape {s.shape}")
        keep = np.append(1.0 - s, 1.0)  # index -1: no searched group, keep 1
        return keep[self.in_index], keep[self.out_index]

    def removed(self, sparsities: FloatArray | Sequence[float]) -> float:
        """``R(s)``: the fraction of the FLOPs removed, with ``keep = 1 - s``."""
        keep_in, keep_out = self._keeps(sparsities)
        return 1.0 - float(np.dot(self.flops, keep_in * keep_out)) / self.total

    def rounded_removed(self, sparsities: FloatArray | Sequence[float]) -> float:
        """``R`` with the whole channels the real model removes (``round(s * n)``, as
        :func:`nni_prune_tuners.profile.channels_removed` rounds)."""
        s = np.asarray(sparsities, dtype=np.float64)
        whole = np.array([round(float(v) * int(n)) / int(n)
                          for v, n in zip(s, self.channels, strict=True)])
        return self.removed(whole)

    def gradient(self, sparsities: FloatArray | Sequence[float]) -> FloatArray:
        """``dR / ds_g`` at ``s``: the FLOPs (as a fraction) one unit of ``s_g`` removes, the
        others fixed. Every term is a FLOPs count times a keep in [0, 1], so it is ``>= 0``."""
        keep_in, keep_out = self._keeps(sparsities)
        grad = np.zeros(len(self.groups) + 1)
        # d(keep_in * keep_out) / d s_g = -[in == g] keep_out - [out == g] keep_in (product rule,
        # also when one layer's input and output are the same group)
        np.add.at(grad, self.in_index, self.flops * keep_out)
        np.add.at(grad, self.out_index, self.flops * keep_in)
        return grad[:-1] / self.total


def achievable_range(lo: FloatArray | Sequence[float], hi: FloatArray | Sequence[float],
                     budget: ProductTerms) -> tuple[float, float]:
    """The least and most of the budget's measure removed that the group bounds allow (``R`` is
    monotone)."""
    return budget.removed(lo), budget.removed(hi)


def check_feasible(
    target: float,
    lo: FloatArray | Sequence[float],
    hi: FloatArray | Sequence[float],
    budget: ProductTerms,
    *,
    where: str = "search space",
) -> None:
    """Raise ``ValueError`` naming ``where`` and the reachable range if ``target`` is out of it."""
    low, high = achievable_range(lo, hi, budget)
    if not low - TOLERANCE <= target <= high + TOLERANCE:
        raise ValueError(
            f"target_sparsity={target} (the fraction of {budget.measure} removed, channel method) "
            f"is infeasible for {where}: its group bounds allow removing [{low:.6f}, {high:.6f}] "
            f"of the {budget.measure} only"
        )


def rescale_to_flops(
    raw: FloatArray | Sequence[float],
    lo: FloatArray | Sequence[float],
    hi: FloatArray | Sequence[float],
    budget: ProductTerms,
    target: float,
) -> FloatArray:
    """Scale ``raw`` by one factor ``c >= 0`` so that ``R(clip(c * raw, lo, hi)) = target``.

    Monotone, hence one bracketed root: each ``clip(c * raw_g, lo_g, hi_g)`` is non-decreasing in
    ``c`` and ``dR/ds_g >= 0`` (:meth:`ProductTerms.gradient`), so ``R(s(c))`` is continuous and
    non-decreasing in ``c``, from ``R(lo)`` at ``c = 0`` to ``R(hi)`` at ``c = max(hi / raw)``.
    Brent's method on that bracket meets the target within :data:`~sparsity.TOLERANCE` (the
    slope in ``c`` is at most 2, so ``c`` to 1e-15 is plenty); the ratios between groups that are
    not clipped are kept, as in Contract 3.

    Raises:
        ValueError: if the target is outside what scaling ``raw`` reaches.
    """
    from scipy.optimize import brentq

    r = np.asarray(raw, dtype=np.float64)
    low = np.asarray(lo, dtype=np.float64)
    high = np.asarray(hi, dtype=np.float64)
    if not r.shape == low.shape == high.shape == (len(budget.groups),):
        raise ValueError("raw, lo and hi must have one value per group")
    if np.any(r < 0) or np.any(low > high) or not np.all(np.isfinite(r)):
        raise ValueError("raw must be finite and >= 0, and lo <= hi")

    def gap(c: float) -> float:
        return budget.removed(np.clip(c * r, low, high)) - target

    positive = r > 0
    top = float(np.max(high[positive] / r[positive])) if positive.any() else 0.0
    at_low, at_high = gap(0.0), gap(top)
    if not at_low <= TOLERANCE or not at_high >= -TOLERANCE:
        raise ValueError(
            f"scaling cannot bring the {budget.measure} removed to {target}: reachable "
            f"[{at_low + target:.6f}, {at_high + target:.6f}] for raw {r.tolist()}"
        )
    if at_low >= 0.0:
        c = 0.0
    elif at_high <= 0.0:
        c = top
    else:
        c = float(brentq(gap, 0.0, top, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=200))
    return np.clip(c * r, low, high)


def uniform_ratio(lo: FloatArray | Sequence[float], hi: FloatArray | Sequence[float],
                  budget: ProductTerms, target: float) -> FloatArray:
    """One common ratio for every group that removes ``target`` of the FLOPs (clipped to the
    bounds, where a bound then holds that group): the ``uniform`` warm start of a channel
    branch."""
    return rescale_to_flops(np.ones(len(budget.groups)), lo, hi, budget, target)


def rounding_bound(budget: ProductTerms) -> float:
    """The most the whole-channel rounding moves the FLOPs removed away from ``R(s)``.

    ``round(s * n)`` is off ``s * n`` by at most half a channel, so each keep moves by at most
    ``1 / (2 n_g)``; a layer's ``keep_in * keep_out`` (both in [0, 1]) then moves by at most the
    sum of its two keeps' moves. Summed over the layers: ``sum_g dR/ds_g(0) / (2 n_g)``.
    """
    return float(np.dot(budget.gradient(np.zeros(len(budget.groups))),
                        0.5 / budget.channels.astype(np.float64)))


def flops_terms(profile: ModelProfile, groups: Sequence[str]) -> ProductTerms:
    """The FLOPs of every prunable layer as terms of ``groups`` (searched; the profile's other
    groups stay dense).

    Raises:
        ValueError: naming a group that is not one of the profile's or a layer without FLOPs.
    """
    return product_terms(profile, groups, [
        (float(layer.flops or 0.0), layer.in_group, layer.out_group)
        for layer in profile.layers.values()])


def product_terms(profile: ModelProfile, groups: Sequence[str],
                  terms: Sequence[tuple[float, str | None, str | None]], *,
                  measure: str = "FLOPs", dense: float | None = None) -> ProductTerms:
    """``terms`` (each a cost, the group of its input and of its output) over ``groups``.

    Raises:
        ValueError: naming a group that is not one of the profile's or a layer without FLOPs.
    """
    known = profile.channel_groups
    for group in groups:
        if group not in known:
            raise ValueError(f"{group!r} is not a channel group of the profile; known groups: "
                             f"{list(known)}")
    for name, layer in profile.layers.items():
        if layer.flops is None:
            raise ValueError(f"the channel method needs 'flops' for layer {name!r}; {FLOPS_HINT}")
    position = {group: index for index, group in enumerate(groups)}
    return ProductTerms(
        groups=tuple(groups),
        channels=np.array([known[g].channels for g in groups], dtype=np.int64),
        flops=np.array([cost for cost, _, _ in terms], dtype=np.float64),
        in_index=np.array([position.get(into or "", -1) for _, into, _ in terms], dtype=np.int64),
        out_index=np.array([position.get(out or "", -1) for _, _, out in terms], dtype=np.int64),
        measure=measure,
        dense=dense,
    )


def latency_terms(profile: ModelProfile, groups: Sequence[str]) -> ProductTerms:
    """The profile's latency model as terms of ``groups``: its FLOPs part spread over the layers
    as their FLOPs are, its output-elements part one more term per layer that scales with the
    layer's output channels alone, and its fixed part a term no group scales. The terms are
    ratios to the measured dense time, so the dense measure is 1.

    Raises:
        ValueError: without a latency model, naming a group that is not one of the profile's,
            or a layer without FLOPs.
    """
    model = profile.latency
    if model is None:
        raise ValueError(f"weight_by='latency' needs the profile's latency model; {LATENCY_HINT}")
    layers = list(profile.layers.values())
    flops_total = sum(float(layer.flops or 0.0) for layer in layers)
    outputs_total = float(sum(layer.outputs or 0 for layer in layers))
    terms = ([(model.per_flops * float(layer.flops or 0.0) / flops_total, layer.in_group,
               layer.out_group) for layer in layers]
             + [(model.per_outputs * (layer.outputs or 0) / outputs_total, None, layer.out_group)
                for layer in layers]
             + [(model.fixed, None, None)])
    return product_terms(profile, groups, terms, measure="latency", dense=1.0)


@dataclass(frozen=True)
class ChannelBudget(Budget):
    """The budget of a ``channel`` branch: the fraction of a measure with product terms removed
    (FLOPs, or the profile's latency model), met exactly by :func:`rescale_to_flops`; the trial
    rounds each group to whole channels (``channel_multiple: 1``)."""

    terms: ProductTerms
    lo: FloatArray
    hi: FloatArray
    target: float
    #: The other heuristics read weight quantiles, shapes or per-layer sensitivity curves, which
    #: describe unstructured pruning of one layer, not a channel group.
    heuristics: ClassVar[tuple[str, ...]] = ("uniform",)

    @property
    def bound(self) -> float:
        """How far the measure the trial removes may land from the target: half a channel per
        group, the trial's rounding (:func:`rounding_bound`)."""
        return rounding_bound(self.terms)

    def rescale(self, raw: FloatArray) -> FloatArray:
        return rescale_to_flops(np.maximum(raw, 1e-9), self.lo, self.hi, self.terms, self.target)

    def solve(self, values: FloatArray, grids: FloatArray, *, units: int = BUDGET_UNITS,
              start: FloatArray | None = None) -> FloatArray:
        """:func:`~nni_prune_tuners.allocation.solve.solve_product_budget` from ``start`` (a
        trust region's incumbent: ``ValueError`` if its grid cannot meet the budget), by default
        from the uniform ratio that meets the target (kept if even the first linearisation is
        out of the grid's reach)."""
        if start is not None:  # a trust region: the caller searches globally if it fails
            return solve_product_budget(values, grids, self.terms, self.target, start,
                                        units=units)
        uniform = self.rescale(np.ones(len(self.lo)))
        try:
            return solve_product_budget(values, grids, self.terms, self.target, uniform,
                                        units=units)
        except ValueError:
            _logger.debug("linearised FLOPs budget unreachable from the uniform ratio; keeping it")
            return uniform

    def uniform(self) -> FloatArray:
        return uniform_ratio(self.lo, self.hi, self.terms, self.target)


@dataclass(frozen=True)
class WidthBudget(ChannelBudget):
    """A ``channel`` budget on each group's allowed widths (``channel_multiple > 1``,
    :mod:`nni_prune_tuners.widths`): met within :attr:`bound` of the target, not exactly."""

    #: each group's allowed kept channels, increasing
    widths: tuple[IntArray, ...] = ()

    @property
    def bound(self) -> float:
        """Half the largest one-group step between allowed widths
        (:func:`nni_prune_tuners.widths.landing_bound`)."""
        return discrete.landing_bound(self.terms.gradient(np.zeros(len(self.lo))), self.widths,
                                      self.terms.channels)

    def snapped(self, sparsities: FloatArray) -> FloatArray:
        """``sparsities`` moved to the nearest allowed widths."""
        return discrete.snap(sparsities, self.widths, self.terms.channels, self.lo, self.hi)

    def rescale(self, raw: FloatArray) -> FloatArray:
        return discrete.rescale_to_widths(raw, self.lo, self.hi, self.terms.removed,
                                          self.snapped, self.target)

    def solve(self, values: FloatArray, grids: FloatArray, *, units: int = BUDGET_UNITS,
              start: FloatArray | None = None) -> FloatArray:
        """The continuous budget's solve with the grids moved to the allowed widths first."""
        values, grids = discrete.snap_grid(values, grids, self.snapped)
        return super().solve(values, grids, units=units, start=start)

    def uniform(self) -> FloatArray:
        return self.rescale(np.ones(len(self.lo)))
