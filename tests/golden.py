"""Golden traces: what PruneTPE suggests and what PruneEarlyStop decides, recorded to be kept.

A trace drives the tuner through NNI's calls exactly as the dispatcher makes them (two trials in
flight, the oldest finishing first, some trials failing or reporting a metric that is no number)
over a fixed objective, and records every suggestion. The assessor's trace is its decision on
each report of fixed histories. Both are pure functions of the case, so a refactoring that keeps
behaviour keeps them bit for bit: ``tests/test_golden.py`` compares.

``python -m tests.golden`` rewrites ``tests/golden/*.json`` (only when behaviour is meant to
change; the commit says why). The profiles the cases read are frozen in ``tests/golden/profiles``;
``python -m tests.golden --profiles`` wrote them once with torch (the channel cases need the zoo's
channel groups).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nni
import numpy as np

from nni_prune_tuners.assessor import PruneEarlyStopAssessor
from nni_prune_tuners.tuner import PruneTPETuner

_logger = logging.getLogger(__name__)
HERE = Path(__file__).parent / "golden"
PROFILES = HERE / "profiles"
ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
TRIALS = 24
#: Every ``_FAIL_EVERY``-th trial ends without a result (killed), every ``_NAN_EVERY``-th reports NaN.
_FAIL_EVERY, _NAN_EVERY = 7, 11


def _uniform(low: float, high: float) -> dict[str, Any]:
    return {"_type": "uniform", "_value": [low, high]}


def _space_file(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "search_spaces" / name).read_text())


def _profile(name: str) -> str:
    return str(PROFILES / name)


def _extras(space: dict[str, Any]) -> dict[str, Any]:
    return {**space, "lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
            "batch_size": {"_type": "choice", "_value": [16, 32, 64]},
            "epochs": {"_type": "randint", "_value": [2, 6]}}


def _channel_space(profile: str, methods: tuple[str, ...]) -> dict[str, Any]:
    raw = json.loads((PROFILES / profile).read_text())
    options = []
    for method in methods:
        names = ([g["name"] for g in raw["channel_groups"]] if method == "channel"
                 else [layer["name"] for layer in raw["layers"]])
        options.append({"_name": method, **{f"{n}_sparsity": _uniform(0.0, 0.9) for n in names}})
    return {"prune_method": {"_type": "choice", "_value": options}}


@dataclass(frozen=True)
class Case:
    """One tuner trace: its classArgs and search space (built lazily: profiles are read)."""

    class_args: dict[str, Any]
    space: Callable[[], dict[str, Any]]
    trials: int = TRIALS
    seeds: tuple[int, ...] = SEEDS
    #: ``nnictl update searchspace`` to this space after the 10th suggestion
    update: Callable[[], dict[str, Any]] | None = None
    #: ``nnictl resume``: rows of finished trials imported before the first suggestion
    history: Callable[[], list[dict[str, Any]]] | None = None


_DIGITS = {"target_sparsity": 0.8, "profile": _profile("analytic.json")}
_COLLAPSING = {
    "conv0_sparsity": _uniform(0.5, 0.5), "conv1_sparsity": _uniform(0.0, 0.9),
    "fc_sparsity": _uniform(0.2, 0.95),
    "lr": {"_type": "loguniform", "_value": [1e-3, 1e-3]},
    "q": {"_type": "qnormal", "_value": [0, 1, 1]},
    "single": {"_type": "choice", "_value": ["only"]},
}
_FINITE = {"c": {"_type": "choice", "_value": [
    {"_name": "x", "u": _uniform(0.5, 0.5), "r": {"_type": "randint", "_value": [0, 3]}},
    {"_name": "y"}]}, "q": {"_type": "quniform", "_value": [0, 1, 0.25]}}

def _nni_space() -> dict[str, Any]:
    """NNI's own test space of its builtin tuners (tests/assets)."""
    return dict(json.loads((Path(__file__).parent / "assets" / "nni_search_space.json").read_text()))


