"""The checks every reader of our JSON files makes on a value (profile, proxy, latency model)."""

from __future__ import annotations

import math
from typing import Any


def check_count(key: str, value: Any) -> None:
    """ValueError naming ``key`` unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")


def finite_number(where: str, value: Any) -> float:
    """``value`` as a float; ValueError naming ``where`` unless it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    return float(value)
