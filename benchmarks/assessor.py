"""Replay recorded digits trials through assessors: epochs saved against the best trial kept.

The recorded histories (``benchmarks/data/digits_histories.json``, written by
``python -m benchmarks.record_histories``) hold every configuration run to its last epoch, so one
recording answers "what if an assessor had watched this experiment": trials start in the recorded
order with two in flight (``trialConcurrency: 2``), every trial takes one time unit per epoch, each
intermediate result goes to the assessor as NNI's dispatcher sends it (the whole history so far), a
``Bad`` verdict kills the trial at once (a kill on the last epoch still counts as stopped: in NNI it
races the final report), and ``trial_end`` follows. The replay is repeated over shuffled arrival
orders because the verdicts depend on which trials completed first.

NNI's builtin ``Medianstop`` gets the ``default`` values as plain floats, as NNI users feed it.

Run: ``python -m benchmarks.assessor`` (seconds, no torch). Writes ``results/assessor/replay.json``
and ``results/assessor/replay.png`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from nni.algorithms.hpo.medianstop_assessor import MedianstopAssessor
from nni.assessor import Assessor, AssessResult

from nni_prune_tuners.assessor import PruneEarlyStopAssessor

DEFAULT_DATA = Path(__file__).parent / "data" / "digits_histories.json"
DEFAULT_OUTPUT = Path("results") / "assessor"


@dataclass(frozen=True)
class RecordedTrial:
    """One configuration's full run: its intermediate dicts and its final accuracy."""

    method: str
    history: list[dict[str, Any]]
    final: float


@dataclass(frozen=True)
class Contender:
    """An assessor to compare: a factory (None: no assessor) and how it wants each report."""

    name: str
    make: Callable[[], Assessor] | None
    as_floats: bool = False


@dataclass
class Outcome:
    """What one replay cost and kept."""

    epochs_used: int
    epochs_total: int
    stopped: list[int]
    best_kept: float
    best_overall: float
    best_survived: bool


def load(path: Path, epochs: int | None = None) -> list[RecordedTrial]:
    """Read the recorded histories (``benchmarks/record_histories.py`` format 1).

    With ``epochs``, every trial is cut to its first ``epochs`` epochs and its last kept
    validation accuracy stands for its final one: shorter fine-tuning from the same recording.
    """
    payload = json.loads(path.read_text())
    if payload.get("format") != 1:
        raise ValueError(f"{path}: unsupported format {payload.get('format')!r}, expected 1")
    if epochs is not None and not 1 <= epochs <= payload["epochs"]:
        raise ValueError(f"epochs must be in [1, {payload['epochs']}], got {epochs!r}")
    trials = []
    for t in payload["trials"]:
        method = t["params"]["prune_method"]["_name"]
        if epochs is None:
            trials.append(RecordedTrial(method, t["history"], t["final"]["default"]))
        else:
            history = t["history"][:epochs]
            trials.append(RecordedTrial(method, history, history[-1]["default"]))
    return trials


def replay(trials: Sequence[RecordedTrial], contender: Contender, *, concurrency: int = 2) -> Outcome:
    """Run one simulated experiment over ``trials`` in the given order."""
    assessor = contender.make() if contender.make is not None else None
    pending = list(range(len(trials)))[::-1]
    running: list[tuple[int, int]] = []  # (trial index, epochs reported so far)
    used = 0
    stopped: list[int] = []
    while pending or running:
        while pending and len(running) < concurrency:
            running.append((pending.pop(), 0))
        still_running = []
        for index, reported in running:
            history = trials[index].history
            reported += 1
            used += 1
            verdict = AssessResult.Good
            if assessor is not None:
                shown: list[Any] = history[:reported]
                if contender.as_floats:
                    shown = [entry["default"] for entry in shown]
                verdict = assessor.assess_trial(str(index), shown)
            if verdict is AssessResult.Bad:
                stopped.append(index)
            elif reported < len(history):
                still_running.append((index, reported))
                continue
            if assessor is not None:
                assessor.trial_end(str(index), verdict is AssessResult.Good)
        running = still_running
    killed = set(stopped)
    kept = [t.final for i, t in enumerate(trials) if i not in killed]
    best_overall = max(t.final for t in trials)
    return Outcome(
        epochs_used=used,
        epochs_total=sum(len(t.history) for t in trials),
        stopped=stopped,
        best_kept=max(kept, default=float("nan")),
        best_overall=best_overall,
        best_survived=bool(kept) and max(kept) == best_overall,
    )


def contenders(agp_end_epoch: int) -> list[Contender]:
    """The assessors compared, each with the options a user would plausibly set."""
    return [
        Contender("no assessor", None),
        Contender("PruneEarlyStop (median, defaults)", PruneEarlyStopAssessor),
        Contender(
            "PruneEarlyStop (percentile 25)",
            lambda: PruneEarlyStopAssessor(rule="percentile", percentile=25),
        ),
        Contender("Medianstop (NNI defaults)", MedianstopAssessor, as_floats=True),
        Contender(
            f"Medianstop (start_step={agp_end_epoch + 1}, past the AGP ramp)",
            lambda: MedianstopAssessor(start_step=agp_end_epoch + 1),
            as_floats=True,
        ),
    ]


