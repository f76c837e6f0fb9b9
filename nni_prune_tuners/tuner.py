"""PruneTPE: Optuna's TPE behind NNI's Tuner interface, with a global-sparsity constraint.

Each suggestion is asked from an Optuna study (multivariate, grouped TPE, so that the branches
of a nested ``choice`` are modelled apart), its layer sparsities are rescaled so that the
weighted global sparsity equals ``target_sparsity`` (Contract 3), and it is returned in exactly
the shape NNI's own TPE would send. Before TPE's random start-up, the tuner proposes the
finalists of a one-shot presearch when the profile has them (``nni-prune-tuners presearch``,
Contract 9), then the allocations of classic heuristics (uniform, global magnitude, LAMP, ERK)
for every branch.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nni
import numpy as np
import optuna
from nni import ClassArgsValidator
from nni.tuner import Tuner

from nni_prune_tuners import allocation, flops, sparsity
from nni_prune_tuners import search_space as ss
from nni_prune_tuners.allocation_sampler import AllocationSampler, blocks_for
from nni_prune_tuners.dedup import SeenConfigurations
from nni_prune_tuners.dispatcher import experiment_code_directory, report_to_nni_manager
from nni_prune_tuners.options import TunerOptions, parse_tuner_options
from nni_prune_tuners.profile import (
    LayerProfile,
    ProxyResults,
    channels_removed,
)

_logger = logging.getLogger(__name__)

#: Candidates asked for one suggestion before a finite space is enumerated or, in an infinite
#: one, the least-proposed configuration is repeated; once that happened, ``2 * (_REDRAWS + 1)``.
_MAX_ATTEMPTS = 100
#: Repeated candidates asked again before candidates are drawn from the priors instead and
#: their layer sparsities perturbed.
_REDRAWS = 10
#: How close the proxy's target must be to the experiment's (Contract 9).
_PROXY_TARGET_TOLERANCE = 1e-9
#: A proxy difference counts when it covers this fraction of the way from the lower score to
#: the dense model's. Near-chance scores differ by a few points that say nothing (the zoo
#: MobileNet pruned one-shot to 0.95 scores 8-13% on 10 classes against 94% dense); a
#: heuristic beaten by so little, or a presearch whose scores all lie so close, is not evidence.
PROXY_MARGIN = 0.1
#: The ``_name`` of the structured method's branch (Contract 10): its keys are channel groups and
#: its target is the fraction of FLOPs removed.
CHANNEL = "channel"
#: The heuristics that apply to channel groups: the others read weight quantiles, shapes or
#: per-layer sensitivity curves, which describe unstructured pruning of one layer.
_CHANNEL_HEURISTICS = ("uniform",)


class PruneTPEClassArgsValidator(ClassArgsValidator):
    """Rejects bad PruneTPE classArgs with a message naming the key and value."""

    def validate_class_args(self, **kwargs: Any) -> None:
        parse_tuner_options(kwargs, base=experiment_code_directory())


@dataclass(frozen=True)
class _SparsityGroup:
    """What the constraint needs for one active set (one branch per nested choice)."""

    label: str
    choices: Mapping[str, int]
    parameters: tuple[ss.Parameter, ...]
    budget: allocation.Block


@dataclass(frozen=True)
class WarmStart:
    """One planned warm start: a heuristic's allocation in one branch, at the target.

    ``heuristic`` names where it comes from: a heuristic (``lamp``) or ``proxy finalist N``.
    """

    heuristic: str
    branch: str
    sparsities: Mapping[str, float]  # layer -> sparsity


class PruneTPETuner(Tuner):
    """Optuna TPE over NNI search spaces whose suggestions meet a global sparsity target.

    Args:
        optimize_mode: ``maximize`` (accuracy, the default) or ``minimize``.
        seed: Seed of the sampler; drawn and logged when omitted, so any run can be replayed.
        target_sparsity: Global sparsity every suggestion is rescaled to; ``None`` turns the
            tuner into a plain TPE over NNI spaces.
        profile: Path of the model profile JSON (Contract 4).
        layer_params: ``{layer: weight count}``, a profile-free alternative (uniform warm start
            only).
        weight_by: Weigh layers by ``params`` (default) or ``flops``; ``latency``: in
            ``channel`` branches, the target is the fraction of the profile's measured latency
            removed (``profile --latency``) instead of the FLOPs.
        sparsity_scope: ``searched`` (default): the target holds over the searched layers;
            ``model``: over every prunable layer of the profile, unsearched ones dense.
        warm_start: Heuristic allocations tried first for every branch; default: all that the
            profile supports.
        proxy: Use the profile's ``proxy`` field (``nni-prune-tuners presearch``) when it was
            found at this target and weighting (default true): its finalists are proposed
            first, in every branch, a heuristic that presearch scored below every finalist is
            not proposed after them, and with ``allocation: model`` or ``local`` its
            evaluations are a term of the allocation model whose weight the trials set.
        n_startup_trials: Random trials before TPE takes over (after the warm starts).
        constant_liar: Let TPE treat running trials as bad so that concurrent suggestions
            spread out (a no-op with one trial in flight).
        learn_from: Tell TPE the ``rescaled`` sparsities actually evaluated (default) or the
            ``raw`` samples before rescaling.
        allocation: How the layer sparsities of a branch are proposed under the target:
            ``model`` (default) by the additive Bayesian allocation model
            (:mod:`nni_prune_tuners.allocation_sampler`), ``local`` by the same model choosing
            among moves of a few layers from the best allocation found (for networks that one
            over-pruned layer breaks, such as ResNets), ``tpe`` by TPE and rescaling. Every
            other parameter, the branch choice included, always comes from TPE.
    """

    def __init__(self, **class_args: Any) -> None:
        options = parse_tuner_options(class_args, base=experiment_code_directory())
        self._options = options
        seed = options.seed
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))
        _logger.info("PruneTPE seed %d, target_sparsity %s", seed, options.target_sparsity)
        self._seed = seed
        self._parameters: tuple[ss.Parameter, ...] = ()
        self._groups: list[_SparsityGroup] = []
        self._study = self._new_study(0)
        self._generation = 0
        self._running: dict[int, tuple[int, optuna.trial.Trial]] = {}
        self._completed: list[tuple[dict[str, Any], float]] = []
        self._warm_start_plan: list[tuple[WarmStart, dict[str, Any]]] = []
        self._warm_starts: list[tuple[WarmStart, dict[str, Any]]] = []
        self._seen = SeenConfigurations()
        self._repeats_rejected = 0
        self._configurations: list[dict[str, Any]] | None = None
        self._next_configuration = 0
        self._saturated = False
        self._prior: optuna.Study | None = None
        self._rng = np.random.RandomState(seed)
        self._proxy = _usable_proxy(options)
        self._finalist_floor = _finalist_floor(self._proxy)
        #: The proxy's term per (layers, bounds): branches that search the same layers within
        #: the same bounds (agp and level, usually) share one fit.
        self._proxy_terms: dict[tuple[tuple[str, ...], bytes, bytes], allocation.Prior | None] = {}
        self._finalists = self._proxy.finalists if self._proxy is not None else ()
        self._accept_customized_trials()


    @property
    def study(self) -> optuna.Study:
        """The Optuna study behind the tuner (for inspection and plots)."""
        return self._study

    @property
    def parameters(self) -> tuple[ss.Parameter, ...]:
        """The parsed search space (empty before ``update_search_space``)."""
        return self._parameters

    @property
    def pending_warm_starts(self) -> int:
        """Heuristic allocations not yet proposed."""
        return len(self._warm_starts)

    @property
    def warm_starts(self) -> list[WarmStart]:
        """Every warm start planned for the current search space, in the order proposed."""
        return [warm_start for warm_start, _ in self._warm_start_plan]

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            tpe = optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=self._options.n_startup_trials,
                multivariate=True,
                group=True,
                constant_liar=self._options.constant_liar,
            )
        if self._options.allocation == "tpe" or not self._groups:  # groups: only with a target
            return tpe
        return AllocationSampler(tpe, blocks_for(self._groups), seed=seed,
                                 constant_liar=self._options.constant_liar,
                                 few_layer_moves=self._options.allocation == "local")

    def _new_study(self, generation: int) -> optuna.Study:
        sampler = self._sampler(self._seed + generation)
        direction = (
            optuna.study.StudyDirection.MAXIMIZE
            if self._options.optimize_mode == "maximize"
            else optuna.study.StudyDirection.MINIMIZE
        )
        self._storage = optuna.storages.InMemoryStorage()
        return optuna.create_study(storage=self._storage, sampler=sampler, direction=direction)

    # -- search space ----------------------------------------------------------------------

    def update_search_space(self, search_space: Mapping[str, Any]) -> None:
        """Validate the space, check the target is feasible in every branch, plan warm starts.

        Called again mid-run (``nnictl update searchspace``), an invalid space is rejected with a
        logged error and the experiment goes on with the current one; a valid one starts a fresh
        study and replays the finished trials that fit it (the others are skipped with a logged
        reason).
        """
        try:
            parameters, groups = self._check_search_space(search_space)
        except ValueError as error:
            if not self._parameters:
                # raised in the dispatcher's worker thread alone, the error would leave the
                # experiment RUNNING with nothing running: NNI's manager never hears of it
                report_to_nni_manager(f"PruneTPE: invalid search space: {error}")
                raise
            _logger.error("rejected the new search space, keeping the current one: %s", error)
            return
        self._parameters = parameters
        self._groups = groups
        self._configurations = ss.configurations(parameters)
        self._next_configuration = 0
        self._saturated = False
        self._prior = None
        if self._study.get_trials(deepcopy=False):
            self._generation += 1
            self._study = self._new_study(self._generation)
            for params, value in self._completed:
                self._add_finished(params, value, reason="after the search space changed")
        else:
            self._study.sampler = self._sampler(self._seed + self._generation)
        finalists = [
            planned
            for index, finalist in enumerate(self._finalists, start=1)
            for group in groups
            for planned in [self._finalist_warm_start(group, index, finalist)]
            if planned is not None
        ]
        with_finalists = {warm_start.branch for warm_start, _ in finalists}
        self._warm_start_plan = finalists + [
            planned
            for heuristic in self._options.warm_start
            for group in groups
            if group.budget.flops is None or heuristic in _CHANNEL_HEURISTICS
            for planned in [self._warm_start(group, heuristic)]
            if group.label not in with_finalists or not self._proxy_beat(planned[0])
        ]
        self._warm_starts = list(self._warm_start_plan)
        _logger.info(
            "search space with %d parameters, %d branch combinations, %d warm starts",
            len(list(ss.walk(parameters))), len(ss.active_sets(parameters)),
            len(self._warm_starts),
        )

    def _check_search_space(
        self, search_space: Any
    ) -> tuple[tuple[ss.Parameter, ...], list[_SparsityGroup]]:
        """The parsed space and its sparsity groups; ValueError naming what is wrong."""
        parameters = ss.parse_search_space(search_space)
        groups = self._sparsity_groups(parameters) if self._options.target_sparsity else []
        return parameters, groups

    def _sparsity_groups(self, parameters: Sequence[ss.Parameter]) -> list[_SparsityGroup]:
        options = self._options
        assert options.profile is not None and options.target_sparsity is not None
        profile = options.profile
        groups = []
        for active in ss.active_sets(parameters):
            layers = active.layer_sparsities
            if not layers:
                raise ss.SearchSpaceError(
                    f"branch {active.label!r} has no layer sparsity (*_sparsity key) to meet "
                    f"target_sparsity={options.target_sparsity}"
                )
            if _is_channel_branch(active, parameters):
                groups.append(self._channel_group(active, layers))
                continue
            if options.weight_by == "latency":
                raise ss.SearchSpaceError(
                    f"branch {active.label!r}: weight_by='latency' applies to channel branches "
                    f"only: Level and AGP masks keep every tensor its dense size, so they remove "
                    f"no latency")
            seen: set[str] = set()
            for parameter in layers:
                ss.check_layer_sparsity(parameter)
                if parameter.layer not in profile.layers:
                    raise ss.SearchSpaceError(
                        f"search space key {parameter.name!r}: layer {parameter.layer!r} is not "
                        f"in the profile; known layers: {sorted(profile.layers)}"
                    )
                if parameter.layer in seen:
                    raise ss.SearchSpaceError(
                        f"branch {active.label!r} names layer {parameter.layer!r} twice"
                    )
                seen.add(parameter.layer)
            weights = np.array([profile.weight(p.layer, options.weight_by) for p in layers])
            total = float(weights.sum())
            if options.sparsity_scope == "model":
                total = sum(profile.weight(name, options.weight_by) for name in profile.layers)
            lo = np.array([p.bounds[0] for p in layers])
            hi = np.array([p.bounds[1] for p in layers])
            sparsity.check_feasible(
                options.target_sparsity, lo, hi, weights, total=total,
                where=f"branch {active.label!r}",
            )
            budget = allocation.Block(
                weights, lo, hi, total, options.target_sparsity,
                _sensitivity_prior([profile.layers[p.layer] for p in layers]),
                self._proxy_term(active.label, [p.layer for p in layers], lo, hi))
            groups.append(_SparsityGroup(active.label, active.choices, layers, budget))
        return groups

    def _channel_group(
        self, active: ss.ActiveSet, parameters: Sequence[ss.Parameter]
    ) -> _SparsityGroup:
        """A ``channel`` branch (Contract 10): one key per channel group of the profile, and the
        target as the fraction of the model's FLOPs removed (:mod:`nni_prune_tuners.flops`)."""
        options = self._options
        assert options.profile is not None and options.target_sparsity is not None
        profile = options.profile
        if not profile.channel_groups:
            raise ss.SearchSpaceError(
                f"branch {active.label!r} is a channel branch but the profile has no "
                f"channel_groups: profile the model with --methods channel (nni-prune-tuners "
                f"profile --model pkg:factory --input-shape ... --methods level,channel)"
            )
        seen: set[str] = set()
        for parameter in parameters:
            ss.check_layer_sparsity(parameter)
            group = profile.channel_groups.get(parameter.layer)
            if group is None:
                raise ss.SearchSpaceError(
                    f"search space key {parameter.name!r}: {parameter.layer!r} is not a channel "
                    f"group of the profile; known groups: {list(profile.channel_groups)}"
                )
            if parameter.layer in seen:
                raise ss.SearchSpaceError(
                    f"branch {active.label!r} names channel group {parameter.layer!r} twice")
            seen.add(parameter.layer)
            try:
                channels_removed(parameter.bounds[1], group.channels, key=f"{parameter.name} "
                                 f"upper bound")
            except ValueError as error:
                raise ss.SearchSpaceError(f"search space key {parameter.name!r}: {error}") from None
        try:
            budget = flops.ChannelBudget.from_profile(profile, [p.layer for p in parameters],
                                                      latency=options.weight_by == "latency")
        except ValueError as error:
            raise ss.SearchSpaceError(f"branch {active.label!r}: {error}") from None
        lo = np.array([p.bounds[0] for p in parameters])
        hi = np.array([p.bounds[1] for p in parameters])
        flops.check_feasible(options.target_sparsity, lo, hi, budget,
                             where=f"branch {active.label!r}")
        if profile.latency is not None and options.weight_by == "latency":
            measured = profile.latency
            _logger.info(
                "branch %s: target_sparsity=%s is the fraction of latency removed by the "
                "profile's latency model (device %s, %s threads, batch %s; fixed %.3f, FLOPs "
                "%.3f, outputs %.3f of the dense time; its mean error on %s timed allocations "
                "%s)", active.label, options.target_sparsity, measured.device, measured.threads,
                measured.batch, measured.fixed, measured.per_flops, measured.per_outputs,
                measured.allocations, measured.mean_error)
        _logger.info(
            "branch %s: target_sparsity=%s is the fraction of %s removed over the profile's %d "
            "prunable layers (sparsity_scope does not apply to channel groups); the trial "
            "removes whole channels, so what it removes differs from the target by at most %.4f "
            "(half a channel per group); warm starts: %s only",
            active.label, options.target_sparsity, budget.measure, len(profile.layers),
            flops.rounding_bound(budget), ", ".join(_CHANNEL_HEURISTICS))
        skipped = [h for h in options.warm_start if h not in _CHANNEL_HEURISTICS]
        if skipped:
            _logger.info("branch %s: warm starts %s do not apply to channel groups (they read "
                         "weight quantiles, shapes or per-layer sensitivity curves): skipped there",
                         active.label, skipped)
        if self._proxy is not None:
            _logger.info("branch %s: the profile's proxy results (presearch, method %r) rank "
                         "per-layer sparsities, not channel groups: not used in this branch",
                         active.label, self._proxy.method)
        weights = budget.gradient(np.zeros(len(parameters)))
        block = allocation.Block(weights, lo, hi, 1.0, options.target_sparsity, flops=budget)
        return _SparsityGroup(active.label, active.choices, tuple(parameters), block)

    def _proxy_term(
        self, branch: str, layers: Sequence[str], lo: np.ndarray, hi: np.ndarray
    ) -> allocation.Prior | None:
        """The presearch evaluations as a term of the branch's allocation model (a second
        fidelity), or None: no usable proxy, ``allocation: tpe``, or evaluations that do not
        cover the branch's layers."""
        proxy = self._proxy
        if proxy is None or self._options.allocation == "tpe" or not proxy.evaluations:
            return None
        rows = [[evaluation.sparsities.get(layer) for layer in layers]
                for evaluation in proxy.evaluations]
        if any(value is None for row in rows for value in row):
            _logger.info("branch %s: the proxy evaluations do not cover its layers; the "
                         "allocation model goes without them", branch)
            return None
        key = (tuple(layers), np.asarray(lo, dtype=np.float64).tobytes(),
               np.asarray(hi, dtype=np.float64).tobytes())
        if key not in self._proxy_terms:
            self._proxy_terms[key] = allocation.proxy_term(
                np.array(rows, dtype=np.float64),
                np.array([e.score for e in proxy.evaluations]), lo, hi)
        term = self._proxy_terms[key]
        if term is None:
            _logger.info("branch %s: the proxy's %d evaluations are flat; the allocation model "
                         "goes without them", branch, len(rows))
        else:
            _logger.info("branch %s: the proxy's %d evaluations are a term of the allocation "
                         "model; the trials set its weight", branch, len(rows))
        return term

    def _warm_start(
        self, group: _SparsityGroup, heuristic: str
    ) -> tuple[WarmStart, dict[str, Any]]:
        """One heuristic in one branch, and its Optuna parameters (choices + layer sparsities)."""
        options = self._options
        assert options.profile is not None and options.target_sparsity is not None
        layers = [options.profile.layers[p.layer] for p in group.parameters]
        # heuristics prune a share of the *weights*; the rescaling below then meets the target
        # as the constraint defines it (FLOPs weighting, model scope, bounds)
        budget = group.budget
        if budget.flops is not None:  # a channel branch: the common ratio that meets the target
            assert heuristic in _CHANNEL_HEURISTICS
            return _planned(heuristic, group, [float(v) for v in flops.uniform_ratio(
                budget.lo, budget.hi, budget.flops, budget.target)])
        share = _weight_share(budget)
        if heuristic == "sensitivity":
            raw = allocation.sensitivity_allocation(budget)
        elif heuristic == "uniform":
            raw = np.full(len(layers), share)
        elif heuristic == "erk":
            raw = sparsity.erk_allocation([layer.shape or (layer.params,) for layer in layers],
                                          share)
        else:
            field = "magnitude_quantiles" if heuristic == "global_magnitude" else "lamp_quantiles"
            raw = sparsity.threshold_allocation(
                [getattr(layer, field) for layer in layers], [layer.params for layer in layers],
                share,
            )
        values = [float(v) for v in budget.rescale(np.maximum(raw, 1e-6))]  # zero cannot scale
        return _planned(heuristic, group, values)

    def _proxy_beat(self, warm_start: WarmStart) -> bool:
        """Whether presearch scored this heuristic allocation clearly below every one of its
        finalists (``proxy_separates``): the trial it would take is better spent on the
        allocation model (logged)."""
        floor = self._finalist_floor
        if floor is None or self._proxy is None:
            return False
        own = _proxy_score(self._proxy, warm_start.sparsities)
        if own is None or not proxy_separates(floor, own, dense=self._proxy.dense_score):
            return False
        _logger.info("branch %s: the %s warm start is left out: the proxy scored it %.4g, clearly "
                     "below each of its finalists (%.4g at least)", warm_start.branch,
                     warm_start.heuristic, own, floor)
        return True

    def _finalist_warm_start(
        self, group: _SparsityGroup, index: int, finalist: Mapping[str, float]
    ) -> tuple[WarmStart, dict[str, Any]] | None:
        """A proxy finalist in one branch: as it is where it fits, else rescaled to the branch.

        A branch with other bounds, other layers (a missing one starts at the uniform share) or
        another scope gets the finalist scaled to meet its own budget; one that shares no layer
        with the finalist does not get it.
        """
        assert self._options.target_sparsity is not None
        name = f"proxy finalist {index}"
        if group.budget.flops is not None:
            return None  # said once, when the branch was checked
        layers = [p.layer for p in group.parameters]
        if not any(layer in finalist for layer in layers):
            _logger.info("the %s names none of the layers of branch %r: not proposed there",
                         name, group.label)
            return None
        budget = group.budget
        share = _weight_share(budget)
        raw = np.array([finalist.get(layer, share) for layer in layers])
        fits = (len(finalist) == len(layers)
                and bool(np.all((budget.lo <= raw) & (raw <= budget.hi)))
                and abs(sparsity.global_sparsity(raw, budget.weights, total=budget.total)
                        - budget.target) <= _PROXY_TARGET_TOLERANCE)
        values = raw if fits else budget.rescale(np.maximum(raw, 1e-6))
        return _planned(name, group, [float(v) for v in values])

    # -- suggestions -----------------------------------------------------------------------

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        """Ask Optuna, rescale the layer sparsities to the target, return NNI-shaped params.

        A candidate equal to a configuration already proposed (Contract 8) is told to Optuna as
        failed and asked again; after a few such draws the candidates are drawn from the priors
        instead and, with a target, their layer sparsities are perturbed (rescaling can pin
        samples to the same corner of the bounds). When the candidates keep repeating, a finite
        space is searched exhaustively and ``nni.NoMoreTrialError`` says it is used up, as NNI's
        own TPE does; a space with an unbounded or continuous part never ends: its least-proposed
        configuration is proposed again, and the log says so.

        Raises:
            nni.NoMoreTrialError: every configuration of a finite space was proposed.
        """
        if not self._parameters:
            raise RuntimeError("generate_parameters called before update_search_space")
        if self._configurations is not None and self._unseen_configuration() is None:
            raise nni.NoMoreTrialError()
        repeats = 0
        for attempt in range(2 * (_REDRAWS + 1) if self._saturated else _MAX_ATTEMPTS):
            if not self._enqueue_warm_start() and attempt > _REDRAWS:
                self._study.enqueue_trial(self._prior_draw())
            trial = self._study.ask()
            params = ss.sample(trial, self._parameters)
            try:
                self._constrain(params, trial)
            except ValueError as error:
                _logger.warning("discarding a sample that cannot meet the target: %s", error)
                self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            if params in self._seen and self._groups and attempt >= _REDRAWS:
                self._constrain(params, trial, perturb=True)
            if params in self._seen:
                repeats += 1
                self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            return self._start(parameter_id, params, trial, repeats)
        self._saturated = True
        return self._start_fallback(parameter_id, repeats)

    def _start(
        self, parameter_id: int, params: dict[str, Any], trial: optuna.trial.Trial, repeats: int
    ) -> dict[str, Any]:
        if repeats:
            self._repeats_rejected += repeats
            _logger.info("parameter %s: %d candidates rejected as repeats (%d in all)",
                         parameter_id, repeats, self._repeats_rejected)
        heuristic = trial.user_attrs.get("warm_start")
        if heuristic is not None:
            _logger.info("parameter %s: the %s warm start (%s)", parameter_id, heuristic,
                         trial.user_attrs["branch"])
        self._seen.add(params)
        self._running[parameter_id] = (self._generation, trial)
        return params

    def _start_fallback(self, parameter_id: int, repeats: int) -> dict[str, Any]:
        """The next unproposed configuration of a finite space, else the least-proposed one."""
        params: Mapping[str, Any] | None
        if self._configurations is not None:
            params = self._unseen_configuration()
            if params is None:
                _logger.info("all %d configurations of the search space were proposed",
                             len(self._configurations))
                raise nni.NoMoreTrialError()
        else:
            params = self._seen.least_added(self._fits)
            assert params is not None, "a repeat was rejected, so one configuration fits"
            _logger.info(
                "parameter %s: no new configuration in %d candidates; proposing again the one "
                "proposed least (%d times so far): %s",
                parameter_id, repeats, self._seen.count(params), params,
            )
        self._study.enqueue_trial(ss.to_samples(params, self._parameters))
        trial = self._study.ask()
        return self._start(parameter_id, ss.sample(trial, self._parameters), trial, repeats)

    def _unseen_configuration(self) -> dict[str, Any] | None:
        """The first configuration of the finite space not yet proposed (NNI's grid fallback)."""
        assert self._configurations is not None
        while self._next_configuration < len(self._configurations):
            params = self._configurations[self._next_configuration]
            if params not in self._seen:
                return params
            self._next_configuration += 1
        return None

    def _fits(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` is a configuration of the current search space."""
        try:
            ss.to_samples(params, self._parameters)
        except (ValueError, KeyError, TypeError):
            return False
        return True

    @property
    def repeats_rejected(self) -> int:
        """Candidates rejected because they repeated a configuration already proposed."""
        return self._repeats_rejected

    def _enqueue_warm_start(self) -> bool:
        """Queue the next heuristic allocation that nothing has tried yet (also after resume)."""
        while self._warm_starts:
            warm_start, candidate = self._warm_starts.pop(0)
            if not any(_same_params(candidate, t.params) for t in self._study.get_trials(deepcopy=False)):
                self._study.enqueue_trial(candidate, user_attrs={
                    "warm_start": warm_start.heuristic, "branch": warm_start.branch})
                return True
        return False

    def _prior_draw(self) -> dict[str, Any]:
        """Optuna samples drawn at random from the space's priors.

        TPE keeps proposing near its best points, so in a narrow space (a ``qnormal`` with few
        likely values) its candidates can all be repeats while unproposed values remain likely
        under the prior.
        """
        if self._prior is None:
            self._prior = optuna.create_study(
                storage=optuna.storages.InMemoryStorage(),
                # not ``self._seed``: TPE's startup trials draw that stream already
                sampler=optuna.samplers.RandomSampler(seed=int(self._rng.randint(2**31))))
        trial = self._prior.ask()
        ss.sample(trial, self._parameters)
        self._prior.tell(trial, state=optuna.trial.TrialState.FAIL)
        return dict(trial.params)

    def _constrain(
        self, params: dict[str, Any], trial: optuna.trial.Trial, *, perturb: bool = False
    ) -> None:
        """Rescale ``params``' layer sparsities in place to meet the target (Contract 3).

        With ``perturb``, each layer's log-density is jittered first: a nearby allocation, still
        exactly at the target.
        """
        target = self._options.target_sparsity
        if target is None:
            return
        found = ss.layer_sparsity_paths(params, self._parameters)
        names = {p.name for p, _ in found}
        group = next(g for g in self._groups if {p.name for p in g.parameters} == names)
        position = {p.name: path for p, path in found}
        raw = np.array([_get(params, position[p.name]) for p in group.parameters])
        budget = group.budget
        values = allocation.perturb(budget, raw, self._rng) if perturb else budget.rescale(raw)
        for parameter, value in zip(group.parameters, values, strict=True):
            _set(params, position[parameter.name], float(value))
            if self._options.learn_from == "rescaled":
                # Optuna's storage API is the supported way to record the value evaluated
                self._storage.set_trial_param(
                    trial._trial_id, parameter.name, float(value), parameter.distribution()
                )

    # -- results ---------------------------------------------------------------------------

    def receive_trial_result(
        self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any
    ) -> None:
        """Tell Optuna the result; NaN, inf or malformed metrics are told as failed."""
        score = _scalar(value)
        entry = self._running.pop(parameter_id, None)
        if entry is None:
            # a customized trial, or one whose end NNI reported first: NNI 3.0's local training
            # service can swap the parameters of trials started together, so ``trial_end`` may
            # name a parameter id that is still running in the other trial
            origin = "customized" if kwargs.get("customized") else "already ended"
            if score is None:
                _logger.warning("ignoring %s trial %s with metric %r", origin, parameter_id, value)
            else:
                self._completed.append((parameters, score))
                self._seen.add(parameters)
                self._add_finished(parameters, score, reason=f"{origin} trial")
            return
        generation, trial = entry
        if score is None:
            _logger.warning("trial %s reported %r: told as failed", parameter_id, value)
            if generation == self._generation:
                self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        self._completed.append((parameters, score))
        if generation == self._generation:
            self._study.tell(trial, score)
        else:
            self._add_finished(parameters, score, reason="from before the search space changed")

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        """A trial that ended without a result (killed, failed, early-stopped) is told pruned.

        Pruned trials without values rank below every completed trial in Optuna's TPE, which is
        what an early-stopped or crashing configuration deserves, and they stop counting as
        running for the constant liar.
        """
        entry = self._running.pop(parameter_id, None)
        if entry is None:
            return
        generation, trial = entry
        if generation == self._generation:
            state = optuna.trial.TrialState.PRUNED if not success else optuna.trial.TrialState.FAIL
            self._study.tell(trial, state=state)
        _logger.info("trial %s ended (success=%s) without a final result", parameter_id, success)

    def import_data(self, data: Sequence[Any]) -> None:
        """Replay finished trials (``nnictl resume``, ``nnictl experiment import``)."""
        imported = 0
        for row in data:
            if isinstance(row, str):
                row = nni.load(row)
            if not isinstance(row, Mapping) or "parameter" not in row or "value" not in row:
                _logger.warning("skipping history row without parameter and value: %r", row)
                continue
            score = _scalar(row["value"])
            if score is None:
                _logger.warning("skipping history row with metric %r", row["value"])
                continue
            if self._add_finished(row["parameter"], score, reason="imported"):
                self._completed.append((row["parameter"], score))
                self._seen.add(row["parameter"])
                imported += 1
        _logger.info("imported %d of %d history rows", imported, len(data))
        if imported:
            # a resumed experiment re-creates the tuner with the same seed: without a new stream
            # its random start-up would propose the configurations of the first run again
            self._study.sampler = self._sampler(self._seed + 7919 * len(self._completed))

    def _add_finished(self, params: Mapping[str, Any], value: float, *, reason: str) -> bool:
        """Add a finished trial to the study; False (and a logged reason) if it does not fit."""
        try:
            samples = ss.to_samples(params, self._parameters)
        except (ValueError, KeyError, TypeError) as error:
            _logger.warning("skipping %s trial %r: %s", reason, params, error)
            return False
        dists = ss.distributions(self._parameters)
        self._study.add_trial(
            optuna.trial.create_trial(
                params=samples,
                distributions={name: dists[name] for name in samples},
                value=value,
            )
        )
        return True


def _planned(
    heuristic: str, group: _SparsityGroup, values: Sequence[float]
) -> tuple[WarmStart, dict[str, Any]]:
    """A warm start of ``group`` at ``values`` and its Optuna parameters (choices + sparsities)."""
    warm_start = WarmStart(heuristic, group.label,
                           {p.layer: v for p, v in zip(group.parameters, values, strict=True)})
    return warm_start, {
        **group.choices,
        **{p.name: v for p, v in zip(group.parameters, values, strict=True)},
    }


def _is_channel_branch(active: ss.ActiveSet, parameters: Sequence[ss.Parameter]) -> bool:
    """Whether one of the branches that select ``active`` is named ``channel`` (Contract 10)."""
    choices = {p.name: p for p in ss.walk(parameters) if p.type == "choice"}
    for name, index in active.choices.items():
        branches = choices[name].branches
        branch = branches[index] if index < len(branches) else None
        if branch is not None and branch.name == CHANNEL:
            return True
    return False


def _weight_share(budget: allocation.Block) -> float:
    """The share of the branch's weights that meets its target when every layer prunes alike
    (the uniform allocation; capped below 1 so that rescaling can still move it)."""
    return min(budget.target * budget.total / float(budget.weights.sum()), 0.999)


def _usable_proxy(options: TunerOptions) -> ProxyResults | None:
    """The profile's presearch results when they were found for this experiment, else None.

    Results at another target or weighting describe a budget the experiment does not have:
    rescaled, the finalists would be neither what the proxy scored nor a heuristic, and the
    evaluations would teach the model about allocations it never proposes. Scores that all lie
    near the floor rank nothing; a single evaluation has no spread to judge, so its finalist is
    kept as a warm start (it is one trial). The log says why results are left out.
    """
    proxy = options.profile.proxy if options.profile is not None else None
    if proxy is None or options.target_sparsity is None:
        return None
    found = (f"the profile's proxy results ({len(proxy.finalists)} finalists, "
             f"{len(proxy.evaluations)} evaluations)")
    if not options.proxy:
        _logger.info("proxy: false: %s are not used", found)
        return None
    if abs(proxy.target - options.target_sparsity) > _PROXY_TARGET_TOLERANCE:
        _logger.info("ignoring %s: presearch ran at target %s, the experiment's target_sparsity "
                     "is %s", found, proxy.target, options.target_sparsity)
        return None
    if proxy.weight_by != options.weight_by:
        _logger.info("ignoring %s: presearch weighted layers by %s, the experiment's weight_by "
                     "is %s", found, proxy.weight_by, options.weight_by)
        return None
    scores = [evaluation.score for evaluation in proxy.evaluations]
    if proxy.dense_score is not None and len(scores) > 1 and not proxy_separates(
            max(scores), min(scores), dense=proxy.dense_score):
        _logger.info("ignoring %s: its scores (%.4g to %.4g) lie within %g of the way to the "
                     "dense model's %.4g, so the one-shot pruned models are all near the floor "
                     "and their ranking says nothing", found, min(scores), max(scores),
                     PROXY_MARGIN, proxy.dense_score)
        return None
    if proxy.finalists:
        _logger.info("the profile's %d proxy finalists come first among the warm starts",
                     len(proxy.finalists))
    return proxy


def proxy_separates(higher: float, lower: float, *, dense: float | None) -> bool:
    """Whether the proxy scoring ``higher`` above ``lower`` is evidence: the gap covers at least
    ``PROXY_MARGIN`` of the way from ``lower`` to the dense model's score (any positive gap when
    the dense score is unknown or not above ``lower``)."""
    gap = higher - lower
    if dense is None or dense <= lower:
        return gap > 0
    return gap > 0 and gap >= PROXY_MARGIN * (dense - lower)


def _proxy_score(proxy: ProxyResults, wanted: Mapping[str, float]) -> float | None:
    """The proxy's score of an allocation, matched to its evaluations on every layer within
    1e-6 (None: not evaluated, e.g. another branch's layers or bounds)."""
    return next((evaluation.score for evaluation in proxy.evaluations
                 if sparsity.same_allocation(evaluation.sparsities, wanted, tolerance=1e-6)),
                None)


def _finalist_floor(proxy: ProxyResults | None) -> float | None:
    """The lowest proxy score among the finalists: a heuristic scored below it was beaten by
    every one. None without finalists or when one of them is not among the evaluations."""
    if proxy is None or not proxy.finalists:
        return None
    scores = [_proxy_score(proxy, finalist) for finalist in proxy.finalists]
    found = [score for score in scores if score is not None]
    return min(found) if len(found) == len(scores) else None


def _sensitivity_prior(layers: Sequence[LayerProfile]) -> allocation.Prior | None:
    """The profile's one-shot sensitivity curves of ``layers``, if every one has them."""
    curves = [layer.sensitivity for layer in layers]
    if any(curve is None for curve in curves):
        return None
    return allocation.Prior(
        tuple(np.array(c.sparsities) for c in curves if c is not None),
        tuple(np.array([c.drop(x) for x in c.sparsities]) for c in curves if c is not None),
    )


def _scalar(value: Any) -> float | None:
    """The metric NNI calls ``default`` as a finite float, or None (NNI's extract_scalar_reward)."""
    if isinstance(value, Mapping):
        value = value.get("default")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _same_params(candidate: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    return all(
        name in params and math.isclose(float(params[name]), float(value), abs_tol=1e-9)
        for name, value in candidate.items()
    )


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
