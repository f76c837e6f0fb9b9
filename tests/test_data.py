"""Digits data: the original split is unchanged; the hard 16x16 variant is seeded, large, bounded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trials import data
from trials.data import (
    HardDigitsOptions,
    digits_split,
    hard_digits_split,
    load_split,
    random_affines,
    warp_images,
)


def _identity(n: int) -> np.ndarray:
    return np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (n, 1, 1))


def test_original_digits_split_is_unchanged() -> None:
    split = digits_split()
    assert split.image_shape == (1, 8, 8)
    assert [len(split.y_train), len(split.y_val), len(split.y_test)] == [1077, 360, 360]
    assert load_split("digits") is split


def test_hard_split_sizes_shapes_and_range() -> None:
    split = hard_digits_split()
    assert split.image_shape == (1, 16, 16)
    assert [len(split.y_train), len(split.y_val), len(split.y_test)] == [6462, 2160, 2160]
    assert len(split.y_val) >= 2000  # accuracy moves in steps <= 0.05 points
    for x in (split.x_train, split.x_val, split.x_test):
        assert x.dtype == torch.float32 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # stratified originals, six copies each: every class is present in every split
    for y in (split.y_train, split.y_val, split.y_test):
        counts = torch.bincount(y, minlength=10)
        assert int(counts.min()) > 0.08 * len(y)
    assert load_split("digits_hard") is split


def test_hard_split_copies_the_original_split() -> None:
    """Labels are the original split's labels, each repeated per copy: no digit crosses splits."""
    original, hard = digits_split(), hard_digits_split()
    pairs = {"train": (original.y_train, hard.y_train), "val": (original.y_val, hard.y_val),
             "test": (original.y_test, hard.y_test)}
    for split, (y_orig, y_hard) in pairs.items():
        assert torch.equal(torch.repeat_interleave(y_orig, data.HARD_COPIES[split]), y_hard)


def test_hard_split_is_deterministic() -> None:
    fresh = hard_digits_split.__wrapped__(HardDigitsOptions())
    cached = hard_digits_split()
    assert all(torch.equal(getattr(fresh, f), getattr(cached, f))
               for f in cached.__dataclass_fields__)


def test_distortions_make_copies_differ() -> None:
    split = hard_digits_split()
    copies = split.x_val[:6]  # six distortions of the first validation digit
    assert all(not torch.equal(copies[0], copies[i]) for i in range(1, 6))


def test_identity_warp_at_the_same_size_returns_the_image() -> None:
    images = np.random.default_rng(0).random((3, 8, 8))
    assert np.allclose(warp_images(images, _identity(3), 8), images)


def test_integer_shift_moves_the_image() -> None:
    images = np.random.default_rng(1).random((2, 8, 8))
    affines = _identity(2)
    affines[:, 0, 2] = 2.0  # content moves two pixels right
    out = warp_images(images, affines, 8)
    assert np.allclose(out[:, :, 2:], images[:, :, :-2])
    assert np.allclose(out[:, :, :2], 0.0)


def test_upsampling_keeps_a_constant_image_constant_inside() -> None:
    images = np.full((1, 8, 8), 0.5)
    out = warp_images(images, _identity(1), 16)
    assert np.allclose(out[0, 1:-1, 1:-1], 0.5)
    smaller = warp_images(images, _identity(1), 16, digit_size=8.0)
    assert np.allclose(smaller[0, :3], 0.0) and np.allclose(smaller[0, 6:10, 6:10], 0.5)


def test_random_affines_stay_in_their_ranges() -> None:
    options = HardDigitsOptions(rotation_deg=0.0, scale=0.0, shear=0.0, shift=1.5)
    affines = random_affines(200, np.random.default_rng(0), options)
    assert np.allclose(affines[:, :, :2], np.eye(2))
    assert np.abs(affines[:, :, 2]).max() <= 1.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise": -0.1}, "noise"),
        ({"rotation_deg": float("nan")}, "rotation_deg"),
        ({"scale": 1.0}, "scale must be < 1"),
        ({"shift": "2"}, "shift must be a number"),
        ({"digit_size": 0.0}, "digit_size must be > 0"),
    ],
)
def test_bad_hard_options_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HardDigitsOptions(**kwargs)  # type: ignore[arg-type]


def test_unknown_variant_raises() -> None:
    with pytest.raises(ValueError, match="unknown data variant 'mnist'"):
        load_split("mnist")
    with pytest.raises(ValueError, match="square images"):
        warp_images(np.zeros((1, 8, 6)), _identity(1), 8)
