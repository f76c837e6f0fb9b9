"""``make demo``: a real PruneTPE + PruneEarlyStop experiment on the digits CNN, end to end.

Steps: cache the dense model, write its profile, check the config, ``nnictl create`` on a free
loopback port with a progress line per finished trial, then print the best trials, export the
best configuration as an NNI ``config_list`` (and prove NNI's own ``LevelPruner`` accepts it),
save the pruned weights, and write ``report.md`` with a best-so-far plot. The experiment is
stopped on the way out, also after an error or Ctrl-C.

    python -m trials.demo [--config trials/config.yml] [--max-trials N] [--out results/demo]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from nni_prune_tuners.config_check import check_config
from nni_prune_tuners.export import TrialRecord, export_best, load_running
from nni_prune_tuners.registration import nnictl_command
from trials.data import digits_split
from trials.models import digits_cnn
from trials.profile_model import profile_model, to_json
from trials.prune_trial import DEFAULT_EPOCHS, accuracy, dense_state_dict, run_trial

_logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
NNICTL = nnictl_command()[0]
FINISHED = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_profile(path: Path) -> tuple[dict[str, Any], float]:
    """Profile the trained dense digits CNN (the trial's starting point); also its accuracy."""
    model = digits_cnn()
    model.load_state_dict(dense_state_dict())
    profile = profile_model(model, name="digits_cnn", input_shape=model.input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(profile))
    data = digits_split()
    return profile, accuracy(model, data.x_val, data.y_val)


def experiment_config(source: Path, out: Path, max_trials: int | None) -> Path:
    """A copy of ``source`` with absolute paths, its working directory under ``out``."""
    config = yaml.safe_load(source.read_text())
    base = source.resolve().parent
    for key in ("searchSpaceFile", "trialCodeDirectory"):
        if key in config:
            config[key] = str((base / config[key]).resolve())
    config["experimentWorkingDirectory"] = str((out / "nni-experiments").resolve())
    if max_trials is not None:
        config["maxTrialNumber"] = max_trials
    path = out / "experiment.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Rest:
    """The few NNI REST calls the demo needs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}/api/v1/nni/"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            return json.loads(response.read())

    def trials(self) -> list[TrialRecord]:
        return load_running(self.port)


def follow(rest: Rest, max_trials: int, timeout: float) -> None:
    """Print one line per finished trial until the experiment is done."""
    seen: set[str] = set()
    best = float("-inf")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = rest.get("check-status")["status"]
        if status == "ERROR":
            raise RuntimeError(f"experiment failed: {rest.get('check-status')}")
        for trial in rest.trials():
            if trial.status in FINISHED and trial.trial_id not in seen:
                seen.add(trial.trial_id)
                accuracy = trial.score
                if trial.status == "SUCCEEDED" and accuracy is not None:
                    best = max(best, accuracy)
                method = trial.parameters.get("prune_method", {}).get("_name", "?")
                shown = f"{accuracy:.4f}" if accuracy is not None else "-"
                print(f"[{len(seen):3d}/{max_trials}] {trial.trial_id} {trial.status:<13} "
                      f"{method:<5} accuracy {shown}  best {best:.4f}", flush=True)
        if status in ("DONE", "STOPPED"):
            return
        time.sleep(2.0)
    raise TimeoutError(f"experiment not done after {timeout:.0f} s")


def trial_options(command: str) -> dict[str, int]:
    """``--epochs`` / ``--seed`` of the config's trial command, to re-run the best trial as is."""
    words = shlex.split(command)
    options = {"epochs": DEFAULT_EPOCHS, "seed": 0}
    for name in options:
        flag = f"--{name}"
        for index, word in enumerate(words):
            if word == flag and index + 1 < len(words):
                options[name] = int(words[index + 1])
            elif word.startswith(flag + "="):
                options[name] = int(word.split("=", 1)[1])
    return options


def _succeeded(trials: list[TrialRecord]) -> list[TrialRecord]:
    return [t for t in trials if t.status == "SUCCEEDED" and isinstance(t.final, dict)]


def best_table(trials: list[TrialRecord], dense: float, top: int = 5) -> str:
    done = sorted(_succeeded(trials), key=lambda t: -t.final["default"])
    layers = sorted({k for t in done for k in t.parameters["prune_method"] if k != "_name"})
    header = ["trial", "method", *(k.removesuffix("_sparsity") for k in layers),
              "global sparsity", "accuracy", "vs dense"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trial in done[:top]:
        branch, final = trial.parameters["prune_method"], trial.final
        cells = [trial.trial_id, branch["_name"], *(f"{branch[k]:.3f}" for k in layers),
                 f"{final['sparsity']:.4f}", f"{final['default']:.4f}",
                 f"{final['default'] - dense:+.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_level_pruner(config_list: list[dict[str, Any]]) -> float:
    """Load the exported config_list into NNI's LevelPruner; the masks' global sparsity."""
    from nni.compression.pruning import LevelPruner

    model = digits_cnn()
    model.load_state_dict(dense_state_dict())
    _, masks = LevelPruner(model, config_list).compress()
    zeros = sum(int((masks[e["op_names"][0]]["weight"] == 0).sum()) for e in config_list)
    total = sum(masks[e["op_names"][0]]["weight"].numel() for e in config_list)
    return zeros / total


def plot(trials: list[TrialRecord], dense: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    best, xs, ys = float("-inf"), [], []
    for index, trial in enumerate(trials, start=1):
        if trial.status == "SUCCEEDED" and trial.score is not None:
            agp = trial.parameters["prune_method"]["_name"] == "agp"
            axis.scatter(index, trial.score, s=12, color="tab:blue" if agp else "tab:orange")
            best = max(best, trial.score)
        if best > float("-inf"):
            xs.append(index)
            ys.append(best)
    axis.step(xs, ys, where="post", color="black", label="best so far")
    axis.axhline(dense, color="grey", linestyle="--", label="dense model")
    axis.scatter([], [], color="tab:blue", s=12, label="AGP trial")
    axis.scatter([], [], color="tab:orange", s=12, label="Level trial")
    axis.set_xlabel("trial")
    axis.set_ylabel("validation accuracy")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "trials" / "config.yml")
    parser.add_argument("--max-trials", type=int, default=None, help="override maxTrialNumber")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "demo")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    print("1/5 dense model and profile", flush=True)
    profile, dense = write_profile(REPO / "results" / "demo" / "profile.json")
    print(f"    dense validation accuracy {dense:.4f}, prunable weights {profile['prunable_params']}")

    config_path = experiment_config(args.config, out, args.max_trials)
    check_config(config_path)
    config = yaml.safe_load(config_path.read_text())
    max_trials = int(config["maxTrialNumber"])
    target = config["tuner"]["classArgs"].get("target_sparsity")
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    print(f"2/5 nnictl create --config {config_path} --port {port}", flush=True)
    created = subprocess.run([NNICTL, "create", "--config", str(config_path), "--port", str(port)],
                             env=env, capture_output=True, text=True, check=False)
    if created.returncode != 0:
        raise RuntimeError(f"nnictl create failed:\n{created.stdout}\n{created.stderr}")
    rest = Rest(port)
    try:
        experiment_id = rest.get("experiment")["id"]
        print(f"    experiment {experiment_id}: web UI http://127.0.0.1:{port}", flush=True)
        print(f"3/5 running {max_trials} trials (PruneTPE, target {target}, PruneEarlyStop)",
              flush=True)
        follow(rest, max_trials, args.timeout)
        trials = rest.trials()
    finally:
        subprocess.run([NNICTL, "stop", "--port", str(port)], env=env, capture_output=True,
                       check=False)
    print(f"    experiment {experiment_id} stopped")

    table = best_table(trials, dense)
    print("4/5 best trials\n" + table)
    best = export_best(experiment_id, out / "best.json",
                       experiment_dir=out / "nni-experiments" / experiment_id)
    level_sparsity = check_level_pruner(best["config_list"])
    options = trial_options(config["trialCommand"])
    rerun = run_trial(best["parameters"], epochs=options["epochs"], seed=options["seed"])
    torch.save(rerun.state_dict, out / "pruned_weights.pt")
    print(f"5/5 best config_list -> {out / 'best.json'} (NNI LevelPruner accepts it: masks at "
          f"{level_sparsity:.4f} global sparsity); pruned weights -> {out / 'pruned_weights.pt'} "
          f"(re-run accuracy {rerun.accuracy:.4f} vs {best['metric']['default']:.4f} in the "
          f"experiment, measured sparsity {rerun.sparsity:.4f})")
    plot(trials, dense, out / "best_so_far.png")
    (out / "report.md").write_text(
        f"# Demo experiment {experiment_id}\n\n"
        f"`make demo` ({max_trials} trials, PruneTPE at target {target} with PruneEarlyStop, "
        f"2 in flight). Dense validation accuracy {dense:.4f}.\n\n"
        f"{table}\n\n![best accuracy so far](best_so_far.png)\n\n"
        f"Best configuration as an NNI `config_list` (`best.json`), accepted by NNI's "
        f"`LevelPruner` (masks at {level_sparsity:.4f} global sparsity):\n\n"
        f"```json\n{json.dumps(best['config_list'], indent=2)}\n```\n\n"
        f"Pruned weights: `pruned_weights.pt` (re-run accuracy {rerun.accuracy:.4f}).\n"
        f"Resume with `nnictl resume {experiment_id}`; export again with "
        f"`python -m nni_prune_tuners export --experiment {experiment_id} --out best.json`.\n"
    )
    print(f"report: {out / 'report.md'}")
    return 0


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    # SIGTERM (kill, CI timeouts) unwinds like Ctrl-C, so the experiment is stopped either way
    signal.signal(signal.SIGTERM, _terminate)
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted: the experiment was stopped", file=sys.stderr)
        raise SystemExit(130) from None
