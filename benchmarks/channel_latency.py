"""Latency of channel-pruned zoo models against the dense ones, in the same run (issues #27, #41).

Per model (default the zoo ResNet and MobileNet) and target fraction of FLOPs removed, the
channels are removed for real with one common ratio for every group
(:func:`nni_prune_tuners.flops.uniform_ratio`), and, with ``--multiples 1,8``, with PruneTPE's
uniform allocation at ``channel_multiple: 8`` (the same FLOPs within the landing bound); the
FLOPs actually removed are counted on the pruned module. A sample times as many forwards
(eval, ``torch.inference_mode``, one thread) as take about ``--sample-seconds`` on the dense
model; the variants run interleaved (the order reversed every repeat) so that load drift hits
all of them, and the median over ``--repeats`` samples after one warm-up is reported with the
ratio pruned/dense, the range of per-repeat ratios and the ratio of the fastest samples.
Weights are the seeded initialisation: latency does not depend on their values.
``--operators`` adds the operator-time and convolution-time ratios (``torch.profiler``);
``--picks`` the allocation each run of ``benchmarks.channel_tuners`` picked (the model a user
would deploy); ``--onnx`` every variant exported to ONNX (:mod:`nni_prune_tuners.trial.onnx`)
and timed under ONNX Runtime beside torch; ``--device cuda --dtype bfloat16`` runs torch there.

    python -m benchmarks.channel_latency [--repeats 5] [--models resnet_digits,mobilenet_digits]
        [--targets 0.5,0.7] [--batches 1,64] [--multiples 1,8] [--picks a.json,...]
        [--operators] [--onnx] [--device cpu|cuda] [--dtype float32|bfloat16]

Writes ``results/bench/channel_latency.json`` and ``.md`` and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np

from nni_prune_tuners.flops import WidthBudget, flops_terms, uniform_ratio
from nni_prune_tuners.latency import interleaved_medians
from nni_prune_tuners.profile import ModelProfile
from nni_prune_tuners.widths import allowed_widths

_logger = logging.getLogger(__name__)
RESULTS = Path("results") / "bench"
MODELS = ("resnet_digits", "mobilenet_digits")
TARGETS = (0.5, 0.7)
BATCHES = (1, 64)


def uniform_sparsities(profile: ModelProfile, target: float) -> dict[str, float]:
    """One common ratio for every channel group of ``profile`` that removes ``target`` of its
    FLOPs (``keep = 1 - s``), each group capped at ``(n - 1) / n`` so one channel stays."""
    groups = list(profile.channel_groups)
    budget = flops_terms(profile, groups)
    high = (budget.channels - 1) / budget.channels
    ratios = uniform_ratio(np.zeros(len(groups)), high, budget, target)
    return {group: float(ratio) for group, ratio in zip(groups, ratios, strict=True)}


def multiple_sparsities(profile: ModelProfile, target: float, multiple: int) -> dict[str, float]:
    """PruneTPE's ``uniform`` allocation with ``channel_multiple: multiple``: every group keeps
    a multiple of it (or its full width), at the FLOPs target within the budget's landing bound
    (:class:`nni_prune_tuners.flops.WidthBudget`): the widths kernels like, at the same FLOPs."""
    groups = list(profile.channel_groups)
    terms = flops_terms(profile, groups)
    low, high = np.zeros(len(groups)), (terms.channels - 1) / terms.channels
    allowed = tuple(allowed_widths(int(n), multiple, 0.0, float(h))
                    for n, h in zip(terms.channels, high, strict=True))
    ratios = WidthBudget(terms, low, high, target, allowed).uniform()
    return {group: float(ratio) for group, ratio in zip(groups, ratios, strict=True)}


def tuner_picks(runs: Sequence[Mapping[str, Any]], model: str,
                target: float) -> list[tuple[str, dict[str, float]]]:
    """Each ``benchmarks.channel_tuners`` run's pick on ``model`` at ``target``, seed by seed:
    the group ratios of its best validation trial (the first of equals, as the run reports)."""
    picks = []
    for run in sorted(runs, key=lambda r: int(r["seed"])):
        if run["objective"] != model or float(run["target"]) != target:
            continue
        best = max(run["trials"], key=lambda trial: float(trial["accuracy"]))
        picks.append((f"PruneTPE pick, seed {run['seed']}",
                      {group: float(ratio) for group, ratio in best["layers"].items()}))
    return picks


def operator_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Wall-clock against operator-time ratios, for the rows timed with ``--operators``."""
    lines = ["| model | FLOPs removed | widths | batch | wall-clock ratio | operator-time ratio | "
             "convolution-time ratio |", "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {row['model']} | {row['flops_removed']:.1%} | {row['widths']} | {row['batch']} | "
              f"{row['latency_ratio']:.2f} | {row['operator_ratio']:.2f} | "
              f"{row['convolution_ratio']:.2f} |" for row in rows if "operator_ratio" in row]
    return "\n".join(lines)


