"""An Optuna sampler that proposes the layer-sparsity block of each branch with the allocation model.

Everything that is not a layer sparsity (the branch choice, the learning rate, ...) is delegated to
the wrapped sampler (PruneTPE's TPE). When a trial asks for the first layer sparsity of a branch,
the whole block is proposed at once from the trials of that branch (:mod:`nni_prune_tuners.allocation`):

- finished trials are the data; early-stopped or failed trials (PRUNED) enter at the worst value
  seen, as TPE ranks them below every finished trial;
- running trials enter at the mean value seen (a constant liar), and every proposal is a fresh
  posterior draw, so simultaneous suggestions differ;
- each proposal is global (the budget optimum of a posterior draw) or local (the same inside a
  trust region around the best configuration found so far; the warm starts make one from the
  start), chosen by Thompson sampling over how often each kind has scored at least the median of
  the branch's finished trials, so the kind that pays off gets most proposals (on a ResNet,
  where most global proposals score at chance, the local one). A branch whose best is behind
  another branch's gets global proposals only: local moves from its poor incumbent would climb
  too slowly to overtake;
- with ``few_layer_moves`` (``allocation: local``), every proposal after the warm starts is a
  local move that changes a few layers (:func:`~.moves.few_layer_move`), except in a branch
  behind another: on a network that one over-pruned layer breaks, global proposals score at
  chance, and the model's local optimum moves every layer at once;
- a proposal equal (within 1e-6 per value) to a finished or running one is drawn again, then
  perturbed: no trial is spent on a repeat.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState
from threadpoolctl import threadpool_limits

from nni_prune_tuners.allocation.model import Posterior, Prior, fit
from nni_prune_tuners.allocation.moves import (
    MOVES,
    TrustRegion,
    choose_move,
    few_layer_move,
    is_repeat,
    perturb,
    propose,
)

if TYPE_CHECKING:
    from nni_prune_tuners.budget import Budget
    from nni_prune_tuners.constraint import Branch

_logger = logging.getLogger(__name__)

#: Fresh posterior draws tried before a repeat is perturbed instead.
_REDRAWS = 8
#: Perturbations tried after that: a budget that leaves one allocation (every layer but one
#: pinned) repeats forever, and the tuner then decides what to propose again.
_PERTURBATIONS = 8
#: Finished trials before the branch floor applies.
_MIN_FOR_FLOOR = 20


@dataclass(frozen=True)
class SparsityBlock:
    """The layer sparsities of one branch, by Optuna name, the budget they share and the
    model's terms.

    Attributes:
        choices: ``{choice parameter: option index}`` that selects the branch.
        names: Optuna names of the layer sparsities, in the order of ``budget``'s arrays.
        budget: bounds and target.
        terms: the sensitivity curves and the proxy, where the branch has them.
    """

    choices: Mapping[str, int]
    names: tuple[str, ...]
    budget: Budget
    terms: tuple[Prior, ...] = ()

    def selected_by(self, params: Mapping[str, Any]) -> bool:
        return all(params.get(name) == index for name, index in self.choices.items())


class AllocationSampler(BaseSampler):
    """Model-based layer-sparsity proposals inside another sampler.

    Args:
        base: The sampler for every other parameter (relative and independent).
        blocks: One block per branch that carries layer sparsities.
        seed: Seed of the model's draws.
        constant_liar: Fit running trials at the mean result seen (they still count as taken
            for deduplication either way).
        few_layer_moves: Propose only local moves of a few layers once a branch has results.
    """

    def __init__(
        self,
        base: BaseSampler,
        blocks: Sequence[SparsityBlock],
        *,
        seed: int | None = None,
        constant_liar: bool = True,
        few_layer_moves: bool = False,
    ) -> None:
        self._base = base
        self._few_layer_moves = few_layer_moves
        self._blocks = tuple(blocks)
        self._names = frozenset(name for block in self._blocks for name in block.names)
        branch_options: dict[str, set[int]] = {}
        for block in self._blocks:
            for name, index in block.choices.items():
                branch_options.setdefault(name, set()).add(index)
        self._branch_options = {
            name: sorted(options) for name, options in branch_options.items() if len(options) > 1
        }
        self._rng = np.random.RandomState(seed)
        self._constant_liar = constant_liar
        self._proposed: dict[int, dict[str, float]] = {}
        self._moves: dict[int, tuple[int, str]] = {}  # trial number -> (block, kind of move)
        self._regions = [TrustRegion() for _ in self._blocks]
        self._variances: dict[int, tuple[int, tuple[float, float]]] = {}
        self._finished: dict[int, dict[int, tuple[list[float] | None, TrialState, float | None]]] = {}
        self.repeats_rejected = 0

    @property
    def moves(self) -> dict[str, int]:
        """How many proposals of each kind (``global``, ``local``) this sampler made."""
        kinds = [kind for _, kind in self._moves.values()]
        return {kind: kinds.count(kind) for kind in MOVES}

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        space = self._base.infer_relative_search_space(study, trial)
        return {name: dist for name, dist in space.items() if name not in self._names}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """The base sampler's choice, except that no branch is starved of trials.

        TPE can lock onto the branch that looked best early (one prune method); a branch that
        has had fewer than ``1 / (4 * branches)`` of the finished trials is chosen instead, so
        its model keeps learning and can overtake.
        """
        params = self._base.sample_relative(study, trial, search_space)
        for name, options in self._branch_options.items():
            if name in params:
                starved = self._starved(study, name, options)
                if starved is not None and starved != params[name]:
                    _logger.info("trial %d: choosing starved option %s of %s", trial.number,
                                 starved, name)
                    params[name] = starved
        return params

    def _starved(self, study: Study, name: str, options: Sequence[int]) -> int | None:
        counts = dict.fromkeys(options, 0)
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if other.params.get(name) in counts:
                counts[other.params[name]] += 1
        total = sum(counts.values())
        option = min(counts, key=lambda o: (counts[o], o))
        return option if total >= _MIN_FOR_FLOOR and counts[option] < total / (4 * len(counts)) else None

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if param_name not in self._names:
            return self._base.sample_independent(study, trial, param_name, param_distribution)
        proposed = self._proposed.get(trial._trial_id)
        if proposed is None or param_name not in proposed:
            index = next(
                (i for i, block in enumerate(self._blocks)
                 if param_name in block.names and block.selected_by(trial.params)),
                None,
            )
            if index is None:
                return self._base.sample_independent(study, trial, param_name, param_distribution)
            # the matrices are small: one BLAS thread beats several that fight the trials (and
            # each other) for the cores, by 10x on a loaded 2-core machine
            with threadpool_limits(limits=1, user_api="blas"):
                proposed = self._propose(study, trial, index)
            self._proposed[trial._trial_id] = proposed
        return proposed[param_name]

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._proposed.pop(trial._trial_id, None)
        self._base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._base.reseed_rng()
        self._rng.seed()

    # -- the block ---------------------------------------------------------------------------

    def _propose(self, study: Study, trial: FrozenTrial, index: int) -> dict[str, float]:
        block = self._blocks[index]
        finished, scores, pending = self._history(study, trial, block)
        posterior = None
        samples = np.vstack([finished, pending]) if len(pending) else finished
        if len(scores) and self._constant_liar:
            lie = np.full(len(pending), scores.mean())
            posterior = self._fit(index, samples, np.concatenate([scores, lie]), block.terms)
        elif len(scores):
            posterior = self._fit(index, finished, scores, block.terms)
        incumbent = None
        radius = self._regions[index].radius
        if len(scores):
            best = float(scores.max())
            radius = self._regions[index].update(best)
            if best < self._best_score(study):
                move = "global"  # a branch behind another: only the model's optimum can catch up
            elif self._few_layer_moves:
                move = "local"
            else:
                move = choose_move(self._tallies(study, index, scores), self._rng)
            self._moves[trial.number] = (index, move)
            if move == "local":
                incumbent = finished[int(np.argmax(scores))]
        if incumbent is not None and self._few_layer_moves:
            candidate = few_layer_move(block.budget, block.terms, posterior, self._rng,
                                       incumbent, step=radius / 2)
        else:
            candidate = propose(block.budget, block.terms, posterior, self._rng,
                                incumbent=incumbent, radius=radius)
        rejected = 0
        while rejected < _REDRAWS + _PERTURBATIONS and is_repeat(candidate, samples):
            rejected += 1
            if rejected <= _REDRAWS:
                candidate = propose(block.budget, block.terms, posterior, self._rng)
            else:
                candidate = perturb(block.budget, candidate, self._rng)
        if rejected:
            self.repeats_rejected += rejected
            _logger.info("trial %d: %d proposals rejected as repeats (%d in all)",
                         trial.number, rejected, self.repeats_rejected)
        return dict(zip(block.names, (float(v) for v in candidate), strict=True))

    @staticmethod
    def _best_score(study: Study) -> float:
        """The best finished result of any branch, oriented so that larger is better."""
        sign = _orientation(study)
        values = [sign * t.value for t in study.get_trials(deepcopy=False,
                                                            states=(TrialState.COMPLETE,))
                  if t.value is not None]
        return max(values, default=-np.inf)

    def _tallies(
        self, study: Study, index: int, scores: np.ndarray
    ) -> dict[str, tuple[int, int]]:
        """``{kind: (successes, proposals)}`` of the block's finished proposals: a success scored
        at least the median of every finished trial of the branch (pruned ones fail).

        The median is scale-free, and every finished trial informs it; proposals made before a
        restart of the tuner are not counted.
        """
        sign = _orientation(study)
        median = float(np.median(scores))
        tallies = {kind: [0, 0] for kind in MOVES}
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                TrialState.PRUNED)):
            block, kind = self._moves.get(other.number, (None, ""))
            if block != index:
                continue
            tally = tallies[kind]
            tally[1] += 1
            tally[0] += int(other.state == TrialState.COMPLETE and other.value is not None
                            and sign * other.value >= median)
        return {kind: (successes, proposals) for kind, (successes, proposals) in tallies.items()}

    def _fit(
        self, index: int, samples: np.ndarray, values: np.ndarray,
        terms: Sequence[Prior],
    ) -> Posterior:
        """Fit, re-selecting the variances only when the data grew by a tenth since they were."""
        cached = self._variances.get(index)
        if cached is not None and len(values) <= 1.1 * cached[0] + 1:
            return fit(samples, values, variances=cached[1], terms=terms)
        posterior = fit(samples, values, terms=terms)
        self._variances[index] = (len(values), posterior.variances)
        return posterior

    def _history(
        self, study: Study, trial: FrozenTrial, block: SparsityBlock
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(finished sparsities, their scores, running sparsities)`` of the block's branch.

        Scores are oriented so that larger is better; pruned trials score the worst finished
        score (they are left out while nothing has finished).
        """
        sign = _orientation(study)
        done: list[list[float]] = []
        scores: list[float] = []
        pruned: list[list[float]] = []
        running: list[list[float]] = []
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        finished = self._finished.setdefault(id(block), {})
        for other in study.get_trials(deepcopy=False, states=states):
            if other.number == trial.number:
                continue
            entry = finished.get(other.number)
            if entry is None:
                entry = self._row(other, block)
                if other.state != TrialState.RUNNING:  # finished trials never change
                    finished[other.number] = entry
            row, state, value = entry
            if row is None:
                continue
            if state == TrialState.COMPLETE and value is not None:
                done.append(row)
                scores.append(sign * value)
            elif state == TrialState.PRUNED:
                pruned.append(row)
            elif state == TrialState.RUNNING:
                running.append(row)
        width = len(block.names)
        if scores and pruned:
            done.extend(pruned)
            scores.extend([min(scores)] * len(pruned))
        elif pruned:
            running.extend(pruned)
        return (np.array(done).reshape(-1, width), np.array(scores),
                np.array(running).reshape(-1, width))

    @staticmethod
    def _row(
        trial: FrozenTrial, block: SparsityBlock
    ) -> tuple[list[float] | None, TrialState, float | None]:
        """The block's sparsities of ``trial`` (None if it took another branch), state, value."""
        params = trial.params
        if not block.selected_by(params) or not all(name in params for name in block.names):
            return None, trial.state, None
        value = None if trial.value is None else float(trial.value)
        return [float(params[name]) for name in block.names], trial.state, value


def _orientation(study: Study) -> float:
    """1 where larger results are better, -1 where smaller are: scores are ``sign * value``."""
    return 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0


def blocks_for(branches: Sequence[Branch]) -> list[SparsityBlock]:
    """Sampler blocks from the branches of the search space (choices, parameters, budget)."""
    return [
        SparsityBlock(dict(branch.choices), tuple(p.name for p in branch.parameters),
                      branch.budget, branch.terms)
        for branch in branches
    ]

