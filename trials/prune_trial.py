"""The reference NNI trial: parameters -> prune (Level, AGP or channel) -> fine-tune -> report.

Run under NNI as ``python -m trials.prune_trial`` (parameters from ``nni.get_next_parameter()``),
or standalone as ``python -m trials.prune_trial --params '{"prune_method": {...}}'``, which runs
the same code and prints the final result as JSON. :func:`run_trial` is the in-process API that
the benchmarks and the demo call. ``--model module:factory`` picks any model of the zoo
(``trials.models:resnet_digits``) or your own; the default is the digits CNN on the 8x8 digits.
Masks, the AGP schedule and the step hook come from :class:`nni_prune_tuners.trial.Pruner`
(Contract 7), as in a user's own trial; this module adds the dense training, its cache and the data.
``prune_method: channel`` (Contract 10) removes whole channels for real with
:func:`nni_prune_tuners.trial.prune_channels` right after the dense weights are loaded, builds the
fine-tuning optimizer after that, and reports the FLOPs removed (``flops_removed``, counted on the
pruned module against the dense one) beside ``sparsity`` (the weights removed), and the pruned
model's measured latency against the dense one's (``latency_ratio``, batch 16, one thread), so that
``export`` never picks a pruned model that is not faster.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn

from nni_prune_tuners import params as grammar
from nni_prune_tuners.latency import interleaved_medians
from nni_prune_tuners.params import AGP, CHANNEL, METHOD_KEY, SPARSITY_SUFFIX, sparsity_key
from nni_prune_tuners.trial import Pruner
from nni_prune_tuners.trial.inputs import load_factory
from nni_prune_tuners.trial.latency import forwards
from trials.atomic import write_atomic
from trials.data import DATA_VARIANTS, DigitsSplit, load_split
from trials.masking import AgpSchedule, layer_weight, prunable_layers

_logger = logging.getLogger(__name__)

#: A channel trial's ``latency_ratio``: batch, timed samples, forwards per sample (about 0.1 s
#: of the zoo's dense models); cheap beside the fine-tuning.
LATENCY_BATCH, LATENCY_REPEATS, LATENCY_FORWARDS = 16, 7, 20

#: AGP with the seed's ``end_epoch=3`` then fine-tunes two epochs at its final sparsity.
DEFAULT_EPOCHS = 5
CACHE_ENV = "PRUNE_TRIAL_CACHE"
#: The model of ``make demo`` and of every trial that names none.
DEFAULT_MODEL = "trials.models:digits_cnn"

_DENSE_SEED = 0
_BATCH_SIZE = 64
_MOMENTUM = 0.9
_WEIGHT_DECAY = 5e-4

_dense_memo: dict[Path, dict[str, torch.Tensor]] = {}


@dataclass(frozen=True)
class Recipe:
    """How one model is trained dense (Adam, or AdamW with ``weight_decay``; cosine) and fine-tuned.

    Attributes:
        epochs: dense training epochs.
        lr: dense learning rate.
        weight_decay: AdamW's decoupled weight decay (0: plain Adam).
        finetune_lr: learning rate of the trial's fine-tuning.
        finetune_optimizer: ``"sgd"`` (momentum 0.9, weight decay 5e-4) or ``"adamw"`` (the
            dense ``weight_decay``); Transformers fine-tune poorly with plain SGD.
        finetune_cosine: anneal the fine-tuning rate to 0 over the trial's epochs (cosine), so the
            final accuracy does not hang on the last few batches at a high rate.
        version: part of the cache file name: bump it when the recipe or the model changes, so a
            stale cache is never loaded.
    """

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.0
    finetune_lr: float = 0.02
    finetune_optimizer: str = "sgd"
    finetune_cosine: bool = True
    version: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("lr", "finetune_lr"):
            value = getattr(self, name)
            if not (isinstance(value, float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite float > 0, got {value!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.finetune_optimizer not in ("sgd", "adamw"):
            raise ValueError(
                f"finetune_optimizer must be 'sgd' or 'adamw', got {self.finetune_optimizer!r}")


#: Recipes of the zoo by ``module:factory``; any other model gets ``Recipe()``.
RECIPES: dict[str, Recipe] = {
    DEFAULT_MODEL: Recipe(epochs=30, lr=3e-3, finetune_cosine=False),
    "trials.models:resnet_digits": Recipe(epochs=12, lr=3e-3),
    "trials.models:mobilenet_digits": Recipe(epochs=12, lr=3e-3),
    "trials.models:vit_digits": Recipe(epochs=20, lr=1e-3, weight_decay=0.05, finetune_lr=3e-3,
                                       finetune_optimizer="adamw"),
    "trials.models:mlp_digits": Recipe(epochs=15, lr=1e-3),
}


def build_model(spec: str) -> nn.Module:
    """A fresh, untrained model from the factory ``spec``; ``ValueError`` if it is no ``nn.Module``."""
    model = load_factory(spec)()
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def data_variant(model: nn.Module, data: str | None = None) -> str:
    """The data variant a model trains on: ``data`` if given, else its ``data_variant``
    attribute, else ``digits``; checked against the model's ``input_shape`` when it has one."""
    variant = data if data is not None else getattr(model, "data_variant", "digits")
    if variant not in DATA_VARIANTS:
        raise ValueError(f"unknown data variant {variant!r}; expected one of {list(DATA_VARIANTS)}")
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        image_shape = load_split(variant).image_shape
        if tuple(shape) != image_shape:
            raise ValueError(f"data {variant!r} has images of shape {image_shape}, but the model's "
                             f"input_shape is {tuple(shape)}")
    return variant


