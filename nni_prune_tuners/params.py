"""The parameter grammar: NNI parameters <-> (method, {layer or group: sparsity}, the rest).

One trial's parameters are what ``nni.get_next_parameter()`` returns (Contract 2): usually the
nested choice ``{"prune_method": {"_name": "agp", "conv0_sparsity": 0.6, ...}, "lr": 0.01}``,
sometimes flat with the method given apart. A key ending in ``_sparsity`` is the sparsity of the
layer (``channel``: the channel group) named by the key without the suffix, wherever it sits;
every other key is another hyperparameter of the trial. The tuner, ``export``, ``Pruner`` and the
reference trial all read parameters here, so the method names and the suffix live here only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The nested choice whose ``_name`` is the pruning method.
METHOD_KEY = "prune_method"
#: The key of a nested choice's chosen option (NNI's grammar).
NAME_KEY = "_name"
SPARSITY_SUFFIX = "_sparsity"
LEVEL = "level"
AGP = "agp"
#: The structured method: whole channels removed (Contract 10); its keys are channel groups.
CHANNEL = "channel"
#: The mask methods: tensors keep their dense shape, pruned weights stay zero.
MASK_METHODS = (AGP, LEVEL)
METHODS = (*MASK_METHODS, CHANNEL)


def is_sparsity_key(key: object) -> bool:
    """Whether ``key`` names a layer's (or group's) sparsity."""
    return isinstance(key, str) and key.endswith(SPARSITY_SUFFIX) and key != SPARSITY_SUFFIX


def layer_of(key: str) -> str:
    """The layer (or group) a sparsity key names: the key without the suffix."""
    return key[: -len(SPARSITY_SUFFIX)]


def sparsity_key(layer: str) -> str:
    """The parameter key of ``layer``'s sparsity."""
    return f"{layer}{SPARSITY_SUFFIX}"


@dataclass(frozen=True)
class PruneParams:
    """One trial's parameters, read.

    Attributes:
        method: the pruning method, or None where the parameters name none (lenient reading).
        sparsities: ``{layer or group: sparsity}`` in the order the keys came.
        others: the parameters without their sparsity keys and without the method's ``_name``
            (nesting kept; an emptied method branch left out): the trial's other hyperparameters.
    """

    method: str | None
    sparsities: dict[str, float]
    others: dict[str, Any] = field(default_factory=dict)


def _sparsity_value(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number in [0, 1), got {value!r}")
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{key} must be in [0, 1), got {value!r}")
    return float(value)


def _split(params: Mapping[str, Any], found: dict[str, float], where: str,
           strict: bool) -> dict[str, Any]:
    """Collect the sparsities of ``params`` into ``found``; return what is left."""
    others: dict[str, Any] = {}
    for key, value in params.items():
        path = f"{where}{key}"
        if is_sparsity_key(key):
            if strict:
                layer = layer_of(key)
                if layer in found:
                    raise ValueError(f"layer {layer!r} has two sparsities (again at {path!r})")
                found[layer] = _sparsity_value(path, value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                found[layer_of(key)] = float(value)
        elif isinstance(value, Mapping):
            rest = _split(value, found, f"{path}.", strict)
            if key != METHOD_KEY or set(rest) - {NAME_KEY}:
                others[key] = rest if key != METHOD_KEY else {
                    k: v for k, v in rest.items() if k != NAME_KEY}
        else:
            others[key] = value
    return others


def _nested_method(params: Mapping[str, Any]) -> str | None:
    branch = params.get(METHOD_KEY)
    if branch is None:
        return None
    if not isinstance(branch, Mapping) or NAME_KEY not in branch:
        raise ValueError(f"{METHOD_KEY!r} must be a nested choice with '{NAME_KEY}', "
                         f"got {branch!r}")
    nested = branch[NAME_KEY]
    if nested not in METHODS:
        raise ValueError(f"unknown prune method {METHOD_KEY}.{NAME_KEY}={nested!r}; "
                         f"expected one of {list(METHODS)}")
    return str(nested)


def parse(params: Any, *, method: str | None = None) -> PruneParams:
    """Read and check the parameters a trial receives, nested or flat.

    Nested (Contract 2): the method is ``params["prune_method"]["_name"]``. Flat: give ``method``.

    Raises:
        ValueError: naming the offending key and value: no method, an unknown method, two
            disagreeing methods, a layer given twice, a sparsity that is not a number in [0, 1),
            or no layer at all.
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping (nni.get_next_parameter()), got {params!r}")
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown prune method method={method!r}; expected one of "
                         f"{list(METHODS)}")
    nested = _nested_method(params)
    if method is not None and nested is not None and method != nested:
        raise ValueError(f"method={method!r} disagrees with {METHOD_KEY}.{NAME_KEY}={nested!r}")
    chosen = method if method is not None else nested
    if chosen is None:
        raise ValueError(f"no prune method: params have no {METHOD_KEY!r} choice; pass "
                         f"method='agp', 'level' or 'channel'")
    sparsities: dict[str, float] = {}
    others = _split(params, sparsities, "", strict=True)
    if not sparsities:
        raise ValueError(f"params name no layer: expected keys like '{sparsity_key('conv0')}', "
                         f"got {sorted(map(str, params))}")
    return PruneParams(chosen, sparsities, others)


def read(params: Mapping[str, Any]) -> PruneParams:
    """Read recorded parameters without judging them (``export``: whatever a trial ran).

    The method is the ``_name`` of the branch that holds sparsities (None without one); values
    that are not numbers are not sparsities.
    """
    sparsities: dict[str, float] = {}
    others = _split(params, sparsities, "", strict=False)
    branch = params.get(METHOD_KEY)
    method = branch.get(NAME_KEY) if isinstance(branch, Mapping) else None
    if method is None:
        method = next((value[NAME_KEY] for value in params.values()
                       if isinstance(value, Mapping) and NAME_KEY in value
                       and any(is_sparsity_key(k) for k in value)), None)
    return PruneParams(method, sparsities, others)


def to_params(method: str, sparsities: Mapping[str, float],
              others: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Contract 2 parameters of ``method`` at ``sparsities`` beside ``others``: the inverse
    of :func:`parse` for nested parameters."""
    if method not in METHODS:
        raise ValueError(f"unknown prune method {method!r}; expected one of {list(METHODS)}")
    rest = dict(others or {})
    branch = dict(rest.pop(METHOD_KEY, None) or {})
    return {**rest, METHOD_KEY: {NAME_KEY: method, **branch,
                                 **{sparsity_key(k): float(v) for k, v in sparsities.items()}}}
