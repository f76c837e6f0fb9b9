"""Does a per-layer latency table predict a channel-pruned model's speed better than FLOPs? (#27.3)

The ``channel`` budget is the fraction of FLOPs removed. Issue #27 asks for ``weight_by: latency``
from a per-layer latency table (NetAdapt / AMC style) only where that beats FLOPs as a predictor
of measured speed. This measures it on the zoo ResNet and MobileNet (CPU, one torch thread):

- ``--allocations`` random channel allocations (``nni_prune_tuners.latency.random_allocations``,
  as ``profile --latency`` draws them, with another seed) are pruned for real and timed against
  the dense model, interleaved, twice (passes A and B, each the fastest of ``--repeats`` samples
  as ``profile --latency`` times: their agreement is the most any predictor can reach on this
  machine's noise);
- every prunable layer is timed alone (a Conv/Linear of its kept widths on its real input shape)
  on a grid of kept fractions of its input and output channels: the latency table.

Predictors of the latency ratio pruned/dense:

- ``flops``: ``sum_l flops_l keep_in keep_out / sum_l flops_l``, what the budget is today;
- ``layer time``: the same with each layer's dense time alone in place of its FLOPs, what
  ``weight_by: latency`` would plug into the same budget;
- ``table``: the table interpolated at each layer's kept widths, plus the dense model's time
  outside the prunable layers (BatchNorm, activations, additions) scaled by ``activations``;
- ``activations``: ``sum_l out_l keep_out / sum_l out_l`` over the layers' output elements, the
  memory traffic of the elementwise operators that follow them;
- ``fitted``: the profile's latency model (``profile --latency``,
  :func:`nni_prune_tuners.latency.fit_latency`: non-negative least squares on the ``flops`` and
  ``activations`` fractions and a constant), each allocation predicted by the fit to the others
  (leave one out).

For each, Kendall's tau against the measured ratio and the mean and worst absolute error.

Then the budget itself: ``profile --latency``'s measurement (``--profile-allocations``, seed 0) gives
the model a user's profile would carry, and for each of ``--targets`` ``--per-target`` random
allocations are rescaled to remove that fraction by the latency budget and, beside them, by the
FLOPs budget, pruned and timed: the latency each really removes against the target.

    python -m benchmarks.latency_predictors [--models resnet_digits,mobilenet_digits]
        [--allocations 30] [--batch 64] [--repeats 10] [--seed 1] [--targets 0.3,0.5]
        [--per-target 8] [--profile-allocations 20]

Writes ``results/bench/latency_predictors.{json,md}`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from benchmarks.channel_latency import _commit
from nni_prune_tuners.latency import (
    MIN_ALLOCATIONS,
    fastest_ratio,
    fit_latency,
    interleaved_medians,
    random_allocations,
)
from nni_prune_tuners.profile import ModelProfile

_logger = logging.getLogger(__name__)
RESULTS = Path("results") / "bench"
MODELS = ("resnet_digits", "mobilenet_digits")
#: Kept fractions of a layer's input and output channels the table is measured at.
GRID = (0.1, 0.25, 0.5, 0.75, 1.0)
PREDICTORS = ("flops", "layer time", "table", "activations", "fitted")


def interpolate(table: np.ndarray, keep_in: float, keep_out: float,
                grid: Sequence[float] = GRID) -> float:
    """Bilinear interpolation of ``table[i, j]`` (time at ``grid[i]`` input, ``grid[j]`` output
    kept) at ``(keep_in, keep_out)``, clamped to the grid's range."""
    g = np.asarray(grid, dtype=float)
    rows = np.array([np.interp(keep_out, g, table[i]) for i in range(len(g))])
    return float(np.interp(keep_in, g, rows))


