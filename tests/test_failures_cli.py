"""Careless input to ``check`` and ``export``: one line ``error: ...``, exit 2 or 1, no traceback.

Exit status 2: the input is wrong (command line, config, files they name); 1: the work failed
(a corrupt database, an output that cannot be written). Most cases run ``main`` in-process
(its log records are what the console shows); one per command runs the real console.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nni_prune_tuners.__main__ import main
from nni_prune_tuners.experiment_records import find_experiment_dir
from tests.test_export import JOBS, METRICS

REPO = Path(__file__).resolve().parent.parent
SPACE = json.loads((REPO / "search_spaces" / "digits.json").read_text())


def run_main(caplog: pytest.LogCaptureFixture, *argv: str) -> tuple[int, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        status = main(list(argv))
    return status, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def write_config(tmp_path: Path, **overrides: object) -> Path:
    config: dict[str, object] = {
        "searchSpaceFile": "space.json",
        "trialCommand": "python3 -m trials.prune_trial",
        "trialCodeDirectory": str(REPO),
        "tuner": {"name": "PruneTPE", "classArgs": {"optimize_mode": "maximize"}},
        "assessor": {"name": "PruneEarlyStop", "classArgs": {"optimize_mode": "maximize"}},
        "trainingService": {"platform": "local"},
    }
    config.update(overrides)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    if not (tmp_path / "space.json").exists():
        (tmp_path / "space.json").write_text(json.dumps(SPACE))
    return path


# -- check -------------------------------------------------------------------------------------

def test_check_bad_assessor_class_args_is_one_line_without_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path, assessor={"name": "PruneEarlyStop",
                                              "classArgs": {"rule": "percentile", "percentile": 200}})
    run = subprocess.run([sys.executable, "-m", "nni_prune_tuners", "check", "--config", str(config)],
                         cwd=REPO, capture_output=True, text=True, check=False)
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: assessor PruneEarlyStop: percentile must be a number in (0, 100), got 200"]
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"searchSpaceFile": "missing.json"}, "search space '{tmp}/missing.json' cannot be read: No such file"),
    ({"tuner": {"name": "PruneTPE", "classArgs": ["optimize_mode", "maximize"]}},
     "tuner classArgs must be a mapping of option: value, got ['optimize_mode', 'maximize']"),
    ({"assessor": {"name": "PruneEarlyStop", "classArgs": "maximize"}},
     "assessor classArgs must be a mapping of option: value, got 'maximize'"),
    ({"assessor": {"name": "PruneEarlyStop", "classArgs": {"rule": "mean"}}},
     "assessor PruneEarlyStop: rule must be one of"),
    ({"tuner": {"name": "PruneTPE", "classArgs": {"bogus": 1}}}, "unknown key 'bogus'"),
])
def test_check_bad_config_is_a_usage_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, overrides: dict[str, object], expected: str
) -> None:
    status, messages = run_main(caplog, "check", "--config", str(write_config(tmp_path, **overrides)))
    assert status == 2
    assert len(messages) == 1 and messages[0].startswith("error: "), messages
    assert expected.format(tmp=tmp_path) in messages[0]


def test_check_config_that_is_missing_or_not_yaml(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    status, messages = run_main(caplog, "check", "--config", str(tmp_path / "nope.yml"))
    assert status == 2 and "nope.yml' cannot be read: No such file or directory" in messages[0]
    (tmp_path / "bad.yml").write_text("tuner: [unclosed\n")
    status, messages = run_main(caplog, "check", "--config", str(tmp_path / "bad.yml"))
    assert status == 2 and "bad.yml' is not valid YAML" in messages[0]
    assert "\n" not in messages[0]


TRAILING_COMMA = """{"prune_method": {"_type": "choice", "_value": [
  {"_name": "level", "conv0_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]},
                     "conv1_sparsity": {"_type": "uniform", "_value": [0.1, 0.9]},},
]}}
"""

YAML_SPACE = """prune_method:
  _type: choice
  _value:
    - _name: level
      conv0_sparsity: {_type: uniform, _value: [0.1, 0.9]}
      conv1_sparsity: {_type: uniform, _value: [0.1, 0.9]}
