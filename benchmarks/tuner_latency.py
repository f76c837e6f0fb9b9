"""``generate_parameters`` latency of PruneTPE vs NNI's builtin TPE at growing history sizes.

Both tuners get the same nested search space (the analytic layers, two pruning methods) and the
same analytic results; after 10, 100 and 500 completed trials we time a batch of further
suggestions (two in flight, as with ``trialConcurrency: 2``) and report p50/p95 and the ratio.

A second point (issue 11) times PruneTPE alone on a wide space: one branch of 100 layer
sparsities (uniform, sizes log-uniform in 500..500k) at the same target, after 500 finished
trials of an additive knee objective, for the default allocation engine and ``allocation: tpe``;
the issue's target is a p50 of at most 100 ms for the default.

    python -m benchmarks.tuner_latency [--checkpoints 10,100,500] [--samples 30] [--seed 0]
        [--wide-layers 100] [--wide-checkpoint 500]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from nni.algorithms.hpo.tpe_tuner import TpeTuner
from nni.tuner import Tuner

from benchmarks.landscapes import softplus_excess
from nni_prune_tuners.tuner import PruneTPETuner
from trials import analytic_trial

_logger = logging.getLogger(__name__)
TARGET = 0.9
#: Issue 11: p50 suggestion latency of PruneTPE's default at the wide point.
WIDE_LIMIT_MS = 100.0


def _objective(params: dict[str, Any]) -> float:
    method, sparsities = analytic_trial.parse_parameters(params)
    return analytic_trial.final_accuracy(method, sparsities)


@dataclass(frozen=True)
class WideSpace:
    """One branch of ``n`` layer sparsities with sizes, knees and an additive objective."""

    space: dict[str, Any]
    layer_params: dict[str, int]
    knee: np.ndarray
    sensitivity: np.ndarray

    def objective(self, params: dict[str, Any]) -> float:
        values = np.array([params[f"{name}_sparsity"] for name in self.layer_params])
        return 0.98 - float(np.sum(self.sensitivity * softplus_excess(values, self.knee)))


def wide_space(layers: int, seed: int) -> WideSpace:
    """Seeded: sizes log-uniform in 500..500k, knees in 0.7..0.97, so the budget binds."""
    rng = np.random.RandomState(seed)
    names = [f"layer{i:03d}" for i in range(layers)]
    counts = np.exp(rng.uniform(np.log(500), np.log(500_000), layers)).astype(int)
    space = {f"{name}_sparsity": {"_type": "uniform", "_value": [0.05, 0.99]} for name in names}
    return WideSpace(space, {n: int(c) for n, c in zip(names, counts, strict=True)},
                     rng.uniform(0.7, 0.97, layers), rng.uniform(0.1, 2.0, layers))


def wide_factories(wide: WideSpace, seed: int) -> dict[str, Callable[[], Tuner]]:
    return {
        "PruneTPE (default)": lambda: PruneTPETuner(
            target_sparsity=TARGET, layer_params=wide.layer_params, seed=seed
        ),
        "PruneTPE (allocation: tpe)": lambda: PruneTPETuner(
            target_sparsity=TARGET, layer_params=wide.layer_params, seed=seed, allocation="tpe"
        ),
    }


def tuner_factories(seed: int) -> dict[str, Callable[[], Tuner]]:
    return {
        "PruneTPE": lambda: PruneTPETuner(
            target_sparsity=TARGET, layer_params=analytic_trial.layer_params(), seed=seed
        ),
        "NNI TPE": lambda: TpeTuner(optimize_mode="maximize", seed=seed),
    }


def measure(
    make: Callable[[], Tuner],
    checkpoints: Sequence[int],
    samples: int,
    *,
    space: dict[str, Any] | None = None,
    objective: Callable[[dict[str, Any]], float] = _objective,
) -> dict[int, list[float]]:
    """Seconds per ``generate_parameters`` call, timed at each history size in ``checkpoints``
    (on the analytic space and objective unless ``space`` and ``objective`` are given)."""
    tuner = make()
    tuner.update_search_space(analytic_trial.search_space() if space is None else space)
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
        tuner.receive_trial_result(parameter_id, params, objective(params))
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
    parser.add_argument("--wide-layers", type=int, default=100,
                        help="layers of the wide one-branch space (0: skip that point)")
    parser.add_argument("--wide-checkpoint", type=int, default=500,
                        help="finished trials before the wide point is timed")
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
    wide_rows: list[dict[str, Any]] = []
    if args.wide_layers > 0:
        wide_rows = measure_wide(args.wide_layers, args.wide_checkpoint, args.samples, args.seed)
        table += "\n\n" + wide_table(wide_rows, args.wide_layers, args.wide_checkpoint)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tuner_latency.json").write_text(
        json.dumps({"summary": summary, "samples": args.samples, "seed": args.seed,
                    "median_seconds": {n: {c: statistics.median(v) for c, v in r.items()}
                                       for n, r in results.items()},
                    "wide": {"layers": args.wide_layers, "completed": args.wide_checkpoint,
                             "rows": wide_rows}}, indent=2)
    )
    (args.out / "tuner_latency.md").write_text(table + "\n")
    plot(summary, list(results), args.out / "tuner_latency.png")
    return 0


def measure_wide(layers: int, checkpoint: int, samples: int, seed: int) -> list[dict[str, Any]]:
    """p50/p95 (ms) of PruneTPE's engines after ``checkpoint`` finished trials on the wide space."""
    wide = wide_space(layers, seed)
    rows = []
    for name, make in wide_factories(wide, seed).items():
        start = time.perf_counter()
        timings = measure(make, [checkpoint], samples, space=wide.space,
                          objective=wide.objective)[checkpoint]
        print(f"{name}, {layers} layers: measured in {time.perf_counter() - start:.1f} s",
              flush=True)
        rows.append({"tuner": name, "p50": 1000 * percentile(timings, 50),
                     "p95": 1000 * percentile(timings, 95)})
    return rows


def wide_table(rows: Sequence[dict[str, Any]], layers: int, checkpoint: int) -> str:
    """The wide point as markdown, with issue 11's target checked for the default engine."""
    lines = [
        f"{layers}-layer space (one branch, target {TARGET}), {checkpoint} finished trials:",
        "",
        "| tuner | p50 (ms) | p95 (ms) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {row['tuner']} | {row['p50']:.1f} | {row['p95']:.1f} |" for row in rows]
    default = next(row for row in rows if row["tuner"] == "PruneTPE (default)")
    verdict = "MET" if default["p50"] <= WIDE_LIMIT_MS else "NOT MET"
    lines += ["", f"Target: PruneTPE (default) p50 {default['p50']:.1f} ms ≤ {WIDE_LIMIT_MS:.0f} ms: "
              f"{verdict}"]
    return "\n".join(lines)


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
