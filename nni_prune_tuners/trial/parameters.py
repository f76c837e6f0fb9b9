"""The parameters of one trial: from NNI inside an experiment, from the environment by hand.

A trial written from the README calls ``nni.get_next_parameter()``, which outside NNI returns
``{}``, and the pruner then rejects it. ``next_parameters`` lets the same script run one
configuration by hand, as ``--params`` does for the reference trial.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nni

#: The environment variable that holds a configuration when the trial runs outside NNI.
PARAMS_ENV = "NNI_PRUNE_PARAMS"


def next_parameters() -> dict[str, Any]:
    """NNI's parameters for this trial, or outside NNI those that ``NNI_PRUNE_PARAMS`` holds.

    ``NNI_PRUNE_PARAMS`` is the parameters as JSON, or ``@path`` of a JSON file: a trial's
    parameters copied from the web UI, or the ``best.json`` that ``nni-prune-tuners export``
    wrote (its ``parameters`` are used), to run the best configuration again.

    Raises:
        ValueError: outside NNI, naming ``NNI_PRUNE_PARAMS`` when it is unset, unreadable, not
            JSON or not a mapping.
    """
    if os.environ.get("NNI_PLATFORM", "unittest") != "unittest":  # set for every NNI trial
        return dict(nni.get_next_parameter())
    text = os.environ.get(PARAMS_ENV)
    if not text:
        raise ValueError(
            f"not running under NNI and {PARAMS_ENV} is unset: to run one configuration by hand, "
            f"set {PARAMS_ENV} to its parameters as JSON or to @path of a JSON file, e.g. "
            f"{PARAMS_ENV}='{{\"prune_method\": {{\"_name\": \"level\", \"conv1_sparsity\": 0.5}}}}'"
        )
    where = PARAMS_ENV
    if text.startswith("@"):
        where = f"{PARAMS_ENV} file {text[1:]!r}"
        try:
            text = Path(text[1:]).read_text()
        except OSError as error:
            raise ValueError(f"cannot read {where}: {error.strerror or error}") from None
    try:
        params = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON: {error}") from None
    if isinstance(params, Mapping) and "config_list" in params and "parameters" in params:
        params = params["parameters"]  # the output of `nni-prune-tuners export`
    if not isinstance(params, Mapping):
        raise ValueError(f"{where} must hold a JSON object of parameters, got {params!r}")
    return dict(params)
