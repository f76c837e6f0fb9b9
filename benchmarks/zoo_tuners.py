"""PruneTPE against NNI's TPE on zoo models with fine-tuning (issue 12, point 7).

The allocation-search comparison of :mod:`benchmarks.tuners`, on real trials: each trial prunes a
zoo model (``trials.models``) at the suggested per-layer sparsities and fine-tunes it for a few
epochs on the hard digits data (:func:`trials.prune_trial.run_trial`). NNI's TPE gets the seed's
in-trial rescaling. PruneTPE reads the model's profile in ``search_spaces/`` (with its one-shot
sensitivity curves), so its first trials are the five heuristic allocations in both branches:
those trials give each heuristic's accuracy alone, and their spread over seeds (fine-tuning seeds
differ) is the noise floor printed beside the table.

Each run also keeps the held-out test accuracy of its pick (the trial with the best validation
accuracy so far), which no tuner sees, and ``prunetpe-presearch`` runs record the presearch's
wall time, reported in units of one fine-tuning trial of the same run.

Run: ``python -m benchmarks.zoo_tuners`` (about an hour on 2 cores; ``--models mlp_digits``
takes minutes). Each finished run is kept in ``--cache`` and reused, so a long comparison can be
run in pieces. Writes ``results/bench/zoo_tuners.{json,md}`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import tuners as bench
from benchmarks.driver import Evaluation, drive
from benchmarks.proxy_rank import FULL_VAL_EVAL, HALF_VAL_EVAL, presearch
from nni_prune_tuners import search_space as ss

_logger = logging.getLogger(__name__)

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
DEFAULT_MODELS = ("mlp_digits", "mobilenet_digits")
DEFAULT_TUNERS = ("prunetpe", "tpe")
#: The heuristics in the order PruneTPE proposes its warm starts (each in every branch).
WARM_STARTS = ("uniform", "global_magnitude", "lamp", "erk", "sensitivity")


@dataclass(frozen=True)
class ZooJob:
    """One tuner run on one zoo model; plain data so that it crosses process boundaries."""

    objective: str
    tuner: str
    seed: int
    budget: int
    epochs: int
    target: float = bench.TARGET
    #: The validation samples presearch scores on: "all", or "half" (its cheaper ``--eval``).
    proxy_val: str = "all"

    def cache_name(self) -> str:
        tuner = self.tuner
        if tuner == "prunetpe-presearch" and self.proxy_val != "all":
            tuner += f"-{self.proxy_val}val"
        return (f"{self.objective}-{self.target:g}-{tuner}-seed{self.seed}"
                f"-n{self.budget}-e{self.epochs}.json")


def zoo_evaluation(
    params: Mapping[str, Any],
    *,
    model: str,
    seed: int,
    epochs: int,
    parameters: Sequence[ss.Parameter],
) -> Evaluation:
    """Validation accuracy after pruning ``model`` as ``params`` say and fine-tuning it."""
    from nni_prune_tuners.trial import AgpSchedule
    from trials.prune_trial import run_trial

    result = run_trial(params, epochs=epochs, seed=seed, model=f"trials.models:{model}",
                       agp=AgpSchedule(end_epoch=epochs - 1))
    return Evaluation(result.accuracy, result.sparsity, result.method,
                      bench.layer_values(params, parameters), result.test_accuracy)


def run_zoo_job(job: ZooJob) -> dict[str, Any]:
    bench._quiet()
    random.seed(job.seed)
    np.random.seed(job.seed)
    space = json.loads((SPACES / f"{job.objective}.json").read_text())
    profile = SPACES / f"{job.objective}.profile.json"
    parameters = ss.parse_search_space(space)
    weights = {layer["name"]: float(layer["params"])
               for layer in json.loads(profile.read_text())["layers"]}
    evaluate: Any = partial(zoo_evaluation, model=job.objective, seed=job.seed,
                            epochs=job.epochs, parameters=parameters)
    if bench.TUNERS[job.tuner].rescale_in_trial:
        evaluate = partial(bench._rescaled_trial, evaluate=evaluate, parameters=parameters,
                           weights=weights, target=job.target)
    presearch_seconds = None
    with tempfile.TemporaryDirectory() as folder:
        if job.tuner == "prunetpe-presearch":  # the proxy searched first, with the run's seed
            profile = Path(folder) / "profile.json"
            proxy_eval = HALF_VAL_EVAL if job.proxy_val == "half" else FULL_VAL_EVAL
            presearch_seconds = presearch(job.objective, job.target, profile, seed=job.seed,
                                          evaluate=proxy_eval)["seconds"]
        tuner = bench.make_tuner(job.tuner, job.seed, {"profile": str(profile)},
                                 target=job.target)
        run = drive(tuner, space, evaluate, budget=job.budget, concurrency=bench.CONCURRENCY)
    return {
        **asdict(job),
        "presearch_seconds": presearch_seconds,
        "tuner_seconds": run.tuner_seconds,
        "trial_seconds": run.trial_seconds,
        "trials": [asdict(record) for record in run.trials],
    }


def run_cached(job: ZooJob, cache: Path) -> dict[str, Any]:
    """:func:`run_zoo_job`, or the run ``cache`` kept from an earlier invocation."""
    return bench.kept(cache / job.cache_name(), partial(run_zoo_job, job))


def pick_test_accuracy(run: Mapping[str, Any], n: int) -> float:
    """Held-out test accuracy of the run's pick after ``n`` trials: the trial with the best
    validation accuracy among the first ``n`` to finish (the first of equals)."""
    trials = run["trials"][:n]
    pick = max(range(len(trials)), key=lambda i: (trials[i]["accuracy"], -i))
    return float(trials[pick]["test_accuracy"])


def pick_summary(runs: Sequence[Mapping[str, Any]], budget: int) -> dict[str, dict[str, float]]:
    """Mean, sd and worst seed of the pick's test accuracy at each checkpoint."""
    out = {}
    for n in bench.checkpoints(budget):
        values = np.array([pick_test_accuracy(run, n) for run in runs])
        out[str(n)] = {"mean": float(values.mean()), "std": float(values.std()),
                       "worst": float(values.min())}
    return out


