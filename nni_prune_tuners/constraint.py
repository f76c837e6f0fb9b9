"""The global-sparsity constraint of a search space: each branch, its budget, and the rescale.

With a target, every combination of nested-choice branches (an active set of the space) whose
layer sparsities share one budget is a :class:`Branch`: its sparsity parameters, checked against
the profile, the budget they meet (:mod:`nni_prune_tuners.budget`; a ``channel`` branch's is a
:class:`~nni_prune_tuners.flops.ChannelBudget`, decided here once from the branch's name) and the
allocation model's terms (sensitivity curves, proxy). The tuner, ``check`` and ``export`` build
the branches here; :func:`constrain` rescales one suggestion to its branch's target (Contract 3).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from nni_prune_tuners import flops, sparsity, widths
from nni_prune_tuners import search_space as ss
from nni_prune_tuners.allocation.model import Prior, sensitivity_prior
from nni_prune_tuners.allocation.moves import perturb as perturbed
from nni_prune_tuners.budget import Budget, LinearBudget
from nni_prune_tuners.options import TunerOptions
from nni_prune_tuners.params import CHANNEL
from nni_prune_tuners.profile import ModelProfile, channels_removed
from nni_prune_tuners.proxy import Proxy

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Branch:
    """What the constraint and the allocation model need of one active set of the space.

    Attributes:
        label: which branches were taken, e.g. ``prune_method=agp``.
        choices: ``{choice parameter: option index}`` that selects it.
        parameters: its layer (or channel group) sparsities, in the order of the budget's arrays.
        budget: what they meet together.
        terms: the allocation model's terms: the sensitivity curves, then the proxy.
    """

    label: str
    choices: Mapping[str, int]
    parameters: tuple[ss.Parameter, ...]
    budget: Budget
    terms: tuple[Prior, ...] = ()

    @property
    def prior(self) -> Prior | None:
        """The profile's sensitivity curves of the branch's layers, when it has them."""
        return next((term for term in self.terms if term.metric_units), None)

    @property
    def proxy(self) -> Prior | None:
        """The presearch evaluations' term, when the branch has one."""
        return next((term for term in self.terms if not term.metric_units), None)


def branches(parameters: Sequence[ss.Parameter], options: TunerOptions,
             proxy: Proxy | None) -> list[Branch]:
    """Every branch of the space under the target (none without one).

    Raises:
        SearchSpaceError: naming the branch, key or bound that cannot meet the target.
    """
    if options.target_sparsity is None:
        return []
    assert options.profile is not None
    found = []
    for active in ss.active_sets(parameters):
        layers = active.layer_sparsities
        if not layers:
            raise ss.SearchSpaceError(
                f"branch {active.label!r} has no layer sparsity (*_sparsity key) to meet "
                f"target_sparsity={options.target_sparsity}"
            )
        if CHANNEL in active.branches:
            found.append(_channel_branch(active, layers, options, proxy))
        else:
            found.append(_linear_branch(active, layers, options, proxy))
    return found


def _linear_branch(active: ss.ActiveSet, layers: tuple[ss.Parameter, ...],
                   options: TunerOptions, proxy: Proxy | None) -> Branch:
    """A Level or AGP branch: the weighted global sparsity of Contract 3."""
    profile, target = options.profile, options.target_sparsity
    assert profile is not None and target is not None
    if options.weight_by == "latency":
        raise ss.SearchSpaceError(
            f"branch {active.label!r}: weight_by='latency' applies to channel branches only: "
            f"Level and AGP masks keep every tensor its dense size, so they remove no latency")
    _check_keys(active, layers, profile.layers, "layer",
                lambda name: f"layer {name!r} is not in the profile; known layers: "
                             f"{sorted(profile.layers)}")
    weights = np.array([profile.weight(p.layer, options.weight_by) for p in layers])
    total = float(weights.sum())
    if options.sparsity_scope == "model":
        total = sum(profile.weight(name, options.weight_by) for name in profile.layers)
    lo = np.array([p.bounds[0] for p in layers])
    hi = np.array([p.bounds[1] for p in layers])
    sparsity.check_feasible(target, lo, hi, weights, total=total,
                            where=f"branch {active.label!r}")
    prior = sensitivity_prior([profile.layers[p.layer].sensitivity for p in layers])
    term = (None if proxy is None
            else proxy.term(active.label, [p.layer for p in layers], lo, hi))
    return Branch(active.label, active.choices, layers,
                  LinearBudget(weights, lo, hi, total, target),
                  tuple(t for t in (prior, term) if t is not None))


