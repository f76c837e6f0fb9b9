"""What does the one-shot proxy cost, and how much of it does it need? (issue #26, point 5)

One presearch evaluation re-estimates the BatchNorm statistics on ``--calibrate``'s batches and
then runs the user's metric; on the zoo (``trials.profile_model:val_accuracy``, 2160 validation
samples) the metric is most of the time. For every allocation that :mod:`benchmarks.proxy_rank`
scored and fine-tuned (``results/bench/proxy_rank``), the proxy is scored again at each setting
``BxN``: ``B`` training batches of 128 for the statistics, accuracy on the first ``N`` validation
samples (0: all). The table gives Kendall's tau of each against the same fine-tuned accuracies
(seed 0) and the seconds of one evaluation (one torch thread; model built and weights loaded
included). Setting ``8x0`` is proxy_rank's own score, timed here on the first ``--timed``
allocations.

Run: ``python -m benchmarks.proxy_calibration`` after ``python -m benchmarks.proxy_rank``
(about half an hour on one core); writes ``proxy_calibration.{json,md}`` beside its results.
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

#: ``(batches, validation samples)``; 0 samples: the whole validation split.
SETTINGS = ((1, 0), (2, 0), (4, 0), (2, 540), (2, 1080))
#: proxy_rank's own setting, whose scores are stored.
STORED = (CALIBRATION_BATCHES, 0)
TIMED = 5


def label(setting: tuple[int, int]) -> str:
    return f"{setting[0]}x{setting[1]}"


def parse_setting(text: str) -> tuple[int, int]:
    """``"BxN"`` -> ``(B, N)``; ValueError naming the text unless B >= 1 and N >= 0."""
    batches, _, samples = text.partition("x")
    try:
        setting = (int(batches), int(samples))
    except ValueError:
        raise ValueError(f"setting {text!r}: expected BxN, e.g. 2x540") from None
    if setting[0] < 1 or setting[1] < 0:
        raise ValueError(f"setting {text!r}: batches >= 1 and samples >= 0 please")
    return setting


def rescored(data: Mapping[str, Any], settings: Sequence[tuple[int, int]],
             timed: int) -> dict[str, Any]:
    """Tau against fine-tuned accuracy and seconds per evaluation at each setting."""
    import torch
    from scipy.stats import kendalltau

    torch.set_num_threads(1)
    allocations = data["allocations"]
    tuned = np.array([entry["runs"]["0"]["accuracy"] for entry in allocations])
    out: dict[str, Any] = {}
    for setting in (*settings, STORED):
        chosen = allocations[:timed] if setting == STORED else allocations
        scores, seconds = [], []
        for entry in chosen:
            started = time.perf_counter()
            scores.append(proxy_score(data["model"], entry["sparsities"], batches=setting[0],
                                      val_samples=setting[1] or None))
            seconds.append(time.perf_counter() - started)
        proxy = (np.array([entry["runs"]["0"]["proxy"] for entry in allocations])
                 if setting == STORED else np.array(scores))
        row = {"tau": float(kendalltau(proxy, tuned).statistic),
               "seconds": float(np.median(seconds)),
               "best_proxy_pick": float(tuned[int(np.argmax(proxy))])}
        out[label(setting)] = row
        _logger.info("%s at %s, %s: tau %.2f, %.2f s per evaluation", data["model"],
                     data["target"], label(setting), row["tau"], row["seconds"])
    return out


def table(rows: Mapping[str, Mapping[str, Any]], settings: Sequence[tuple[int, int]]) -> str:
    lines = ["| model | target | " + " | ".join(
        f"{b} batch{'es' if b > 1 else ''}, {n or 'all'} val: tau, s" for b, n in settings) + " |",
        "|---|---|" + "---|" * len(settings)]
    for key, row in rows.items():
        model, target = key.rsplit("-", 1)
        lines.append(f"| {model} | {target} | " + " | ".join(
            f"{row[label(s)]['tau']:.2f}, {row[label(s)]['seconds']:.2f}" for s in settings)
            + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy_calibration",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)))
    parser.add_argument("--settings", default=",".join(label(s) for s in SETTINGS),
                        help="comma list of BxN: B calibration batches, N validation samples")
    parser.add_argument("--timed", type=int, default=TIMED,
                        help=f"allocations timed at proxy_rank's own {label(STORED)}")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    try:
        settings = [parse_setting(s) for s in args.settings.split(",") if s]
    except ValueError as error:
        parser.error(f"--settings: {error}")
    if not settings or args.timed < 1:
        parser.error("--settings: at least one BxN; --timed >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("nni_prune_tuners").setLevel(logging.WARNING)
    rows: dict[str, Any] = {}
    for model in (m for m in args.models.split(",") if m):
        for target in (float(t) for t in args.targets.split(",") if t):
            path = args.out / f"{model}-{target}.json"
            if not path.exists():
                parser.error(f"{path} is missing: run python -m benchmarks.proxy_rank first")
            rows[f"{model}-{target}"] = rescored(json.loads(path.read_text()), settings,
                                                 args.timed)
    markdown = table(rows, [*settings, STORED])
    (args.out / "proxy_calibration.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "proxy_calibration.md").write_text(markdown + "\n")
    sys.stdout.write(markdown + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
