"""How rugged a three-layer network landscape is near its best heuristic: signal or validation noise.

A one-shot accuracy on a few hundred validation images moves by whole images from one allocation
to the next. This probe scores a ``points x points`` grid of the two smaller layers' log-densities
around the best heuristic (the largest layer solved from the budget) and reports

- the roughness: the sd of each point's accuracy minus the mean of its 5x5 neighbourhood;
- the best point, and the best neighbourhood mean (the best a smooth search could claim);

beside the best heuristic + 3 points (issue 11's target). Where the target is above the best
neighbourhood mean, a search meets it only by finding a peak of the noise, which held-out images
do not reward.

    python -m benchmarks.roughness --landscapes mlp-0.90,cnn-0.90 [--points 120 --span 0.7]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.allocation import MARGIN
from benchmarks.landscapes import NETWORK_BOUNDS, NETWORK_LANDSCAPES, Landscape, flat_params, landscape
from benchmarks.tuners import parse_names

_logger = logging.getLogger(__name__)

#: Side of the neighbourhood whose mean is the smooth part of the landscape.
WINDOW = 5


@dataclass(frozen=True)
class Roughness:
    """What the probe found on one landscape (accuracies in [0, 1])."""

    heuristic: float
    best: float
    best_smooth: float
    roughness: float
    points: int


def grid(land: Landscape, *, points: int, span: float) -> np.ndarray:
    """Accuracy on the grid (NaN where the largest layer cannot meet the budget in its bounds)."""
    names = sorted(land.weights, key=land.weights.__getitem__)
    if len(names) != 3:
        raise ValueError(f"{land.name} has {len(names)} layers; the probe needs three")
    (a, b), large = names[:2], names[2]
    start = land.allocations[max(land.heuristics, key=land.heuristics.__getitem__)]
    lo, hi = NETWORK_BOUNDS
    goal = land.target * sum(land.weights.values())
    axes = [-np.log1p(-start[layer]) + np.linspace(-span, span, points) for layer in (a, b)]
    values = np.full((points, points), np.nan)
    for i, x in enumerate(axes[0]):
        for j, y in enumerate(axes[1]):
            s_a, s_b = -np.expm1(-x), -np.expm1(-y)
            rest = (goal - land.weights[a] * s_a - land.weights[b] * s_b) / land.weights[large]
            if all(lo <= s <= hi for s in (s_a, s_b, rest)):
                values[i, j] = land.evaluate(flat_params({a: s_a, b: s_b, large: rest}))
    return values


def roughness(values: np.ndarray, *, window: int = WINDOW) -> tuple[float, float]:
    """``(sd of value minus its neighbourhood mean, best neighbourhood mean)`` over the points
    whose whole ``window x window`` neighbourhood was scored."""
    from numpy.lib.stride_tricks import sliding_window_view

    if min(values.shape) < window:
        raise ValueError(f"a {values.shape} grid has no {window}x{window} neighbourhood")
    windows = sliding_window_view(values, (window, window))
    full = ~np.isnan(windows).any(axis=(-2, -1))
    if not full.any():
        raise ValueError(f"no {window}x{window} neighbourhood lies inside the budget's bounds")
    means = windows.mean(axis=(-2, -1))
    half = window // 2
    centre = values[half : half + means.shape[0], half : half + means.shape[1]]
    return float(np.std((centre - means)[full])), float(means[full].max())


def probe(land: Landscape, *, points: int, span: float) -> Roughness:
    values = grid(land, points=points, span=span)
    sd, smooth = roughness(values)
    return Roughness(max(land.heuristics.values()), float(np.nanmax(values)), smooth, sd,
                     int(np.isfinite(values).sum()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roughness",
                                     description=__doc__.splitlines()[0])
    three_layers = [name for name in NETWORK_LANDSCAPES if not name.startswith(("deepmlp", "resnet"))]
    parser.add_argument("--landscapes", required=True, help=f"comma list from {','.join(three_layers)}")
    parser.add_argument("--points", type=int, default=120, help="grid points per layer")
    parser.add_argument("--span", type=float, default=0.7,
                        help="half-width of the grid in log-density around the best heuristic")
    args = parser.parse_args(argv)
    names = parse_names(args.landscapes, three_layers, "--landscapes", parser)
    if args.points < WINDOW or args.span <= 0:
        parser.error(f"--points must be >= {WINDOW} and --span > 0")
    logging.basicConfig(level=logging.WARNING)
    print("| landscape | best heuristic + 3 | best point | best 5×5 mean | roughness (sd) | points |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        started = time.perf_counter()
        found = probe(landscape(name), points=args.points, span=args.span)
        print(f"| {name} | {100 * (found.heuristic + MARGIN):.2f} | {100 * found.best:.2f} | "
              f"{100 * found.best_smooth:.2f} | {100 * found.roughness:.2f} | {found.points} |",
              flush=True)
        _logger.info("%s: %.0f s", name, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
