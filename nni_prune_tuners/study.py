"""The Optuna study behind PruneTPE: ask, tell, generations. The one place touching Optuna's
internals.

Each search space gets a generation of the study: a fresh study when the space changes mid-run
(finished trials replayed into it), the same one otherwise. The sampler is TPE (multivariate,
grouped, so that the branches of a nested ``choice`` are modelled apart), wrapped by the
allocation engine's sampler where a target gives the branches a budget. A suggestion's rescaled
sparsities are written back into the trial through Optuna's storage, so that TPE learns from
what was evaluated.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from nni_prune_tuners import search_space as ss
from nni_prune_tuners.allocation.sampler import AllocationSampler, blocks_for
from nni_prune_tuners.constraint import Branch
from nni_prune_tuners.options import TunerOptions

_logger = logging.getLogger(__name__)

Trial = optuna.trial.Trial


class TunerStudy:
    """One Optuna study per search space, seeded ``seed + generation``.

    Args:
        options: the tuner's classArgs (direction, TPE settings, allocation).
        seed: the tuner's seed.
    """

    def __init__(self, options: TunerOptions, seed: int) -> None:
        self._options = options
        self._seed = seed
        self.generation = 0
        self._parameters: tuple[ss.Parameter, ...] = ()
        self._branches: Sequence[Branch] = ()
        self._prior: optuna.Study | None = None
        self.study = self._new_study()

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        options = self._options
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            tpe = optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=options.n_startup_trials,
                multivariate=True,
                group=True,
                constant_liar=options.constant_liar,
            )
        if options.allocation == "tpe" or not self._branches:  # branches: only with a target
            return tpe
        return AllocationSampler(tpe, blocks_for(self._branches), seed=seed,
                                 constant_liar=options.constant_liar,
                                 few_layer_moves=options.allocation == "local")

    def _new_study(self) -> optuna.Study:
        direction = (optuna.study.StudyDirection.MAXIMIZE
                     if self._options.optimize_mode == "maximize"
                     else optuna.study.StudyDirection.MINIMIZE)
        self._storage = optuna.storages.InMemoryStorage()
        return optuna.create_study(storage=self._storage,
                                   sampler=self._sampler(self._seed + self.generation),
                                   direction=direction)

    def new_space(self, parameters: tuple[ss.Parameter, ...], found: Sequence[Branch],
                  finished: Sequence[tuple[Mapping[str, Any], float]]) -> None:
        """Take a new search space: a new generation replaying ``finished`` if the study has
        trials, else a sampler for the new branches."""
        self._parameters, self._branches = parameters, found
        self._prior = None
        if self.study.get_trials(deepcopy=False):
            self.generation += 1
            self.study = self._new_study()
            for params, value in finished:
                self.add_finished(params, value, reason="after the search space changed")
        else:
            self.study.sampler = self._sampler(self._seed + self.generation)

    def reseed(self, offset: int) -> None:
        """A new sampler stream: a resumed experiment re-creates the tuner with the same seed,
        and without this its random start-up would propose the first run's configurations."""
        self.study.sampler = self._sampler(self._seed + offset)

    def ask(self) -> tuple[Trial, dict[str, Any]]:
        """A new trial and its NNI-shaped parameters."""
        trial = self.study.ask()
        return trial, sample(trial, self._parameters)

    def tell(self, trial: Trial, value: float) -> None:
        self.study.tell(trial, value)

    def fail(self, trial: Trial) -> None:
        """Tell a trial as failed: a candidate not proposed (a repeat, a sample that cannot meet
        the target), a metric that is no number, a trial that ended without a result."""
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def prune(self, trial: Trial) -> None:
        """Tell a trial that was stopped or crashed as pruned: it ranks below every completed
        trial in TPE and stops counting as running for the constant liar."""
        self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)

    def enqueue(self, params: Mapping[str, Any], *, nni_shaped: bool = False,
                user_attrs: Mapping[str, Any] | None = None) -> None:
        """Make ``params`` (Optuna samples, or NNI parameters) the next trial asked."""
        samples = ss.to_samples(params, self._parameters) if nni_shaped else dict(params)
        self.study.enqueue_trial(samples, user_attrs=dict(user_attrs) if user_attrs else None)

    def record(self, trial: Trial, values: Sequence[tuple[ss.Parameter, float]]) -> None:
        """Record the values evaluated (rescaled) in place of the samples: Optuna's storage API
        is the supported way to change a running trial's parameters."""
        for parameter, value in values:
            self._storage.set_trial_param(trial._trial_id, parameter.name, value,
                                          parameter.distribution())

    def tried(self, candidate: Mapping[str, Any]) -> bool:
        """Whether a trial of this generation has every value of ``candidate`` (Optuna
        samples), within 1e-9."""
        return any(_same_params(candidate, t.params)
                   for t in self.study.get_trials(deepcopy=False))

    def prior_draw(self, rng: np.random.RandomState) -> dict[str, Any]:
        """Optuna samples drawn at random from the space's priors.

        TPE keeps proposing near its best points, so in a narrow space (a ``qnormal`` with few
        likely values) its candidates can all be repeats while unproposed values remain likely
        under the prior.
        """
        if self._prior is None:
            self._prior = optuna.create_study(
                storage=optuna.storages.InMemoryStorage(),
                # not the tuner's seed: TPE's startup trials draw that stream already
                sampler=optuna.samplers.RandomSampler(seed=int(rng.randint(2**31))))
        trial = self._prior.ask()
        sample(trial, self._parameters)
        self._prior.tell(trial, state=optuna.trial.TrialState.FAIL)
        return dict(trial.params)

    def fits(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` is a configuration of the current search space."""
        try:
            ss.to_samples(params, self._parameters)
        except (ValueError, KeyError, TypeError):
            return False
        return True

    def add_finished(self, params: Mapping[str, Any], value: float, *, reason: str) -> bool:
        """Add a finished trial to the study; False (and a logged reason) if it does not fit."""
        try:
            samples = ss.to_samples(params, self._parameters)
        except (ValueError, KeyError, TypeError) as error:
            _logger.warning("skipping %s trial %r: %s", reason, params, error)
            return False
        dists = ss.distributions(self._parameters)
        self.study.add_trial(optuna.trial.create_trial(
            params=samples, distributions={name: dists[name] for name in samples}, value=value))
        return True


def _same_params(candidate: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    return all(
        name in params and math.isclose(float(params[name]), float(value), abs_tol=1e-9)
        for name, value in candidate.items()
    )


def sample(trial: optuna.Trial, parameters: Sequence[ss.Parameter]) -> dict[str, Any]:
    """Ask ``trial`` for the parameters of one configuration, returned NNI-shaped."""
    result: dict[str, Any] = {}
    for parameter in parameters:
        raw = _suggest(trial, parameter.name, parameter.distribution())
        branch = parameter.branches[raw] if parameter.type == "choice" else None
        if branch is None:
            result[parameter.key] = parameter.to_value(raw)
        else:
            result[parameter.key] = {"_name": branch.name, **sample(trial, branch.parameters)}
    return result


def _suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    """Optuna's public ``suggest_*`` call for ``distribution``."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high)
    assert isinstance(distribution, FloatDistribution)
    return trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
