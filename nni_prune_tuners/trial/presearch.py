"""``nni-prune-tuners presearch``: search allocations on a one-shot proxy before the experiment.

Fine-tuning makes every trial of an experiment expensive; scoring an allocation one-shot (Level
masks on the trained weights, BatchNorm statistics re-estimated, no training) costs a forward
pass over a validation set. This command runs PruneTPE's allocation engine in-process against
that proxy (a real :class:`~nni_prune_tuners.tuner.PruneTPETuner` driven through
``generate_parameters`` / ``receive_trial_result``, on the Level branch of the user's space) and
writes what it found into the profile as the ``proxy`` field (Contract 9). The experiment's
PruneTPE then proposes the proxy's finalists first, before the heuristic warm starts::

    nni-prune-tuners presearch --model mypkg.models:make --state-dict trained.pt \\
        --profile profile.json --search-space space.json --target 0.9 \\
        --eval mypkg.eval:accuracy --calibrate mypkg.data:train_batches --out profile.json

Ctrl-C keeps what was evaluated: the profile is written with those evaluations.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nni_prune_tuners.dispatcher import quiet_probe
from nni_prune_tuners.params import SPARSITY_SUFFIX
from nni_prune_tuners.profile import ModelProfile, load_profile
from nni_prune_tuners.trial._json import write_json
from nni_prune_tuners.trial.batchnorm import recalibrate_batchnorm
from nni_prune_tuners.trial.inputs import (
    ExampleInputs,
    add_input_options,
    load_factory,
    load_object,
    resolve_inputs,
)
from nni_prune_tuners.trial.layers import count_flops, layer_weight, prunable_layers
from nni_prune_tuners.trial.profile import _load_weights
from nni_prune_tuners.trial.proxy_search import (
    DEFAULT_EVALUATIONS,
    DEFAULT_FINALISTS,
    DEFAULT_MIN_DISTANCE,
    Scored,
    Setup,
    has_batchnorm,
    level_space,
    one_line,
    proxy_field,
    search,
    select_finalists,
)
from nni_prune_tuners.trial.sensitivity import checked_score
from nni_prune_tuners.tuner import PruneTPETuner

_logger = logging.getLogger(__name__)

#: Exit status after Ctrl-C, as a shell reports SIGINT.
EXIT_INTERRUPTED = 130

__all__ = [
    "DEFAULT_EVALUATIONS",
    "DEFAULT_FINALISTS",
    "DEFAULT_MIN_DISTANCE",
    "EXIT_INTERRUPTED",
    "Scored",
    "Setup",
    "build_parser",
    "level_space",
    "main",
    "prepare",
    "proxy_field",
    "run",
    "search",
    "select_finalists",
]


def _read_json(path: Path, option: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{option} {str(path)!r} cannot be read: {error.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{option} {str(path)!r} is not valid JSON: {error.msg} at line "
                         f"{error.lineno}, column {error.colno}") from None


def prepare(args: argparse.Namespace) -> Setup:
    """Check every input, cheapest first, and score the dense model: no search has run yet.

    Raises:
        ValueError: naming the bad option, file, layer or function.
    """
    target = args.target
    if not (math.isfinite(target) and 0.0 < target < 1.0):
        raise ValueError(f"--target must be a number in (0, 1), got {target!r}")
    if args.evaluations < 1:
        raise ValueError(f"--evaluations must be at least 1, got {args.evaluations}")
    if args.finalists < 1:
        raise ValueError(f"--finalists must be at least 1, got {args.finalists}")
    profile = load_profile(args.profile)
    profile_data = _read_json(args.profile, "--profile")
    space, branch = level_space(_read_json(args.search_space, "--search-space"))
    tuner = PruneTPETuner(
        optimize_mode="maximize", seed=args.seed, target_sparsity=target,
        profile=str(args.profile), weight_by=args.weight_by, allocation="model",
        proxy=False,  # the search starts afresh, whatever an earlier presearch left in IN
    )
    try:
        tuner.update_search_space(space)
    except ValueError as error:
        raise ValueError(f"--search-space {str(args.search_space)!r} ({branch}): {error}") from None
    evaluate = load_object(args.eval_fn, what="eval")
    calibrate = (load_object(args.calibrate, what="calibrate")
                 if args.calibrate is not None else None)
    model = _load_model(args)
    layers = [key[: -len(SPARSITY_SUFFIX)] for key in space]
    _check_layers(model, profile, layers)
    if args.weight_by == "flops" or args.example_inputs or args.input_shape:
        inputs = resolve_inputs(args, model, load_factory(args.model), _device(model))
        if inputs is not None and args.weight_by == "flops":
            _check_flops(model, profile, layers, inputs)
    model.eval()
    dense_score = checked_score(evaluate, model, "the dense model")
    if calibrate is not None and has_batchnorm(model):
        _check_calibration(model, calibrate, args.calibrate)
    else:
        calibrate = None
    return Setup(
        model=model, evaluate=evaluate, calibrate=calibrate, tuner=tuner, profile=profile,
        profile_data=profile_data, branch=branch, target=float(target), weight_by=args.weight_by,
        evaluations=args.evaluations, finalists=args.finalists, seed=args.seed,
        metric=args.eval_fn, dense_score=dense_score,
    )


def _load_model(args: argparse.Namespace) -> nn.Module:
    """The model ``--model`` builds, its ``--state-dict`` loaded, on ``--device``."""
    factory = load_factory(args.model)
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise ValueError(f"--device {args.device!r}: {error}") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{args.model} returned {type(model).__name__}, not an nn.Module")
    state = _load_weights(args, factory, None)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"the weights do not fit {args.model}: {error}") from None
    return model.to(device)


def _check_flops(
    model: nn.Module, profile: ModelProfile, layers: Sequence[str], inputs: ExampleInputs
) -> None:
    """With ``--weight-by flops``, the searched layers' FLOPs on the example inputs are the
    profile's: the proxy's budget is the experiment's."""
    flops = count_flops(model, inputs)
    for name in layers:
        stored = profile.layers[name].flops
        if stored is None or flops.get(name) != stored:
            raise ValueError(f"layer {name!r} has {flops.get(name)} FLOPs on the example inputs "
                             f"but {'none' if stored is None else f'{stored:g}'} in the profile: "
                             f"profile the model with the same inputs")


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_layers(model: nn.Module, profile: ModelProfile, layers: Sequence[str]) -> None:
    """The searched layers exist in the model, with the weight counts the profile says."""
    prunable = prunable_layers(model)
    unknown = [name for name in layers if name not in prunable]
    if unknown:
        raise ValueError(f"the search space names layers {unknown} that the model does not have; "
                         f"its prunable layers: {list(prunable)}")
    for name in layers:
        numel = layer_weight(prunable[name]).numel()
        if numel != profile.layers[name].params:
            raise ValueError(f"layer {name!r} has {numel} weights in the model but "
                             f"{profile.layers[name].params} in the profile: re-profile the model")


