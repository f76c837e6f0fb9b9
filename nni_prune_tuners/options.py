"""The classArgs of both algorithms: their schema, their parsing, the checks NNI's validators run.

Each algorithm's constructor and its classArgs validator (and ``check``, which runs before
``nnictl create`` since NNI 3.0 skips registered validators for v2 configs) parse through the
same function here, so every place rejects the same things with the same one-line message that
names the key and the value.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schema import And, Optional, Or, Schema, SchemaError, Use

from nni_prune_tuners.dispatcher import exit_dispatcher, resolve_path
from nni_prune_tuners.latency import LATENCY_HINT
from nni_prune_tuners.profile import ModelProfile, load_profile
from nni_prune_tuners.sparsity import HEURISTICS

ALLOCATIONS = ("model", "local", "tpe")
#: The default ``channel_multiple`` (docs/channel.md, "Widths a kernel likes", has the timing).
CHANNEL_MULTIPLE = 8


def unknown_key_message(owner: str, keys: Iterable[object], valid: Sequence[str]) -> str | None:
    """``None`` when every key is valid, else one line about the first unknown key.

    Args:
        owner: ``PruneTPE`` or ``PruneEarlyStop``, which starts the message.
        keys: The classArgs keys as given, in their order.
        valid: The keys the algorithm accepts.
    """
    unknown = [key for key in keys if key not in valid]
    if not unknown:
        return None
    key = unknown[0]
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"the keys are {', '.join(valid)}"
    return f"{owner} classArgs: unknown key {key!r}: {hint}"


@dataclass(frozen=True)
class TunerOptions:
    """Validated classArgs of :class:`PruneTPETuner`."""

    optimize_mode: str
    seed: int | None
    target_sparsity: float | None
    profile: ModelProfile | None
    weight_by: str
    sparsity_scope: str
    warm_start: tuple[str, ...]
    proxy: bool
    n_startup_trials: int
    constant_liar: bool
    learn_from: str
    allocation: str
    #: the kept channels of a channel group are a multiple of it (or the group's full width)
    channel_multiple: int = 1


_TUNER_SCHEMA = Schema(
    {
        Optional("optimize_mode"): Or("maximize", "minimize", error="optimize_mode must be "
                                      "'maximize' or 'minimize', got {!r}"),
        Optional("seed"): Or(None, And(int, lambda x: not isinstance(x, bool) and x >= 0),
                             error="seed must be a non-negative integer or null, got {!r}"),
        Optional("target_sparsity"): Or(None, And(Or(int, float), Use(float),
                                                  lambda x: 0.0 < x < 1.0),
                                        error="target_sparsity must be a number in (0, 1) or "
                                        "null, got {!r}"),
        Optional("profile"): Or(None, str, error="profile must be a path string, got {!r}"),
        Optional("layer_params"): Or(None, dict, error="layer_params must be a mapping, got {!r}"),
        Optional("weight_by"): Or("params", "flops", "latency", error="weight_by must be "
                                  "'params', 'flops' or 'latency', got {!r}"),
        Optional("sparsity_scope"): Or("searched", "model", error="sparsity_scope must be "
                                       "'searched' or 'model', got {!r}"),
        Optional("warm_start"): Or(None, [Or(*HEURISTICS)], error="warm_start must be a list "
                                   f"drawn from {list(HEURISTICS)}, got {{!r}}"),
        Optional("proxy"): And(bool, error="proxy must be true or false, got {!r}"),
        Optional("n_startup_trials"): And(int, lambda x: not isinstance(x, bool) and x >= 0,
                                          error="n_startup_trials must be an integer >= 0, "
                                          "got {!r}"),
        Optional("constant_liar"): And(bool, error="constant_liar must be true or false, "
                                       "got {!r}"),
        Optional("learn_from"): Or("rescaled", "raw",
                                   error="learn_from must be 'rescaled' or 'raw', got {!r}"),
        Optional("allocation"): Or(*ALLOCATIONS, error="allocation must be 'model', 'local' or "
                                   "'tpe', got {!r}"),
        Optional("channel_multiple"): And(int, lambda x: not isinstance(x, bool) and x >= 1,
                                          error="channel_multiple must be an integer >= 1, "
                                          "got {!r}"),
    }
)
_TUNER_ARGS = tuple(str(key.schema) for key in _TUNER_SCHEMA.schema)


def parse_tuner_options(class_args: Mapping[str, Any], *, base: Path | None = None) -> TunerOptions:
    """Check PruneTPE's classArgs and load the profile they name.

    Shared by the constructor and :class:`PruneTPEClassArgsValidator` so that both reject the
    same things with the same messages. A relative ``profile`` is resolved against ``base``
    (the experiment's ``trialCodeDirectory``), or the working directory without one. Inside
    NNI's dispatcher a bad option ends the dispatcher with the message (:func:`exit_dispatcher`).

    Raises:
        ValueError: naming the offending key and value (an unknown key with the closest valid
            one).
    """
    try:
        return _parse_tuner_options(class_args, base)
    except ValueError as error:
        exit_dispatcher(str(error))
        raise


def _parse_tuner_options(class_args: Mapping[str, Any], base: Path | None) -> TunerOptions:
    unknown = unknown_key_message("PruneTPE", class_args, _TUNER_ARGS)
    if unknown is not None:
        raise ValueError(unknown)
    try:
        args = _TUNER_SCHEMA.validate(dict(class_args))
    except SchemaError as error:
        # a nested rule (each item of warm_start) repeats the message for its part: the first
        # line is the one about the whole value
        raise ValueError(f"PruneTPE classArgs: {error.code.splitlines()[0]}") from None
    target = args.get("target_sparsity")
    profile = _profile(args, base)
    weight_by = args.get("weight_by", "params")
    _check_weighting(args, profile, weight_by)
    allocation = args.get("allocation", "model")
    if args.get("learn_from") == "raw" and allocation != "tpe":
        raise ValueError(f"PruneTPE classArgs: learn_from='raw' needs allocation='tpe', not "
                         f"{allocation!r} (the allocation model proposes sparsities that already "
                         f"meet the target)")
    return TunerOptions(
        optimize_mode=args.get("optimize_mode", "maximize"),
        seed=args.get("seed"),
        target_sparsity=target,
        profile=profile,
        weight_by=weight_by,
        sparsity_scope=args.get("sparsity_scope", "searched"),
        warm_start=_warm_start(args.get("warm_start"), target, profile),
        proxy=args.get("proxy", True),
        n_startup_trials=args.get("n_startup_trials", 10),
        constant_liar=args.get("constant_liar", True),
        learn_from=args.get("learn_from", "rescaled"),
        allocation=allocation,
        channel_multiple=args.get("channel_multiple", CHANNEL_MULTIPLE),
    )


def _profile(args: Mapping[str, Any], base: Path | None) -> ModelProfile | None:
    """The profile that ``profile`` or ``layer_params`` gives; one is needed with a target."""
    if args.get("profile") is not None and args.get("layer_params") is not None:
        raise ValueError("PruneTPE classArgs: give either 'profile' or 'layer_params', not both")
    profile: ModelProfile | None = None
    if args.get("profile") is not None:
        profile = load_profile(resolve_path(args["profile"], base))
    elif args.get("layer_params") is not None:
        profile = ModelProfile.from_layer_params(args["layer_params"])
    target = args.get("target_sparsity")
    if target is not None and profile is None:
        raise ValueError(
            f"PruneTPE classArgs: target_sparsity={target} needs 'profile' (a model profile JSON "
            f"written by trials/profile_model.py) or 'layer_params' ({{layer: weight count}})"
        )
    return profile


def _check_weighting(args: Mapping[str, Any], profile: ModelProfile | None, weight_by: str) -> None:
    """``weight_by`` needs the profile to carry FLOPs or a latency model."""
    if weight_by == "flops" and profile is not None:
        missing = [name for name, layer in profile.layers.items() if layer.flops is None]
        if missing:
            source = ("'layer_params' carries parameter counts only: give a 'profile'"
                      if args.get("layer_params") is not None else
                      "the profile was written without an input shape: re-profile")
            raise ValueError(
                f"PruneTPE classArgs: weight_by='flops' needs FLOPs, missing for layers {missing}; "
                f"{source} with --input-shape (one sample's shape, e.g. 3,32,32): "
                f"nni-prune-tuners profile --model pkg:factory --input-shape ... --out profile.json"
            )
    if weight_by == "latency" and (profile is None or profile.latency is None):
        raise ValueError(f"PruneTPE classArgs: weight_by='latency' needs a profile with a latency "
                         f"model (channel branches only); {LATENCY_HINT}")


def _warm_start(warm_start: Sequence[str] | None, target: float | None,
                profile: ModelProfile | None) -> tuple[str, ...]:
    """The heuristics to warm-start with: by default all that the profile supports."""
    if warm_start is None:
        supported = () if profile is None else tuple(h for h in HEURISTICS if profile.supports(h))
        return supported if target is not None else ()
    if warm_start:
        if target is None:
            raise ValueError(f"PruneTPE classArgs: warm_start={warm_start} needs target_sparsity")
        assert profile is not None
        unsupported = [h for h in warm_start if not profile.supports(h)]
        if unsupported:
            raise ValueError(
                f"PruneTPE classArgs: warm_start={warm_start}: the profile lacks the data for "
                f"{unsupported} (quantiles, shapes, or sensitivity curves from nni-prune-tuners "
                f"profile --sensitivity; 'layer_params' supports 'uniform' only)"
            )
    return tuple(dict.fromkeys(warm_start))


# -- PruneEarlyStop -------------------------------------------------------------------------------

ASSESSOR_ARGS = ("optimize_mode", "rule", "percentile", "min_trials", "start_step")
_OPTIMIZE_MODES = ("maximize", "minimize")
_RULES = ("median", "percentile")
_MEDIAN = 50.0
# Keep the top quarter: Optuna's documented PercentilePruner example. A percentile rule defaulting
# to 50 would only be the median rule under another name.
_DEFAULT_PERCENTILE = 25.0


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A real number that is not a bool (JSON's true is no percentile, no metric)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_ASSESSOR_SCHEMA = Schema(
    {
        Optional("optimize_mode"): And(
            lambda m: m in _OPTIMIZE_MODES,
            error=f"optimize_mode must be one of {_OPTIMIZE_MODES}, got {{!r}}",
        ),
        Optional("rule"): And(
            lambda r: r in _RULES, error=f"rule must be one of {_RULES}, got {{!r}}"
        ),
        Optional("percentile"): Or(
            None,
            And(is_number, lambda p: 0.0 < p < 100.0),
            error="percentile must be a number in (0, 100), got {!r}",
        ),
        Optional("min_trials"): And(
            _is_count, lambda n: n >= 0,
            error="min_trials must be a non-negative integer, got {!r}",
        ),
        Optional("start_step"): And(
            _is_count, lambda n: n >= 0,
            error="start_step must be a non-negative integer, got {!r}",
        ),
    }
)


def validate_assessor_class_args(class_args: Mapping[str, Any]) -> None:
    """What PruneEarlyStop's classArgs validator checks: :class:`schema.SchemaError` naming the
    first unknown key (and the closest valid one) or bad value."""
    unknown = unknown_key_message("PruneEarlyStop", class_args, ASSESSOR_ARGS)
    if unknown is not None:
        raise SchemaError(unknown)
    _ASSESSOR_SCHEMA.validate(dict(class_args))
    try:
        kept_percentile(**class_args)
    except ValueError as err:
        raise SchemaError(str(err)) from err


def kept_percentile(
    *,
    optimize_mode: object = "maximize",
    rule: object = "median",
    percentile: object = None,
    min_trials: object = 5,
    start_step: object = 1,
) -> float:
    """Validate PruneEarlyStop's options and return the percentile Optuna should use (the top
    percent of trials kept).

    Shared by the constructor and the classArgs validator so that any classArgs the validator
    accepts also construct.
    """
    if optimize_mode not in _OPTIMIZE_MODES:
        raise ValueError(f"optimize_mode must be one of {_OPTIMIZE_MODES}, got {optimize_mode!r}")
    if rule not in _RULES:
        raise ValueError(f"rule must be one of {_RULES}, got {rule!r}")
    if not _is_count(min_trials) or min_trials < 0:  # type: ignore[operator]
        raise ValueError(f"min_trials must be a non-negative integer, got {min_trials!r}")
    if not _is_count(start_step) or start_step < 0:  # type: ignore[operator]
        raise ValueError(f"start_step must be a non-negative integer, got {start_step!r}")
    if percentile is None:
        return _MEDIAN if rule == "median" else _DEFAULT_PERCENTILE
    if not is_number(percentile) or not 0.0 < float(percentile) < 100.0:  # type: ignore[arg-type]
        raise ValueError(f"percentile must be a number in (0, 100), got {percentile!r}")
    if rule == "median" and float(percentile) != _MEDIAN:  # type: ignore[arg-type]
        raise ValueError(
            f"percentile={percentile!r} conflicts with rule='median' (the 50th percentile); "
            "set rule: percentile to use another percentile"
        )
    return float(percentile)  # type: ignore[arg-type]
