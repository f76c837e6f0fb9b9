"""A torch-free NNI trial with an analytic pruning objective.

It stands in for a real fine-tuning run where speed matters more than realism: the tuner's and the
assessor's end-to-end tests and the fast benchmark objective. It keeps the features that make the
search hard: layers differ in size and in sensitivity (so the best allocation under a global budget
is far from uniform), gradual AGP beats one-shot Level at high sparsity, and an AGP trial's accuracy
dips while its masks ramp up before it recovers.

Run as an NNI trial with ``python -m trials.analytic_trial`` or standalone with
``python -m trials.analytic_trial --params '{"prune_method": {"_name": "agp", ...}}'``.

For end-to-end tests that must see an event happen, not merely make it likely on an idle machine,
two options make a trial's timing certain: ``--hopeless N`` makes NNI's trial number ``N`` report
chance accuracy and then wait, re-reporting, until the assessor has it killed; ``--wait-for PATH``
holds every trial until the test creates ``PATH``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)

SPARSITY_SUFFIX = "_sparsity"

#: layer name -> (weight parameter count, sensitivity to pruning); names follow the seed's space.
LAYERS: dict[str, tuple[int, float]] = {
    "conv0": (144, 3.0),
    "conv1": (4608, 0.6),
    "conv2": (18432, 0.25),
    "fc": (5120, 1.2),
}
DENSE_ACCURACY = 0.98
AGP_END_EPOCH = 3
EPOCHS = 6
_METHOD_DAMAGE = {"level": 1.0, "agp": 0.7}
#: Accuracy still to recover by fine-tuning right after the masks reach their final sparsity.
_RECOVERY = 0.04
#: What a hopeless trial reports: chance on ten classes, far below any configuration of
#: :func:`final_accuracy` (about 0.3 with every layer at 0.98, less ``_RECOVERY`` mid-recovery).
HOPELESS_ACCURACY = 0.1
#: A hopeless trial re-reports its last epoch this often: NNI consults the assessor only when a
#: report arrives, and the assessor can stop it only once enough trials have completed.
REPEAT_SECONDS = 1.0
#: A trial that waits (hopeless, or for ``--wait-for``) gives up after this long and fails, so that
#: a test that went wrong never leaves it running for good.
WAIT_LIMIT_SECONDS = 600.0


def layer_params() -> dict[str, int]:
    """Parameter counts of the analytic layers, in the shape of PruneTPE's ``layer_params``."""
    return {name: params for name, (params, _) in LAYERS.items()}


def search_space(
    *, methods: Sequence[str] = ("agp", "level"), low: float = 0.05, high: float = 0.98
) -> dict[str, Any]:
    """An NNI search space over every analytic layer, in the seed's nested shape."""
    layers = {f"{name}{SPARSITY_SUFFIX}": {"_type": "uniform", "_value": [low, high]}
              for name in LAYERS}
    return {"prune_method": {"_type": "choice",
                             "_value": [{"_name": method, **layers} for method in methods]}}


def _damage(sparsity: float, sensitivity: float) -> float:
    """Accuracy lost by one layer: negligible at low sparsity, explosive as it approaches 1."""
    return sensitivity * 0.02 * sparsity**3 / (1.0 - sparsity) ** 0.5


def final_accuracy(method: str, sparsities: Mapping[str, float]) -> float:
    """Accuracy after fine-tuning a model pruned with ``method`` to the given layer sparsities."""
    if method not in _METHOD_DAMAGE:
        raise ValueError(f"unknown prune method {method!r}; expected one of {sorted(_METHOD_DAMAGE)}")
    loss = 0.0
    for name, sparsity in sparsities.items():
        if name not in LAYERS:
            raise ValueError(f"unknown layer {name!r}; expected one of {sorted(LAYERS)}")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity of layer {name!r} must be in [0, 1), got {sparsity!r}")
        loss += _damage(sparsity, LAYERS[name][1])
    return max(0.0, DENSE_ACCURACY - _METHOD_DAMAGE[method] * loss)


def global_sparsity(sparsities: Mapping[str, float]) -> float:
    """Parameter-weighted sparsity over the named layers (``sparsity_scope: searched``)."""
    total = sum(LAYERS[name][0] for name in sparsities)
    return sum(LAYERS[name][0] * s for name, s in sparsities.items()) / total


