"""Example inputs (Contract 11): what a model is called with, from a shape or ``MOD:FN``.

``--input-shape C,H,W`` is the short form for one float sample of zeros; ``--example-inputs``,
``--model`` and ``--eval`` name ``module:attr`` callables. An example input is one tensor, a tuple
of positional inputs or a dict of keyword inputs; :func:`call_model` calls a model with any of them.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

#: ``example_inputs``: one tensor, a tuple of positional inputs, or a dict of keyword inputs.
ExampleInputs = torch.Tensor | Sequence[Any] | Mapping[str, Any]


def call_model(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """Call ``model`` the way ``example_inputs`` says: keywords, positionals or one tensor."""
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, tuple | list):
        return model(*example_inputs)
    return model(example_inputs)


def batch_size(example_inputs: ExampleInputs) -> int:
    """The batch of ``example_inputs``: the leading dimension of its first tensor of two or more
    dimensions (token ids ``[batch, tokens]``, images ``[batch, C, H, W]``); 1 if none."""
    for tensor in _tensors(example_inputs):
        if tensor.dim() >= 2:
            return int(tensor.shape[0]) or 1
    return 1


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _tensors(item)


def to_device(example_inputs: ExampleInputs, device: torch.device) -> ExampleInputs:
    """``example_inputs`` with every tensor on ``device`` (same form: tensor, tuple or dict)."""
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs.to(device)
    if isinstance(example_inputs, Mapping):
        return {key: to_device(value, device) for key, value in example_inputs.items()}
    if isinstance(example_inputs, tuple | list):
        return tuple(to_device(value, device) for value in example_inputs)
    return example_inputs


def load_example_inputs(spec: str) -> ExampleInputs:
    """Call ``--example-inputs MOD:FN`` and check that it gave a tensor, a tuple or a dict.

    Raises:
        ValueError: one line naming the module, the function or what it returned.
    """
    make = load_object(spec, what="--example-inputs")
    try:
        inputs = make()
    except Exception as exc:  # the user's function: name it and what it raised
        raise ValueError(f"--example-inputs {spec!r} raised {type(exc).__name__}: "
                         f"{_first_line(exc)}") from None
    if (not isinstance(inputs, torch.Tensor | tuple | list | Mapping)
            or next(_tensors(inputs), None) is None):
        raise ValueError(f"--example-inputs {spec!r} returned {type(inputs).__name__}; expected a "
                         f"tensor, a tuple of positional inputs or a dict of keyword inputs")
    return inputs if not isinstance(inputs, list) else tuple(inputs)


def check_inputs(model: nn.Module, example_inputs: ExampleInputs, source: str) -> None:
    """Run ``model`` once on ``example_inputs`` (eval mode, no grad) before any work is done.

    Raises:
        ValueError: one line naming ``source`` and the exception the model raised.
    """
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, example_inputs)
    except Exception as exc:  # whatever the user's forward raises on inputs it refuses
        raise ValueError(f"the model refuses the inputs of {source}: {type(exc).__name__}: "
                         f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def output_shapes(output: Any) -> list[tuple[int, ...]]:
    """The shapes of every tensor in a model's output (nested tuples, lists and dicts)."""
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if isinstance(output, Mapping):
        return [shape for value in output.values() for shape in output_shapes(value)]
    if isinstance(output, tuple | list):
        return [shape for value in output for shape in output_shapes(value)]
    return []


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Trace in eval mode, so BatchNorm running statistics do not move; restore the mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def example_input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """One sample of zeros of ``input_shape`` on the model's device (``--input-shape``)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.zeros(1, *input_shape, device=device)


def parse_shape(text: str) -> tuple[int, ...]:
    """``--input-shape``'s ``C,H,W`` (or ``CxHxW``) as a tuple of positive ints."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(f"--input-shape must look like 1,8,8 (positive ints), got {text!r}")
    return shape


def load_object(spec: str, *, what: str = "model") -> Callable[..., Any]:
    """Import ``module:attr`` (e.g. ``mypkg.models:make``) and return the callable it names."""
    kind = "factory" if what == "model" else "function"
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} must look like 'package.module:{kind}', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} from {what} {spec!r}: {exc}") from exc
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise ValueError(f"{attr!r} in {module_name!r} is not a callable {kind} ({what} {spec!r})")
    return obj


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """Import ``module:factory`` (e.g. ``trials.models:digits_cnn``) and return the factory."""
    return load_object(spec, what="model")


def add_input_options(parser: argparse.ArgumentParser, *, need: str) -> None:
    """``--input-shape`` and ``--example-inputs``, the two ways to give inputs (one at most)."""
    parser.add_argument("--input-shape", help=f"one sample's shape, e.g. 1,8,8: zeros for {need} "
                        f"(default: the model's or factory's input_shape attribute)")
    parser.add_argument("--example-inputs", metavar="MODULE:FN",
                        help=f"fn() -> a tensor, a tuple of positional inputs or a dict of "
                        f"keyword inputs (token ids for a language model), for {need}; "
                        f"instead of --input-shape")


def resolve_inputs(
    args: argparse.Namespace, model: nn.Module, factory: Callable[[], nn.Module],
    device: torch.device,
) -> ExampleInputs | None:
    """The example inputs ``args`` give (``--example-inputs``, ``--input-shape`` or the model's
    ``input_shape`` attribute), on ``device`` and checked by one forward; None without any.

    Raises:
        ValueError: both options given, or one line naming what failed.
    """
    if args.input_shape is not None and args.example_inputs is not None:
        raise ValueError("give --input-shape or --example-inputs, not both")
    if args.example_inputs is not None:
        inputs = to_device(load_example_inputs(args.example_inputs), device)
        source = f"--example-inputs {args.example_inputs!r}"
    else:
        shape: Any = (parse_shape(args.input_shape) if args.input_shape is not None
                      else getattr(model, "input_shape", getattr(factory, "input_shape", None)))
        if shape is None:
            return None
        inputs = example_input(model, tuple(int(d) for d in shape))
        source = f"input shape {tuple(int(d) for d in shape)}"
    check_inputs(model, inputs, source)
    return inputs
