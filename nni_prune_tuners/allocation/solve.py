"""The budget solve: the allocation that maximises per-layer values under a branch's budget.

A multiple-choice knapsack over a per-layer grid, exact for a budget linear in the sparsities
(:func:`solve_budget`); a budget with product terms (FLOPs or latency of channel groups) is
solved on its linearisation around the current allocation, re-linearised around the solution a
few times (:func:`solve_product_budget`). Each budget type calls the one it needs
(:mod:`nni_prune_tuners.budget`), then rescales the result to its target exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


class ProductMeasure(Protocol):
    """A measure removed that is not linear in the sparsities (``flops.ProductTerms``): what
    its budget solve needs, its value and gradient."""

    def removed(self, sparsities: FloatArray | Sequence[float]) -> float: ...
    def gradient(self, sparsities: FloatArray | Sequence[float]) -> FloatArray: ...

#: Budget units of the knapsack.
BUDGET_UNITS = 800
#: Most linearisations of the FLOPs budget per solve (it usually stops changing after 2 or 3).
LINEARISATIONS = 5



def solve_budget(
    values: FloatArray,
    grids: FloatArray,
    weights: FloatArray,
    budget: float,
    *,
    units: int = BUDGET_UNITS,
) -> FloatArray:
    """Maximise ``sum_i values[i, g_i]`` subject to ``sum_i weights[i] * grids[i, g_i] >= budget``.

    A multiple-choice knapsack, solved exactly by dynamic programming over ``units`` steps of the
    slack above the least the allowed choices prune (costs rounded to a step; the total saturates
    at the budget, so over-pruning costs no state). ``-inf`` values are forbidden choices.

    Returns:
        The chosen sparsity of every layer.

    Raises:
        ValueError: if no allowed choice reaches the budget.
    """
    layers = values.shape[0]
    # what every choice prunes anyway is not budget: the units then resolve the slack left,
    # however narrow the grids (a small trust region) are
    floor = np.min(np.where(np.isfinite(values), weights[:, None] * grids, np.inf), axis=1)
    if not np.all(np.isfinite(floor)):
        raise ValueError("every layer needs an allowed choice")
    slack = budget - float(floor.sum())
    if slack <= 1e-12 * max(budget, 1.0):  # every choice meets the budget (up to rounding)
        return np.asarray(grids[np.arange(layers), np.argmax(values, axis=1)])
    unit = slack / units
    excess = np.maximum(weights[:, None] * grids - floor[:, None], 0.0)
    costs = np.minimum(np.rint(excess / unit).astype(np.int64), units)
    states = np.arange(units + 1)
    tables = np.full((layers + 1, units + 1), -np.inf)
    tables[0, 0] = 0.0
    choice = np.zeros((layers, units + 1), dtype=np.int64)
    for i in range(layers):
        old = tables[i]
        # new[b] for b < units comes from old[b - cost]; new[units] from any old[b >= units - cost]
        suffix = np.maximum.accumulate(old[::-1])[::-1]
        source = states[None, :] - costs[i][:, None]
        candidate = np.where(source >= 0, old[np.clip(source, 0, units)], -np.inf)
        candidate[:, units] = suffix[units - costs[i]]
        candidate += values[i][:, None]
        choice[i] = np.argmax(candidate, axis=0)
        tables[i + 1] = candidate[choice[i], states]
    if not np.isfinite(tables[layers, units]):
        raise ValueError(f"no allowed allocation prunes {budget:g} weight units")
    picks = np.empty(layers, dtype=np.int64)
    state = units
    for i in range(layers - 1, -1, -1):
        g = int(choice[i, state])
        picks[i] = g
        low = state - costs[i, g]
        if state == units:
            low = max(low, 0)
            state = int(low + np.argmax(tables[i, low:]))
        else:
            state = int(low)
    return np.asarray(grids[np.arange(layers), picks])


def solve_product_budget(
    values: FloatArray,
    grids: FloatArray,
    flops: ProductMeasure,
    target: float,
    start: FloatArray,
    *,
    units: int = BUDGET_UNITS,
    rounds: int = LINEARISATIONS,
) -> FloatArray:
    """Maximise ``sum_i values[i, g_i]`` subject to FLOPs removed ``R(s) >= target``: linearise
    and iterate.

    ``R`` is multilinear in the group sparsities (a layer between two groups contributes
    ``keep_a * keep_b``). Around the current allocation ``s0`` it is ``R(s0) + d . (s - s0)`` with
    ``d = dR/ds(s0)`` (each group's marginal FLOPs, the others fixed): that is the linear budget
    ``d . s >= target - R(s0) + d . s0`` of :func:`solve_budget`. Its solution is the next ``s0``,
    until the allocation stops changing or after ``rounds`` solves. The result is near the target,
    not on it: the caller rescales it exactly (:meth:`nni_prune_tuners.flops.ChannelBudget.rescale`).
    A linearised budget the grid cannot reach (the linearisation overstates what the upper
    bounds remove) ends the iteration at the last allocation found.

    Raises:
        ValueError: if not even the first linearised budget can be met on the grid.
    """
    current = np.asarray(start, dtype=np.float64)
    for round_ in range(rounds):
        slope = flops.gradient(current)
        goal = target - flops.removed(current) + float(np.dot(slope, current))
        try:
            proposal = solve_budget(values, grids, slope, goal, units=units)
        except ValueError:
            if round_ == 0:
                raise
            _logger.debug("linearised FLOPs budget unreachable on the grid; keeping %s", current)
            break
        if np.array_equal(proposal, current):
            break
        current = proposal
    return current
