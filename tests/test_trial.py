"""The digits trial: parameter validation, Level/AGP runs, reports, determinism, cache, CLI."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from trials import prune_trial
from trials.masking import AgpSchedule, agp_sparsity, num_pruned
from trials.prune_trial import (
    DEFAULT_MODEL,
    TrialResult,
    dense_cache_path,
    dense_state_dict,
    parse_params,
    run_trial,
)

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["conv0", "conv1", "fc"]
SIZES = {"conv0": 144, "conv1": 4608, "fc": 1280}
SEED_PARAMS = {"level": 0.62, "agp": 0.93}
#: The cheapest zoo model (dense training takes seconds) stands for the zoo in the fast tests.
ZOO_MODEL = "trials.models:mlp_digits"


def _params(method: str, **sparsities: float) -> dict[str, Any]:
    layers = {f"{name}_sparsity": value for name, value in sparsities.items()}
    return {"prune_method": {"_name": method, **layers}}


def _target(sparsities: dict[str, float]) -> float:
    total = sum(SIZES[n] for n in sparsities)
    return sum(SIZES[n] * s for n, s in sparsities.items()) / total


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dense_cache")
    dense_state_dict(path)
    return path


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zoo_cache")
    dense_state_dict(path, model=ZOO_MODEL)
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([], "JSON object"),
        ({}, "exactly the key 'prune_method'"),
        ({"prune_method": {"_name": "level", "conv0_sparsity": 0.5}, "lr": 0.1}, "exactly the key"),
        ({"prune_method": "level"}, "must be a nested choice"),
        ({"prune_method": {"conv0_sparsity": 0.5}}, "nested choice with '_name'"),
        (_params("slim", conv0=0.5), "unknown prune method .*'slim'"),
        (_params("level", conv9=0.5), "unknown layer 'conv9'"),
        ({"prune_method": {"_name": "level", "conv0_sparsity": 0.5, "lr": 0.1}}, "'lr'"),
        (_params("level", conv0=1.0), r"conv0_sparsity must be in \[0, 1\)"),
        (_params("level", conv0=-0.1), r"conv0_sparsity must be in \[0, 1\)"),
        (_params("level", conv0=math.nan), "conv0_sparsity"),
        (_params("level", conv0="0.5"), "must be a number"),
        (_params("agp", conv0=True), "must be a number"),
        (_params("agp"), "name no layer"),
    ],
)
def test_parse_params_rejects_bad_input(params: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_params(params, LAYERS)


def test_parse_params_accepts_dotted_layer_names() -> None:
    params = {"prune_method": {"_name": "agp", "features.0_sparsity": 0.5, "head.fc_sparsity": 0}}
    assert parse_params(params, ["features.0", "head.fc"]) == (
        "agp", {"features.0": 0.5, "head.fc": 0.0}
    )


def test_level_trial_hits_the_global_target(cache_dir: Path) -> None:
    reports: list[dict[str, Any]] = []
    result = run_trial(_params("level", conv0=0.62, conv1=0.93), epochs=3, cache_dir=cache_dir,
                       report=reports.append)
    assert isinstance(result, TrialResult) and result.method == "level"
    assert abs(result.sparsity - _target({"conv0": 0.62, "conv1": 0.93})) < 1e-3
    assert result.sparsity == (89 + 4285) / (144 + 4608)
    assert result.target_sparsity == pytest.approx(_target({"conv0": 0.62, "conv1": 0.93}))
    assert result.layer_sparsity == {"conv0": 89 / 144, "conv1": 4285 / 4608}
    assert reports == result.history and [r["epoch"] for r in reports] == [0, 1, 2]
    assert all(r["pruned"] and r["sparsity"] == result.sparsity for r in reports)
    assert 0.0 <= result.accuracy <= 1.0 and 0.0 <= result.test_accuracy <= 1.0
    assert result.dense_accuracy > 0.9 and result.accuracy > 0.85
    state = result.state_dict
    assert int((state["conv0.weight"] == 0).sum()) == 89
    assert int((state["conv1.weight"] == 0).sum()) == 4285
    assert int((state["fc.weight"] == 0).sum()) == 0  # unnamed layers stay dense
    final = result.final_metrics()
    assert final["default"] == result.accuracy and final["method"] == "level"
    assert final["sparsity"] == result.sparsity and final["test_acc"] == result.test_accuracy
    assert "latency_ratio" not in final  # masks keep dense tensors: nothing to time


def test_agp_trial_follows_the_cubic_schedule(cache_dir: Path) -> None:
    finals = {"conv0": 0.62, "conv1": 0.93}
    result = run_trial(_params("agp", **finals), cache_dir=cache_dir)
    assert [h["pruned"] for h in result.history] == [False, False, False, True, True]
    for h in result.history:
        pruned = sum(num_pruned(SIZES[n], agp_sparsity(h["epoch"], s)) for n, s in finals.items())
        assert h["sparsity"] == pruned / (SIZES["conv0"] + SIZES["conv1"])
    sparsities = [h["sparsity"] for h in result.history]
    assert sparsities == sorted(sparsities) and sparsities[0] == 0.0
    assert abs(result.sparsity - _target(finals)) < 1e-3


def test_agp_schedule_options_are_used(cache_dir: Path) -> None:
    sched = AgpSchedule(initial_sparsity=0.2, start_epoch=1, end_epoch=2)
    result = run_trial(_params("agp", conv1=0.8), epochs=3, cache_dir=cache_dir, agp=sched)
    assert [h["sparsity"] for h in result.history] == [0.0, num_pruned(4608, 0.2) / 4608,
                                                       num_pruned(4608, 0.8) / 4608]
    assert [h["pruned"] for h in result.history] == [False, False, True]


@pytest.mark.parametrize(
    "sparsities",
    [{"conv0": 0.1, "conv1": 0.9, "fc": 0.5}, {"fc": 0.97}, {"conv0": 0.0, "conv1": 0.333}],
)
@pytest.mark.parametrize("method", ["level", "agp"])
def test_measured_sparsity_matches_target(
    cache_dir: Path, method: str, sparsities: dict[str, float]
) -> None:
    result = run_trial(_params(method, **sparsities), epochs=4, cache_dir=cache_dir)
    assert abs(result.sparsity - _target(sparsities)) < 1e-3


def test_run_trial_restores_torch_threads(cache_dir: Path) -> None:
    before = torch.get_num_threads()
    run_trial(_params("level", conv0=0.5), epochs=1, cache_dir=cache_dir, num_threads=1)
    assert torch.get_num_threads() == before


def test_same_parameters_and_seed_give_the_same_result(cache_dir: Path) -> None:
    params = _params("agp", conv0=0.5, conv1=0.8)
    a, b = (run_trial(params, epochs=4, seed=7, cache_dir=cache_dir) for _ in range(2))
    assert a.accuracy == b.accuracy and a.history == b.history
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    c = run_trial(params, epochs=4, seed=8, cache_dir=cache_dir)
    assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_run_trial_rejects_bad_options(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="num_threads"):
        run_trial(_params("level", conv0=0.5), num_threads=0, cache_dir=cache_dir)
    with pytest.raises(ValueError, match="epochs"):
        run_trial(_params("level", conv0=0.5), epochs=0, cache_dir=cache_dir)
    with pytest.raises(ValueError, match="end_epoch"):
        run_trial(_params("agp", conv0=0.5), epochs=3, cache_dir=cache_dir)
    with pytest.raises(ValueError, match="seed"):
        run_trial(_params("level", conv0=0.5), seed=1.5, cache_dir=cache_dir)  # type: ignore[arg-type]


def test_main_standalone_prints_final_json_and_saves(
    cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save = tmp_path / "pruned.pt"
    params = json.dumps(_params("level", conv0=0.62, conv1=0.93))
    argv = ["--params", params, "--epochs", "2", "--cache-dir", str(cache_dir), "--save", str(save)]
    assert prune_trial.main(argv) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["method"] == "level" and abs(final["sparsity"] - 0.9204545) < 1e-6
    state = torch.load(save, weights_only=True)
    assert int((state["conv1.weight"] == 0).sum()) == 4285 and "conv1.weight_mask" not in state


def test_main_reports_to_nni(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nni

    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(nni, "get_next_parameter", lambda: _params("agp", conv0=0.5, conv1=0.9))
    monkeypatch.setattr(nni, "report_intermediate_result", lambda m: calls.append(("mid", m)))
    monkeypatch.setattr(nni, "report_final_result", lambda m: calls.append(("final", m)))
    assert prune_trial.main(["--cache-dir", str(cache_dir)]) == 0
    assert [kind for kind, _ in calls] == ["mid"] * 5 + ["final"]
    assert set(calls[0][1]) == {"default", "epoch", "sparsity", "pruned"}
    final = calls[-1][1]
    assert final["method"] == "agp"
    assert abs(final["sparsity"] - _target({"conv0": 0.5, "conv1": 0.9})) < 1e-3


@pytest.mark.parametrize(
    "argv",
    [
        ["--params", '{"prune_method": {"_name": "level", "conv9_sparsity": 0.5}}'],
        ["--params", "{not json"],
        ["--params", '{"prune_method": {"_name": "level", "conv0_sparsity": 0.5}}',
         "--agp-frequency", "0"],
        [],  # outside NNI: no parameters
    ],
)
@pytest.mark.filterwarnings("ignore:.*Running trial code without runtime:RuntimeWarning")
def test_main_fails_loudly_on_bad_input(
    argv: list[str], cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert prune_trial.main([*argv, "--cache-dir", str(cache_dir)]) == 2
    assert "prune_trial: error:" in capsys.readouterr().err


def test_cli_bad_input_exits_non_zero(tmp_path: Path) -> None:
    params = json.dumps(_params("level", conv0=1.5))
    proc = subprocess.run(
        [sys.executable, "-m", "trials.prune_trial", "--params", params,
         "--cache-dir", str(tmp_path)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "conv0_sparsity must be in [0, 1)" in proc.stderr
    assert proc.stdout == "" and not list(tmp_path.iterdir())  # failed before any training


_CACHE_SCRIPT = """
import hashlib, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO)
from trials.prune_trial import dense_state_dict
state = dense_state_dict(Path(sys.argv[1]))
print(hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest())
"""


@pytest.mark.slow
def test_concurrent_trials_create_the_cache_once(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", _CACHE_SCRIPT, str(tmp_path)], cwd=ROOT,
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    digests = {out.strip() for out, _ in outputs}
    assert len(digests) == 1
    assert sum(err.count("training the dense model") for _, err in outputs) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "digits_cnn_dense_v1.pt"
    ]
    state = torch.load(tmp_path / "digits_cnn_dense_v1.pt", weights_only=True)
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
    assert digests == {digest}


@pytest.mark.slow
@pytest.mark.parametrize(("method", "epochs"), [("level", 3), ("agp", 5)])
def test_standalone_cli_end_to_end(
    cache_dir: Path, tmp_path: Path, method: str, epochs: int
) -> None:
    save = tmp_path / "pruned.pt"
    params = json.dumps(_params(method, conv0=0.62, conv1=0.93))
    proc = subprocess.run(
        [sys.executable, "-m", "trials.prune_trial", "--params", params, "--epochs", str(epochs),
         "--cache-dir", str(cache_dir), "--save", str(save)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stdout)
    assert final["method"] == method and 0.8 < final["default"] <= 1.0
    assert abs(final["sparsity"] - _target({"conv0": 0.62, "conv1": 0.93})) < 1e-3
    state = torch.load(save, weights_only=True)
    assert int((state["conv0.weight"] == 0).sum()) == 89


def test_zoo_model_trial_runs_on_the_hard_digits(zoo_cache: Path) -> None:
    reports: list[dict[str, Any]] = []
    result = run_trial(_params("level", fc1=0.9, fc2=0.5), epochs=2, model=ZOO_MODEL,
                       cache_dir=zoo_cache, report=reports.append)
    assert result.layer_sparsity == {"fc1": num_pruned(76800, 0.9) / 76800,
                                     "fc2": num_pruned(30000, 0.5) / 30000}
    assert [r["epoch"] for r in reports] == [0, 1] and all(r["pruned"] for r in reports)
    assert 0.5 < result.dense_accuracy < 0.95  # the hard data: clearly below 100%, above chance
    assert int((result.state_dict["fc3.weight"] == 0).sum()) == 0
    cached = sorted(p.name for p in zoo_cache.iterdir() if p.suffix == ".pt")
    assert cached == ["mlp_digits_digits_hard_dense_v1.pt"]


def test_dense_cache_is_per_model_and_data(tmp_path: Path) -> None:
    assert dense_cache_path(tmp_path) == tmp_path / "digits_cnn_dense_v1.pt"
    assert dense_cache_path(tmp_path, model=DEFAULT_MODEL, data="digits_hard") == (
        tmp_path / "digits_cnn_digits_hard_dense_v1.pt")
    assert dense_cache_path(tmp_path, model="trials.models:vit_digits", data="digits_hard") == (
        tmp_path / "vit_digits_digits_hard_dense_v1.pt")
    assert dense_cache_path(tmp_path, model="mypkg.nets:big", data="digits") == (
        tmp_path / "mypkg.nets.big_dense_v1.pt")


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ("trials.models:nope", None, "'nope' in 'trials.models' is not a callable factory"),
        ("trials.no_such_module:f", None, "cannot import 'trials.no_such_module'"),
        ("digits_cnn", None, "must look like 'package.module:factory'"),
        ("trials.data:digits_split", None, "returned DigitsSplit, not a torch.nn.Module"),
        (ZOO_MODEL, "digits", r"shape \(1, 8, 8\)"),
        (ZOO_MODEL, "mnist", "unknown data variant 'mnist'"),
    ],
)
def test_bad_model_or_data_fails_before_training(
    tmp_path: Path, model: str, data: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        run_trial(_params("level", fc3=0.5), model=model, data=data, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_digits_cnn_on_the_hard_data_is_a_shape_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"input_shape is \(1, 8, 8\)"):
        run_trial(_params("level", fc=0.5), data="digits_hard", cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_zoo_layer_names_are_checked_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown layer 'conv0'.*'fc1', 'fc2', 'fc3'"):
        run_trial(_params("level", conv0=0.5), model=ZOO_MODEL, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_main_runs_a_zoo_model_standalone_and_under_nni(
    zoo_cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    params = _params("agp", fc1=0.8, fc2=0.8)
    argv = ["--model", ZOO_MODEL, "--params", json.dumps(params), "--cache-dir", str(zoo_cache)]
    assert prune_trial.main(argv) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["method"] == "agp" and abs(final["sparsity"] - 0.8) < 1e-3

    import nni

    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(nni, "get_next_parameter", lambda: params)
    monkeypatch.setattr(nni, "report_intermediate_result", lambda m: calls.append(("mid", m)))
    monkeypatch.setattr(nni, "report_final_result", lambda m: calls.append(("final", m)))
    assert prune_trial.main(["--model", ZOO_MODEL, "--cache-dir", str(zoo_cache)]) == 0
    assert [kind for kind, _ in calls] == ["mid"] * 5 + ["final"]
    assert calls[-1][1]["default"] == final["default"]  # same parameters, seed and data


@pytest.mark.slow
def test_standalone_cli_prunes_the_vit_by_dotted_names(tmp_path: Path) -> None:
    """The CLI prunes ViT layers named by dotted paths and saves the masks applied.

    The dense cache is seeded with the untrained model (training the ViT would take most of a
    minute and is not what this tests): the trial must use the cache, so it reports a dense
    accuracy near chance.
    """
    from trials.models import vit_digits

    torch.manual_seed(0)
    cache = dense_cache_path(tmp_path, model="trials.models:vit_digits", data="digits_hard")
    torch.save(vit_digits().state_dict(), cache)
    layers = ["blocks.0.attn.q", "blocks.1.mlp.fc1", "head"]
    params = json.dumps(_params("level", **dict.fromkeys(layers, 0.9)))
    save = tmp_path / "vit.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "trials.prune_trial", "--model", "trials.models:vit_digits",
         "--params", params, "--epochs", "1", "--cache-dir", str(tmp_path), "--save", str(save)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stdout)
    assert final["method"] == "level" and abs(final["sparsity"] - 0.9) < 1e-3
    assert final["dense_acc"] < 0.3  # the seeded, untrained weights: the cache was used
    state = torch.load(save, weights_only=True)
    for layer in layers:
        weight = state[f"{layer}.weight"]
        assert int((weight == 0).sum()) == num_pruned(weight.numel(), 0.9)
    assert int((state["blocks.2.attn.v.weight"] == 0).sum()) == 0


@pytest.mark.slow
def test_zoo_trial_runs_under_nnictl(registered: list[str], zoo_cache: Path, tmp_path: Path) -> None:
    """``--model`` in the trialCommand: PruneTPE over the LeNet-300-100 space, as users run it."""
    from tests.experiment import nni_experiment, zoo_config

    config = zoo_config(
        model=ZOO_MODEL, cache_dir=zoo_cache, epochs=4,
        search_space=json.loads((ROOT / "search_spaces" / "mlp_digits.json").read_text()),
        tuner={"name": "PruneTPE", "classArgs": {
            "optimize_mode": "maximize", "target_sparsity": 0.9, "seed": 0,
            "profile": str(ROOT / "search_spaces" / "mlp_digits.profile.json")}})
    with nni_experiment(config, workdir=tmp_path) as experiment:
        experiment.wait(timeout=300)
        trials = experiment.trials()
    assert [t.status for t in trials] == ["SUCCEEDED"] * 2
    for trial in trials:
        assert set(trial.parameters["prune_method"]) == {"_name", "fc1_sparsity", "fc2_sparsity",
                                                         "fc3_sparsity"}
        assert abs(trial.final["sparsity"] - 0.9) < 1e-3 and 0.3 < trial.final["default"] < 0.95
        assert len(trial.intermediates) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"finetune_lr": 0.0}, "finetune_lr"),
     ({"weight_decay": -0.1}, "weight_decay"), ({"finetune_optimizer": "adam"}, "'adam'")],
)
def test_bad_recipe_raises(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prune_trial.Recipe(**kwargs)
