"""Check an NNI experiment config that uses PruneTPE / PruneEarlyStop before ``nnictl create``.

NNI 3.0 runs a registered algorithm's classArgs validator only for legacy configs it cannot
convert; for every current config the tuner is first built inside the dispatcher, after
``nnictl create`` has returned, and a mistake shows up as an experiment in ERROR state. This
check builds the tuner and assessor exactly as the dispatcher will, on the config's own search
space read exactly as NNI reads it, so the same error (naming the key and value) reaches the
user at once, and a config that NNI runs is never refused.

The tuner built here is a probe: its own log lines (the seed it drew, Optuna's study creation,
the search-space summary) are not shown, so that an error is the only line and the seed shown
is never mistaken for the one the experiment will draw.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from schema import SchemaError

from nni_prune_tuners import search_space as ss
from nni_prune_tuners.assessor import PruneEarlyStopClassArgsValidator
from nni_prune_tuners.upload_check import check_training_service
from nni_prune_tuners.warm_start import planned_warm_starts

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckedConfig:
    """What the check found: the resolved search space, the branches the target covers, and
    warnings about input that NNI accepts although it is not what it should be.

    ``seed`` is PruneTPE's classArgs seed; ``None`` when the tuner is not PruneTPE or draws its
    seed when the experiment starts (``dispatcher.log`` then says ``PruneTPE seed N``).
    """

    search_space: dict[str, Any]
    code_directory: Path
    branches: tuple[str, ...]
    warm_starts: int
    warnings: tuple[str, ...] = ()
    tuner: str | None = None
    seed: int | None = None


def read_search_space_file(path: Path) -> tuple[Any, str | None]:
    """The search space in ``path`` read as NNI 3.0 reads it, and a warning if it is not JSON.

    NNI's ``ExperimentConfig`` tries ``json.loads`` and falls back to ``yaml.safe_load`` (so a
    trailing comma or a YAML file runs); refusing those would refuse configs that NNI runs. The
    warning says where strict JSON fails, because YAML 1.1 reads some JSON differently (``1e-3``
    is a string to it).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"search space {str(path)!r} cannot be read: {_reason(error)}") from error
    try:
        return json.loads(text), None
    except json.JSONDecodeError as json_error:
        where = (f"{json_error.msg} at line {json_error.lineno}, column {json_error.colno}: "
                 f"{_line(text, json_error.lineno)!r}")
        try:
            space = yaml.safe_load(text)
        except yaml.YAMLError as yaml_error:
            problem = str(yaml_error).replace("\n", " ")
            raise ValueError(f"search space {str(path)!r} is neither JSON ({where}) nor YAML "
                             f"({problem})") from yaml_error
    warning = (f"search space {str(path)!r} is not strict JSON ({where}); NNI 3.0 reads it as "
               f"YAML, and so does this check")
    return space, warning


def _reason(error: Exception) -> str:
    """An OS error without the path the message already names."""
    return str(error.strerror) if isinstance(error, OSError) and error.strerror else str(error)


def _line(text: str, lineno: int) -> str:
    """Line ``lineno`` (1-based) of ``text``, to show where strict JSON fails."""
    lines = text.splitlines()
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""


def _algorithm(config: Mapping[str, Any], role: str) -> tuple[str | None, dict[str, Any]]:
    """``(name, classArgs)`` of a v2 (``name``) or legacy (``builtinTunerName``) section."""
    section = config.get(role)
    if not isinstance(section, Mapping):
        return None, {}
    name = section.get("name") or section.get("builtinTunerName") or section.get(
        "builtinAssessorName")
    class_args = section.get("classArgs")
    if class_args is None:
        return name, {}
    if not isinstance(class_args, Mapping):
        raise ValueError(f"{role} classArgs must be a mapping of option: value, got {class_args!r}")
    return name, dict(class_args)


