"""classArgs typos and what ``check`` prints (issue #28 points 2, 3 and 6, and the command's name).

A mistyped key is named with the closest valid one, never with the whole classArgs mapping; an
error of ``check`` is its only line, whatever the probe tuner logged before it; ``check`` never
shows a seed that the experiment will not use. The console cases run the real command, because
Optuna's log handler writes to stderr directly and only a subprocess sees what the user sees.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from schema import SchemaError

from nni_prune_tuners.assessor import PruneEarlyStopAssessor, PruneEarlyStopClassArgsValidator
from nni_prune_tuners.options import unknown_key_message
from nni_prune_tuners.tuner import PruneTPEClassArgsValidator, PruneTPETuner

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"conv0": 144, "conv1": 4608}
SPACE = {f"{name}_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]} for name in LAYERS}
PROFILE = str(REPO / "search_spaces" / "mlp_digits.profile.json")


def test_tuner_typo_names_the_key_and_the_closest_valid_one() -> None:
    args = {"optimize_mode": "maximize", "target_sparsty": 0.9, "profile": PROFILE}
    expected = "PruneTPE classArgs: unknown key 'target_sparsty': did you mean 'target_sparsity'?"
    for build in (PruneTPEClassArgsValidator().validate_class_args, PruneTPETuner):
        with pytest.raises(ValueError) as info:
            build(**args)
        assert str(info.value) == expected  # no mapping, no profile path


def test_tuner_unknown_key_without_a_close_one_lists_the_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown key 'bogus': the keys are optimize_mode, seed, "
                       r"target_sparsity, .*, allocation, channel_multiple$"):
        PruneTPETuner(bogus=1)


def test_assessor_typo_names_the_key_and_the_closest_valid_one() -> None:
    expected = "PruneEarlyStop classArgs: unknown key 'min_trails': did you mean 'min_trials'?"
    with pytest.raises(SchemaError) as info:
        PruneEarlyStopClassArgsValidator().validate_class_args(min_trails=3, rule="median")
    assert str(info.value) == expected
    with pytest.raises(TypeError) as error:  # as Python says of an unknown keyword, with the hint
        PruneEarlyStopAssessor(min_trails=3, rule="median")
    assert str(error.value) == expected


def test_unknown_key_message_takes_the_first_unknown_in_order() -> None:
    assert unknown_key_message("X", ["a", "seeds", "zz"], ("a", "seed")) == (
        "X classArgs: unknown key 'seeds': did you mean 'seed'?")
    assert unknown_key_message("X", ["a"], ("a", "seed")) is None
    assert unknown_key_message("X", [3], ("a",)) == "X classArgs: unknown key 3: the keys are a"


def write_config(tmp_path: Path, tuner_args: dict[str, object],
                 assessor_args: dict[str, object] | None = None,
                 space: dict[str, object] | None = None) -> Path:
    config: dict[str, object] = {
        "searchSpace": SPACE if space is None else space,
        "trialCommand": "python3 trial.py",
        "trialCodeDirectory": ".",
        "tuner": {"name": "PruneTPE", "classArgs": tuner_args},
        "trainingService": {"platform": "local"},
    }
    if assessor_args is not None:
        config["assessor"] = {"name": "PruneEarlyStop", "classArgs": assessor_args}
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nni_prune_tuners", "check", "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True, check=False, timeout=120)


def output_lines(run: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]


@pytest.mark.parametrize(("tuner_args", "assessor_args", "space", "expected"), [
    # the tuner builds, then the search space is refused: the probe's seed and study lines were shown
    ({"target_sparsity": 0.5, "layer_params": LAYERS},
     None, {"convX_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]}},
     "error: search space key 'convX_sparsity': layer 'convX' is not in the profile; "
     "known layers: ['conv0', 'conv1']"),
    ({"target_sparsty": 0.5, "layer_params": LAYERS}, None, None,
     "error: PruneTPE classArgs: unknown key 'target_sparsty': did you mean 'target_sparsity'?"),
    ({"target_sparsity": 0.5, "layer_params": LAYERS}, {"min_trails": 3}, None,
     "error: PruneEarlyStop classArgs: unknown key 'min_trails': did you mean 'min_trials'?"),
])
def test_check_error_is_the_only_line(
    tmp_path: Path, tuner_args: dict[str, object], assessor_args: dict[str, object] | None,
    space: dict[str, object] | None, expected: str,
) -> None:
    run = check(write_config(tmp_path, tuner_args, assessor_args, space))
    assert run.returncode == 2, run.stderr
    assert output_lines(run) == [expected]


def test_check_says_the_experiment_draws_its_own_seed(tmp_path: Path) -> None:
    run = check(write_config(tmp_path, {"target_sparsity": 0.5, "layer_params": LAYERS}))
    assert run.returncode == 0, run.stderr
    (line,) = output_lines(run)  # no "PruneTPE seed <n>" of the probe, no Optuna study line
    assert line.startswith(f"{tmp_path / 'config.yml'} is valid: ")
    assert line.endswith("; seed: drawn when the experiment starts (dispatcher.log says "
                         "'PruneTPE seed N'; set classArgs seed to fix it)")


def test_check_names_a_fixed_seed(tmp_path: Path) -> None:
    run = check(write_config(tmp_path, {"target_sparsity": 0.5, "layer_params": LAYERS, "seed": 7}))
    assert run.returncode == 0, run.stderr
    (line,) = output_lines(run)
    assert line.endswith("; 1 warm starts; seed 7")


def test_help_names_the_command_as_typed() -> None:
    installed = Path(sys.executable).parent / "nni-prune-tuners"
    if not installed.exists():
        pytest.skip("the package is not installed in this environment")
    run = subprocess.run([str(installed), "--help"], capture_output=True, text=True, check=True)
    assert run.stdout.startswith("usage: nni-prune-tuners ")
    run = subprocess.run([sys.executable, "-m", "nni_prune_tuners", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert run.stdout.startswith("usage: python -m nni_prune_tuners ")
    run = subprocess.run([str(installed), "profile", "--help"], capture_output=True, text=True,
                         check=True)
    assert run.stdout.startswith("usage: nni-prune-tuners profile ")
