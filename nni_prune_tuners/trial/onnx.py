"""Write a (pruned) model as ONNX and run it under ONNX Runtime (the ``onnx`` extra).

Deployers run pruned models under ONNX Runtime as often as under torch, and its kernels choose
their own blocking by width, so a pruned model's speed there is its own measurement
(``benchmarks.channel_latency``). A channel-pruned model is an ordinary module with smaller
tensors, so torch's own exporter writes it: the ``torch.export``-based one (``dynamo=True``,
torch's default since 2.9; it needs ``onnxscript``), with the batch dimension dynamic. The file
is checked by running it under ONNX Runtime against torch on the example inputs before it is
kept. A helper for the command line (a model from ``MOD:FACTORY`` or a module saved by the
reference trial's ``--save``, pruned by an export's groups)::

    python -m nni_prune_tuners.trial.onnx --module pruned.pt --input-shape 1,16,16 --out m.onnx
    python -m nni_prune_tuners.trial.onnx --model trials.models:resnet_digits \\
        --groups @best.json --input-shape 1,16,16 --out m.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nni_prune_tuners.trial.channel import prune_channels
from nni_prune_tuners.trial.inputs import (
    ExampleInputs,
    call_model,
    eval_mode,
    example_input,
    load_factory,
    load_object,
    parse_shape,
)

_logger = logging.getLogger(__name__)

#: The most an output of the ONNX file may differ from torch's on the example inputs.
TOLERANCE = 1e-4
#: Weights beyond protobuf's 2 GB limit go to a ``.data`` file beside the model; below it, one file.
_ONE_FILE_BYTES = 2**31 - 2**26


def _positional(example_inputs: ExampleInputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, tuple | list):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _flat_outputs(output: Any) -> list[np.ndarray]:
    """Every tensor of a model's output, in the order the exporter flattens them."""
    if isinstance(output, torch.Tensor):
        return [output.detach().cpu().numpy()]
    values = output.values() if isinstance(output, Mapping) else output
    return [array for value in values for array in _flat_outputs(value)]


def onnx_session(path: Path | str, *, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (one, like the
    latency measurements here, unless told)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_feed(session: Any, example_inputs: ExampleInputs) -> dict[str, np.ndarray]:
    """The session's inputs from ``example_inputs``, positionals first, then keywords by name."""
    args, kwargs = _positional(example_inputs)
    arrays = [value.detach().cpu().numpy() for value in (*args, *kwargs.values())]
    return {node.name: array for node, array in zip(session.get_inputs(), arrays, strict=True)}


def max_difference(model: nn.Module, path: Path | str, example_inputs: ExampleInputs) -> float:
    """The largest absolute difference between the ONNX file's outputs under ONNX Runtime and
    the model's under torch, on ``example_inputs``."""
    session = onnx_session(path)
    with eval_mode(model), torch.inference_mode():
        expected = _flat_outputs(call_model(model, example_inputs))
    got = session.run(None, onnx_feed(session, example_inputs))
    if len(got) != len(expected):
        raise ValueError(f"the ONNX file has {len(got)} outputs, the model {len(expected)}")
    return max(float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(got, expected, strict=True))


def export_onnx(model: nn.Module, example_inputs: ExampleInputs, path: Path | str, *,
                tolerance: float | None = TOLERANCE) -> Path:
    """Write ``model`` (in eval mode) as ONNX at ``path``, the batch dimension dynamic, one file
    below 2 GB of weights, and check it under ONNX Runtime against torch on ``example_inputs``.

    Raises:
        ValueError: if an output differs from torch's by more than ``tolerance`` (None: no check);
            the file is removed then.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    args, kwargs = _positional(example_inputs)
    batch = torch.export.Dim("batch", min=1)
    shapes = [{0: batch} if isinstance(value, torch.Tensor) else None
              for value in (*args, *kwargs.values())]
    dynamic: Any = (dict(zip(kwargs, shapes[len(args):], strict=True)) if kwargs
                    else tuple(shapes))
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    with eval_mode(model):
        torch.onnx.export(model, args, str(out), kwargs=kwargs or None, dynamo=True,
                          dynamic_shapes=dynamic, external_data=size >= _ONE_FILE_BYTES,
                          verbose=False)
    if tolerance is not None:
        difference = max_difference(model, out, example_inputs)
        if not difference <= tolerance:
            out.unlink()
            raise ValueError(f"the ONNX export of the model differs from torch by {difference:.3g} "
                             f"(> {tolerance:g}) on the example inputs: not written")
        _logger.info("wrote %s: outputs within %.3g of torch's under ONNX Runtime", out, difference)
    return out


def onnx_forwards(session: Any, feed: Mapping[str, np.ndarray], count: int) -> Callable[[], object]:
    """A call that runs ``count`` forwards of ``feed`` in ``session``: one timed sample, like
    :func:`nni_prune_tuners.trial.latency.forwards` for torch."""
    def run() -> None:
        for _ in range(count):
            session.run(None, feed)
    return run


def _groups(text: str) -> dict[str, float]:
    """``{group: ratio}`` from JSON or ``@file``: an ``export`` result's ``groups``, or a mapping."""
    raw = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    groups = raw.get("groups", raw) if isinstance(raw, Mapping) else raw
    if not isinstance(groups, Mapping):
        raise ValueError(f"--groups must be {{group: ratio}} or an export's JSON, got {text!r}")
    return {str(name): float(ratio) for name, ratio in groups.items()}


def _model(args: argparse.Namespace) -> nn.Module:
    if (args.model is None) == (args.module is None):
        raise ValueError("give either --model MOD:FACTORY or --module PATH (a saved module)")
    if args.module is not None:
        return torch.load(args.module, weights_only=False, map_location="cpu")
    model = load_factory(args.model)()
    if args.state_dict is not None:
        model.load_state_dict(torch.load(args.state_dict, map_location="cpu"))
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """Write a model as ONNX (``--groups``: channel-prune it first); 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="MOD:FACTORY building the (dense) model")
    parser.add_argument("--state-dict", help="weights for --model")
    parser.add_argument("--module", help="a whole module saved with torch.save (trial --save)")
    parser.add_argument("--groups", help="{group: ratio} JSON or @export.json to prune first")
    parser.add_argument("--input-shape", help="one sample's shape, e.g. 1,16,16")
    parser.add_argument("--example-inputs", help="MOD:FN returning the example inputs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        model = _model(args).eval()
        if (args.input_shape is None) == (args.example_inputs is None):
            raise ValueError("give either --input-shape or --example-inputs")
        inputs = (example_input(model, parse_shape(args.input_shape)) if args.input_shape
                  else load_object(args.example_inputs, what="example inputs")())
        if args.groups:
            model = prune_channels(model, _groups(args.groups), inputs)
        export_onnx(model, inputs, args.out)
    except (ValueError, OSError) as error:
        parser.exit(2, f"{parser.prog}: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