def _read_config(path: Path) -> Mapping[str, Any]:
    """The experiment config, or a ``ValueError`` naming why it cannot be read."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"config {str(path)!r} cannot be read: {_reason(error)}") from error
    except yaml.YAMLError as error:
        problem = str(error).replace("\n", " ")
        raise ValueError(f"config {str(path)!r} is not valid YAML: {problem}") from error
    if not isinstance(config, Mapping):
        raise ValueError(f"config {str(path)!r} must be a YAML mapping, got {config!r}")
    return config


def _search_space(config: Mapping[str, Any], path: Path, *,
                  legacy: bool) -> tuple[Mapping[str, Any], list[str]]:
    """The config's search space, inline or from its file, and the warning of a file NNI reads
    as YAML."""
    base = path.resolve().parent
    warnings: list[str] = []
    if "searchSpace" in config:
        space = config["searchSpace"]
    else:
        key = "searchSpacePath" if legacy else "searchSpaceFile"
        if key not in config:
            raise ValueError(f"config {str(path)!r} has neither searchSpace nor {key}")
        space, warning = read_search_space_file(base / str(config[key]))
        if warning is not None:
            _logger.warning("warning: %s", warning)
            warnings.append(warning)
    if not isinstance(space, Mapping):
        raise ValueError(f"the search space must be a mapping of parameter: spec, got {space!r}")
    return space, warnings


def _check_tuner(name: str | None, class_args: dict[str, Any], space: Mapping[str, Any],
                 code_directory: Path) -> tuple[tuple[str, ...], int]:
    """Check PruneTPE's classArgs and space as the dispatcher will (another tuner: parse the space
    only); return the branches its target covers and how many warm starts it plans."""
    if name != "PruneTPE":
        ss.parse_search_space(dict(space))
        _logger.info("tuner %r is not PruneTPE: only the search space was checked", name)
        return (), 0
    # a relative profile resolves against the trial code directory, as in the dispatcher
    warm_starts = planned_warm_starts(class_args, dict(space), base=code_directory)
    branches: tuple[str, ...] = ()
    if class_args.get("target_sparsity") is not None:
        branches = tuple(active.label
                         for active in ss.active_sets(ss.parse_search_space(dict(space))))
    return branches, len(warm_starts)


def _check_assessor(name: str | None, class_args: Mapping[str, Any]) -> None:
    """Validate PruneEarlyStop's classArgs with its own validator, its message on one line."""
    if name != "PruneEarlyStop":
        return
    try:
        PruneEarlyStopClassArgsValidator().validate_class_args(**class_args)
    except SchemaError as error:
        message = str(error.code).strip().splitlines()[-1]
        if not message.startswith("PruneEarlyStop"):
            message = f"assessor PruneEarlyStop: {message}"
        raise ValueError(message) from None


def check_config(path: str | Path) -> CheckedConfig:
    """Validate ``path`` as NNI will use it; raise ``ValueError`` naming what is wrong."""
    path = Path(path)
    config = _read_config(path)
    legacy = "trainingServicePlatform" in config
    trial = config.get("trial") or {}
    code = trial.get("codeDir", ".") if legacy and isinstance(trial, Mapping) else config.get(
        "trialCodeDirectory", ".")
    code_directory = (path.resolve().parent / str(code)).resolve()
    space, warnings = _search_space(config, path, legacy=legacy)
    tuner_name, tuner_args = _algorithm(config, "tuner")
    branches, warm_starts = _check_tuner(tuner_name, tuner_args, space, code_directory)
    assessor_name, assessor_args = _algorithm(config, "assessor")
    _check_assessor(assessor_name, assessor_args)
    # what NNI would upload (remote and cluster platforms) and the remote platform's pitfalls
    for warning in check_training_service(config, code_directory):
        _logger.warning("warning: %s", warning)
        warnings.append(warning)
    seed = tuner_args.get("seed") if tuner_name == "PruneTPE" else None
    return CheckedConfig(dict(space), code_directory, branches, warm_starts, tuple(warnings),
                         tuner=tuner_name, seed=seed)