def presearch_cost(runs: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """The presearch's wall time in units of one fine-tuning trial of the same run."""
    ratios = [run["presearch_seconds"] / (run["trial_seconds"] / len(run["trials"]))
              for run in runs if run.get("presearch_seconds") is not None]
    if not ratios:
        return None
    return {"mean": float(np.mean(ratios)), "min": float(np.min(ratios)),
            "max": float(np.max(ratios))}


def pick_markdown(model: str, picks: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    marks = sorted({int(n) for p in picks.values() for n in p})
    lines = [f"**{model}** — held-out test accuracy (%) of each run's pick (best validation "
             "trial so far), mean ± sd (worst seed)", "",
             "| tuner | " + " | ".join(f"n={n}" for n in marks) + " |",
             "|---|" + "---:|" * len(marks)]
    for tuner, stats in picks.items():
        lines.append(f"| {bench.TUNERS[tuner].label} | " + " | ".join(
            bench._cell(stats[str(n)]) if str(n) in stats else "—" for n in marks) + " |")
    return "\n".join(lines)


def heuristics(runs: Sequence[Mapping[str, Any]], branches: int) -> dict[str, list[float]]:
    """Per heuristic, its accuracy alone in each seed (best of its branches), read off the warm
    starts PruneTPE proposes first, in order, ``branches`` trials per heuristic."""
    out: dict[str, list[float]] = {name: [] for name in WARM_STARTS}
    for run in runs:
        # completion order can differ from proposal order with two in flight: sort by id
        trials = sorted(run["trials"], key=lambda t: t["parameter_id"])
        for index, name in enumerate(WARM_STARTS):
            chunk = trials[index * branches:(index + 1) * branches]
            out[name].append(max(t["accuracy"] for t in chunk))
    return out


def heuristic_markdown(model: str, values: Mapping[str, Sequence[float]]) -> str:
    lines = [f"**{model}** — each heuristic alone (best branch; mean ± sd over the fine-tuning "
             "seeds, which is the noise floor of one configuration)", "",
             "| heuristic | accuracy (%) |", "|---|---:|"]
    for name, accuracies in values.items():
        lines.append(f"| {name} | {100 * np.mean(accuracies):.2f} ± {100 * np.std(accuracies):.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zoo_tuners",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--tuners", default=",".join(DEFAULT_TUNERS),
                        help=f"comma list from {','.join(bench.TUNERS)}")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per trial")
    parser.add_argument("--budget-cap", default="",
                        help="fewer trials for some tuners: comma list of tuner=N, e.g. "
                             "prunetpe-presearch=20")
    parser.add_argument("--target", type=float, default=bench.TARGET,
                        help="global sparsity target")
    parser.add_argument("--cache", type=Path, default=bench.DEFAULT_OUTPUT / "zoo_tuners_runs",
                        help="folder of finished runs, reused by later invocations")
    parser.add_argument("--proxy-val", choices=("all", "half"), default="all",
                        help="validation samples presearch scores on (half: its cheaper --eval)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=bench.DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    tuners = [t for t in args.tuners.split(",") if t]
    unknown = [m for m in models if not (SPACES / f"{m}.json").exists()]
    unknown += [t for t in tuners if t not in bench.TUNERS or t == bench.UNCONSTRAINED]
    if unknown or not models or not tuners:
        parser.error(f"unknown models or tuners: {unknown}")
    if args.seeds < 1 or args.budget < 2 * len(WARM_STARTS) or args.epochs < 2:
        parser.error("--seeds >= 1, --budget >= 10 (the warm starts) and --epochs >= 2 please")
    if not 0.0 < args.target < 1.0:
        parser.error(f"--target must be in (0, 1), got {args.target}")
    budgets = dict.fromkeys(tuners, args.budget)
    for item in (part for part in args.budget_cap.split(",") if part):
        tuner, _, count = item.partition("=")
        if tuner not in tuners or not count.isdigit() or int(count) < 2 * len(WARM_STARTS):
            parser.error(f"--budget-cap: expected tuner=N (N >= 10) with a tuner of --tuners, "
                         f"got {item!r}")
        budgets[tuner] = min(args.budget, int(count))
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    jobs = [ZooJob(model, tuner, seed, budgets[tuner], args.epochs, args.target, args.proxy_val)
            for model in models for tuner in tuners for seed in range(args.seeds)]
    runs = bench.run_jobs(jobs, workers=args.workers, run=partial(run_cached, cache=args.cache))
    wall = time.perf_counter() - started
    command = bench.command_line("benchmarks.zoo_tuners", argv)
    sections = [f"`{command}` — {wall / 60:.1f} min wall on {args.workers} worker(s), "
                f"{args.epochs} fine-tuning epochs per trial, target {args.target:g}"]
    results: dict[str, Any] = {}
    for model in models:
        by_tuner = {tuner: [r for r in runs if r["objective"] == model and r["tuner"] == tuner]
                    for tuner in tuners}
        summary = {tuner: bench.summarise(own, budgets[tuner], target=args.target)
                   for tuner, own in by_tuner.items()}
        picks = {tuner: pick_summary(own, budgets[tuner]) for tuner, own in by_tuner.items()}
        cost = presearch_cost(by_tuner.get("prunetpe-presearch", []))
        sections.append(bench.table(model, summary, target=args.target))
        sections.append(pick_markdown(model, picks))
        if cost:
            sections.append(f"Presearch wall time: {cost['mean']:.2f} fine-tuning trials of "
                            f"the same run (range {cost['min']:.2f}–{cost['max']:.2f}).")
        sections.append("Worst seed at the end of each run: " + ", ".join(
            f"{bench.TUNERS[t].label} (n={budgets[t]}) "
            f"{100 * min(c[-1] for c in summary[t]['curves']):.2f}%" for t in tuners))
        branches = len(ss.active_sets(ss.parse_search_space(
            json.loads((SPACES / f"{model}.json").read_text()))))
        own = [r for r in runs if r["objective"] == model and r["tuner"] == "prunetpe"]
        alone = heuristics(own, branches) if own else {}
        if alone:
            sections.append(heuristic_markdown(model, alone))
        results[model] = {"summary": summary, "heuristics": alone, "picks": picks,
                          "presearch_trials": cost}
    markdown = "\n\n".join(sections) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo_tuners.json").write_text(json.dumps(
        {"format": 1, "command": command, "wall_seconds": wall, "target": args.target,
         "epochs": args.epochs, "models": results, "runs": runs}) + "\n")
    (args.out / "zoo_tuners.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
