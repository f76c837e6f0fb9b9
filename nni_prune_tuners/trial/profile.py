"""Write the model profile (Contract 4) of any ``nn.Module``, and optionally a search space.

``python -m nni_prune_tuners.trial.profile --model mypkg.models:make --out profile.json`` (or
``nni-prune-tuners profile ...``) profiles the prunable layers (Conv1d/2d/3d and Linear weights)
of the model a ``module:factory`` returns: parameter counts and quantiles of the magnitude and
LAMP scores, which let the torch-free tuner compute global-magnitude and LAMP allocations; FLOPs
(MACs per sample) when an input shape is known; and with ``--sensitivity --eval mypkg:evaluate``
the one-shot sensitivity curve of each layer. ``--search-space out.json`` also writes a nested NNI
space over those layers in the seed's shape. ``--methods ...,channel`` (Contract 10) adds the
channel groups and each layer's ``in_group``/``out_group`` to the profile, and a ``channel`` branch
with one ``<group>_sparsity`` per group to the space; ``--latency`` then times random channel
allocations on the device and stores the fitted latency model that ``weight_by: latency`` reads
(:mod:`nni_prune_tuners.trial.latency`). It needs only the installed package and the
user's module (imported from the working directory or the installed packages).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nni_prune_tuners.latency import MIN_ALLOCATIONS
from nni_prune_tuners.params import CHANNEL, MASK_METHODS, METHODS, SPARSITY_SUFFIX
from nni_prune_tuners.sparsity import lamp_scores
from nni_prune_tuners.trial._json import to_json as to_json  # the profile's JSON layout
from nni_prune_tuners.trial._json import write_json
from nni_prune_tuners.trial.channel import ChannelGroup, channel_groups, channel_layers
from nni_prune_tuners.trial.inputs import (
    ExampleInputs,
    add_input_options,
    example_input,
    load_factory,
    load_object,
    resolve_inputs,
)
from nni_prune_tuners.trial.latency import measure_latency
from nni_prune_tuners.trial.layers import layer_flops, out_in_weight, prunable_layers
from nni_prune_tuners.trial.sensitivity import (
    SENSITIVITY_SPARSITIES,
    add_sensitivity,
    check_grid,
    sensitivity_curves,
)

_logger = logging.getLogger(__name__)

PROFILE_FORMAT = 1
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)

#: ``weights(spec, factory)`` returns the state dict to profile when ``--state-dict`` is not given
#: (None: profile the weights the factory returns); the checkout's wrapper supplies trained ones.
DefaultWeights = Callable[[str, Callable[[], nn.Module]], Mapping[str, torch.Tensor] | None]


def quantiles(values: np.ndarray) -> list[float]:
    """``np.quantile`` of ``values`` at 0, 0.01, ..., 1 as 101 plain floats."""
    return [float(q) for q in np.quantile(np.asarray(values, dtype=np.float64), QUANTILE_LEVELS)]


def profile_model(
    model: nn.Module, *, name: str, input_shape: Sequence[int] | None = None,
    example_inputs: ExampleInputs | None = None, channel: bool = False,
) -> dict[str, Any]:
    """The Contract 4 profile of ``model``'s prunable layers, in ``named_modules()`` order.

    FLOPs need a forward pass, hence example inputs (``example_inputs``, else zeros of
    ``input_shape`` or of the model's ``input_shape`` attribute); without them the profile has
    params and quantiles only, enough for every allocation but ``weight_by: flops``. With
    ``channel`` (which needs inputs) the profile also has Contract 10's ``channel_groups`` and
    each layer's ``in_group`` and ``out_group``, from which the torch-free tuner predicts the FLOPs
    a ``channel`` allocation leaves: ``sum(flops * keep(in_group) * keep(out_group))``. A weight
    stored [in, out] (HF ``Conv1D``) is listed with its shape as [out, in].
    """
    layers = prunable_layers(model)
    if not layers:
        raise ValueError(f"model {name!r} has no prunable (Conv1d/2d/3d, Linear, Conv1D, "
                         f"attention projection) layers")
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    example = example_inputs if example_inputs is not None else (
        example_input(model, tuple(int(d) for d in shape)) if shape is not None else None)
    if example is None and channel:
        raise ValueError(f"the channel method needs an input shape or example inputs for "
                         f"{name!r}: give --input-shape, e.g. 3,32,32, or --example-inputs MOD:FN")
    if example is None:
        _logger.info("FLOPs skipped for %s: no example inputs (give --input-shape, e.g. 3,32,32, "
                     "or --example-inputs MOD:FN for weight_by: flops)", name)
    flops = layer_flops(model, example) if example is not None else {}
    groups: list[ChannelGroup] = []
    scaled: dict[str, tuple[str | None, str | None]] = {}
    if channel and example is not None:
        groups = channel_groups(model, example)
        scaled = {layer.name: (layer.in_group, layer.out_group)
                  for layer in channel_layers(model, example, groups=groups)}
    entries: list[dict[str, Any]] = []
    for layer_name, module in layers.items():
        weight = out_in_weight(module).detach().cpu().double().numpy()
        entry: dict[str, Any] = {
            "name": layer_name,
            "type": type(module).__name__,
            "shape": list(weight.shape),
            "params": int(weight.size),
        }
        if layer_name in flops:
            entry["flops"] = int(flops[layer_name])
        if channel:
            entry["in_group"], entry["out_group"] = scaled[layer_name]
        entry["magnitude_quantiles"] = quantiles(np.abs(weight))
        entry["lamp_quantiles"] = quantiles(lamp_scores(weight))
        entries.append(entry)
    profile: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "model": name,
        "prunable_params": sum(int(e["params"]) for e in entries),
        "layers": entries,
    }
    if channel:
        profile["channel_groups"] = [
            {"name": g.name, "layers": list(g.layers), "channels": g.channels} for g in groups]
    return profile


def search_space(
    layer_names: Sequence[str], *, methods: Sequence[str], low: float, high: float,
    groups: Sequence[ChannelGroup] = (),
) -> dict[str, Any]:
    """A nested NNI ``choice`` over ``methods``, each with a uniform sparsity per layer.

    The ``channel`` branch has a uniform sparsity per group of ``groups`` instead, its upper
    bound lowered to ``(n - 1) / n`` for a group of ``n`` channels, so that every value keeps at
    least one channel (:func:`~nni_prune_tuners.trial.prune_channels` refuses to remove all).

    Raises:
        ValueError: for no layers, an unknown or repeated method, bounds outside
            ``0 <= low < high < 1``, or ``channel`` without groups.
    """
    if not layer_names:
        raise ValueError("layer_names must name at least one layer")
    if not methods or len(set(methods)) != len(methods) or set(methods) - set(METHODS):
        raise ValueError(f"methods must be distinct names from {list(METHODS)}, "
                         f"got {methods!r}")
    if not (0.0 <= low < high < 1.0):
        raise ValueError(f"need 0 <= low < high < 1, got low={low!r}, high={high!r}")
    if CHANNEL in methods and not groups:
        raise ValueError("methods has 'channel' but the model has no prunable channel group")
    options = []
    for method in methods:
        option: dict[str, Any] = {"_name": method}
        if method == CHANNEL:
            for group in groups:
                top = min(high, (group.channels - 1) / group.channels)
                if top <= low:
                    raise ValueError(f"channel group {group.name!r} has {group.channels} channels: "
                                     f"its sparsity cannot exceed {top:g}, below low={low!r}")
                option[f"{group.name}{SPARSITY_SUFFIX}"] = {"_type": "uniform", "_value": [low, top]}
        else:
            for layer in layer_names:
                option[f"{layer}{SPARSITY_SUFFIX}"] = {"_type": "uniform", "_value": [low, high]}
        options.append(option)
    return {"prune_method": {"_type": "choice", "_value": options}}


def _parse_floats(text: str, option: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} must be a comma list of numbers, got {text!r}") from None


def build_parser(prog: str = "python -m nni_prune_tuners.trial.profile") -> argparse.ArgumentParser:
    """The profiler's options; the checkout's ``trials.profile_model`` adds ``--cache-dir``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write the pruning profile of a model (and optionally an NNI search space).",
    )
    parser.add_argument("--model", required=True, help="module:factory returning an nn.Module")
    parser.add_argument("--out", type=Path, help="profile JSON to write")
    add_input_options(parser, need="FLOPs, channel groups and latency")
    parser.add_argument("--state-dict", type=Path, help="weights to load into the model")
    parser.add_argument("--search-space", type=Path, help="NNI search space JSON to write")
    parser.add_argument("--methods", default=",".join(MASK_METHODS),
                        help="comma list of agp, level, channel (channel: whole output channels "
                        "removed, needs an input shape; adds the channel groups to the profile)")
    parser.add_argument("--low", type=float, default=0.05, help="lowest layer sparsity")
    parser.add_argument("--high", type=float, default=0.98, help="highest layer sparsity")
    parser.add_argument("--layers", help="comma list of layers to search (default: all prunable)")
    parser.add_argument("--sensitivity", action="store_true",
                        help="store each layer's one-shot sensitivity curve (needs --eval)")
    parser.add_argument("--eval", dest="eval_fn", metavar="MODULE:FN",
                        help="fn(model) -> float: the metric of the sensitivity curves, higher "
                        "is better (data on the model's device)")
    parser.add_argument("--sensitivity-sparsities",
                        default=",".join(f"{s:g}" for s in SENSITIVITY_SPARSITIES[1:]),
                        help="comma list of layer sparsities of the curves (0 is added)")
    parser.add_argument("--device", default="cpu", help="device of the model while profiling")
    parser.add_argument("--latency", action="store_true",
                        help="time random channel allocations on --device and store the latency "
                        "model for weight_by: latency (needs --methods ...,channel and --out; "
                        "set the torch threads of your deployment, e.g. OMP_NUM_THREADS)")
    parser.add_argument("--latency-batch", type=int, default=64,
                        help="batch size of the timed forwards (default 64)")
    parser.add_argument("--latency-allocations", type=int, default=20,
                        help=f"random allocations timed (default 20, at least {MIN_ALLOCATIONS})")
    return parser


