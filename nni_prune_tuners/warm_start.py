"""The plan of the first trials: proxy finalists, then the heuristics, in every branch.

Before TPE's random start-up, PruneTPE proposes the finalists of a one-shot presearch where the
profile has them (Contract 9), then the allocations of classic heuristics (uniform, global
magnitude, LAMP, ERK, sensitivity) in every branch whose budget takes them, each rescaled to the
branch's target. A heuristic that every finalist clearly beat on the proxy is left out. The tuner
queues the plan; ``check`` and ``export`` read the same plan through :func:`planned_warm_starts`
without building a tuner.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from nni_prune_tuners import search_space as ss
from nni_prune_tuners import sparsity
from nni_prune_tuners.allocation.moves import sensitivity_allocation
from nni_prune_tuners.budget import LinearBudget
from nni_prune_tuners.constraint import Branch, branches
from nni_prune_tuners.dispatcher import quiet_probe
from nni_prune_tuners.options import TunerOptions, parse_tuner_options
from nni_prune_tuners.proxy import TARGET_TOLERANCE, Proxy, usable_proxy

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class WarmStart:
    """One planned warm start: a heuristic's allocation in one branch, at the target.

    ``heuristic`` names where it comes from: a heuristic (``lamp``) or ``proxy finalist N``.
    """

    heuristic: str
    branch: str
    sparsities: Mapping[str, float]  # layer -> sparsity


#: A warm start and the Optuna parameters that propose it (the branch's choices, its sparsities).
Planned = tuple[WarmStart, dict[str, Any]]


def plan(found: Sequence[Branch], options: TunerOptions, proxy: Proxy | None) -> list[Planned]:
    """Every warm start of the branches ``found``, in the order the tuner proposes them."""
    finalists = [
        planned
        for index, finalist in enumerate(proxy.finalists if proxy else (), start=1)
        for branch in found
        for planned in [_finalist(branch, index, finalist)]
        if planned is not None
    ]
    with_finalists = {warm_start.branch for warm_start, _ in finalists}
    return finalists + [
        planned
        for heuristic in options.warm_start
        for branch in found
        if heuristic in branch.budget.heuristics
        for planned in [_planned(heuristic, branch, heuristic_allocation(heuristic, branch, options))]
        if branch.label not in with_finalists or not _beaten(planned[0], proxy)
    ]


def heuristic_allocation(heuristic: str, branch: Branch, options: TunerOptions) -> FloatArray:
    """One heuristic's allocation of a branch, rescaled to its target.

    Heuristics prune a share of the *weights*; the rescaling then meets the target as the
    constraint defines it (FLOPs weighting, model scope, bounds).
    """
    budget = branch.budget
    if heuristic == "uniform":
        return budget.uniform()
    assert isinstance(budget, LinearBudget) and options.profile is not None
    layers = [options.profile.layers[p.layer] for p in branch.parameters]
    if heuristic == "sensitivity":
        assert branch.prior is not None
        raw = sensitivity_allocation(budget, branch.prior)
    elif heuristic == "erk":
        raw = sparsity.erk_allocation([layer.shape or (layer.params,) for layer in layers],
                                      budget.share)
    else:
        field = "magnitude_quantiles" if heuristic == "global_magnitude" else "lamp_quantiles"
        raw = sparsity.threshold_allocation(
            [getattr(layer, field) for layer in layers], [layer.params for layer in layers],
            budget.share,
        )
    return budget.rescale(np.maximum(raw, 1e-6))  # zero cannot scale


def _planned(heuristic: str, branch: Branch, allocation: FloatArray) -> Planned:
    """A warm start of ``branch`` at ``allocation`` and its Optuna parameters."""
    values = [float(v) for v in allocation]
    warm_start = WarmStart(heuristic, branch.label,
                           {p.layer: v for p, v in zip(branch.parameters, values, strict=True)})
    return warm_start, {
        **branch.choices,
        **{p.name: v for p, v in zip(branch.parameters, values, strict=True)},
    }


def _beaten(warm_start: WarmStart, proxy: Proxy | None) -> bool:
    """Whether presearch scored this heuristic allocation clearly below every one of its
    finalists: the trial it would take is better spent on the allocation model (logged)."""
    own = None if proxy is None else proxy.beat(warm_start.sparsities)
    if own is None:
        return False
    _logger.info("branch %s: the %s warm start is left out: the proxy scored it %.4g, clearly "
                 "below each of its finalists (%.4g at least)", warm_start.branch,
                 warm_start.heuristic, own, proxy.floor if proxy else own)
    return True


def _finalist(branch: Branch, index: int, finalist: Mapping[str, float]) -> Planned | None:
    """A proxy finalist in one branch: as it is where it fits, else rescaled to the branch.

    A branch with other bounds, other layers (a missing one starts at the uniform share) or
    another scope gets the finalist scaled to meet its own budget; one that shares no layer with
    the finalist does not get it. Finalists are per-layer allocations: a budget of channel
    groups does not take them (said once, when the branch was built).
    """
    budget = branch.budget
    if not isinstance(budget, LinearBudget):
        return None
    name = f"proxy finalist {index}"
    layers = [p.layer for p in branch.parameters]
    if not any(layer in finalist for layer in layers):
        _logger.info("the %s names none of the layers of branch %r: not proposed there",
                     name, branch.label)
        return None
    raw = np.array([finalist.get(layer, budget.share) for layer in layers])
    fits = (len(finalist) == len(layers)
            and bool(np.all((budget.lo <= raw) & (raw <= budget.hi)))
            and abs(sparsity.global_sparsity(raw, budget.weights, total=budget.total)
                    - budget.target) <= TARGET_TOLERANCE)
    values = raw if fits else budget.rescale(np.maximum(raw, 1e-6))
    return _planned(name, branch, values)


def experiment_proxy(options: TunerOptions) -> Proxy | None:
    """The presearch results an experiment with these options uses, if any."""
    results = usable_proxy(options.profile.proxy if options.profile is not None else None,
                           target=options.target_sparsity, weight_by=options.weight_by,
                           enabled=options.proxy)
    return None if results is None else Proxy(results, model_terms=options.allocation != "tpe")


def planned_warm_starts(class_args: Mapping[str, Any], search_space: Any, *,
                        base: Path | None = None) -> list[WarmStart]:
    """The warm starts PruneTPE with these classArgs plans for ``search_space``, without
    building a tuner (``check``, ``export``); quiet but for warnings.

    Raises:
        ValueError: the classArgs or the space are invalid (the message names what).
    """
    with quiet_probe():
        options = parse_tuner_options(class_args, base=base)
        parameters = ss.parse_search_space(search_space)
        proxy = experiment_proxy(options)
        return [warm_start for warm_start, _ in
                plan(branches(parameters, options, proxy), options, proxy)]