@dataclass
class TrialResult:
    """Outcome of one trial; ``final_metrics()`` is the dict reported to NNI (Contract 5).

    Attributes:
        accuracy: validation accuracy after fine-tuning (NNI's ``default``).
        test_accuracy: accuracy on the held-out test split.
        dense_accuracy: validation accuracy of the dense model the trial started from.
        sparsity: parameter-weighted fraction of zero weights over the named layers, measured;
            with ``channel``, the fraction of the prunable layers' weights removed.
        target_sparsity: the tuner's global target, ``sum(n_i * s_i) / sum(n_i)`` over the
            named layers; ``sparsity`` differs from it only by the rounding of counts. With
            ``channel``: the FLOPs removed that the whole-channel ratios predict.
        method: ``"level"``, ``"agp"`` or ``"channel"``.
        layer_sparsity: measured sparsity of each named layer (``channel``: each named group's
            fraction of channels removed).
        history: the intermediate dicts, one per epoch.
        state_dict: the pruned weights (CPU tensors, masks applied).
        flops_removed: ``channel`` only: the fraction of FLOPs removed, counted on the pruned
            module against the dense one (:func:`~nni_prune_tuners.trial.count_flops`).
        model: ``channel`` only: the pruned module, whose shapes a state dict does not hold.
        latency_ratio: ``channel`` only: the pruned module's median forward time over the dense
            one's (:func:`latency_ratio`); ``export`` passes over a trial at or above 1.
    """

    accuracy: float
    test_accuracy: float
    dense_accuracy: float
    sparsity: float
    target_sparsity: float
    method: str
    layer_sparsity: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    flops_removed: float | None = None
    model: nn.Module | None = field(default=None, repr=False)
    latency_ratio: float | None = None

    def final_metrics(self) -> dict[str, Any]:
        """The final result dict: ``default``, ``sparsity``, ``method``, plus ``test_acc``
        (and ``flops_removed`` and ``latency_ratio`` for ``channel``)."""
        metrics = {
            "default": self.accuracy,
            "sparsity": self.sparsity,
            "method": self.method,
            "test_acc": self.test_accuracy,
            "dense_acc": self.dense_accuracy,
        }
        if self.flops_removed is not None:
            metrics["flops_removed"] = self.flops_removed
        if self.latency_ratio is not None:
            metrics["latency_ratio"] = self.latency_ratio
        return metrics