def run(
    args: argparse.Namespace, *, command: str = "profile", default_weights: DefaultWeights | None = None
) -> int:
    """Profile as ``args`` say; errors print ``<command>: error: ...`` and return 2."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # console scripts do not put the working directory there
    try:
        profile, space = _run(args, default_weights)
    except ValueError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)  # noqa: T201 - the CLI's error line
        return 2
    if args.out is not None:
        write_json(args.out, profile)
        _logger.info("wrote profile of %d layers to %s", len(profile["layers"]), args.out)
    if args.search_space is not None:
        write_json(args.search_space, space)
        _logger.info("wrote search space to %s", args.search_space)
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """The options that contradict each other, before anything is imported or built."""
    if args.out is None and args.search_space is None:
        raise ValueError("nothing to do: give --out and/or --search-space")
    if args.sensitivity and (args.eval_fn is None or args.out is None):
        raise ValueError("--sensitivity needs --eval module:fn and --out")
    if args.eval_fn is not None and not args.sensitivity:
        raise ValueError("--eval is only used with --sensitivity")
    if args.latency and (args.out is None or CHANNEL not in args.methods.split(",")):
        raise ValueError("--latency needs --out and --methods ...,channel: it times channel "
                         "pruning")
    if args.input_shape is not None and args.example_inputs is not None:
        raise ValueError("give --input-shape or --example-inputs, not both")
    if args.latency_batch < 1 or args.latency_allocations < MIN_ALLOCATIONS:
        raise ValueError(f"--latency-batch must be >= 1 and --latency-allocations >= "
                         f"{MIN_ALLOCATIONS}, got {args.latency_batch} and "
                         f"{args.latency_allocations}")


def _run(
    args: argparse.Namespace, default_weights: DefaultWeights | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    _check_args(args)
    grid = check_grid(_parse_floats(args.sensitivity_sparsities, "--sensitivity-sparsities"))
    factory = load_factory(args.model)
    evaluate = load_object(args.eval_fn, what="eval") if args.sensitivity else None
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise ValueError(f"--device {args.device!r}: {exc}") from None
    methods = [m for m in args.methods.split(",") if m]
    if not methods or set(methods) - set(METHODS):
        raise ValueError(f"--methods must be a comma list of {list(METHODS)}, "
                         f"got {args.methods!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{args.model} returned {type(model).__name__}, not an nn.Module")
    model.to(device)
    channel = CHANNEL in methods
    inputs = resolve_inputs(args, model, factory, device)
    if channel and inputs is None:
        raise ValueError("--methods channel needs --input-shape (one sample's shape, e.g. "
                         "3,32,32) or --example-inputs MOD:FN: the channel groups come from a "
                         "forward pass")
    layers = list(prunable_layers(model))
    space: dict[str, Any] = {}
    if args.search_space is not None:
        chosen = args.layers.split(",") if args.layers else layers
        unknown = [name for name in chosen if name not in layers]
        if unknown:
            raise ValueError(f"--layers names unknown layers {unknown}; prunable: {layers}")
        groups = channel_groups(model, inputs) if channel and inputs is not None else []
        space = search_space(chosen, methods=methods, low=args.low, high=args.high, groups=groups)
    profile: dict[str, Any] = {}
    if args.out is not None:
        _load_into(model, args, factory, default_weights)
        model.to(device)
        profile = profile_model(model, name=args.model.partition(":")[2], example_inputs=inputs,
                                channel=channel)
        if evaluate is not None:
            add_sensitivity(profile, sensitivity_curves(model, evaluate, sparsities=grid))
            profile["sensitivity_eval"] = args.eval_fn
        if args.latency:
            assert inputs is not None  # the channel method needs them, checked above
            measure_latency(model, profile, example_inputs=inputs,
                            shaped=args.example_inputs is None, batch=args.latency_batch,
                            allocations=args.latency_allocations)
    return profile, space


def _load_into(
    model: nn.Module, args: argparse.Namespace, factory: Callable[[], nn.Module],
    default_weights: DefaultWeights | None,
) -> None:
    """Load ``--state-dict`` (or the default weights) into ``model``."""
    state = _load_weights(args, factory, default_weights)
    if state is None:
        _logger.warning("profiling the weights %s returns (no --state-dict)", args.model)
        return
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"the weights do not fit {args.model}: {exc}") from None


def _load_weights(
    args: argparse.Namespace, factory: Callable[[], nn.Module], default_weights: DefaultWeights | None
) -> Mapping[str, torch.Tensor] | None:
    if args.state_dict is not None:
        try:
            state: Mapping[str, torch.Tensor] = torch.load(args.state_dict, map_location="cpu",
                                                           weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"--state-dict {str(args.state_dict)!r} cannot be loaded: {exc}") from None
        return state
    return default_weights(args.model, factory) if default_weights is not None else None


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """CLI entry; returns the exit status (2 on bad input)."""
    args = build_parser(prog or "python -m nni_prune_tuners.trial.profile").parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
