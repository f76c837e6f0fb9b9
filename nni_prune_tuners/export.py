"""Export the best configuration of a finished NNI experiment as an NNI pruning ``config_list``.

A best trial of a ``channel`` branch (Contract 10) exports its group ratios as they are
(``"groups": {group: ratio}``) and a ``config_list`` in NNI 3.0's ``L1NormPruner`` vocabulary
(whole output channels, one dependency group per channel group), not a Level ``sparse_ratio``
per layer, which would mask scattered weights instead.

Works on stopped experiments too: it reads the experiment's own SQLite database (where NNI keeps
every trial's parameters and metrics) instead of the REST API of a running one. The experiment
folder is found through nnictl's experiment registry (``~/nni-experiments/.experiment``), or
given directly.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nni_prune_tuners.dispatcher import quiet_probe
from nni_prune_tuners.params import SPARSITY_SUFFIX
from nni_prune_tuners.profile import load_profile
from nni_prune_tuners.tuner import PruneTPETuner, WarmStart

_logger = logging.getLogger(__name__)

NNI_HOME = Path.home() / "nni-experiments"
#: How nnimanager.log records the dispatcher's kill of a trial (the assessor's decision).
_KILL = re.compile(r'received command from dispatcher: KI, "(\w+)"')


@dataclass
class TrialRecord:
    """One trial as recorded by NNI: parameters, last status, final and intermediate metrics."""

    trial_id: str
    parameters: dict[str, Any]
    status: str
    final: Any = None
    intermediates: list[Any] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        value = self.final.get("default") if isinstance(self.final, Mapping) else self.final
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return float(value)


def early_stopped(manager_log: str) -> set[str]:
    """Trials the dispatcher told NNI to kill: the assessor's decisions.

    NNI 3.0's local training service marks them ``USER_CANCELED`` (it records the early stop
    only after the trial has ended), so the kills in ``nnimanager.log`` say which they were.
    """
    return set(_KILL.findall(manager_log))


def shown_status(trial: TrialRecord, killed: set[str]) -> str:
    """The status to show: ``EARLY_STOPPED`` for a trial the assessor stopped."""
    if trial.status == "USER_CANCELED" and trial.trial_id in killed:
        return "EARLY_STOPPED"
    return trial.status


class ExportError(RuntimeError):
    """The experiment's records cannot be read, or the result cannot be written."""


def find_experiment_dir(experiment_id: str, *, nni_home: Path = NNI_HOME) -> Path:
    """The folder NNI writes experiment ``experiment_id`` to (it holds ``db/nni.sqlite``).

    A corrupt registry is named in the error (and skipped) rather than raised as a traceback:
    the experiment may still sit in the default folder.
    """
    candidates = []
    registry = nni_home / ".experiment"
    registry_problem = ""
    if registry.exists():
        try:
            experiments = json.loads(registry.read_text(encoding="utf-8"))
            if not isinstance(experiments, Mapping):
                raise ValueError(f"a JSON object was expected, got {type(experiments).__name__}")
        except (OSError, UnicodeDecodeError, ValueError) as error:
            registry_problem = f"nnictl's experiment registry {str(registry)!r} is unreadable ({error})"
            experiments = {}
        entry = experiments.get(experiment_id)
        if isinstance(entry, Mapping) and entry.get("logDir"):
            candidates.append(Path(str(entry["logDir"])) / experiment_id)
    candidates.append(nni_home / experiment_id)
    for candidate in candidates:
        if (candidate / "db" / "nni.sqlite").exists():
            if registry_problem:
                _logger.warning("warning: %s; found the experiment in %s", registry_problem, candidate)
            return candidate
    problem = f"; {registry_problem}" if registry_problem else ""
    raise ValueError(
        f"experiment {experiment_id!r} not found (looked in {[str(c) for c in candidates]})"
        f"{problem}; pass --experiment-dir"
    )


def _decode(data: str) -> Any:
    """Metric data is JSON of a JSON string (NNI dumps the trial's dump)."""
    value = json.loads(data)
    return json.loads(value) if isinstance(value, str) else value


