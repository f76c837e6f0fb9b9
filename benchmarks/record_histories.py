"""Record digits trial histories once, so the assessor benchmark can replay them without torch.

Each configuration is what PruneTPE would send (Contract 2): a method (AGP or Level) and per-layer
sparsities sampled at random so that the parameter-weighted global sparsity is exactly the target
(Contract 3). Every configuration is fine-tuned for the full number of epochs by the
reference trial (:func:`trials.prune_trial.run_trial`), and its per-epoch intermediate dicts
(Contract 5) and final metrics are written to ``benchmarks/data/digits_histories.json``.

Run: ``python -m benchmarks.record_histories`` (about two minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from trials.masking import AgpSchedule, layer_weight, prunable_layers
from trials.models import digits_cnn
from trials.prune_trial import run_trial

_logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path(__file__).parent / "data" / "digits_histories.json"
FORMAT = 1
LOW, HIGH = 0.05, 0.98  # the per-layer bounds of search_spaces/digits.json


def allocate(
    rng: np.random.RandomState, weights: Mapping[str, int], target: float
) -> dict[str, float]:
    """Random per-layer sparsities whose parameter-weighted mean is exactly ``target``.

    Every layer but the largest is drawn uniformly within the bounds and the largest is solved for
    the target (redrawn when that falls outside the bounds). Rescaling raw draws by one factor, as
    the tuner does, would pin the small layers at the upper bound most of the time here (the largest
    layer holds three quarters of the weights) and record near-duplicate configurations.
    """
    largest = max(weights, key=lambda n: weights[n])
    total = sum(weights.values())
    while True:
        sparsities = {n: float(rng.uniform(LOW, HIGH)) for n in weights if n != largest}
        rest = target * total - sum(weights[n] * s for n, s in sparsities.items())
        solved = rest / weights[largest]
        if LOW <= solved <= HIGH:
            sparsities[largest] = solved
            return {n: sparsities[n] for n in weights}


def sample_configurations(
    count: int, target: float, seed: int, weights: Mapping[str, int]
) -> list[dict[str, Any]]:
    """``count`` Contract-2 parameter sets, half AGP and half Level, in a shuffled order."""
    rng = np.random.RandomState(seed)
    methods = ["agp", "level"] * (count // 2) + ["agp"] * (count % 2)
    rng.shuffle(methods)
    configs = []
    for method in methods:
        branch: dict[str, Any] = {"_name": method}
        for name, sparsity in allocate(rng, weights, target).items():
            branch[f"{name}_sparsity"] = sparsity
        configs.append({"prune_method": branch})
    return configs


def record(
    configs: Sequence[Mapping[str, Any]], *, epochs: int, schedule: AgpSchedule, seed: int
) -> list[dict[str, Any]]:
    """Run every configuration to the end and keep its history and final metrics."""
    trials = []
    for index, params in enumerate(configs):
        start = time.perf_counter()
        result = run_trial(params, epochs=epochs, seed=seed + index, device="cpu", agp=schedule)
        _logger.info(
            "trial %d/%d %s: %.4f in %.1fs",
            index + 1,
            len(configs),
            result.method,
            result.accuracy,
            time.perf_counter() - start,
        )
        trials.append(
            {
                "index": index,
                "seed": seed + index,
                "params": params,
                "history": result.history,
                "final": result.final_metrics(),
            }
        )
    return trials


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=80, help="configurations (default 80)")
    parser.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs (default 12)")
    parser.add_argument("--target", type=float, default=0.9, help="global sparsity (default 0.9)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    weights = {n: layer_weight(m).numel() for n, m in prunable_layers(digits_cnn()).items()}
    schedule = AgpSchedule()
    configs = sample_configurations(args.count, args.target, args.seed, weights)
    trials = record(configs, epochs=args.epochs, schedule=schedule, seed=args.seed)
    payload = {
        "format": FORMAT,
        "description": "digits CNN pruning trials, every configuration run to the last epoch",
        "recorded_with": "python -m benchmarks.record_histories "
        f"--count {args.count} --epochs {args.epochs} --target {args.target} --seed {args.seed}",
        "epochs": args.epochs,
        "target_sparsity": args.target,
        "layer_params": weights,
        "agp_schedule": asdict(schedule),
        "trials": trials,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {len(trials)} trials to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
