"""Example inputs (Contract 11): what a model is called with, from a shape or ``MOD:FN``.

``--input-shape C,H,W`` is the short form for one float sample of zeros; ``--example-inputs``,
``--model`` and ``--eval`` name ``module:attr`` callables. An example input is one tensor, a tuple
of positional inputs or a dict of keyword inputs; :func:`call_model` calls a model with any of them.
"""

from __future__ import annotations

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
