"""PruneTPE against NNI's TPE on zoo models with fine-tuning (issue 12, point 7).

The allocation-search comparison of :mod:`benchmarks.tuners`, on real trials: each trial prunes a
zoo model (``trials.models``) at the suggested per-layer sparsities and fine-tunes it for a few
epochs on the hard digits data (:func:`trials.prune_trial.run_trial`). NNI's TPE gets the seed's
in-trial rescaling. PruneTPE reads the model's profile in ``search_spaces/`` (with its one-shot
sensitivity curves), so its first trials are the five heuristic allocations in both branches:
those trials give each heuristic's accuracy alone, and their spread over seeds (fine-tuning seeds
differ) is the noise floor printed beside the table.

Run: ``python -m benchmarks.zoo_tuners`` (about an hour on 2 cores; ``--models mlp_digits``
takes minutes). Writes ``results/bench/zoo_tuners.{json,md}`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shlex
import sys
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
from benchmarks.proxy_rank import presearch
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
                      bench.layer_values(params, parameters))


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
                           weights=weights)
    presearch_seconds = None
    with tempfile.TemporaryDirectory() as folder:
        if job.tuner == "prunetpe-presearch":  # the proxy searched first, with the run's seed
            profile = Path(folder) / "profile.json"
            presearch_seconds = presearch(job.objective, bench.TARGET, profile,
                                          seed=job.seed)["seconds"]
        tuner = bench.make_tuner(job.tuner, job.seed, {"profile": str(profile)})
        run = drive(tuner, space, evaluate, budget=job.budget, concurrency=bench.CONCURRENCY)
    return {
        **asdict(job),
        "presearch_seconds": presearch_seconds,
        "tuner_seconds": run.tuner_seconds,
        "trial_seconds": run.trial_seconds,
        "trials": [asdict(record) for record in run.trials],
    }


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
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    jobs = [ZooJob(model, tuner, seed, args.budget, args.epochs)
            for model in models for tuner in tuners for seed in range(args.seeds)]
    runs = bench.run_jobs(jobs, workers=args.workers, run=run_zoo_job)
    wall = time.perf_counter() - started
    command = "python -m benchmarks.zoo_tuners" + "".join(
        f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))
    sections = [f"`{command}` — {wall / 60:.1f} min wall on {args.workers} worker(s), "
                f"{args.epochs} fine-tuning epochs per trial"]
    results: dict[str, Any] = {}
    for model in models:
        summary = {tuner: bench.summarise([r for r in runs if r["objective"] == model
                                           and r["tuner"] == tuner], args.budget)
                   for tuner in tuners}
        sections.append(bench.table(model, summary))
        sections.append(f"Worst seed at n={args.budget}: " + ", ".join(
            f"{bench.TUNERS[t].label} {100 * min(c[-1] for c in summary[t]['curves']):.2f}%"
            for t in tuners))
        branches = len(ss.active_sets(ss.parse_search_space(
            json.loads((SPACES / f"{model}.json").read_text()))))
        own = [r for r in runs if r["objective"] == model and r["tuner"] == "prunetpe"]
        alone = heuristics(own, branches) if own else {}
        if alone:
            sections.append(heuristic_markdown(model, alone))
        results[model] = {"summary": summary, "heuristics": alone}
    markdown = "\n\n".join(sections) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo_tuners.json").write_text(json.dumps(
        {"format": 1, "command": command, "wall_seconds": wall, "target": bench.TARGET,
         "epochs": args.epochs, "models": results, "runs": runs}) + "\n")
    (args.out / "zoo_tuners.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
