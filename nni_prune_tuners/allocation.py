"""The maths of model-based allocation search: an additive Bayesian response model and a budget solver.

Accuracy after pruning is modelled as a sum of per-layer response curves, ``y = b + sum_i f_i(s_i)``,
each curve a linear combination of hinge functions of the layer's log-density ``x = -ln(1 - s)``
(knots where the density halves). The coefficients are a shared curve plus a per-layer deviation
(a hierarchical Gaussian prior), so that a few trials teach the common shape and later ones the
layer specifics. Curves known before any trial enter as terms with one coefficient each, which the
trials confirm or discount: the profile's one-shot sensitivity curves, and a cheap proxy's own
additive model (``presearch``, a second fidelity). One posterior draw per suggestion (Thompson
sampling) is maximised under the linear sparsity budget exactly by a multiple-choice knapsack over
a per-layer grid, then rescaled to the target (Contract 3). A ``channel`` branch's budget is the
fraction of FLOPs removed, which has product terms (:mod:`nni_prune_tuners.flops`): the knapsack
is solved on its linearisation around the current allocation, re-linearised around the solution a
few times (:func:`solve_channel_budget`), and the result rescaled to the FLOPs target exactly.
Everything is numpy and scipy; nothing here knows Optuna or NNI.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from nni_prune_tuners import sparsity
from nni_prune_tuners.flops import ChannelBudget, rescale_to_flops

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Hinge knots in log-density: each knot halves the density left in a layer (s = 0, .5, .75, ...).
KNOTS = np.log(2.0) * np.arange(6)
#: Candidate noise and per-layer variances of the standardised metric, chosen by marginal likelihood.
_NOISE = (0.01, 0.05, 0.2, 0.6)
_LAYER = (0.05, 0.25, 1.0)
#: Prior variance of the shared curve, split over the layers it is summed over.
_SHARED = 1.0
#: Prior variance of the intercept (standardised units).
_INTERCEPT = 1.0
#: Prior variance of the sensitivity curves' coefficient around 1 (the curves taken at face value).
_PRIOR_CURVE = 0.5
#: Prior mean and variance of the proxy term's coefficient (standardised metric per unit of the
#: proxy model's spread): centred on no trust, wide enough that a few trials that follow the
#: proxy give it their weight.
_PROXY_MEAN = 0.0
_PROXY_VARIANCE = 1.0
#: Grid points per layer and budget units of the knapsack.
GRID = 48
BUDGET_UNITS = 800
#: Most linearisations of the FLOPs budget per solve (it usually stops changing after 2 or 3).
LINEARISATIONS = 5


def log_density(s: FloatArray | Sequence[float]) -> FloatArray:
    """``-ln(1 - s)``, the number of e-foldings of the density a sparsity leaves."""
    return -np.log1p(-np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0 - 1e-9))


def basis(s: FloatArray | Sequence[float]) -> FloatArray:
    """Hinge features ``max(0, x - k)`` of sparsities, shape ``s.shape + (len(KNOTS),)``."""
    x = log_density(s)
    return np.maximum(x[..., None] - KNOTS, 0.0)


@dataclass(frozen=True)
class Prior:
    """Predicted drop of the metric per layer, a term of the model with one coefficient.

    The profile's one-shot sensitivity curves are one (in the metric's units, taken at face
    value: coefficient centred on 1); a proxy's fitted model is another (:func:`proxy_term`).

    Attributes:
        sparsities: per layer, the increasing grid of its curve.
        drops: per layer, the metric lost with that layer alone pruned to each grid point.
        mean: prior mean of the coefficient.
        variance: prior variance of the coefficient.
        metric_units: whether the drops are in the metric's units (standardised with it), or
            already unitless.
    """

    sparsities: tuple[FloatArray, ...]
    drops: tuple[FloatArray, ...]
    mean: float = 1.0
    variance: float = _PRIOR_CURVE
    metric_units: bool = True

    def drop(self, s: FloatArray) -> FloatArray:
        """Per-layer predicted drops of sparsities ``s`` (``(..., L)``), linear in between."""
        s = np.asarray(s, dtype=np.float64)
        out = np.empty_like(s)
        for i in range(s.shape[-1]):
            out[..., i] = np.interp(s[..., i], self.sparsities[i], self.drops[i])
        return out


def _term_scale(term: Prior, metric_scale: float) -> float:
    return metric_scale if term.metric_units else 1.0


def design(
    samples: FloatArray, terms: Sequence[Prior] = (), metric_scale: float = 1.0
) -> FloatArray:
    """Design matrix of ``(n, L)`` sparsities.

    Columns: intercept, shared curve, per-layer curves, and per term its summed predicted drop
    (negated; times ``metric_scale`` where it is in the metric's units), whose coefficient the
    data can confirm or discount.
    """
    phi = basis(samples)  # (n, L, K)
    n = samples.shape[0]
    columns = [np.ones((n, 1)), phi.sum(axis=1), phi.reshape(n, -1)]
    for term in terms:
        columns.append(-_term_scale(term, metric_scale)
                       * term.drop(samples).sum(axis=1, keepdims=True))
    return np.concatenate(columns, axis=1)


def prior_variances(layers: int, layer_var: float, terms: Sequence[Prior] = ()) -> FloatArray:
    """Prior variance of each coefficient, in :func:`design`'s column order."""
    k = len(KNOTS)
    return np.concatenate([[_INTERCEPT], np.full(k, _SHARED / layers), np.full(layers * k, layer_var),
                           [term.variance for term in terms]])


def prior_means(layers: int, terms: Sequence[Prior] = ()) -> FloatArray:
    """Prior mean of each coefficient: the terms' own, 0 elsewhere."""
    return np.concatenate([np.zeros(1 + len(KNOTS) * (layers + 1)), [term.mean for term in terms]])


@dataclass(frozen=True)
class Posterior:
    """A fitted additive model: what a Thompson draw needs.

    Attributes:
        features: design matrix of the fitted points.
        prior_var: prior variance of each coefficient.
        noise: noise variance (standardised units).
        layer_var: prior variance of the per-layer deviations.
        cholesky: lower Cholesky factor of ``features @ diag(prior_var) @ features.T + noise I``.
        target: standardised metric.
        mean, scale: the standardisation, to map draws back.
        terms: the block's terms (the last features, in order).
    """

    features: FloatArray
    prior_var: FloatArray
    noise: float
    layer_var: float
    cholesky: FloatArray
    target: FloatArray
    mean: float
    scale: float
    terms: tuple[Prior, ...] = ()

    @property
    def offset(self) -> FloatArray:
        """Prior mean of the coefficients: the terms' own, 0 elsewhere."""
        return prior_means(self.layers, self.terms)

    @property
    def layers(self) -> int:
        return (len(self.prior_var) - len(self.terms) - 1) // len(KNOTS) - 1

    @property
    def term_coefficients(self) -> FloatArray:
        """Posterior mean of each term's coefficient: the weight the trials gave it."""
        return self.coefficients[len(self.prior_var) - len(self.terms):]

    @property
    def variances(self) -> tuple[float, float]:
        """The ``(noise, layer)`` variances chosen, to reuse in the next fit."""
        return self.noise, self.layer_var

    @property
    def coefficients(self) -> FloatArray:
        """Posterior mean of the coefficients."""
        alpha = _cho_solve(self.cholesky, self.target)
        return self.offset + self.prior_var * (self.features.T @ alpha)

    def draw(self, rng: np.random.RandomState) -> FloatArray:
        """One posterior sample of the coefficients (Matheron's rule: O(n^2 + np), no p x p work)."""
        prior = rng.standard_normal(len(self.prior_var)) * np.sqrt(self.prior_var)
        noise = rng.standard_normal(len(self.target)) * math.sqrt(self.noise)
        residual = self.target - self.features @ prior - noise
        correction = self.prior_var * (self.features.T @ _cho_solve(self.cholesky, residual))
        return self.offset + prior + correction


def _cho_solve(lower: FloatArray, b: FloatArray) -> FloatArray:
    from scipy.linalg import cho_solve

    return np.asarray(cho_solve((lower, True), b), dtype=np.float64)


def fit(
    samples: FloatArray,
    values: FloatArray,
    *,
    variances: tuple[float, float] | None = None,
    terms: Sequence[Prior] = (),
) -> Posterior:
    """Fit the additive model to ``(n, L)`` sparsities and their metric (larger is better).

    The noise and per-layer variances are chosen by marginal likelihood over a small grid, so a
    noisy metric gets a smooth model and a clean one a sharp model, with nothing for the user to
    tune; pass the ``variances`` of an earlier fit to skip that search. Each of the ``terms``
    enters with a coefficient centred on its prior mean.
    """
    samples = np.asarray(samples, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    n, layers = samples.shape
    mean = float(values.mean()) if n else 0.0
    scale = float(values.std()) if n > 1 else 0.0
    scale = scale if scale > 1e-12 else 1.0
    target = (values - mean) / scale
    terms = tuple(terms)
    features = design(samples, terms, 1.0 / scale)
    k = len(KNOTS)
    separable = 1 + k + layers * k
    term_features = features[:, separable:]
    # the prior means' prediction; the fit learns the rest
    target = target - term_features @ np.array([term.mean for term in terms])
    shared, own = features[:, 1 : k + 1], features[:, k + 1 : separable]
    # the Gram matrix is linear in the variances: two products serve every candidate
    shared_gram = _INTERCEPT + shared @ shared.T * (_SHARED / layers)
    shared_gram = shared_gram + (term_features * [term.variance for term in terms]) @ term_features.T
    own_gram = own @ own.T
    candidates = [variances] if variances is not None else [
        (noise, layer) for noise in _NOISE for layer in _LAYER
    ]
    best: tuple[float, Posterior] | None = None
    for noise, layer in candidates:
        try:
            lower = np.linalg.cholesky(shared_gram + layer * own_gram + noise * np.eye(n))
        except np.linalg.LinAlgError:
            continue
        alpha = _cho_solve(lower, target)
        evidence = -0.5 * float(target @ alpha) - float(np.log(np.diag(lower)).sum())
        if best is None or evidence > best[0]:
            prior_var = prior_variances(layers, layer, terms)
            best = (evidence, Posterior(features, prior_var, noise, layer, lower, target, mean,
                                        scale, terms))
    if best is None:
        raise ValueError(f"the additive model cannot be fitted to {n} points")
    return best[1]


def curves(
    coefficients: FloatArray,
    grids: FloatArray,
    terms: Sequence[Prior] = (),
    metric_scale: float = 1.0,
) -> FloatArray:
    """Per-layer response ``f_i`` on each layer's grid: ``(L, G)`` from coefficients of the model."""
    layers = grids.shape[0]
    k = len(KNOTS)
    shared = coefficients[1 : k + 1]
    own = coefficients[k + 1 : k + 1 + layers * k].reshape(layers, k)
    response = np.einsum("lgk,lk->lg", basis(grids), own + shared)
    for coefficient, term in zip(coefficients[k + 1 + layers * k:], terms, strict=True):
        response -= coefficient * _term_scale(term, metric_scale) * term.drop(grids.T).T
    return response


def layer_grids(lo: FloatArray, hi: FloatArray, points: int = GRID) -> FloatArray:
    """Per-layer sparsity grids, evenly spaced in log-density between the bounds (both included)."""
    x_lo, x_hi = log_density(lo), log_density(hi)
    steps = np.linspace(0.0, 1.0, points)
    return 1.0 - np.exp(-(x_lo[:, None] + (x_hi - x_lo)[:, None] * steps))


def solve_budget(
    values: FloatArray,
    grids: FloatArray,
    weights: FloatArray,
    budget: float,
    *,
    units: int = BUDGET_UNITS,
) -> FloatArray:
    """Maximise ``sum_i values[i, g_i]`` subject to ``sum_i weights[i] * grids[i, g_i] >= budget``.

    A multiple-choice knapsack, solved exactly by dynamic programming over the budget measured in
    ``units`` steps of the slack above the least that the allowed choices prune (costs are
    rounded to the nearest step; the pruned-weight total saturates at the budget, so any
    over-pruning costs no state). Entries of ``values`` that are ``-inf`` are
    forbidden, which is how a trust region is imposed.

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


def solve_channel_budget(
    values: FloatArray,
    grids: FloatArray,
    flops: ChannelBudget,
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
    not on it: the caller rescales it exactly (:func:`~nni_prune_tuners.flops.rescale_to_flops`).
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


@dataclass(frozen=True)
class Block:
    """The layer sparsities of one branch and the budget they share (Contract 3).

    With ``flops`` (a ``channel`` branch, Contract 10) the sparsities are channel groups' and the
    budget is the fraction of the model's FLOPs removed: ``weights`` are then each group's
    marginal FLOPs at the dense model and ``total`` is 1, a linear view for heuristics only;
    :meth:`rescale` and :meth:`solve` use the exact, non-linear FLOPs.
    """

    weights: FloatArray
    lo: FloatArray
    hi: FloatArray
    total: float
    target: float
    prior: Prior | None = None
    proxy: Prior | None = None
    flops: ChannelBudget | None = None

    @property
    def terms(self) -> tuple[Prior, ...]:
        """The model's terms: the sensitivity curves, then the proxy, where the block has them."""
        return tuple(term for term in (self.prior, self.proxy) if term is not None)

    def rescale(self, raw: FloatArray) -> FloatArray:
        """``raw`` scaled to meet the target exactly inside the bounds."""
        if self.flops is not None:
            return rescale_to_flops(np.maximum(raw, 1e-9), self.lo, self.hi, self.flops,
                                    self.target)
        return sparsity.rescale_to_target(
            np.maximum(raw, 1e-9), self.lo, self.hi, self.weights, self.target, total=self.total
        )

    def solve(
        self, values: FloatArray, grids: FloatArray, *, units: int = BUDGET_UNITS,
        start: FloatArray | None = None,
    ) -> FloatArray:
        """The grid allocation maximising ``values`` under the block's budget (not yet rescaled).

        Linear budgets: :func:`solve_budget`, exactly. FLOPs budgets: :func:`solve_channel_budget`
        from ``start`` (a trust region's incumbent: ``ValueError`` if its grid cannot meet the
        budget), by default from the uniform ratio that meets the target (kept if even the first
        linearisation is out of the grid's reach).
        """
        if self.flops is None:
            return solve_budget(values, grids, self.weights, self.target * self.total, units=units)
        if start is not None:  # a trust region: the caller searches globally if it fails
            return solve_channel_budget(values, grids, self.flops, self.target, start,
                                        units=units)
        uniform = self.rescale(np.ones(len(self.lo)))
        try:
            return solve_channel_budget(values, grids, self.flops, self.target, uniform,
                                        units=units)
        except ValueError:
            _logger.debug("linearised FLOPs budget unreachable from the uniform ratio; keeping it")
            return uniform


def propose(
    block: Block,
    posterior: Posterior | None,
    rng: np.random.RandomState,
    *,
    incumbent: FloatArray | None = None,
    radius: float = 0.35,
) -> FloatArray:
    """One Thompson-sampling suggestion: the budget-optimal allocation of one posterior draw.

    Args:
        block: bounds, weights and target of the layer sparsities.
        posterior: the fitted model; ``None`` draws from the prior (no data yet).
        rng: the draw's randomness.
        incumbent: when given, every layer stays within ``radius`` log-density of it (a trust
            region around the best configuration, for a local move).
        radius: half-width of the trust region in log-density (0.35: about 30% density change).
    """
    metric_scale = 1.0
    terms = block.terms
    if posterior is None:
        prior_var = prior_variances(len(block.lo), _LAYER[-1], terms)
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
        lo = np.maximum(block.lo, 1.0 - np.exp(-(x - radius)))
        hi = np.minimum(block.hi, 1.0 - np.exp(-(x + radius)))
        grids = layer_grids(lo, hi)
        try:
            return block.rescale(block.solve(response(grids), grids, start=incumbent))
        except ValueError:
            _logger.debug("trust region cannot meet the budget; searching globally")
    grids = layer_grids(block.lo, block.hi)
    return block.rescale(block.solve(response(grids), grids))


def predict(coefficients: FloatArray, samples: FloatArray, terms: Sequence[Prior] = (),
            metric_scale: float = 1.0) -> FloatArray:
    """The model's value of ``(n, L)`` allocations under ``coefficients`` (intercept left out)."""
    return curves(coefficients, np.asarray(samples, dtype=np.float64).T, terms,
                  metric_scale).sum(axis=0)


#: Share of the layers a few-layer move changes, and how many such moves one draw ranks.
MOVED = 0.3
CANDIDATES = 64


def few_layer_move(
    block: Block,
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
    options = np.array([block.rescale(np.clip(-np.expm1(-row), block.lo, block.hi))
                        for row in steps])
    if posterior is None:
        return np.asarray(options[0])
    scores = predict(posterior.draw(rng), options, block.terms, 1.0 / posterior.scale)
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
    block: Block, allocation: FloatArray, rng: np.random.RandomState, *, scale: float = 0.05
) -> FloatArray:
    """A random nearby allocation at the target: jitter each layer's log-density, rescale."""
    x = log_density(allocation) * np.exp(rng.normal(0.0, scale, len(allocation)))
    return block.rescale(np.clip(1.0 - np.exp(-x), block.lo, block.hi))


def sensitivity_allocation(block: Block, *, points: int = 200) -> FloatArray:
    """The allocation that minimises the summed predicted drop under the budget (the
    ``sensitivity`` warm start): exact on a grid of ``points`` per layer, then rescaled."""
    if block.prior is None:
        raise ValueError("the sensitivity allocation needs sensitivity curves")
    grids = layer_grids(block.lo, block.hi, points)
    drops = block.prior.drop(grids.T).T
    return block.rescale(block.solve(-drops, grids, units=4 * BUDGET_UNITS))


def proxy_term(
    samples: FloatArray, scores: FloatArray, lo: FloatArray, hi: FloatArray, *, points: int = GRID
) -> Prior | None:
    """A cheap proxy's evaluations as a term of the model of the expensive metric.

    The additive model is fitted to the proxy's ``(n, L)`` sparsities and scores; its per-layer
    curves, divided by the spread (standard deviation) of its predictions over the evaluated
    allocations, become a unitless term whose coefficient is centred on zero. The fine-tuned
    trials set that coefficient: it grows where they follow the proxy and stays near zero where
    they do not, whether the proxy is noise or predicts something else. ``None`` when the fitted
    model is flat (nothing to learn from).
    """
    samples = np.asarray(samples, dtype=np.float64)
    if len(samples) < 2:
        return None
    fitted = fit(samples, np.asarray(scores, dtype=np.float64))
    coefficients = fitted.coefficients
    spread = float(np.std(predict(coefficients, samples)))
    if spread < 1e-9:
        return None
    grids = layer_grids(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64), points)
    response = curves(coefficients, grids)
    drops = -(response - response[:, :1]) / spread  # 0 at each layer's lower bound
    return Prior(tuple(grids), tuple(drops), mean=_PROXY_MEAN, variance=_PROXY_VARIANCE,
                 metric_units=False)
