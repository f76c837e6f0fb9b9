"""Pruning-aware NNI algorithms: the PruneTPE tuner and the PruneEarlyStop assessor.

This package never imports torch: the tuner and assessor run in NNI's dispatcher process, which
should stay light; torch lives in the trials.
"""

from __future__ import annotations

from nni_prune_tuners._version import __version__

__all__ = ["__version__"]
