"""``make demo``: a real PruneTPE + PruneEarlyStop experiment on the digits CNN, end to end.

Steps: cache the dense model, write its profile, check the config, ``nnictl create`` on a free
loopback port with a progress line per finished trial, then print the best trials, export the
best configuration as an NNI ``config_list`` (and prove NNI's own ``LevelPruner`` accepts it),
save the pruned weights, and write ``report.md`` with a best-so-far plot. Everything it writes
goes under ``--out`` (the dense-weights cache aside). The NNI manager that ``nnictl create``
starts is tracked by its port and pid and stopped on the way out, whatever the timing of an
error or Ctrl-C, even one that lands inside ``nnictl create``.

    python -m trials.demo [--config trials/config.yml] [--max-trials N] [--out results/demo]

Exit status: 0 done, 2 bad input (``error: ...``: the config or an option), 1 a failure while
running (``error: ...``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import psutil
import torch
import yaml

from nni_prune_tuners.config_check import check_config
from nni_prune_tuners.export import (
    TrialRecord,
    describe_comparison,
    early_stopped,
    export_best,
    load_running,
    shown_status,
)
from nni_prune_tuners.registration import nnictl_command
from trials.data import digits_split
from trials.models import digits_cnn
from trials.profile_model import profile_model, to_json
from trials.prune_trial import DEFAULT_EPOCHS, accuracy, dense_state_dict, run_trial

_logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
NNICTL = nnictl_command()[0]
FINISHED = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")


class UsageError(ValueError):
    """Bad input (the config or an option): exit status 2."""


class NniManager:
    """The NNI manager that one ``nnictl create`` starts, tracked by port and pid, always stopped.

    ``nnictl create`` starts the manager (node) in its own process group and registers it only
    after the REST server answered, so a Ctrl-C inside ``create`` leaves a manager that neither
    the terminal's signal reaches nor ``nnictl stop`` knows. ``create`` runs in its own session
    (the demo alone decides when it ends); :meth:`stop` ends it, finds the manager by its
    command line (``main.js --port P`` in our experiments directory) and terminates it as
    ``nnictl stop`` does (SIGTERM: it stops its dispatcher and trials), then kills what is left.
    """

    def __init__(self, experiments_directory: Path) -> None:
        self.port: int | None = None
        self.experiments_directory = str(experiments_directory)
        self.create_process: subprocess.Popen[str] | None = None
        self.pids: set[int] = set()
        self.stopped = ""

    def create(self, config_path: Path, port: int, env: Mapping[str, str]) -> tuple[int, str]:
        """Run ``nnictl create`` on loopback ``port``; its exit status and output."""
        self.port = port
        self.create_process = subprocess.Popen(
            [NNICTL, "create", "--config", str(config_path), "--port", str(port)],
            env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        output, _ = self.create_process.communicate()
        self.pids.update(self.find())
        return self.create_process.returncode, output

    def find(self) -> set[int]:
        """Pids of live NNI managers serving this port from this experiments directory."""
        found = set()
        for process in psutil.process_iter(["cmdline"]):
            words = process.info["cmdline"] or []
            if (any(w.endswith("main.js") for w in words)
                    and _option(words, "--port") == str(self.port)
                    and _option(words, "--experiments-directory") == self.experiments_directory):
                found.add(process.pid)
        return found

    def stop(self, timeout: float = 60.0) -> str:
        """Stop everything this create started; what happened, in words. Safe to call again."""
        if self.stopped:
            return self.stopped
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this
        try:
            self.stopped = self._stop(timeout)
        finally:
            signal.signal(signal.SIGINT, previous)
        return self.stopped

    def _stop(self, timeout: float) -> str:
        if self.create_process is None or self.port is None:
            return "no experiment was started"
        if self.create_process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it may end just now
                os.killpg(self.create_process.pid, signal.SIGKILL)  # no manager starts after this
            self.create_process.wait()
        self.pids.update(self.find())
        live = [p for p in (_process(pid) for pid in sorted(self.pids)) if p is not None]
        for process in live:
            process.terminate()
        _, alive = psutil.wait_procs(live, timeout=timeout)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)
        pids = ", ".join(map(str, sorted(self.pids))) or "none"
        if _listening(self.port):
            return (f"the NNI manager on port {self.port} (pid {pids}) is still running: "
                    f"stop it with kill")
        if not self.pids:
            return f"no NNI manager had started on port {self.port}"
        forced = " (killed: it did not stop in time)" if alive else ""
        return f"the experiment was stopped (NNI manager pid {pids}, port {self.port}){forced}"


def _option(words: Sequence[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words[:-1] else None


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


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


def experiment_config(source: Path, out: Path, max_trials: int | None, profile: Path) -> Path:
    """A copy of ``source`` with absolute paths, its working directory and PruneTPE's profile
    (the one the demo wrote) under ``out``; ``UsageError`` naming what the demo cannot run."""
    try:
        config = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise UsageError(f"config {str(source)!r} cannot be read: {reason}") from None
    except yaml.YAMLError as error:
        problem = " ".join(str(error).split())
        raise UsageError(f"config {str(source)!r} is not valid YAML: {problem}") from None
    if not isinstance(config, dict):
        raise UsageError(f"config {str(source)!r} must be a YAML mapping, got {config!r}")
    for key in ("trialCommand", "tuner"):
        if key not in config:
            raise UsageError(f"config {str(source)!r} has no {key}: the demo runs NNI v2 configs")
    if max_trials is None and not isinstance(config.get("maxTrialNumber"), int):
        raise UsageError(f"config {str(source)!r} has no maxTrialNumber: set it or pass --max-trials")
    base = source.resolve().parent
    for key in ("searchSpaceFile", "trialCodeDirectory"):
        if key in config:
            config[key] = str((base / str(config[key])).resolve())
    config["experimentWorkingDirectory"] = str((out / "nni-experiments").resolve())
    if max_trials is not None:
        config["maxTrialNumber"] = max_trials
    tuner = config["tuner"]
    if isinstance(tuner, dict) and isinstance(tuner.get("classArgs"), dict) and (
            "profile" in tuner["classArgs"]):
        tuner["classArgs"]["profile"] = str(profile)
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


def follow(rest: Rest, max_trials: int, timeout: float, manager_log: Path) -> None:
    """Print one line per finished trial until the experiment is done."""
    seen: set[str] = set()
    best = float("-inf")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = rest.get("check-status")["status"]
        if status == "ERROR":
            raise RuntimeError(f"experiment failed: {rest.get('check-status')}")
        trials = rest.trials()
        killed = early_stopped(manager_log.read_text()) if manager_log.exists() else set()
        for trial in trials:
            if trial.status in FINISHED and trial.trial_id not in seen:
                seen.add(trial.trial_id)
                accuracy = trial.score
                if trial.status == "SUCCEEDED" and accuracy is not None:
                    best = max(best, accuracy)
                method = trial.parameters.get("prune_method", {}).get("_name", "?")
                shown = f"{accuracy:.4f}" if accuracy is not None else "-"
                print(f"[{len(seen):3d}/{max_trials}] {trial.trial_id} "
                      f"{shown_status(trial, killed):<13} "
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trials.demo",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "trials" / "config.yml")
    parser.add_argument("--max-trials", type=_positive_int, default=None,
                        help="override maxTrialNumber")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "demo",
                        help="every file the demo writes goes here")
    parser.add_argument("--timeout", type=float, default=1800.0)
    return parser


def _loopback_only(output: str) -> str:
    """nnictl's output without its list of web portal URLs on every interface."""
    return "\n".join(line for line in output.splitlines() if "Web portal URLs" not in line)


