"""The proxy search of ``presearch``: PruneTPE's allocation engine against one-shot scores.

:func:`search` asks a real :class:`~nni_prune_tuners.tuner.PruneTPETuner` for allocations of the
Level branch (:func:`level_space`), scores each one-shot (Level masks on the dense weights,
BatchNorm re-estimated, no training), tells the tuner, and :func:`proxy_field` writes Contract 9's
``proxy`` field with a few diverse :func:`select_finalists`. The command line is
:mod:`nni_prune_tuners.trial.presearch`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nni_prune_tuners.params import METHOD_KEY, SPARSITY_SUFFIX
from nni_prune_tuners.profile import ModelProfile
from nni_prune_tuners.sparsity import same_allocation
from nni_prune_tuners.trial.batchnorm import recalibrate_batchnorm
from nni_prune_tuners.trial.layers import layer_weight, prunable_layers
from nni_prune_tuners.trial.masking import level_mask
from nni_prune_tuners.trial.sensitivity import checked_score
from nni_prune_tuners.tuner import PruneTPETuner

_logger = logging.getLogger(__name__)

#: Evaluations by default: the warm starts plus about 55 proposals of the allocation model, the
#: budget of the allocation benchmarks (60 suggestions).
DEFAULT_EVALUATIONS = 60
#: Finalists kept by default, and how far apart (largest per-layer difference) they must be.
DEFAULT_FINALISTS = 3
DEFAULT_MIN_DISTANCE = 0.05


def level_space(space: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The Level branch's layer sparsities of an NNI space, as a flat space, and where they were.

    The proxy prunes with Level masks, so it searches the ``level`` option of a ``prune_method``
    choice (the seed's shape); a space without that choice is searched through its top-level
    ``*_sparsity`` keys. Other hyperparameters (a learning rate) play no part in a one-shot score
    and are left out.

    Raises:
        ValueError: the space is not an object, its ``prune_method`` has no ``level`` option, or
            no layer sparsity is left.
    """
    if not isinstance(space, Mapping):
        raise ValueError(f"the search space must be a JSON object, got {type(space).__name__}")
    flat = {key: spec for key, spec in space.items()
            if isinstance(key, str) and key.endswith(SPARSITY_SUFFIX)}
    where = "the top level"
    choice = space.get(METHOD_KEY)
    if isinstance(choice, Mapping) and choice.get("_type") == "choice":
        options = choice.get("_value")
        level = [o for o in options if isinstance(o, Mapping) and o.get("_name") == "level"] \
            if isinstance(options, list) else []
        if not level:
            raise ValueError(f"the search space's {METHOD_KEY!r} choice has no 'level' option: "
                             f"presearch scores Level masks")
        flat.update({key: spec for key, spec in level[0].items()
                     if isinstance(key, str) and key.endswith(SPARSITY_SUFFIX)})
        where = f"{METHOD_KEY}=level"
    if not flat:
        raise ValueError(f"the search space has no layer sparsity (*{SPARSITY_SUFFIX} key) in "
                         f"{where}")
    return flat, where


def select_finalists(
    evaluations: Sequence[tuple[Mapping[str, float], float]],
    *,
    count: int = DEFAULT_FINALISTS,
    min_distance: float = DEFAULT_MIN_DISTANCE,
) -> list[dict[str, float]]:
    """A few good and different allocations: the best first, then greedily the next best one
    whose largest per-layer difference from every one chosen exceeds ``min_distance``.

    Diversity matters because the proxy ranks allocations only roughly like fine-tuned accuracy:
    several near-copies of the proxy's best would spend the experiment's first trials on one
    guess. Ties keep the order of ``evaluations``. Fewer than ``count`` come back when fewer are
    that far apart.

    Raises:
        ValueError: ``count`` < 1 or ``min_distance`` < 0.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    if not (isinstance(min_distance, int | float) and min_distance >= 0):
        raise ValueError(f"min_distance must be a number >= 0, got {min_distance!r}")
    order = sorted(range(len(evaluations)), key=lambda i: -evaluations[i][1])
    chosen: list[dict[str, float]] = []
    for index in order:
        candidate = dict(evaluations[index][0])
        if all(_distance(candidate, other) > min_distance for other in chosen):
            chosen.append(candidate)
            if len(chosen) == count:
                break
    return chosen


def _distance(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Largest per-layer difference; a layer only one of them names counts as fully different."""
    if a.keys() != b.keys():
        return math.inf
    return max(abs(a[layer] - b[layer]) for layer in a)


