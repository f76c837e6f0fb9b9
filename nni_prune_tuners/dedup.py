"""Which configurations have been proposed, to never spend a trial on a repeat (Contract 8).

Two NNI parameter dicts are the same configuration when they have the same keys and strings (the
same branches) and every number within ``tolerance``: rescaled sparsities are floats computed from
samples, so an exact comparison would miss repeats that the constraint creates.

Each configuration also counts how often it was added, so that a space that has no new
configuration left to find (a few values of a quantised normal) can repeat the least-proposed one
instead of giving up. A finite space is enumerated, as NNI's TPE does, and ends with
``NoMoreTrialError`` once every configuration was proposed (:class:`Deduplicator`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import nni
import numpy as np

from nni_prune_tuners.search_space import Parameter

_logger = logging.getLogger(__name__)

#: Largest difference of any value between two configurations that still counts as a repeat.
TOLERANCE = 1e-6
#: Candidates asked for one suggestion before a finite space is enumerated or, in an infinite
#: one, the least-proposed configuration is repeated; once that happened, ``2 * (REDRAWS + 1)``.
MAX_ATTEMPTS = 100
#: Repeated candidates asked again before candidates are drawn from the priors instead and
#: their layer sparsities perturbed.
REDRAWS = 10


def _flatten(params: Any, prefix: str = "") -> tuple[tuple[str, ...], list[float]]:
    """``(structure, numbers)``: the key paths and non-numeric values, and the numbers in order."""
    if isinstance(params, Mapping):
        structure: list[str] = []
        numbers: list[float] = []
        for key in sorted(params, key=str):
            inner, values = _flatten(params[key], f"{prefix}/{key}")
            structure.extend(inner)
            numbers.extend(values)
        return tuple(structure), numbers
    if isinstance(params, bool) or not isinstance(params, int | float):
        return (f"{prefix}={params!r}",), []
    return (f"{prefix}#",), [float(params)]


@dataclass
class _Entry:
    params: Mapping[str, Any]
    count: int


class SeenConfigurations:
    """Configurations proposed, finished or imported, grouped by structure for a vector compare."""

    def __init__(self, *, tolerance: float = TOLERANCE) -> None:
        self._tolerance = tolerance
        self._numbers: dict[tuple[str, ...], list[list[float]]] = {}
        self._arrays: dict[tuple[str, ...], np.ndarray] = {}
        self._entries: dict[tuple[str, ...], list[_Entry]] = {}
        self._order: list[_Entry] = []

    def __len__(self) -> int:
        """The number of distinct configurations."""
        return len(self._order)

    def add(self, params: Mapping[str, Any]) -> None:
        structure, numbers = _flatten(params)
        index = self._find(structure, numbers)
        if index is not None:
            self._entries[structure][index].count += 1
            return
        entry = _Entry(copy.deepcopy(params), 1)
        self._numbers.setdefault(structure, []).append(numbers)
        self._entries.setdefault(structure, []).append(entry)
        self._order.append(entry)
        self._arrays.pop(structure, None)

    def __contains__(self, params: object) -> bool:
        if not isinstance(params, Mapping):
            return False
        return self._find(*_flatten(params)) is not None

    def count(self, params: Mapping[str, Any]) -> int:
        """How many times ``params`` (within the tolerance) was added."""
        structure, numbers = _flatten(params)
        index = self._find(structure, numbers)
        return 0 if index is None else self._entries[structure][index].count

    def least_added(
        self, fits: Callable[[Mapping[str, Any]], bool] = lambda params: True
    ) -> Mapping[str, Any] | None:
        """A copy of the configuration added fewest times (the earliest on ties) that ``fits``."""
        for entry in sorted(self._order, key=lambda entry: entry.count):
            if fits(entry.params):
                return copy.deepcopy(entry.params)
        return None

    def _find(self, structure: tuple[str, ...], numbers: list[float]) -> int | None:
        rows = self._numbers.get(structure)
        if not rows:
            return None
        if not numbers:
            return 0
        array = self._arrays.get(structure)
        if array is None:
            array = self._arrays[structure] = np.array(rows, dtype=np.float64)
        close = np.max(np.abs(array - np.array(numbers)), axis=1) <= self._tolerance
        return int(np.argmax(close)) if close.any() else None


class Deduplicator:
    """Never twice (Contract 8): what was proposed, and what to propose when nothing new is found.

    A finite space is enumerated up front; once every configuration was proposed the space is
    used up. A space with a continuous or unbounded part never ends: when the candidates keep
    repeating, its least-proposed configuration is proposed again.
    """

    def __init__(self) -> None:
        self.seen = SeenConfigurations()
        self._configurations: list[dict[str, Any]] | None = None
        self._next = 0
        self._saturated = False
        self.repeats_rejected = 0

    def new_space(self, parameters: Sequence[Parameter]) -> None:
        """Enumerate a new search space; what was seen stays seen."""
        self._configurations = configurations(parameters)
        self._next = 0
        self._saturated = False

    @property
    def exhausted(self) -> bool:
        """Whether every configuration of a finite space was proposed."""
        return self._configurations is not None and self._unseen() is None

    @property
    def attempts(self) -> int:
        """How many candidates to ask before falling back (fewer once the space saturated)."""
        return 2 * (REDRAWS + 1) if self._saturated else MAX_ATTEMPTS

    def rejected(self, parameter_id: int, repeats: int) -> None:
        """Count (and log) the candidates of one suggestion rejected as repeats."""
        if repeats:
            self.repeats_rejected += repeats
            _logger.info("parameter %s: %d candidates rejected as repeats (%d in all)",
                         parameter_id, repeats, self.repeats_rejected)

    def fallback(self, parameter_id: int, repeats: int,
                 fits: Callable[[Mapping[str, Any]], bool]) -> Mapping[str, Any]:
        """After a suggestion's candidates all repeated: the next unproposed configuration of a
        finite space, else the least-proposed one that ``fits`` the current space.

        Raises:
            nni.NoMoreTrialError: every configuration of a finite space was proposed.
        """
        self._saturated = True
        if self._configurations is not None:
            params = self._unseen()
            if params is None:
                _logger.info("all %d configurations of the search space were proposed",
                             len(self._configurations))
                raise nni.NoMoreTrialError()
            return params
        least = self.seen.least_added(fits)
        assert least is not None, "a repeat was rejected, so one configuration fits"
        _logger.info(
            "parameter %s: no new configuration in %d candidates; proposing again the one "
            "proposed least (%d times so far): %s",
            parameter_id, repeats, self.seen.count(least), least,
        )
        return least

    def _unseen(self) -> dict[str, Any] | None:
        """The first configuration of the finite space not yet proposed (NNI's grid fallback)."""
        assert self._configurations is not None
        while self._next < len(self._configurations):
            params = self._configurations[self._next]
            if params not in self.seen:
                return params
            self._next += 1
        return None


#: A finite space is enumerated for deduplication only up to this many configurations.
MAX_ENUMERATED = 100_000


def configurations(parameters: Sequence[Parameter]) -> list[dict[str, Any]] | None:
    """Every configuration of a finite space (NNI-shaped), or None if it is infinite or too big.

    Finite means only ``choice``, ``randint``, ``quniform``, ``qloguniform`` and ranges with equal
    bounds (one value, as NNI's TPE treats them): what NNI's TPE deduplicates by grid search before
    it reports the space exhausted. The normal family is unbounded even when quantised.
    """
    options: list[list[Any]] = []
    for parameter in parameters:
        if parameter.type == "randint":
            values: list[Any] = list(range(int(parameter.args[0]), int(parameter.args[1])))
        elif parameter.type in ("quniform", "qloguniform"):
            low, high, q = parameter.args
            steps = range(math.floor(low / q), math.ceil(high / q) + 1)
            values = sorted({parameter.to_value(min(max(k * q, low), high)) for k in steps})
        elif parameter.type in ("uniform", "loguniform") and parameter.args[0] == parameter.args[1]:
            values = [parameter.to_value(parameter.args[0])]
        elif parameter.type == "choice":
            values = []
            for option, branch in zip(parameter.args, parameter.branches, strict=True):
                if branch is None:
                    values.append(option)
                    continue
                inner = configurations(branch.parameters)
                if inner is None:
                    return None
                values.extend({"_name": branch.name, **config} for config in inner)
        else:
            return None
        options.append(values)
        if math.prod(len(v) for v in options) > MAX_ENUMERATED:
            return None
    keys = [parameter.key for parameter in parameters]
    return [dict(zip(keys, combination, strict=True)) for combination in product(*options)]