def _check_calibration(
    model: nn.Module, calibrate: Callable[[], Iterable[torch.Tensor]], spec: str
) -> None:
    """Run the calibration once on the dense model, then put its statistics back."""
    saved = copy.deepcopy(model.state_dict())
    batches = calibrate()
    try:
        iter(batches)
    except TypeError:
        raise ValueError(f"calibrate {spec!r} returned {type(batches).__name__}, not an "
                         f"iterable of input batches") from None
    try:
        recalibrate_batchnorm(model, batches)
    except ValueError as error:
        raise ValueError(f"calibrate {spec!r} gave no batch ({error})") from None
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"the batches of calibrate {spec!r} do not run through the model "
                         f"(input tensors on its device, not (input, target) pairs): "
                         f"{one_line(error)}") from None
    finally:
        model.load_state_dict(saved)


def build_parser(prog: str = "python -m nni_prune_tuners.trial.presearch") -> argparse.ArgumentParser:
    """The options of Contract 9's ``presearch`` command."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Search layer sparsities on a one-shot proxy (Level masks on the trained "
        "weights, BatchNorm re-estimated, no fine-tuning) and store the best few in the "
        "profile: PruneTPE proposes them first.",
    )
    parser.add_argument("--model", required=True, help="module:factory returning an nn.Module")
    parser.add_argument("--state-dict", type=Path, help="trained weights to load into the model")
    parser.add_argument("--profile", required=True, type=Path,
                        help="the model's profile JSON (nni-prune-tuners profile)")
    parser.add_argument("--search-space", required=True, type=Path,
                        help="the experiment's NNI search space; its Level branch is searched")
    parser.add_argument("--target", required=True, type=float,
                        help="the experiment's target_sparsity, in (0, 1)")
    parser.add_argument("--weight-by", choices=("params", "flops"), default="params",
                        help="the experiment's weight_by (default: params)")
    add_input_options(parser, need="checking the profile's FLOPs with --weight-by flops")
    parser.add_argument("--eval", dest="eval_fn", required=True, metavar="MODULE:FN",
                        help="fn(model) -> float, higher is better (e.g. validation accuracy; "
                        "called in eval mode under torch.no_grad, data on the model's device)")
    parser.add_argument("--calibrate", metavar="MODULE:FN",
                        help="fn() -> iterable of input batches (a few training batches) to "
                        "re-estimate BatchNorm statistics after each pruning (input tensors on "
                        "the model's device); without it a BatchNorm network scores near chance "
                        "at high sparsity")
    parser.add_argument(
        "--evaluations", type=int, default=DEFAULT_EVALUATIONS,
        help=f"allocations to score (default {DEFAULT_EVALUATIONS}: the heuristic warm starts "
        f"and some 55 proposals of the allocation model, the allocation benchmarks' budget; at "
        f"1-3 s per one-shot score on CPU (a forward pass over a few thousand validation "
        f"samples, plus a few calibration batches) that is a few minutes)")
    parser.add_argument("--finalists", type=int, default=DEFAULT_FINALISTS,
                        help=f"distinct allocations kept for the experiment (default "
                        f"{DEFAULT_FINALISTS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search (default 0)")
    parser.add_argument("--device", default="cpu", help="device of the model (default cpu)")
    parser.add_argument("--out", required=True, type=Path,
                        help="profile JSON to write, with the proxy field (may be --profile)")
    return parser


def run(args: argparse.Namespace, *, command: str = "presearch") -> int:
    """Presearch as ``args`` say; bad input is one line ``<command>: error: ...`` and exit 2.

    Ctrl-C writes the evaluations done and returns 130; an evaluation that raises writes them
    too and returns 1.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # console scripts do not put the working directory there
    try:
        with quiet_probe():
            setup = prepare(args)
    except ValueError as error:
        _say(f"{command}: error: {one_line(error)}")
        return 2
    except KeyboardInterrupt:
        _say(f"{command}: interrupted before the first evaluation; nothing written")
        return EXIT_INTERRUPTED
    _report_setup(setup, args)
    evaluated: list[Scored] = []
    start = time.perf_counter()
    failure: BaseException | None = None
    try:
        with quiet_probe():
            for scored in search(setup):
                evaluated.append(scored)
                best = max(e.score for e in evaluated)
                _logger.info("evaluation %d/%d: %.4f (best %.4f)%s", len(evaluated),
                             setup.evaluations, scored.score, best,
                             f", the {scored.warm_start} warm start" if scored.warm_start else "")
    except KeyboardInterrupt as interrupt:
        failure = interrupt
    except Exception as error:  # the user's eval or calibration code: keep what was done
        failure = error
    seconds = time.perf_counter() - start
    interrupted = isinstance(failure, KeyboardInterrupt)
    status = EXIT_INTERRUPTED if interrupted else 1 if failure is not None else 0
    why = ("interrupted" if interrupted else
           f"error: the search failed after {len(evaluated)} evaluations: "
           f"{type(failure).__name__}: {one_line(failure)}" if failure is not None else "")
    if not evaluated:
        _say(f"{command}: {why or 'error: no evaluation gave a finite score'}; nothing written")
        return status or 1
    proxy = proxy_field(setup, evaluated, seconds=seconds, interrupted=interrupted)
    data = dict(setup.profile_data)
    data["proxy"] = proxy
    try:
        write_json(args.out, data)
    except OSError as error:
        _say(f"{command}: error: cannot write {str(args.out)!r}: {error.strerror}")
        return 1
    best = max(e.score for e in evaluated)
    done = (f"{len(evaluated)} evaluations in {seconds:.1f} s, best {best:.4f} (dense "
            f"{setup.dense_score:.4f}); {len(proxy['finalists'])} finalists in {args.out}")
    if failure is not None:
        _say(f"{command}: {why}; wrote the {done}")
    else:
        _logger.info("%s", done)
    return status


def _say(line: str) -> None:
    """The CLI's own last line, on stderr beside the log (as ``profile`` prints its errors)."""
    print(line, file=sys.stderr, flush=True)  # noqa: T201 - the CLI's one line


def _report_setup(setup: Setup, args: argparse.Namespace) -> None:
    """What the search runs on, once every input is known to be good."""
    if args.state_dict is None:
        _logger.warning("searching on the weights %s returns (no --state-dict)", args.model)
    if setup.calibrate is None and has_batchnorm(setup.model):
        _logger.warning("the model has BatchNorm but no --calibrate: one-shot scores of pruned "
                        "BatchNorm networks stay near chance; give a few training batches")
    elif args.calibrate is not None and setup.calibrate is None:
        _logger.info("the model has no BatchNorm: --calibrate is not needed")
    _logger.info("presearch: %d evaluations of %d layers (%s) at target %s by %s; dense model "
                 "scores %.4f", setup.evaluations, len(setup.tuner.parameters), setup.branch,
                 setup.target, setup.weight_by, setup.dense_score)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """CLI entry; returns the exit status (2 on bad input, 130 after Ctrl-C)."""
    args = build_parser(prog or "python -m nni_prune_tuners.trial.presearch").parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
