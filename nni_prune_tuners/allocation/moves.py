"""The proposal moves: from a posterior draw (or the prior) to an allocation at the target.

Thompson sampling: one posterior draw per suggestion, maximised under the branch's budget over the
whole space (a global move) or inside a trust region around the best allocation found (a local
move, as in TuRBO), or the best of a few random steps of a few layers (:func:`few_layer_move`).
Which kind pays off is itself learned (:func:`choose_move`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from nni_prune_tuners.allocation.model import (
    _LAYER,
    Posterior,
    Prior,
    curves,
    layer_grids,
    log_density,
    predict,
    prior_variances,
)
from nni_prune_tuners.allocation.solve import BUDGET_UNITS

if TYPE_CHECKING:
    from nni_prune_tuners.budget import Budget

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


def propose(
    budget: Budget,
    terms: Sequence[Prior],
    posterior: Posterior | None,
    rng: np.random.RandomState,
    *,
    incumbent: FloatArray | None = None,
    radius: float = 0.35,
) -> FloatArray:
    """One Thompson-sampling suggestion: the budget-optimal allocation of one posterior draw.

    Args:
        budget: bounds and target of the layer sparsities.
        terms: the model's terms (sensitivity curves, proxy) of the branch.
        posterior: the fitted model; ``None`` draws from the prior (no data yet).
        rng: the draw's randomness.
        incumbent: when given, every layer stays within ``radius`` log-density of it (a trust
            region around the best configuration, for a local move).
        radius: half-width of the trust region in log-density (0.35: about 30% density change).
    """
    metric_scale = 1.0
    if posterior is None:
        prior_var = prior_variances(len(budget.lo), _LAYER[-1], terms)
        coefficients = rng.standard_normal(len(prior_var)) * np.sqrt(prior_var)
        if terms:
            # no data yet: the terms' prior means, perturbed by the other coefficients' prior
            coefficients *= 0.1
            coefficients[len(prior_var) - len(terms):] = [term.mean for term in terms]
    else:
        coefficients = posterior.draw(rng)
        metric_scale = 1.0 / posterior.scale

    def response(grids: FloatArray) -> FloatArray:
        return curves(coefficients, grids, terms, metric_scale)

    if incumbent is not None:
        # a dense grid inside the trust region, so that a small region still has choices
        x = log_density(incumbent)
        lo = np.maximum(budget.lo, 1.0 - np.exp(-(x - radius)))
        hi = np.minimum(budget.hi, 1.0 - np.exp(-(x + radius)))
        grids = layer_grids(lo, hi)
        try:
            return budget.rescale(budget.solve(response(grids), grids, start=incumbent))
        except ValueError:
            _logger.debug("trust region cannot meet the budget; searching globally")
    grids = layer_grids(budget.lo, budget.hi)
    return budget.rescale(budget.solve(response(grids), grids))


#: Share of the layers a few-layer move changes, and how many such moves one draw ranks.
MOVED = 0.3
CANDIDATES = 64


def few_layer_move(
    budget: Budget,
    terms: Sequence[Prior],
    posterior: Posterior | None,
    rng: np.random.RandomState,
    incumbent: FloatArray,
    step: float,
) -> FloatArray:
    """A local move that changes a few layers: the best of :data:`CANDIDATES` random steps
    under one posterior draw.

    Each step moves a random :data:`MOVED` of the layers (at least one) of ``incumbent`` by
    ``N(0, step**2)`` in log-density and is rescaled to the target, as an evolution strategy
    steps. Where one over-pruned layer breaks the network (a ResNet), such steps climb from a
    good allocation more surely than the budget optimum of a draw, which moves every layer to
    the edge of the trust region; the draw still picks among them, and spreads concurrent ones.
    """
    x = log_density(incumbent)
    layers = len(x)
    mask = rng.random_sample((CANDIDATES, layers)) < MOVED
    unmoved = ~mask.any(axis=1)
    mask[unmoved, rng.randint(layers, size=int(unmoved.sum()))] = True
    steps = x + step * rng.standard_normal((CANDIDATES, layers)) * mask
    options = np.array([budget.rescale(np.clip(-np.expm1(-row), budget.lo, budget.hi))
                        for row in steps])
    if posterior is None:
        return np.asarray(options[0])
    scores = predict(posterior.draw(rng), options, terms, 1.0 / posterior.scale)
    return np.asarray(options[int(np.argmax(scores))])


#: The kinds of proposal: the budget optimum of a posterior draw over the whole space, or inside
#: the trust region around the best configuration found so far.
MOVES = ("global", "local")


def choose_move(tallies: Mapping[str, tuple[int, int]], rng: np.random.RandomState) -> str:
    """The kind of the next proposal, by Thompson sampling over how often each kind paid off.

    ``tallies[kind]`` is ``(successes, proposals)``. Each kind's success rate gets a uniform
    Beta prior and one posterior draw; the larger draw wins. The kind that pays off more often
    gets most proposals, yet the other still comes now and then and can win them back: a global
    proposal that scores at chance (one over-pruned layer breaks a ResNet) is not repeated half
    of the time, as a fixed alternation would.
    """
    draws = {}
    for kind in MOVES:
        successes, proposals = tallies.get(kind, (0, 0))
        if not 0 <= successes <= proposals:
            raise ValueError(f"{kind}: {successes} successes of {proposals} proposals")
        draws[kind] = rng.beta(1 + successes, 1 + proposals - successes)
    return max(MOVES, key=lambda kind: draws[kind])


@dataclass
class TrustRegion:
    """The radius of local moves, shrunk while they stop paying off (as in TuRBO).

    The radius halves after ``patience`` proposals in a row that did not improve the best value,
    and starts wide again once it is below ``smallest``: a local search that refines what it
    found, then looks around again.
    """

    initial: float = 0.35
    smallest: float = 0.02
    patience: int = 4
    radius: float = 0.35
    best: float = -math.inf
    stalls: int = 0

    def update(self, best: float) -> float:
        """Record the best value seen before a proposal; the radius to use for it."""
        if best > self.best:
            self.best, self.stalls = best, 0
            return self.radius
        self.stalls += 1
        if self.stalls >= self.patience:
            self.radius, self.stalls = self.radius / 2, 0
            if self.radius < self.smallest:
                self.radius = self.initial
        return self.radius


def is_repeat(candidate: FloatArray, others: FloatArray, *, tolerance: float = 1e-6) -> bool:
    """Whether ``candidate`` equals a row of ``others`` within ``tolerance`` in every value."""
    if not len(others):
        return False
    return bool(np.any(np.max(np.abs(others - candidate), axis=1) <= tolerance))


def perturb(
    budget: Budget, allocation: FloatArray, rng: np.random.RandomState, *, scale: float = 0.05
) -> FloatArray:
    """A random nearby allocation at the target: jitter each layer's log-density, rescale."""
    x = log_density(allocation) * np.exp(rng.normal(0.0, scale, len(allocation)))
    return budget.rescale(np.clip(1.0 - np.exp(-x), budget.lo, budget.hi))


def sensitivity_allocation(budget: Budget, prior: Prior, *, points: int = 200) -> FloatArray:
    """The allocation that minimises the summed predicted drop of the sensitivity curves under
    the budget (the ``sensitivity`` warm start): exact on a grid of ``points`` per layer, then
    rescaled."""
    grids = layer_grids(budget.lo, budget.hi, points)
    drops = prior.drop(grids.T).T
    return budget.rescale(budget.solve(-drops, grids, units=4 * BUDGET_UNITS))