def latency_ratio(dense: nn.Module, pruned: nn.Module, x: torch.Tensor) -> float:
    """The pruned model's median forward time over the dense one's, one torch thread, timed
    interleaved (:func:`nni_prune_tuners.latency.interleaved_medians`) so that load drift hits
    both alike."""
    dense.eval()
    pruned.eval()
    with torch_threads(1):
        medians, _ = interleaved_medians(
            {"dense": forwards(dense, x, LATENCY_FORWARDS),
             "pruned": forwards(pruned, x, LATENCY_FORWARDS)}, repeats=LATENCY_REPEATS)
    return medians["pruned"] / medians["dense"]


def parse_params(params: Any, layer_names: Sequence[str]) -> tuple[str, dict[str, float]]:
    """Validate Contract 2 parameters and return ``(method, {layer: sparsity})``.

    The grammar is :func:`nni_prune_tuners.params.parse`'s; a tuner sends exactly the nested
    ``prune_method`` choice, so anything else (another hyperparameter, an unknown layer) is an
    error here too. Fails loudly (``ValueError``) so that NNI marks the trial FAILED instead of
    recording a silent, meaningless success.
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"parameters must be a JSON object, got {params!r}")
    if set(params) != {METHOD_KEY}:
        raise ValueError(f"parameters must have exactly the key '{METHOD_KEY}', got {sorted(params)}")
    parsed = grammar.parse(params)
    assert parsed.method is not None  # parse names a method or raises
    for key in parsed.others.get(METHOD_KEY, {}):
        raise ValueError(f"unexpected parameter key {key!r}; layer keys end in '{SPARSITY_SUFFIX}'")
    for layer in parsed.sparsities:
        if layer not in layer_names:
            raise ValueError(f"unknown layer {layer!r} in {sparsity_key(layer)!r}; prunable layers: "
                             f"{list(layer_names)}")
    return parsed.method, parsed.sparsities


def default_cache_dir() -> Path:
    """``$PRUNE_TRIAL_CACHE`` if set, else ``trials/cache/`` beside this module (git-ignored)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(__file__).resolve().parent / "cache"


def select_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when available, else CPU; ``ValueError`` naming a device
    torch does not know or CUDA that is not there, before any work."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        selected = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: expected cpu, cuda, cuda:N or another torch "
                         f"device type") from exc
    if selected.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine")
    return selected


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``num_threads`` torch CPU threads (None: leave the setting alone).

    The digits CNN is so small that one thread is as fast as several, and far faster when
    concurrent trials or other processes compete for the cores.
    """
    if num_threads is None:
        yield
        return
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be an int >= 1 or None, got {num_threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in [0, 1]."""
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DigitsSplit,
    generator: torch.Generator,
    *,
    batch_size: int = _BATCH_SIZE,
) -> None:
    """One pass over the training split in a seeded random order (no DataLoader: tensors fit)."""
    model.train()
    order = torch.randperm(len(data.y_train), generator=generator).to(data.y_train.device)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def train_dense(
    *, seed: int = _DENSE_SEED, device: str | None = None, num_threads: int | None = 1,
    model: str = DEFAULT_MODEL, data: str | None = None,
) -> dict[str, torch.Tensor]:
    """Train ``model`` (``module:factory``) dense from scratch on its data; returns a CPU state dict."""
    variant = data_variant(build_model(model), data)
    with torch_threads(num_threads):
        return _train_dense(model, RECIPES.get(model, Recipe()), load_split(variant), seed,
                            select_device(device))


