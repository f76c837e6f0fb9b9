"""The model zoo on the hard digits: size, dense training time and accuracy, one-shot and
fine-tuned accuracy at uniform 0.9 Level sparsity, and the fine-tuning noise floor (issue 12).

For each model of :data:`trials.models.ZOO` (the digits CNN on its 8x8 digits, the others on the
16x16 hard variant): prunable layers and weights; dense training time from scratch with one and
with two torch threads (the recipe of :data:`trials.prune_trial.RECIPES`); dense validation
accuracy; validation accuracy right after Level pruning every layer to 0.9 (one-shot); and the
same configuration fine-tuned with ``--seeds`` seeds, whose spread is the noise floor: a
difference between allocations smaller than it is not evidence. Uniform 0.9 wrecks networks
with small sensitive layers (MobileNet's depthwise convolutions keep one weight of nine), so
the LAMP allocation at global 0.9 (from the model's profile in ``search_spaces/``, layers within
[0.05, 0.98] as in the search spaces) is measured the same way.

    python -m benchmarks.zoo [--models resnet_digits,...] [--seeds 5] [--epochs 5]

Writes ``results/zoo/zoo.json`` and ``results/zoo/zoo.png`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from nni_prune_tuners.profile import load_profile
from nni_prune_tuners.sparsity import rescale_to_target, threshold_allocation
from trials.data import load_split
from trials.masking import layer_weight, level_mask, prunable_layers
from trials.models import ZOO
from trials.prune_trial import (
    accuracy,
    build_model,
    data_variant,
    dense_state_dict,
    run_trial,
    torch_threads,
    train_dense,
)

_logger = logging.getLogger(__name__)
RESULTS = Path("results") / "zoo"
SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SPARSITY = 0.9
BOUNDS = (0.05, 0.98)


def uniform_params(layers: Sequence[str], sparsity: float, method: str = "level") -> dict[str, Any]:
    """Contract 2 parameters pruning every layer in ``layers`` to ``sparsity``."""
    return {"prune_method": {"_name": method, **{f"{n}_sparsity": sparsity for n in layers}}}


def lamp_params(name: str, target: float) -> dict[str, Any]:
    """The LAMP allocation at global ``target`` from the model's profile, rescaled into ``BOUNDS``."""
    profile = load_profile(SPACES / f"{name}.profile.json")
    layers = list(profile.layers.values())
    counts = np.array([layer.params for layer in layers], dtype=float)
    raw = threshold_allocation([layer.lamp_quantiles or () for layer in layers], counts, target)
    n = len(layers)
    sparsities = rescale_to_target(np.maximum(raw, 1e-6), [BOUNDS[0]] * n, [BOUNDS[1]] * n,
                                   counts, target)
    return {"prune_method": {"_name": "level", **{
        f"{layer.name}_sparsity": float(s) for layer, s in zip(layers, sparsities, strict=True)}}}


def one_shot_accuracy(spec: str, params: dict[str, Any], cache_dir: Path | None) -> float:
    """Validation accuracy of the dense model Level-pruned as ``params`` say, no fine-tuning."""
    model = build_model(spec)
    variant = data_variant(model)
    model.load_state_dict(dense_state_dict(cache_dir, model=spec, data=variant))
    layers = prunable_layers(model)
    with torch.no_grad():
        for key, sparsity in params["prune_method"].items():
            if key.endswith("_sparsity"):
                weight = layer_weight(layers[key[: -len("_sparsity")]])
                weight.mul_(level_mask(weight, sparsity))
    data = load_split(variant)
    return accuracy(model, data.x_val, data.y_val)


