"""How many calibration batches does the one-shot proxy need? (issue #26, point 5)

Presearch's cost is its evaluations, and an evaluation of a model with BatchNorm is mostly the
re-estimation of its statistics on ``--calibrate``'s batches. For every allocation that
:mod:`benchmarks.proxy_rank` scored and fine-tuned (results in ``results/bench/proxy_rank``), the
proxy is scored again with fewer training batches of 128; the table gives Kendall's tau of each
against the same fine-tuned accuracies (seed 0), and the seconds of one proxy evaluation (one
torch thread, model built and weights loaded included; the 8-batch scores are proxy_rank's, timed
here on the first ``--timed`` allocations).

Run: ``python -m benchmarks.proxy_calibration`` after ``python -m benchmarks.proxy_rank``
(about 20 minutes on one core); writes ``proxy_calibration.{json,md}`` beside its results.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.proxy_rank import CALIBRATION_BATCHES, MODELS, OUT, TARGETS, proxy_score

_logger = logging.getLogger(__name__)

BATCHES = (1, 2, 4)
TIMED = 5


def rescored(data: Mapping[str, Any], batches: Sequence[int], timed: int) -> dict[str, Any]:
    """Tau against fine-tuned accuracy and seconds per evaluation at each number of batches."""
    import torch
    from scipy.stats import kendalltau

    torch.set_num_threads(1)
    allocations = data["allocations"]
    tuned = np.array([entry["runs"]["0"]["accuracy"] for entry in allocations])
    stored = np.array([entry["runs"]["0"]["proxy"] for entry in allocations])
    out: dict[str, Any] = {}
    for count in (*batches, CALIBRATION_BATCHES):
        chosen = allocations if count != CALIBRATION_BATCHES else allocations[:timed]
        scores, seconds = [], []
        for entry in chosen:
            started = time.perf_counter()
            scores.append(proxy_score(data["model"], entry["sparsities"], batches=count))
            seconds.append(time.perf_counter() - started)
        proxy = np.array(scores) if count != CALIBRATION_BATCHES else stored
        out[str(count)] = {"tau": float(kendalltau(proxy, tuned).statistic),
                           "seconds": float(np.median(seconds)),
                           "best_proxy_pick": float(tuned[int(np.argmax(proxy))])}
        _logger.info("%s at %s, %d batches: tau %.2f, %.2f s per evaluation", data["model"],
                     data["target"], count, out[str(count)]["tau"], out[str(count)]["seconds"])
    return out


def table(rows: Mapping[str, Mapping[str, Any]], counts: Sequence[int]) -> str:
    lines = ["| model | target | " + " | ".join(f"{c} batch{'es' if c > 1 else ''}: tau, s"
                                                for c in counts) + " |",
             "|---|---|" + "---|" * len(counts)]
    for key, row in rows.items():
        model, target = key.rsplit("-", 1)
        lines.append(f"| {model} | {target} | " + " | ".join(
            f"{row[str(c)]['tau']:.2f}, {row[str(c)]['seconds']:.2f}" for c in counts) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy_calibration",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--timed", type=int, default=TIMED,
                        help=f"allocations timed at proxy_rank's {CALIBRATION_BATCHES} batches")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("nni_prune_tuners").setLevel(logging.WARNING)
    counts = [int(c) for c in args.batches.split(",") if c]
    if not counts or any(c < 1 for c in counts) or args.timed < 1:
        parser.error("--batches: positive counts; --timed >= 1")
    rows: dict[str, Any] = {}
    for model in (m for m in args.models.split(",") if m):
        for target in (float(t) for t in args.targets.split(",") if t):
            path = args.out / f"{model}-{target}.json"
            if not path.exists():
                parser.error(f"{path} is missing: run python -m benchmarks.proxy_rank first")
            rows[f"{model}-{target}"] = rescored(json.loads(path.read_text()), counts, args.timed)
    markdown = table(rows, [*counts, CALIBRATION_BATCHES])
    (args.out / "proxy_calibration.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "proxy_calibration.md").write_text(markdown + "\n")
    sys.stdout.write(markdown + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
