"""Objective families for the allocation-search benchmark (issue 11): cheap, seeded, with known optima.

A :class:`Landscape` is everything a tuner run needs: the NNI search space, the global sparsity
target, PruneTPE's constraint classArgs, a function from Contract 2 parameters (already at the
target) to accuracy, the accuracy of each heuristic allocation alone, and the optimum where it
can be computed. Families:

- ``analytic``: :mod:`trials.analytic_trial` (nested agp/level, 4 layers).
- ``additive-{0,1,2}``: 20 layers of log-uniform size 500..500k; accuracy is the dense accuracy
  minus a per-layer damage that is about 0 below the layer's knee and steep above it. Separable
  and convex, so the optimum under the budget is exact (Lagrangian bisection).
- ``interact-{0,1,2}``: the same layers plus a damage for adjacent layers pruned past their knees
  together, and Gaussian metric noise (sd 0.003, seeded by ``noise_seed``).
- ``<net>-0.90`` / ``<net>-0.95``: a network trained once on digits, scored by validation accuracy
  after one-shot Level pruning at the suggested sparsities (no fine-tuning; BatchNorm statistics
  re-estimated on 1024 training images, which needs no gradient); imports torch lazily. The
  ResNets (12 and 22 layers) are the landscapes with many layers.

Synthetic layers get a plausible weight distribution (a scaled Student-t per layer, scale
``sqrt(2 / fan_in)``), so the profile carries magnitude and LAMP quantiles and shapes and all four
heuristics exist. Profiles are written under ``results/landscapes/`` (atomically).
"""

from __future__ import annotations

import functools
import importlib
import itertools
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nni_prune_tuners import sparsity
from nni_prune_tuners.profile import load_profile
from trials import analytic_trial
from trials.atomic import write_atomic

_logger = logging.getLogger(__name__)

CACHE_DIR = Path(__file__).resolve().parents[1] / "results" / "landscapes"
SYNTHETIC_LAYERS = 20
SYNTHETIC_TARGET = 0.9
SYNTHETIC_BOUNDS = (0.05, 0.99)
DENSE_ACCURACY = 0.98
NOISE_SD = 0.003
#: Width of the knee: damage grows smoothly from ~0 over a few hundredths of sparsity.
KNEE_WIDTH = 0.02
MEAN_KNEE = 0.87
#: The real networks (factories in ``trials.models``) and the targets each is scored at.
NETWORKS = {
    "mlp": "trials.models:mlp_digits",
    "cnn": "trials.models:digits_cnn",
    "deepmlp": "benchmarks.landscapes:deep_mlp_digits",
    "mlp8": "benchmarks.landscapes:mlp_digits8",
    "resnet": "trials.models:resnet_digits",
    "resnet20": "benchmarks.landscapes:resnet20_digits",
}
NETWORK_TARGETS = (0.9, 0.95)
NETWORK_BOUNDS = (0.05, 0.995)
#: Bump when the training recipe changes, so stale cached weights are never loaded (2: the
#: weights are shipped; version 1's were trained on each machine, and so were its cached profiles).
NETWORK_VERSION = 2
#: The trained weights of every network, shipped so that every machine scores the same networks:
#: training is repeatable on one machine, but another CPU's float kernels train other weights
#: (``resnet-0.90``: LAMP scored 72.31 on one machine, 69.31 on another, same code and seed).
#: After a change of recipe (and of :data:`NETWORK_VERSION`) the network is trained into
#: :data:`CACHE_DIR`; copy the new ``.pt`` here.
SHIPPED_DIR = Path(__file__).resolve().parent / "data" / "networks"
NETWORK_EPOCHS = 20
NETWORK_LR = 3e-3
#: Training images whose batch statistics re-estimate BatchNorm after each pruning (adaptive
#: BatchNorm): without it the ResNets score at chance at 0.9 whatever the allocation.
RECALIBRATION_IMAGES = 1024
RECALIBRATION_BATCH = 256
#: Grid points per layer of the exhaustive search that bounds the optimum of three-layer networks.
GRID_POINTS = 60
#: The heuristics each landscape scores alone (issue 11): PruneTPE's warm starts that need no
#: sensitivity curves (the landscapes' profiles carry none, so PruneTPE never proposes that one).
HEURISTICS = ("uniform", "global_magnitude", "lamp", "erk")
SYNTHETIC = tuple(f"{family}-{draw}" for family in ("additive", "interact") for draw in range(3))
NETWORK_LANDSCAPES = tuple(f"{net}-{target:.2f}" for net in NETWORKS for target in NETWORK_TARGETS)
LANDSCAPES: tuple[str, ...] = ("analytic", *SYNTHETIC, *NETWORK_LANDSCAPES)


