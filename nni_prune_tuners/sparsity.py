"""Global-sparsity maths: rescaling to a target, feasibility, and allocation heuristics.

Everything here is a pure function of numpy arrays so that it can be tested directly and used
without torch (the heuristics read the quantiles stored in the model profile instead of weights).

Notation (Contract 3 of the design): per-layer weights ``w`` (parameter counts or FLOPs), bounds
``lo``/``hi``, and ``total``, the weight that the global sparsity is divided by: ``sum(w)`` for
``sparsity_scope: searched`` or the whole model's prunable weight for ``sparsity_scope: model``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: How close the rescaled global sparsity must be to the target.
TOLERANCE = 1e-9
#: The warm-start heuristics: allocations known before any trial (``sensitivity`` reads the
#: profile's one-shot sensitivity curves; the others are computed here).
HEURISTICS = ("uniform", "global_magnitude", "lamp", "erk", "sensitivity")


def _as_array(values: Sequence[float] | FloatArray, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return array


def global_sparsity(
    sparsities: Sequence[float] | FloatArray,
    weights: Sequence[float] | FloatArray,
    *,
    total: float | None = None,
) -> float:
    """The weighted global sparsity ``sum(w * s) / total`` (``total`` defaults to ``sum(w)``)."""
    s = _as_array(sparsities, "sparsities")
    w = _as_array(weights, "weights")
    denominator = float(w.sum()) if total is None else float(total)
    return float(np.dot(w, s) / denominator)


def achievable_range(
    lo: Sequence[float] | FloatArray,
    hi: Sequence[float] | FloatArray,
    weights: Sequence[float] | FloatArray,
    *,
    total: float | None = None,
) -> tuple[float, float]:
    """The lowest and highest global sparsity that per-layer bounds allow."""
    return (
        global_sparsity(lo, weights, total=total),
        global_sparsity(hi, weights, total=total),
    )


def check_feasible(
    target: float,
    lo: Sequence[float] | FloatArray,
    hi: Sequence[float] | FloatArray,
    weights: Sequence[float] | FloatArray,
    *,
    total: float | None = None,
    where: str = "search space",
) -> None:
    """Raise ``ValueError`` naming ``where`` and the achievable range if ``target`` is out of it."""
    low, high = achievable_range(lo, hi, weights, total=total)
    if not low - TOLERANCE <= target <= high + TOLERANCE:
        raise ValueError(
            f"target_sparsity={target} is infeasible for {where}: its layer bounds allow a global "
            f"sparsity in [{low:.6f}, {high:.6f}] only"
        )


def rescale_to_target(
    raw: Sequence[float] | FloatArray,
    lo: Sequence[float] | FloatArray,
    hi: Sequence[float] | FloatArray,
    weights: Sequence[float] | FloatArray,
    target: float,
    *,
    total: float | None = None,
) -> FloatArray:
    """Scale ``raw`` by one factor ``c >= 0`` so that the clipped result meets ``target`` exactly.

    ``g(c) = sum(w * clip(c * raw, lo, hi)) / total`` is monotone and piecewise linear in ``c``
    with kinks at ``lo / raw`` and ``hi / raw``; we locate the segment holding the target and
    solve it in closed form, so the result is exact up to float rounding and keeps every layer
    inside its bounds. The ratios between layers that are not clipped are preserved, which is
    what makes the raw sample meaningful to the optimiser.

    Raises:
        ValueError: if the target lies outside what scaling ``raw`` can reach (it is infeasible
            for the bounds, or layers with ``raw == 0`` keep the sum below it).
    """
    r = _as_array(raw, "raw")
    low = _as_array(lo, "lo")
    high = _as_array(hi, "hi")
    w = _as_array(weights, "weights")
    if not r.shape == low.shape == high.shape == w.shape:
        raise ValueError("raw, lo, hi and weights must have the same length")
    if np.any(r < 0) or np.any(low > high) or np.any(w < 0):
        raise ValueError("raw and weights must be >= 0 and lo <= hi")
    denominator = float(w.sum()) if total is None else float(total)
    goal = target * denominator

    def weighted(c: float) -> float:
        return float(np.dot(w, np.clip(c * r, low, high)))

    positive = r > 0
    kinks = np.unique(np.concatenate([low[positive] / r[positive], high[positive] / r[positive]]))
    kinks = np.concatenate([[0.0], kinks])
    values = np.array([weighted(c) for c in kinks])
    if not values[0] - TOLERANCE * denominator <= goal <= values[-1] + TOLERANCE * denominator:
        raise ValueError(
            f"scaling cannot bring global sparsity to {target}: reachable "
            f"[{values[0] / denominator:.6f}, {values[-1] / denominator:.6f}] for raw {r.tolist()}"
        )
    index = int(np.searchsorted(values, goal, side="left"))
    if index == 0:
        return np.clip(kinks[0] * r, low, high)
    if index == len(kinks):
        return np.clip(kinks[-1] * r, low, high)
    c0, c1 = kinks[index - 1], kinks[index]
    v0, v1 = values[index - 1], values[index]
    c = c1 if v1 == v0 else c0 + (goal - v0) * (c1 - c0) / (v1 - v0)
    return np.clip(c * r, low, high)


def same_allocation(
    a: Mapping[str, float], b: Mapping[str, float], *, tolerance: float
) -> bool:
    """Whether two ``{layer: sparsity}`` allocations name the same layers and agree on each
    within ``tolerance``."""
    return a.keys() == b.keys() and all(abs(a[name] - b[name]) <= tolerance for name in a)


def lamp_scores(weight: npt.ArrayLike) -> FloatArray:
    """LAMP scores (Lee et al., ICLR 2021) of every weight, in the weight's flat order.

    With the squared weights sorted ascending, ``score_u = w_u^2 / sum_{v >= u} w_v^2``: a weight
    scores by its share of the energy of the weights at least as large. Ties are ordered by flat
    index. An all-zero tensor scores 0 everywhere. Here, torch-free, so that the profiler and the
    synthetic profiles of the benchmarks compute the same scores.
    """
    squares = np.square(np.asarray(weight, dtype=np.float64).reshape(-1))
    order = np.argsort(squares, kind="stable")
    sorted_sq = squares[order]
    tail = np.cumsum(sorted_sq[::-1])[::-1]
    scores = np.zeros_like(squares)
    scores[order] = np.divide(sorted_sq, tail, out=np.zeros_like(sorted_sq), where=tail > 0)
    return scores


def quantile_cdf(threshold: float, quantiles: Sequence[float] | FloatArray) -> float:
    """Fraction of a layer's scores below ``threshold``, from its 101 percentile points.

    The distribution is taken as piecewise uniform between consecutive percentiles, which is
    exact at the stored points and monotone in between.
    """
    q = _as_array(quantiles, "quantiles")
    probabilities = np.linspace(0.0, 1.0, len(q))
    if threshold < q[0]:
        return 0.0
    if threshold >= q[-1]:
        return 1.0
    # the last percentile whose value is <= threshold: ties (e.g. many zeros) count as pruned
    upper = int(np.searchsorted(q, threshold, side="right"))
    lower = upper - 1
    span = q[upper] - q[lower]
    fraction = 0.0 if span <= 0 else (threshold - q[lower]) / span
    return float(probabilities[lower] + fraction * (probabilities[upper] - probabilities[lower]))


def threshold_allocation(
    quantiles: Sequence[Sequence[float]],
    params: Sequence[float] | FloatArray,
    target: float,
) -> FloatArray:
    """Per-layer sparsities from one global score threshold pruning ``target`` of all weights.

    With magnitude quantiles this is global magnitude pruning; with LAMP-score quantiles it is
    LAMP (Lee et al., ICLR 2021), whose scores are comparable across layers by construction.
    """
    n = _as_array(params, "params")
    if len(quantiles) != len(n):
        raise ValueError("one quantile list per layer is needed")
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target must be in [0, 1], got {target}")
    goal = target * float(n.sum())

    def pruned(threshold: float) -> float:
        pairs = zip(n, quantiles, strict=True)
        return float(sum(count * quantile_cdf(threshold, q) for count, q in pairs))

    low = min(float(q[0]) for q in quantiles)
    high = max(float(q[-1]) for q in quantiles)
    for _ in range(200):
        middle = 0.5 * (low + high)
        if pruned(middle) < goal:
            low = middle
        else:
            high = middle
        if high - low <= 1e-15 * max(1.0, abs(high)):
            break
    return np.array([quantile_cdf(high, q) for q in quantiles])


def erk_allocation(shapes: Sequence[Sequence[int]], target: float) -> FloatArray:
    """Erdős–Rényi-Kernel sparsities (Evci et al., RigL, 2020) with ``target`` of weights pruned.

    Layer density is proportional to ``sum(shape) / prod(shape)``; layers whose density would
    exceed 1 are kept dense and the scale is solved again for the rest.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target must be in [0, 1), got {target}")
    sizes = np.array([float(np.prod(shape)) for shape in shapes])
    scores = np.array([float(np.sum(shape)) for shape in shapes]) / sizes
    dense = np.zeros(len(sizes), dtype=bool)
    keep = (1.0 - target) * sizes.sum()
    while not dense.all():
        budget = keep - sizes[dense].sum()
        scale = budget / float(np.dot(scores[~dense], sizes[~dense]))
        density = np.where(dense, 1.0, scale * scores)
        newly_dense = (density > 1.0) & ~dense
        if not newly_dense.any():
            return 1.0 - np.clip(density, 0.0, 1.0)
        dense |= newly_dense
    return np.zeros(len(sizes))
