"""Write the model profile (Contract 4) and, optionally, an NNI search space for any model.

``python -m trials.profile_model --model trials.models:digits_cnn --out profile.json`` profiles the
prunable layers (Conv1d/2d/3d and Linear weights) of the ``nn.Module`` a ``module:factory`` returns:
parameter counts, FLOPs (MACs per sample) and quantiles of the magnitude and LAMP scores, which let
the torch-free tuner compute global-magnitude and LAMP allocations. ``--search-space out.json``
also writes a nested NNI space over those layers in the seed's shape.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trials.masking import layer_weight, prunable_layers
from trials.models import digits_cnn
from trials.prune_trial import METHODS, dense_state_dict

_logger = logging.getLogger(__name__)

PROFILE_FORMAT = 1
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """Import ``module:factory`` (e.g. ``trials.models:digits_cnn``) and return the factory."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model must look like 'package.module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} from model {spec!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{attr!r} in {module_name!r} is not a callable factory")
    return factory


def lamp_scores(weight: np.ndarray) -> np.ndarray:
    """LAMP scores (Lee et al., ICLR 2021) of every weight, in the weight's flat order.

    With the squared weights sorted ascending, ``score_u = w_u^2 / sum_{v >= u} w_v^2``: a weight
    scores by its share of the energy of the weights at least as large. Ties are ordered by flat
    index. An all-zero tensor scores 0 everywhere.
    """
    squares = np.square(np.asarray(weight, dtype=np.float64).reshape(-1))
    order = np.argsort(squares, kind="stable")
    sorted_sq = squares[order]
    tail = np.cumsum(sorted_sq[::-1])[::-1]
    scores = np.zeros_like(squares)
    scores[order] = np.divide(sorted_sq, tail, out=np.zeros_like(sorted_sq), where=tail > 0)
    return scores


def quantiles(values: np.ndarray) -> list[float]:
    """``np.quantile`` of ``values`` at 0, 0.01, ..., 1 as 101 plain floats."""
    return [float(q) for q in np.quantile(np.asarray(values, dtype=np.float64), QUANTILE_LEVELS)]


def layer_flops(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs of each prunable weight for one input sample, from a forward pass on zeros.

    Convolutions: weight parameters times output spatial size; Linear: parameters times the
    positions it is applied at (1 for a plain ``(batch, features)`` input).
    """
    layers = prunable_layers(model)
    flops: dict[str, int] = {}
    handles = []
    for name, module in layers.items():
        def hook(mod: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
            positions = out.shape[2:] if not isinstance(mod, nn.Linear) else out.shape[1:-1]
            flops[name] = layer_weight(mod).numel() * math.prod(positions)

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            model(torch.zeros(1, *input_shape, device=device))
    except RuntimeError as exc:
        raise ValueError(f"forward pass on input shape {tuple(input_shape)} failed: {exc}") from exc
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [name for name in layers if name not in flops]
    if missing:
        raise ValueError(f"layers {missing} were not called by the forward pass")
    return flops


def profile_model(model: nn.Module, *, name: str, input_shape: Sequence[int]) -> dict[str, Any]:
    """The Contract 4 profile of ``model``'s prunable layers, in ``named_modules()`` order."""
    layers = prunable_layers(model)
    if not layers:
        raise ValueError(f"model {name!r} has no prunable (Conv1d/2d/3d, Linear) layers")
    flops = layer_flops(model, input_shape)
    entries: list[dict[str, Any]] = []
    for layer_name, module in layers.items():
        weight = layer_weight(module).detach().cpu().double().numpy()
        entries.append({
            "name": layer_name,
            "type": type(module).__name__,
            "shape": list(weight.shape),
            "params": int(weight.size),
            "flops": int(flops[layer_name]),
            "magnitude_quantiles": quantiles(np.abs(weight)),
            "lamp_quantiles": quantiles(lamp_scores(weight)),
        })
    return {
        "format": PROFILE_FORMAT,
        "model": name,
        "prunable_params": sum(int(e["params"]) for e in entries),
        "layers": entries,
    }


def search_space(
    layer_names: Sequence[str], *, methods: Sequence[str], low: float, high: float
) -> dict[str, Any]:
    """A nested NNI ``choice`` over ``methods``, each with a uniform sparsity per layer.

    Raises:
        ValueError: for no layers, an unknown or repeated method, or bounds outside
            ``0 <= low < high < 1``.
    """
    if not layer_names:
        raise ValueError("layer_names must name at least one layer")
    if not methods or len(set(methods)) != len(methods) or set(methods) - set(METHODS):
        raise ValueError(f"methods must be distinct names from {list(METHODS)}, got {methods!r}")
    if not (0.0 <= low < high < 1.0):
        raise ValueError(f"need 0 <= low < high < 1, got low={low!r}, high={high!r}")
    options = []
    for method in methods:
        option: dict[str, Any] = {"_name": method}
        for layer in layer_names:
            option[f"{layer}_sparsity"] = {"_type": "uniform", "_value": [low, high]}
        options.append(option)
    return {"prune_method": {"_type": "choice", "_value": options}}


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(f"--input-shape must look like 1,8,8 (positive ints), got {text!r}")
    return shape


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trials.profile_model",
        description="Write the pruning profile of a model (and optionally an NNI search space).",
    )
    parser.add_argument("--model", required=True, help="module:factory returning an nn.Module")
    parser.add_argument("--out", type=Path, help="profile JSON to write")
    parser.add_argument("--input-shape", help="one sample's shape, e.g. 1,8,8 "
                        "(default: the model's or factory's input_shape attribute)")
    parser.add_argument("--state-dict", type=Path, help="weights to load into the model")
    parser.add_argument("--cache-dir", type=Path, help="dense-weights cache for the digits CNN")
    parser.add_argument("--search-space", type=Path, help="NNI search space JSON to write")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list, e.g. agp,level")
    parser.add_argument("--low", type=float, default=0.05, help="lowest layer sparsity")
    parser.add_argument("--high", type=float, default=0.98, help="highest layer sparsity")
    parser.add_argument("--layers", help="comma list of layers to search (default: all prunable)")
    return parser


