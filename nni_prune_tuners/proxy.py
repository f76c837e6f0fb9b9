"""The presearch results in the profile (Contract 9) and what PruneTPE makes of them.

``nni-prune-tuners presearch`` scores allocations on a one-shot proxy and writes its evaluations
and a few diverse finalists into the profile. The tuner proposes the finalists first, leaves out a
heuristic that every finalist clearly beat (the margin rule, :func:`proxy_separates`), and makes
the evaluations a second-fidelity term of the allocation model whose weight the fine-tuned trials
set (:meth:`Proxy.term`). Results found at another target or weighting, or whose scores all lie
near the floor, are not used, and the log says why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nni_prune_tuners import sparsity
from nni_prune_tuners._json import finite_number
from nni_prune_tuners.allocation.model import Prior, proxy_term

_logger = logging.getLogger(__name__)

#: How close the proxy's target must be to the experiment's (Contract 9).
TARGET_TOLERANCE = 1e-9
#: A proxy difference counts when it covers this fraction of the way from the lower score to
#: the dense model's. Near-chance scores differ by a few points that say nothing (the zoo
#: MobileNet pruned one-shot to 0.95 scores 8-13% on 10 classes against 94% dense); a
#: heuristic beaten by so little, or a presearch whose scores all lie so close, is not evidence.
PROXY_MARGIN = 0.1


@dataclass(frozen=True)
class ProxyEvaluation:
    """One allocation scored on the one-shot proxy: ``{layer: sparsity}`` and its metric."""

    sparsities: Mapping[str, float]
    score: float


@dataclass(frozen=True)
class ProxyResults:
    """What ``nni-prune-tuners presearch`` found on a one-shot proxy (Contract 9).

    The finalists are exact allocations at ``target`` under ``weight_by``; the tuner proposes
    them first when the experiment has the same target and weighting.
    """

    target: float
    weight_by: str
    finalists: tuple[Mapping[str, float], ...]
    evaluations: tuple[ProxyEvaluation, ...] = ()
    method: str = "level"
    metric: str | None = None
    calibrated: bool | None = None
    seconds: float | None = None
    dense_score: float | None = None


def _allocation(key: str, value: Any, layers: Collection[str]) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{key} must be a non-empty object of layer: sparsity, got {value!r}")
    allocation = {}
    for layer, given in value.items():
        if layer not in layers:
            raise ValueError(f"{key} names layer {layer!r}, which is not in the profile's layers")
        if (isinstance(given, bool) or not isinstance(given, int | float)
                or not (math.isfinite(given) and 0.0 <= given < 1.0)):
            raise ValueError(f"{key}[{layer!r}] must be a number in [0, 1), got {given!r}")
        allocation[str(layer)] = float(given)
    return allocation


def parse_proxy(value: Any, layers: Collection[str]) -> ProxyResults | None:
    """The optional ``proxy`` field (Contract 9); unknown keys inside it are ignored."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"proxy must be an object, got {value!r}")
    target = value.get("target")
    if (isinstance(target, bool) or not isinstance(target, int | float)
            or not 0.0 < target < 1.0):
        raise ValueError(f"proxy.target must be a number in (0, 1), got {target!r}")
    weight_by = value.get("weight_by")
    if weight_by not in ("params", "flops"):
        raise ValueError(f"proxy.weight_by must be 'params' or 'flops', got {weight_by!r}")
    method = value.get("method", "level")
    if not isinstance(method, str):
        raise ValueError(f"proxy.method must be a string, got {method!r}")
    metric = value.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise ValueError(f"proxy.metric must be a string, got {metric!r}")
    calibrated = value.get("calibrated")
    if calibrated is not None and not isinstance(calibrated, bool):
        raise ValueError(f"proxy.calibrated must be true or false, got {calibrated!r}")
    seconds = value.get("seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                                or not math.isfinite(seconds) or seconds < 0):
        raise ValueError(f"proxy.seconds must be a number >= 0, got {seconds!r}")
    dense_score = value.get("dense_score")
    if dense_score is not None:
        dense_score = finite_number("proxy.dense_score", dense_score)
    raw_evaluations = value.get("evaluations", [])
    if not isinstance(raw_evaluations, list):
        raise ValueError(f"proxy.evaluations must be a list, got {raw_evaluations!r}")
    evaluations = []
    for index, raw in enumerate(raw_evaluations):
        where = f"proxy.evaluations[{index}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be an object with 'sparsities' and 'score', got {raw!r}")
        score = finite_number(f"{where}.score", raw.get("score"))
        evaluations.append(ProxyEvaluation(
            _allocation(f"{where}.sparsities", raw.get("sparsities"), layers), score))
    raw_finalists = value.get("finalists")
    if not isinstance(raw_finalists, list):
        raise ValueError(f"proxy.finalists must be a list of layer: sparsity objects, "
                         f"got {raw_finalists!r}")
    finalists = tuple(_allocation(f"proxy.finalists[{index}]", raw, layers)
                      for index, raw in enumerate(raw_finalists))
    return ProxyResults(
        target=float(target), weight_by=weight_by, finalists=finalists,
        evaluations=tuple(evaluations), method=method, metric=metric, calibrated=calibrated,
        seconds=None if seconds is None else float(seconds),
        dense_score=dense_score,
    )


