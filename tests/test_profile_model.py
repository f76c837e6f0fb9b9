"""The profile tool: LAMP maths, FLOPs, the digits profile, dotted names, the search-space writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trials import profile_model as pm
from trials.data import load_split
from trials.models import digits_cnn
from trials.prune_trial import data_variant, dense_state_dict

ROOT = Path(__file__).resolve().parents[1]

USER_MODEL = '''
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x):
        return self.bn(self.head(self.features(x)))


def make():
    return Net()
'''


def test_lamp_scores_match_hand_computation() -> None:
    # squares 9, 1, 4, 0 -> ascending 0, 1, 4, 9 with suffix sums 14, 14, 13, 9
    scores = pm.lamp_scores(np.array([[3.0, -1.0], [2.0, 0.0]]))
    np.testing.assert_allclose(scores, [1.0, 1 / 14, 4 / 13, 0.0])
    np.testing.assert_array_equal(pm.lamp_scores(np.zeros(3)), np.zeros(3))


def test_lamp_scores_rank_like_magnitude_within_a_layer() -> None:
    w = np.random.RandomState(0).randn(500)
    scores = pm.lamp_scores(w)
    order = np.argsort(np.abs(w))
    assert np.all(np.diff(scores[order]) >= 0) and scores.max() == 1.0


def test_quantiles_are_101_increasing_values_from_min_to_max() -> None:
    values = np.random.RandomState(1).rand(1000)
    q = pm.quantiles(values)
    assert len(q) == 101 and all(isinstance(v, float) for v in q)
    assert q[0] == values.min() and q[-1] == values.max() and q == sorted(q)
    assert q[50] == pytest.approx(float(np.median(values)))


def test_layer_flops_for_conv_and_linear_shapes() -> None:
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 8, 4))
    assert pm.layer_flops(model, torch.zeros(1, 2, 10)) == {"0": 2 * 3 * 3 * 8, "2": 3 * 8 * 4}
    seq = nn.Sequential(nn.Linear(6, 2))  # applied at 5 positions of a (batch, 5, 6) input
    assert pm.layer_flops(seq, torch.zeros(1, 5, 6)) == {"0": 12 * 5}
    vol = nn.Sequential(nn.Conv3d(1, 2, 1))
    assert pm.layer_flops(vol, torch.zeros(1, 1, 2, 3, 4)) == {"0": 2 * 24}


def test_digits_profile_via_cli(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    argv = ["--model", "trials.models:digits_cnn", "--out", str(out), "--cache-dir", str(tmp_path)]
    assert pm.main(argv) == 0
    profile = json.loads(out.read_text())
    assert profile["format"] == 1 and profile["model"] == "digits_cnn"
    assert profile["prunable_params"] == 144 + 4608 + 1280
    layers = profile["layers"]
    assert [(la["name"], la["type"], la["shape"], la["params"], la["flops"]) for la in layers] == [
        ("conv0", "Conv2d", [16, 1, 3, 3], 144, 144 * 64),
        ("conv1", "Conv2d", [32, 16, 3, 3], 4608, 4608 * 16),
        ("fc", "Linear", [10, 128], 1280, 1280),
    ]
    dense = dense_state_dict(tmp_path)  # profiled on the trained dense weights
    for layer in layers:
        weight = dense[f"{layer['name']}.weight"].double().numpy()
        assert len(layer["magnitude_quantiles"]) == len(layer["lamp_quantiles"]) == 101
        assert layer["magnitude_quantiles"] == pm.quantiles(np.abs(weight))
        assert layer["lamp_quantiles"][-1] == 1.0 and layer["lamp_quantiles"][0] >= 0.0


def test_user_factory_with_dotted_names_and_state_dict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "user_model_for_test.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = pm.load_factory("user_model_for_test:make")
    model = factory()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    out, space = tmp_path / "p.json", tmp_path / "s.json"
    argv = ["--model", "user_model_for_test:make", "--out", str(out), "--input-shape", "3,9,9",
            "--state-dict", str(weights), "--search-space", str(space), "--methods", "level",
            "--low", "0.1", "--high", "0.9"]
    assert pm.main(argv) == 0
    profile = json.loads(out.read_text())
    assert profile["model"] == "make"
    assert [(la["name"], la["flops"]) for la in profile["layers"]] == [
        ("features.0", 108 * 49), ("features.2", 144 * 9), ("head.1", 180)
    ]
    assert profile["layers"][0]["magnitude_quantiles"] == [0.5] * 101  # loaded weights
    options = json.loads(space.read_text())["prune_method"]["_value"]
    assert [sorted(o) for o in options] == [
        ["_name", "features.0_sparsity", "features.2_sparsity", "head.1_sparsity"]
    ]


def test_search_space_shape_matches_the_seed() -> None:
    space = pm.search_space(["conv0", "conv1"], methods=["agp", "level"], low=0.1, high=0.9)
    uniform = {"_type": "uniform", "_value": [0.1, 0.9]}
    assert space == {"prune_method": {"_type": "choice", "_value": [
        {"_name": "agp", "conv0_sparsity": uniform, "conv1_sparsity": uniform},
        {"_name": "level", "conv0_sparsity": uniform, "conv1_sparsity": uniform},
    ]}}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": ["slim"]}, "methods"),
        ({"methods": ["agp", "agp"]}, "methods"),
        ({"methods": []}, "methods"),
        ({"low": 0.5, "high": 0.5}, "low"),
        ({"high": 1.0}, "high"),
        ({"low": -0.1}, "low"),
    ],
)
def test_search_space_rejects_bad_options(kwargs: dict[str, object], message: str) -> None:
    options: dict[str, object] = {"methods": ["agp"], "low": 0.1, "high": 0.9, **kwargs}
    with pytest.raises(ValueError, match=message):
        pm.search_space(["conv0"], **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "trials.models", "--out", "x.json"],
        ["--model", "trials.models:nothing_here", "--out", "x.json"],
        ["--model", "no_such_module_xyz:make", "--out", "x.json"],
        ["--model", "trials.models:digits_cnn", "--search-space", "x.json", "--layers", "conv9"],
        ["--model", "trials.models:digits_cnn", "--search-space", "x.json", "--high", "1.5"],
        ["--model", "trials.models:digits_cnn", "--out", "x.json", "--input-shape", "1,a"],
        ["--model", "trials.models:digits_cnn", "--out", "x.json", "--input-shape", "1,5,5"],
    ],
)
def test_cli_rejects_bad_input(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert pm.main(argv) == 2
    assert "profile_model: error:" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_committed_search_spaces(tmp_path: Path) -> None:
    """search_spaces/digits.json is what the writer makes; seed_nested.json is DESIGN's seed."""
    out = tmp_path / "digits.json"
    argv = ["--model", "trials.models:digits_cnn", "--search-space", str(out),
            "--methods", "agp,level", "--low", "0.05", "--high", "0.98"]
    assert pm.main(argv) == 0
    assert out.read_text() == (ROOT / "search_spaces" / "digits.json").read_text()
    seed = json.loads((ROOT / "search_spaces" / "seed_nested.json").read_text())
    uniform = {"_type": "uniform", "_value": [0.1, 0.9]}
    assert seed == {"prune_method": {"_type": "choice", "_value": [
        {"_name": "agp", "conv0_sparsity": uniform, "conv1_sparsity": uniform},
        {"_name": "level", "conv0_sparsity": uniform,
         "conv1_sparsity": {"_type": "uniform", "_value": [0.01, 0.9]}},
    ]}}


