"""PruneTPE's suggestions and PruneEarlyStop's decisions are the recorded ones, bit for bit.

The traces in ``tests/golden`` were recorded before the redesign into one room per responsibility
(``python -m tests.golden``); any change of behaviour, however small, fails here first.
"""

from __future__ import annotations

import json

import pytest

from tests import golden


@pytest.mark.parametrize(("kind", "name"), golden.cases(), ids=[f"{k}-{n}" for k, n in golden.cases()])
def test_the_trace_is_the_recorded_one(kind: str, name: str) -> None:
    recorded = json.loads(golden.path_of(kind, name).read_text())
    assert json.loads(json.dumps(golden.record(kind, name))) == recorded