CASES: dict[str, Case] = {
    "digits": Case(_DIGITS, lambda: _space_file("digits.json")),
    "digits-local": Case({**_DIGITS, "allocation": "local"}, lambda: _space_file("digits.json")),
    "digits-tpe": Case({**_DIGITS, "allocation": "tpe"}, lambda: _space_file("digits.json")),
    "digits-tpe-raw": Case({**_DIGITS, "allocation": "tpe", "learn_from": "raw",
                            "constant_liar": False, "n_startup_trials": 4},
                           lambda: _space_file("digits.json")),
    "digits-model-scope": Case({**_DIGITS, "sparsity_scope": "model", "target_sparsity": 0.3},
                               lambda: _space_file("digits.json")),
    "digits-minimize": Case({**_DIGITS, "optimize_mode": "minimize"},
                            lambda: _space_file("digits.json")),
    "digits-flops": Case({**_DIGITS, "weight_by": "flops", "warm_start": ["uniform", "erk"]},
                         lambda: _space_file("digits.json")),
    "layer-params": Case({"target_sparsity": 0.7,
                          "layer_params": {"conv0": 144, "conv1": 4608, "fc": 5120}},
                         lambda: _space_file("digits.json")),
    "extras": Case(_DIGITS, lambda: _extras(_space_file("digits.json"))),
    "extras-local": Case({**_DIGITS, "allocation": "local"},
                         lambda: _extras(_space_file("digits.json"))),
    "sensitivity": Case({"target_sparsity": 0.9, "profile": _profile("mlp_digits.json")},
                        lambda: _space_file("mlp_digits.json")),
    "proxy": Case({"target_sparsity": 0.9, "profile": _profile("analytic_proxy.json")},
                  lambda: {f"{n}_sparsity": _uniform(0.05, 0.98)
                           for n in ("conv0", "conv1", "conv2", "fc")}),
    "proxy-nested": Case({"target_sparsity": 0.9, "profile": _profile("analytic_proxy.json"),
                          "allocation": "local"},
                         lambda: _space_file("digits.json")),
    "channel-flops": Case({"target_sparsity": 0.5, "weight_by": "flops", "channel_multiple": 1,
                           "profile": _profile("resnet_channel.json")},
                          lambda: _channel_space("resnet_channel.json", ("level", "channel")),
                          trials=16, seeds=(0, 1)),
    "channel-flops-tpe": Case({"target_sparsity": 0.5, "weight_by": "flops", "allocation": "tpe",
                               "channel_multiple": 1, "profile": _profile("resnet_channel.json")},
                              lambda: _channel_space("resnet_channel.json", ("channel",)),
                              trials=16, seeds=(0, 1)),
    "channel-latency": Case({"target_sparsity": 0.5, "weight_by": "latency", "channel_multiple": 1,
                             "profile": _profile("resnet_latency.json")},
                            lambda: _channel_space("resnet_latency.json", ("channel",)),
                            trials=16, seeds=(0, 1)),
    # the default channel_multiple (8): widths in multiples of 8, within the landing bound
    "channel-multiple": Case({"target_sparsity": 0.5, "weight_by": "flops",
                              "profile": _profile("resnet_channel.json")},
                             lambda: _channel_space("resnet_channel.json", ("level", "channel")),
                             trials=16, seeds=(0, 1)),
    "channel-multiple-local": Case({"target_sparsity": 0.5, "weight_by": "latency",
                                    "allocation": "local",
                                    "profile": _profile("resnet_latency.json")},
                                   lambda: _channel_space("resnet_latency.json", ("channel",)),
                                   trials=16, seeds=(0, 1)),
    "collapsing": Case({"target_sparsity": 0.5, "profile": _profile("analytic.json")},
                       lambda: dict(_COLLAPSING)),
    "collapsing-tpe": Case({"target_sparsity": 0.5, "profile": _profile("analytic.json"),
                            "allocation": "tpe"}, lambda: dict(_COLLAPSING)),
    "finite": Case({}, lambda: dict(_FINITE)),
    "no-target": Case({}, lambda: {key: value for key, value in _nni_space().items()
                                   if "fail" not in key}),
    "update-space": Case(_DIGITS, lambda: _space_file("digits.json"), update=lambda: {
        "prune_method": {"_type": "choice", "_value": [
            {"_name": "level", **{f"{n}_sparsity": _uniform(0.1, 0.95)
                                  for n in ("conv0", "conv1", "fc")}}]}}),
    "resume": Case(_DIGITS, lambda: _space_file("digits.json"), history=lambda: [
        {"parameter": params, "value": objective(params)}
        for params in json.loads(path_of("tuner", "digits").read_text())["0"][:8]]),
    "no-target-nested": Case({"n_startup_trials": 5}, lambda: _space_file("seed_nested.json")),
}