def summarise(trials: Sequence[RecordedTrial], outcomes: Sequence[Outcome]) -> dict[str, float | int]:
    """Means over arrival orders, in the units of the table."""
    stopped_agp = [sum(trials[i].method == "agp" for i in o.stopped) for o in outcomes]
    stopped_level = [sum(trials[i].method == "level" for i in o.stopped) for o in outcomes]
    gaps = [100.0 * (o.best_overall - o.best_kept) for o in outcomes]
    return {
        "orders": len(outcomes),
        "epochs_saved_pct": float(np.mean([100.0 * (1 - o.epochs_used / o.epochs_total) for o in outcomes])),
        "best_survived_pct": float(np.mean([100.0 * o.best_survived for o in outcomes])),
        "best_gap_points_mean": float(np.mean(gaps)),
        "best_gap_points_worst": float(np.max(gaps)),
        "stopped_agp_mean": float(np.mean(stopped_agp)),
        "stopped_level_mean": float(np.mean(stopped_level)),
    }


def table(trials: Sequence[RecordedTrial], summaries: dict[str, dict[str, Any]]) -> str:
    """The markdown table of the README."""
    n_agp = sum(t.method == "agp" for t in trials)
    lines = [
        "| assessor | epochs saved | best survived (orders) | best-accuracy gap, mean / worst "
        f"(points) | stopped AGP / {n_agp} | stopped Level / {len(trials) - n_agp} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in summaries.items():
        lines.append(
            f"| {name} | {s['epochs_saved_pct']:.1f}% | {s['best_survived_pct']:.0f}% | "
            f"{s['best_gap_points_mean']:.2f} / {s['best_gap_points_worst']:.2f} | "
            f"{s['stopped_agp_mean']:.1f} | {s['stopped_level_mean']:.1f} |"
        )
    return "\n".join(lines)


def plot(trials: Sequence[RecordedTrial], path: Path) -> None:
    """Accuracy by epoch and by aligned step: why aligning AGP with Level matters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_epoch, by_aligned) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours = {"agp": "tab:orange", "level": "tab:blue"}
    for trial in trials:
        values = [entry["default"] for entry in trial.history]
        first = next(i for i, entry in enumerate(trial.history) if entry.get("pruned", True))
        style = {"color": colours[trial.method], "alpha": 0.35, "lw": 1}
        by_epoch.plot(range(len(values)), values, **style)
        by_aligned.plot(range(len(values) - first), values[first:], **style)
    by_epoch.set(title="as NNI's Medianstop compares", xlabel="epoch", ylabel="val accuracy")
    by_aligned.set(title="as PruneEarlyStop compares", xlabel="epochs since masks are final")
    for method, colour in colours.items():
        by_epoch.plot([], [], color=colour, label=method.upper() if method == "agp" else "Level")
    by_epoch.legend()
    by_epoch.set_ylim(0.5, 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--orders", type=int, default=50, help="shuffled arrival orders")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="cut every trial to its first EPOCHS epochs")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("medianstop_Assessor").setLevel(logging.ERROR)

    recorded = load(args.data, args.epochs)
    agp_end = json.loads(args.data.read_text())["agp_schedule"]["end_epoch"]
    rng = np.random.RandomState(args.seed)
    orders = [list(range(len(recorded)))]
    orders += [list(rng.permutation(len(recorded))) for _ in range(args.orders - 1)]
    summaries: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for contender in contenders(agp_end):
        outcomes = []
        for order in orders:
            shuffled = [recorded[i] for i in order]
            outcome = replay(shuffled, contender, concurrency=args.concurrency)
            outcome.stopped = [int(order[i]) for i in outcome.stopped]  # recorded indices
            outcomes.append(outcome)
        summaries[contender.name] = summarise(recorded, outcomes)
        runs[contender.name] = [asdict(o) for o in outcomes]

    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "replay.json").write_text(
        json.dumps(
            {
                "data": str(args.data),
                "trials": len(recorded),
                "orders": len(orders),
                "concurrency": args.concurrency,
                "seed": args.seed,
                "epochs": len(recorded[0].history),
                "summary": summaries,
                "runs": runs,
            },
            indent=1,
        )
        + "\n"
    )
    plot(recorded, args.output / "replay.png")
    best = max(t.final for t in recorded)
    print(
        f"{len(recorded)} recorded digits trials ({args.data.name}, "
        f"{len(recorded[0].history)} epochs), best final accuracy "
        f"{100 * best:.2f}%, {len(orders)} arrival orders, {args.concurrency} trials in flight\n"
    )
    print(table(recorded, summaries))
    print(f"\nwrote {args.output / 'replay.json'} and {args.output / 'replay.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