def layer_keeps(profile: ModelProfile,
                sparsities: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """Per prunable layer, the kept fraction of its input and output channels, in whole
    channels as the pruned model has them (1 where no group sets that side)."""
    keep = {name: group.keep(sparsities.get(name, 0.0), rounded=True)
            for name, group in profile.channel_groups.items()}
    return {name: (keep.get(layer.in_group or "", 1.0), keep.get(layer.out_group or "", 1.0))
            for name, layer in profile.layers.items()}


def predictions(profile: ModelProfile, keeps: Mapping[str, tuple[float, float]],
                tables: Mapping[str, np.ndarray], outputs: Mapping[str, int],
                dense_seconds: float) -> dict[str, float]:
    """The latency ratio pruned/dense by each of ``PREDICTORS`` but ``fitted`` (see the module
    docstring): ``tables`` from :func:`layer_tables`, ``outputs`` each layer's output elements."""
    flops = {name: float(cast(float, layer.flops)) for name, layer in profile.layers.items()}
    alone = {name: float(table[-1, -1]) for name, table in tables.items()}

    def weighted(weight: Mapping[str, float]) -> float:
        kept = sum(weight[n] * keeps[n][0] * keeps[n][1] for n in weight)
        return kept / sum(weight.values())

    activations = (sum(outputs[n] * keeps[n][1] for n in outputs)
                   / sum(outputs.values()))
    outside = max(dense_seconds - sum(alone.values()), 0.0)
    table = outside * activations + sum(interpolate(tables[n], *keeps[n]) for n in tables)
    return {"flops": weighted(flops), "layer time": weighted(alone),
            "table": table / (outside + sum(alone.values())), "activations": activations}


def leave_one_out(flops_kept: np.ndarray, outputs_kept: np.ndarray,
                  measured: np.ndarray) -> np.ndarray:
    """Each allocation's ratio by the profile's latency model
    (:func:`nni_prune_tuners.latency.fit_latency`) fitted to the other allocations."""
    out = np.empty(len(measured))
    for i in range(len(measured)):
        rest = np.arange(len(measured)) != i
        fixed, per_flops, per_outputs, _ = fit_latency(flops_kept[rest], outputs_kept[rest],
                                                       measured[rest])
        out[i] = fixed + per_flops * flops_kept[i] + per_outputs * outputs_kept[i]
    return out


def scores(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Kendall's tau, mean and worst absolute error of ``predicted`` against ``measured``."""
    from scipy.stats import kendalltau

    errors = np.abs(np.asarray(predicted) - np.asarray(measured))
    return {"tau": float(kendalltau(predicted, measured).statistic),
            "mean_error": float(errors.mean()), "worst_error": float(errors.max())}


def _timer(run: Callable[[], object], sample_seconds: float) -> tuple[Callable[[], object], int]:
    """``run`` repeated as often as takes about ``sample_seconds`` (calibrated once), and that
    count of calls."""
    run()
    start = time.perf_counter()
    run()
    count = max(1, round(sample_seconds / max(time.perf_counter() - start, 1e-7)))

    def repeated() -> None:
        for _ in range(count):
            run()
    return repeated, count


def layer_tables(model: Any, example: Any, *, repeats: int, sample_seconds: float
                 ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Per prunable Conv2d/Linear layer of ``model``, seconds of one forward of the layer alone
    at each pair of kept fractions of ``GRID`` (depthwise: input tied to output), and the
    number of elements of its output on ``example``."""
    import torch
    from torch import nn

    from nni_prune_tuners.trial.layers import prunable_layers

    layers = prunable_layers(model)
    inputs: dict[str, tuple[int, ...]] = {}
    outputs: dict[str, int] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            inputs.setdefault(name, tuple(inp[0].shape))
            outputs.setdefault(name, out.numel())
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in layers.items()]
    with torch.inference_mode():
        model(example)
    for handle in handles:
        handle.remove()
    tables = {}
    for name, module in layers.items():
        shape = inputs[name]
        table = np.zeros((len(GRID), len(GRID)))
        for i, j in np.ndindex(len(GRID), len(GRID)):
            layer, x = _shrunk(module, shape, GRID[i], GRID[j])
            if layer is None:  # depthwise: only the diagonal exists
                continue

            def run(layer: nn.Module = layer, x: torch.Tensor = x) -> None:
                with torch.inference_mode():
                    layer(x)
            repeated, count = _timer(run, sample_seconds)
            _, samples = interleaved_medians({"layer": repeated}, repeats=repeats)
            table[i, j] = min(sample["layer"] for sample in samples) / count
        if _depthwise(module):  # its input follows its output: fill each row from the diagonal
            table[:] = np.diag(table)[None, :]
        tables[name] = table
    return tables, outputs


def _depthwise(module: Any) -> bool:
    from torch import nn

    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def _shrunk(module: Any, shape: tuple[int, ...], keep_in: float, keep_out: float) -> Any:
    """A fresh copy of ``module`` with ``keep_in`` / ``keep_out`` of its channels, and an input
    of its real shape at that width; ``(None, None)`` off a depthwise layer's diagonal."""
    import torch
    from torch import nn

    def kept(n: int, keep: float) -> int:
        return max(1, round(n * keep))

    if isinstance(module, nn.Linear):
        linear = nn.Linear(kept(module.in_features, keep_in), kept(module.out_features, keep_out),
                           bias=module.bias is not None)
        return linear.eval(), torch.randn((*shape[:-1], linear.in_features))
    if _depthwise(module):
        if keep_in != keep_out:
            return None, None
        width = kept(module.out_channels, keep_out)
        conv = nn.Conv2d(width, width, module.kernel_size, module.stride, module.padding,
                         module.dilation, groups=width, bias=module.bias is not None)
    else:
        conv = nn.Conv2d(kept(module.in_channels, keep_in), kept(module.out_channels, keep_out),
                         module.kernel_size, module.stride, module.padding, module.dilation,
                         bias=module.bias is not None)
    return conv.eval(), torch.randn((shape[0], conv.in_channels, *shape[2:]))


def bench_model(name: str, *, allocations: int, batch: int, repeats: int, seed: int,
                sample_seconds: float, targets: Sequence[float] = (),
                per_target: int = 8, profile_allocations: int = 20) -> dict[str, Any]:
    """One zoo model: the measured ratios of its random allocations and each predictor's."""
    import copy

    import torch

    from nni_prune_tuners.profile import parse_profile
    from nni_prune_tuners.trial import prune_channels
    from nni_prune_tuners.trial.latency import forwards
    from nni_prune_tuners.trial.profile import profile_model
    from trials.models import ZOO

    torch.manual_seed(0)
    dense = ZOO[name]().eval()
    shape = tuple(int(d) for d in cast(Sequence[int], dense.input_shape))
    profile_data = profile_model(dense, name=name, channel=True)
    profile = parse_profile(profile_data)
    chosen = random_allocations(list(profile.channel_groups), allocations, seed=seed)
    variants = {"dense": dense}
    for index, sparsities in enumerate(chosen):
        variants[str(index)] = prune_channels(copy.deepcopy(dense), sparsities,
                                              torch.zeros((1, *shape))).eval()
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(batch))

    timed = {key: _timer(forwards(model, x, 1), sample_seconds) for key, model in variants.items()}
    calls = {key: repeated for key, (repeated, _) in timed.items()}
    per_call = {key: count for key, (_, count) in timed.items()}
    passes = []
    for _ in range(2):  # the fastest sample of each, as profile --latency times them
        _, samples = interleaved_medians(calls, repeats=repeats)
        passes.append({key: min(sample[key] for sample in samples) / per_call[key]
                       for key in calls})
    dense_seconds = statistics.mean(p["dense"] for p in passes)
    tables, outputs = layer_tables(dense, x, repeats=repeats, sample_seconds=sample_seconds / 10)
    rows: list[dict[str, Any]] = []
    for index, sparsities in enumerate(chosen):
        key = str(index)
        measured = [p[key] / p["dense"] for p in passes]
        rows.append({"sparsities": sparsities, "measured_a": measured[0],
                     "measured_b": measured[1],
                     **predictions(profile, layer_keeps(profile, sparsities), tables, outputs,
                                   dense_seconds)})
    measured = [statistics.mean((r["measured_a"], r["measured_b"])) for r in rows]
    fitted = leave_one_out(np.array([r["flops"] for r in rows]),
                           np.array([r["activations"] for r in rows]), np.array(measured))
    for row, value in zip(rows, fitted, strict=True):
        row["fitted"] = float(value)
    result = {"model": name, "batch": batch, "allocations": allocations,
              "dense_ms": 1000 * dense_seconds,
              "layers_alone_ms": 1000 * sum(float(t[-1, -1]) for t in tables.values()),
              "passes": scores([r["measured_a"] for r in rows], [r["measured_b"] for r in rows]),
              "predictors": {p: scores([r[p] for r in rows], measured) for p in PREDICTORS},
              "rows": rows,
              "budget_check": budget_check(dense, profile_data, shape=shape, batch=batch,
                                           targets=targets, count=per_target, repeats=repeats,
                                           sample_seconds=sample_seconds,
                                           profile_allocations=profile_allocations)}
    _logger.info("%s: dense %.3f ms, prunable layers alone %.3f ms", name, result["dense_ms"],
                 result["layers_alone_ms"])
    return result


def budget_check(dense: Any, profile_data: dict[str, Any], *, shape: Sequence[int], batch: int,
                 targets: Sequence[float], count: int, repeats: int, sample_seconds: float,
                 profile_allocations: int) -> dict[str, Any]:
    """The latency removed by allocations that meet each target by the latency budget (the
    model ``profile --latency`` fits here) and by the FLOPs budget, measured after pruning."""
    import copy

    import torch

    from nni_prune_tuners.flops import flops_terms, latency_terms, rescale_to_flops
    from nni_prune_tuners.profile import parse_profile
    from nni_prune_tuners.trial import prune_channels
    from nni_prune_tuners.trial.latency import forwards, measure_latency

    raw = copy.deepcopy(profile_data)
    field = measure_latency(dense, raw, input_shape=shape, batch=batch, seed=0,
                            allocations=profile_allocations, repeats=repeats,
                            sample_seconds=sample_seconds / 2)
    profile = parse_profile(raw)
    groups = list(profile.channel_groups)
    channels = np.array([profile.channel_groups[g].channels for g in groups], dtype=float)
    lo, hi = np.zeros(len(groups)), np.minimum(0.9, (channels - 1) / channels)
    example = torch.zeros((1, *shape))
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(batch))

    _, calls = _timer(forwards(dense, x, 1), sample_seconds)
    rows = []
    for target in targets:
        for measure in ("latency", "FLOPs"):
            budget = (latency_terms if measure == "latency" else flops_terms)(profile, groups)
            removed, flops_removed = [], []
            for allocation in random_allocations(groups, count, seed=2):
                start = np.array([allocation[g] for g in groups]) + 1e-3  # zero cannot scale
                try:
                    s = rescale_to_flops(start, lo, hi, budget, target)
                except ValueError:  # the bounds do not reach the target from there
                    continue
                sparsities = dict(zip(groups, map(float, s), strict=True))
                pruned = prune_channels(copy.deepcopy(dense), sparsities, example).eval()
                _, samples = interleaved_medians(
                    {"dense": forwards(dense, x, calls), "pruned": forwards(pruned, x, calls)},
                    repeats=repeats)
                removed.append(1.0 - fastest_ratio(samples, "pruned", "dense"))
                flops_removed.append(1.0 - profile.channel_flops(sparsities, rounded=True)
                                     / profile.channel_flops({}))
            rows.append({"target": target, "budget": measure, "allocations": len(removed),
                         "removed": removed, "flops_removed": flops_removed})
            _logger.info("target %.2f by %s: latency removed %s", target, measure,
                         [round(r, 3) for r in removed])
    return {"model": field, "rows": rows}


def budget_markdown(results: Sequence[Mapping[str, Any]]) -> str:
    """One row per model, target and budget: the latency the pruned models really removed."""
    lines = ["| model | latency model (fixed / FLOPs / outputs, fit error) | target | budget | "
             "allocations | latency removed, measured | worst miss | FLOPs removed |",
             "|---|---|---:|---|---:|---|---:|---:|"]
    for r in results:
        model = r["budget_check"]["model"]
        fit = (f"{model['fixed']:.2f} / {model['per_flops']:.2f} / {model['per_outputs']:.2f}, "
               f"{model['mean_error']:.3f}")
        for row in r["budget_check"]["rows"]:
            removed = np.asarray(row["removed"])
            if not len(removed):
                continue
            lines.append(
                f"| {r['model']} | {fit} | {row['target']:.2f} | {row['budget']} | "
                f"{row['allocations']} | {removed.mean():.3f} ± {removed.std(ddof=1):.3f} | "
                f"{np.abs(removed - row['target']).max():.3f} | "
                f"{np.mean(row['flops_removed']):.3f} |")
    return "\n".join(lines)


def markdown(results: Sequence[Mapping[str, Any]]) -> str:
    """One row per model and predictor, after a row of the two timing passes' agreement."""
    lines = ["| model | dense ms (batch) | predictor | tau | mean error | worst error |",
             "|---|---|---|---:|---:|---:|"]
    for r in results:
        rows = {"pass A against pass B": r["passes"], **r["predictors"]}
        for name, score in rows.items():
            lines.append(f"| {r['model']} | {r['dense_ms']:.2f} ({r['batch']}) | {name} | "
                         f"{score['tau']:.2f} | {score['mean_error']:.3f} | "
                         f"{score['worst_error']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="zoo models, comma-separated")
    parser.add_argument("--allocations", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10, help="timed samples per variant")
    parser.add_argument("--seed", type=int, default=1,
                        help="of the allocations (profile --latency draws with 0)")
    parser.add_argument("--sample-seconds", type=float, default=0.1,
                        help="about how long one timed sample of a whole model runs")
    parser.add_argument("--targets", default="0.3,0.5",
                        help="fractions of latency removed that the budget check aims at")
    parser.add_argument("--per-target", type=int, default=8,
                        help="allocations rescaled to each target by each budget")
    parser.add_argument("--profile-allocations", type=int, default=20,
                        help="allocations profile --latency times for the budget check's model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from trials.models import ZOO

    models = [m for m in args.models.split(",") if m]
    if not models or any(m not in ZOO for m in models):
        parser.error(f"--models: {args.models!r}; the zoo has {sorted(ZOO)}")
    targets = [float(t) for t in args.targets.split(",") if t]
    if not all(0.0 < t < 1.0 for t in targets) or args.per_target < 2:
        parser.error(f"--targets must be fractions in (0, 1) and --per-target >= 2, got "
                     f"{args.targets!r} and {args.per_target}")
    if (args.allocations <= MIN_ALLOCATIONS or min(args.batch, args.repeats) < 2
            or not args.sample_seconds > 0):
        parser.error(f"--allocations must be > {MIN_ALLOCATIONS} (the fit leaves one out), "
                     f"--batch and --repeats >= 2, --sample-seconds > 0")

    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    results = [bench_model(m, allocations=args.allocations, batch=args.batch,
                           repeats=args.repeats, seed=args.seed,
                           sample_seconds=args.sample_seconds, targets=targets,
                           per_target=args.per_target,
                           profile_allocations=args.profile_allocations) for m in models]
    table = markdown(results) + "\n\n" + budget_markdown(results)
    print(table)
    meta = {"date": datetime.date.today().isoformat(), "commit": _commit(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "seconds": time.perf_counter() - started, **vars(args), "out": str(args.out)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency_predictors.json").write_text(
        json.dumps({**meta, "results": results}, indent=2) + "\n")
    (args.out / "latency_predictors.md").write_text(
        f"{table}\n\n`python -m benchmarks.latency_predictors --allocations {args.allocations} "
        f"--batch {args.batch} --repeats {args.repeats} --targets {args.targets} --per-target "
        f"{args.per_target} --profile-allocations {args.profile_allocations}`, {meta['date']}, commit "
        f"{meta['commit']}, torch {meta['torch']}, 1 thread.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
