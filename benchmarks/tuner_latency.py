"""``generate_parameters`` latency of PruneTPE vs NNI's builtin TPE at growing history sizes.

Both tuners get the same nested search space (the analytic layers, two pruning methods) and the
same analytic results; after 10, 100 and 500 completed trials we time a batch of further
suggestions (two in flight, as with ``trialConcurrency: 2``) and report p50/p95 and the ratio.

    python -m benchmarks.tuner_latency [--checkpoints 10,100,500] [--samples 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from nni.algorithms.hpo.tpe_tuner import TpeTuner
from nni.tuner import Tuner

from nni_prune_tuners.tuner import PruneTPETuner
from trials import analytic_trial

_logger = logging.getLogger(__name__)
TARGET = 0.9


def _objective(params: dict[str, Any]) -> float:
    method, sparsities = analytic_trial.parse_parameters(params)
    return analytic_trial.final_accuracy(method, sparsities)


def tuner_factories(seed: int) -> dict[str, Callable[[], Tuner]]:
    return {
        "PruneTPE": lambda: PruneTPETuner(
            target_sparsity=TARGET, layer_params=analytic_trial.layer_params(), seed=seed
        ),
        "NNI TPE": lambda: TpeTuner(optimize_mode="maximize", seed=seed),
    }


def measure(make: Callable[[], Tuner], checkpoints: Sequence[int], samples: int) -> dict[int, list[float]]:
    """Seconds per ``generate_parameters`` call, timed at each history size in ``checkpoints``."""
    tuner = make()
    tuner.update_search_space(analytic_trial.search_space())
    timings: dict[int, list[float]] = {}
    next_id = 0
    completed = 0
    in_flight: list[tuple[int, dict[str, Any]]] = []

    def ask(record: list[float] | None) -> None:
        nonlocal next_id
        start = time.perf_counter()
        params = tuner.generate_parameters(next_id)
        if record is not None:
            record.append(time.perf_counter() - start)
        in_flight.append((next_id, params))
        next_id += 1

    def finish() -> None:
        nonlocal completed
        parameter_id, params = in_flight.pop(0)
        tuner.receive_trial_result(parameter_id, params, _objective(params))
        tuner.trial_end(parameter_id, True)
        completed += 1

    ask(None)
    ask(None)
    for checkpoint in checkpoints:
        while completed < checkpoint:
            finish()
            ask(None)
        record: list[float] = []
        for _ in range(samples):  # the history grows from checkpoint to checkpoint + samples
            finish()
            ask(record)
        timings[checkpoint] = record
    return timings


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default="10,100,500")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/latency"))
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    checkpoints = [int(x) for x in args.checkpoints.split(",")]

    results: dict[str, dict[int, list[float]]] = {}
    for name, make in tuner_factories(args.seed).items():
        start = time.perf_counter()
        results[name] = measure(make, checkpoints, args.samples)
        print(f"{name}: measured in {time.perf_counter() - start:.1f} s", flush=True)

    lines = [
        "| completed trials | PruneTPE p50 (ms) | PruneTPE p95 (ms) | NNI TPE p50 (ms) | NNI TPE p95 (ms) "
        "| p50 ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    summary = []
    for checkpoint in checkpoints:
        row: dict[str, float] = {"completed": checkpoint}
        for name in results:
            row[f"{name} p50"] = 1000 * percentile(results[name][checkpoint], 50)
            row[f"{name} p95"] = 1000 * percentile(results[name][checkpoint], 95)
        ratio = row["PruneTPE p50"] / row["NNI TPE p50"]
        summary.append({**row, "p50 ratio": ratio})
        lines.append(
            f"| {checkpoint} | {row['PruneTPE p50']:.1f} | {row['PruneTPE p95']:.1f} | "
            f"{row['NNI TPE p50']:.1f} | {row['NNI TPE p95']:.1f} | {ratio:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tuner_latency.json").write_text(
        json.dumps({"summary": summary, "samples": args.samples, "seed": args.seed,
                    "median_seconds": {n: {c: statistics.median(v) for c, v in r.items()}
                                       for n, r in results.items()}}, indent=2)
    )
    (args.out / "tuner_latency.md").write_text(table + "\n")
    plot(summary, list(results), args.out / "tuner_latency.png")
    return 0


def plot(summary: list[dict[str, float]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    positions = np.arange(len(summary))
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        axis.bar(positions + index * width, [row[f"{name} p50"] for row in summary], width,
                 yerr=[[0] * len(summary),
                       [row[f"{name} p95"] - row[f"{name} p50"] for row in summary]],
                 label=f"{name} (p50, bar to p95)")
    axis.set_xticks(positions + width * (len(names) - 1) / 2,
                    [str(int(row["completed"])) for row in summary])
    axis.set_xlabel("completed trials")
    axis.set_ylabel("generate_parameters latency (ms)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
