"""Does the one-shot proxy rank allocations as fine-tuning does? (issue #26, point 3)

For a zoo model and target, the allocations are the heuristic warm starts (Level branch), random
feasible allocations, and the finalists of ``presearch`` (run here, in-process, with its defaults).
Each gets its proxy score, as presearch scores it (Level masks on the dense weights, BatchNorm
statistics re-estimated on training batches, validation accuracy), and its validation accuracy
after fine-tuning, as :mod:`benchmarks.zoo_tuners` fine-tunes (``run_trial``, Level, ``--epochs``,
seed 0). The table gives Kendall's tau between the two, and beside it the fine-tuning noise: a
subset of the allocations is fine-tuned again with seed 1, which gives the noise floor (the sd
of one fine-tuned accuracy, from the seed-to-seed differences) and tau between the two seeds (the
most any proxy could reach). Presearch's wall time is given in units of one fine-tuning trial.

Run: ``python -m benchmarks.proxy_rank`` (all four zoo models at 0.9 and 0.95, about an hour
on 2 cores; ``--models mlp_digits`` takes minutes). Results are kept per allocation in
``results/bench/proxy_rank/<model>-<target>.json`` and reused by a rerun; the command writes
``proxy_rank.md`` and one scatter plot per model there.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

_logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "search_spaces"
OUT = REPO / "results" / "bench" / "proxy_rank"
MODELS = ("mlp_digits", "resnet_digits", "mobilenet_digits", "vit_digits")
TARGETS = (0.9, 0.95)
#: Random feasible allocations per model and target, and how many allocations get seed 1 too.
RANDOM = 35
REPEATED = 16
#: Training batches of the BatchNorm re-estimation (presearch's --calibrate).
CALIBRATION_BATCHES = 8
CALIBRATION_BATCH_SIZE = 128


def calibration_batches(count: int = CALIBRATION_BATCHES) -> Iterator[Any]:
    """``count`` training batches of the hard digits, the zoo's data (presearch's
    ``--calibrate``, which calls it without arguments)."""
    from trials.data import load_split

    split = load_split("digits_hard")
    for start in range(0, count * CALIBRATION_BATCH_SIZE, CALIBRATION_BATCH_SIZE):
        yield split.x_train[start : start + CALIBRATION_BATCH_SIZE]


def _spec(model: str) -> str:
    return f"trials.models:{model}"


def _level_bounds(model: str) -> dict[str, tuple[float, float]]:
    from nni_prune_tuners.trial.presearch import level_space

    flat, _ = level_space(json.loads((SPACES / f"{model}.json").read_text()))
    return {key.removesuffix("_sparsity"): tuple(entry["_value"]) for key, entry in flat.items()}


def heuristic_allocations(model: str, target: float) -> list[tuple[str, dict[str, float]]]:
    """PruneTPE's warm starts in the Level branch: ``[(heuristic, {layer: sparsity})]``."""
    from nni_prune_tuners.dispatcher import quiet_probe
    from nni_prune_tuners.tuner import PruneTPETuner

    with quiet_probe():
        tuner = PruneTPETuner(target_sparsity=target, profile=str(SPACES / f"{model}.profile.json"),
                              seed=0, proxy=False)
        tuner.update_search_space(json.loads((SPACES / f"{model}.json").read_text()))
    return [(w.heuristic, dict(w.sparsities)) for w in tuner.warm_starts
            if w.branch == "prune_method=level"]


def random_allocations(model: str, target: float, count: int, seed: int) -> list[dict[str, float]]:
    """Feasible allocations: per-layer log-densities drawn uniformly, rescaled to the target."""
    from nni_prune_tuners import sparsity
    from nni_prune_tuners.profile import load_profile

    profile = load_profile(SPACES / f"{model}.profile.json")
    bounds = _level_bounds(model)
    layers = list(bounds)
    lo = np.array([bounds[name][0] for name in layers])
    hi = np.array([bounds[name][1] for name in layers])
    weights = np.array([profile.layers[name].params for name in layers], dtype=float)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.uniform(-np.log1p(-lo), -np.log1p(-hi))
        s = sparsity.rescale_to_target(-np.expm1(-x), lo, hi, weights, target)
        out.append(dict(zip(layers, (float(v) for v in s), strict=True)))
    return out


#: Presearch's ``--eval``: the whole validation split, and the cheaper first half of it.
FULL_VAL_EVAL = "trials.profile_model:val_accuracy"
HALF_VAL_EVAL = "trials.profile_model:half_val_accuracy"


