"""Run real ``nnictl`` experiments from tests: create, wait via NNI's REST API, always stop.

Usage::

    with nni_experiment(config, workdir=tmp_path) as exp:
        exp.wait(timeout=300)             # until DONE (raises on ERROR or timeout)
        trials = exp.trials()             # TrialRecords: parameters, status, metrics

The experiment listens on a free loopback port; its working directory (logs, trial output) is
inside ``workdir`` so that a failing test leaves evidence there and nothing in ``~``. The
``finally`` clause stops it whatever happened, and a test that fails gets the dispatcher log in
its error message.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nni_prune_tuners.export import TrialRecord, load_running
from nni_prune_tuners.registration import nnictl_command

REPO = Path(__file__).resolve().parent.parent
#: ``nniManagerIp`` of every test experiment (NNI's server still listens on all interfaces).
LOOPBACK = "127.0.0.1"
NNICTL = nnictl_command()[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nnictl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [NNICTL, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"nnictl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def rest(port: int, path: str) -> Any:
    """GET ``path`` of the NNI manager's REST API on ``port``, decoded."""
    url = f"http://127.0.0.1:{port}/api/v1/nni/{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def dispatcher_log(workdir: Path) -> str:
    """Every dispatcher log under ``workdir`` (one per experiment run), joined."""
    return "\n".join(p.read_text() for p in workdir.rglob("dispatcher.log"))


@dataclass
class Experiment:
    id: str
    port: int
    workdir: Path

    def get(self, path: str) -> Any:
        return rest(self.port, path)

    def status(self) -> dict[str, Any]:
        return dict(self.get("check-status"))

    def wait(
        self, *, timeout: float = 300.0, until: tuple[str, ...] = ("DONE",), trials: int = 0
    ) -> None:
        """Poll until the experiment reaches one of ``until`` with at least ``trials`` trial jobs.

        Raises on ERROR or timeout. ``trials`` matters after ``nnictl resume``: the experiment
        still reports its old DONE until the raised trial number has been applied.
        """
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if status.get("status") in until and len(self.get("trial-jobs")) >= trials:
                return
            if status.get("status") == "ERROR":
                raise RuntimeError(f"experiment {self.id} failed: {status}\n{self.logs()}")
            time.sleep(0.25)
        raise TimeoutError(f"experiment {self.id} not {until} after {timeout}s: {status}\n"
                           f"{self.logs()}")

    def trials(self) -> list[TrialRecord]:
        """Every trial with the parameters it actually ran (see ``assemble_trials``)."""
        return load_running(self.port)

    def logs(self) -> str:
        """The tail of the dispatcher and manager logs, for failure messages."""
        parts = []
        for name in ("dispatcher.log", "nnimanager.log"):
            for path in self.workdir.rglob(name):
                parts.append(f"--- {path}\n" + "\n".join(path.read_text().splitlines()[-60:]))
        return "\n".join(parts)


def write_config(config: Mapping[str, Any], workdir: Path) -> Path:
    path = workdir / "config.yml"
    full = {"experimentWorkingDirectory": str(workdir / "nni-experiments"), **config}
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    return path


@contextmanager
def nni_experiment(config: Mapping[str, Any], *, workdir: Path) -> Iterator[Experiment]:
    """Create an experiment from ``config`` (NNI v2 format), yield it, and always stop it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    path = write_config(config, workdir)
    created = nnictl("create", "--config", str(path), "--port", str(port), check=False)
    experiment = Experiment(id="", port=port, workdir=workdir)
    try:
        if created.returncode != 0:
            raise RuntimeError(f"nnictl create failed:\n{created.stdout}\n{created.stderr}")
        experiment.id = str(experiment.get("experiment")["id"])
        yield experiment
    finally:
        nnictl("stop", "--port", str(port), check=False)


def prune_tpe(*, seed: int, target_sparsity: float = 0.9) -> dict[str, Any]:
    """The tuner section of a config: PruneTPE over the analytic layers, maximizing."""
    from trials import analytic_trial

    return {
        "name": "PruneTPE",
        "classArgs": {
            "optimize_mode": "maximize",
            "target_sparsity": target_sparsity,
            "layer_params": analytic_trial.layer_params(),
            "seed": seed,
        },
    }


def analytic_config(
    *,
    tuner: Mapping[str, Any],
    search_space: Mapping[str, Any],
    max_trials: int = 6,
    concurrency: int = 2,
    assessor: Mapping[str, Any] | None = None,
    epoch_seconds: float = 0.0,
) -> dict[str, Any]:
    """An experiment running the torch-free analytic trial on the local training service."""
    config: dict[str, Any] = {
        "searchSpace": dict(search_space),
        "trialCommand": f"{sys.executable} -m trials.analytic_trial --epoch-seconds {epoch_seconds}",
        "trialCodeDirectory": str(REPO),
        "trialConcurrency": concurrency,
        "maxTrialNumber": max_trials,
        "tuner": dict(tuner),
        "trainingService": {"platform": "local"},
        "nniManagerIp": LOOPBACK,
    }
    if assessor is not None:
        config["assessor"] = dict(assessor)
    return config
