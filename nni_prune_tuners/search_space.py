"""NNI search spaces as Optuna distributions, and back.

An NNI space (``_type``/``_value``, nested ``choice`` options carrying ``_name``) is parsed once
into a tree of :class:`Parameter` and :class:`Branch`. Sampling walks that tree with Optuna's
define-by-run API, so only the parameters of the chosen branch exist in a trial: TPE with
``group=True`` then models each branch separately. Every parameter's Optuna name is its path in
the NNI space (``prune_method/agp/conv0_sparsity``), unique across branches.

Unbounded NNI types (``normal`` and friends) are sampled as a probability ``u`` in (0, 1) mapped
through the normal quantile function, so that random sampling follows the NNI prior exactly and
TPE still works on a bounded domain. Quantised types are sampled continuously and rounded on the
way out, as NNI's own TPE does.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from statistics import NormalDist
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from nni_prune_tuners.params import is_sparsity_key, layer_of

_logger = logging.getLogger(__name__)

#: Every ``_type`` NNI's builtin TPE accepts, with the number of numbers in ``_value``.
NUMERIC_ARITY = {
    "randint": 2,
    "uniform": 2,
    "quniform": 3,
    "loguniform": 2,
    "qloguniform": 3,
    "normal": 2,
    "qnormal": 3,
    "lognormal": 2,
    "qlognormal": 3,
}
SUPPORTED_TYPES = ("choice", *NUMERIC_ARITY)
_NORMAL_FAMILY = ("normal", "qnormal", "lognormal", "qlognormal")
_SPARSITY_TYPES = ("uniform", "loguniform")
#: Probability margin of the normal family: clips samples at about 6.1 standard deviations.
_EPS = 1e-9
_STANDARD_NORMAL = NormalDist()


class SearchSpaceError(ValueError):
    """An invalid search space; the message names the offending key and value."""


@dataclass(frozen=True)
class Branch:
    """One option of a nested ``choice``: its ``_name`` and the parameters it brings."""

    name: str
    parameters: tuple[Parameter, ...]


@dataclass(frozen=True)
class Parameter:
    """One NNI hyperparameter.

    Attributes:
        name: Unique path of the parameter in the space, also its Optuna name.
        key: The key in NNI's parameters dict.
        type: NNI ``_type``.
        args: The numbers of ``_value`` (numeric types) or the options (``choice``).
        branches: For ``choice``: per option, the :class:`Branch` it opens or ``None``.
    """

    name: str
    key: str
    type: str
    args: tuple[Any, ...]
    branches: tuple[Branch | None, ...] = field(default=())

    @property
    def is_layer_sparsity(self) -> bool:
        return is_sparsity_key(self.key)

    @property
    def layer(self) -> str:
        """The layer a ``*_sparsity`` key names (dots allowed: ``features.0_sparsity``)."""
        return layer_of(self.key)

    @property
    def bounds(self) -> tuple[float, float]:
        """The closed range of values this parameter can take (numeric types only)."""
        if self.type == "randint":
            return float(self.args[0]), float(self.args[1] - 1)
        if self.type == "choice":
            return float(min(self.args)), float(max(self.args))
        return float(self.args[0]), float(self.args[1])

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution this parameter is sampled from."""
        if self.type == "choice":
            return CategoricalDistribution(list(range(len(self.args))))
        if self.type == "randint":
            return IntDistribution(int(self.args[0]), int(self.args[1]) - 1)
        if self.type in _NORMAL_FAMILY:
            return FloatDistribution(_EPS, 1.0 - _EPS)
        low, high = self.args[0], self.args[1]
        return FloatDistribution(low, high, log=self.type in ("loguniform", "qloguniform"))

    def to_value(self, sampled: Any) -> Any:
        """The NNI value of an Optuna sample (choice options are returned un-nested)."""
        if self.type == "choice":
            return self.args[int(sampled)]
        if self.type == "randint":
            return int(sampled)
        x = float(sampled)
        if self.type in _NORMAL_FAMILY:
            x = self.args[0] + self.args[1] * _STANDARD_NORMAL.inv_cdf(x)
            if self.type in ("lognormal", "qlognormal"):
                x = math.exp(x)
        if self.type.startswith("q"):
            q = self.args[2]
            x = round(x / q) * q
            if self.type in ("quniform", "qloguniform"):
                x = min(max(x, self.args[0]), self.args[1])
        return x

    def to_sample(self, value: Any) -> Any:
        """The Optuna sample that yields NNI ``value`` (inverse of :meth:`to_value`).

        Raises:
            ValueError: if ``value`` is not something this parameter can produce.
        """
        if self.type == "choice":
            name = value.get("_name") if isinstance(value, Mapping) else None
            for index, (option, branch) in enumerate(zip(self.args, self.branches, strict=True)):
                if (branch is not None and branch.name == name) or (
                    branch is None and option == value
                ):
                    return index
            raise ValueError(f"{self.name}: {value!r} is not one of its options")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name}: expected a number, got {value!r}")
        if self.type == "randint":
            if value != int(value) or not self.args[0] <= value < self.args[1]:
                raise ValueError(f"{self.name}: {value!r} is outside randint{list(self.args)}")
            return int(value)
        x = float(value)
        if self.type in _NORMAL_FAMILY:
            if self.type in ("lognormal", "qlognormal"):
                if x < 0 or (x == 0 and self.type == "lognormal"):
                    raise ValueError(f"{self.name}: {value!r} is not positive")
                if x == 0:  # qlognormal rounds its smallest values down to 0
                    return _EPS
                x = math.log(x)
            u = _STANDARD_NORMAL.cdf((x - self.args[0]) / self.args[1])
            return min(max(u, _EPS), 1.0 - _EPS)
        low, high = self.args[0], self.args[1]
        if not low - 1e-12 <= x <= high + 1e-12:
            raise ValueError(f"{self.name}: {value!r} is outside [{low}, {high}]")
        return min(max(x, low), high)


