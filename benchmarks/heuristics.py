"""The heuristic allocations on the zoo, one-shot and fine-tuned (issue 12, point 5).

For each zoo model with a profile in ``search_spaces/`` and each global target, the allocations
PruneTPE proposes as warm starts (uniform, global magnitude, LAMP, ERK and the one-shot
sensitivity optimum, rescaled to the target within [0.05, 0.98]) are taken from a PruneTPE tuner
itself, so the figures are those of the warm starts users get. Each is scored right after Level
pruning (one-shot) and after Level pruning and ``--epochs`` of fine-tuning, over ``--seeds``
fine-tuning seeds (mean ± sd: the sd is the noise floor of that configuration).

    python -m benchmarks.heuristics [--models mlp_digits,...] [--targets 0.9,0.95]

Writes ``results/bench/heuristics.{json,md}`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.zoo import one_shot_accuracy
from nni_prune_tuners.options import HEURISTICS
from nni_prune_tuners.tuner import PruneTPETuner
from trials.prune_trial import run_trial

_logger = logging.getLogger(__name__)

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
DEFAULT_MODELS = ("mlp_digits", "resnet_digits", "mobilenet_digits", "vit_digits")
BOUNDS = (0.05, 0.98)


def warm_starts(model: str, target: float) -> dict[str, dict[str, Any]]:
    """``{heuristic: Contract 2 params}`` of PruneTPE's warm starts on the model's Level branch."""
    profile = SPACES / f"{model}.profile.json"
    layers = [layer["name"] for layer in json.loads(profile.read_text())["layers"]]
    space = {"prune_method": {"_type": "choice", "_value": [{"_name": "level", **{
        f"{name}_sparsity": {"_type": "uniform", "_value": list(BOUNDS)} for name in layers}}]}}
    tuner = PruneTPETuner(seed=0, target_sparsity=target, profile=str(profile),
                          warm_start=list(HEURISTICS))
    tuner.update_search_space(space)
    return {name: tuner.generate_parameters(i) for i, name in enumerate(HEURISTICS)}


def measure(model: str, target: float, *, seeds: int, epochs: int) -> dict[str, dict[str, Any]]:
    spec = f"trials.models:{model}"
    out: dict[str, dict[str, Any]] = {}
    for name, params in warm_starts(model, target).items():
        tuned = [run_trial(params, epochs=epochs, seed=seed, model=spec).accuracy
                 for seed in range(seeds)]
        out[name] = {"one_shot": one_shot_accuracy(spec, params, None), "fine_tuned": tuned}
        print(f"  {model} {target} {name}: one-shot {out[name]['one_shot']:.4f}, "
              f"fine-tuned {np.mean(tuned):.4f}", file=sys.stderr, flush=True)
    return out


def markdown(results: dict[str, dict[str, dict[str, dict[str, Any]]]], epochs: int) -> str:
    lines = [f"Validation accuracy (%) of each heuristic allocation, Level pruning: one-shot, and "
             f"after {epochs} fine-tuning epochs (mean ± sd over seeds)", "",
             "| model | target | " + " | ".join(HEURISTICS) + " |",
             "|---|---:|" + "---:|" * len(HEURISTICS)]
    for model, by_target in results.items():
        for target, values in by_target.items():
            cells = []
            for name in HEURISTICS:
                tuned = values[name]["fine_tuned"]
                cells.append(f"{100 * values[name]['one_shot']:.1f} / "
                             f"{100 * np.mean(tuned):.2f} ± {100 * np.std(tuned):.2f}")
            lines.append(f"| {model} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.heuristics",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--targets", default="0.9,0.95")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results") / "bench")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    missing = [m for m in models if not (SPACES / f"{m}.profile.json").exists()]
    if missing or not models:
        parser.error(f"--models: no profile in search_spaces/ for {missing}")
    targets = [float(t) for t in args.targets.split(",") if t]
    if args.seeds < 1 or args.epochs < 1 or not all(0 < t < 1 for t in targets):
        parser.error("--seeds and --epochs >= 1, targets in (0, 1)")
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    results = {model: {str(t): measure(model, t, seeds=args.seeds, epochs=args.epochs)
                       for t in targets} for model in models}
    command = "python -m benchmarks.heuristics" + "".join(
        f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))
    text = (f"`{command}` — {(time.perf_counter() - started) / 60:.1f} min wall\n\n"
            + markdown(results, args.epochs) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "heuristics.json").write_text(json.dumps(
        {"format": 1, "command": command, "epochs": args.epochs, "results": results}) + "\n")
    (args.out / "heuristics.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