def bench_model(name: str, *, seeds: int, epochs: int, threads: Sequence[int],
                cache_dir: Path | None) -> dict[str, Any]:
    """Every measurement of one zoo model (dense weights from the trial's cache)."""
    spec = f"trials.models:{name}"
    model = build_model(spec)
    layers = prunable_layers(model)
    variant = data_variant(model)
    data = load_split(variant)
    row: dict[str, Any] = {
        "model": name, "data": variant, "input_shape": list(getattr(model, "input_shape", ())),
        "train_images": len(data.y_train), "val_images": len(data.y_val),
        "prunable_layers": len(layers),
        "prunable_weights": sum(layer_weight(m).numel() for m in layers.values()),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    for n in threads:
        start = time.perf_counter()
        train_dense(model=spec, num_threads=n)
        row[f"dense_train_s_{n}_threads"] = time.perf_counter() - start
    model.load_state_dict(dense_state_dict(cache_dir, model=spec))
    row["dense_val_acc"] = accuracy(model, data.x_val, data.y_val)
    row["dense_test_acc"] = accuracy(model, data.x_test, data.y_test)
    configs = {"uniform": uniform_params(list(layers), SPARSITY)}
    if (SPACES / f"{name}.profile.json").exists():
        configs["lamp"] = lamp_params(name, SPARSITY)
    for label, params in configs.items():
        row[f"{label}_params"] = params
        row[f"{label}_one_shot_val_acc"] = one_shot_accuracy(spec, params, cache_dir)
        finetuned = []
        start = time.perf_counter()
        for seed in range(seeds):
            result = run_trial(params, epochs=epochs, seed=seed, model=spec, cache_dir=cache_dir)
            finetuned.append(result.accuracy)
        row["trial_s"] = (time.perf_counter() - start) / seeds
        row[f"{label}_finetuned_val_acc"] = finetuned
        row[f"{label}_finetuned_mean"] = statistics.fmean(finetuned)
        row[f"{label}_finetuned_sd"] = statistics.stdev(finetuned) if len(finetuned) > 1 else 0.0
    _logger.info("%s: %s", name, row)
    return row


def _table(rows: Sequence[dict[str, Any]], threads: Sequence[int], epochs: int) -> str:
    header = (["model", "data", "layers", "weights", "dense val acc"]
              + [f"dense train ({n} thr)" for n in threads]
              + ["uniform 0.9 one-shot", f"uniform 0.9 + {epochs} ep (mean ± sd)",
                 "LAMP 0.9 one-shot", f"LAMP 0.9 + {epochs} ep (mean ± sd)", "trial time"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["model"], r["data"], str(r["prunable_layers"]), f"{r['prunable_weights']:,}",
                 f"{r['dense_val_acc']:.4f}"]
        cells += [f"{r[f'dense_train_s_{n}_threads']:.1f} s" for n in threads]
        for label in ("uniform", "lamp"):
            if f"{label}_params" not in r:
                cells += ["–", "–"]
                continue
            cells += [f"{r[f'{label}_one_shot_val_acc']:.4f}",
                      f"{r[f'{label}_finetuned_mean']:.4f} ± {r[f'{label}_finetuned_sd']:.4f} "
                      f"(n={len(r[f'{label}_finetuned_val_acc'])})"]
        cells.append(f"{r['trial_s']:.1f} s")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    names = [r["model"] for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.27
    ax.bar([x - width for x in xs], [r["dense_val_acc"] for r in rows], width, label="dense")
    for offset, label in ((0.0, "uniform"), (width, "lamp")):
        ax.bar([x + offset for x in xs], [r.get(f"{label}_finetuned_mean", 0.0) for r in rows],
               width, yerr=[r.get(f"{label}_finetuned_sd", 0.0) for r in rows],
               label=f"{label} 0.9 Level, fine-tuned")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("model zoo (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(ZOO), help="comma list of zoo factory names")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", default="1,2",
                        help="torch threads for the dense timings ('' to skip them)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in ZOO]
    if unknown or not names:
        parser.error(f"--models names unknown models {unknown}; the zoo: {list(ZOO)}")
    threads = [int(t) for t in args.threads.split(",") if t]
    if args.seeds < 1 or args.epochs < 1 or min(threads, default=1) < 1:
        parser.error("need --seeds >= 1, --epochs >= 1 and --threads of ints >= 1")
    rows = []
    with torch_threads(1):
        for name in names:
            rows.append(bench_model(name, seeds=args.seeds, epochs=args.epochs, threads=threads,
                                    cache_dir=args.cache_dir))
    result = {"device": "cpu", "torch": torch.__version__, "sparsity": SPARSITY,
              "epochs": args.epochs, "models": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(rows, args.out / "zoo.png")
    print(_table(rows, threads, args.epochs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