def _train_dense(
    spec: str, recipe: Recipe, split: DigitsSplit, seed: int, dev: torch.device
) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # before building: the initial weights are part of the recipe
    model = build_model(spec).to(dev)
    data = split.to(dev)
    optimizer: torch.optim.Optimizer
    if recipe.weight_decay:
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr,
                                      weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(recipe.epochs):
        train_epoch(model, optimizer, data, generator)
        scheduler.step()
    _logger.info("dense model trained: val accuracy %.4f", accuracy(model, data.x_val, data.y_val))
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def dense_cache_path(
    cache_dir: Path | None = None, *, model: str = DEFAULT_MODEL, data: str = "digits"
) -> Path:
    """Where the dense weights of ``model`` trained on ``data`` are cached.

    ``<factory>_dense_v<version>.pt`` on the original digits (``digits_cnn_dense_v1.pt``), with
    the data variant in the name otherwise; models outside ``trials.models`` carry their module.
    """
    root = cache_dir if cache_dir is not None else default_cache_dir()
    module_name, _, factory = model.partition(":")
    name = factory if module_name == "trials.models" else f"{module_name}.{factory}"
    if data != "digits":
        name = f"{name}_{data}"
    return Path(root) / f"{name}_dense_v{RECIPES.get(model, Recipe()).version}.pt"


def dense_state_dict(
    cache_dir: Path | None = None, *, model: str = DEFAULT_MODEL, data: str | None = None
) -> dict[str, torch.Tensor]:
    """Dense weights of ``model`` on ``data`` (default: the model's own variant), trained once and
    cached; safe when several trials start at the same time.

    The first caller trains under a file lock and writes atomically (temp file + ``os.replace``);
    the others wait on the lock and load the file with ``weights_only=True``. The loaded dict is
    memoised per process: callers must copy it (``load_state_dict`` does), never mutate it.
    """
    variant = data_variant(build_model(model), data)
    path = dense_cache_path(cache_dir, model=model, data=variant).resolve()
    if path in _dense_memo:
        return _dense_memo[path]
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        state = _load_dense_cache(path) if path.exists() else None
        if state is None:
            _logger.info("training the dense model into %s", path)
            trained = train_dense(model=model, data=variant)
            write_atomic(path, lambda handle: torch.save(trained, handle))
            state = torch.load(path, map_location="cpu", weights_only=True)
    _dense_memo[path] = state
    return state


def _load_dense_cache(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached dense weights, or None (and a warning naming the file) when the file is corrupt.

    A truncated, empty or overwritten cache would otherwise fail every trial with a torch error
    that names no file; the caller retrains it under the lock it holds.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises EOFError, OSError, UnpicklingError, RuntimeError...
        problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    else:
        if isinstance(state, dict) and state and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            return state
        problem = f"it holds a {type(state).__name__}, not a state dict"
    _logger.warning("dense-model cache %s is corrupt (%s): retraining it", path, problem)
    return None


def run_trial(
    params: Mapping[str, Any],
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    device: str | None = None,
    cache_dir: Path | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    agp: AgpSchedule | None = None,
    num_threads: int | None = 1,
    model: str = DEFAULT_MODEL,
    data: str | None = None,
) -> TrialResult:
    """Prune the cached dense ``model`` as ``params`` say, fine-tune, and score it.

    Args:
        params: Contract 2 parameters, e.g. ``{"prune_method": {"_name": "level",
            "conv0_sparsity": 0.5}}``; layers not named stay dense.
        epochs: fine-tuning epochs (one intermediate report each, epochs counted from 0).
        seed: seeds the fine-tuning order; same parameters and seed give the same result on CPU.
        device: torch device; default CUDA when available, else CPU.
        cache_dir: where the dense weights are cached (default :func:`default_cache_dir`).
        report: called with each intermediate dict (``nni.report_intermediate_result`` under NNI).
        agp: AGP schedule options (default the seed's 0/0/3/1); ignored by Level.
        num_threads: torch CPU threads for the trial, restored afterwards (None: as set).
        model: ``module:factory`` of the model (default the digits CNN); dense weights are
            trained once per model and data variant and cached.
        data: data variant (a key of :data:`trials.data.DATA_VARIANTS`); default the model's
            ``data_variant`` (the zoo: ``digits_hard``; the digits CNN: ``digits``).

    Raises:
        ValueError: on bad parameters or options (including AGP with ``epochs <= end_epoch``),
            before any training.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    schedule = agp if agp is not None else AgpSchedule()
    dev = select_device(device)
    net = build_model(model)
    method, _ = parse_params(params, list(prunable_layers(net)))
    if method == AGP and epochs <= schedule.end_epoch:  # before the dense model is trained
        raise ValueError(
            f"epochs must exceed the AGP end_epoch ({schedule.end_epoch}) so the masks reach "
            f"their final sparsity, got epochs={epochs}"
        )
    variant = data_variant(net, data)
    with torch_threads(num_threads):
        net.load_state_dict(dense_state_dict(cache_dir, model=model, data=variant))
        split = load_split(variant).to(dev)
        return _run(net.to(dev), params, epochs=epochs, seed=seed, data=split, report=report,
                    schedule=schedule, recipe=RECIPES.get(model, Recipe()))


def _finetune_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's fine-tuning optimizer over ``model``'s parameters as they are now."""
    if recipe.finetune_optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=recipe.finetune_lr,
                                 weight_decay=recipe.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=recipe.finetune_lr, momentum=_MOMENTUM,
                           weight_decay=_WEIGHT_DECAY)


