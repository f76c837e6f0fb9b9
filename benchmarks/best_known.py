"""The best allocation a long local search finds on each landscape: how much headroom there is.

A grid over three layers is only a lower bound of the optimum: on the rugged one-shot landscapes
of small networks the best allocations are narrow peaks between grid points (``cnn-0.90``: the
60x60 grid's best is 49.72, a local search finds 52.50). This module runs a (1+1) evolution
strategy (one-fifth success rule, log-density steps on about a third of the layers, Contract 3
rescale after each step) from the best heuristic, several restarts, and keeps the best
allocation found; :mod:`benchmarks.allocation` reports it beside the grid as the best known.
Thousands of evaluations: a ceiling to compare against, not a contender.

    python -m benchmarks.best_known --landscapes mlp-0.90,cnn-0.90 [--evaluations 2000 --restarts 4]
        [--out results/landscapes/best_known.json]

Results are merged into ``--out`` (atomically, under a file lock); the default file is the one
:mod:`benchmarks.allocation` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from benchmarks.landscapes import (
    CACHE_DIR,
    NETWORK_BOUNDS,
    NETWORK_LANDSCAPES,
    Landscape,
    flat_params,
    landscape,
)
from benchmarks.landscapes import write_json_atomic as write_json
from benchmarks.tuners import parse_names
from nni_prune_tuners import sparsity

_logger = logging.getLogger(__name__)

PATH = CACHE_DIR / "best_known.json"
#: Share of the layers each step moves, initial and extreme step sizes (log-density units).
MOVED = 0.3
STEP, SMALLEST, LARGEST = 0.15, 0.01, 0.5


def local_search(land: Landscape, *, evaluations: int, seed: int) -> tuple[float, dict[str, float]]:
    """``(best accuracy, its layer sparsities)`` of one (1+1)-ES run from the best heuristic."""
    layers = sorted(land.weights)
    weights = np.array([land.weights[layer] for layer in layers])
    lo, hi = np.full(len(layers), NETWORK_BOUNDS[0]), np.full(len(layers), NETWORK_BOUNDS[1])

    def score(values: np.ndarray) -> float:
        return land.evaluate(flat_params(dict(zip(layers, values.tolist(), strict=True))))

    start = max(land.allocations, key=lambda h: land.heuristics.get(h, -np.inf))
    best = np.array([land.allocations[start][layer] for layer in layers])
    value = score(best)
    rng = np.random.default_rng(seed)
    step = STEP
    for _ in range(evaluations - 1):
        moved = rng.random(len(layers)) < MOVED
        density = -np.log1p(-best) + step * rng.standard_normal(len(layers)) * moved
        candidate = sparsity.rescale_to_target(np.clip(-np.expm1(-density), lo, hi), lo, hi,
                                               weights, land.target)
        result = score(candidate)
        if result >= value:
            best, value, step = candidate, result, step * 1.5
        else:
            step *= 1.5 ** -0.25
        step = min(max(step, SMALLEST), LARGEST)
    return value, dict(zip(layers, best.tolist(), strict=True))


def load(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The recorded best-known results by landscape (empty when none were computed)."""
    path = PATH if path is None else path
    return json.loads(path.read_text()) if path.exists() else {}


def of(land: Landscape, records: Mapping[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The best known of ``land`` in ``records`` (:func:`load`), if it was found on the weights
    ``land`` scores.

    A record from other weights (a cache trained on another machine, or before the network
    changed) is ignored with a warning rather than reported as this landscape's headroom.
    """
    record = records.get(land.name)
    if record is not None and record.get("network") != land.network:
        _logger.warning("ignoring the best known of %s: found on network %s, not %s; run "
                        "python -m benchmarks.best_known --landscapes %s", land.name,
                        record.get("network"), land.network, land.name)
        return None
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.best_known",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--landscapes", required=True,
                        help=f"comma list from {','.join(NETWORK_LANDSCAPES)}")
    parser.add_argument("--evaluations", type=int, default=2000, help="per restart")
    parser.add_argument("--restarts", type=int, default=4, help="seeds 0..N-1")
    parser.add_argument("--out", type=Path, default=PATH,
                        help="the JSON to merge into (another file for a run that must not replace "
                        "the recorded best known, e.g. a short one to compare with a tuner)")
    args = parser.parse_args(argv)
    names = parse_names(args.landscapes, NETWORK_LANDSCAPES, "--landscapes", parser)
    if args.evaluations < 1 or args.restarts < 1:
        parser.error("--evaluations and --restarts must be >= 1")
    logging.basicConfig(level=logging.WARNING)
    for name in names:
        started = time.perf_counter()
        land = landscape(name)
        runs = [local_search(land, evaluations=args.evaluations, seed=seed)
                for seed in range(args.restarts)]
        value, allocation = max(runs, key=lambda run: run[0])
        with FileLock(str(args.out) + ".lock"):  # several processes may merge into the file
            record = load(args.out)
            record[name] = {"network": land.network, "value": value, "allocation": allocation,
                            "evaluations": args.evaluations, "restarts": args.restarts,
                            "per_restart": [run[0] for run in runs]}
            write_json(args.out, record)
        print(f"{name}: best known {100 * value:.2f} (restarts "
              f"{', '.join(f'{100 * run[0]:.2f}' for run in runs)}; "
              f"{time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
