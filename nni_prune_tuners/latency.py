"""The latency model of ``channel`` pruning (``profile --latency``): how it is timed and fitted.

FLOPs predict a channel-pruned model's speed poorly on small models: BatchNorm, activations and
additions read and write every output element, and each operator has a fixed cost, so on the
zoo ResNet half the FLOPs removed save about a fifth of the time (docs/channel.md). The profile's
:class:`~nni_prune_tuners.profile.LatencyModel` is fitted here to timed random allocations:
latency ratio ``= fixed + per_flops * F + per_outputs * A`` (``F``, ``A``: the fractions of FLOPs
and output elements kept) against the dense model's measured time, by non-negative least
squares so that removing channels never adds time. Pure Python, numpy and scipy: the torch side
(:mod:`nni_prune_tuners.trial.latency`) runs the forwards.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from nni_prune_tuners._json import check_count, finite_number

_logger = logging.getLogger(__name__)

#: How to get a latency model into a profile written without one.
LATENCY_HINT = ("profile with --latency on the device you deploy to: nni-prune-tuners profile "
                "--model pkg:factory --input-shape ... --methods channel --latency --out ...")


@dataclass(frozen=True)
class LatencyModel:
    """The measured latency of ``channel`` pruning on one device (``profile --latency``).

    The latency of the pruned model relative to the dense one is predicted as ``fixed +
    per_flops * F + per_outputs * A``, with ``F`` the fraction of the prunable layers' FLOPs kept
    and ``A`` the fraction of their output elements kept (what the BatchNorm, activation and
    addition that follow each layer read and write). The coefficients are >= 0; ``fixed`` is the
    time no channel removal saves. Their sum is what the model predicts at the dense widths,
    which need not be 1: kernels choose their path by width, so the dense model can run faster
    or slower than the pruned ones around it. The rest says where it was measured: ``device``,
    torch ``threads``, ``batch``, the dense model's ``dense_ms``, how many random
    ``allocations`` were timed and the fit's ``mean_error`` on them.
    """

    fixed: float
    per_flops: float
    per_outputs: float
    device: str | None = None
    threads: int | None = None
    batch: int | None = None
    dense_ms: float | None = None
    allocations: int | None = None
    mean_error: float | None = None



class _Layer(Protocol):
    """What the latency model needs of a profiled layer."""

    @property
    def flops(self) -> float | None: ...
    @property
    def outputs(self) -> int | None: ...


def parse_latency(value: Any, layers: Mapping[str, _Layer],
                  groups: Mapping[str, object]) -> LatencyModel | None:
    """The optional ``latency`` field: coefficients >= 0, not all 0, with every layer's
    ``outputs`` and the channel groups it is a model of."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"latency must be an object, got {value!r}")
    coefficients = {}
    for key in ("fixed", "per_flops", "per_outputs"):
        number = finite_number(f"latency.{key}", value.get(key))
        if number < 0:
            raise ValueError(f"latency.{key} must be >= 0, got {number!r}")
        coefficients[key] = number
    if not sum(coefficients.values()) > 0:
        raise ValueError("latency.fixed + per_flops + per_outputs must be > 0, got 0")
    if not groups:
        raise ValueError("latency needs channel_groups: it models channel pruning; "
                         + LATENCY_HINT)
    missing = [name for name, layer in layers.items()
               if layer.outputs is None or layer.flops is None]
    if missing:
        raise ValueError(f"latency needs 'outputs' and 'flops' for every layer, missing for "
                         f"{missing}; {LATENCY_HINT}")
    extra: dict[str, Any] = {}
    for key in ("dense_ms", "mean_error"):
        if value.get(key) is not None:
            extra[key] = finite_number(f"latency.{key}", value[key])
    for key in ("threads", "batch", "allocations"):
        if value.get(key) is not None:
            check_count(f"latency.{key}", value[key])
            extra[key] = int(value[key])
    device = value.get("device")
    if device is not None and not isinstance(device, str):
        raise ValueError(f"latency.device must be a string, got {device!r}")
    return LatencyModel(fixed=coefficients["fixed"], per_flops=coefficients["per_flops"],
                        per_outputs=coefficients["per_outputs"], device=device, **extra)




