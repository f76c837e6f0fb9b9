"""What a pip user gets: the wheel installed in a fresh virtual environment, used from a temp folder.

The wheel is built from the sources, installed with the ``trial`` extra into a new virtual
environment outside the checkout, and then only that environment's commands run, from a folder
outside the checkout: ``nni-prune-tuners register`` (NNI's registry is that environment's
``<venv>/nni``: ``NNI_CONFIG_DIR`` is unset for it), ``profile`` of a small model the test writes,
``check``, an experiment to DONE with that environment's ``nnictl`` (whose dispatcher and trials
run its Python), and ``export``.

The environment is fresh (no ``--system-site-packages``): a package that the wheel forgot to
require, or a file it forgot to ship, fails here instead of being found in the developer's
environment. Its packages come from pip's configured index, pinned by ``requirements.lock`` used
as constraints, so it holds exactly the wheel's dependencies at the versions ``make test`` uses,
not the checkout's test and lint tools; measured on the 2-core machine: about 45 s of the test's
wall time (torch's CPU wheel most of it), well under the 2 minutes that would justify reusing the
checkout's packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import experiment
from tests.experiment import nni_experiment, write_config
from tests.test_own_model_e2e import EPOCHS, HEADER, LAYER_PARAMS, readme_trial
from tests.test_packaging import REPO, build_wheel

pytestmark = pytest.mark.slow

TARGET = 0.7
TRIALS = 4


class Installed:
    """Commands of the fresh environment, run with its own PATH and NNI registry."""

    def __init__(self, venv: Path, env: dict[str, str]) -> None:
        self.venv = venv
        self.bin = venv / "bin"
        self.env = env

    def run(self, *argv: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        run = subprocess.run(list(argv), cwd=cwd, env=self.env, capture_output=True, text=True,
                             timeout=timeout, check=False)
        assert run.returncode == 0, f"{argv} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
        return run

    def command(self, *args: str, cwd: Path) -> str:
        """``nni-prune-tuners ARGS``: its log lines (stderr) and output, together."""
        run = self.run(str(self.bin / "nni-prune-tuners"), *args, cwd=cwd)
        return run.stdout + run.stderr


def fresh_environment(folder: Path, wheel: Path) -> Installed:
    venv = folder / "venv"
    # the base interpreter behind this one, not this environment's packages
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {key: value for key, value in os.environ.items()
           if key not in ("NNI_CONFIG_DIR", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    installed = Installed(venv, env)
    installed.run(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                  "--disable-pip-version-check", "--constraint", str(REPO / "requirements.lock"),
                  f"{wheel}[trial]", cwd=folder, timeout=600)
    return installed


@pytest.fixture
def pip_user(tmp_path: Path) -> Iterator[Installed]:
    """The fresh environment; removed afterwards (1.5 GB, and pytest keeps three runs' folders)."""
    started = time.monotonic()
    installed = fresh_environment(tmp_path, build_wheel(tmp_path / "build"))
    print(f"wheel e2e: built and installed in {time.monotonic() - started:.1f} s")
    try:
        yield installed
    finally:
        # rm takes 1 s where shutil.rmtree takes 9 (its files are torch's, mostly)
        subprocess.run(["rm", "-rf", str(installed.venv)], check=False, timeout=120)


def test_wheel_installed_outside_the_checkout(
    pip_user: Installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pip = pip_user
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()

    work = tmp_path / "work"  # outside the checkout; the user's model and trial live here
    work.mkdir()

    where = pip.run(str(pip.bin / "python"), "-c", "import nni_prune_tuners, nni; "
                    "print(nni_prune_tuners.__file__); print(nni.__file__)", cwd=work).stdout.split()
    assert all(Path(path).is_relative_to(pip.venv) for path in where), where

    usage = pip.command("--help", cwd=work)
    assert usage.startswith("usage: nni-prune-tuners "), usage

    assert "registered: PruneEarlyStop, PruneTPE" in pip.command("register", cwd=work)
    registry = yaml.safe_load((pip.venv / "nni" / "registered_algorithms.yml").read_text())
    assert {entry["builtinName"] for entry in registry["tuners"]} == {"PruneTPE"}
    assert {entry["builtinName"] for entry in registry["assessors"]} == {"PruneEarlyStop"}
    lap("register")

    (work / "own_model.py").write_text(HEADER)
    (work / "own_trial.py").write_text(HEADER + readme_trial())
    pip.command("profile", "--model", "own_model:load_trained_model", "--input-shape", "20",
                "--methods", "agp,level", "--search-space", "space.json", "--out", "profile.json",
                cwd=work)
    profile = json.loads((work / "profile.json").read_text())
    assert {layer["name"]: layer["params"] for layer in profile["layers"]} == LAYER_PARAMS
    space = json.loads((work / "space.json").read_text())
    assert [branch["_name"] for branch in space["prune_method"]["_value"]] == ["agp", "level"]
    lap("profile")

    config = {
        "searchSpaceFile": str(work / "space.json"),
        "trialCommand": f"{pip.bin / 'python'} own_trial.py",
        "trialCodeDirectory": str(work),
        "trialConcurrency": 2,
        "maxTrialNumber": TRIALS,
        "tuner": {"name": "PruneTPE", "classArgs": {
            "optimize_mode": "maximize", "target_sparsity": TARGET, "profile": "profile.json",
            "seed": 3}},
        "assessor": {"name": "PruneEarlyStop", "classArgs": {"optimize_mode": "maximize"}},
        "trainingService": {"platform": "local"},
        "nniManagerIp": experiment.LOOPBACK,
    }
    checked = pip.command("check", "--config", str(write_config(config, work)), cwd=work)
    assert checked.strip().splitlines() == [
        f"{work / 'config.yml'} is valid: trial code in {work}; target branches: "
        f"prune_method=agp, prune_method=level; 8 warm starts; seed 3"], checked
    lap("check")

    # the helpers' nnictl is this checkout's; the experiment must be the installed one's
    monkeypatch.setattr(experiment, "NNICTL", str(pip.bin / "nnictl"))
    for name in ("NNI_CONFIG_DIR", "PYTHONPATH", "VIRTUAL_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", pip.env["PATH"])
    monkeypatch.chdir(work)
    with nni_experiment(config, workdir=work) as exp:
        exp.wait(timeout=300)
        trials = exp.trials()
        experiment_id = exp.id
    lap("experiment")
    assert len(trials) == TRIALS
    for trial in trials:
        assert trial.status == "SUCCEEDED", trial
        assert trial.final is not None
        assert trial.final["sparsity"] == pytest.approx(TARGET, abs=2 / sum(LAYER_PARAMS.values()))
        assert [m["epoch"] for m in trial.intermediates] == list(range(EPOCHS))
    assert "PruneTPE seed 3" in experiment.dispatcher_log(work)

    exported = pip.command("export", "--experiment", experiment_id, "--out", "best.json", cwd=work)
    best = json.loads((work / "best.json").read_text())
    winner = max(trials, key=lambda t: t.final["default"] if t.final else -1.0)
    assert best["experiment_id"] == experiment_id
    assert best["trials"] == TRIALS and best["statuses"] == {"SUCCEEDED": TRIALS}
    assert winner.final is not None and best["metric"]["default"] == winner.final["default"]
    assert best["method"] == best["parameters"]["prune_method"]["_name"]
    ratios = {entry["op_names"][0]: entry["sparse_ratio"] for entry in best["config_list"]}
    assert set(ratios) == set(LAYER_PARAMS)
    assert all(entry["target_names"] == ["weight"] for entry in best["config_list"])
    reached = sum(LAYER_PARAMS[layer] * ratio for layer, ratio in ratios.items()) / sum(
        LAYER_PARAMS.values())
    assert reached == pytest.approx(TARGET, abs=1e-6)
    assert json.dumps(best["config_list"]) in exported
    lap("export")
    print(f"wheel e2e timings (s): {timings}")