def operator_times(run: Callable[[], object]) -> dict[str, float]:
    """Self CPU seconds per ATen operator over one call of ``run``, by ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    return {event.key: event.self_cpu_time_total / 1e6 for event in profiler.key_averages()}


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results table: one line per model, FLOPs target and batch size."""
    lines = [
        "| model | FLOPs removed (target / measured) | widths | uniform ratio | params dense / "
        "pruned | batch | dense ms | pruned ms | ratio pruned/dense (per-repeat range) | "
        "ratio of fastest |",
        "|---|---|---|---:|---|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['target']:.0%} / {row['flops_removed']:.1%} | "
            f"{row['widths']} | {_ratio(row['ratio_uniform'])} | "
            f"{row['params_dense']:,} / {row['params_pruned']:,} | "
            f"{row['batch']} | {row['dense_ms']:.3f} | {row['pruned_ms']:.3f} | "
            f"**{row['latency_ratio']:.2f}** ({row['ratio_min']:.2f}-{row['ratio_max']:.2f}) | "
            f"{row['ratio_of_fastest']:.2f} |")
    return "\n".join(lines)


def _widths(multiple: int) -> str:
    return "whole channels" if multiple == 1 else f"multiples of {multiple}"


def _ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.3f}"


def _convolution_ratio(pruned: Mapping[str, float], dense: Mapping[str, float]) -> float:
    """Convolution time pruned/dense; NaN for a model without convolutions (an MLP)."""
    seconds = [sum(t for op, t in times.items() if "convolution" in op) for times in (pruned, dense)]
    return seconds[0] / seconds[1] if seconds[1] > 0 else float("nan")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _call_forwards(model: Any, x: Any, count: int) -> object:
    from nni_prune_tuners.trial.latency import forwards
    return forwards(model, x, count)()


def calls_per_sample(run: Callable[[int], object], sample_seconds: float) -> int:
    """How many calls make a sample of about ``sample_seconds``: ``run(n)`` makes ``n`` calls
    (three first, to warm the allocator)."""
    run(3)
    start = time.perf_counter()
    run(5)
    return max(1, round(sample_seconds / max((time.perf_counter() - start) / 5, 1e-7)))


def onnx_sessions(variants: Mapping[str, Any], example: Any, folder: Path) -> dict[str, Any]:
    """Each variant written as ONNX into ``folder`` (checked against torch) and opened in an ONNX
    Runtime session, one thread."""
    from nni_prune_tuners.trial.onnx import export_onnx, onnx_session

    return {key: onnx_session(export_onnx(model, example, folder / f"{index}.onnx"))
            for index, (key, model) in enumerate(variants.items())}


def onnx_ratios(sessions: Mapping[str, Any], x: Any, *, repeats: int,
                sample_seconds: float) -> dict[str, dict[str, float]]:
    """The variants under ONNX Runtime, interleaved like torch's: per pruned variant its median
    ms, the dense one's, their ratio and the range of per-repeat ratios."""
    if not sessions:
        return {}
    from nni_prune_tuners.trial.onnx import onnx_feed, onnx_forwards

    feeds = {key: onnx_feed(session, x) for key, session in sessions.items()}
    count = calls_per_sample(lambda n: onnx_forwards(sessions["dense"], feeds["dense"], n)(),
                             sample_seconds)
    medians, samples = interleaved_medians(
        {key: onnx_forwards(session, feeds[key], count) for key, session in sessions.items()},
        repeats=repeats)
    out = {}
    for key in sessions:
        per_repeat = [sample[key] / sample["dense"] for sample in samples]
        out[key] = {"ort_dense_ms": 1000 * medians["dense"] / count,
                    "ort_pruned_ms": 1000 * medians[key] / count,
                    "ort_ratio": medians[key] / medians["dense"],
                    "ort_ratio_min": min(per_repeat), "ort_ratio_max": max(per_repeat)}
    return out


