"""The digits data (scikit-learn ``load_digits``, no download): the original 8x8 split and a harder
16x16 variant, both with fixed stratified splits; and a text task on the standard library's own
source files (:func:`stdlib_text_split`, no download either).

The original digits are too easy to tell pruning allocations apart (about 98% dense accuracy on 360
validation images, so accuracy moves in steps of 0.28 points). :func:`hard_digits_split` upsamples
every image to 16x16 and draws seeded random affine distortions and pixel noise, several copies per
original, so dense models score clearly below 100% and the validation set has over 2000 images
(steps of under 0.05 points). Each split is distorted from its own originals only, so no
validation or test image is a distortion of a training digit. Generation is numpy only and takes
well under a second.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

_logger = logging.getLogger(__name__)

#: The split never depends on a trial's seed, so every trial is scored on the same examples.
SPLIT_SEED = 0
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2

#: Seed of the distortions of :func:`hard_digits_split` (fixed: the data never depends on a trial).
HARD_SEED = 0
HARD_SIZE = 16
#: Distorted copies of each original digit, per split.
HARD_COPIES = {"train": 6, "val": 6, "test": 6}


@dataclass(frozen=True)
class HardDigitsOptions:
    """Distortion ranges of the hard variant (defaults are what the zoo is trained and scored on).

    Args:
        rotation_deg: rotations uniform in ``[-r, r]`` degrees.
        scale: isotropic scale uniform in ``[1 - s, 1 + s]``.
        shear: shear factor uniform in ``[-h, h]``.
        shift: translation uniform in ``[-t, t]`` output pixels, per axis.
        noise: standard deviation of additive Gaussian pixel noise (images are in [0, 1]).
        digit_size: side in output pixels of the undistorted digit, centred on the canvas, so
            that shifts and rotations keep most of it in view.
    """

    rotation_deg: float = 20.0
    scale: float = 0.15
    shear: float = 0.2
    shift: float = 2.0
    noise: float = 0.2
    digit_size: float = 12.0

    def __post_init__(self) -> None:
        for name in ("rotation_deg", "scale", "shear", "shift", "noise", "digit_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if self.scale >= 1:
            raise ValueError(f"scale must be < 1, got {self.scale!r}")
        if self.digit_size <= 0:
            raise ValueError(f"digit_size must be > 0, got {self.digit_size!r}")


@dataclass(frozen=True)
class DigitsSplit:
    """Float images ``(N, 1, H, W)`` scaled to [0, 1] and integer labels, per split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: torch.device | str) -> DigitsSplit:
        """Return the split with every tensor on ``device``."""
        return DigitsSplit(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 8, 8)``: what a model's ``input_shape`` must equal."""
        return tuple(self.x_train.shape[1:])


def _split_arrays(
    images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """60/20/20 stratified split of ``(images, labels)``: train, val, test as (x, y) pairs."""
    x_rest, x_test, y_rest, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=VAL_FRACTION / (1.0 - TEST_FRACTION),
        stratify=y_rest,
        random_state=SPLIT_SEED,
    )
    return x_train, y_train, x_val, y_val, x_test, y_test


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    return images, np.asarray(bunch.target, dtype=np.int64)


@functools.cache
def digits_split() -> DigitsSplit:
    """Load digits once per process and split it 60/20/20, stratified by label; images 1x8x8.

    Cached because the benchmarks run thousands of trials in one process.
    """
    images, labels = _digits_arrays()
    arrays = _split_arrays(images[:, None, :, :], labels)
    _logger.debug("digits split: %d train, %d val, %d test", *(len(a) for a in arrays[1::2]))
    return DigitsSplit(*(torch.from_numpy(a) for a in arrays))


def random_affines(n: int, rng: np.random.Generator, options: HardDigitsOptions) -> np.ndarray:
    """``n`` random 2x3 affine maps from output to source coordinates (centred, unit = pixel).

    Each is rotation @ shear @ scale, plus a shift; drawn in a fixed order from ``rng``.
    """
    angle = np.deg2rad(rng.uniform(-options.rotation_deg, options.rotation_deg, n))
    scale = rng.uniform(1.0 - options.scale, 1.0 + options.scale, n)
    shear = rng.uniform(-options.shear, options.shear, n)
    shift = rng.uniform(-options.shift, options.shift, (n, 2))
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear_m = np.zeros((n, 2, 2))
    shear_m[:, 0, 0] = shear_m[:, 1, 1] = 1.0
    shear_m[:, 0, 1] = shear
    forward = rot @ shear_m * scale[:, None, None]
    return np.concatenate([forward, shift[:, :, None]], axis=2)


