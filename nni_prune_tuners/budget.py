"""A branch's budget: the bounds of its sparsities and the target they meet together.

One type per kind of budget, each with the same narrow interface (rescale to the target, the
budget solve of the allocation engine, the uniform allocation, the heuristics it can take):

- :class:`LinearBudget`: the weighted global sparsity of Contract 3, linear in the sparsities
  (weights are parameter counts or FLOPs);
- :class:`~nni_prune_tuners.flops.ChannelBudget`: the fraction of a measure removed by channel
  groups (FLOPs, or the profile's latency model), a sum of product terms (Contract 10).

The allocation engine, the warm starts and the tuner use a budget through this interface only, so
a new kind of budget is one more subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from nni_prune_tuners import sparsity
from nni_prune_tuners.allocation.solve import BUDGET_UNITS, solve_budget

FloatArray = npt.NDArray[np.float64]


class Budget(ABC):
    """The budget the sparsities of one branch share.

    Attributes:
        lo, hi: each sparsity's bounds.
        target: what the sparsities meet together.
        heuristics: the warm-start heuristics whose allocations this kind of budget takes.
    """

    lo: FloatArray
    hi: FloatArray
    target: float
    heuristics: ClassVar[tuple[str, ...]]

    @abstractmethod
    def rescale(self, raw: FloatArray) -> FloatArray:
        """``raw`` scaled by one factor to meet the target exactly inside the bounds."""

    @abstractmethod
    def solve(self, values: FloatArray, grids: FloatArray, *, units: int = BUDGET_UNITS,
              start: FloatArray | None = None) -> FloatArray:
        """The grid allocation maximising ``sum_i values[i, g_i]`` under the budget (not yet
        rescaled); ``start``: the incumbent of a trust region."""

    @abstractmethod
    def uniform(self) -> FloatArray:
        """The allocation of the ``uniform`` heuristic: every sparsity alike, at the target."""


@dataclass(frozen=True)
class LinearBudget(Budget):
    """``sum(weights * s) / total = target`` (Contract 3): ``total`` is the weights' sum
    (``sparsity_scope: searched``) or every prunable layer's (``model``)."""

    weights: FloatArray
    lo: FloatArray
    hi: FloatArray
    total: float
    target: float
    heuristics: ClassVar[tuple[str, ...]] = sparsity.HEURISTICS

    @property
    def share(self) -> float:
        """The share of the branch's weights that meets its target when every layer prunes
        alike (capped below 1 so that rescaling can still move it)."""
        return min(self.target * self.total / float(self.weights.sum()), 0.999)

    def rescale(self, raw: FloatArray) -> FloatArray:
        return sparsity.rescale_to_target(
            np.maximum(raw, 1e-9), self.lo, self.hi, self.weights, self.target, total=self.total
        )

    def solve(self, values: FloatArray, grids: FloatArray, *, units: int = BUDGET_UNITS,
              start: FloatArray | None = None) -> FloatArray:
        """:func:`~nni_prune_tuners.allocation.solve.solve_budget`, exactly (``start`` is not
        needed)."""
        return solve_budget(values, grids, self.weights, self.target * self.total, units=units)

    def uniform(self) -> FloatArray:
        return self.rescale(np.maximum(np.full(len(self.lo), self.share), 1e-6))
