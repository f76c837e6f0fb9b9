"""An in-process stand-in for NNI's dispatcher: one tuner, one trial function, N trials in flight.

The benchmarks compare tuners through exactly the calls NNI makes (``update_search_space``,
``generate_parameters``, ``receive_trial_result``, ``trial_end``) without nnictl, so that hundreds
of runs fit in minutes. With ``concurrency`` trials in flight the oldest finishes first, and its
replacement is asked for while the others are still running, as with ``trialConcurrency: 2``: this
is what makes a tuner's constant liar (or its lack) matter.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nni.tuner import Tuner

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """What a trial measured: the final metric's parts (Contract 5) and the layers it pruned.

    Attributes:
        accuracy: the ``default`` metric reported to the tuner.
        sparsity: the global sparsity the trial actually reached.
        method: the prune method of the chosen branch.
        layers: the layer sparsities the trial evaluated (after any in-trial rescaling).
        test_accuracy: the held-out test accuracy, where the trial measures it; the tuner never
            sees it (it scores a run's pick, not its search).
    """

    accuracy: float
    sparsity: float
    method: str
    layers: Mapping[str, float]
    test_accuracy: float | None = None


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial, in completion order."""

    parameter_id: int
    params: dict[str, Any]
    accuracy: float
    sparsity: float
    method: str
    layers: dict[str, float]
    test_accuracy: float | None = None


@dataclass
class Run:
    """The trials of one tuner run and where its time went."""

    trials: list[TrialRecord] = field(default_factory=list)
    tuner_seconds: float = 0.0
    trial_seconds: float = 0.0


def drive(
    tuner: Tuner,
    space: Mapping[str, Any],
    trial: Callable[[Mapping[str, Any]], Evaluation],
    *,
    budget: int,
    concurrency: int = 2,
) -> Run:
    """Run ``budget`` trials of ``trial`` suggested by ``tuner``, ``concurrency`` at a time.

    Raises:
        ValueError: for a budget or concurrency below 1.
    """
    if budget < 1 or concurrency < 1:
        raise ValueError(f"budget and concurrency must be >= 1, got {budget} and {concurrency}")
    run = Run()
    start = time.perf_counter()
    tuner.update_search_space(copy.deepcopy(dict(space)))
    run.tuner_seconds += time.perf_counter() - start
    running: deque[tuple[int, dict[str, Any]]] = deque()

    def ask() -> None:
        parameter_id = len(run.trials) + len(running)
        began = time.perf_counter()
        params = tuner.generate_parameters(parameter_id)
        run.tuner_seconds += time.perf_counter() - began
        running.append((parameter_id, params))

    while len(running) < min(concurrency, budget):
        ask()
    while running:
        parameter_id, params = running.popleft()
        began = time.perf_counter()
        result = trial(copy.deepcopy(params))
        run.trial_seconds += time.perf_counter() - began
        metric = {"default": result.accuracy, "sparsity": result.sparsity, "method": result.method}
        began = time.perf_counter()
        tuner.receive_trial_result(parameter_id, params, metric)
        tuner.trial_end(parameter_id, True)
        run.tuner_seconds += time.perf_counter() - began
        run.trials.append(
            TrialRecord(parameter_id, params, result.accuracy, result.sparsity, result.method,
                        dict(result.layers), result.test_accuracy)
        )
        if len(run.trials) + len(running) < budget:
            ask()
    _logger.debug("%d trials: tuner %.2f s, trials %.2f s", budget, run.tuner_seconds,
                  run.trial_seconds)
    return run
