"""PruneTPE against NNI's TPE, Random and Anneal at one global sparsity target (issue 6).

Every tuner runs in-process through NNI's Tuner interface with two trials in flight
(:mod:`benchmarks.driver`), for several seeds, on two objectives: the real digits trial
(:func:`trials.prune_trial.run_trial`, validation accuracy) and the torch-free analytic objective
(:mod:`trials.analytic_trial`). The builtin tuners know nothing of the target, so they get the
seed's approach: the trial rescales their raw sample with the same function PruneTPE uses
(Contract 3), and every trial meets the target. NNI's TPE also runs *without* rescaling, to show
what ignoring the constraint costs: its trials miss the target, and its best accuracy over all
trials compares models that are not 90% sparse.

Run: ``python -m benchmarks.tuners`` (about half an hour on 2 cores; ``--objective analytic``
takes minutes). Writes ``results/bench/tuners.{json,md,png}`` and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from nni.algorithms.hpo.hyperopt_tuner import HyperoptTuner
from nni.algorithms.hpo.random_tuner import RandomTuner
from nni.algorithms.hpo.tpe_tuner import TpeTuner
from nni.tuner import Tuner

from benchmarks.driver import Evaluation, drive
from nni_prune_tuners import search_space as ss
from nni_prune_tuners.constraint import layer_sparsity_paths
from nni_prune_tuners.sparsity import rescale_to_target
from nni_prune_tuners.tuner import PruneTPETuner
from trials import analytic_trial

_logger = logging.getLogger(__name__)

TARGET = 0.9
#: A trial "meets the target" when its measured global sparsity is this close to it.
TOLERANCE = 1e-3
CONCURRENCY = 2
CHECKPOINTS = (10, 20, 50)
OBJECTIVES = ("digits", "analytic")
DEFAULT_BUDGETS = {"digits": 60, "analytic": 500}
DEFAULT_OUTPUT = Path("results") / "bench"
DIGITS_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "digits.json"
PRUNETPE = ("prunetpe", "prunetpe-raw", "prunetpe-presearch")
UNCONSTRAINED = "tpe-norescale"


@dataclass(frozen=True)
class TunerSpec:
    """A contender: how the table names it and whether the trial rescales its samples."""

    label: str
    rescale_in_trial: bool


TUNERS: dict[str, TunerSpec] = {
    "prunetpe": TunerSpec("PruneTPE", False),
    "prunetpe-raw": TunerSpec("PruneTPE (allocation: tpe, learn_from: raw)", False),
    # the zoo benchmark only: a presearched profile (benchmarks.zoo_tuners runs the presearch)
    "prunetpe-presearch": TunerSpec("PruneTPE + presearch", False),
    "tpe": TunerSpec("NNI TPE + in-trial rescaling", True),
    "random": TunerSpec("NNI Random + in-trial rescaling", True),
    "anneal": TunerSpec("NNI Anneal + in-trial rescaling", True),
    UNCONSTRAINED: TunerSpec("NNI TPE, no rescaling", False),
}


@dataclass(frozen=True)
class Job:
    """One tuner run; plain data so that it crosses process boundaries."""

    objective: str
    tuner: str
    seed: int
    budget: int
    profile: str | None


@dataclass(frozen=True)
class HeuristicJob:
    """One of PruneTPE's warm starts evaluated alone with one (fine-tuning) seed."""

    objective: str
    tuner: str  # "<heuristic> (<branch>)": run_jobs names the job by it
    seed: int
    params: str  # NNI parameters as JSON


# -- objectives --------------------------------------------------------------------------------


def objective_space(objective: str) -> dict[str, Any]:
    """The NNI search space every tuner searches for ``objective``."""
    if objective == "analytic":
        return analytic_trial.search_space()
    return json.loads(DIGITS_SPACE.read_text())


def layer_weights(objective: str, profile: str | None) -> dict[str, float]:
    """Parameter count per layer: the weights of the global sparsity (``weight_by: params``)."""
    if objective == "analytic":
        return {name: float(n) for name, n in analytic_trial.layer_params().items()}
    if profile is None:
        raise ValueError("the digits objective needs the model profile")
    layers = json.loads(Path(profile).read_text())["layers"]
    return {layer["name"]: float(layer["params"]) for layer in layers}


def write_digits_profile(path: Path) -> None:
    """The digits CNN's profile (Contract 4), from the cached dense weights, for PruneTPE."""
    from trials import profile_model

    if profile_model.main(["--model", "trials.models:digits_cnn", "--out", str(path)]) != 0:
        raise RuntimeError(f"could not write the digits profile to {path}")


