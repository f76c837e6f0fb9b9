"""``nni-prune-tuners presearch``: the one-shot proxy search writes Contract 9's ``proxy`` field."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch

from nni_prune_tuners.profile import load_profile
from nni_prune_tuners.proxy import proxy_separates
from nni_prune_tuners.sparsity import global_sparsity
from nni_prune_tuners.trial import presearch as ps
from nni_prune_tuners.trial import profile as tp
from nni_prune_tuners.tuner import PruneTPETuner

#: A tiny CNN with BatchNorm; the metric is agreement with the dense model's predictions on
#: fixed random inputs (dense: 1.0), so no data set or training is needed.
USER_MODULE = '''
import torch
from torch import nn

X = torch.randn(128, 1, 8, 8, generator=torch.Generator().manual_seed(1))
LABELS = []
CALLS = [0]


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    model.input_shape = (1, 8, 8)
    return model


def agreement(model):
    if not LABELS:
        with torch.no_grad():
            LABELS.append(make().eval()(X).argmax(1))
    return float((model(X).argmax(1) == LABELS[0]).float().mean())


def stop_after_4(model):
    """Ctrl-C on the 5th call: the dense score and 3 evaluations are done."""
    CALLS[0] += 1
    if CALLS[0] > 4:
        raise KeyboardInterrupt
    return agreement(model)


def nan_after_3(model):
    CALLS[0] += 1
    return float("nan") if CALLS[0] in (3, 4) else agreement(model)


def batches():
    return (X[i:i + 32] for i in range(0, 128, 32))


def nan(model):
    return float("nan")


def not_batches():
    return 3


not_callable = 5
'''
MODULE = "presearch_usermod"
TARGET = 0.7


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The user's module, a profile with FLOPs and the seed-shaped space of its three layers."""
    (tmp_path / f"{MODULE}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    monkeypatch.chdir(tmp_path)
    module = __import__(MODULE)
    profile = tp.profile_model(module.make(), name="make", input_shape=(1, 8, 8))
    tp.write_json(tmp_path / "profile.json", profile)
    names = [layer["name"] for layer in profile["layers"]]
    space = tp.search_space(names, methods=["agp", "level"], low=0.05, high=0.95)
    space["lr"] = {"_type": "loguniform", "_value": [1e-4, 1e-1]}  # not a proxy's business
    tp.write_json(tmp_path / "space.json", space)
    yield tmp_path
    sys.modules.pop(MODULE, None)


def _argv(*extra: str, evaluations: int = 6, eval_fn: str = "agreement") -> list[str]:
    return ["--model", f"{MODULE}:make", "--profile", "profile.json", "--search-space",
            "space.json", "--target", str(TARGET), "--eval", f"{MODULE}:{eval_fn}",
            "--calibrate", f"{MODULE}:batches", "--evaluations", str(evaluations),
            "--out", "profile.json", *extra]


def test_select_finalists_takes_the_best_then_the_next_best_far_enough() -> None:
    evaluations = [
        ({"a": 0.50, "b": 0.90}, 0.70),
        ({"a": 0.52, "b": 0.89}, 0.80),  # the best
        ({"a": 0.53, "b": 0.91}, 0.79),  # within 0.05 of the best: a near-copy
        ({"a": 0.70, "b": 0.80}, 0.75),
        ({"a": 0.30, "b": 0.95}, 0.75),  # tied with the one before: evaluation order
        ({"a": 0.10, "b": 0.99}, 0.10),
    ]
    assert ps.select_finalists(evaluations, count=3) == [
        {"a": 0.52, "b": 0.89}, {"a": 0.70, "b": 0.80}, {"a": 0.30, "b": 0.95}]
    assert ps.select_finalists(evaluations, count=2, min_distance=0.3) == [
        {"a": 0.52, "b": 0.89}, {"a": 0.10, "b": 0.99}]
    assert ps.select_finalists(evaluations[:3], count=3) == [{"a": 0.52, "b": 0.89}]
    assert ps.select_finalists([], count=3) == []
    with pytest.raises(ValueError, match="count must be an integer >= 1, got 0"):
        ps.select_finalists(evaluations, count=0)


def test_level_space_keeps_the_level_branch_sparsities_only() -> None:
    space = tp.search_space(["a", "b"], methods=["agp", "level"], low=0.1, high=0.9)
    space["prune_method"]["_value"][1]["a_sparsity"]["_value"] = [0.2, 0.8]
    space["prune_method"]["_value"][1]["lr"] = {"_type": "uniform", "_value": [0.1, 0.2]}
    flat, where = ps.level_space(space)
    assert where == "prune_method=level"
    assert flat == {"a_sparsity": {"_type": "uniform", "_value": [0.2, 0.8]},
                    "b_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]}}
    assert ps.level_space({"a_sparsity": flat["a_sparsity"], "lr": {}}) == (
        {"a_sparsity": flat["a_sparsity"]}, "the top level")
    with pytest.raises(ValueError, match="'prune_method' choice has no 'level' option"):
        ps.level_space(tp.search_space(["a"], methods=["agp"], low=0.1, high=0.9))
    with pytest.raises(ValueError, match="no layer sparsity"):
        ps.level_space({"lr": {"_type": "uniform", "_value": [0.1, 0.2]}})


@pytest.mark.parametrize("weight_by", ["params", "flops"])
def test_presearch_writes_exact_distinct_finalists_that_prunetpe_proposes_first(
    user: Path, weight_by: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="nni_prune_tuners")
    before = json.loads((user / "profile.json").read_text())
    assert ps.main(_argv("--weight-by", weight_by)) == 0
    data = json.loads((user / "profile.json").read_text())
    assert {k: v for k, v in data.items() if k != "proxy"} == before  # OUT may be IN
    proxy = data["proxy"]
    assert {k: proxy[k] for k in ("target", "weight_by", "method", "metric", "calibrated")} == {
        "target": TARGET, "weight_by": weight_by, "method": "level",
        "metric": f"{MODULE}:agreement", "calibrated": True}
    assert proxy["seconds"] > 0 and proxy["dense_score"] == 1.0 and not proxy["interrupted"]
    profile = load_profile(user / "profile.json")  # validates
    assert profile.proxy is not None and len(profile.proxy.evaluations) == 6
    layers = list(profile.layers)

    def exact(allocation: dict[str, float]) -> float:
        assert list(allocation) == layers
        return global_sparsity([allocation[n] for n in layers],
                               [profile.weight(n, weight_by) for n in layers])

    for evaluation in proxy["evaluations"]:
        assert abs(exact(evaluation["sparsities"]) - TARGET) <= 1e-9
        assert 0.0 <= evaluation["score"] <= 1.0
    finalists = proxy["finalists"]
    assert 1 <= len(finalists) <= 3
    assert all(abs(exact(f) - TARGET) <= 1e-9 for f in finalists)
    scored = [e["sparsities"] for e in proxy["evaluations"]]
    assert all(f in scored for f in finalists)
    for a, b in itertools.combinations(finalists, 2):
        assert max(abs(a[n] - b[n]) for n in layers) > ps.DEFAULT_MIN_DISTANCE
    best = max(proxy["evaluations"], key=lambda e: e["score"])
    assert finalists[0] == best["sparsities"]
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluation")]
    assert len(progress) == 6 and progress[0].startswith("evaluation 1/6: ")
    assert progress[0].endswith(", the uniform warm start")

    tuner = PruneTPETuner(target_sparsity=TARGET, profile=str(user / "profile.json"), seed=0,
                          weight_by=weight_by)
    tuner.update_search_space(json.loads((user / "space.json").read_text()))
    first = [tuner.generate_parameters(i) for i in range(2 * len(finalists))]
    for index, finalist in enumerate(finalists):
        for params in first[2 * index: 2 * index + 2]:  # agp, then level: same bounds
            got = {k.removesuffix("_sparsity"): v for k, v in params["prune_method"].items()
                   if k.endswith("_sparsity")}
            assert got == pytest.approx(finalist, abs=1e-9)
    assert [w.heuristic for w in tuner.warm_starts[:2]] == ["proxy finalist 1"] * 2
    # a heuristic the proxy scored clearly below every finalist gets no trial after them
    floor = min(e["score"] for e in proxy["evaluations"] if e["sparsities"] in finalists)

    def proxy_score(sparsities: Mapping[str, float]) -> float | None:
        return next((e["score"] for e in proxy["evaluations"]
                     if all(abs(e["sparsities"][n] - v) <= 1e-6 for n, v in sparsities.items())),
                    None)

    plain = PruneTPETuner(target_sparsity=TARGET, profile=str(user / "profile.json"), seed=0,
                          weight_by=weight_by, proxy=False)
    plain.update_search_space(json.loads((user / "space.json").read_text()))
    expected = [(w.heuristic, w.branch) for w in plain.warm_starts
                if not proxy_separates(floor, proxy_score(w.sparsities) or floor,
                                       dense=proxy["dense_score"])]
    assert [(w.heuristic, w.branch) for w in tuner.warm_starts
            if not w.heuristic.startswith("proxy finalist")] == expected


def test_the_model_without_batchnorm_skips_calibration(
    user: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="nni_prune_tuners")
    (user / "plain.py").write_text(
        "from torch import nn\nimport torch\n\n\ndef make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))\n\n\n"
        "def score(model):\n    return float(model[1].weight.abs().sum())\n")
    profile = tp.profile_model(__import__("plain").make(), name="plain")
    tp.write_json(user / "plain.json", profile)
    tp.write_json(user / "plain_space.json", {"1_sparsity": {"_type": "uniform",
                                                             "_value": [0.1, 0.9]},
                                              "3_sparsity": {"_type": "uniform",
                                                             "_value": [0.1, 0.9]}})
    assert ps.main(["--model", "plain:make", "--profile", "plain.json", "--search-space",
                    "plain_space.json", "--target", "0.5", "--eval", "plain:score",
                    "--calibrate", f"{MODULE}:batches", "--evaluations", "3",
                    "--out", "out.json"]) == 0
    proxy = json.loads((user / "out.json").read_text())["proxy"]
    assert proxy["calibrated"] is False and proxy["branch"] == "the top level"
    assert "the model has no BatchNorm: --calibrate is not needed" in caplog.messages
    sys.modules.pop("plain", None)


def test_ctrl_c_keeps_what_was_evaluated(user: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ps.main(_argv("--out", "out.json", eval_fn="stop_after_4")) == ps.EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("presearch: interrupted; wrote the 3 evaluations in ")
    assert err[-1].endswith("finalists in out.json")
    proxy = load_profile(user / "out.json").proxy
    assert proxy is not None and len(proxy.evaluations) == 3 and proxy.finalists
    assert json.loads((user / "out.json").read_text())["proxy"]["interrupted"] is True


def test_a_non_finite_score_mid_search_is_a_failed_trial(
    user: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert ps.main(_argv("--out", "out.json", eval_fn="nan_after_3")) == 0
    assert ("evaluation 2/6: the eval function returned nan for the pruned model; expected a "
            "finite float; told to the tuner as failed") in caplog.messages
    proxy = load_profile(user / "out.json").proxy
    assert proxy is not None and len(proxy.evaluations) == 4  # 6 asked, 2 failed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--target": "1.2"}, "--target must be a number in (0, 1), got 1.2"),
        ({"--target": "0.99"}, "target_sparsity=0.99 is infeasible"),
        ({"--evaluations": "0"}, "--evaluations must be at least 1, got 0"),
        ({"--profile": "missing.json"}, "profile 'missing.json' cannot be read"),
        ({"--search-space": "missing.json"}, "--search-space 'missing.json' cannot be read"),
        ({"--search-space": "other_layer.json"}, "layer 'conv9' is not in the profile"),
        ({"--eval": f"{MODULE}:not_callable"}, "'not_callable' in 'presearch_usermod' is not a "
                                               "callable function"),
        ({"--eval": f"{MODULE}:nan"}, "the eval function returned nan for the dense model; "
                                      "expected a finite float"),
        ({"--calibrate": f"{MODULE}:not_batches"}, "returned int, not an iterable of input "
                                                   "batches"),
        ({"--weight-by": "flops", "--profile": "no_flops.json"}, "weight_by='flops' needs FLOPs"),
        ({"--state-dict": "missing.pt"}, "--state-dict 'missing.pt' cannot be loaded"),
    ],
)
def test_bad_input_is_one_line_before_any_work(
    user: Path, capsys: pytest.CaptureFixture[str], change: dict[str, str], message: str
) -> None:
    tp.write_json(user / "other_layer.json", {"conv9_sparsity": {"_type": "uniform",
                                                                 "_value": [0.1, 0.9]}})
    no_flops = json.loads((user / "profile.json").read_text())
    for layer in no_flops["layers"]:
        del layer["flops"]
    tp.write_json(user / "no_flops.json", no_flops)
    argv = _argv("--out", "out.json")
    for option, value in change.items():
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    assert ps.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("presearch: error: ") and message in err, err
    assert not (user / "out.json").exists()


def test_unknown_model_layer_is_named(user: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A space and profile of another model: the layer the model lacks is named."""
    data = json.loads((user / "profile.json").read_text())
    data["layers"][0]["name"] = "stem"
    data["prunable_params"] = sum(layer["params"] for layer in data["layers"])
    tp.write_json(user / "other.json", data)
    tp.write_json(user / "stem_space.json", {"stem_sparsity": {"_type": "uniform",
                                                               "_value": [0.1, 0.9]}})
    argv = _argv("--out", "out.json")
    argv[argv.index("--profile") + 1] = "other.json"
    argv[argv.index("--search-space") + 1] = "stem_space.json"
    assert ps.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names layers ['stem'] that the model does not have" in err


def test_cli_subprocess_bad_input_is_one_line_and_exit_2(user: Path) -> None:
    """Through the package's own command, in a fresh interpreter: one stderr line, status 2."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = _argv("--out", "out.json", eval_fn="missing_fn")
    done = subprocess.run([sys.executable, "-m", "nni_prune_tuners", "presearch", *argv],
                          cwd=user, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"presearch: error: 'missing_fn' in '{MODULE}' is not a callable function "
        f"(eval '{MODULE}:missing_fn')"]
    assert not (user / "out.json").exists()


def test_help_states_the_default_budget_and_why() -> None:
    text = " ".join(ps.build_parser().format_help().split())
    assert f"default {ps.DEFAULT_EVALUATIONS}" in text and "a few minutes" in text


def test_presearch_restores_the_dense_model(user: Path) -> None:
    module = sys.modules[MODULE]
    args = ps.build_parser().parse_args(_argv(evaluations=2))
    setup = ps.prepare(args)
    dense = {k: v.clone() for k, v in setup.model.state_dict().items()}
    scored = list(ps.search(setup))
    assert len(scored) == 2 and scored[0].warm_start == "uniform"
    assert all(torch.equal(v, dense[k]) for k, v in setup.model.state_dict().items())
    assert module.agreement(setup.model) == 1.0


def test_weights_of_another_model_are_one_line(user: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"0.weight": torch.zeros(3)}, user / "wrong.pt")
    assert ps.main(_argv("--state-dict", "wrong.pt")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the weights do not fit presearch_usermod:make" in err, err


def test_an_eval_that_raises_mid_search_keeps_the_evaluations(
    user: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (user / "raising.py").write_text(
        f"from {MODULE} import agreement\nCALLS = [0]\n\n\ndef score(model):\n"
        "    CALLS[0] += 1\n    if CALLS[0] == 4:\n        raise RuntimeError('out of memory')\n"
        "    return agreement(model)\n")
    argv = _argv("--out", "out.json")
    argv[argv.index("--eval") + 1] = "raising:score"
    assert ps.main(argv) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "presearch: error: the search failed after 2 evaluations: RuntimeError: out of memory; "
        "wrote the 2 evaluations in ")
    proxy = load_profile(user / "out.json").proxy
    assert proxy is not None and len(proxy.evaluations) == 2
    sys.modules.pop("raising", None)
