"""PruneTPE's channel allocations against uniform ratios and NNI's L1 pruning, fine-tuned (#27.4).

For each zoo model (default the ResNet and the MobileNet) and each target fraction of FLOPs
removed (default 50% and 70%), PruneTPE searches the ``channel`` branch (Contract 10) with the
model's channel profile for ``--budget`` trials, 2 in flight, each trial removing the channels
for real and fine-tuning the smaller model as :func:`trials.prune_trial.run_trial` does. Its
first proposal is the uniform warm start (one common ratio that meets the target), so every run
also gives the uniform allocation's accuracy with that run's fine-tuning seed: their sd over the
seeds is the noise floor of one configuration. Beside the best validation accuracy so far, the
held-out test accuracy of each run's pick is reported (a best-of-60 on noisy validation scores
flatters any search; the test split does not). NNI 3.0's own channel pruning at the uniform ratios
(``L1NormPruner`` masks, then ``ModelSpeedup``) is attempted on each model, and its outcome
(the error, where the speedup fails) is the table's last row.

    python -m benchmarks.channel_tuners [--models resnet_digits,mobilenet_digits]
                                        [--targets 0.5,0.7] [--seeds 5] [--budget 60]

``--budget 1`` fine-tunes the uniform allocation alone (its accuracy and noise floor).

Finished runs are kept in ``--cache`` and reused. Writes ``results/bench/channel_tuners.json``
and ``.md`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np

from benchmarks import tuners as bench
from benchmarks.channel_latency import uniform_sparsities
from benchmarks.driver import Evaluation, drive
from benchmarks.zoo_tuners import pick_summary
from nni_prune_tuners import search_space as ss
from nni_prune_tuners.options import CHANNEL_MULTIPLE
from nni_prune_tuners.profile import parse_profile
from nni_prune_tuners.tuner import PruneTPETuner

_logger = logging.getLogger(__name__)

RESULTS = Path("results") / "bench"
MODELS = ("resnet_digits", "mobilenet_digits")
TARGETS = (0.5, 0.7)
#: Searched ratios per group: [0, (n - 1) / n] at most, as the profiler writes the space.
HIGH = 0.9


@dataclass(frozen=True)
class ChannelJob:
    """One PruneTPE run on one model's channel branch; plain data, it crosses processes
    (``objective``, ``tuner`` and ``seed`` are what :func:`benchmarks.tuners.run_jobs` prints)."""

    objective: str
    target: float
    seed: int
    budget: int
    epochs: int
    tuner: str = "prunetpe"
    channel_multiple: int = 1

    def cache_name(self) -> str:
        multiple = "" if self.channel_multiple == 1 else f"-m{self.channel_multiple}"
        return (f"{self.objective}-{self.target:g}-seed{self.seed}-n{self.budget}"
                f"-e{self.epochs}{multiple}.json")


def channel_setup(model: str, folder: Path) -> tuple[Path, dict[str, Any]]:
    """The model's channel profile (written once into ``folder``) and its channel-only space."""
    from nni_prune_tuners.trial.profile import profile_model, search_space
    from trials import models

    path = folder / f"{model}.channel.profile.json"
    if not path.exists():
        import torch

        torch.manual_seed(0)
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(profile_model(models.ZOO[model]().eval(), name=model,
                                                 channel=True)) + "\n")
    profile = parse_profile(json.loads(path.read_text()))
    space = search_space(list(profile.layers), methods=["channel"], low=0.0, high=HIGH,
                         groups=list(profile.channel_groups.values()))  # type: ignore[arg-type]
    return path, space


def channel_evaluation(params: Mapping[str, Any], *, model: str, seed: int, epochs: int,
                       parameters: Sequence[ss.Parameter]) -> Evaluation:
    """Validation accuracy after removing the channels and fine-tuning; the FLOPs removed,
    counted on the pruned module, stand where Level's sparsity stands."""
    from trials.prune_trial import run_trial

    result = run_trial(params, epochs=epochs, seed=seed, model=f"trials.models:{model}")
    assert result.flops_removed is not None  # a channel trial always counts them
    return Evaluation(result.accuracy, result.flops_removed, result.method,
                      bench.layer_values(params, parameters), result.test_accuracy)


