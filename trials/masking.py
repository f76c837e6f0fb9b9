"""Level and AGP masks for the reference trial: re-exported from :mod:`nni_prune_tuners.trial.masking`
(and the layers they prune, from :mod:`nni_prune_tuners.trial.layers`).

The mask maths lives in the installable ``nni_prune_tuners.trial`` subpackage so that user trials
get it from ``pip install nni-prune-tuners[trial]``; this module keeps the ``trials.masking`` names
that the trial, the benchmarks and the tests import.
"""

from __future__ import annotations

from nni_prune_tuners.trial.layers import PRUNABLE_TYPES, layer_weight, prunable_layers
from nni_prune_tuners.trial.masking import (
    AgpSchedule,
    WeightMasker,
    agp_mask,
    agp_sparsity,
    level_mask,
    measured_sparsity,
    num_pruned,
)

__all__ = [
    "PRUNABLE_TYPES",
    "AgpSchedule",
    "WeightMasker",
    "agp_mask",
    "agp_sparsity",
    "layer_weight",
    "level_mask",
    "measured_sparsity",
    "num_pruned",
    "prunable_layers",
]