def proxy_separates(higher: float, lower: float, *, dense: float | None) -> bool:
    """Whether the proxy scoring ``higher`` above ``lower`` is evidence: the gap covers at least
    ``PROXY_MARGIN`` of the way from ``lower`` to the dense model's score (any positive gap when
    the dense score is unknown or not above ``lower``)."""
    gap = higher - lower
    if dense is None or dense <= lower:
        return gap > 0
    return gap > 0 and gap >= PROXY_MARGIN * (dense - lower)


def usable_proxy(results: ProxyResults | None, *, target: float | None, weight_by: str,
                 enabled: bool = True) -> ProxyResults | None:
    """The profile's presearch results when they were found for this experiment, else None.

    Results at another target or weighting describe a budget the experiment does not have:
    rescaled, the finalists would be neither what the proxy scored nor a heuristic, and the
    evaluations would teach the model about allocations it never proposes. Scores that all lie
    near the floor rank nothing; a single evaluation has no spread to judge, so its finalist is
    kept as a warm start (it is one trial). The log says why results are left out.
    """
    if results is None or target is None:
        return None
    found = (f"the profile's proxy results ({len(results.finalists)} finalists, "
             f"{len(results.evaluations)} evaluations)")
    if not enabled:
        _logger.info("proxy: false: %s are not used", found)
        return None
    if abs(results.target - target) > TARGET_TOLERANCE:
        _logger.info("ignoring %s: presearch ran at target %s, the experiment's target_sparsity "
                     "is %s", found, results.target, target)
        return None
    if results.weight_by != weight_by:
        _logger.info("ignoring %s: presearch weighted layers by %s, the experiment's weight_by "
                     "is %s", found, results.weight_by, weight_by)
        return None
    scores = [evaluation.score for evaluation in results.evaluations]
    if results.dense_score is not None and len(scores) > 1 and not proxy_separates(
            max(scores), min(scores), dense=results.dense_score):
        _logger.info("ignoring %s: its scores (%.4g to %.4g) lie within %g of the way to the "
                     "dense model's %.4g, so the one-shot pruned models are all near the floor "
                     "and their ranking says nothing", found, min(scores), max(scores),
                     PROXY_MARGIN, results.dense_score)
        return None
    if results.finalists:
        _logger.info("the profile's %d proxy finalists come first among the warm starts",
                     len(results.finalists))
    return results


class Proxy:
    """The usable presearch results of one experiment: scores, finalists and model terms.

    Args:
        results: what :func:`usable_proxy` kept.
        model_terms: whether its evaluations become terms of the allocation model (not with
            ``allocation: tpe``, which has no model).
    """

    def __init__(self, results: ProxyResults, *, model_terms: bool) -> None:
        self.results = results
        self._model_terms = model_terms
        #: The term per (layers, bounds): branches that search the same layers within the same
        #: bounds (agp and level, usually) share one fit.
        self._terms: dict[tuple[tuple[str, ...], bytes, bytes], Prior | None] = {}
        self.floor = self._finalist_floor()

    @property
    def finalists(self) -> tuple[Mapping[str, float], ...]:
        return self.results.finalists

    def score(self, wanted: Mapping[str, float]) -> float | None:
        """The proxy's score of an allocation, matched to its evaluations on every layer within
        1e-6 (None: not evaluated, e.g. another branch's layers or bounds)."""
        return next((evaluation.score for evaluation in self.results.evaluations
                     if sparsity.same_allocation(evaluation.sparsities, wanted, tolerance=1e-6)),
                    None)

    def _finalist_floor(self) -> float | None:
        """The lowest proxy score among the finalists: a heuristic scored below it was beaten by
        every one. None without finalists or when one of them is not among the evaluations."""
        if not self.results.finalists:
            return None
        scores = [self.score(finalist) for finalist in self.results.finalists]
        found = [score for score in scores if score is not None]
        return min(found) if len(found) == len(scores) else None

    def beat(self, allocation: Mapping[str, float]) -> float | None:
        """The proxy's score of ``allocation`` when every finalist clearly beat it
        (:func:`proxy_separates`), else None: such a heuristic's trial is better spent on the
        allocation model."""
        if self.floor is None:
            return None
        own = self.score(allocation)
        if own is None or not proxy_separates(self.floor, own, dense=self.results.dense_score):
            return None
        return own

    def term(self, branch: str, layers: Sequence[str], lo: np.ndarray,
             hi: np.ndarray) -> Prior | None:
        """The evaluations as a term of the branch's allocation model (a second fidelity), or
        None: no model, no evaluations, or evaluations that do not cover the branch's layers."""
        evaluations = self.results.evaluations
        if not self._model_terms or not evaluations:
            return None
        rows = [[evaluation.sparsities.get(layer) for layer in layers]
                for evaluation in evaluations]
        if any(value is None for row in rows for value in row):
            _logger.info("branch %s: the proxy evaluations do not cover its layers; the "
                         "allocation model goes without them", branch)
            return None
        key = (tuple(layers), np.asarray(lo, dtype=np.float64).tobytes(),
               np.asarray(hi, dtype=np.float64).tobytes())
        if key not in self._terms:
            self._terms[key] = proxy_term(np.array(rows, dtype=np.float64),
                                          np.array([e.score for e in evaluations]), lo, hi)
        term = self._terms[key]
        if term is None:
            _logger.info("branch %s: the proxy's %d evaluations are flat; the allocation model "
                         "goes without them", branch, len(rows))
        else:
            _logger.info("branch %s: the proxy's %d evaluations are a term of the allocation "
                         "model; the trials set its weight", branch, len(rows))
        return term
