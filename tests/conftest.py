"""Shared fixtures: the algorithms registered into a throw-away NNI config directory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nni_prune_tuners import registration


@pytest.fixture(scope="session")
def nni_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point NNI (nnictl and the processes it starts) at a private config directory.

    The registry of algorithms and the list of experiments live there, so the tests never touch
    the developer's own NNI set-up.
    """
    path = tmp_path_factory.mktemp("nni-config")
    previous = os.environ.get("NNI_CONFIG_DIR")
    os.environ["NNI_CONFIG_DIR"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            del os.environ["NNI_CONFIG_DIR"]
        else:
            os.environ["NNI_CONFIG_DIR"] = previous


@pytest.fixture(scope="session")
def registered(nni_config_dir: Path) -> Iterator[list[str]]:
    """PruneTPE and PruneEarlyStop registered the way users do it (``python -m ... register``)."""
    subprocess.run([sys.executable, "-m", "nni_prune_tuners", "register"], check=True)
    try:
        yield registration.algorithm_names()
    finally:
        registration.unregister()
