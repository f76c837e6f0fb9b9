"""Export the best configuration of a finished NNI experiment as an NNI pruning ``config_list``.

A best trial of a ``channel`` branch (Contract 10) exports its group ratios as they are
(``"groups": {group: ratio}``) and a ``config_list`` in NNI 3.0's ``L1NormPruner`` vocabulary
(whole output channels, one dependency group per channel group), not a Level ``sparse_ratio``
per layer, which would mask scattered weights instead.

The experiment's records (works on stopped experiments too) are read by
:mod:`nni_prune_tuners.experiment_records`; the export also says which warm start, if any, the
best trial was, or what the search gained over the best of them.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nni_prune_tuners import params
from nni_prune_tuners.dispatcher import resolve_path
from nni_prune_tuners.experiment_records import (
    ExportError,
    TrialRecord,
    best_faster_trial,
    best_trial,
    early_stopped,
    find_experiment_dir,
    latency_ratio,
    load_experiment,
    load_running,
    shown_status,
)
from nni_prune_tuners.profile import load_profile
from nni_prune_tuners.warm_start import WarmStart
from nni_prune_tuners.warm_start import planned_warm_starts as plan_warm_starts

#: The record names callers (the demo) import from the command's module, beside its own.
__all__ = [
    "ExportError",
    "TrialRecord",
    "best_faster_trial",
    "best_trial",
    "branch_label",
    "channel_config_list",
    "channel_group_layers",
    "compare_with_warm_starts",
    "describe_comparison",
    "early_stopped",
    "export_best",
    "find_experiment_dir",
    "latency_ratio",
    "load_experiment",
    "load_running",
    "planned_warm_starts",
    "shown_status",
    "to_config_list",
    "warm_start_of",
]

_logger = logging.getLogger(__name__)

def to_config_list(sparsities: Mapping[str, float]) -> list[dict[str, Any]]:
    """NNI's pruning ``config_list``: one entry per layer with its own ``sparse_ratio``.

    ``target_names: ["weight"]`` because the search pruned weights only (NNI would otherwise
    also mask biases).
    """
    return [
        {"op_names": [layer], "target_names": ["weight"], "sparse_ratio": ratio}
        for layer, ratio in sparsities.items()
    ]



def channel_config_list(
    sparsities: Mapping[str, float], group_layers: Mapping[str, Sequence[str]] | None = None
) -> list[dict[str, Any]]:
    """NNI 3.0's channel-pruner ``config_list`` of a ``channel`` allocation ``{group: ratio}``.

    One entry per group: ``op_names`` are the group's layers (``group_layers[group]``; without
    it, the group's name, which is its first layer), ``sparse_ratio`` the group's ratio,
    ``granularity: "out_channel"`` (whole filters, what ``L1NormPruner`` does by default) and
    ``dependency_group_id`` the group, so NNI removes the same channels from every layer of it
    (a residual stream, a depthwise conv's producer). NNI prunes ``int(n * s)`` channels where
    ``prune_channels`` prunes ``round(n * s)``: they agree unless the fraction of ``n * s`` is at
    least one half. Groups at ratio 0 are left out (dense).
    """
    layers = group_layers or {}
    return [
        {"op_names": list(layers.get(group) or [group]), "target_names": ["weight"],
         "sparse_ratio": ratio, "granularity": "out_channel", "dependency_group_id": group}
        for group, ratio in sparsities.items() if ratio > 0
    ]


def _profile_path(config: Mapping[str, Any]) -> Path | None:
    """The PruneTPE profile of an experiment's config, resolved as the dispatcher resolves it."""
    profile = ((config.get("tuner") or {}).get("classArgs") or {}).get("profile")
    if not isinstance(profile, str):
        return None
    code_directory = config.get("trialCodeDirectory")
    return resolve_path(profile, Path(code_directory) if code_directory else None)


def channel_group_layers(config: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """``{group: its layers}`` from the experiment's profile; empty (logged) when unreadable."""
    path = _profile_path(config)
    if path is None:
        _logger.warning("no profile in the experiment's classArgs: the channel config_list names "
                        "each group by its first layer only")
        return {}
    try:
        groups = load_profile(path).channel_groups
    except (ValueError, OSError) as error:
        _logger.warning("cannot read the channel groups' layers from %s (%s): the config_list "
                        "names each group by its first layer only", path, error)
        return {}
    return {name: tuple(group.layers) for name, group in groups.items()}


#: Two allocations within this of each other in every layer are the same warm start.
_SAME_ALLOCATION = 1e-9


def planned_warm_starts(config: Mapping[str, Any]) -> list[WarmStart]:
    """The warm starts PruneTPE planned for an experiment, rebuilt from its config.

    NNI records neither which trial was a warm start nor the tuner's log in its database, but
    the plan is a pure function of the classArgs, the profile and the search space. Empty for
    another tuner; a profile that moved since the run is logged and yields nothing.
    """
    tuner = config.get("tuner") or {}
    if tuner.get("name") != "PruneTPE" and tuner.get("className") != "PruneTPETuner":
        return []
    class_args = dict(tuner.get("classArgs") or {})
    if class_args.get("target_sparsity") is None:
        return []
    code_directory = config.get("trialCodeDirectory")
    try:
        return plan_warm_starts(class_args, config.get("searchSpace") or {},
                                base=Path(code_directory) if code_directory else None)
    except (ValueError, OSError) as error:
        _logger.warning("cannot tell which trials were warm starts: %s", error)
        return []


def branch_label(parameters: Mapping[str, Any]) -> str:
    """The label of the branches a trial's parameters took, written as
    :func:`nni_prune_tuners.search_space.active_sets` writes it (``prune_method=agp``, inner
    choices after their branch as ``prune_method/agp/inner=x``; ``top level`` without any).

    A plain option of a choice that also has named ones (``x=option 1`` there) cannot be told
    without the search space, so such a trial matches no warm start rather than a wrong one.
    """

    def parts(values: Mapping[str, Any], path: str) -> Iterable[str]:
        for key, value in values.items():
            if isinstance(value, Mapping) and params.NAME_KEY in value:
                name = value[params.NAME_KEY]
                yield f"{path}{key}={name}"
                yield from parts(value, f"{path}{key}/{name}/")

    return ", ".join(parts(parameters, "")) or "top level"


def warm_start_of(trial: TrialRecord, warm_starts: Iterable[WarmStart]) -> WarmStart | None:
    """The warm start ``trial`` ran, if it ran one: the same branches, the same layer sparsities."""
    branch = branch_label(trial.parameters)
    sparsities = params.read(trial.parameters).sparsities
    for warm_start in warm_starts:
        if warm_start.branch == branch and sparsities.keys() == warm_start.sparsities.keys() and all(
            abs(sparsities[layer] - value) <= _SAME_ALLOCATION
            for layer, value in warm_start.sparsities.items()
        ):
            return warm_start
    return None


def compare_with_warm_starts(
    best: TrialRecord, trials: list[TrialRecord], warm_starts: list[WarmStart], *,
    maximize: bool = True,
) -> dict[str, Any] | None:
    """Which heuristic the best trial was, or the best warm start's trial and what the search
    gained over it (in the metric's own units, positive when the search found better)."""
    if not warm_starts:
        return None
    own = warm_start_of(best, warm_starts)
    sign = 1.0 if maximize else -1.0
    ran = [(sign * t.score, t, w) for t in trials if t.status == "SUCCEEDED" and t.score is not None
           for w in [warm_start_of(t, warm_starts)] if w is not None]
    summary: dict[str, Any] = {
        "best_is": None if own is None else {"heuristic": own.heuristic, "branch": own.branch},
        "best_warm_start": None, "gain": None,
    }
    if ran and best.score is not None:
        oriented, trial, warm_start = max(ran, key=lambda entry: entry[0])
        summary["best_warm_start"] = {"trial_id": trial.trial_id, "heuristic": warm_start.heuristic,
                                      "branch": warm_start.branch, "metric": trial.score}
        summary["gain"] = sign * best.score - oriented
    return summary


def describe_comparison(best_trial_id: str, comparison: Mapping[str, Any] | None) -> str:
    """One sentence for the log and the demo report: the heuristic, or the search's gain."""
    if comparison is None:
        return "no warm starts to compare with"
    if comparison["best_is"] is not None:
        return (f"best trial {best_trial_id} is the {comparison['best_is']['heuristic']} warm "
                f"start ({comparison['best_is']['branch']})")
    rival = comparison["best_warm_start"]
    if rival is None:
        return "no warm start finished, so none to compare with"
    return (f"the search beat the best warm start ({rival['heuristic']}, {rival['branch']}, "
            f"trial {rival['trial_id']}: {rival['metric']:.6g}) by {comparison['gain']:+.6g}")



def _config_lists(method: str | None, sparsities: dict[str, float],
                  config: Mapping[str, Any]) -> dict[str, Any]:
    """The export's ``config_list``, and a ``channel`` trial's group ratios as they are: whole
    channels, not per-layer weight sparsities."""
    if method == params.CHANNEL:
        return {"groups": sparsities,
                "config_list": channel_config_list(sparsities, channel_group_layers(config))}
    return {"config_list": to_config_list(sparsities)}


def _write(result: Mapping[str, Any], out: Path) -> None:
    """Write ``result`` as JSON; a failure is the command's one-line error, not a traceback."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    except OSError as error:
        raise ExportError(f"cannot write {str(out)!r}: {error.strerror or error}") from None


def _say_slower(best: TrialRecord, slower: Sequence[TrialRecord]) -> None:
    """One line when better-scoring trials were passed over for running no faster than dense."""
    if slower:
        _logger.warning(
            "trials %s score better than trial %s but ran at or above the dense model's latency "
            "(latency_ratio %s): not exported; trial %s is the best that is faster (%s)",
            ", ".join(t.trial_id for t in slower), best.trial_id,
            ", ".join(f"{latency_ratio(t):.3f}" for t in slower), best.trial_id,
            "latency_ratio unmeasured" if latency_ratio(best) is None
            else f"latency_ratio {latency_ratio(best):.3f}")


def export_best(experiment_id: str, out: Path, *, experiment_dir: Path | None = None) -> dict[str, Any]:
    """Write the best trial of an experiment as JSON holding its NNI ``config_list``, and how
    many trials ended in each status (the assessor's kills as ``EARLY_STOPPED``).

    A trial that measured its pruned model at or above the dense model's latency
    (``latency_ratio >= 1``) is never the best: the best faster one is, and the ones passed over
    are listed under ``slower_than_dense``."""
    folder = experiment_dir or find_experiment_dir(experiment_id)
    config, trials = load_experiment(folder)
    tuner = config.get("tuner") or {}
    maximize = (tuner.get("classArgs") or {}).get("optimize_mode", "maximize") != "minimize"
    best, slower = best_faster_trial(trials, maximize=maximize)
    _say_slower(best, slower)
    comparison = compare_with_warm_starts(best, trials, planned_warm_starts(config),
                                          maximize=maximize)
    manager_log = folder / "log" / "nnimanager.log"
    killed = early_stopped(manager_log.read_text(errors="replace")) if manager_log.exists() else set()
    statuses = dict(Counter(shown_status(trial, killed) for trial in trials))
    ran = params.read(best.parameters)
    if not ran.sparsities:
        raise ExportError(f"best trial {best.trial_id} has no *_sparsity parameter: {best.parameters}")
    result: dict[str, Any] = {
        "experiment_id": experiment_id,
        "trial_id": best.trial_id,
        "method": ran.method,
        "metric": best.final,
        "parameters": best.parameters,
        **_config_lists(ran.method, ran.sparsities, config),
        "trials": len(trials),
        "statuses": statuses,
        "warm_starts": comparison,
        "slower_than_dense": [{"trial_id": t.trial_id, "metric": t.score,
                               "latency_ratio": latency_ratio(t)} for t in slower],
    }
    _write(result, out)
    _logger.info("best of %d trials (%s): %s (%s) -> %s", len(trials),
                 ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())),
                 best.trial_id, best.final, out)
    _logger.info("%s", describe_comparison(best.trial_id, comparison))
    return result
