"""Channel widths a kernel likes: a ``channel`` branch that keeps multiples of ``channel_multiple``.

Blocked CPU and GPU kernels (oneDNN, cuDNN, ONNX Runtime's MLAS) process channels in blocks of
8 or 16, so a layer that keeps 23 channels can cost nearly what 32 do. With
``channel_multiple: m`` every group keeps ``k * m`` channels (``k >= 1``), or its full width
``n`` where ``n`` is not a multiple of ``m`` (a group narrower than ``m`` is never pruned), and
only widths inside the group's bounds ``[(1 - hi) n, (1 - lo) n]``. The sparsities proposed are
then exact (``s = 1 - w / n``: the trial's ``round(s * n)`` removes exactly ``n - w``).

On these discrete widths the measure removed (``R`` of :class:`~nni_prune_tuners.flops.
ProductTerms`) is a step function of the rescale factor, so it cannot meet the target exactly:
:func:`rescale_to_widths` lands on the allocation nearest to it, within half the largest step
one group makes between neighbouring widths (:func:`landing_bound`; 0.25 x the share of the
measure a group feeds, for a 16-channel group at ``m = 8``).
Pure numpy; nothing here knows torch, Optuna or NNI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Bisection steps over the rescale factor: 2^-60 of its range separates any two steps.
_BISECTIONS = 60
#: Slack on the bounds' widths, so that a bound written as a float still admits its width.
_EPS = 1e-9


def allowed_widths(channels: int, multiple: int, lo: float, hi: float) -> IntArray:
    """The widths (kept channels) a group of ``channels`` may keep, increasing.

    ``k * multiple`` for ``k >= 1`` and the full width, inside the bounds on the sparsity.

    Raises:
        ValueError: if the bounds leave no such width (the message names what they allow).
    """
    widths = set(range(multiple, channels + 1, multiple)) | {channels}
    least, most = (1.0 - hi) * channels - _EPS, (1.0 - lo) * channels + _EPS
    inside = sorted(w for w in widths if least <= w <= most)
    if not inside:
        raise ValueError(
            f"its bounds [{lo:g}, {hi:g}] keep {least + _EPS:.2f} to {most - _EPS:.2f} of "
            f"{channels} channels, and no multiple of channel_multiple={multiple} (nor the full "
            f"width) lies there: widen the bounds or lower channel_multiple")
    return np.array(inside, dtype=np.int64)


def landing_bound(gradient: FloatArray, widths: Sequence[IntArray], channels: IntArray) -> float:
    """How far :func:`rescale_to_widths` may land from a target inside the reachable range (``R``
    at the bounds, snapped: the branch checks it): half the largest step one group makes
    between neighbouring allowed widths, ``max_g dR/ds_g(0) * gap_g / (2 n_g)`` (``dR/ds_g`` is
    largest at no pruning)."""
    gaps = np.array([float(np.max(np.diff(allowed), initial=0)) for allowed in widths])
    return float(np.max(gradient * gaps / channels.astype(np.float64), initial=0.0)) / 2.0


def snap(sparsities: FloatArray, widths: Sequence[IntArray], channels: IntArray,
         lo: FloatArray, hi: FloatArray) -> FloatArray:
    """Each sparsity moved to the nearest allowed width (ties to the narrower one), as an exact
    sparsity ``1 - w / n`` inside the bounds. Monotone: a larger sparsity never snaps lower."""
    out = np.empty(len(widths))
    for index, (allowed, n) in enumerate(zip(widths, channels, strict=True)):
        kept = (1.0 - float(sparsities[index])) * int(n)
        position = int(np.searchsorted(allowed, kept))
        below = allowed[max(position - 1, 0)]
        above = allowed[min(position, len(allowed) - 1)]
        width = below if kept - below <= above - kept else above
        out[index] = 1.0 - float(width) / int(n)
    return np.clip(out, lo, hi)


def snap_grid(values: FloatArray, grids: FloatArray, snapped: Callable[[FloatArray], FloatArray]
              ) -> tuple[FloatArray, FloatArray]:
    """A knapsack's per-group grids moved to allowed widths, with each value interpolated at
    the width it moved to (grids increase along each row), so that the solve chooses among the
    discrete widths only (repeated widths are harmless choices)."""
    moved = np.array([snapped(column) for column in grids.T]).T
    interpolated = np.array([np.interp(row, grid, value)
                             for row, grid, value in zip(moved, grids, values, strict=True)])
    return np.where(np.isfinite(values), interpolated, values), moved


def rescale_to_widths(raw: FloatArray, lo: FloatArray, hi: FloatArray,
                      removed: Callable[[FloatArray], float],
                      snapped: Callable[[FloatArray], FloatArray], target: float) -> FloatArray:
    """``snapped(clip(c * raw, lo, hi))`` at the factor ``c >= 0`` whose step of ``removed``
    lies nearest to ``target``, one group at a time.

    ``removed(snapped(clip(c * raw)))`` is a non-decreasing step function of ``c`` (snapping is
    monotone, ``R`` too): bisect for the last step below the target and the first at or above
    it. Several groups may step at once (equal ratios and widths), so they are moved from the
    one allocation to the other one group at a time, and the nearest of those allocations is
    kept: each move changes ``R`` by at most one group's step, hence the miss is at most half
    the largest (:func:`landing_bound`).
    """
    r = np.maximum(np.asarray(raw, dtype=np.float64), 1e-9)

    def at(c: float) -> FloatArray:
        return snapped(np.clip(c * r, lo, hi))

    low, high = 0.0, float(np.max(hi / r))
    if removed(at(high)) < target:
        return at(high)
    if removed(at(low)) >= target:
        return at(low)
    for _ in range(_BISECTIONS):
        middle = 0.5 * (low + high)
        if removed(at(middle)) >= target:
            high = middle
        else:
            low = middle
    under, over = at(low), at(high)
    candidates = [under]
    for group in np.flatnonzero(under != over):
        candidates.append(candidates[-1].copy())
        candidates[-1][group] = over[group]
    return min(candidates, key=lambda s: (abs(removed(s) - target), -removed(s)))