def presearch(model: str, target: float, out: Path, *, seed: int = 0,
              evaluate: str = FULL_VAL_EVAL) -> dict[str, Any]:
    """``nni-prune-tuners presearch`` with its defaults on the zoo model, scoring with
    ``evaluate`` (an ``--eval`` spec); the ``proxy`` field.

    It runs on one torch thread (``OMP_NUM_THREADS=1``), as the fine-tuning trials it is
    measured against do: with torch's default of one thread per core, two jobs side by side
    oversubscribe the cores and the presearch's time says more about the load than about it.
    """
    from trials.prune_trial import build_model, data_variant, dense_cache_path, dense_state_dict

    variant = data_variant(build_model(_spec(model)))
    dense_state_dict(model=_spec(model))
    command = [
        sys.executable, "-m", "nni_prune_tuners", "presearch", "--model", _spec(model),
        "--state-dict", str(dense_cache_path(model=_spec(model), data=variant)),
        "--profile", str(SPACES / f"{model}.profile.json"),
        "--search-space", str(SPACES / f"{model}.json"), "--target", str(target),
        "--eval", evaluate,
        "--calibrate", "benchmarks.proxy_rank:calibration_batches", "--seed", str(seed),
        "--out", str(out),
    ]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return dict(json.loads(out.read_text())["proxy"])


def proxy_score(model: str, sparsities: Mapping[str, float], *,
                batches: int = CALIBRATION_BATCHES, val_samples: int | None = None) -> float:
    """The one-shot proxy of presearch: Level masks, BatchNorm re-estimated on ``batches``
    training batches, accuracy on the validation split (its first ``val_samples``: all)."""
    import torch

    from nni_prune_tuners.trial.batchnorm import recalibrate_batchnorm
    from nni_prune_tuners.trial.layers import layer_weight, prunable_layers
    from nni_prune_tuners.trial.masking import level_mask
    from trials.profile_model import val_accuracy
    from trials.prune_trial import build_model, dense_state_dict

    torch.set_num_threads(1)
    net = build_model(_spec(model))
    net.load_state_dict(copy.deepcopy(dense_state_dict(model=_spec(model))))
    layers = prunable_layers(net)
    with torch.no_grad():
        for name, value in sparsities.items():
            weight = layer_weight(layers[name])
            weight.mul_(level_mask(weight, value))
    recalibrate_batchnorm(net, calibration_batches(batches))
    return float(val_accuracy(net, samples=val_samples))


def fine_tuned(model: str, sparsities: Mapping[str, float], seed: int, epochs: int
               ) -> dict[str, float]:
    """Validation and test accuracy after pruning with Level and fine-tuning; its wall time."""
    from trials.prune_trial import run_trial

    started = time.perf_counter()
    params = {"prune_method": {"_name": "level",
                               **{f"{name}_sparsity": value for name, value in sparsities.items()}}}
    result = run_trial(params, epochs=epochs, seed=seed, model=_spec(model))
    return {"accuracy": result.accuracy, "test_accuracy": result.test_accuracy,
            "seconds": time.perf_counter() - started}


def _evaluate(task: tuple[str, dict[str, float], int, int]) -> dict[str, Any]:
    model, sparsities, seed, epochs = task
    for name in ("trials", "nni_prune_tuners"):  # a line per epoch of every trial otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    record: dict[str, Any] = {"seed": seed, **fine_tuned(model, sparsities, seed, epochs)}
    if seed == 0:
        record["proxy"] = proxy_score(model, sparsities)
    return record


