"""What NNI's remote training service costs against the local one, on the same experiment.

The same small experiment (PruneTPE + PruneEarlyStop, the torch-free analytic trial with no
pause, so a trial is almost all overhead) runs with ``platform: local`` and with ``platform:
remote`` on two machines that are this one, over a loopback sshd (``tests/remote_ssh.py``).
Start-up is from ``nnictl create`` to the first trial's start (remote: SSH, NNI's ``pip install
nni --upgrade`` with the index off, the trial keeper, the upload); a trial is NNI's start-to-end
time; a slot is the wall time per trial per concurrent slot, gaps between trials included.

    python -m benchmarks.remote_overhead [--trials 10] [--concurrency 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tests.experiment import analytic_config, nni_experiment, prune_tpe
from tests.remote_ssh import loopback_sshd
from trials import analytic_trial

_logger = logging.getLogger(__name__)
RESULTS = Path("results") / "remote_overhead"


def run_once(platform: str, *, trials: int, concurrency: int, workdir: Path) -> dict[str, float]:
    """One experiment to DONE on ``platform``; its start-up, trial and slot times in seconds."""
    config = analytic_config(tuner=prune_tpe(seed=0), search_space=analytic_trial.search_space(),
                             max_trials=trials, concurrency=concurrency,
                             assessor={"name": "PruneEarlyStop"})
    with ExitStack() as stack:
        if platform == "remote":
            sshd = stack.enter_context(loopback_sshd(workdir / "ssh"))
            bin_dir = str(Path(sys.executable).parent)
            config["trainingService"] = {"platform": "remote", "machineList": [
                sshd.machine(python_path=bin_dir), sshd.machine(python_path=bin_dir + "/")]}
        start = time.time()
        with nni_experiment(config, workdir=workdir / "nni") as experiment:
            experiment.wait(timeout=600)
            done = time.time()
            jobs = experiment.get("trial-jobs")
    starts = [job["startTime"] / 1000 for job in jobs]
    ends = [job["endTime"] / 1000 for job in jobs]
    return {
        "startup_s": min(starts) - start,
        "trial_s": statistics.median(e - s for s, e in zip(starts, ends, strict=True)),
        "slot_s": (max(ends) - min(starts)) * concurrency / len(jobs),
        "total_s": done - start,
    }


def plot(rows: dict[str, dict[str, float]], path: Path) -> None:
    keys = ["startup_s", "trial_s", "slot_s"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for i, (platform, row) in enumerate(rows.items()):
        ax.bar([k + (i - 0.5) * width for k in range(len(keys))], [row[k] for k in keys],
               width, label=platform)
    ax.set_xticks(range(len(keys)), ["start-up", "trial (median)", "slot per trial"])
    ax.set_ylabel("seconds")
    ax.set_title("NNI local vs remote (loopback SSH), analytic trial")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs: dict[str, list[dict[str, float]]] = {"local": [], "remote": []}
    with tempfile.TemporaryDirectory(prefix="remote-overhead-") as tmp:
        # a private NNI registry, as the tests use: the user's own set-up is not touched
        os.environ["NNI_CONFIG_DIR"] = str(Path(tmp) / "nni-config")
        subprocess.run([sys.executable, "-m", "nni_prune_tuners", "register"], check=True)
        for repeat in range(args.repeats):
            for platform in runs:  # alternate, so drift in machine load hits both
                workdir = Path(tmp) / f"{platform}-{repeat}"
                runs[platform].append(run_once(platform, trials=args.trials,
                                               concurrency=args.concurrency, workdir=workdir))
                _logger.info("%s run %d: %s", platform, repeat, runs[platform][-1])
    rows = {p: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for p, rs in runs.items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"trials": args.trials, "concurrency": args.concurrency,
                              "repeats": args.repeats, "runs": runs, "median": rows}
    (RESULTS / "remote_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, RESULTS / "remote_overhead.png")
    lines = ["| platform | start-up (s) | trial, median (s) | slot per trial (s) | total (s) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {p} | {r['startup_s']:.1f} | {r['trial_s']:.2f} | {r['slot_s']:.2f} | "
              f"{r['total_s']:.1f} |" for p, r in rows.items()]
    local, remote = rows["local"], rows["remote"]
    lines.append(f"\nremote - local: start-up {remote['startup_s'] - local['startup_s']:+.1f} s, "
                 f"trial {remote['trial_s'] - local['trial_s']:+.2f} s, "
                 f"slot per trial {remote['slot_s'] - local['slot_s']:+.2f} s")
    (RESULTS / "remote_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