def parse_search_space(space: Any) -> tuple[Parameter, ...]:
    """Validate an NNI search space (decoded JSON) and build its parameter tree.

    Raises:
        SearchSpaceError: naming the key path and the offending value.
    """
    if not isinstance(space, Mapping) or not space:
        raise SearchSpaceError(f"a search space must be a non-empty JSON object, got {space!r}")
    return tuple(_parse_parameter(str(key), key, spec) for key, spec in space.items())


def _parse_parameter(path: str, key: Any, spec: Any) -> Parameter:
    if not isinstance(key, str) or not key:
        raise SearchSpaceError(f"search space key {key!r} must be a non-empty string")
    if not isinstance(spec, Mapping) or "_type" not in spec or "_value" not in spec:
        raise SearchSpaceError(
            f"search space key {path!r} must be an object with '_type' and '_value', got {spec!r}"
        )
    kind, value = spec["_type"], spec["_value"]
    if kind not in SUPPORTED_TYPES:
        raise SearchSpaceError(
            f"search space key {path!r}: unknown _type {kind!r}; supported: "
            f"{', '.join(SUPPORTED_TYPES)}"
        )
    if kind == "choice":
        parameter = _parse_choice(path, key, value)
    else:
        parameter = Parameter(path, key, kind, _parse_numbers(path, kind, value))
    return parameter


def _parse_choice(path: str, key: str, value: Any) -> Parameter:
    if not isinstance(value, list) or not value:
        raise SearchSpaceError(
            f"search space key {path!r}: choice needs a non-empty list, got {value!r}"
        )
    branches: list[Branch | None] = []
    for option in value:
        if not isinstance(option, Mapping) or "_name" not in option:
            branches.append(None)
            continue
        name = option["_name"]
        if not isinstance(name, str) or not name:
            raise SearchSpaceError(f"search space key {path!r}: _name {name!r} must be a string")
        if any(branch is not None and branch.name == name for branch in branches):
            raise SearchSpaceError(f"search space key {path!r}: duplicate _name {name!r}")
        children = tuple(
            _parse_parameter(f"{path}/{name}/{child}", child, spec)
            for child, spec in option.items()
            if child != "_name"
        )
        branches.append(Branch(name, children))
    return Parameter(path, key, "choice", tuple(value), tuple(branches))


def _parse_numbers(path: str, kind: str, value: Any) -> tuple[float, ...]:
    arity = NUMERIC_ARITY[kind]
    if (
        not isinstance(value, list)
        or len(value) != arity
        or any(isinstance(x, bool) or not isinstance(x, int | float) for x in value)
        or not all(math.isfinite(x) for x in value)
    ):
        raise SearchSpaceError(
            f"search space key {path!r}: {kind} needs a list of {arity} finite numbers, "
            f"got {value!r}"
        )
    numbers = tuple(value)
    if kind == "randint":
        if any(x != int(x) for x in numbers) or numbers[0] >= numbers[1]:
            raise SearchSpaceError(
                f"search space key {path!r}: randint needs integers lower < upper, got {value!r}"
            )
        return tuple(int(x) for x in numbers)
    if kind in _NORMAL_FAMILY:
        if numbers[1] <= 0:
            raise SearchSpaceError(
                f"search space key {path!r}: {kind} needs sigma > 0, got {value!r}"
            )
    elif numbers[0] > numbers[1]:
        raise SearchSpaceError(
            f"search space key {path!r}: bounds reversed in {kind} {value!r} (low > high)"
        )
    if kind in ("loguniform", "qloguniform") and numbers[0] <= 0:
        raise SearchSpaceError(
            f"search space key {path!r}: {kind} needs low > 0, got {value!r}"
        )
    if kind.startswith("q") and numbers[2] <= 0:
        raise SearchSpaceError(f"search space key {path!r}: {kind} needs q > 0, got {value!r}")
    return tuple(float(x) for x in numbers)


