"""The demo path with a tiny budget, and the export of its finished experiment into NNI."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nni_prune_tuners.options import HEURISTICS
from tests.experiment import WAIT_SECONDS, nnictl, rest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
#: A guard against a demo that hangs, never a verdict: real digits trials on two busy cores.
DEMO_SECONDS = 900.0


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_demo(demo: subprocess.Popen[str], port: int | None) -> None:
    """Leave no demo and no experiment behind, whatever the test did: Ctrl-C first (the demo
    stops its experiment), then kill; then ``nnictl stop`` if its manager still answers."""
    if demo.poll() is None:
        demo.send_signal(signal.SIGINT)
        try:
            demo.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.communicate()
    if port is not None and listening(port):
        nnictl("stop", "--port", str(port), check=False)


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m trials.demo ARGS`` to its end; interrupted (so stopped) if it hangs."""
    demo = subprocess.Popen([sys.executable, "-m", "trials.demo", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = demo.communicate(timeout=DEMO_SECONDS)
    finally:
        stop_demo(demo, None)
    return subprocess.CompletedProcess(demo.args, demo.returncode, stdout, stderr)


def test_demo_and_export(registered: list[str], tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run = run_demo("--max-trials", "3", "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[  3/3]" in run.stdout and "best trials" in run.stdout
    # the saved weights come from re-running the best trial: same accuracy as in the experiment
    rerun, reported = re.search(r"re-run accuracy (\S+) vs (\S+)", run.stdout).groups()
    assert rerun == reported
    for name in ("report.md", "best.json", "pruned_weights.pt", "best_so_far.png"):
        assert (out / name).stat().st_size > 0, name
    best = json.loads((out / "best.json").read_text())
    experiment_id = best["experiment_id"]
    # three trials are three of PruneTPE's eight warm starts: the report names the best one's
    heuristic = best["warm_starts"]["best_is"]["heuristic"]
    assert heuristic in HEURISTICS
    assert (f"Against the heuristics: best trial {best['trial_id']} is the {heuristic} warm start"
            in (out / "report.md").read_text())

    # the experiment was stopped: its port no longer answers
    port = int(run.stdout.split("--port ")[1].split()[0])
    assert not listening(port)

    # export again, finding the experiment through nnictl's registry as a user would
    exported = tmp_path / "best.json"
    subprocess.run(
        [sys.executable, "-m", "nni_prune_tuners", "export", "--experiment", experiment_id,
         "--out", str(exported)], check=True, cwd=REPO, timeout=300,
    )
    config_list = json.loads(exported.read_text())["config_list"]
    assert config_list == best["config_list"]
    assert {entry["op_names"][0] for entry in config_list} == {"conv0", "conv1", "fc"}

    import torch
    from nni.compression.pruning import LevelPruner

    from trials.models import digits_cnn

    model = digits_cnn()
    model.load_state_dict(torch.load(out / "pruned_weights.pt", weights_only=True))
    _, masks = LevelPruner(model, config_list).compress()
    pruned = total = 0
    for entry in config_list:
        mask = masks[entry["op_names"][0]]["weight"]
        assert float((mask == 0).float().mean()) == pytest.approx(entry["sparse_ratio"], abs=2e-3)
        pruned, total = pruned + int((mask == 0).sum()), total + mask.numel()
    assert pruned / total == pytest.approx(0.9, abs=1e-3)
    # the saved weights are the pruned model: zeros where NNI's masks prune
    weight = model.conv1.weight.detach()
    ratio = next(e["sparse_ratio"] for e in config_list if e["op_names"] == ["conv1"])
    assert float((weight == 0).float().mean()) >= ratio - 2e-3


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_demo_stops_its_experiment(
    registered: list[str], tmp_path: Path, signum: signal.Signals
) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "trials.demo", "--max-trials", "20", "--out", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert demo.stdout is not None
    port = None
    # a demo that hangs without a line is interrupted, which ends the loop below
    guard = threading.Timer(DEMO_SECONDS, demo.send_signal, (signal.SIGINT,))
    guard.start()
    try:
        for line in demo.stdout:
            if "--port " in line:
                port = int(line.split("--port ")[1].split()[0])
            if line.startswith("3/5 running"):
                break
        assert port is not None
        # interrupt mid-experiment, while a trial is running
        deadline = time.monotonic() + WAIT_SECONDS
        while not any(job.get("status") == "RUNNING" for job in rest(port, "trial-jobs")):
            assert time.monotonic() < deadline, "no trial started"
            time.sleep(0.25)
        demo.send_signal(signum)
        output = demo.communicate(timeout=WAIT_SECONDS)[0]
    finally:
        guard.cancel()
        stop_demo(demo, port)
    assert demo.returncode == 130, output
    assert "the experiment was stopped" in output
    assert not listening(port)