@dataclass(frozen=True)
class Landscape:
    """One objective with everything a tuner run and its summary need.

    Attributes:
        name: e.g. ``additive-0``, ``interact-1``, ``mlp-0.90``.
        space: the NNI search space (one branch, or the nested ``prune_method`` shape).
        target: the global sparsity target.
        constraint: PruneTPE's ``profile`` or ``layer_params`` classArg.
        evaluate: Contract 2 parameters (already at the target) -> accuracy.
        heuristics: accuracy of each heuristic allocation alone (best branch where nested).
        optimum: the best accuracy under the budget where known (see ``optimum_kind``).
        weights: ``{layer: parameter count}``, the weights of the global sparsity.
        noise_sd: standard deviation of the metric noise (0 for noise-free landscapes).
        allocations: each heuristic's layer sparsities (of the branch that scored best).
        optimum_kind: how ``optimum`` was found: ``exact``, ``SLSQP`` (a lower bound) or
            ``grid`` (the best point of an exhaustive grid, a lower bound).
        holdout: real networks only: the same pruned network's accuracy on held-out test images
            that no tuner sees, so a gain found by searching the validation images can be told
            from one that generalises.
        holdout_heuristics: ``holdout`` of each heuristic allocation.
        network: real networks only: the key of the trained weights it scores
            (:func:`network_key`), so that a result recorded on other weights is not taken for
            one of these.
    """

    name: str
    space: dict[str, Any]
    target: float
    constraint: dict[str, Any]
    evaluate: Callable[[Mapping[str, Any]], float]
    heuristics: dict[str, float]
    optimum: float | None
    weights: dict[str, float] = field(default_factory=dict)
    noise_sd: float = 0.0
    allocations: dict[str, dict[str, float]] = field(default_factory=dict)
    optimum_kind: str = "exact"
    holdout: Callable[[Mapping[str, Any]], float] | None = None
    holdout_heuristics: dict[str, float] = field(default_factory=dict)
    network: str | None = None


# -- maths shared by the families ------------------------------------------------------------


def softplus_excess(s: np.ndarray, knee: np.ndarray, width: float = KNEE_WIDTH) -> np.ndarray:
    """``max(0, s - knee)`` smoothed over ``width``: about 0 below the knee, slope 1 above it."""
    return width * np.logaddexp(0.0, (np.asarray(s, dtype=float) - knee) / width)


def separable_optimum(
    damage: Callable[[np.ndarray], np.ndarray],
    weights: Sequence[float] | np.ndarray,
    lo: Sequence[float] | np.ndarray,
    hi: Sequence[float] | np.ndarray,
    target: float,
) -> np.ndarray:
    """The allocation minimising ``sum(damage(s))`` subject to ``sum(w s) / sum(w) = target``.

    ``damage`` maps a vector of layer sparsities to the vector of per-layer damages, each convex
    and increasing in its own layer's sparsity. The KKT conditions give ``damage_i'(s_i) =
    lambda * w_i`` (or a bound), so we bisect on ``lambda`` with every layer solved by bisection
    on its derivative, then rescale exactly to the target (Contract 3).
    """
    w = np.asarray(weights, dtype=float)
    low = np.asarray(lo, dtype=float)
    high = np.asarray(hi, dtype=float)
    h = 1e-7

    def slope(s: np.ndarray) -> np.ndarray:
        return (damage(np.minimum(s + h, 1 - 1e-12)) - damage(np.maximum(s - h, 0.0))) / (2 * h)

    def allocation(lam: float) -> np.ndarray:
        a, b = low.copy(), high.copy()
        for _ in range(64):
            mid = 0.5 * (a + b)
            below = slope(mid) < lam * w
            a = np.where(below, mid, a)
            b = np.where(below, b, mid)
        return 0.5 * (a + b)

    goal = target * w.sum()
    lam_lo, lam_hi = 0.0, 1.0
    while float(np.dot(w, allocation(lam_hi))) < goal and lam_hi < 1e12:
        lam_hi *= 4.0
    for _ in range(100):
        lam = 0.5 * (lam_lo + lam_hi)
        if float(np.dot(w, allocation(lam))) < goal:
            lam_lo = lam
        else:
            lam_hi = lam
    raw = np.maximum(allocation(lam_hi), 1e-9)
    return sparsity.rescale_to_target(raw, low, high, w, target)


