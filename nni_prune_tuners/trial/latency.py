"""Measure the latency model of ``channel`` pruning on the user's device (``profile --latency``).

Random channel allocations are pruned for real (:func:`prune_channels`) and each is timed against
the dense model, interleaved (:func:`nni_prune_tuners.latency.interleaved_medians`), at the batch
size and with the torch threads of the deployment. The ratios are fitted by
:func:`nni_prune_tuners.latency.fit_latency` and written into the profile as its ``latency``
field, with each layer's ``outputs``, which the torch-free tuner reads for ``weight_by: latency``.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nni_prune_tuners.latency import (
    MIN_ALLOCATIONS,
    fastest_ratio,
    fit_latency,
    interleaved_medians,
    random_allocations,
)
from nni_prune_tuners.profile import parse_profile
from nni_prune_tuners.trial.channel import prune_channels
from nni_prune_tuners.trial.inputs import ExampleInputs, batch_size, call_model, example_input
from nni_prune_tuners.trial.layers import prunable_layers

_logger = logging.getLogger(__name__)

def layer_outputs(model: nn.Module, example: ExampleInputs) -> dict[str, int]:
    """Elements of each prunable layer's output per sample, from one forward of ``example``."""
    counts: dict[str, int] = {}
    batch = batch_size(example)
    handles: list[RemovableHandle] = []
    for name, module in prunable_layers(model).items():
        def hook(_module: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
            counts.setdefault(name, out.numel() // batch)
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            call_model(model, example)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def forwards(model: nn.Module, x: ExampleInputs, count: int) -> Callable[[], object]:
    """A call that runs ``count`` forwards of ``x`` in inference mode (synchronised on CUDA):
    one timed sample."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")

    def run() -> None:
        with torch.inference_mode():
            for _ in range(count):
                call_model(model, x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def _time_allocations(
    model: nn.Module, profile: dict[str, Any], *, example: ExampleInputs, x: ExampleInputs,
    allocations: int, repeats: int, seed: int, sample_seconds: float,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """The kept FLOPs and output fractions, latency ratios and dense seconds of the random
    allocations timed on ``x`` (``model`` in eval mode; the layers' ``outputs``, counted on
    ``example``, are written into ``profile``)."""
    outputs = layer_outputs(model, example)
    for entry in profile["layers"]:
        entry["outputs"] = int(outputs[entry["name"]])
    parsed = parse_profile(profile)
    forwards(model, x, 2)()  # warm the allocator before calibrating
    start = time.perf_counter()
    forwards(model, x, 3)()
    count = max(1, round(sample_seconds / max((time.perf_counter() - start) / 3, 1e-7)))
    flops_kept, outputs_kept, ratios, dense = [], [], [], []
    chosen = random_allocations(list(parsed.channel_groups), allocations, seed=seed)
    for index, sparsities in enumerate(chosen):
        pruned = prune_channels(copy.deepcopy(model), sparsities, example).eval()
        _, samples = interleaved_medians(
            {"dense": forwards(model, x, count), "pruned": forwards(pruned, x, count)},
            repeats=repeats)
        kept = parsed.kept_fractions(sparsities)
        flops_kept.append(kept[0])
        outputs_kept.append(kept[1])
        ratios.append(fastest_ratio(samples, "pruned", "dense"))
        dense.append(min(sample["dense"] for sample in samples) / count)
        _logger.info("latency %d/%d: %.3f of the dense time with %.3f of the FLOPs and %.3f of "
                     "the output elements kept", index + 1, allocations, ratios[-1], kept[0],
                     kept[1])
    return flops_kept, outputs_kept, ratios, dense


def measure_latency(
    model: nn.Module, profile: dict[str, Any], *, input_shape: Sequence[int] | None = None,
    example_inputs: ExampleInputs | None = None, shaped: bool = True, batch: int = 64,
    allocations: int = 20, repeats: int = 10, seed: int = 0, sample_seconds: float = 0.05,
) -> dict[str, Any]:
    """Time ``allocations`` random channel allocations of ``model`` against it and store the
    fitted latency model in ``profile`` (a ``channel`` profile of this model, changed in place).

    The allocations spread from nearly dense to heavily pruned
    (:func:`nni_prune_tuners.latency.random_allocations`, seeded). An allocation
    is timed in ``repeats`` samples interleaved with the dense model, each about
    ``sample_seconds`` of dense forwards at ``batch``, on the model's device, and its ratio is
    that of the fastest samples (:func:`nni_prune_tuners.latency.fastest_ratio`). Returns the
    ``latency`` field written. The inputs are ``input_shape`` (random floats at ``batch``) or
    ``example_inputs``: with ``shaped`` (they are zeros of one sample's shape) random floats of
    their shape at ``batch``, else timed as given, at their own batch.

    Raises:
        ValueError: for a profile without channel groups, or options out of range.
    """
    if batch < 1 or repeats < 1 or allocations < MIN_ALLOCATIONS or not sample_seconds > 0:
        raise ValueError(f"latency: batch and repeats must be >= 1 and allocations >= "
                         f"{MIN_ALLOCATIONS}, got batch={batch}, repeats={repeats}, "
                         f"allocations={allocations}")
    if not profile.get("channel_groups"):
        raise ValueError("--latency needs --methods channel: it times channel pruning")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    example, x, batch = _timed_inputs(model, input_shape, example_inputs, shaped, batch, seed)
    was_training = model.training
    model.eval()
    try:
        flops_kept, outputs_kept, ratios, dense = _time_allocations(
            model, profile, example=example, x=x, allocations=allocations, repeats=repeats,
            seed=seed, sample_seconds=sample_seconds)
    finally:
        model.train(was_training)
    fixed, per_flops, per_outputs, error = fit_latency(flops_kept, outputs_kept, ratios)
    field = {"fixed": fixed, "per_flops": per_flops, "per_outputs": per_outputs,
             "device": str(device), "threads": torch.get_num_threads(), "batch": batch,
             "dense_ms": 1000 * statistics.median(dense), "allocations": allocations,
             "mean_error": error}
    _logger.info("latency model: %.3f fixed + %.3f x FLOPs kept + %.3f x outputs kept (mean "
                 "error %.3f on %d allocations; dense %.3f ms at batch %d, %d threads, %s)",
                 fixed, per_flops, per_outputs, error, allocations, field["dense_ms"], batch,
                 field["threads"], device)
    profile["latency"] = field
    return field


def _timed_inputs(
    model: nn.Module, input_shape: Sequence[int] | None, example_inputs: ExampleInputs | None,
    shaped: bool, batch: int, seed: int,
) -> tuple[ExampleInputs, ExampleInputs, int]:
    """The inputs counted (one sample), those timed, and the batch timed."""
    if (input_shape is None) == (example_inputs is None):
        raise ValueError("latency: give input_shape or example_inputs, exactly one")
    if example_inputs is not None and not shaped:
        return example_inputs, example_inputs, batch_size(example_inputs)
    if example_inputs is not None:
        assert isinstance(example_inputs, torch.Tensor)  # zeros of one sample's shape
        input_shape = tuple(example_inputs.shape[1:])
    assert input_shape is not None
    example = example_input(model, input_shape)
    x = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(seed))
    return example, x.to(example.device), batch