def history(method: str, sparsities: Mapping[str, float]) -> list[dict[str, Any]]:
    """Per-epoch intermediate reports (Contract 5) converging to :func:`final_accuracy`.

    Level prunes at once and recovers during fine-tuning; AGP follows the cubic schedule up to
    ``AGP_END_EPOCH``, its accuracy dipping while the masks ramp up, and then recovers the same
    way from the epoch its masks are final (``pruned: true``).
    """
    target = final_accuracy(method, sparsities)
    first_pruned = AGP_END_EPOCH - 1 if method == "agp" else 0
    reports = []
    for epoch in range(EPOCHS):
        pruned = epoch >= first_pruned
        if method == "agp" and not pruned:
            ramp = 1.0 - (1.0 - (epoch + 1) / AGP_END_EPOCH) ** 3
            current = {name: s * ramp for name, s in sparsities.items()}
            accuracy = target - _RECOVERY - 0.25 * ramp
        else:
            current = dict(sparsities)
            # once the masks are final, both methods recover alike step by step, so at every
            # aligned step a better configuration is ahead of a worse one
            accuracy = target - _RECOVERY * math.exp(-(epoch - first_pruned))
        reports.append(
            {
                "default": max(0.0, accuracy),
                "epoch": epoch,
                "sparsity": global_sparsity(current),
                "pruned": pruned,
            }
        )
    return reports


def hopeless_history(sparsities: Mapping[str, float], *, judged_step: int = 1) -> list[dict[str, Any]]:
    """Reports of a trial that never learns: AGP's schedule at :data:`HOPELESS_ACCURACY`.

    Whatever its branch, it ramps its masks as AGP does (``pruned: false`` at chance accuracy
    first, reports an assessor must not judge) and stops at aligned step ``judged_step``, the
    first step the assessor judges by default (``start_step: 1``). Every completed trial has
    that step, AGP's four aligned steps and Level's six alike, so the assessor's comparison always
    has its references.
    """
    first_pruned = AGP_END_EPOCH - 1
    return [{**report, "default": HOPELESS_ACCURACY}
            for report in history("agp", sparsities)[: first_pruned + judged_step + 1]]


def parse_parameters(params: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """Split NNI parameters (Contract 2) into the method name and ``{layer: sparsity}``."""
    branch = params.get("prune_method")
    if not isinstance(branch, Mapping) or "_name" not in branch:
        raise ValueError(f"parameters need a nested 'prune_method' choice with '_name', got {params!r}")
    sparsities = {}
    for key, value in branch.items():
        if key == "_name":
            continue
        if not key.endswith(SPARSITY_SUFFIX):
            raise ValueError(f"unexpected parameter {key!r} in branch {branch['_name']!r}")
        sparsities[key[: -len(SPARSITY_SUFFIX)]] = float(value)
    return str(branch["_name"]), sparsities


def run(params: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Intermediate reports and the final report (Contract 5) for one parameter set."""
    method, sparsities = parse_parameters(params)
    reports = history(method, sparsities)
    final = {
        "default": reports[-1]["default"],
        "sparsity": global_sparsity(sparsities),
        "method": method,
    }
    return reports, final


def _wait_for(path: Path) -> bool:
    """Wait until ``path`` exists, at most :data:`WAIT_LIMIT_SECONDS`; False when it never did."""
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while not path.exists():
        if time.monotonic() > deadline:
            print(f"analytic_trial: no {path} after {WAIT_LIMIT_SECONDS:.0f} s", file=sys.stderr)
            return False
        time.sleep(0.2)
    return True


def _run_hopeless(nni: Any, params: Mapping[str, Any], epoch_seconds: float) -> int:
    """Report :func:`hopeless_history`, then its last report again until killed (or give up)."""
    reports = hopeless_history(parse_parameters(params)[1])
    for report in reports:
        nni.report_intermediate_result(report)
        time.sleep(epoch_seconds)
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(REPEAT_SECONDS)
        nni.report_intermediate_result(reports[-1])
    print(f"analytic_trial: hopeless trial not stopped after {WAIT_LIMIT_SECONDS:.0f} s",
          file=sys.stderr)
    return 1


def _sequence_numbers(text: str) -> frozenset[int]:
    return frozenset(int(part) for part in text.split(",") if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", help="JSON parameters; without it, ask NNI for them")
    parser.add_argument("--epoch-seconds", type=float, default=0.0,
                        help="pause after each intermediate report, as a real epoch would take "
                             "(lets an assessor's kill arrive before the trial ends)")
    parser.add_argument("--hopeless", type=_sequence_numbers, default=frozenset(), metavar="N[,N]",
                        help="NNI trial numbers (sequence ids) that run hopeless: chance accuracy "
                             "on AGP's schedule, then the last report again every second until "
                             "the assessor has the trial killed; never a final result")
    parser.add_argument("--wait-for", type=Path, metavar="PATH",
                        help="before anything else, wait until PATH exists (a test's go-ahead)")
    args = parser.parse_args(argv)
    if args.params is not None:
        _, final = run(json.loads(args.params))
        print(json.dumps(final))
        return 0

    import nni

    if args.wait_for is not None and not _wait_for(args.wait_for):
        return 1
    params = nni.get_next_parameter()
    if nni.get_sequence_id() in args.hopeless:
        return _run_hopeless(nni, params, args.epoch_seconds)
    reports, final = run(params)
    for report in reports:
        nni.report_intermediate_result(report)
        time.sleep(args.epoch_seconds)
    nni.report_final_result(final)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