@dataclass(frozen=True)
class Scored:
    """One evaluation: the exact allocation, its proxy score, and which warm start it was."""

    sparsities: Mapping[str, float]
    score: float
    warm_start: str | None = None


@dataclass
class Setup:
    """Everything checked before the first evaluation."""

    model: nn.Module
    evaluate: Callable[[nn.Module], float]
    calibrate: Callable[[], Iterable[torch.Tensor]] | None
    tuner: PruneTPETuner
    profile: ModelProfile
    profile_data: dict[str, Any]
    branch: str
    target: float
    weight_by: str
    evaluations: int
    finalists: int
    seed: int
    metric: str
    dense_score: float


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def one_line(error: BaseException) -> str:
    """The message on one line: PyTorch's load and shape errors span several."""
    return " | ".join(line.strip() for line in str(error).splitlines() if line.strip())


def search(setup: Setup) -> Iterator[Scored]:
    """Ask the tuner, prune, recalibrate, score, tell; one :class:`Scored` per evaluation.

    Every evaluation starts from the dense weights and BatchNorm statistics, which are back in
    the model when the generator ends, however it ends (Ctrl-C included). A non-finite score
    (a broken pruned model) is logged and told to the tuner as a failed trial.
    """
    model, tuner = setup.model, setup.tuner
    dense = copy.deepcopy(model.state_dict())
    layers = prunable_layers(model)
    warm_starts = tuner.warm_starts
    try:
        for index in range(setup.evaluations):
            params = tuner.generate_parameters(index)
            sparsities = {key[: -len(SPARSITY_SUFFIX)]: float(value)
                          for key, value in params.items()}
            model.load_state_dict(dense)
            with torch.no_grad():
                for name, value in sparsities.items():
                    weight = layer_weight(layers[name])
                    weight.mul_(level_mask(weight, value))
            if setup.calibrate is not None:
                recalibrate_batchnorm(model, setup.calibrate())
            try:
                score = checked_score(setup.evaluate, model, "the pruned model")
            except ValueError as error:
                _logger.warning("evaluation %d/%d: %s; told to the tuner as failed",
                                index + 1, setup.evaluations, error)
                tuner.trial_end(index, success=False)
                continue
            tuner.receive_trial_result(index, params, score)
            yield Scored(sparsities, score, _warm_start_name(sparsities, warm_starts))
    finally:
        model.load_state_dict(dense)


def _warm_start_name(sparsities: Mapping[str, float], warm_starts: Sequence[Any]) -> str | None:
    for warm_start in warm_starts:
        if same_allocation(warm_start.sparsities, sparsities, tolerance=1e-9):
            return str(warm_start.heuristic)
    return None


def proxy_field(
    setup: Setup, evaluated: Sequence[Scored], *, seconds: float, interrupted: bool = False
) -> dict[str, Any]:
    """The profile's ``proxy`` field (Contract 9) for the evaluations done."""
    return {
        "target": setup.target,
        "weight_by": setup.weight_by,
        "method": "level",
        "metric": setup.metric,
        "calibrated": setup.calibrate is not None,
        "seconds": round(seconds, 3),
        "evaluations": [{"sparsities": dict(e.sparsities), "score": e.score} for e in evaluated],
        "finalists": select_finalists([(e.sparsities, e.score) for e in evaluated],
                                      count=setup.finalists),
        "dense_score": setup.dense_score,
        "branch": setup.branch,
        "seed": setup.seed,
        "interrupted": interrupted,
    }
