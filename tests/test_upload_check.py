"""What NNI would upload from a trial code directory, counted as NNI 3.0 counts it.

The reference is NNI itself: its own ``ignore`` package and the walk of its remote platform's
``createTarball`` (``nni_node/common/tarball.js``), run with the node binary NNI ships.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nni_node
import pytest
import yaml

from nni_prune_tuners.__main__ import main
from nni_prune_tuners.config_check import check_config
from nni_prune_tuners.upload_check import (
    NNI_MAX_BYTES,
    NNI_MAX_FILES,
    count_upload,
    is_ignored,
    parse_ignore,
    remote_warnings,
)
from trials import analytic_trial

REPO = Path(__file__).resolve().parent.parent
NNI_NODE = Path(nni_node.__path__[0])

# The walk of nni_node/common/tarball.js (createTarball), verbatim but for printing the list.
NNI_WALK_JS = """
const fs = require('node:fs/promises'); const path = require('node:path');
const ignore = require(process.argv[1]);
async function* walk(root, relDir, ig) {
    const dir = path.join(root, relDir);
    const entries = await fs.readdir(dir);
    for (const entry of entries) {
        const stats = await fs.lstat(path.join(dir, entry));
        const relEntry = path.join(relDir, entry);
        if (ig && ig.ignores(relEntry + (stats.isDirectory() ? path.sep : ''))) continue;
        if (stats.isDirectory()) yield* walk(root, relEntry, ig);
        else yield [relEntry, stats];
    }
}
(async () => {
    const root = process.argv[2];
    let patterns; try { patterns = await fs.readFile(path.join(root, '.nniignore'), 'utf8'); } catch {}
    const ig = patterns ? ignore().add(patterns) : undefined;
    const files = [];
    for await (const [file, stats] of walk(root, '', ig)) files.push([file, stats.size]);
    console.log(JSON.stringify(files));
})();
"""

# NNI's `ignore` package answering for patterns and paths (a trailing '/' marks a directory).
NNI_IGNORES_JS = """
const ignore = require(process.argv[1]);
const cases = JSON.parse(process.argv[2]);
console.log(JSON.stringify(cases.map(([patterns, p]) => ignore().add(patterns).ignores(p))));
"""

TRICKY_IGNORE = """\
# comment
.venv
/results
build/
*.pyc
!keep.pyc
docs/**/*.png
**/tmp_*
data/[a-c]?.csv
nested/deep
\\#literal
"""


def nni_node_run(script: str, *args: str) -> Any:
    run = subprocess.run([str(NNI_NODE / "node"), "-e", script, "--",  # node -e: argv[1:] follow "--"
                          str(NNI_NODE / "node_modules" / "ignore"), *args],
                         capture_output=True, text=True, check=True, timeout=60)
    return json.loads(run.stdout)


def make_tree(root: Path, files: list[str]) -> None:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name * 3)


TREE = [
    ".venv/lib/site.py", "venv2/x.py", "results/a.json", "sub/results/b.json", "build/o.o",
    "sub/build", "a.pyc", "sub/keep.pyc", "keep.pyc", "docs/x/y/p.png", "docs/p.png", "docs/p.txt",
    "tmp_1", "src/tmp_2/z.py", "data/a1.csv", "data/d1.csv", "data/b12.csv", "nested/deep/f",
    "x/nested/deep/f", "#literal", "main.py", "trials/t.py",
]


def test_rules_agree_with_nnis_ignore_package() -> None:
    paths = [p for f in TREE for p in (f, f + "/")] + ["sub/build/", "nested/", "docs/x/"]
    expected = nni_node_run(NNI_IGNORES_JS, json.dumps([[TRICKY_IGNORE, p] for p in paths]))
    rules = parse_ignore(TRICKY_IGNORE)
    ours = [is_ignored(p.rstrip("/"), is_dir=p.endswith("/"), rules=rules) for p in paths]
    assert ours == expected, [(p, o, e) for p, o, e in zip(paths, ours, expected, strict=True)
                             if o != e]


def test_count_agrees_with_nnis_tarball_walk(tmp_path: Path) -> None:
    make_tree(tmp_path, TREE)
    (tmp_path / ".nniignore").write_text(TRICKY_IGNORE)
    os.symlink(tmp_path / "main.py", tmp_path / "link.py")
    nni_files = nni_node_run(NNI_WALK_JS, str(tmp_path))
    count = count_upload(tmp_path)
    assert (count.entries, count.size) == (len(nni_files), sum(size for _, size in nni_files))
    assert 0 < count.entries < len(TREE)


def test_shipped_nniignore_uploads_the_checkout_as_nni_counts_it() -> None:
    nni_files = nni_node_run(NNI_WALK_JS, str(REPO))
    names = {name for name, _ in nni_files}
    count = count_upload(REPO)
    assert count.entries == len(nni_files) <= NNI_MAX_FILES
    assert count.size == sum(size for _, size in nni_files) <= NNI_MAX_BYTES
    # what the trials need is there; environments, history, results and caches are not
    assert {"trials/prune_trial.py", "trials/analytic_trial.py",
            "nni_prune_tuners/trial/__init__.py"} <= names
    assert not any(n.startswith((".venv/", ".git/", "results/", "trials/cache/")) or
                   "__pycache__" in n for n in names)


def test_validate_code_dir_counts_directories_too(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a/b/c.py", "a/d.py"])
    assert count_upload(tmp_path).entries == 2
    assert count_upload(tmp_path, count_directories=True).entries == 4


def remote_config(tmp_path: Path, code: Path, **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "searchSpace": analytic_trial.search_space(),
        "trialCommand": "/opt/venv/bin/python -m trials.analytic_trial",
        "trialCodeDirectory": str(code),
        "tuner": {"name": "PruneTPE", "classArgs": {
            "optimize_mode": "maximize", "target_sparsity": 0.9,
            "layer_params": analytic_trial.layer_params()}},
        "trainingService": {"platform": "remote", "machineList": [
            {"host": "127.0.0.1", "user": "root", "pythonPath": "/opt/venv/bin"}]},
        "nniManagerIp": "127.0.0.1",
    }
    config.update(overrides)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def many_files(root: Path, n: int) -> Path:
    root.mkdir()
    for i in range(n):
        (root / f"f{i}.py").touch()
    return root


def test_check_accepts_nnis_file_limit_exactly(tmp_path: Path) -> None:
    code = many_files(tmp_path / "code", NNI_MAX_FILES)
    assert check_config(remote_config(tmp_path, code)).warnings == ()


def test_check_names_nnis_limits_one_file_over(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                               ) -> None:
    code = many_files(tmp_path / "code", NNI_MAX_FILES + 1)
    config = remote_config(tmp_path, code)
    with caplog.at_level(logging.INFO):
        assert main(["check", "--config", str(config)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.getMessage().startswith("error:")]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert f"would upload {NNI_MAX_FILES + 1} files" in errors[0]
    assert "more than 2000 files or 300 MB" in errors[0]
    assert "no .nniignore" in errors[0] and str(code / ".nniignore") in errors[0]
    # an .nniignore that leaves some out fixes it
    (code / ".nniignore").write_text("f1*.py\n")
    check_config(config)


def test_check_names_the_size_limit_and_the_biggest_folder(tmp_path: Path) -> None:
    code = tmp_path / "code"
    (code / "weights").mkdir(parents=True)
    with (code / "weights" / "big.pt").open("wb") as sparse:  # no disk space used
        sparse.truncate(NNI_MAX_BYTES + 1)
    with pytest.raises(ValueError, match=r"300\.0 MB.*more than 2000 files or 300 MB.*'weights'"):
        check_config(remote_config(tmp_path, code))


def test_check_names_a_missing_code_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^trialCodeDirectory '.*missing' is not a directory$"):
        check_config(remote_config(tmp_path, tmp_path / "missing"))


def test_local_platform_uploads_nothing(tmp_path: Path) -> None:
    code = many_files(tmp_path / "code", NNI_MAX_FILES + 1)
    check_config(remote_config(tmp_path, code, trainingService={"platform": "local"}))


def test_the_real_console_says_it_in_one_line(tmp_path: Path) -> None:
    code = many_files(tmp_path / "code", NNI_MAX_FILES + 1)
    run = subprocess.run([sys.executable, "-m", "nni_prune_tuners", "check", "--config",
                          str(remote_config(tmp_path, code))],
                         cwd=REPO, capture_output=True, text=True, check=False)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if line.startswith("error:")], run.stderr


def machines(*python_paths: str | None) -> list[dict[str, Any]]:
    return [{"host": "127.0.0.1", "user": "root", **({"pythonPath": p} if p else {})}
            for p in python_paths]


@pytest.mark.parametrize(("command", "python_paths", "warned"), [
    ("python3 -m trials.prune_trial", ["/opt/venv/bin"], "PATH"),
    ("python -m trials.prune_trial", [None, "/opt/venv/bin"], "PATH"),
    ("python3.11 trials/prune_trial.py", ["/opt/venv/bin"], "PATH"),
    (".venv/bin/python -m trials.prune_trial", ["/opt/venv/bin"], "the uploaded code directory"),
    ("/opt/venv/bin/python -m trials.prune_trial", ["/opt/venv/bin"], None),
    ("python3 -m trials.prune_trial", [None], None),
    ("bash run.sh", ["/opt/venv/bin"], None),
    ("PRUNE_TRIAL_CACHE=/c python3 -m trials.prune_trial", ["/opt/venv/bin"], "PATH"),
    ("PRUNE_TRIAL_CACHE=/c /opt/venv/bin/python -m trials.prune_trial", ["/opt/venv/bin"], None),
])
def test_remote_trial_command_warning(command: str, python_paths: list[str | None],
                                      warned: str | None) -> None:
    config = {"trialCommand": command, "nniManagerIp": "127.0.0.1",
              "trainingService": {"platform": "remote", "machineList": machines(*python_paths)}}
    warnings = remote_warnings(config)
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert f"through {warned}" in warnings[0] and "~/.bashrc" in warnings[0]
        assert "/path/to/venv/bin/python -m trials.prune_trial" in warnings[0] or \
            "prune_trial.py" in warnings[0]


def test_remote_manager_address_notes(tmp_path: Path) -> None:
    service = {"platform": "remote", "machineList": machines("/opt/venv/bin")}
    unset = remote_warnings({"trialCommand": "/p/python t.py", "trainingService": service})
    assert len(unset) == 1 and "nniManagerIp is not set" in unset[0]
    far = {"platform": "remote", "machineList": [{"host": "10.0.0.7", "user": "u"}]}
    loopback = remote_warnings({"trialCommand": "/p/python t.py", "nniManagerIp": "127.0.0.1",
                                "trainingService": far})
    assert len(loopback) == 1 and "'10.0.0.7'" in loopback[0]
    assert remote_warnings({"trialCommand": "/p/python t.py", "nniManagerIp": "10.0.0.1",
                            "trainingService": far}) == []
    # the same notes reach check's result
    code = many_files(tmp_path / "code", 3)
    config = remote_config(tmp_path, code, trialCommand="python3 -m trials.analytic_trial")
    del_ip = yaml.safe_load(config.read_text())
    del del_ip["nniManagerIp"]
    config.write_text(yaml.safe_dump(del_ip))
    warnings = check_config(config).warnings
    assert [w for w in warnings if "trialCommand starts with 'python3'" in w]
    assert [w for w in warnings if "nniManagerIp is not set" in w]


def test_shipped_remote_config_passes_check_without_warnings(tmp_path: Path) -> None:
    """trials/config.remote.yml as shipped, but for the profile (written by make demo)."""
    from tests.profiles import write_profile

    config = yaml.safe_load((REPO / "trials" / "config.remote.yml").read_text())
    assert config["trainingService"]["platform"] == "remote"
    config["searchSpaceFile"] = str(REPO / "search_spaces" / "digits.json")
    config["trialCodeDirectory"] = str(REPO)
    config["tuner"]["classArgs"]["profile"] = str(write_profile(tmp_path / "profile.json"))
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    assert check_config(path).warnings == ()
    # the dense-model cache lives outside the uploaded copy, which is new for every experiment
    command = config["trialCommand"].split()
    cache = command[command.index("--cache-dir") + 1]
    assert cache.startswith(("/", "~/")), cache
    assert command[0].startswith("/") and len(config["trainingService"]["machineList"]) == 2