"""


@pytest.mark.parametrize(("text", "where"), [(TRAILING_COMMA, "line 3, column 83"),
                                              (YAML_SPACE, "line 1, column 1")])
def test_check_reads_the_search_space_as_nni_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, where: str
) -> None:
    """NNI 3.0 falls back to YAML for the search-space file: check accepts it too, and warns."""
    (tmp_path / "space.json").write_text(text)
    status, messages = run_main(caplog, "check", "--config", str(write_config(tmp_path)))
    assert status == 0, messages
    assert len(messages) == 1 and messages[0].startswith("warning: search space"), messages
    assert "is not strict JSON" in messages[0] and where in messages[0]
    from nni.experiment.config.experiment_config import _load_search_space_file

    from nni_prune_tuners.config_check import check_config

    assert check_config(tmp_path / "config.yml").search_space == _load_search_space_file(
        tmp_path / "space.json")


def test_check_space_neither_json_nor_yaml(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "space.json").write_text('{"a": {"_type": "choice", "_value": [1, 2}}\n')
    status, messages = run_main(caplog, "check", "--config", str(write_config(tmp_path)))
    assert status == 2
    assert "space.json' is neither JSON (" in messages[0] and "nor YAML (" in messages[0]


# -- export ------------------------------------------------------------------------------------

def nni_database(path: Path) -> Path:
    """A small database shaped like NNI's (the tables export reads)."""
    path.mkdir(parents=True, exist_ok=True)
    database = path / "db" / "nni.sqlite"
    database.parent.mkdir(exist_ok=True)
    connection = sqlite3.connect(database)
    connection.executescript(
        "create table TrialJobEvent (timestamp integer, trialJobId text, event text, data text);"
        "create table MetricData (timestamp integer, trialJobId text, parameterId text, "
        "type text, sequence integer, data text);"
        "create table ExperimentProfile (params text, revision integer);"
    )
    connection.executemany("insert into TrialJobEvent values (?, ?, ?, ?)", JOBS * 40)
    connection.executemany("insert into MetricData values (?, ?, ?, ?, ?, ?)",
                           [(*row[:4], i, row[4]) for i, row in enumerate(METRICS)])
    connection.execute("insert into ExperimentProfile values (?, 1)", (json.dumps({}),))
    connection.commit()
    connection.close()
    return database


def test_export_corrupt_database_is_one_line_without_traceback(tmp_path: Path) -> None:
    database = nni_database(tmp_path / "exp")
    database.write_bytes(database.read_bytes()[:4096])  # truncated
    run = subprocess.run(
        [sys.executable, "-m", "nni_prune_tuners", "export", "--experiment", "exp", "--out",
         str(tmp_path / "best.json"), "--experiment-dir", str(tmp_path / "exp")],
        cwd=REPO, capture_output=True, text=True, check=False)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: NNI's database '{database}' cannot be read: database disk image is malformed; "
        "it is corrupt, truncated or not an NNI experiment database"]
    assert not (tmp_path / "best.json").exists()


@pytest.mark.parametrize(("content", "problem"), [
    (b"", "no such table: ExperimentProfile (the file is empty)"),
    (bytes(range(256)) * 8, "file is not a database"),
])
def test_export_empty_or_random_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, problem: str
) -> None:
    database = nni_database(tmp_path / "exp")
    database.write_bytes(content)
    status, messages = run_main(caplog, "export", "--experiment", "exp", "--out",
                                str(tmp_path / "best.json"), "--experiment-dir", str(tmp_path / "exp"))
    assert status == 1
    assert messages == [f"error: NNI's database '{database}' cannot be read: {problem}; it is "
                        "corrupt, truncated or not an NNI experiment database"]


def test_export_wrong_experiment_dir_is_a_usage_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for folder in (tmp_path, tmp_path / "missing"):
        status, messages = run_main(caplog, "export", "--experiment", "exp", "--out",
                                    str(tmp_path / "best.json"), "--experiment-dir", str(folder))
        assert status == 2
        assert messages == [f"error: '{folder}' is not an NNI experiment folder: it has no "
                            "db/nni.sqlite (the folder is <experimentWorkingDirectory>/<experiment id>)"]


def test_export_unwritable_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    nni_database(tmp_path / "exp")
    (tmp_path / "file").write_text("a file, not a folder")
    out = tmp_path / "file" / "best.json"
    status, messages = run_main(caplog, "export", "--experiment", "exp", "--out", str(out),
                                "--experiment-dir", str(tmp_path / "exp"))
    assert status == 1
    assert len(messages) == 1 and messages[0].startswith(f"error: cannot write '{out}': "), messages


def test_export_corrupt_registry_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = tmp_path / ".experiment"
    registry.write_text('{"exp": {"logDir": ')
    with pytest.raises(ValueError, match=r"experiment 'exp' not found .*nnictl's experiment registry "
                       rf"'{registry}' is unreadable \(Expecting value: line 1 column 20"):
        find_experiment_dir("exp", nni_home=tmp_path)
    nni_database(tmp_path / "exp")  # still found in the default folder, with a warning
    with caplog.at_level(logging.WARNING):
        assert find_experiment_dir("exp", nni_home=tmp_path) == tmp_path / "exp"
    assert f"registry '{registry}' is unreadable" in caplog.text