def _run(
    model: nn.Module,
    params: Mapping[str, Any],
    *,
    epochs: int,
    seed: int,
    data: DigitsSplit,
    report: Callable[[dict[str, Any]], None] | None,
    schedule: AgpSchedule,
    recipe: Recipe,
) -> TrialResult:
    """Prune with :class:`Pruner` (any method), fine-tune its model with its optimizer, score.

    The optimizer comes from the recipe's factory, so that ``channel`` builds it after pruning;
    the example input (``channel``'s dependency analysis and FLOPs) is one validation sample.
    """
    dense_acc = accuracy(model, data.x_val, data.y_val)
    dense = copy.deepcopy(model) if grammar.read(params).method == CHANNEL else None
    pruner = Pruner(model, params, epochs=epochs, agp=schedule, example_inputs=data.x_val[:1],
                    optimizer_factory=lambda net: _finetune_optimizer(net, recipe))
    model, optimizer = pruner.model, pruner.optimizer
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
                 if recipe.finetune_cosine else None)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    for epoch in range(epochs):
        pruner.on_epoch_start(epoch)
        train_epoch(model, optimizer, data, generator)
        if scheduler is not None:
            scheduler.step()
        metrics = pruner.intermediate(accuracy(model, data.x_val, data.y_val), epoch)
        history.append(metrics)
        _logger.debug("epoch %d: %s", epoch, metrics)
        if report is not None:
            report(metrics)
    pruner.remove()
    final = pruner.final(accuracy(model, data.x_val, data.y_val))
    result = TrialResult(
        accuracy=final["default"],
        test_accuracy=accuracy(model, data.x_test, data.y_test),
        dense_accuracy=dense_acc,
        sparsity=final["sparsity"],
        target_sparsity=0.0,
        method=pruner.method,
        layer_sparsity={},
        history=history,
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        flops_removed=final.get("flops_removed"),
        latency_ratio=(None if dense is None
                       else latency_ratio(dense, model, data.x_val[:LATENCY_BATCH])),
    )
    return _with_targets(result, pruner)


