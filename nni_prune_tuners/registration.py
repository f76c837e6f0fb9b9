"""Register the packaged algorithms with ``nnictl algo register`` (and remove them again).

The meta files ship inside the package (``meta/*.yml``), so registration works from a wheel as
well as from a checkout. ``nnictl`` is the one in this interpreter's environment: NNI keeps its
registry per environment (``<venv>/nni``, or ``NNI_CONFIG_DIR``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import yaml

_logger = logging.getLogger(__name__)


class RegistrationError(RuntimeError):
    """nnictl refused to register or unregister an algorithm."""


def meta_files() -> list[Path]:
    """The packaged meta files, one per algorithm."""
    folder = resources.files("nni_prune_tuners") / "meta"
    return sorted(Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yml"))


def algorithm_names() -> list[str]:
    """The ``builtinName`` of every packaged algorithm (``PruneTPE``, ``PruneEarlyStop``)."""
    return [yaml.safe_load(path.read_text())["builtinName"] for path in meta_files()]


def nnictl_command() -> list[str]:
    """``nnictl`` from the running interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "nnictl"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("nnictl")
    if found is None:
        raise RegistrationError("nnictl not found: install nni in this environment")
    return [found]


def _nnictl(*args: str) -> str:
    """Run nnictl; its output, or a ``RegistrationError`` holding it."""
    result = subprocess.run(
        [*nnictl_command(), *args], capture_output=True, text=True, env=dict(os.environ),
        check=False,
    )
    output = result.stdout + result.stderr
    # nnictl prints "ERROR: ..." yet may exit 0, so both are checked
    if result.returncode != 0 or "ERROR" in result.stdout:
        raise RegistrationError(f"nnictl {' '.join(args)} failed:\n{output.strip()}")
    return output


def register() -> list[str]:
    """Register every packaged algorithm; registering again updates it in place."""
    names = []
    for path in meta_files():
        _nnictl("algo", "register", "--meta", str(path))
        names.append(yaml.safe_load(path.read_text())["builtinName"])
        _logger.info("registered %s from %s", names[-1], path.name)
    return names


def registered_names() -> set[str]:
    """Names of the packaged algorithms that nnictl currently knows."""
    listing = _nnictl("algo", "list")
    return {name for name in algorithm_names() if f"| {name} " in listing}


def unregister() -> list[str]:
    """Unregister the packaged algorithms that are registered; the others are left alone."""
    present = registered_names()
    removed = []
    for name in algorithm_names():
        if name in present:
            _nnictl("algo", "unregister", name)
            removed.append(name)
    return removed
