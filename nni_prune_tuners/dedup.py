"""Which configurations have been proposed, to never spend a trial on a repeat (Contract 8).

Two NNI parameter dicts are the same configuration when they have the same keys and strings (the
same branches) and every number within ``tolerance``: rescaled sparsities are floats computed from
samples, so an exact comparison would miss repeats that the constraint creates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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


class SeenConfigurations:
    """Configurations proposed, finished or imported, grouped by structure for a vector compare."""

    def __init__(self, *, tolerance: float = TOLERANCE) -> None:
        self._tolerance = tolerance
        self._numbers: dict[tuple[str, ...], list[list[float]]] = {}
        self._arrays: dict[tuple[str, ...], np.ndarray] = {}

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._numbers.values())

    def add(self, params: Mapping[str, Any]) -> None:
        structure, numbers = _flatten(params)
        self._numbers.setdefault(structure, []).append(numbers)
        self._arrays.pop(structure, None)

    def __contains__(self, params: object) -> bool:
        if not isinstance(params, Mapping):
            return False
        structure, numbers = _flatten(params)
        rows = self._numbers.get(structure)
        if not rows:
            return False
        if not numbers:
            return True
        array = self._arrays.get(structure)
        if array is None:
            array = self._arrays[structure] = np.array(rows, dtype=np.float64)
        return bool(np.any(np.max(np.abs(array - np.array(numbers)), axis=1) <= self._tolerance))