def _with_targets(result: TrialResult, pruner: Pruner) -> TrialResult:
    """Fill what the parameters asked for beside what was measured, per named layer or group.

    Masks: the weighted global sparsity the tuner aimed at, and each named layer's zeros.
    Channels (a ``flops_removed`` result): the FLOPs removed, exact for whole channels
    (docs/channel.md), each named group's channels removed, and the pruned module.
    """
    if result.flops_removed is not None:
        groups = pruner.group_sparsity()
        result.target_sparsity = result.flops_removed
        result.layer_sparsity = {name: groups[name] for name in pruner.targets}
        result.model = pruner.model
    else:
        measured = pruner.layer_sparsity()
        layers = prunable_layers(pruner.model)
        sizes = {name: layer_weight(layers[name]).numel() for name in pruner.targets}
        result.target_sparsity = (sum(sizes[n] * s for n, s in pruner.targets.items())
                                  / sum(sizes.values()))
        result.layer_sparsity = {name: measured[name] for name in pruner.targets}
    _logger.info("%s: %.4f of the weights removed (target %.4f)", result.method, result.sparsity,
                 result.target_sparsity)
    if result.flops_removed is None and abs(result.sparsity - result.target_sparsity) > 1e-3:
        _logger.warning("measured sparsity %.6f is off the target %.6f", result.sparsity,
                        result.target_sparsity)
    return result


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trials.prune_trial",
        description="Prune a model (default the digits CNN) with Level, AGP or channel, "
        "fine-tune and report to NNI. Without --params the parameters come from "
        "nni.get_next_parameter().",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="module:factory of the model, e.g. trials.models:resnet_digits "
                        f"(default {DEFAULT_MODEL})")
    parser.add_argument("--data", choices=list(DATA_VARIANTS), default=None,
                        help="data variant (default: the model's data_variant, else digits)")
    parser.add_argument("--params", help="standalone mode: Contract 2 parameters as JSON")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"dense-weights cache (default: ${CACHE_ENV} or trials/cache/)")
    parser.add_argument("--save", type=Path, default=None,
                        help="save the pruned state_dict (masks applied) here; with channel, "
                        "the whole pruned module (torch.save(model); load it with "
                        "torch.load(path, weights_only=False))")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; the model is tiny and trials run side by side")
    defaults = AgpSchedule()
    parser.add_argument("--agp-initial-sparsity", type=float, default=defaults.initial_sparsity)
    parser.add_argument("--agp-start-epoch", type=int, default=defaults.start_epoch)
    parser.add_argument("--agp-end-epoch", type=int, default=defaults.end_epoch)
    parser.add_argument("--agp-frequency", type=int, default=defaults.frequency)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; returns the exit status (2 on bad input, so NNI marks the trial FAILED)."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.save is not None:
            check_writable(args.save)
        schedule = AgpSchedule(
            initial_sparsity=args.agp_initial_sparsity,
            start_epoch=args.agp_start_epoch,
            end_epoch=args.agp_end_epoch,
            frequency=args.agp_frequency,
        )
        if args.params is not None:
            try:
                params = json.loads(args.params)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--params is not valid JSON: {exc}") from exc
            report: Callable[[dict[str, Any]], None] | None = None
        else:
            import nni

            params = nni.get_next_parameter()
            if not params:  # outside NNI the standalone runtime returns {}
                raise ValueError("no parameters: run under NNI or pass --params JSON")
            report = nni.report_intermediate_result
        started = time.perf_counter()
        result = run_trial(params, epochs=args.epochs, seed=args.seed, device=args.device,
                           cache_dir=args.cache_dir, report=report, agp=schedule,
                           num_threads=args.threads, model=args.model, data=args.data)
    except ValueError as exc:
        print(f"prune_trial: error: {exc}", file=sys.stderr)
        return 2
    _logger.info("trial finished in %.2f s", time.perf_counter() - started)
    final = result.final_metrics()
    if args.params is None:
        import nni

        nni.report_final_result(final)
    else:
        print(json.dumps(final), flush=True)
    if args.save is not None:  # after the result is out: a failed save loses nothing else
        try:
            if result.model is not None:  # channel: the shapes live in the module
                torch.save(result.model.cpu(), args.save)
            else:
                torch.save(result.state_dict, args.save)
        except OSError as exc:
            print(f"prune_trial: error: cannot save --save {str(args.save)!r}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0


def check_writable(path: Path) -> None:
    """``ValueError`` naming ``path`` unless a file can be written there (before any training)."""
    if path.is_dir():
        raise ValueError(f"--save {str(path)!r} is a directory; give a file name")
    blocking = next((p for p in path.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ValueError(f"--save {str(path)!r} cannot be written: {str(blocking)!r} is not a directory")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as exc:
        raise ValueError(f"--save {str(path)!r} cannot be written: {exc.strerror or exc}") from None
    if not existed:
        path.unlink()


if __name__ == "__main__":
    sys.exit(main())
