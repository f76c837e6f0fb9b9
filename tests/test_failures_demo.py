"""``make demo`` when things go wrong: Ctrl-C at any moment of ``nnictl create``, bad configs,
and the statuses it shows."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEMO_PROFILE = REPO / "results" / "demo" / "profile.json"


def managers_on(port: int) -> list[int]:
    """Pids of NNI managers (node main.js) serving ``port``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        words = process.info["cmdline"] or []
        if any(w.endswith("main.js") for w in words) and "--port" in words[:-1] and (
                words[words.index("--port") + 1] == str(port)):
            found.append(process.pid)
    return found


def listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 1.5, 2.5, 6.0])
def test_ctrl_c_during_create_stops_the_manager(
    registered: list[str], tmp_path: Path, delay: float
) -> None:
    """SIGINT to the demo's whole process group (as a terminal's Ctrl-C) ``delay`` seconds into
    ``nnictl create``: before the manager starts, while it starts, before nnictl registered it,
    after create returned. Whatever the timing, no NNI manager is left on the port, the demo
    says what it stopped, and it wrote nothing outside ``--out``."""
    before = DEMO_PROFILE.stat().st_mtime_ns if DEMO_PROFILE.exists() else None
    demo = subprocess.Popen(
        [sys.executable, "-m", "trials.demo", "--max-trials", "4", "--out", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
        # as a terminal's child: a shell without job control starts background jobs with
        # SIGINT ignored, and an ignored signal stays ignored across exec
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert demo.stdout is not None
    port = None
    lines = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if "nnictl create" in line:
                port = int(line.split("--port ")[1].split()[0])
                time.sleep(delay)
                os.killpg(demo.pid, signal.SIGINT)
                break
        output = "".join(lines) + demo.communicate(timeout=120)[0]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    assert port is not None, output
    assert demo.returncode == 130, output
    assert managers_on(port) == [], output
    assert not listening(port), output
    message = output.strip().splitlines()[-1]
    assert message.startswith("interrupted: "), output
    assert ("the experiment was stopped (NNI manager pid" in message
            or message in ("interrupted: no experiment was started",
                           f"interrupted: no NNI manager had started on port {port}")), output
    assert (tmp_path / "profile.json").stat().st_size > 0
    assert (DEMO_PROFILE.stat().st_mtime_ns if DEMO_PROFILE.exists() else None) == before
    # only the loopback URL is shown
    assert set(re.findall(r"http://([\d.]+)", output)) <= {"127.0.0.1"}, output


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trials.demo", "--out", str(tmp_path), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_bad_config_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    missing = run_demo(tmp_path, "--config", str(tmp_path / "nope.yml"))
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: config '{tmp_path / 'nope.yml'}' cannot be read: No such file or directory")
    assert "1/5" not in missing.stdout

    config = yaml.safe_load((REPO / "trials" / "config.yml").read_text())
    config["searchSpaceFile"] = str(REPO / "search_spaces" / "digits.json")
    config["trialCodeDirectory"] = str(REPO)
    config["assessor"]["classArgs"]["min_trials"] = -1
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(config))
    before = DEMO_PROFILE.stat().st_mtime_ns if DEMO_PROFILE.exists() else None
    bad = run_demo(tmp_path / "out", "--config", str(path))
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        f"error: {path}: assessor PruneEarlyStop: min_trials must be a non-negative integer, got -1")
    assert "2/5" not in bad.stdout  # nothing was created
    # the profile went under --out, the repository's results/demo was left alone
    assert (tmp_path / "out" / "profile.json").stat().st_size > 0
    assert (DEMO_PROFILE.stat().st_mtime_ns if DEMO_PROFILE.exists() else None) == before
    experiment = yaml.safe_load((tmp_path / "out" / "experiment.yml").read_text())
    assert experiment["tuner"]["classArgs"]["profile"] == str(tmp_path / "out" / "profile.json")


def test_demo_and_test_configs_keep_nni_manager_on_loopback() -> None:
    from tests.experiment import analytic_config, prune_tpe
    from trials import analytic_trial

    config = yaml.safe_load((REPO / "trials" / "config.yml").read_text())
    assert config["nniManagerIp"] == "127.0.0.1"
    analytic = analytic_config(tuner=prune_tpe(seed=0), search_space=analytic_trial.search_space())
    assert analytic["nniManagerIp"] == "127.0.0.1"