def _leaves(params: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(params, Mapping):
        return [leaf for key in sorted(params) for leaf in _leaves(params[key], f"{prefix}/{key}")]
    return [(prefix, params)]


def objective(params: Mapping[str, Any]) -> float:
    """A fixed, deterministic score of any parameters: each leaf weighs by its key's CRC."""
    score = 1.0
    for key, value in _leaves(params):
        weight = (zlib.crc32(key.encode()) % 1000) / 1000.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            score += 0.05 * ((zlib.crc32(f"{key}={value}".encode()) % 100) / 100.0 - 0.5)
        elif key.endswith("_sparsity"):
            score -= (0.2 + weight) * float(value) ** (2 + 4 * weight)
        else:
            score -= 0.01 * weight * math.tanh(float(value))
    return score


def tuner_trace(case: Case, seed: int) -> list[Any]:
    """The suggestions in order; ``"NoMoreTrialError"`` where the tuner said it is used up."""
    tuner = PruneTPETuner(**case.class_args, seed=seed)
    tuner.update_search_space(copy.deepcopy(case.space()))
    if case.history is not None:
        tuner.import_data(case.history())
    trace: list[Any] = []
    running: deque[tuple[int, dict[str, Any]]] = deque()
    next_id = 0

    def ask() -> bool:
        nonlocal next_id
        try:
            params = tuner.generate_parameters(next_id)
        except nni.NoMoreTrialError:
            trace.append("NoMoreTrialError")
            return False
        trace.append(copy.deepcopy(params))
        running.append((next_id, params))
        next_id += 1
        return True

    for _ in range(2):
        ask()
    while running and next_id < case.trials:
        if next_id == 10 and case.update is not None:
            tuner.update_search_space(case.update())
        parameter_id, params = running.popleft()
        if parameter_id % _FAIL_EVERY == _FAIL_EVERY - 1:
            tuner.trial_end(parameter_id, False)
        else:
            score = math.nan if parameter_id % _NAN_EVERY == _NAN_EVERY - 1 else objective(params)
            tuner.receive_trial_result(parameter_id, params, {"default": score, "sparsity": 0.5})
            tuner.trial_end(parameter_id, True)
        if not ask():
            break
    return trace


ASSESSORS: dict[str, dict[str, Any]] = {
    "default": {},
    "percentile": {"rule": "percentile", "percentile": 40, "min_trials": 3, "start_step": 0},
    "minimize": {"optimize_mode": "minimize", "min_trials": 2},
}


def _histories(seed: int) -> list[tuple[str, list[Any]]]:
    """Reports of 14 trials, three at a time: AGP dips before ``pruned``, some plain floats,
    some NaN, some that fail."""
    rng = np.random.RandomState(seed)
    trials = []
    for index in range(14):
        agp = index % 3 == 0
        final = float(rng.uniform(0.3, 0.95))
        reports: list[Any] = []
        for epoch in range(8):
            pruned = not agp or epoch >= 3
            value = final - (0.3 if agp and epoch < 3 else 0.05 * (7 - epoch) / 7)
            value += float(rng.normal(0, 0.01))
            if index % 5 == 4:
                reports.append(value)
            elif index == 6 and epoch == 4:
                reports.append({"default": math.nan, "epoch": epoch, "pruned": pruned})
            else:
                reports.append({"default": value, "epoch": epoch, "pruned": pruned})
        trials.append((f"T{index}", reports))
    return trials


def assessor_trace(class_args: Mapping[str, Any], seed: int) -> list[str]:
    """The decision on every report, three trials interleaved; trial 9 fails at its end."""
    assessor = PruneEarlyStopAssessor(**class_args)
    trace = []
    histories = _histories(seed)
    for start in range(0, len(histories), 3):
        batch = histories[start:start + 3]
        stopped: set[str] = set()
        for step in range(8):
            for job, reports in batch:
                if job in stopped:
                    continue
                decision = assessor.assess_trial(job, reports[:step + 1])
                trace.append(f"{job}@{step}:{decision.name}")
                if decision.name == "Bad":
                    stopped.add(job)
                    assessor.trial_end(job, False)
        for job, _ in batch:
            if job not in stopped:
                assessor.trial_end(job, job != "T9")
    return trace


def record(kind: str, name: str) -> dict[str, Any]:
    """The traces of one case (``kind``: tuner or assessor), keyed by seed."""
    if kind == "tuner":
        case = CASES[name]
        return {str(seed): tuner_trace(case, seed) for seed in case.seeds}
    return {str(seed): assessor_trace(ASSESSORS[name], seed) for seed in SEEDS}


def cases() -> list[tuple[str, str]]:
    """Every (kind, case) recorded."""
    return [("tuner", name) for name in CASES] + [("assessor", name) for name in ASSESSORS]


def path_of(kind: str, name: str) -> Path:
    return HERE / f"{kind}-{name}.json"


def write_profiles() -> None:
    """Freeze the profiles the cases read (torch for the zoo ResNet's channel groups)."""
    import torch

    from nni_prune_tuners.trial.latency import layer_outputs
    from nni_prune_tuners.trial.profile import profile_model
    from tests.profiles import analytic_profile
    from tests.test_proxy_term import _presearched_profile
    from trials import models

    PROFILES.mkdir(parents=True, exist_ok=True)
    (PROFILES / "analytic.json").write_text(json.dumps(analytic_profile()))
    (PROFILES / "analytic_proxy.json").write_text(json.dumps(_presearched_profile(30)))
    (PROFILES / "mlp_digits.json").write_text(
        (ROOT / "search_spaces" / "mlp_digits.profile.json").read_text())
    torch.manual_seed(0)
    model = models.ZOO["resnet_digits"]().eval()
    raw = profile_model(model, name="resnet_digits", channel=True)
    (PROFILES / "resnet_channel.json").write_text(json.dumps(raw))
    outputs = layer_outputs(model, torch.zeros((1, *models.ResNetDigits.input_shape)))
    for entry in raw["layers"]:
        entry["outputs"] = outputs[entry["name"]]
    raw["latency"] = {"fixed": 0.2, "per_flops": 0.5, "per_outputs": 0.3, "device": "cpu",
                      "threads": 1, "batch": 64, "dense_ms": 10.2, "allocations": 20,
                      "mean_error": 0.05}
    (PROFILES / "resnet_latency.json").write_text(json.dumps(raw))


def main() -> None:
    parser = argparse.ArgumentParser(description="Record the golden traces (tests/golden).")
    parser.add_argument("--profiles", action="store_true", help="rewrite the frozen profiles too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    _logger.setLevel(logging.INFO)
    if args.profiles:
        write_profiles()
    for kind, name in cases():
        began = time.perf_counter()
        path_of(kind, name).write_text(json.dumps(record(kind, name), indent=0) + "\n")
        _logger.info("%s %s: %.1f s", kind, name, time.perf_counter() - began)


if __name__ == "__main__":
    main()