def to_json(obj: Any, indent: int = 0) -> str:
    """Indented JSON that keeps lists of numbers (shapes, bounds, quantiles) on one line."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(k)}: {to_json(v, indent + 2)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = [f"{inner}{to_json(v, indent + 2)}" for v in obj]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(obj)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(obj) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; returns the exit status (2 on bad input)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.out is None and args.search_space is None:
        parser.error("nothing to do: give --out and/or --search-space")
    try:
        factory = load_factory(args.model)
        model = factory()
        if not isinstance(model, nn.Module):
            raise ValueError(f"{args.model} returned {type(model).__name__}, not an nn.Module")
        layers = list(prunable_layers(model))
        if args.search_space is not None:
            chosen = args.layers.split(",") if args.layers else layers
            unknown = [name for name in chosen if name not in layers]
            if unknown:
                raise ValueError(f"--layers names unknown layers {unknown}; prunable: {layers}")
            methods = [m for m in args.methods.split(",") if m]
            space = search_space(chosen, methods=methods, low=args.low, high=args.high)
        if args.out is not None:
            if args.state_dict is not None:
                model.load_state_dict(torch.load(args.state_dict, map_location="cpu",
                                                 weights_only=True))
            elif factory is digits_cnn:
                model.load_state_dict(dense_state_dict(args.cache_dir))
            else:
                _logger.warning("profiling the weights %s returns (no --state-dict)", args.model)
            shape_attr = getattr(model, "input_shape", getattr(factory, "input_shape", None))
            if args.input_shape is not None:
                input_shape = _parse_shape(args.input_shape)
            elif shape_attr is not None:
                input_shape = tuple(int(d) for d in shape_attr)
            else:
                raise ValueError(f"{args.model} exposes no input_shape: pass --input-shape")
            name = args.model.partition(":")[2]
            profile = profile_model(model, name=name, input_shape=input_shape)
    except ValueError as exc:
        print(f"profile_model: error: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        _write_json(args.out, profile)
        _logger.info("wrote profile of %d layers to %s", len(profile["layers"]), args.out)
    if args.search_space is not None:
        _write_json(args.search_space, space)
        _logger.info("wrote search space to %s", args.search_space)
    return 0


if __name__ == "__main__":
    sys.exit(main())