def _check_keys(active: ss.ActiveSet, parameters: Sequence[ss.Parameter],
                known: Mapping[str, Any], kind: str, unknown: Callable[[str], str]) -> None:
    """Each sparsity a valid range naming a known layer (or group), once."""
    seen: set[str] = set()
    for parameter in parameters:
        ss.check_layer_sparsity(parameter)
        if parameter.layer not in known:
            raise ss.SearchSpaceError(
                f"search space key {parameter.name!r}: {unknown(parameter.layer)}")
        if parameter.layer in seen:
            raise ss.SearchSpaceError(
                f"branch {active.label!r} names {kind} {parameter.layer!r} twice")
        seen.add(parameter.layer)


def _channel_branch(active: ss.ActiveSet, parameters: tuple[ss.Parameter, ...],
                    options: TunerOptions, proxy: Proxy | None) -> Branch:
    """A ``channel`` branch (Contract 10): one key per channel group of the profile, and the
    target as the fraction of the model's FLOPs (or measured latency) removed."""
    profile, target = options.profile, options.target_sparsity
    assert profile is not None and target is not None
    if not profile.channel_groups:
        raise ss.SearchSpaceError(
            f"branch {active.label!r} is a channel branch but the profile has no "
            f"channel_groups: profile the model with --methods channel (nni-prune-tuners "
            f"profile --model pkg:factory --input-shape ... --methods level,channel)"
        )
    _check_keys(active, parameters, profile.channel_groups, "channel group",
                lambda name: f"{name!r} is not a channel group of the profile; known groups: "
                             f"{list(profile.channel_groups)}")
    for parameter in parameters:
        try:
            channels_removed(parameter.bounds[1], profile.channel_groups[parameter.layer].channels,
                             key=f"{parameter.name} upper bound")
        except ValueError as error:
            raise ss.SearchSpaceError(f"search space key {parameter.name!r}: {error}") from None
    groups = [p.layer for p in parameters]
    try:
        terms = (flops.latency_terms(profile, groups) if options.weight_by == "latency"
                 else flops.flops_terms(profile, groups))
    except ValueError as error:
        raise ss.SearchSpaceError(f"branch {active.label!r}: {error}") from None
    lo = np.array([p.bounds[0] for p in parameters])
    hi = np.array([p.bounds[1] for p in parameters])
    flops.check_feasible(target, lo, hi, terms, where=f"branch {active.label!r}")
    budget = _channel_budget(parameters, terms, lo, hi, target, options.channel_multiple)
    if isinstance(budget, flops.WidthBudget):
        flops.check_feasible(target, budget.snapped(lo), budget.snapped(hi), terms,
                             where=f"branch {active.label!r} with channel_multiple="
                                   f"{options.channel_multiple}")
    _describe_channel_branch(active.label, budget, options, profile, proxy)
    return Branch(active.label, active.choices, parameters, budget)


def _channel_budget(parameters: Sequence[ss.Parameter], terms: flops.ProductTerms,
                    lo: FloatArray, hi: FloatArray, target: float,
                    multiple: int) -> flops.ChannelBudget:
    """Whole channels, rounded by the trial (``channel_multiple: 1``), or each group's allowed
    kept channels, multiples of ``multiple``."""
    if multiple == 1:
        return flops.ChannelBudget(terms, lo, hi, target)
    found = []
    for parameter, channels in zip(parameters, terms.channels, strict=True):
        try:
            found.append(widths.allowed_widths(int(channels), multiple, *parameter.bounds))
        except ValueError as error:
            raise ss.SearchSpaceError(f"search space key {parameter.name!r}: {error}") from None
    return flops.WidthBudget(terms, lo, hi, target, tuple(found))