def layer_values(
    params: Mapping[str, Any], parameters: Sequence[ss.Parameter]
) -> dict[str, float]:
    """``{layer: sparsity}`` of the layer sparsities present in NNI ``params``."""
    return {
        parameter.layer: float(_get(params, path))
        for parameter, path in layer_sparsity_paths(params, parameters)
    }


def rescaled(
    params: Mapping[str, Any],
    parameters: Sequence[ss.Parameter],
    weights: Mapping[str, float],
    target: float,
) -> dict[str, Any]:
    """A copy of ``params`` whose layer sparsities meet ``target``: the seed's in-trial fix."""
    out = copy.deepcopy(dict(params))
    found = layer_sparsity_paths(out, parameters)
    values = rescale_to_target(
        [_get(out, path) for _, path in found],
        [p.bounds[0] for p, _ in found],
        [p.bounds[1] for p, _ in found],
        [weights[p.layer] for p, _ in found],
        target,
    )
    for (_, path), value in zip(found, values, strict=True):
        node: Any = out
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = float(value)
    return out


def _get(params: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = params
    for key in path:
        node = node[key]
    return node


def analytic_evaluation(params: Mapping[str, Any]) -> Evaluation:
    method, layers = analytic_trial.parse_parameters(params)
    return Evaluation(
        analytic_trial.final_accuracy(method, layers),
        analytic_trial.global_sparsity(layers),
        method,
        layers,
    )


def digits_evaluation(
    params: Mapping[str, Any], *, seed: int, parameters: Sequence[ss.Parameter]
) -> Evaluation:
    """Validation accuracy and *measured* sparsity (Level rounds to whole weights per layer)."""
    from trials.prune_trial import run_trial

    result = run_trial(params, seed=seed)
    return Evaluation(result.accuracy, result.sparsity, result.method,
                      layer_values(params, parameters))


# -- tuners ------------------------------------------------------------------------------------


class _SeededAnneal(HyperoptTuner):
    """NNI's Anneal with a seeded hyperopt state (NNI seeds it from OS entropy otherwise)."""

    def __init__(self, seed: int) -> None:
        super().__init__("anneal", optimize_mode="maximize")
        self._seed = seed

    def update_search_space(self, search_space: Any) -> None:
        super().update_search_space(search_space)
        self.rval.rstate = np.random.RandomState(self._seed)


def make_tuner(name: str, seed: int, constraint: Mapping[str, Any], *,
               target: float = TARGET) -> Tuner:
    """A fresh tuner; ``constraint`` is PruneTPE's ``profile`` or ``layer_params`` classArg."""
    if name in PRUNETPE:
        extra = {"learn_from": "raw", "allocation": "tpe"} if name == "prunetpe-raw" else {}
        return PruneTPETuner(optimize_mode="maximize", seed=seed, target_sparsity=target,
                             **extra, **constraint)
    if name in ("tpe", UNCONSTRAINED):
        return TpeTuner(optimize_mode="maximize", seed=seed)
    if name == "random":
        return RandomTuner(seed=seed)
    if name == "anneal":
        return _SeededAnneal(seed)
    raise ValueError(f"unknown tuner {name!r}; expected one of {sorted(TUNERS)}")


def run_job(job: Job) -> dict[str, Any]:
    """One tuner run; the global RNGs are seeded too, for any tuner that draws from them."""
    _quiet()
    random.seed(job.seed)
    np.random.seed(job.seed)
    space = objective_space(job.objective)
    parameters = ss.parse_search_space(space)
    weights = layer_weights(job.objective, job.profile)
    evaluate = evaluation(job.objective, job.seed, parameters)
    if TUNERS[job.tuner].rescale_in_trial:
        evaluate = partial(_rescaled_trial, evaluate=evaluate, parameters=parameters,
                           weights=weights)
    tuner = make_tuner(job.tuner, job.seed, constraint_for(job.objective, job.profile))
    run = drive(tuner, space, evaluate, budget=job.budget, concurrency=CONCURRENCY)
    return {
        **asdict(job),
        "tuner_seconds": run.tuner_seconds,
        "trial_seconds": run.trial_seconds,
        "trials": [asdict(record) for record in run.trials],
    }


def evaluation(
    objective: str, seed: int, parameters: Sequence[ss.Parameter]
) -> Callable[[Mapping[str, Any]], Evaluation]:
    """The trial of ``objective``; ``seed`` seeds the digits trial's fine-tuning."""
    if objective == "analytic":
        return analytic_evaluation
    return partial(digits_evaluation, seed=seed, parameters=parameters)


def constraint_for(objective: str, profile: str | None) -> dict[str, Any]:
    """PruneTPE's ``profile`` or ``layer_params`` classArg for ``objective``."""
    if objective == "digits":
        return {"profile": profile}
    return {"layer_params": analytic_trial.layer_params()}


def heuristic_jobs(objective: str, profile: str | None, seeds: int) -> list[HeuristicJob]:
    """PruneTPE's warm starts (its first suggestions, one per heuristic and branch), each to be
    evaluated with every seed: the heuristics alone, and the noise floor of one configuration."""
    tuner = make_tuner("prunetpe", 0, constraint_for(objective, profile))
    tuner.update_search_space(objective_space(objective))
    planned = [(f"{w.heuristic} ({w.branch})", tuner.generate_parameters(index))
               for index, w in enumerate(tuner.warm_starts)]
    return [HeuristicJob(objective, label, seed, json.dumps(params))
            for label, params in planned for seed in range(seeds)]


def run_heuristic(job: HeuristicJob) -> dict[str, Any]:
    _quiet()
    parameters = ss.parse_search_space(objective_space(job.objective))
    result = evaluation(job.objective, job.seed, parameters)(json.loads(job.params))
    return {**asdict(job), "accuracy": result.accuracy}


def summarise_heuristics(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, sd and values over seeds of each warm start evaluated alone, best mean first."""
    by_label: dict[str, list[float]] = {}
    for run in runs:
        by_label.setdefault(run["tuner"], []).append(run["accuracy"])
    ranked = sorted(by_label.items(), key=lambda item: -float(np.mean(item[1])))
    return {label: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
            for label, v in ranked}


def _rescaled_trial(
    params: Mapping[str, Any],
    *,
    evaluate: Callable[[Mapping[str, Any]], Evaluation],
    parameters: Sequence[ss.Parameter],
    weights: Mapping[str, float],
    target: float = TARGET,
) -> Evaluation:
    """The seed's trial: rescale the tuner's raw sample to the target, then evaluate it."""
    return evaluate(rescaled(params, parameters, weights, target))


def parse_names(
    text: str, known: Sequence[str], option: str, parser: argparse.ArgumentParser
) -> list[str]:
    """The comma list ``text`` of an option; a parser error names any entry not in ``known``."""
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        parser.error(f"{option}: unknown {unknown}; choose from {','.join(known)}")
    return names


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("nni", "hyperopt", "nni_prune_tuners", "trials"):
        logging.getLogger(name).setLevel(logging.WARNING)


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that ran ``python -m module`` with ``argv`` (default: this process's), for
    the results' headers."""
    return f"python -m {module}" + "".join(
        f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))


def kept(path: Path, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The JSON result kept at ``path`` by an earlier invocation, else ``run()``, kept there
    (written whole, then moved into place, so an interrupted run leaves nothing half-written)."""
    if path.exists():
        return dict(json.loads(path.read_text()))
    result = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(result) + "\n")
    path.with_suffix(".tmp").replace(path)
    return result


def run_jobs(
    jobs: Sequence[Any], *, workers: int, run: Callable[[Any], dict[str, Any]] = run_job
) -> list[dict[str, Any]]:
    """``run`` on every job (with ``objective``, ``tuner`` and ``seed`` fields), in ``jobs``
    order; spread over ``workers`` processes when more than one."""
    if workers <= 1:
        return [run(job) for job in jobs]
    results: dict[int, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run, job): index for index, job in enumerate(jobs)}
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            job = jobs[futures[future]]
            print(f"  [{done}/{len(jobs)}] {job.objective} {job.tuner} seed {job.seed}",
                  file=sys.stderr, flush=True)
    return [results[index] for index in range(len(jobs))]


# -- summary -----------------------------------------------------------------------------------


def best_so_far(
    accuracies: Sequence[float], keep: Sequence[bool] | np.ndarray | None = None
) -> np.ndarray:
    """Running maximum over the trials ``keep`` selects (NaN before the first one)."""
    values = np.asarray(accuracies, dtype=float)
    if keep is not None:
        values = np.where(np.asarray(keep, dtype=bool), values, -np.inf)
    best = np.maximum.accumulate(values)
    return np.where(np.isfinite(best), best, np.nan)


def meets_target(sparsities: Sequence[float], target: float = TARGET,
                 tolerance: float = TOLERANCE) -> np.ndarray:
    return np.abs(np.asarray(sparsities, dtype=float) - target) <= tolerance


def trials_to_reach(curve: np.ndarray, level: float) -> int | None:
    """How many trials a best-so-far curve needs to reach ``level`` (None: never)."""
    reached = np.flatnonzero(np.nan_to_num(curve, nan=-np.inf) >= level)
    return int(reached[0]) + 1 if reached.size else None


def checkpoints(budget: int) -> list[int]:
    return [c for c in CHECKPOINTS if c < budget] + [budget]


def summarise(runs: Sequence[Mapping[str, Any]], budget: int, *,
              target: float = TARGET) -> dict[str, Any]:
    """Best-so-far statistics over the seeds of one tuner on one objective."""
    accuracies = [[t["accuracy"] for t in run["trials"]] for run in runs]
    sparsities = [[t["sparsity"] for t in run["trials"]] for run in runs]
    ok = [meets_target(s, target) for s in sparsities]
    curves = np.array([best_so_far(a) for a in accuracies])
    on_target = np.array([best_so_far(a, keep) for a, keep in zip(accuracies, ok, strict=True)])
    deviations = np.abs(np.concatenate(sparsities) - target)

    def at(matrix: np.ndarray, n: int) -> dict[str, float | None]:
        column = matrix[:, n - 1]
        if np.isnan(column).any():  # some seed has no qualifying trial yet
            return {"mean": None, "std": None, "worst": None}
        return {"mean": float(column.mean()), "std": float(column.std()),
                "worst": float(column.min())}

    return {
        "seeds": len(runs),
        "budget": budget,
        "best": {str(n): at(curves, n) for n in checkpoints(budget)},
        "best_on_target": {str(n): at(on_target, n) for n in checkpoints(budget)},
        "violation_rate": float(1.0 - np.concatenate(ok).mean()),
        "below_target_rate": float((np.concatenate(sparsities) < target - TOLERANCE).mean()),
        "max_deviation": float(deviations.max()),
        "tuner_seconds": float(np.mean([run["tuner_seconds"] for run in runs])),
        "trial_seconds": float(np.mean([run["trial_seconds"] for run in runs])),
        "curve_mean": curves.mean(axis=0).tolist(),
        "curve_std": curves.std(axis=0).tolist(),
        "curves": curves.tolist(),
        "curves_on_target": on_target.tolist(),
    }


def reach_table(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each PruneTPE variant and rescaled baseline: trials needed to reach its final best."""
    out: dict[str, dict[str, Any]] = {}
    baselines = [name for name in summaries if TUNERS[name].rescale_in_trial]
    for variant in (name for name in summaries if name in PRUNETPE):
        curves = np.array(summaries[variant]["curves"])
        out[variant] = {}
        for baseline in baselines:
            final = summaries[baseline]["curve_mean"][-1]
            needed = [trials_to_reach(curve, final) for curve in curves]
            reached = [n for n in needed if n is not None]
            out[variant][baseline] = {
                "level": final,
                "per_seed": needed,
                "mean": float(np.mean(reached)) if reached else None,
                "reached": len(reached),
            }
    return out


# -- report ------------------------------------------------------------------------------------


def _cell(stat: Mapping[str, float | None]) -> str:
    mean, std, worst = stat["mean"], stat["std"], stat.get("worst")
    if mean is None or std is None:
        return "—"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" + ("" if worst is None else f" ({100 * worst:.2f})")


def table(
    objective: str, summaries: Mapping[str, Mapping[str, Any]],
    heuristics: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    target: float = TARGET,
) -> str:
    """Best validation accuracy (%) after n trials, mean ± std (worst) over seeds, and target
    misses; the best heuristic alone, and the noise floor of one configuration, below."""
    marks = checkpoints(max(s["budget"] for s in summaries.values()))
    seeds = next(iter(summaries.values()))["seeds"]
    lines = [
        f"**{objective}** — best accuracy (%) after n trials, mean ± std (worst seed) over "
        f"{seeds} seeds; target global sparsity {target}, {CONCURRENCY} trials in flight",
        "",
        "| tuner | " + " | ".join(f"n={n}" for n in marks)
        + f" | trials off target (>{TOLERANCE:g}) | max abs(sparsity − {target}) | tuner s/run |",
        "|---|" + "---:|" * (len(marks) + 3),
    ]
    for name, s in summaries.items():
        label = TUNERS[name].label
        rows = [(label, s["best"])]
        if name == UNCONSTRAINED:
            rows = [(f"{label}: all trials ⚠ not at target", s["best"]),
                    (f"{label}: on-target trials only", s["best_on_target"])]
        for row_label, stats in rows:
            cells = [_cell(stats[str(n)]) if str(n) in stats else "—" for n in marks]
            lines.append(
                f"| {row_label} | " + " | ".join(cells)
                + f" | {100 * s['violation_rate']:.1f}% | {s['max_deviation']:.2e} "
                f"| {s['tuner_seconds']:.1f} |"
            )
    if heuristics:
        label, best = next(iter(heuristics.items()))
        cell = f"{100 * best['mean']:.2f} ± {100 * best['std']:.2f}"
        lines.append(f"| best heuristic alone: {label} | " + " | ".join([cell] * len(marks))
                     + " | | | |")
        lines += ["", "Heuristics alone (PruneTPE's warm starts), mean ± sd over "
                  f"{len(best['values'])} seeds of the trial: "
                  + "; ".join(f"{name} {100 * h['mean']:.2f} ± {100 * h['std']:.2f}"
                              for name, h in heuristics.items()),
                  "", f"Noise floor: the sd of one configuration ({label}) over the trial's "
                  f"seeds, {100 * best['std']:.2f} points."]
    return "\n".join(lines)


def reach_markdown(objective: str, reach: Mapping[str, Mapping[str, Any]], seeds: int) -> str:
    """Trials PruneTPE needs (mean over the seeds that get there) to match each baseline."""
    if not reach:
        return ""
    baselines = list(next(iter(reach.values())))
    if not baselines:
        return ""
    lines = [
        f"**{objective}** — trials PruneTPE needs to reach each baseline's final best "
        "(mean over seeds that reach it; seeds reaching it)",
        "",
        "| | " + " | ".join(
            f"{TUNERS[b].label} ({100 * next(iter(reach.values()))[b]['level']:.2f}%)"
            for b in baselines
        ) + " |",
        "|---|" + "---:|" * len(baselines),
    ]
    for variant, row in reach.items():
        cells = []
        for baseline in baselines:
            entry = row[baseline]
            if entry["mean"] is None:
                cells.append(f"not reached (0/{seeds})")
            else:
                cells.append(f"{entry['mean']:.1f} ({entry['reached']}/{seeds})")
        lines.append(f"| {TUNERS[variant].label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Issue 6's two goals, checked on what ran."""
    lines = []
    digits = results.get("digits", {}).get("summary", {})
    if "prunetpe" in digits and "tpe" in digits:
        ours = digits["prunetpe"]["best"].get("20", {}).get("mean")
        theirs = digits["tpe"]["best"][str(digits["tpe"]["budget"])]["mean"]
        if ours is not None:
            verdict = "MET" if ours >= theirs else "NOT MET"
            lines.append(
                f"- digits: PruneTPE after 20 trials {100 * ours:.2f}% vs NNI TPE (+ rescaling) "
                f"after {digits['tpe']['budget']} {100 * theirs:.2f}% (means over seeds): {verdict}"
            )
    for objective, result in results.items():
        for name in PRUNETPE:
            if name in result["summary"]:
                s = result["summary"][name]
                verdict = "MET" if s["violation_rate"] == 0.0 else "NOT MET"
                lines.append(
                    f"- {objective}: every {TUNERS[name].label} trial within {TOLERANCE:g} of "
                    f"{TARGET}: max deviation {s['max_deviation']:.2e}: {verdict}"
                )
    return lines


def plot(results: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Best-so-far accuracy per objective: mean line and ± std band per tuner.

    TPE without rescaling is left out of the curves (its trials are not at the target, so its
    "best" would flatten every other line) and named in a note instead.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.6), squeeze=False)
    for ax, (objective, result) in zip(axes[0], results.items(), strict=True):
        summaries = result["summary"]
        shown = [name for name in summaries if name != UNCONSTRAINED] or list(summaries)
        early, top = [], -math.inf
        for name in shown:
            s = summaries[name]
            mean = 100 * np.array(s["curve_mean"])
            std = 100 * np.array(s["curve_std"])
            x = np.arange(1, len(mean) + 1)
            colour = f"C{list(TUNERS).index(name)}"
            ax.plot(x, mean, color=colour, lw=1.6, label=TUNERS[name].label)
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
            early.append(float(mean[min(9, len(mean) - 1)]))
            top = max(top, float(mean[-1] + std[-1]))
        # from the 10th trial on, but never so wide that the final differences vanish
        floor = max(min(early), top - 5.0)
        ax.set_ylim(floor, top + 0.1 * (top - floor))
        ax.set_xscale("log")
        if UNCONSTRAINED in summaries and UNCONSTRAINED not in shown:
            s = summaries[UNCONSTRAINED]
            ax.text(0.02, 0.97, f"{TUNERS[UNCONSTRAINED].label}: best "
                    f"{100 * s['curve_mean'][-1]:.2f}%, but {100 * s['violation_rate']:.0f}% of "
                    "its trials miss the target", transform=ax.transAxes, va="top", fontsize=8)
        ax.set(title=f"{objective} (target sparsity {TARGET}, {CONCURRENCY} in flight)",
               xlabel="trials (log scale)", ylabel="best accuracy so far (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- CLI ---------------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tuners",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--objective", choices=(*OBJECTIVES, "both"), default="both")
    parser.add_argument("--seeds", type=int, default=5, help="runs per tuner (seeds 0..N-1)")
    parser.add_argument("--budget", type=int, help="trials per run (default: digits 60, "
                        "analytic 500)")
    parser.add_argument("--tuners", default=",".join(TUNERS),
                        help=f"comma list from {','.join(TUNERS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes running (tuner, seed) jobs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    tuners = [name for name in args.tuners.split(",") if name]
    unknown = [name for name in tuners if name not in TUNERS]
    if unknown or not tuners:
        parser.error(f"--tuners: unknown {unknown}; choose from {','.join(TUNERS)}")
    if args.seeds < 1 or (args.budget is not None and args.budget < 1):
        parser.error("--seeds and --budget must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    objectives = OBJECTIVES if args.objective == "both" else (args.objective,)
    args.out.mkdir(parents=True, exist_ok=True)
    profile = None
    if "digits" in objectives:
        profile = args.out / "digits_profile.json"
        write_digits_profile(profile)
    started = time.perf_counter()
    # the slow analytic PruneTPE/TPE runs first, so the pool's two workers finish together
    jobs = [
        Job(objective, tuner, seed, args.budget or DEFAULT_BUDGETS[objective],
            None if profile is None else str(profile))
        for objective in sorted(objectives)
        for tuner in tuners
        for seed in range(args.seeds)
    ]
    runs = run_jobs(jobs, workers=args.workers)
    heuristic_runs = run_jobs(
        [job for objective in sorted(objectives)
         for job in heuristic_jobs(objective, None if profile is None else str(profile),
                                   args.seeds)],
        workers=args.workers, run=run_heuristic)
    wall = time.perf_counter() - started

    results: dict[str, dict[str, Any]] = {}
    for objective in objectives:
        budget = args.budget or DEFAULT_BUDGETS[objective]
        summary = {
            tuner: summarise([r for r in runs if r["objective"] == objective
                              and r["tuner"] == tuner], budget)
            for tuner in tuners
        }
        results[objective] = {
            "budget": budget, "summary": summary, "reach": reach_table(summary),
            "heuristics": summarise_heuristics(
                [r for r in heuristic_runs if r["objective"] == objective]),
        }
    command = command_line("benchmarks.tuners", argv)
    sections = [f"`{command}` — {wall / 60:.1f} min wall on {args.workers} worker(s)"]
    for objective, result in results.items():
        sections.append(table(objective, result["summary"], result["heuristics"]))
        reach = reach_markdown(objective, result["reach"], args.seeds)
        if reach:
            sections.append(reach)
    goal_lines = goals(results)
    if goal_lines:
        sections.append("Goals:\n" + "\n".join(goal_lines))
    markdown = "\n\n".join(sections) + "\n"
    payload = {
        "format": 1,
        "command": command,
        "wall_seconds": wall,
        "target": TARGET,
        "tolerance": TOLERANCE,
        "concurrency": CONCURRENCY,
        "seeds": args.seeds,
        "tuners": {name: asdict(TUNERS[name]) for name in tuners},
        "objectives": results,
        "runs": runs,
    }
    (args.out / "tuners.json").write_text(json.dumps(payload) + "\n")
    (args.out / "tuners.md").write_text(markdown)
    plot(results, args.out / "tuners.png")
    print(markdown)
    print(f"wrote {args.out / 'tuners.json'}, {args.out / 'tuners.md'}, {args.out / 'tuners.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
