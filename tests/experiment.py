"""Run real ``nnictl`` experiments from tests: create, wait via NNI's REST API, always stop.

Usage::

    with nni_experiment(config, workdir=tmp_path) as exp:
        exp.wait()                        # until DONE (raises on ERROR or timeout)
        trials = exp.trials()             # TrialRecords: parameters, status, metrics

Deadlines here guard against hangs on a loaded machine; they are never what a test asserts. An
event a test needs (an early stop, a trial still running at an update) is made certain by the
trial itself (``analytic_config(hopeless=..., wait_for=...)``), not by racing the clock.

The experiment listens on a free loopback port; its working directory (logs, trial output) is
inside ``workdir`` so that a failing test leaves evidence there and nothing in ``~``. The
``finally`` clause stops it whatever happened, and a test that fails gets the dispatcher log in
its error message.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
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
#: Generous on purpose: on two busy cores one nnictl call or REST answer can take many seconds.
NNICTL_SECONDS = 300.0
REST_SECONDS = 60.0
#: The default wait for an experiment: minutes, so that only a hang runs into it.
WAIT_SECONDS = 600.0
#: Trial states NNI never leaves.
FINISHED = frozenset({"SUCCEEDED", "FAILED", "USER_CANCELED", "EARLY_STOPPED", "SYS_CANCELED"})
#: What the assessor logs (dispatcher.log) when it stops a trial.
_ASSESSOR_STOP = re.compile(r"PruneEarlyStop: stopping trial (\w+) at aligned step (\d+)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nnictl(
    *args: str, check: bool = True, timeout: float = NNICTL_SECONDS
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [NNICTL, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"nnictl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def rest(port: int, path: str) -> Any:
    """GET ``path`` of the NNI manager's REST API on ``port``, decoded."""
    url = f"http://127.0.0.1:{port}/api/v1/nni/{path}"
    with urllib.request.urlopen(url, timeout=REST_SECONDS) as response:
        return json.loads(response.read())


def dispatcher_log(workdir: Path) -> str:
    """Every dispatcher log under ``workdir`` (one per experiment run), joined."""
    return "\n".join(p.read_text() for p in workdir.rglob("dispatcher.log"))


def manager_log(workdir: Path) -> str:
    """Every NNI manager log under ``workdir``, joined."""
    return "\n".join(p.read_text() for p in workdir.rglob("nnimanager.log"))


def assessor_stops(workdir: Path) -> dict[str, int]:
    """``{trial id: aligned step}`` of every stop PruneEarlyStop decided (its dispatcher log).

    A decision, not its outcome: the kill of a trial on its last epoch may land after the trial
    has already succeeded.
    """
    return {trial: int(step) for trial, step in _ASSESSOR_STOP.findall(dispatcher_log(workdir))}


@dataclass
class Experiment:
    id: str
    port: int
    workdir: Path

    def get(self, path: str) -> Any:
        return rest(self.port, path)

    def status(self) -> dict[str, Any]:
        return dict(self.get("check-status"))

    def sequence_ids(self) -> dict[str, int]:
        """``{trial id: NNI's trial number}`` (the ``NNI_TRIAL_SEQ_ID`` each trial ran with)."""
        return {job["trialJobId"]: int(job["sequenceId"]) for job in self.get("trial-jobs")}

    def wait(
        self, *, timeout: float = WAIT_SECONDS, until: tuple[str, ...] = ("DONE",), trials: int = 0
    ) -> None:
        """Poll until the experiment reaches one of ``until`` with at least ``trials`` trial jobs.

        Raises on ERROR or timeout. ``trials`` matters after ``nnictl resume``: the experiment
        still reports its old DONE until the raised trial number has been applied, so DONE
        counts only once every trial job has finished too (a stale DONE read just before new
        jobs appeared cannot pass).
        """
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if status.get("status") in until:
                jobs = self.get("trial-jobs")
                finished = status["status"] != "DONE" or all(j["status"] in FINISHED for j in jobs)
                if len(jobs) >= trials and finished:
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


#: ``nnictl create`` gives NNI's manager 3 s to answer ``/check-status`` and then kills it; on a
#: loaded machine node can take longer to start. Such a create is tried again on a fresh port.
_CREATE_ATTEMPTS = 3


_CREATED_ID = re.compile(r"Experiment ID: (?:\x1b\[[0-9;]*m)?(\w+)")


def _create(path: Path, workdir: Path) -> tuple[int, subprocess.CompletedProcess[str]]:
    """``nnictl create`` on a free port; again while the manager was too slow to start, with the
    folder of the attempt that failed removed (tests read the experiment's logs under
    ``workdir``)."""
    for _ in range(_CREATE_ATTEMPTS):
        port = free_port()
        created = nnictl("create", "--config", str(path), "--port", str(port), check=False)
        output = created.stdout + created.stderr
        if created.returncode == 0 or "/check-status" not in output:
            break
        nnictl("stop", "--port", str(port), check=False)
        failed = _CREATED_ID.search(output)
        if failed:
            shutil.rmtree(workdir / "nni-experiments" / failed.group(1), ignore_errors=True)
    return port, created


@contextmanager
def nni_experiment(config: Mapping[str, Any], *, workdir: Path) -> Iterator[Experiment]:
    """Create an experiment from ``config`` (NNI v2 format), yield it, and always stop it."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = write_config(config, workdir)
    port, created = _create(path, workdir)
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


def zoo_config(
    *,
    model: str,
    cache_dir: Path,
    tuner: Mapping[str, Any],
    search_space: Mapping[str, Any] | Path,
    epochs: int = 1,
    max_trials: int = 2,
) -> dict[str, Any]:
    """An experiment running the reference trial on zoo ``model`` (``trials.models:<name>``)
    with its dense weights cached in ``cache_dir``; ``search_space`` inline or a file."""
    space: dict[str, Any] = ({"searchSpaceFile": str(search_space)}
                             if isinstance(search_space, Path)
                             else {"searchSpace": dict(search_space)})
    return {
        **space,
        "trialCommand": f"{sys.executable} -m trials.prune_trial --model {model} "
                        f"--epochs {epochs} --cache-dir {shlex.quote(str(cache_dir))}",
        "trialCodeDirectory": str(REPO),
        "trialConcurrency": 2,
        "maxTrialNumber": max_trials,
        "tuner": dict(tuner),
        "trainingService": {"platform": "local"},
        "nniManagerIp": LOOPBACK,
    }


def analytic_config(
    *,
    tuner: Mapping[str, Any],
    search_space: Mapping[str, Any],
    max_trials: int = 6,
    concurrency: int = 2,
    assessor: Mapping[str, Any] | None = None,
    epoch_seconds: float = 0.0,
    hopeless: Sequence[int] = (),
    wait_for: Path | None = None,
) -> dict[str, Any]:
    """An experiment running the torch-free analytic trial on the local training service.

    ``hopeless``: NNI trial numbers that report chance accuracy and wait to be stopped (an early
    stop that is certain, not likely); ``wait_for``: every trial waits until that file exists.
    """
    command = f"{sys.executable} -m trials.analytic_trial --epoch-seconds {epoch_seconds}"
    if hopeless:
        command += f" --hopeless {','.join(str(n) for n in hopeless)}"
    if wait_for is not None:
        command += f" --wait-for {shlex.quote(str(wait_for))}"
    config: dict[str, Any] = {
        "searchSpace": dict(search_space),
        "trialCommand": command,
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
