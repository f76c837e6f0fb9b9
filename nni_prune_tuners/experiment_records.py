"""Read a finished or running NNI experiment's records: its config and every trial it ran.

NNI keeps every trial's parameters and metrics in the experiment's own SQLite database, so a
stopped experiment is read there instead of through the REST API of a running one; its folder is
found through nnictl's experiment registry (``~/nni-experiments/.experiment``), or given
directly. ``export`` and the demo read experiments here.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        """The final ``default`` metric (or the plain final number); None unless finite."""
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
    """The experiment's records cannot be read, or the export cannot be written."""



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
    """NNI records a parameter id as a number, a string, or nothing for a trial without one."""
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


def ranked_trials(trials: list[TrialRecord], *, maximize: bool = True) -> list[TrialRecord]:
    """The succeeded trials with a finite final ``default`` metric, best first (ties keep their
    order)."""
    sign = 1.0 if maximize else -1.0
    scored = [t for t in trials if t.status == "SUCCEEDED" and t.score is not None]
    return sorted(scored, key=lambda t: -sign * (t.score or 0.0))


def best_trial(trials: list[TrialRecord], *, maximize: bool = True) -> TrialRecord:
    """The succeeded trial with the best finite final ``default`` metric."""
    ranked = ranked_trials(trials, maximize=maximize)
    if not ranked:
        raise ExportError("the experiment has no succeeded trial with a final metric")
    return ranked[0]


def latency_ratio(trial: TrialRecord) -> float | None:
    """The trial's measured latency against the dense model's (the final metric's
    ``latency_ratio``, channel trials of the reference trial); None when it has none."""
    value = trial.final.get("latency_ratio") if isinstance(trial.final, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def best_faster_trial(trials: list[TrialRecord], *, maximize: bool = True
                      ) -> tuple[TrialRecord, list[TrialRecord]]:
    """The best trial not measured at or above the dense model's latency, and the better-scoring
    trials passed over for that: a pruned model that is not faster is nothing to deploy. Trials
    that report no ``latency_ratio`` (Level, AGP, other trials) count as faster.

    Raises:
        ExportError: when no trial succeeded, or every one is at or above dense latency.
    """
    ranked = ranked_trials(trials, maximize=maximize)
    if not ranked:
        raise ExportError("the experiment has no succeeded trial with a final metric")
    for index, trial in enumerate(ranked):
        ratio = latency_ratio(trial)
        if ratio is None or ratio < 1.0:
            return trial, ranked[:index]
    fastest = min(ranked, key=lambda t: latency_ratio(t) or 0.0)
    raise ExportError(
        f"every succeeded trial ran at or above the dense model's latency (latency_ratio >= 1; "
        f"the fastest, trial {fastest.trial_id}, at {latency_ratio(fastest):.3f}): nothing "
        f"faster to export; prune more (a higher target_sparsity) or use weight_by: latency")