def onnx_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """torch and ONNX Runtime side by side, for the rows timed with ``--onnx``."""
    lines = ["| model | FLOPs removed | widths | batch | torch dense / pruned ms | torch ratio | "
             "ORT dense / pruned ms | ORT ratio (per-repeat range) |",
             "|---|---|---|---:|---|---:|---|---|"]
    lines += [f"| {row['model']} | {row['flops_removed']:.1%} | {row['widths']} | {row['batch']} | "
              f"{row['dense_ms']:.3f} / {row['pruned_ms']:.3f} | {row['latency_ratio']:.2f} | "
              f"{row['ort_dense_ms']:.3f} / {row['ort_pruned_ms']:.3f} | **{row['ort_ratio']:.2f}** "
              f"({row['ort_ratio_min']:.2f}-{row['ort_ratio_max']:.2f}) |"
              for row in rows if "ort_ratio" in row]
    return "\n".join(lines)


def pruned_variants(
    name: str, dense: Any, example: Any, *, targets: Sequence[float], multiples: Sequence[int],
    picks: Mapping[float, Sequence[tuple[str, Mapping[str, float]]]],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The dense model and its pruned variants by key (``target/widths``), and each variant's
    facts: the uniform allocation per multiple and the picks, per target."""
    import copy

    from nni_prune_tuners.profile import parse_profile
    from nni_prune_tuners.trial import count_flops, prune_channels
    from nni_prune_tuners.trial.profile import profile_model

    profile = parse_profile(profile_model(dense, name=name, channel=True))
    dense_flops = sum(count_flops(dense, example).values())
    variants: dict[str, Any] = {"dense": dense}
    facts: dict[str, dict[str, Any]] = {}
    for target in targets:
        uniform = uniform_sparsities(profile, target)
        allocations: list[tuple[str, Mapping[str, float], float | None]] = [
            (_widths(multiple),
             uniform if multiple == 1 else multiple_sparsities(profile, target, multiple),
             next(iter(uniform.values())))
            for multiple in multiples]
        allocations += [(label, sparsities, None)
                        for label, sparsities in picks.get(target, ())]
        for widths, sparsities, ratio_uniform in allocations:
            pruned = prune_channels(copy.deepcopy(dense), dict(sparsities), example).eval()
            key = f"{target:g}/{widths}"
            variants[key] = pruned
            facts[key] = {
                "target": target,
                "widths": widths,
                "ratio_uniform": ratio_uniform,
                "sparsities": dict(sparsities),
                "flops_removed": 1.0 - sum(count_flops(pruned, example).values()) / dense_flops,
                "params_pruned": sum(p.numel() for p in pruned.parameters()),
            }
    return variants, facts


def bench_model(
    name: str, *, targets: Sequence[float], batches: Sequence[int], repeats: int,
    sample_seconds: float, multiples: Sequence[int] = (1,),
    picks: Mapping[float, Sequence[tuple[str, Mapping[str, float]]]] | None = None,
    operators: bool = False, onnx: Path | None = None, device: str = "cpu",
    dtype: str = "float32",
) -> list[dict[str, Any]]:
    """Rows of one zoo model: its pruned variants against the dense one, batch by batch;
    ``picks``: further allocations per target, each with the label of its rows; ``operators``:
    each row also gets its operator-time and convolution-time ratios; ``onnx`` (a folder for
    the files): each row also gets the same variants timed under ONNX Runtime; ``device`` and
    ``dtype`` (``float32``, ``bfloat16``): where and in what precision torch runs them."""
    import torch

    from nni_prune_tuners.trial.latency import forwards
    from trials.models import ZOO

    torch.manual_seed(0)
    dense = ZOO[name]().eval()
    shape = tuple(int(d) for d in cast(Sequence[int], dense.input_shape))
    example = torch.zeros((1, *shape))
    variants, facts = pruned_variants(name, dense, example, targets=targets,
                                      multiples=multiples, picks=picks or {})
    params_dense = sum(p.numel() for p in dense.parameters())
    sessions = onnx_sessions(variants, example, onnx) if onnx is not None else {}
    for model in variants.values():
        model.to(device=device, dtype=getattr(torch, dtype))
    rows = []
    for batch in batches:
        x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(batch))
        ort = onnx_ratios(sessions, x, repeats=repeats, sample_seconds=sample_seconds)
        x = x.to(device=device, dtype=getattr(torch, dtype))

        count = calls_per_sample(partial(_call_forwards, dense, x), sample_seconds)
        medians, samples = interleaved_medians(
            {key: forwards(model, x, count) for key, model in variants.items()}, repeats=repeats)
        ops = ({key: operator_times(forwards(model, x, count)) for key, model in variants.items()}
               if operators else {})
        for key, fact in facts.items():
            per_repeat = [sample[key] / sample["dense"] for sample in samples]
            rows.append({
                "model": name, "batch": batch, "calls_per_sample": count,
                "dense_ms": 1000 * medians["dense"] / count,
                "pruned_ms": 1000 * medians[key] / count,
                "latency_ratio": medians[key] / medians["dense"],
                "ratio_min": min(per_repeat), "ratio_max": max(per_repeat),
                "ratio_of_fastest": (min(sample[key] for sample in samples)
                                     / min(sample["dense"] for sample in samples)),
                "params_dense": params_dense, **fact,
                **({"operator_ratio": sum(ops[key].values()) / sum(ops["dense"].values()),
                    "convolution_ratio": _convolution_ratio(ops[key], ops["dense"])}
                   if ops else {}),
                **ort.get(key, {}),
            })
        _logger.info("%s batch %d: %d calls a sample, dense %.3f ms", name, batch, count,
                     1000 * medians["dense"] / count)
    order = {key: index for index, key in enumerate(facts)}
    return sorted(rows, key=lambda row: (row["target"], row["batch"],
                                         order[f"{row['target']:g}/{row['widths']}"]))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed samples per variant")
    parser.add_argument("--models", default=",".join(MODELS), help="zoo models, comma-separated")
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS),
                        help="fractions of FLOPs removed, comma-separated, each in (0, 1)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--multiples", default="1",
                        help="comma list: 1 for whole channels, 8 for widths rounded to "
                             "multiples of 8, ...")
    parser.add_argument("--sample-seconds", type=float, default=0.2,
                        help="about how long one timed sample runs on the dense model")
    parser.add_argument("--picks", default="",
                        help="comma list of channel_tuners.json files whose runs' picks to time")
    parser.add_argument("--operators", action="store_true",
                        help="also the operator-time ratios, by torch.profiler")
    parser.add_argument("--onnx", action="store_true",
                        help="also every variant exported to ONNX and timed under ONNX Runtime "
                             "(the onnx extra)")
    parser.add_argument("--device", default="cpu", help="where torch runs the variants: cpu, cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.onnx and (args.device != "cpu" or args.dtype != "float32"):
        parser.error("--onnx times ONNX Runtime's CPU provider in float32: leave --device and "
                     "--dtype at cpu and float32")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from trials.models import ZOO

    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in ZOO]
    targets = [float(t) for t in args.targets.split(",") if t]
    batches = [int(b) for b in args.batches.split(",") if b]
    multiples = [int(m) for m in args.multiples.split(",") if m]
    if unknown or not models:
        parser.error(f"--models: unknown {unknown or models}; the zoo has {sorted(ZOO)}")
    if not targets or not all(0.0 < t < 1.0 for t in targets):
        parser.error(f"--targets must be fractions in (0, 1), got {args.targets!r}")
    if (not batches or min(batches) < 1 or not multiples or min(multiples) < 1
            or args.repeats < 1 or not args.sample_seconds > 0):
        parser.error("--batches, --multiples, --repeats and --sample-seconds must be positive")

    runs = []
    for path in (Path(p) for p in args.picks.split(",") if p):
        try:
            runs += json.loads(path.read_text())["runs"]
        except (OSError, ValueError, KeyError) as error:
            parser.error(f"--picks: cannot read the runs of {str(path)!r}: {error}")

    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = [row for name in models
            for row in bench_model(
                name, targets=targets, batches=batches, repeats=args.repeats,
                sample_seconds=args.sample_seconds, multiples=multiples,
                picks={t: tuner_picks(runs, name, t) for t in targets},
                operators=args.operators, onnx=args.out / "onnx" if args.onnx else None,
                device=args.device, dtype=args.dtype)]
    table = markdown(rows)
    if args.operators:
        table += "\n\n" + operator_markdown(rows)
    if args.onnx:
        table += "\n\n" + onnx_markdown(rows)
    print(table)
    meta = {"date": datetime.date.today().isoformat(), "commit": _commit(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": args.device, "dtype": args.dtype,
            "machine": platform.processor() or platform.machine(), "repeats": args.repeats,
            "sample_seconds": args.sample_seconds, "seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "channel_latency.json").write_text(json.dumps({**meta, "rows": rows}, indent=2)
                                                   + "\n")
    from benchmarks.tuners import command_line

    (args.out / "channel_latency.md").write_text(
        f"{table}\n\n`{command_line('benchmarks.channel_latency', argv)}`, {meta['date']}, commit "
        f"{meta['commit']}, torch {meta['torch']}, {args.device}, {args.dtype}, 1 CPU thread.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