#: Fewer timed allocations than this cannot fit three coefficients with any check left over.
MIN_ALLOCATIONS = 5
#: The most of a group's channels a timed allocation removes: the range a search explores.
HIGHEST_RATIO = 0.8


def interleaved_medians(
    runs: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The median seconds of each of ``runs`` over ``repeats`` interleaved samples, and the samples.

    Each repeat times every run once, in an order reversed on every other repeat (A B C, C B A,
    ...), so a slow drift of the machine's load hits every run alike; ``warmup`` rounds go first
    and are not counted.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    names = list(runs)
    samples: list[dict[str, float]] = []
    for round_index in range(warmup + repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        times: dict[str, float] = {}
        for name in order:
            start = clock()
            runs[name]()
            times[name] = clock() - start
        if round_index >= warmup:
            samples.append({name: times[name] for name in names})
    medians = {name: statistics.median(sample[name] for sample in samples) for name in names}
    return medians, samples


def fastest_ratio(samples: Sequence[Mapping[str, float]], run: str, base: str) -> float:
    """The fastest sample of ``run`` over the fastest of ``base``: other load only ever adds
    time, so on a shared machine the minimum is the steadiest estimate (``timeit``'s advice;
    on the zoo ResNet under load, per-sample ratios spread 0.6-1.8 where this one stays within
    0.08)."""
    return min(s[run] for s in samples) / min(s[base] for s in samples)


def random_allocations(groups: Sequence[str], count: int, *, seed: int,
                       highest: float = HIGHEST_RATIO) -> list[dict[str, float]]:
    """``count`` seeded channel allocations that spread from nearly dense to heavily pruned:
    each draws a level in [0, ``highest``] and gives every group that level times a factor in
    [0.5, 1.5], capped at ``highest``. (Independent uniform ratios would all keep about the
    same FLOPs, and a fit needs the range.)"""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        level = rng.uniform(0.0, highest)
        ratios = np.minimum(level * rng.uniform(0.5, 1.5, len(groups)), highest)
        out.append({g: float(r) for g, r in zip(groups, ratios, strict=True)})
    return out


def fit_latency(flops_kept: npt.ArrayLike, outputs_kept: npt.ArrayLike,
                ratios: npt.ArrayLike) -> tuple[float, float, float, float]:
    """``(fixed, per_flops, per_outputs, mean_error)`` of the latency ratios measured at the
    kept fractions: non-negative least squares, and the mean absolute error of the fit.

    The fit is not forced through the dense model (``F = A = 1``, ratio 1): kernels pick their
    path by width, so the dense widths can run faster or slower than the pruned curve (on the
    zoo MobileNet one channel fewer in a 64-wide depthwise layer has halved the time, and in
    another process not), and the budget is the ratio to the dense time as measured.

    Raises:
        ValueError: for fewer than :data:`MIN_ALLOCATIONS` points, lengths that differ, or
            ratios that are not finite and positive.
    """
    from scipy.optimize import nnls

    f, a, r = (np.asarray(v, dtype=np.float64) for v in (flops_kept, outputs_kept, ratios))
    if not len(f) == len(a) == len(r):
        raise ValueError(f"one ratio per allocation: got {len(f)}, {len(a)} and {len(r)}")
    if len(r) < MIN_ALLOCATIONS:
        raise ValueError(f"a latency model needs at least {MIN_ALLOCATIONS} timed allocations, "
                         f"got {len(r)}")
    if not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"latency ratios must be finite and > 0, got {r.tolist()}")
    design = np.column_stack([np.ones(len(r)), f, a])
    coefficients, _ = nnls(design, r)
    if not float(coefficients.sum()) > 0:
        raise ValueError("the latency fit is all zero: the timings carry no signal")
    fixed, per_flops, per_outputs = (float(c) for c in coefficients)
    predicted = fixed + per_flops * f + per_outputs * a
    return fixed, per_flops, per_outputs, float(np.mean(np.abs(predicted - r)))
