"""The parameter grammar (nni_prune_tuners.params): one reading of NNI parameters for every part."""

from __future__ import annotations

from typing import Any

import pytest

from nni_prune_tuners import params

NESTED = {"prune_method": {"_name": "agp", "conv0_sparsity": 0.5, "fc_sparsity": 0.25, "warmup": 2},
          "lr": 0.01, "optimizer": {"_name": "sgd", "momentum": 0.9}}


def test_nested_parameters_split_into_method_sparsities_and_the_rest() -> None:
    read = params.parse(NESTED)
    assert read.method == "agp"
    assert read.sparsities == {"conv0": 0.5, "fc": 0.25}
    assert read.others == {"prune_method": {"warmup": 2}, "lr": 0.01,
                           "optimizer": {"_name": "sgd", "momentum": 0.9}}


def test_to_params_is_the_inverse_of_parse() -> None:
    read = params.parse(NESTED)
    assert params.to_params(read.method or "", read.sparsities, read.others) == NESTED
    flat = params.parse({"a_sparsity": 0.1}, method="level")
    assert params.to_params("level", flat.sparsities) == {
        "prune_method": {"_name": "level", "a_sparsity": 0.1}}


def test_flat_parameters_take_the_method_given_and_keys_with_dots() -> None:
    read = params.parse({"features.0_sparsity": 0.3, "lr": 0.1}, method="channel")
    assert (read.method, read.sparsities, read.others) == ("channel", {"features.0": 0.3},
                                                           {"lr": 0.1})


@pytest.mark.parametrize(("given", "method", "message"), [
    ([], None, "params must be a mapping"),
    ({"a_sparsity": 0.1}, None, "no prune method"),
    ({"a_sparsity": 0.1}, "prune", "unknown prune method method='prune'"),
    ({"prune_method": {"_name": "magnitude", "a_sparsity": 0.1}}, None,
     "prune_method._name='magnitude'"),
    ({"prune_method": {"_name": "agp", "a_sparsity": 0.1}}, "level", "disagrees"),
    ({"prune_method": {"_name": "agp", "a_sparsity": 1.0}}, None, "prune_method.a_sparsity must be"),
    ({"prune_method": {"_name": "agp", "a_sparsity": True}}, None, "a number in"),
    ({"prune_method": {"_name": "agp"}}, None, "name no layer"),
    ({"prune_method": {"_name": "agp", "a_sparsity": 0.1}, "x": {"a_sparsity": 0.2}}, None,
     "two sparsities"),
    ({"prune_method": "agp"}, None, "nested choice"),
])
def test_bad_parameters_are_named(given: Any, method: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        params.parse(given, method=method)


def test_read_judges_nothing() -> None:
    read = params.read({"prune_method": {"_name": "custom", "a_sparsity": 2, "b_sparsity": "x"}})
    assert (read.method, read.sparsities) == ("custom", {"a": 2.0})
    assert params.read({"a_sparsity": 0.5}).method is None