def run_channel_job(job: ChannelJob, folder: Path) -> dict[str, Any]:
    bench._quiet()
    random.seed(job.seed)
    np.random.seed(job.seed)
    profile, space = channel_setup(job.objective, folder)
    parameters = ss.parse_search_space(space)
    evaluate = partial(channel_evaluation, model=job.objective, seed=job.seed, epochs=job.epochs,
                       parameters=parameters)
    tuner = PruneTPETuner(optimize_mode="maximize", seed=job.seed, target_sparsity=job.target,
                          profile=str(profile), channel_multiple=job.channel_multiple)
    run = drive(tuner, space, evaluate, budget=job.budget, concurrency=bench.CONCURRENCY)
    return {**asdict(job), "tuner_seconds": run.tuner_seconds,
            "trial_seconds": run.trial_seconds,
            "trials": [asdict(record) for record in run.trials]}


def run_cached(job: ChannelJob, folder: Path) -> dict[str, Any]:
    """:func:`run_channel_job`, or the run kept in ``folder / "runs"`` by an earlier call."""
    return bench.kept(folder / "runs" / job.cache_name(), partial(run_channel_job, job, folder))


def nni_l1_attempt(model: str, target: float, folder: Path) -> dict[str, Any]:
    """NNI 3.0's channel pruning of ``model`` at the uniform ratios: ``L1NormPruner`` masks from
    :func:`nni_prune_tuners.export.channel_config_list`, then ``ModelSpeedup``. Returns the
    FLOPs removed when the speedup runs, else the error's type and first line."""
    import torch
    from nni.compression.pruning import L1NormPruner
    from nni.compression.speedup import ModelSpeedup

    from nni_prune_tuners.export import channel_config_list
    from nni_prune_tuners.trial import count_flops
    from trials import models

    path, _ = channel_setup(model, folder)
    profile = parse_profile(json.loads(path.read_text()))
    ratios = uniform_sparsities(profile, target)
    layers = {name: list(group.layers) for name, group in profile.channel_groups.items()}
    torch.manual_seed(0)
    net = models.ZOO[model]().eval()
    example = torch.randn(2, *cast("tuple[int, ...]", net.input_shape))
    dense = sum(count_flops(net, example[:1]).values())
    try:
        _, masks = L1NormPruner(net, channel_config_list(ratios, layers)).compress()
        ModelSpeedup(net, example, masks).speedup_model()
    except Exception as error:  # any failure of NNI's speedup is the result
        return {"ok": False, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    return {"ok": True, "flops_removed": 1.0 - sum(count_flops(net, example[:1]).values()) / dense}


def uniform_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The uniform warm start (PruneTPE's first proposal) over the runs' fine-tuning seeds."""
    firsts = [next(t for t in run["trials"] if t["parameter_id"] == 0) for run in runs]
    val = np.array([t["accuracy"] for t in firsts])
    test = np.array([t["test_accuracy"] for t in firsts])
    return {"val": {"mean": float(val.mean()), "std": float(val.std()), "worst": float(val.min())},
            "test": {"mean": float(test.mean()), "std": float(test.std()),
                     "worst": float(test.min())}}


def section(model: str, target: float, runs: Sequence[Mapping[str, Any]], budget: int,
            nni: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The markdown table of one model and target, and its numbers."""
    curves = np.array([bench.best_so_far([t["accuracy"] for t in run["trials"]]) for run in runs])
    marks = bench.checkpoints(budget)
    best = {str(n): {"mean": float(curves[:, n - 1].mean()), "std": float(curves[:, n - 1].std()),
                     "worst": float(curves[:, n - 1].min())} for n in marks}
    picks = pick_summary(runs, budget)
    uniform = uniform_summary(runs)
    floor = uniform["val"]["std"]
    margin = best[str(budget)]["mean"] - uniform["val"]["mean"]
    flops = [t["sparsity"] for run in runs for t in run["trials"]]
    nni_cell = (f"speedup ran: {100 * nni['flops_removed']:.1f}% of FLOPs removed (not fine-tuned "
                "here)" if nni["ok"] else f"fails: `{nni['error']}`")
    lines = [
        f"**{model}, {100 * target:.0f}% of FLOPs removed** — accuracy (%) after n trials, mean "
        f"± sd (worst seed) over {len(runs)} seeds; FLOPs removed, counted on the pruned "
        f"modules: {100 * min(flops):.2f}–{100 * max(flops):.2f}%",
        "",
        "| contender | " + " | ".join(f"n={n}" for n in marks) + " |",
        "|---|" + "---:|" * len(marks),
        "| PruneTPE, best validation | " + " | ".join(bench._cell(best[str(n)]) for n in marks)
        + " |",
        "| PruneTPE, test accuracy of the pick | "
        + " | ".join(bench._cell(picks[str(n)]) for n in marks) + " |",
        "| uniform ratios, validation | " + " | ".join([bench._cell(uniform["val"])] * len(marks))
        + " |",
        "| uniform ratios, test | " + " | ".join([bench._cell(uniform["test"])] * len(marks))
        + " |",
        f"| NNI 3.0 L1NormPruner + ModelSpeedup, uniform ratios | {nni_cell} |"
        + " |" * (len(marks) - 1),
        "",
        f"Noise floor (sd of the uniform allocation over the fine-tuning seeds): "
        f"{100 * floor:.2f} points; PruneTPE best@{budget} − uniform: {100 * margin:.2f} points "
        f"({margin / floor:.1f} noise floors)." if floor > 0 else "",
    ]
    numbers = {"best": best, "picks": picks, "uniform": uniform, "noise_floor": floor,
               "margin": margin, "nni_l1": dict(nni),
               "flops_removed": {"min": min(flops), "max": max(flops)}}
    return "\n".join(lines), numbers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.channel_tuners",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per trial")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--channel-multiple", type=int, default=CHANNEL_MULTIPLE,
                        help="PruneTPE's channel_multiple: kept channels in multiples of it "
                             "(default PruneTPE's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from trials import models as zoo

    names = bench.parse_names(args.models, list(zoo.ZOO), "--models", parser)
    try:
        targets = [float(t) for t in args.targets.split(",") if t]
    except ValueError:
        parser.error(f"--targets: not a comma list of numbers: {args.targets!r}")
    if not targets or any(not 0.0 < t < 1.0 for t in targets):
        parser.error(f"--targets must be fractions in (0, 1), got {args.targets!r}")
    if args.seeds < 1 or args.budget < 1 or args.epochs < 1:
        parser.error("--seeds, --budget and --epochs must be >= 1 (--budget 1: the uniform "
                     "allocation alone)")
    logging.basicConfig(level=logging.WARNING)
    folder = args.out / "channel_tuners"
    started = time.perf_counter()
    jobs = [ChannelJob(model, target, seed, args.budget, args.epochs,
                       channel_multiple=args.channel_multiple)
            for model in names for target in targets for seed in range(args.seeds)]
    runs = bench.run_jobs(jobs, workers=args.workers, run=partial(run_cached, folder=folder))
    wall = time.perf_counter() - started
    command = bench.command_line("benchmarks.channel_tuners", argv)
    sections = [f"`{command}` — {wall / 60:.1f} min wall on {args.workers} worker(s), "
                f"{args.epochs} fine-tuning epochs per trial, {bench.CONCURRENCY} in flight"]
    results: dict[str, Any] = {}
    for model in names:
        for target in targets:
            own = [r for r in runs if r["objective"] == model and r["target"] == target]
            text, numbers = section(model, target, own, args.budget,
                                    nni_l1_attempt(model, target, folder))
            sections.append(text)
            results[f"{model}-{target:g}"] = numbers
    markdown = "\n\n".join(sections) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "channel_tuners.json").write_text(json.dumps(
        {"format": 1, "command": command, "wall_seconds": wall, "epochs": args.epochs,
         "results": results, "runs": runs}) + "\n")
    (args.out / "channel_tuners.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
