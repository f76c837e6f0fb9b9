"""Check an NNI experiment config that uses PruneTPE / PruneEarlyStop before ``nnictl create``.

NNI 3.0 runs a registered algorithm's classArgs validator only for legacy configs it cannot
convert; for every current config the tuner is first built inside the dispatcher, after
``nnictl create`` has returned, and a mistake shows up as an experiment in ERROR state. This
check builds the tuner and assessor exactly as the dispatcher will, on the config's own search
space, so the same error (naming the key and value) reaches the user at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nni_prune_tuners import search_space as ss
from nni_prune_tuners.assessor import PruneEarlyStopClassArgsValidator
from nni_prune_tuners.tuner import PruneTPETuner, resolve_path

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckedConfig:
    """What the check found: the resolved search space and the branches the target covers."""

    search_space: dict[str, Any]
    code_directory: Path
    branches: tuple[str, ...]
    warm_starts: int


def _algorithm(section: Any) -> tuple[str | None, dict[str, Any]]:
    """``(name, classArgs)`` of a v2 (``name``) or legacy (``builtinTunerName``) section."""
    if not isinstance(section, Mapping):
        return None, {}
    name = section.get("name") or section.get("builtinTunerName") or section.get(
        "builtinAssessorName")
    return name, dict(section.get("classArgs") or {})


def check_config(path: str | Path) -> CheckedConfig:
    """Validate ``path`` as NNI will use it; raise ``ValueError`` naming what is wrong."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"config {str(path)!r} cannot be read: {error}") from error
    if not isinstance(config, Mapping):
        raise ValueError(f"config {str(path)!r} must be a YAML mapping")
    base = path.resolve().parent
    legacy = "trainingServicePlatform" in config
    trial = config.get("trial") or {}
    code = config.get("trialCodeDirectory", ".") if not legacy else trial.get("codeDir", ".")
    code_directory = (base / code).resolve()

    if "searchSpace" in config:
        space = config["searchSpace"]
    else:
        key = "searchSpacePath" if legacy else "searchSpaceFile"
        if key not in config:
            raise ValueError(f"config {str(path)!r} has neither searchSpace nor {key}")
        space_path = base / config[key]
        space = ss.decode_json(space_path.read_text(encoding="utf-8"),
                               source=f"search space {str(space_path)!r}")

    tuner_name, tuner_args = _algorithm(config.get("tuner"))
    branches: tuple[str, ...] = ()
    warm_starts = 0
    if tuner_name == "PruneTPE":
        if isinstance(tuner_args.get("profile"), str):
            # as the dispatcher will resolve it: against the trial code directory
            tuner_args["profile"] = str(resolve_path(tuner_args["profile"], code_directory))
        tuner = PruneTPETuner(**tuner_args)
        tuner.update_search_space(space)
        if tuner_args.get("target_sparsity") is not None:
            branches = tuple(active.label for active in ss.active_sets(tuner.parameters))
        warm_starts = tuner.pending_warm_starts
    else:
        ss.parse_search_space(space)
        _logger.info("tuner %r is not PruneTPE: only the search space was checked", tuner_name)

    assessor_name, assessor_args = _algorithm(config.get("assessor"))
    if assessor_name == "PruneEarlyStop":
        PruneEarlyStopClassArgsValidator().validate_class_args(**assessor_args)
    return CheckedConfig(dict(space), code_directory, branches, warm_starts)