def check_layer_sparsity(parameter: Parameter) -> None:
    """With a sparsity target, a layer sparsity is a ``uniform`` or ``loguniform`` inside [0, 1).

    Without a target a ``*_sparsity`` key is an ordinary hyperparameter (NNI's TPE accepts any
    type there), so the tuner applies this only when it rescales.
    """
    if parameter.type not in _SPARSITY_TYPES:
        raise SearchSpaceError(
            f"search space key {parameter.name!r}: with target_sparsity a layer sparsity must be "
            f"one of {', '.join(_SPARSITY_TYPES)}, got _type {parameter.type!r}"
        )
    low, high = parameter.bounds
    if not 0.0 <= low <= high < 1.0:
        raise SearchSpaceError(
            f"search space key {parameter.name!r}: sparsity bounds [{low}, {high}] must lie "
            f"inside [0, 1)"
        )


def decode_json(text: str, *, source: str = "search space") -> Any:
    """``json.loads`` whose error says where: NNI users often paste spaces with trailing commas."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SearchSpaceError(
            f"{source} is not valid JSON: {error.msg} at line {error.lineno}, "
            f"column {error.colno}: {error.doc.splitlines()[error.lineno - 1].strip()!r}"
        ) from error


def load_search_space(path: str | Path) -> tuple[Parameter, ...]:
    """Read, decode and validate a search-space file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SearchSpaceError(
            f"search space {str(path)!r} cannot be read: {error.strerror}"
        ) from error
    return parse_search_space(decode_json(text, source=f"search space {str(path)!r}"))


def walk(parameters: Sequence[Parameter]) -> Iterator[Parameter]:
    """Every parameter of the tree, branches included, depth first."""
    for parameter in parameters:
        yield parameter
        for branch in parameter.branches:
            if branch is not None:
                yield from walk(branch.parameters)


def to_samples(params: Mapping[str, Any], parameters: Sequence[Parameter]) -> dict[str, Any]:
    """Optuna samples (by name) that reproduce NNI ``params``: to replay history into Optuna.

    Raises:
        ValueError: naming the parameter that is missing, unexpected or out of its range.
    """
    expected = {parameter.key for parameter in parameters}
    unexpected = sorted(set(params) - expected - {"_name"})
    if unexpected:
        raise ValueError(f"unexpected parameters {unexpected}")
    samples: dict[str, Any] = {}
    for parameter in parameters:
        if parameter.key not in params:
            raise ValueError(f"missing parameter {parameter.name!r}")
        value = params[parameter.key]
        sampled = parameter.to_sample(value)
        samples[parameter.name] = sampled
        if parameter.type == "choice":
            branch = parameter.branches[sampled]
            if branch is not None:
                samples.update(to_samples(value, branch.parameters))
    return samples


def distributions(parameters: Sequence[Parameter]) -> dict[str, BaseDistribution]:
    """The Optuna distribution of every parameter in the tree, by name."""
    return {parameter.name: parameter.distribution() for parameter in walk(parameters)}


@dataclass(frozen=True)
class ActiveSet:
    """The parameters present together in one configuration: one branch per nested choice.

    Attributes:
        label: Which branches were taken, e.g. ``prune_method=agp`` (``top level`` if none).
        choices: ``{choice parameter name: option index}`` that selects this set.
        parameters: The parameters of the set (choices themselves excluded).
        branches: The ``_name`` of every branch taken (a pruning method, for ``prune_method``).
    """

    label: str
    choices: Mapping[str, int]
    parameters: tuple[Parameter, ...]
    branches: tuple[str, ...] = ()

    @property
    def layer_sparsities(self) -> tuple[Parameter, ...]:
        return tuple(p for p in self.parameters if p.is_layer_sparsity)


def active_sets(parameters: Sequence[Parameter]) -> list[ActiveSet]:
    """Every combination of nested-choice branches: the unit the sparsity target applies to."""
    plain = tuple(p for p in parameters if not any(b is not None for b in p.branches))
    nested = [p for p in parameters if any(b is not None for b in p.branches)]
    options_per_choice = []
    for parameter in nested:
        options = []
        for index, branch in enumerate(parameter.branches):
            if branch is None:
                label = f"{parameter.name}=option {index}"
                options.append(ActiveSet(label, {parameter.name: index}, ()))
                continue
            for inner in active_sets(branch.parameters):
                label = f"{parameter.name}={branch.name}"
                if inner.label != "top level":
                    label = f"{label}, {inner.label}"
                options.append(
                    ActiveSet(label, {parameter.name: index, **inner.choices}, inner.parameters,
                              (branch.name, *inner.branches))
                )
        options_per_choice.append(options)
    sets = []
    for combination in product(*options_per_choice):
        label = ", ".join(part.label for part in combination) or "top level"
        choices: dict[str, int] = {}
        members = list(plain)
        for part in combination:
            choices.update(part.choices)
            members.extend(part.parameters)
        sets.append(ActiveSet(label, choices, tuple(members),
                              tuple(name for part in combination for name in part.branches)))
    return sets
