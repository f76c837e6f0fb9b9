"""The JSON files the commands write (profile, search space): readable, numbers kept on one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def to_json(obj: Any, indent: int = 0) -> str:
    """Indented JSON that keeps lists of numbers (shapes, bounds, quantiles) on one line."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(k)}: {to_json(v, indent + 2)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and any(isinstance(v, dict | list) for v in obj):
        items = [f"{inner}{to_json(v, indent + 2)}" for v in obj]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(obj)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` with :func:`to_json`, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(obj) + "\n")
