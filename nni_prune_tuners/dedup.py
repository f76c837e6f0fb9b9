"""Which configurations have been proposed, to never spend a trial on a repeat (Contract 8).

Two NNI parameter dicts are the same configuration when they have the same keys and strings (the
same branches) and every number within ``tolerance``: rescaled sparsities are floats computed from
samples, so an exact comparison would miss repeats that the constraint creates.

Each configuration also counts how often it was added, so that a space that has no new
configuration left to find (a few values of a quantised normal) can repeat the least-proposed one
instead of giving up.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

_logger = logging.getLogger(__name__)

#: Largest difference of any value between two configurations that still counts as a repeat.
TOLERANCE = 1e-6


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
