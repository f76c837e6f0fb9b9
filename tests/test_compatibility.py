"""The compatibility table's checks on tiny random-weight models (benchmarks/compatibility.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from benchmarks import compatibility

ARCHITECTURES = compatibility.architectures()
#: ``channel`` is tried on these only: the dependency analysis is the slow part of a row.
CHANNEL = {"hf_bert", "torch_transformer_encoder"}


@pytest.mark.parametrize("name", [n for n in ARCHITECTURES if not n.startswith("zoo_")] +
                         ["zoo_vit_digits"])
def test_every_expected_layer_is_found_and_masked(name: str) -> None:
    """Level and AGP reach the target on every weight a user calls a layer, each with FLOPs;
    ``channel`` either works or says why (its verdict belongs to the table)."""
    row = compatibility.check_architecture(name, ARCHITECTURES[name], channel=name in CHANNEL,
                                           latency=False)
    assert row["layers_found"] == row["layers_expected"] > 0
    assert row["layers_without_flops"] == []
    assert row["level"]["ok"] and row["agp"]["ok"], (row["level"], row["agp"])
    channel = row["channel"]
    assert channel["ok"] or channel["reason"]
    if channel["ok"]:
        assert 0 < channel["removed"] < 1 and 0 < channel["predicted"] < 1


def test_expected_layers_counts_without_the_package() -> None:
    from torch import nn

    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.MultiheadAttention(4, 2),
                          nn.Conv1d(4, 4, 1))
    assert compatibility.expected_layers(model) == 3  # in_proj, out_proj, conv


def test_the_table_names_the_reason_of_a_no() -> None:
    no = {"ok": False, "reason": "ValueError: x"}
    yes = {"ok": True, "removed": 0.5, "predicted": 0.5, "latency_ratio": 0.7}
    row = {"architecture": "a", "layers_found": 1, "layers_expected": 1, "level": yes,
           "agp": yes, "channel": no}
    assert "| a | 1 / 1 | yes | yes | no: ValueError: x | - | - |" in compatibility.table([row])