def run(args: argparse.Namespace, out: Path, manager: NniManager) -> int:
    """The demo's five steps; ``manager`` holds the NNI manager it starts, for the caller to stop."""
    out.mkdir(parents=True, exist_ok=True)
    profile_path = out / "profile.json"
    config_path = experiment_config(args.config, out, args.max_trials, profile_path)

    print("1/5 dense model and profile", flush=True)
    profile, dense = write_profile(profile_path)
    print(f"    dense validation accuracy {dense:.4f}, prunable weights {profile['prunable_params']}"
          f" -> {profile_path}")

    try:
        check_config(config_path)
    except ValueError as error:
        raise UsageError(f"{args.config}: {error}") from None
    config = yaml.safe_load(config_path.read_text())
    max_trials = int(config["maxTrialNumber"])
    target = config["tuner"]["classArgs"].get("target_sparsity")
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    print(f"2/5 nnictl create --config {config_path} --port {port}", flush=True)
    status, output = manager.create(config_path, port, env)
    if status != 0:
        raise RuntimeError(f"nnictl create failed: {_loopback_only(output)}")
    rest = Rest(port)
    try:
        experiment_id = rest.get("experiment")["id"]
        print(f"    experiment {experiment_id}: web UI http://127.0.0.1:{port} (NNI's server "
              f"listens on every interface of this machine: see README, Exposure)", flush=True)
        print(f"3/5 running {max_trials} trials (PruneTPE, target {target}, PruneEarlyStop)",
              flush=True)
        manager_log = out / "nni-experiments" / experiment_id / "log" / "nnimanager.log"
        follow(rest, max_trials, args.timeout, manager_log)
        trials = rest.trials()
    finally:
        stopped = manager.stop()
    print(f"    {stopped}")

    _export_and_report(out, experiment_id, trials, dense, config)
    return 0


