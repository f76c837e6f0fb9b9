"""Pruning-aware NNI algorithms: the PruneTPE tuner and the PruneEarlyStop assessor.

This package never imports torch: the tuner and assessor run in NNI's dispatcher process, which
should stay light; torch lives in the trials.
"""

from __future__ import annotations

from nni_prune_tuners._version import __version__
from nni_prune_tuners.assessor import PruneEarlyStopAssessor, PruneEarlyStopClassArgsValidator
from nni_prune_tuners.profile import ModelProfile, load_profile
from nni_prune_tuners.search_space import SearchSpaceError, load_search_space, parse_search_space
from nni_prune_tuners.sparsity import global_sparsity, rescale_to_target
from nni_prune_tuners.tuner import PruneTPEClassArgsValidator, PruneTPETuner

__all__ = [
    "ModelProfile",
    "PruneEarlyStopAssessor",
    "PruneEarlyStopClassArgsValidator",
    "PruneTPEClassArgsValidator",
    "PruneTPETuner",
    "SearchSpaceError",
    "__version__",
    "global_sparsity",
    "load_profile",
    "load_search_space",
    "parse_search_space",
    "rescale_to_target",
]