def _describe_channel_branch(label: str, budget: flops.ChannelBudget, options: TunerOptions,
                             profile: ModelProfile, proxy: Proxy | None) -> None:
    """Say what the target of a channel branch means and what does not apply to it."""
    terms = budget.terms
    heuristics = flops.ChannelBudget.heuristics
    if profile.latency is not None and options.weight_by == "latency":
        measured = profile.latency
        _logger.info(
            "branch %s: target_sparsity=%s is the fraction of latency removed by the "
            "profile's latency model (device %s, %s threads, batch %s; fixed %.3f, FLOPs "
            "%.3f, outputs %.3f of the dense time; its mean error on %s timed allocations "
            "%s)", label, options.target_sparsity, measured.device, measured.threads,
            measured.batch, measured.fixed, measured.per_flops, measured.per_outputs,
            measured.allocations, measured.mean_error)
    _logger.info(
        "branch %s: target_sparsity=%s is the fraction of %s removed over the profile's %d "
        "prunable layers (sparsity_scope does not apply to channel groups); widths are "
        "multiples of channel_multiple=%d (or a group's full width), so what the trial removes "
        "differs from the target by at most %.4f (half a step between widths per group); "
        "warm starts: %s only",
        label, options.target_sparsity, terms.measure, len(profile.layers),
        options.channel_multiple, budget.bound, ", ".join(heuristics))
    skipped = [h for h in options.warm_start if h not in heuristics]
    if skipped:
        _logger.info("branch %s: warm starts %s do not apply to channel groups (they read "
                     "weight quantiles, shapes or per-layer sensitivity curves): skipped there",
                     label, skipped)
    if proxy is not None:
        _logger.info("branch %s: the profile's proxy results (presearch, method %r) rank "
                     "per-layer sparsities, not channel groups: not used in this branch",
                     label, proxy.results.method)


def constrain(params: dict[str, Any], parameters: Sequence[ss.Parameter],
              found: Sequence[Branch], *,
              rng: np.random.RandomState | None = None) -> list[tuple[ss.Parameter, float]]:
    """Rescale ``params``' sparsities in place to meet their branch's target (Contract 3).

    With ``rng``, each layer's log-density is jittered first: a nearby allocation, still exactly
    at the target. Returns each sparsity parameter with the value it now has.

    Raises:
        ValueError: if the sampled sparsities cannot meet the target.
    """
    paths = layer_sparsity_paths(params, parameters)
    names = {p.name for p, _ in paths}
    branch = next(b for b in found if {p.name for p in b.parameters} == names)
    position = {p.name: path for p, path in paths}
    raw = np.array([_get(params, position[p.name]) for p in branch.parameters])
    values = branch.budget.rescale(raw) if rng is None else perturbed(branch.budget, raw, rng)
    for parameter, value in zip(branch.parameters, values, strict=True):
        _set(params, position[parameter.name], float(value))
    return [(parameter, float(value))
            for parameter, value in zip(branch.parameters, values, strict=True)]


def layer_sparsity_paths(
    params: Mapping[str, Any], parameters: Sequence[ss.Parameter]
) -> list[tuple[ss.Parameter, list[str]]]:
    """Each layer-sparsity parameter present in NNI ``params`` with its key path into them."""
    found: list[tuple[ss.Parameter, list[str]]] = []
    for parameter in parameters:
        value = params[parameter.key]
        if parameter.is_layer_sparsity:
            found.append((parameter, [parameter.key]))
        elif parameter.type == "choice" and isinstance(value, Mapping):
            branch = parameter.branches[parameter.to_sample(value)]
            if branch is not None:
                for inner, path in layer_sparsity_paths(value, branch.parameters):
                    found.append((inner, [parameter.key, *path]))
    return found


def _get(params: Mapping[str, Any], path: Sequence[str]) -> float:
    node: Any = params
    for key in path:
        node = node[key]
    return float(node)


def _set(params: dict[str, Any], path: Sequence[str], value: float) -> None:
    node: Any = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