def _export_and_report(out: Path, experiment_id: str, trials: list[TrialRecord],
                       dense: float, config: dict[str, Any]) -> None:
    """Steps 4 and 5: the best trials, their export, a re-run of the best, the report."""
    max_trials = int(config["maxTrialNumber"])
    target = config["tuner"]["classArgs"].get("target_sparsity")
    table = best_table(trials, dense)
    print("4/5 best trials\n" + table)
    best = export_best(experiment_id, out / "best.json",
                       experiment_dir=out / "nni-experiments" / experiment_id)
    against_heuristics = describe_comparison(best["trial_id"], best["warm_starts"])
    print(f"    {against_heuristics}")
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
        f"2 in flight; {best['statuses'].get('EARLY_STOPPED', 0)} early-stopped by "
        f"PruneEarlyStop). Dense validation accuracy {dense:.4f}.\n\n"
        f"{table}\n\nAgainst the heuristics: {against_heuristics}.\n\n"
        f"![best accuracy so far](best_so_far.png)\n\n"
        f"Best configuration as an NNI `config_list` (`best.json`), accepted by NNI's "
        f"`LevelPruner` (masks at {level_sparsity:.4f} global sparsity):\n\n"
        f"```json\n{json.dumps(best['config_list'], indent=2)}\n```\n\n"
        f"Pruned weights: `pruned_weights.pt` (re-run accuracy {rerun.accuracy:.4f}).\n"
        f"Resume with `nnictl resume {experiment_id}`; export again with "
        f"`python -m nni_prune_tuners export --experiment {experiment_id} --out best.json`.\n"
    )
    print(f"report: {out / 'report.md'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; one line ``error: ...`` on failure, and the NNI manager always stopped."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the check builds a study: no chatter
    out: Path = args.out.resolve()
    manager = NniManager(out / "nni-experiments")
    try:
        return run(args, out, manager)
    except KeyboardInterrupt:
        print(f"interrupted: {manager.stop()}", file=sys.stderr, flush=True)
        return 130
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, ValueError) as error:  # TimeoutError, URLError are OSErrors
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    finally:
        manager.stop()


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    # SIGTERM (kill, CI timeouts) unwinds like Ctrl-C, so the experiment is stopped either way
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
