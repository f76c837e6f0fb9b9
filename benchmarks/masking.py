"""Masking speed, side by side in one run: Level masks vs ``torch.nn.utils.prune``, masked vs dense steps.

1. Level mask computation (:func:`trials.masking.level_mask`, ``kthvalue`` selection) vs
   ``torch.nn.utils.prune.L1Unstructured.compute_mask`` (``topk``) on one large tensor.
2. One fine-tuning step (forward, backward, SGD with momentum and weight decay) on the digits CNN
   with :class:`~trials.masking.WeightMasker` masks vs the same dense step; the reparametrised
   ``torch.nn.utils.prune`` step is timed alongside for context. Target: masked/dense < 1.15.
3. One in-process digits trial (Level, 3 epochs) once the dense cache exists.
4. Step 2 for every other model of the zoo (:data:`trials.models.ZOO`, batch 64 of its data),
   from its cached dense weights (trained first if missing: minutes on CPU).

    python -m benchmarks.masking [--numel 10000000] [--sparsity 0.9] [--repeats 7] [--device cpu]
                                 [--zoo resnet_digits,mobilenet_digits,vit_digits,mlp_digits]

Writes ``results/masking/masking.json`` and ``results/masking/masking.png`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from trials.data import load_split
from trials.masking import WeightMasker, layer_weight, level_mask, prunable_layers
from trials.models import ZOO
from trials.prune_trial import (
    DEFAULT_MODEL,
    build_model,
    data_variant,
    dense_state_dict,
    run_trial,
    select_device,
    torch_threads,
)

_logger = logging.getLogger(__name__)
RESULTS = Path("results") / "masking"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], *, repeats: int, device: torch.device) -> float:
    """Best wall time of ``fn`` over ``repeats`` calls after a warm-up call.

    The minimum (``timeit``'s convention) is the least disturbed by other processes on the machine.
    """
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def bench_mask(numel: int, sparsity: float, repeats: int, device: torch.device) -> dict[str, Any]:
    """Level mask vs ``L1Unstructured.compute_mask`` on one random tensor of ``numel`` weights."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(numel, generator=generator).to(device)
    ones = torch.ones_like(weight)
    reference = prune.L1Unstructured(amount=sparsity)
    ours = level_mask(weight, sparsity)
    theirs = reference.compute_mask(weight, default_mask=ones)
    if not torch.equal(ours, theirs):
        raise RuntimeError("level_mask and L1Unstructured disagree on a tie-free tensor")
    t_ours = best_seconds(lambda: level_mask(weight, sparsity), repeats=repeats, device=device)
    t_torch = best_seconds(lambda: reference.compute_mask(weight, default_mask=ones),
                             repeats=repeats, device=device)
    return {"numel": numel, "sparsity": sparsity, "level_mask_s": t_ours,
            "l1_unstructured_s": t_torch, "ratio": t_ours / t_torch}


def _step_fn(
    mode: str, sparsity: float, device: torch.device, spec: str = DEFAULT_MODEL
) -> Callable[[], None]:
    """A closure doing one SGD step on a fresh dense ``spec`` in ``mode`` (dense, masked, reparam)."""
    model = build_model(spec)
    variant = data_variant(model)
    model.load_state_dict(dense_state_dict(model=spec, data=variant))
    model.to(device)
    layers = prunable_layers(model)
    masks = {name: level_mask(layer_weight(m), sparsity) for name, m in layers.items()}
    if mode == "reparam":
        for name, module in layers.items():
            prune.custom_from_mask(module, "weight", masks[name])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    if mode == "masked":
        masker = WeightMasker(layers)
        masker.attach(optimizer)
        for name, mask in masks.items():
            masker.apply(name, mask)
    data = load_split(variant).to(device)
    x, y = data.x_train[:64], data.y_train[:64]
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_steps(
    sparsity: float, repeats: int, device: torch.device, spec: str = DEFAULT_MODEL
) -> dict[str, Any]:
    """Best per-step time (mean of 20 steps) of dense, masked and reparametrised steps of ``spec``.

    The modes are interleaved and rotated so that they share the machine's noise evenly.
    """
    steps = {mode: _step_fn(mode, sparsity, device, spec) for mode in ("dense", "masked", "reparam")}
    # all-ones masks isolate the cost of the hooks from any effect of zeros on the kernels
    steps["masked_ones"] = _step_fn("masked", 0.0, device, spec)
    times: dict[str, list[float]] = {mode: [] for mode in steps}
    inner = 20
    modes = list(steps)
    for r in range(3 * repeats):
        shift = r % len(modes)
        for mode in modes[shift:] + modes[:shift]:  # rotate so no mode always runs first
            step = steps[mode]
            step()
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                step()
            _sync(device)
            times[mode].append((time.perf_counter() - start) / inner)
    best = {mode: min(t) for mode, t in times.items()}
    return {"sparsity": sparsity, **{f"{m}_step_s": v for m, v in best.items()},
            "masked_over_dense": best["masked"] / best["dense"],
            "masked_ones_over_dense": best["masked_ones"] / best["dense"],
            "reparam_over_dense": best["reparam"] / best["dense"]}


def bench_trial(repeats: int, device: torch.device) -> dict[str, Any]:
    """In-process Level trial of 3 epochs (dense weights already cached)."""
    params = {"prune_method": {"_name": "level", "conv0_sparsity": 0.62, "conv1_sparsity": 0.93}}
    seconds = best_seconds(lambda: run_trial(params, epochs=3, device=str(device)),
                             repeats=repeats, device=device)
    return {"method": "level", "epochs": 3, "seconds": seconds}


def _plot(result: dict[str, Any], path: Path) -> None:
    zoo = result.get("zoo_steps", {})
    fig, axes = plt.subplots(1, 3 if zoo else 2, figsize=(13.5 if zoo else 9, 3.5))
    ax0, ax1 = axes[0], axes[1]
    mask = result["mask"]
    ax0.bar(["level_mask", "l1_unstructured"],
            [mask["level_mask_s"] * 1e3, mask["l1_unstructured_s"] * 1e3])
    ax0.set_ylabel("ms per mask")
    ax0.set_title(f"{mask['numel']:,} weights, sparsity {mask['sparsity']}")
    steps = result["steps"]
    ax1.bar(["dense", "masked", "prune reparam"],
            [steps["dense_step_s"] * 1e3, steps["masked_step_s"] * 1e3,
             steps["reparam_step_s"] * 1e3])
    ax1.set_ylabel("ms per SGD step")
    ax1.set_title("digits CNN, batch 64")
    if zoo:
        names = ["digits_cnn", *zoo]
        ratios = [steps["masked_over_dense"]] + [z["masked_over_dense"] for z in zoo.values()]
        axes[2].bar(names, ratios)
        axes[2].axhline(1.15, color="red", linestyle="--", label="1.15x target")
        axes[2].set_ylabel("masked / dense step time")
        axes[2].set_title("zoo, batch 64")
        axes[2].tick_params(axis="x", labelrotation=30, labelsize=7)
        axes[2].legend(fontsize=8)
    fig.suptitle(f"masking benchmark ({result['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(result: dict[str, Any]) -> str:
    mask, steps, trial = result["mask"], result["steps"], result["trial"]
    rows = [
        "| measurement | ours | reference | ratio |",
        "|---|---|---|---|",
        f"| Level mask, {mask['numel']:,} weights (vs l1_unstructured) | "
        f"{mask['level_mask_s'] * 1e3:.1f} ms | {mask['l1_unstructured_s'] * 1e3:.1f} ms | "
        f"{mask['ratio']:.2f}x |",
        f"| masked SGD step, digits CNN (vs dense step) | {steps['masked_step_s'] * 1e3:.3f} ms | "
        f"{steps['dense_step_s'] * 1e3:.3f} ms | {steps['masked_over_dense']:.3f}x |",
        f"| masked SGD step, all-ones masks (vs dense) | {steps['masked_ones_step_s'] * 1e3:.3f} ms"
        f" | {steps['dense_step_s'] * 1e3:.3f} ms | {steps['masked_ones_over_dense']:.3f}x |",
        f"| torch prune reparam step (vs dense step) | {steps['reparam_step_s'] * 1e3:.3f} ms | "
        f"{steps['dense_step_s'] * 1e3:.3f} ms | {steps['reparam_over_dense']:.3f}x |",
        f"| digits trial, Level, 3 epochs, in-process | {trial['seconds']:.3f} s | | |",
    ]
    for name, zoo in result.get("zoo_steps", {}).items():
        rows.append(
            f"| masked SGD step, {name} (vs dense step) | {zoo['masked_step_s'] * 1e3:.3f} ms | "
            f"{zoo['dense_step_s'] * 1e3:.3f} ms | {zoo['masked_over_dense']:.3f}x |")
        rows.append(
            f"| torch prune reparam step, {name} (vs dense) | {zoo['reparam_step_s'] * 1e3:.3f} ms"
            f" | {zoo['dense_step_s'] * 1e3:.3f} ms | {zoo['reparam_over_dense']:.3f}x |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.masking", description=__doc__)
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--step-threads", type=int, default=1,
                        help="torch threads for the digits steps and trial (as the trial uses)")
    parser.add_argument("--zoo", default=",".join(n for n in ZOO if n != "digits_cnn"),
                        help="comma list of zoo models whose steps are also timed ('' for none)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    zoo = [n for n in args.zoo.split(",") if n]
    if set(zoo) - set(ZOO):
        parser.error(f"--zoo names unknown models {sorted(set(zoo) - set(ZOO))}; zoo: {list(ZOO)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.numel < 1 or args.repeats < 1 or not 0.0 <= args.sparsity < 1.0:
        parser.error("need --numel >= 1, --repeats >= 1 and 0 <= --sparsity < 1")
    device = select_device(args.device)
    dense_state_dict()
    result: dict[str, Any] = {"device": str(device), "torch": torch.__version__,
                              "threads": torch.get_num_threads()}
    result["mask"] = bench_mask(args.numel, args.sparsity, args.repeats, device)
    with torch_threads(args.step_threads):
        result["steps"] = bench_steps(args.sparsity, args.repeats, device)
        result["trial"] = bench_trial(args.repeats, device)
        result["zoo_steps"] = {name: bench_steps(args.sparsity, args.repeats, device,
                                                 f"trials.models:{name}") for name in zoo}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "masking.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, args.out / "masking.png")
    print(_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