def _parameter_id(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def assemble_trials(
    jobs: Iterable[tuple[float, str, str, str | None]],
    metrics: Iterable[tuple[float, str, Any, str, str]],
) -> list[TrialRecord]:
    """Trial records from NNI's job rows and metric rows, each trial with the parameters it ran.

    ``jobs`` are ``(time, trial id, status, hyper-parameters JSON or None)`` (a trial's last
    status wins); ``metrics`` are ``(time, trial id, parameter id, type, data)``. NNI 3.0's local
    training service can hand two trials that start together each other's parameters, so the
    parameter id a trial's *metrics* carry is the truth, not the one recorded with the job. That
    id is looked up among the jobs recorded so far, latest first, because a resumed experiment
    numbers its parameters from 0 again.
    """
    trials: dict[str, TrialRecord] = {}
    by_parameter_id: dict[int, dict[str, Any]] = {}
    rows: list[tuple[float, int, tuple[Any, ...]]] = [
        (time, 0, (trial_id, status, hyper)) for time, trial_id, status, hyper in jobs
    ]
    rows += [(time, 1, tuple(rest)) for time, *rest in metrics]
    rows.sort(key=lambda row: (row[0], row[1]))
    for _, kind_of_row, row in rows:
        if kind_of_row == 0:
            trial_id, status, hyper = row
            record = trials.setdefault(trial_id, TrialRecord(trial_id, {}, status))
            record.status = status
            if hyper and not record.parameters:
                packed = json.loads(hyper)
                record.parameters = packed.get("parameters", {})
                parameter_id = _parameter_id(packed.get("parameter_id"))
                if parameter_id is not None:
                    by_parameter_id[parameter_id] = record.parameters
            continue
        trial_id, parameter_id, kind, data = row
        reporter = trials.get(trial_id)
        if reporter is None:
            continue
        ran = _parameter_id(parameter_id)
        if ran is not None and ran in by_parameter_id:
            reporter.parameters = by_parameter_id[ran]
        if kind == "FINAL":
            reporter.final = _decode(data)
        elif kind == "PERIODICAL":
            reporter.intermediates.append(_decode(data))
    return list(trials.values())


def load_experiment(experiment_dir: Path) -> tuple[dict[str, Any], list[TrialRecord]]:
    """The experiment's config (latest revision) and its trials, in start order.

    Raises:
        ValueError: ``experiment_dir`` holds no ``db/nni.sqlite``.
        ExportError: the database is corrupt, truncated, empty or not NNI's.
    """
    database = experiment_dir / "db" / "nni.sqlite"
    if not database.is_file():
        raise ValueError(f"{str(experiment_dir)!r} is not an NNI experiment folder: it has no "
                         f"db/nni.sqlite (the folder is <experimentWorkingDirectory>/<experiment id>)")
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            row = connection.execute(
                "select params from ExperimentProfile order by revision desc limit 1"
            ).fetchone()
            config = json.loads(row[0]) if row else {}
            trials = assemble_trials(
                connection.execute(
                    "select timestamp, trialJobId, event, data from TrialJobEvent "
                    "order by timestamp, rowid"
                ).fetchall(),
                connection.execute(
                    "select timestamp, trialJobId, parameterId, type, data from MetricData "
                    "order by timestamp, sequence"
                ).fetchall(),
            )
        finally:
            connection.close()
    except sqlite3.Error as error:
        empty = " (the file is empty)" if database.stat().st_size == 0 else ""
        raise ExportError(f"NNI's database {str(database)!r} cannot be read: {error}{empty}; "
                          f"it is corrupt, truncated or not an NNI experiment database") from None
    except (ValueError, TypeError, KeyError) as error:
        raise ExportError(f"NNI's database {str(database)!r} holds a record that is not what NNI "
                          f"writes: {error}") from None
    return config, trials


def load_running(port: int) -> list[TrialRecord]:
    """The trials of the experiment whose REST server listens on loopback ``port``."""

    def get(path: str) -> Any:
        url = f"http://127.0.0.1:{port}/api/v1/nni/{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    jobs = sorted(get("trial-jobs"), key=lambda job: job.get("sequenceId", 0))
    metrics = sorted(get("metric-data"), key=lambda m: (m["timestamp"], m["sequence"]))
    return assemble_trials(
        [(j.get("startTime", 0), j["trialJobId"], j["status"],
          (j.get("hyperParameters") or [None])[0]) for j in jobs],
        [(m["timestamp"], m["trialJobId"], m["parameterId"], m["type"], m["data"])
         for m in metrics],
    )


def layer_sparsities(parameters: Mapping[str, Any]) -> tuple[str | None, dict[str, float]]:
    """The pruning method (``_name`` of the nested branch, if any) and ``{layer: sparsity}``."""
    method = None
    found: dict[str, float] = {}
    for key, value in parameters.items():
        if key.endswith(SPARSITY_SUFFIX) and isinstance(value, int | float):
            found[key[: -len(SPARSITY_SUFFIX)]] = float(value)
        elif isinstance(value, Mapping):
            inner_method, inner = layer_sparsities(value)
            method = method or inner_method or value.get("_name")
            found.update(inner)
    return method, found


def to_config_list(sparsities: Mapping[str, float]) -> list[dict[str, Any]]:
    """NNI's pruning ``config_list``: one entry per layer with its own ``sparse_ratio``.

    ``target_names: ["weight"]`` because the search pruned weights only (NNI would otherwise
    also mask biases).
    """
    return [
        {"op_names": [layer], "target_names": ["weight"], "sparse_ratio": ratio}
        for layer, ratio in sparsities.items()
    ]


#: The ``_name`` of the structured branch (Contract 10).
CHANNEL = "channel"


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
    """The PruneTPE profile of an experiment's config, relative paths under trialCodeDirectory."""
    profile = ((config.get("tuner") or {}).get("classArgs") or {}).get("profile")
    if not isinstance(profile, str):
        return None
    path = Path(profile)
    code_directory = config.get("trialCodeDirectory")
    return Path(code_directory) / path if code_directory and not path.is_absolute() else path


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


def best_trial(trials: list[TrialRecord], *, maximize: bool = True) -> TrialRecord:
    """The succeeded trial with the best finite final ``default`` metric."""
    sign = 1.0 if maximize else -1.0
    scored = [(sign * t.score, t) for t in trials if t.status == "SUCCEEDED" and t.score is not None]
    if not scored:
        raise ExportError("the experiment has no succeeded trial with a final metric")
    return max(scored, key=lambda pair: pair[0])[1]


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
    profile = class_args.get("profile")
    code_directory = config.get("trialCodeDirectory")
    if isinstance(profile, str) and code_directory and not Path(profile).is_absolute():
        class_args["profile"] = str(Path(code_directory) / profile)
    class_args.setdefault("seed", 0)  # the plan does not depend on it; drawing one logs
    try:
        with quiet_probe():
            planner = PruneTPETuner(**class_args)
            planner.update_search_space(config.get("searchSpace") or {})
    except (ValueError, OSError) as error:
        _logger.warning("cannot tell which trials were warm starts: %s", error)
        return []
    return planner.warm_starts


def warm_start_of(trial: TrialRecord, warm_starts: Iterable[WarmStart]) -> WarmStart | None:
    """The warm start ``trial`` ran, if it ran one: same branch, same layer sparsities."""
    method, sparsities = layer_sparsities(trial.parameters)
    for warm_start in warm_starts:
        if method is not None and f"={method}" not in warm_start.branch:
            continue
        if sparsities.keys() == warm_start.sparsities.keys() and all(
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


def export_best(experiment_id: str, out: Path, *, experiment_dir: Path | None = None) -> dict[str, Any]:
    """Write the best trial of an experiment as JSON holding its NNI ``config_list``, and how
    many trials ended in each status (the assessor's kills as ``EARLY_STOPPED``)."""
    folder = experiment_dir or find_experiment_dir(experiment_id)
    config, trials = load_experiment(folder)
    tuner = config.get("tuner") or {}
    mode = (tuner.get("classArgs") or {}).get("optimize_mode", "maximize")
    best = best_trial(trials, maximize=mode != "minimize")
    comparison = compare_with_warm_starts(best, trials, planned_warm_starts(config),
                                          maximize=mode != "minimize")
    manager_log = folder / "log" / "nnimanager.log"
    killed = early_stopped(manager_log.read_text(errors="replace")) if manager_log.exists() else set()
    statuses = dict(Counter(shown_status(trial, killed) for trial in trials))
    method, sparsities = layer_sparsities(best.parameters)
    if not sparsities:
        raise ExportError(f"best trial {best.trial_id} has no *_sparsity parameter: {best.parameters}")
    result: dict[str, Any] = {
        "experiment_id": experiment_id,
        "trial_id": best.trial_id,
        "method": method,
        "metric": best.final,
        "parameters": best.parameters,
    }
    if method == CHANNEL:  # group ratios of whole channels, not per-layer weight sparsities
        result["groups"] = sparsities
        result["config_list"] = channel_config_list(sparsities, channel_group_layers(config))
    else:
        result["config_list"] = to_config_list(sparsities)
    result |= {
        "trials": len(trials),
        "statuses": statuses,
        "warm_starts": comparison,
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    except OSError as error:
        raise ExportError(f"cannot write {str(out)!r}: {error.strerror or error}") from None
    _logger.info("best of %d trials (%s): %s (%s) -> %s", len(trials),
                 ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())),
                 best.trial_id, best.final, out)
    _logger.info("%s", describe_comparison(best.trial_id, comparison))
    return result