def warp_images(
    images: np.ndarray, affines: np.ndarray, size: int, digit_size: float | None = None
) -> np.ndarray:
    """Resample square ``images`` ``(N, h, h)`` onto ``size x size`` through ``affines`` ``(N, 2, 3)``.

    The source is the input scaled to ``digit_size`` output pixels (default ``size``) and centred;
    ``affines`` move it (forward maps, centred coordinates in output pixels), and each output
    pixel reads the source bilinearly, zeros outside. The identity map with ``digit_size = size``
    is plain bilinear upsampling. Vectorised over images (numpy only).
    """
    n, h, w = images.shape
    if h != w or affines.shape != (n, 2, 3):
        raise ValueError(f"need square images (N, h, h) and affines (N, 2, 3), got "
                         f"{images.shape} and {affines.shape}")
    centre = (size - 1) / 2.0
    grid = np.arange(size, dtype=np.float64) - centre
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    points = np.stack([gx.ravel(), gy.ravel()])  # (2, size*size), rows x and y
    # Inverse of the forward map, so each output pixel reads its source position.
    linear = np.linalg.inv(affines[:, :, :2])
    src = linear @ (points[None, :, :] - affines[:, :, 2:])
    ratio = h / (digit_size if digit_size is not None else size)  # output to input pixels
    sx = src[:, 0] * ratio + (h - 1) / 2.0
    sy = src[:, 1] * ratio + (h - 1) / 2.0
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = sx - x0, sy - y0
    padded = np.pad(images.astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    out = np.zeros_like(sx)
    idx = np.arange(n)[:, None]
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yy = np.clip(y0 + dy, -1, h) + 1
            xx = np.clip(x0 + dx, -1, w) + 1
            out += wy * wx * padded[idx, yy, xx]
    return out.reshape(n, size, size)


def distort(
    images: np.ndarray, labels: np.ndarray, copies: int, rng: np.random.Generator,
    options: HardDigitsOptions, size: int = HARD_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` distorted, noisy ``size x size`` versions of each image, clipped to [0, 1]."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies!r}")
    source = np.repeat(images, copies, axis=0)
    warped = warp_images(source, random_affines(len(source), rng, options), size, options.digit_size)
    noisy = warped + rng.normal(0.0, options.noise, warped.shape) if options.noise else warped
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)[:, None], np.repeat(labels, copies)


@functools.cache
def hard_digits_split(options: HardDigitsOptions = HardDigitsOptions()) -> DigitsSplit:
    """The hard 16x16 variant: the same 60/20/20 split of the originals, each split distorted.

    :data:`HARD_COPIES` distorted copies per original (train, val and test 6 each: 6462 / 2160 /
    2160 images), drawn from ``numpy.random.default_rng(HARD_SEED)`` one split after another, so
    the data is identical in every process and on every platform numpy runs on.
    """
    images, labels = _digits_arrays()
    x_train, y_train, x_val, y_val, x_test, y_test = _split_arrays(images, labels)
    rng = np.random.default_rng(HARD_SEED)
    parts: list[np.ndarray] = []
    for split, (x, y) in zip(HARD_COPIES, ((x_train, y_train), (x_val, y_val), (x_test, y_test)),
                             strict=True):
        parts.extend(distort(x, y, HARD_COPIES[split], rng, options))
    _logger.debug("hard digits split: %d train, %d val, %d test", *(len(a) for a in parts[1::2]))
    return DigitsSplit(*(torch.from_numpy(a) for a in parts))


#: Modules of the standard library whose source the text task tells apart (one class each).
TEXT_MODULES = ("argparse", "difflib", "inspect", "tarfile")
#: Characters per example of the text task; codes above 126 read as 127.
TEXT_WINDOW = 48
TEXT_VOCAB = 128


def _windows(text: str, rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` seeded non-overlapping windows of ``text`` as character codes (float, exact)."""
    codes = np.minimum(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32), TEXT_VOCAB - 1)
    starts = rng.permutation(len(codes) // TEXT_WINDOW)[:count] * TEXT_WINDOW
    return np.stack([codes[s:s + TEXT_WINDOW] for s in starts]).astype(np.float32)


@functools.cache
def stdlib_text_split() -> DigitsSplit:
    """Which standard-library module a 48-character window of Python source comes from.

    The source files ship with Python (no download). Each file is cut 60/20/20 by position into
    train, val and test text, so no window of one split overlaps another; each class has as
    many windows per split as the shortest file gives. Inputs are ``(N, 48)`` float character
    codes, which the text model casts to token ids (so ``--input-shape 48`` profiles it). The
    exact text follows the Python version: accuracies compare within one version only.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    sources = [inspect.getsource(importlib.import_module(name)) for name in TEXT_MODULES]
    bounds = (0.0, 1.0 - VAL_FRACTION - TEST_FRACTION, 1.0 - TEST_FRACTION, 1.0)
    parts = []
    for lo, hi in itertools.pairwise(bounds):
        texts = [src[int(lo * len(src)):int(hi * len(src))] for src in sources]
        count = min(len(text) // TEXT_WINDOW for text in texts)
        x = np.concatenate([_windows(text, rng, count) for text in texts])
        y = np.repeat(np.arange(len(texts), dtype=np.int64), count)
        parts.extend([x, y])
    _logger.debug("stdlib text split: %d train, %d val, %d test", *(len(a) for a in parts[1::2]))
    return DigitsSplit(*(torch.from_numpy(a) for a in parts))


#: Data variants by name: ``digits`` (8x8, the default), ``digits_hard`` (16x16, the zoo's) and
#: ``stdlib_text`` (the text model's).
DATA_VARIANTS: dict[str, Callable[[], DigitsSplit]] = {
    "digits": digits_split,
    "digits_hard": hard_digits_split,
    "stdlib_text": stdlib_text_split,
}


def load_split(variant: str) -> DigitsSplit:
    """The split of data ``variant`` (a key of :data:`DATA_VARIANTS`), cached per process."""
    if variant not in DATA_VARIANTS:
        raise ValueError(f"unknown data variant {variant!r}; expected one of {list(DATA_VARIANTS)}")
    return DATA_VARIANTS[variant]()
