"""PruneTPE: Optuna's TPE behind NNI's Tuner interface, with a global-sparsity constraint.

Each suggestion is asked from an Optuna study (:mod:`~nni_prune_tuners.study`), its layer
sparsities are rescaled so that the weighted global sparsity equals ``target_sparsity``
(:mod:`~nni_prune_tuners.constraint`, Contract 3), and it is returned in exactly the shape NNI's
own TPE would send. The first suggestions are the warm starts (:mod:`~nni_prune_tuners.warm_start`:
presearch finalists, then heuristic allocations), and none repeats a configuration already
proposed (:mod:`~nni_prune_tuners.dedup`, Contract 8). Each method here is a few lines that
delegate, as in NNI's own ``TpeTuner``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import nni
import numpy as np
from nni import ClassArgsValidator
from nni.tuner import Tuner

from nni_prune_tuners import search_space as ss
from nni_prune_tuners.constraint import Branch, branches, constrain
from nni_prune_tuners.dedup import REDRAWS, Deduplicator
from nni_prune_tuners.dispatcher import experiment_code_directory, report_to_nni_manager
from nni_prune_tuners.options import parse_tuner_options
from nni_prune_tuners.study import Trial, TunerStudy
from nni_prune_tuners.warm_start import Planned, WarmStart, experiment_proxy, plan

_logger = logging.getLogger(__name__)


class PruneTPEClassArgsValidator(ClassArgsValidator):
    """Rejects bad PruneTPE classArgs with a message naming the key and value."""

    def validate_class_args(self, **kwargs: Any) -> None:
        parse_tuner_options(kwargs, base=experiment_code_directory())


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
            (:mod:`nni_prune_tuners.allocation`), ``local`` by the same model choosing
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
        self._study = TunerStudy(options, seed)
        self._rng = np.random.RandomState(seed)  # prior draws' seeds and perturbations
        self._proxy = experiment_proxy(options)
        self._parameters: tuple[ss.Parameter, ...] = ()
        self._branches: list[Branch] = []
        # parameter id -> (study generation, Optuna trial) of each running trial
        self._running: dict[int, tuple[int, Trial]] = {}
        # (parameters, score) of each finished trial, replayed when the space changes
        self._completed: list[tuple[dict[str, Any], float]] = []
        # the warm starts planned for the current space, and those not proposed yet
        self._warm_start_plan: list[Planned] = []
        self._warm_starts: list[Planned] = []
        self._dedup = Deduplicator()
        self._accept_customized_trials()

    @property
    def study(self) -> Any:
        """The Optuna study behind the tuner (for inspection and plots)."""
        return self._study.study

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

    @property
    def branches(self) -> list[Branch]:
        """The branches of the current space under the target (none without one)."""
        return list(self._branches)

    @property
    def repeats_rejected(self) -> int:
        """Candidates rejected because they repeated a configuration already proposed."""
        return self._dedup.repeats_rejected

    # -- search space ----------------------------------------------------------------------

    def update_search_space(self, search_space: Mapping[str, Any]) -> None:
        """Validate the space, check the target is feasible in every branch, plan warm starts.

        Called again mid-run (``nnictl update searchspace``), an invalid space is rejected with a
        logged error and the experiment goes on with the current one; a valid one starts a fresh
        study and replays the finished trials that fit it (the others are skipped with a logged
        reason).
        """
        try:
            parameters = ss.parse_search_space(search_space)
            found = branches(parameters, self._options, self._proxy)
        except ValueError as error:
            if not self._parameters:
                # raised in the dispatcher's worker thread alone, the error would leave the
                # experiment RUNNING with nothing running: NNI's manager never hears of it
                report_to_nni_manager(f"PruneTPE: invalid search space: {error}")
                raise
            _logger.error("rejected the new search space, keeping the current one: %s", error)
            return
        self._parameters, self._branches = parameters, found
        self._dedup.new_space(parameters)
        self._study.new_space(parameters, found, self._completed)
        self._warm_start_plan = plan(found, self._options, self._proxy)
        self._warm_starts = list(self._warm_start_plan)
        _logger.info(
            "search space with %d parameters, %d branch combinations, %d warm starts",
            len(list(ss.walk(parameters))), len(ss.active_sets(parameters)),
            len(self._warm_starts),
        )

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
        if self._dedup.exhausted:
            raise nni.NoMoreTrialError()
        repeats = 0
        for attempt in range(self._dedup.attempts):
            candidate = self._candidate(attempt)
            if candidate is None:
                continue
            trial, params = candidate
            if params in self._dedup.seen:
                repeats += 1
                self._study.fail(trial)
                continue
            return self._start(parameter_id, params, trial, repeats)
        fallback = self._dedup.fallback(parameter_id, repeats, self._study.fits)
        self._study.enqueue(fallback, nni_shaped=True)
        trial, params = self._study.ask()
        return self._start(parameter_id, params, trial, repeats)

    def _candidate(self, attempt: int) -> tuple[Trial, dict[str, Any]] | None:
        """One candidate at the target: the next warm start, TPE's, or after a few repeats a
        draw from the priors, perturbed if it still repeats; None if it cannot meet the target."""
        if not self._enqueue_warm_start() and attempt > REDRAWS:
            self._study.enqueue(self._study.prior_draw(self._rng))
        trial, params = self._study.ask()
        try:
            self._constrain(params, trial)
        except ValueError as error:
            _logger.warning("discarding a sample that cannot meet the target: %s", error)
            self._study.fail(trial)
            return None
        if params in self._dedup.seen and self._branches and attempt >= REDRAWS:
            self._constrain(params, trial, perturb=True)
        return trial, params

    def _start(self, parameter_id: int, params: dict[str, Any], trial: Trial,
               repeats: int) -> dict[str, Any]:
        self._dedup.rejected(parameter_id, repeats)
        heuristic = trial.user_attrs.get("warm_start")
        if heuristic is not None:
            _logger.info("parameter %s: the %s warm start (%s)", parameter_id, heuristic,
                         trial.user_attrs["branch"])
        self._dedup.seen.add(params)
        self._running[parameter_id] = (self._study.generation, trial)
        return params

    def _enqueue_warm_start(self) -> bool:
        """Queue the next heuristic allocation that nothing has tried yet (also after resume)."""
        while self._warm_starts:
            warm_start, candidate = self._warm_starts.pop(0)
            if not self._study.tried(candidate):
                self._study.enqueue(candidate, user_attrs={
                    "warm_start": warm_start.heuristic, "branch": warm_start.branch})
                return True
        return False

    def _constrain(self, params: dict[str, Any], trial: Trial, *, perturb: bool = False) -> None:
        """Rescale ``params``' layer sparsities in place to meet the target (Contract 3); with
        ``perturb``, a nearby allocation, still exactly at the target."""
        if self._options.target_sparsity is None:
            return
        values = constrain(params, self._parameters, self._branches,
                           rng=self._rng if perturb else None)
        if self._options.learn_from == "rescaled":
            self._study.record(trial, values)

    # -- results ---------------------------------------------------------------------------

    def receive_trial_result(
        self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any
    ) -> None:
        """Tell Optuna the result; NaN, inf or malformed metrics are told as failed."""
        score = _scalar(value)
        entry = self._running.pop(parameter_id, None)
        if entry is None:
            self._receive_unknown(parameter_id, parameters, value, score,
                                  "customized" if kwargs.get("customized") else "already ended")
            return
        generation, trial = entry
        if score is None:
            _logger.warning("trial %s reported %r: told as failed", parameter_id, value)
            if generation == self._study.generation:
                self._study.fail(trial)
            return
        self._completed.append((parameters, score))
        if generation == self._study.generation:
            self._study.tell(trial, score)
        else:
            self._study.add_finished(parameters, score, reason="from before the search space "
                                     "changed")

    def _receive_unknown(self, parameter_id: int, parameters: dict[str, Any], value: Any,
                         score: float | None, origin: str) -> None:
        """The result of a trial not running here: a customized trial, or one whose end NNI
        reported first (NNI 3.0's local training service can swap the parameters of trials
        started together, so ``trial_end`` may name a parameter id still running in the other)."""
        if score is None:
            _logger.warning("ignoring %s trial %s with metric %r", origin, parameter_id, value)
            return
        self._completed.append((parameters, score))
        self._dedup.seen.add(parameters)
        self._study.add_finished(parameters, score, reason=f"{origin} trial")

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
        if generation == self._study.generation:
            if success:
                self._study.fail(trial)
            else:
                self._study.prune(trial)
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
            if self._study.add_finished(row["parameter"], score, reason="imported"):
                self._completed.append((row["parameter"], score))
                self._dedup.seen.add(row["parameter"])
                imported += 1
        _logger.info("imported %d of %d history rows", imported, len(data))
        if imported:
            self._study.reseed(7919 * len(self._completed))


def _scalar(value: Any) -> float | None:
    """The metric NNI calls ``default`` as a finite float, or None (NNI's extract_scalar_reward)."""
    if isinstance(value, Mapping):
        value = value.get("default")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