def interacting_optimum(
    accuracy: Callable[[np.ndarray], float],
    start: np.ndarray,
    weights: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> float:
    """The best accuracy SLSQP finds from ``start`` under the budget: a lower bound of the optimum
    of a non-separable landscape, at least as good as ``start``."""
    from scipy.optimize import minimize

    share = weights / weights.sum()
    goal = float(np.dot(share, start))
    result = minimize(lambda s: -accuracy(s), start, method="SLSQP",
                      bounds=list(zip(lo, hi, strict=True)),
                      constraints=[{"type": "eq", "fun": lambda s: float(np.dot(share, s)) - goal}],
                      options={"maxiter": 500, "ftol": 1e-12})
    found = sparsity.rescale_to_target(np.maximum(result.x, 1e-9), lo, hi, weights, goal)
    return max(accuracy(found), accuracy(start))


def heuristic_allocation(
    heuristic: str,
    profile_path: Path | str | Mapping[str, int],
    layers: Sequence[str],
    lo: np.ndarray,
    hi: np.ndarray,
    target: float,
) -> np.ndarray:
    """The layer sparsities PruneTPE's warm start proposes for ``heuristic`` (``weight_by: params``,
    ``sparsity_scope: searched``), built from the same :mod:`nni_prune_tuners.sparsity` functions.

    ``profile_path`` is a Contract 4 profile file, or ``{layer: params}`` for ``uniform`` only.
    """
    if isinstance(profile_path, Mapping):
        params = np.array([float(profile_path[name]) for name in layers])
        entries = None
    else:
        profile = load_profile(profile_path)
        entries = [profile.layers[name] for name in layers]
        params = np.array([float(layer.params) for layer in entries])
    if heuristic not in HEURISTICS:
        raise ValueError(f"unknown heuristic {heuristic!r}; expected one of {list(HEURISTICS)}")
    share = min(target, 0.999)
    if heuristic == "uniform":
        raw = np.full(len(layers), share)
    elif entries is None:
        raise ValueError(f"heuristic {heuristic!r} needs a profile with quantiles and shapes")
    elif heuristic == "erk":
        raw = sparsity.erk_allocation([e.shape or (e.params,) for e in entries], share)
    else:
        attribute = "magnitude_quantiles" if heuristic == "global_magnitude" else "lamp_quantiles"
        raw = sparsity.threshold_allocation([getattr(e, attribute) for e in entries],
                                            params.tolist(), share)
    raw = np.maximum(raw, 1e-6)
    return sparsity.rescale_to_target(raw, lo, hi, params, target)


def layer_sparsities(params: Mapping[str, Any]) -> tuple[str | None, dict[str, float]]:
    """``(method, {layer: sparsity})`` from flat or nested (``prune_method``) Contract 2 params."""
    branch: Mapping[str, Any] = params
    method = None
    if "prune_method" in params:
        branch = params["prune_method"]
        method = str(branch["_name"])
    out = {}
    for key, value in branch.items():
        if key.endswith("_sparsity"):
            out[key[: -len("_sparsity")]] = float(value)
        elif key != "_name":
            raise ValueError(f"unexpected parameter {key!r} in {dict(params)!r}")
    return method, out


def flat_params(values: Mapping[str, float]) -> dict[str, float]:
    """Contract 2 parameters of one flat branch from ``{layer: sparsity}`` (what
    :func:`layer_sparsities` reads back)."""
    return {f"{layer}_sparsity": float(value) for layer, value in values.items()}


def flat_space(layers: Sequence[str], bounds: tuple[float, float]) -> dict[str, Any]:
    """One branch: a uniform sparsity per layer."""
    return {f"{name}_sparsity": {"_type": "uniform", "_value": list(bounds)} for name in layers}


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` so that a concurrent reader sees the old file or the whole new one."""
    write_atomic(path, lambda handle: handle.write(json.dumps(payload).encode("utf-8")))


# -- synthetic layers -------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticLayers:
    """The random draw behind ``additive-k`` and ``interact-k`` (same k, same layers)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    params: np.ndarray
    knee: np.ndarray
    sensitivity: np.ndarray
    coupling: np.ndarray  # damage of layers i and i+1 both past their knees (length n-1)
    scale: np.ndarray  # weight-magnitude scale per layer
    dof: np.ndarray  # Student-t degrees of freedom per layer (tail shape)

    def damage(self, s: np.ndarray) -> np.ndarray:
        """Per-layer damage: ``sens * (x + 4 x^2)`` with ``x`` the smoothed excess over the knee."""
        excess = softplus_excess(s, self.knee)
        return self.sensitivity * (excess + 4.0 * excess**2)

    def interaction(self, s: np.ndarray) -> float:
        excess = softplus_excess(s, self.knee)
        return float(np.sum(self.coupling * excess[:-1] * excess[1:]))


@functools.cache
def synthetic_layers(draw: int, n: int = SYNTHETIC_LAYERS) -> SyntheticLayers:
    """Seeded layers: sizes log-uniform in 500..500k, knees and sensitivities random.

    Larger layers tend to tolerate more pruning (higher knee, lower sensitivity) as in real
    networks, with enough noise that no heuristic recovers the optimum.
    """
    rng = np.random.RandomState(1000 + draw)
    shapes: list[tuple[int, ...]] = []
    for _ in range(n):
        size = math.exp(rng.uniform(math.log(500), math.log(500_000)))
        if rng.uniform() < 0.6:  # a 3x3 convolution
            c_in = max(1, round(math.sqrt(size / 9) * math.exp(rng.uniform(-0.5, 0.5))))
            c_out = max(1, round(size / 9 / c_in))
            shapes.append((c_out, c_in, 3, 3))
        else:
            d_in = max(1, round(math.sqrt(size) * math.exp(rng.uniform(-0.7, 0.7))))
            shapes.append((max(1, round(size / d_in)), d_in))
    params = np.array([float(np.prod(shape)) for shape in shapes])
    position = (np.log(params) - math.log(500)) / (math.log(500_000) - math.log(500))
    knee = np.clip(0.8 + 0.15 * position + rng.normal(0.0, 0.05, n), 0.3, 0.97)
    for _ in range(20):  # the weight-averaged knee sits just below the target: the budget binds
        knee = np.clip(knee + MEAN_KNEE - float(np.dot(params, knee) / params.sum()), 0.3, 0.97)
    sensitivity = 0.85 * np.exp(rng.uniform(math.log(0.3), math.log(3.0), n)) * (1.6 - position)
    coupling = np.exp(rng.uniform(math.log(2.0), math.log(20.0), n - 1))
    fan_in = np.array([float(np.prod(shape[1:])) for shape in shapes])
    scale = np.sqrt(2.0 / fan_in) * np.exp(rng.normal(0.0, 0.35, n))
    dof = np.exp(rng.uniform(math.log(3.0), math.log(30.0), n))
    names = tuple(f"layer{i:02d}" for i in range(n))
    return SyntheticLayers(names, tuple(shapes), params, knee, sensitivity, coupling, scale, dof)


def synthetic_profile(layers: SyntheticLayers, draw: int) -> dict[str, Any]:
    """A Contract 4 profile: shapes, and quantiles of a scaled Student-t sample per layer."""
    rng = np.random.RandomState(2000 + draw)
    levels = np.linspace(0.0, 1.0, 101)
    entries = []
    for i, name in enumerate(layers.names):
        weight = layers.scale[i] * rng.standard_t(layers.dof[i], int(layers.params[i]))
        entries.append({
            "name": name,
            "type": "Conv2d" if len(layers.shapes[i]) == 4 else "Linear",
            "shape": list(layers.shapes[i]),
            "params": int(layers.params[i]),
            "magnitude_quantiles": [float(q) for q in np.quantile(np.abs(weight), levels)],
            "lamp_quantiles": [float(q) for q in np.quantile(sparsity.lamp_scores(weight), levels)],
        })
    return {"format": 1, "model": f"synthetic-{draw}",
            "prunable_params": int(layers.params.sum()), "layers": entries}


@functools.cache
def _synthetic_profile_path(draw: int) -> Path:
    path = CACHE_DIR / f"synthetic-{draw}_profile.json"
    payload = synthetic_profile(synthetic_layers(draw), draw)
    if not path.exists() or json.loads(path.read_text()) != payload:
        write_json_atomic(path, payload)
    return path


def synthetic_accuracy(draw: int, interact: bool, s: np.ndarray) -> float:
    """Noise-free accuracy of the synthetic layers ``draw`` at layer sparsities ``s``."""
    layers = synthetic_layers(draw)
    loss = float(layers.damage(s).sum())
    if interact:
        loss += layers.interaction(s)
    return DENSE_ACCURACY - loss


@functools.cache
def _synthetic_reference(draw: int, interact: bool) -> tuple[dict[str, np.ndarray], float]:
    """The heuristic allocations and the optimum: computed once per process."""
    layers = synthetic_layers(draw)
    profile = _synthetic_profile_path(draw)
    lo = np.full(len(layers.names), SYNTHETIC_BOUNDS[0])
    hi = np.full(len(layers.names), SYNTHETIC_BOUNDS[1])
    allocations = {
        h: heuristic_allocation(h, profile, layers.names, lo, hi, SYNTHETIC_TARGET)
        for h in HEURISTICS
    }
    best = separable_optimum(layers.damage, layers.params, lo, hi, SYNTHETIC_TARGET)
    if not interact:
        return allocations, synthetic_accuracy(draw, False, best)
    truth = functools.partial(synthetic_accuracy, draw, True)
    return allocations, interacting_optimum(truth, best, layers.params, lo, hi)


def _synthetic(name: str, noise_seed: int) -> Landscape:
    family, _, suffix = name.partition("-")
    draw = int(suffix)
    interact = family == "interact"
    layers = synthetic_layers(draw)
    allocations, optimum = _synthetic_reference(draw, interact)
    noise = np.random.RandomState(noise_seed)

    def evaluate(params: Mapping[str, Any]) -> float:
        _, values = layer_sparsities(params)
        if set(values) != set(layers.names):
            raise ValueError(f"{name} needs every layer of {list(layers.names)}, got {sorted(values)}")
        value = synthetic_accuracy(draw, interact, np.array([values[n] for n in layers.names]))
        return value + float(noise.normal(0.0, NOISE_SD)) if interact else value

    return Landscape(
        name=name,
        space=flat_space(layers.names, SYNTHETIC_BOUNDS),
        target=SYNTHETIC_TARGET,
        constraint={"profile": str(_synthetic_profile_path(draw))},
        evaluate=evaluate,
        heuristics={h: synthetic_accuracy(draw, interact, a) for h, a in allocations.items()},
        optimum=optimum,
        weights={n: float(p) for n, p in zip(layers.names, layers.params, strict=True)},
        noise_sd=NOISE_SD if interact else 0.0,
        optimum_kind="SLSQP" if interact else "exact",
        allocations={h: dict(zip(layers.names, a.tolist(), strict=True))
                     for h, a in allocations.items()},
    )


# -- the analytic trial -----------------------------------------------------------------------


def _analytic() -> Landscape:
    space = analytic_trial.search_space()
    counts = analytic_trial.layer_params()
    names = list(counts)
    weights = np.array([float(counts[n]) for n in names])
    bounds = space["prune_method"]["_value"][0][f"{names[0]}_sparsity"]["_value"]
    lo, hi = np.full(len(names), bounds[0]), np.full(len(names), bounds[1])
    target = SYNTHETIC_TARGET

    def evaluate(params: Mapping[str, Any]) -> float:
        method, values = analytic_trial.parse_parameters(params)
        return analytic_trial.final_accuracy(method, values)

    methods = [option["_name"] for option in space["prune_method"]["_value"]]
    uniform = heuristic_allocation("uniform", counts, names, lo, hi, target)
    scores = {m: analytic_trial.final_accuracy(m, dict(zip(names, uniform, strict=True)))
              for m in methods}
    sensitivities = np.array([analytic_trial.LAYERS[n][1] for n in names])

    def damage(s: np.ndarray) -> np.ndarray:
        return sensitivities * 0.02 * s**3 / np.sqrt(1.0 - s)

    best = separable_optimum(damage, weights, lo, hi, target)
    optimum = max(analytic_trial.final_accuracy(m, dict(zip(names, best, strict=True)))
                  for m in methods)
    return Landscape(
        name="analytic",
        space=space,
        target=target,
        constraint={"layer_params": counts},
        evaluate=evaluate,
        heuristics={"uniform": max(scores.values())},
        optimum=optimum,
        weights={n: float(w) for n, w in zip(names, weights, strict=True)},
        allocations={"uniform": dict(zip(names, uniform.tolist(), strict=True))},
    )


# -- real networks ----------------------------------------------------------------------------


def deep_mlp_digits() -> Any:
    """A six-layer MLP on the hard 16x16 digits (``fc1``..``fc6``, 256-512-256-256-128-64-10):
    more layers to allocate than the zoo models that survive one-shot pruning at 0.9."""
    from collections import OrderedDict

    from torch import nn

    widths = (256, 512, 256, 256, 128, 64, 10)
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths), start=1):
        layers.append((f"fc{index}", nn.Linear(fan_in, fan_out)))
        if index < len(widths) - 1:
            layers.append((f"relu{index}", nn.ReLU()))
    model = nn.Sequential(OrderedDict(layers))
    model.input_shape = (1, 16, 16)  # type: ignore[assignment]
    model.data_variant = "digits_hard"  # type: ignore[assignment]
    return model


def resnet20_digits() -> Any:
    """The zoo ResNet three blocks deep per stage (ResNet-20's shape, widths 16/32/64): 22 layers
    to allocate (stem, 18 block convs, two shortcuts, head), BatchNorm, on the hard 16x16 digits."""
    from trials.models import ResNetDigits

    return ResNetDigits(blocks=(3, 3, 3))


def mlp_digits8() -> Any:
    """LeNet-300-100 (``fc1``..``fc3``) on the original 8x8 digits: the MLP landscape issue 11
    measured its prototype on, where one-shot pruning at 0.9 keeps most of the accuracy."""
    from collections import OrderedDict

    from torch import nn

    model = nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(64, 300)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(300, 100)), ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(100, 10)),
    ]))
    model.input_shape = (1, 8, 8)  # type: ignore[assignment]
    model.data_variant = "digits"  # type: ignore[assignment]
    return model


def _train(factory: Callable[[], Any], data: Any) -> dict[str, Any]:
    """Train ``factory()`` dense on ``data`` with a fixed seed; returns a CPU state dict."""
    import torch

    from trials.prune_trial import accuracy, train_epoch

    torch.manual_seed(0)
    model = factory()
    optimizer = torch.optim.Adam(model.parameters(), lr=NETWORK_LR)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=NETWORK_EPOCHS)
    generator = torch.Generator().manual_seed(0)
    for _ in range(NETWORK_EPOCHS):
        train_epoch(model, optimizer, data, generator)
        scheduler.step()
    _logger.info("trained %s: val accuracy %.4f", type(model).__name__,
                 accuracy(model, data.x_val, data.y_val))
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def network_factory(net: str) -> Callable[[], Any]:
    """The function that builds ``net``'s untrained model (:data:`NETWORKS`)."""
    module, _, attribute = NETWORKS[net].partition(":")
    return getattr(importlib.import_module(module), attribute)


def network_key(net: str, variant: str, split: Any) -> str:
    """The name of ``net``'s trained weights; the split's sizes are in it, so a changed data
    variant is never scored on stale weights."""
    return f"{net}_{variant}{len(split.y_train)}-{len(split.y_val)}_v{NETWORK_VERSION}"


@functools.cache
def trained_network(net: str) -> tuple[Any, dict[str, Any], Any, Path, str]:
    """``(model, dense weights, split, profile path, weights key)`` of ``net``: the shipped
    weights (:data:`SHIPPED_DIR`), else trained once and cached on disk.

    The first process trains (or profiles) under a file lock and writes the weights and the
    Contract 4 profile atomically; the others wait on the lock and load them. The model is
    shared by the landscapes of ``net`` and each evaluation overwrites its prunable weights;
    ``dense`` (prunable layer -> weight) is never modified.
    """
    import torch
    from filelock import FileLock

    from trials import data as trial_data
    from trials.masking import layer_weight, prunable_layers
    from trials.profile_model import profile_model
    from trials.prune_trial import data_variant

    torch.set_num_threads(1)
    factory = network_factory(net)
    model = factory()
    variant = data_variant(model)
    split = trial_data.load_split(variant)
    key = network_key(net, variant, split)
    shipped = SHIPPED_DIR / f"{key}.pt"
    weights = shipped if shipped.exists() else CACHE_DIR / f"{key}.pt"
    profile = CACHE_DIR / f"{key}_profile.json"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE_DIR / f"{key}.pt.lock")):
        if not weights.exists():
            state = _train(factory, split)
            write_atomic(weights, lambda handle: torch.save(state, handle))
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        if not profile.exists():
            write_json_atomic(profile, profile_model(model, name=factory.__name__,
                                                     input_shape=model.input_shape))
    model.eval()
    dense = {n: layer_weight(m).detach().clone() for n, m in prunable_layers(model).items()}
    return model, dense, split, profile, key


def _network(name: str) -> Landscape:
    import torch

    from nni_prune_tuners.trial import recalibrate_batchnorm
    from trials.masking import layer_weight, level_mask, prunable_layers
    from trials.prune_trial import accuracy

    net, _, target_text = name.rpartition("-")
    target = float(target_text)
    model, dense, split, profile, key = trained_network(net)
    modules = prunable_layers(model)
    names = list(modules)
    lo = np.full(len(names), NETWORK_BOUNDS[0])
    hi = np.full(len(names), NETWORK_BOUNDS[1])

    def score(values: Mapping[str, float], *, held_out: bool = False) -> float:
        with torch.no_grad():
            for layer, module in modules.items():
                weight = dense[layer]
                layer_weight(module).copy_(weight * level_mask(weight, float(values[layer])))
        recalibrate_batchnorm(model, split.x_train[:RECALIBRATION_IMAGES].split(RECALIBRATION_BATCH))
        if held_out:
            return accuracy(model, split.x_test, split.y_test)
        return accuracy(model, split.x_val, split.y_val)

    def checked(params: Mapping[str, Any]) -> dict[str, float]:
        _, values = layer_sparsities(params)
        if set(values) != set(names):
            raise ValueError(f"{name} needs every layer of {names}, got {sorted(values)}")
        return values

    def evaluate(params: Mapping[str, Any]) -> float:
        return score(checked(params))

    def holdout(params: Mapping[str, Any]) -> float:
        return score(checked(params), held_out=True)

    allocations = {h: dict(zip(names, heuristic_allocation(h, profile, names, lo, hi, target).tolist(),
                               strict=True))
                   for h in HEURISTICS}
    counts = {n: float(dense[n].numel()) for n in names}
    optimum = None
    if len(names) == 3:
        cache = profile.with_name(f"{profile.stem}_grid{GRID_POINTS}_{target:.2f}.json")
        optimum = _cached(cache, lambda: grid_optimum(score, counts, NETWORK_BOUNDS, target))
    return Landscape(
        name=name,
        space=flat_space(names, NETWORK_BOUNDS),
        target=target,
        constraint={"profile": str(profile)},
        evaluate=evaluate,
        heuristics={h: score(a) for h, a in allocations.items()},
        optimum=optimum,
        weights=counts,
        allocations=allocations,
        optimum_kind="grid",
        holdout=holdout,
        holdout_heuristics={h: score(a, held_out=True) for h, a in allocations.items()},
        network=key,
    )


def grid_optimum(
    score: Callable[[Mapping[str, float]], float],
    weights: Mapping[str, float],
    bounds: tuple[float, float],
    target: float,
    points: int = GRID_POINTS,
) -> float:
    """The best accuracy over a ``points x points`` grid of the two smaller of three layers, the
    largest solved from the budget: a lower bound of the optimum (exhaustive, so slow)."""
    names = sorted(weights, key=weights.get)  # type: ignore[arg-type]
    small, large = names[:2], names[2]
    grid = np.linspace(bounds[0], bounds[1], points)
    goal = target * sum(weights.values())
    best = -math.inf
    for a in grid:
        for b in grid:
            rest = (goal - weights[small[0]] * a - weights[small[1]] * b) / weights[large]
            if bounds[0] <= rest <= bounds[1]:
                best = max(best, score({small[0]: a, small[1]: b, large: rest}))
    return best


def _cached(path: Path, compute: Callable[[], float]) -> float:
    """``compute()``, stored in ``path`` so that every process and later run reuses it."""
    from filelock import FileLock

    with FileLock(str(path) + ".lock"):
        if not path.exists():
            write_json_atomic(path, compute())
        return float(json.loads(path.read_text()))


# -- entry point ------------------------------------------------------------------------------


def landscape(name: str, *, noise_seed: int = 0) -> Landscape:
    """Build the landscape ``name`` (one of :data:`LANDSCAPES`); ``noise_seed`` seeds its noise.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "analytic":
        return _analytic()
    if name in SYNTHETIC:
        return _synthetic(name, noise_seed)
    if name in NETWORK_LANDSCAPES:
        return _network(name)
    raise ValueError(f"unknown landscape {name!r}; expected one of {list(LANDSCAPES)}")

