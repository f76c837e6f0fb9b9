"""The allocation model: accuracy after pruning as a sum of per-layer response curves.

``y = b + sum_i f_i(s_i)``, each curve a linear combination of hinge functions of the layer's
log-density ``x = -ln(1 - s)`` (knots where the density halves). The coefficients are a shared
curve plus a per-layer deviation (a hierarchical Gaussian prior), so that a few trials teach the
common shape and later ones the layer specifics. Curves known before any trial enter as terms with
one coefficient each, which the trials confirm or discount: the profile's one-shot sensitivity
curves (:func:`sensitivity_prior`), and a cheap proxy's own additive model (:func:`proxy_term`,
``presearch``, a second fidelity). Everything is numpy and scipy; nothing here knows Optuna or NNI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Grid points per layer on which the curves are evaluated.
GRID = 48

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


def layer_grids(lo: FloatArray, hi: FloatArray, points: int = GRID) -> FloatArray:
    """Per-layer sparsity grids, evenly spaced in log-density between the bounds (both included)."""
    x_lo, x_hi = log_density(lo), log_density(hi)
    steps = np.linspace(0.0, 1.0, points)
    return 1.0 - np.exp(-(x_lo[:, None] + (x_hi - x_lo)[:, None] * steps))


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


def predict(coefficients: FloatArray, samples: FloatArray, terms: Sequence[Prior] = (),
            metric_scale: float = 1.0) -> FloatArray:
    """The model's value of ``(n, L)`` allocations under ``coefficients`` (intercept left out)."""
    return curves(coefficients, np.asarray(samples, dtype=np.float64).T, terms,
                  metric_scale).sum(axis=0)


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


class Curve(Protocol):
    """A one-shot sensitivity curve (``profile.SensitivityCurve``): the metric's drop with one
    layer alone pruned, measured at a few sparsities."""

    @property
    def sparsities(self) -> Sequence[float]: ...
    def drop(self, sparsity: float) -> float: ...


def sensitivity_prior(curves: Sequence[Curve | None]) -> Prior | None:
    """The one-shot sensitivity curves of a branch's layers as a term, if every layer has one."""
    if any(curve is None for curve in curves):
        return None
    return Prior(
        tuple(np.array(c.sparsities) for c in curves if c is not None),
        tuple(np.array([c.drop(x) for x in c.sparsities]) for c in curves if c is not None),
    )