def study(model: str, target: float, *, epochs: int, workers: int, out: Path = OUT,
          random: int = RANDOM, repeated: int = REPEATED) -> dict[str, Any]:
    """Every allocation of one model and target, scored and fine-tuned (reusing earlier runs)."""
    path = out / f"{model}-{target}.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if data.get("epochs") not in (None, epochs):
        data = {}
    if "presearch" not in data:
        started = time.perf_counter()
        proxy = presearch(model, target, out / f"{model}-{target}.profile.json")
        data["presearch"] = {"seconds": proxy["seconds"], "wall": time.perf_counter() - started,
                             "evaluations": len(proxy["evaluations"]),
                             "finalists": proxy["finalists"]}
    allocations = data.setdefault("allocations", [])
    if not allocations:
        allocations += [{"kind": name, "sparsities": s}
                        for name, s in heuristic_allocations(model, target)]
        allocations += [{"kind": f"presearch finalist {i}", "sparsities": s}
                        for i, s in enumerate(data["presearch"]["finalists"], start=1)]
        allocations += [{"kind": "random", "sparsities": s}
                        for s in random_allocations(model, target, random, seed=int(target * 100))]
    data.update(model=model, target=target, epochs=epochs)
    tasks = [(i, seed) for i, entry in enumerate(allocations)
             for seed in ((0, 1) if i < repeated else (0,))
             if str(seed) not in entry.setdefault("runs", {})]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_evaluate, (model, allocations[i]["sparsities"], seed, epochs)):
                   (i, seed) for i, seed in tasks}
        for done, future in enumerate(as_completed(futures), start=1):
            i, seed = futures[future]
            allocations[i]["runs"][str(seed)] = future.result()
            _logger.info("%s at %s: %d/%d fine-tuned", model, target, done, len(tasks))
            path.write_text(json.dumps(data, indent=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return data


def summarise(data: Mapping[str, Any]) -> dict[str, Any]:
    """Kendall's tau of proxy against fine-tuned accuracy, with the fine-tuning noise beside it."""
    from scipy.stats import kendalltau

    runs = [entry["runs"] for entry in data["allocations"]]
    proxy = np.array([r["0"]["proxy"] for r in runs])
    tuned = np.array([r["0"]["accuracy"] for r in runs])
    twice = [(r["0"]["accuracy"], r["1"]["accuracy"]) for r in runs if "1" in r]
    first, second = (np.array(column) for column in zip(*twice, strict=True))
    seconds = float(np.median([r["0"]["seconds"] for r in runs]))
    # random allocations spread widely; whether the proxy also orders the good ones is what
    # a search that has found the good region needs, and their noise is the floor that matters
    # (a broken network's accuracy swings by tens of points from seed to seed)
    median = float(np.median(tuned))
    top = tuned >= median
    good = np.minimum(first, second) >= median
    return {
        "model": data["model"], "target": data["target"], "allocations": len(runs),
        "tau": float(kendalltau(proxy, tuned).statistic),
        "tau_top_half": float(kendalltau(proxy[top], tuned[top]).statistic),
        "tau_between_seeds": float(kendalltau(first, second).statistic),
        "repeated": len(twice),
        "noise_floor": float(np.std(first[good] - second[good], ddof=1) / math.sqrt(2)),
        "noise_pairs": int(good.sum()),
        "tuned_spread": float(np.std(tuned, ddof=1)),
        "best_proxy_pick": float(tuned[int(np.argmax(proxy))]),
        "best_tuned": float(tuned.max()),
        "trial_seconds": seconds,
        "presearch_in_trials": float(data["presearch"]["seconds"]) / seconds,
    }


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| model | target | allocations | tau (proxy, fine-tuned) | tau, top half "
             "| tau (seed 0, seed 1) | noise floor, top half | sd of fine-tuned "
             "| presearch / trial |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['target']} | {row['allocations']} | {row['tau']:.2f} | "
            f"{row['tau_top_half']:.2f} | {row['tau_between_seeds']:.2f} (n={row['repeated']}) | "
            f"{100 * row['noise_floor']:.2f} (n={row['noise_pairs']}) | "
            f"{100 * row['tuned_spread']:.2f} | "
            f"{row['presearch_in_trials']:.2f} |")
    return "\n".join(lines)


def scatter(model: str, studies: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(studies), figsize=(4.5 * len(studies), 4), squeeze=False)
    for axis, data in zip(axes[0], studies, strict=True):
        for kind, colour in (("random", "tab:grey"), ("presearch", "tab:red"), ("", "tab:blue")):
            chosen = [e for e in data["allocations"]
                      if (e["kind"].startswith(kind) if kind else
                          not e["kind"].startswith(("random", "presearch")))]
            axis.scatter([100 * e["runs"]["0"]["proxy"] for e in chosen],
                         [100 * e["runs"]["0"]["accuracy"] for e in chosen], s=18, c=colour,
                         label=kind or "heuristics")
        row = summarise(data)
        axis.set_title(f"{model}, target {data['target']}: tau {row['tau']:.2f}")
        axis.set_xlabel("one-shot proxy (val acc %, BN re-estimated)")
        axis.set_ylabel("fine-tuned val acc %")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy_rank", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)))
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (zoo_tuners')")
    parser.add_argument("--workers", type=int, default=2, help="fine-tuning trials at a time")
    parser.add_argument("--random", type=int, default=RANDOM, help="random allocations")
    parser.add_argument("--repeated", type=int, default=REPEATED,
                        help="allocations fine-tuned with a second seed")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; the zoo has {list(MODELS)}")
    targets = [float(t) for t in args.targets.split(",") if t]
    rows = []
    for model in models:
        studies = [study(model, target, epochs=args.epochs, workers=args.workers, out=args.out,
                         random=args.random, repeated=args.repeated) for target in targets]
        rows += [summarise(data) for data in studies]
        scatter(model, studies, args.out / f"{model}.png")
    markdown = table(rows)
    (args.out / "proxy_rank.md").write_text(markdown + "\n")
    (args.out / "proxy_rank.json").write_text(json.dumps(rows, indent=1))
    sys.stdout.write(markdown + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
