"""Model profiles (Contract 4) made from synthetic weights, for tests that need one on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nni_prune_tuners.sparsity import lamp_scores
from trials import analytic_trial

SHAPES = {"conv0": [16, 1, 3, 3], "conv1": [32, 16, 3, 3], "conv2": [64, 32, 3, 3], "fc": [10, 512]}


def analytic_profile(seed: int = 0) -> dict[str, Any]:
    """A profile of the analytic layers with Gaussian weights of layer-dependent scale."""
    rng = np.random.default_rng(seed)
    layers = []
    percents = np.linspace(0.0, 1.0, 101)
    for index, (name, (params, _)) in enumerate(analytic_trial.LAYERS.items()):
        shape = SHAPES[name]
        assert int(np.prod(shape)) == params
        weights = rng.normal(0.0, 0.5 / (index + 1), size=params)
        layers.append(
            {
                "name": name,
                "type": "Linear" if name == "fc" else "Conv2d",
                "shape": shape,
                "params": params,
                "flops": params * (1 if name == "fc" else 36),
                "magnitude_quantiles": np.quantile(np.abs(weights), percents).tolist(),
                "lamp_quantiles": np.quantile(lamp_scores(weights), percents).tolist(),
            }
        )
    return {
        "format": 1,
        "model": "analytic",
        "prunable_params": sum(layer["params"] for layer in layers),
        "layers": layers,
    }


def write_profile(path: Path, data: dict[str, Any] | None = None) -> Path:
    path.write_text(json.dumps(data if data is not None else analytic_profile()))
    return path