def test_digits_sensitivity_via_cli(tmp_path: Path) -> None:
    """The checkout's eval function scores the zoo on its validation split, dense point first."""
    out = tmp_path / "profile.json"
    argv = ["--model", "trials.models:digits_cnn", "--out", str(out), "--cache-dir", str(tmp_path),
            "--sensitivity", "--eval", "trials.profile_model:val_accuracy",
            "--sensitivity-sparsities", "0.5,0.99"]
    assert pm.main(argv) == 0
    layers = json.loads(out.read_text())["layers"]
    model = digits_cnn()
    model.load_state_dict(dense_state_dict(tmp_path))
    dense = pm.val_accuracy(model)
    assert dense > 0.9
    for layer in layers:
        curve = layer["sensitivity"]
        assert curve["sparsities"] == [0.0, 0.5, 0.99] and curve["accuracy"][0] == dense
        assert curve["accuracy"][2] < dense  # 99% of one layer gone costs accuracy


def test_half_val_accuracy_scores_the_first_half_of_the_validation_split(tmp_path: Path) -> None:
    """Presearch's cheaper ``--eval``: the same model on half of its own validation samples."""
    model = digits_cnn()
    model.load_state_dict(dense_state_dict(tmp_path))
    samples = len(load_split(data_variant(model)).y_val)
    half = pm.half_val_accuracy(model)
    assert half == pm.val_accuracy(model, samples=samples // 2)
