"""What NNI would upload from a trial code directory, and the remote platform's pitfalls.

Every training service but ``local`` packs ``trialCodeDirectory`` and uploads it. NNI 3.0 refuses
more than 2000 files or 300 MB after ``.nniignore`` (``nni_node/common/tarball.js`` for
``remote``; ``validateCodeDir`` in ``training_service/common/util.js``, which also counts the
directories, for reuse mode and the cluster platforms). It finds out only after ``nnictl create``
has returned 0, and the experiment then runs nothing; so ``check`` counts the same way first.

The ``remote`` platform also starts trials with ``/bin/bash``, which can read the remote user's
``~/.bashrc`` and put another python first on PATH, so a trial command that names its
interpreter by a bare or relative name can miss the environment ``pythonPath`` points NNI at.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

_logger = logging.getLogger(__name__)

#: NNI 3.0's limits on an uploaded trial code directory (tarball.js, validateCodeDir).
NNI_MAX_FILES = 2000
NNI_MAX_BYTES = 300 * 1024 * 1024
IGNORE_FILE = ".nniignore"
#: Stop walking a directory tree after this many entries: far past the limit, and bounded.
_WALK_CAP = 100 * NNI_MAX_FILES
_PYTHON = re.compile(r"^python(\d+(\.\d+)*)?$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class IgnoreRule:
    """One ``.nniignore`` line (gitignore syntax, as NNI's ``ignore`` package reads it)."""

    regex: re.Pattern[str]
    negated: bool
    directory_only: bool


@dataclass(frozen=True)
class UploadCount:
    """What NNI would pack: entries counted, their bytes, and entries per top-level name."""

    entries: int
    size: int
    by_top_level: tuple[tuple[str, int], ...]
    capped: bool = False


def _translate(pattern: str) -> str:
    """A gitignore glob as a regular expression over a POSIX relative path."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[" and (end := _class_end(pattern, i)) > 0:
            body = pattern[i + 1:end]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(char))
            i += 1
    return "".join(out)


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the character class opened at ``start``, or -1."""
    j = start + 1
    if pattern[j:j + 1] in ("!", "^"):
        j += 1
    if pattern[j:j + 1] == "]":
        j += 1
    return pattern.find("]", j)


def parse_ignore(text: str) -> list[IgnoreRule]:
    """The rules of a ``.nniignore`` file: blank lines and ``#`` comments skipped, ``!`` negates,
    a trailing ``/`` matches directories only, a ``/`` elsewhere anchors at the root."""
    rules = []
    for raw in text.splitlines():
        line = re.sub(r"(?<!\\)\s+$", "", raw)
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:]
        if line.startswith(("\\!", "\\#")):
            line = line[1:]
        directory_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        prefix = "" if "/" in line else "(?:.*/)?"
        regex = re.compile(prefix + _translate(line.lstrip("/")), re.DOTALL)
        rules.append(IgnoreRule(regex, negated, directory_only))
    return rules


def _last_match(path: str, is_dir: bool, rules: Sequence[IgnoreRule]) -> bool:
    """Whether the last rule matching ``path`` ignores it (gitignore: later rules win)."""
    ignored = False
    for rule in rules:
        if (not rule.directory_only or is_dir) and rule.regex.fullmatch(path):
            ignored = not rule.negated
    return ignored


def is_ignored(path: str, *, is_dir: bool, rules: Sequence[IgnoreRule]) -> bool:
    """Whether ``path`` (POSIX, relative to the code directory) is ignored: the last matching
    rule decides, and nothing inside an ignored directory can be re-included (as in git)."""
    parts = path.split("/")
    if any(_last_match("/".join(parts[:depth]), True, rules) for depth in range(1, len(parts))):
        return True
    return _last_match(path, is_dir, rules)


def _walk(root: Path, relative: str, rules: Sequence[IgnoreRule], *,
          follow_symlinks: bool) -> Iterator[tuple[str, os.stat_result, bool]]:
    """Entries NNI would visit; ignored directories are not entered. The remote platform walks
    with ``lstat`` (a symlink is one file); ``validateCodeDir`` follows symlinks."""
    with os.scandir(root / relative if relative else root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            path = f"{relative}/{entry.name}" if relative else entry.name
            info = entry.stat(follow_symlinks=follow_symlinks)
            is_dir = stat.S_ISDIR(info.st_mode)
            if is_ignored(path, is_dir=is_dir, rules=rules):
                continue
            yield path, info, is_dir
            if is_dir:
                yield from _walk(root, path, rules, follow_symlinks=follow_symlinks)


def count_upload(directory: str | Path, *, count_directories: bool = False) -> UploadCount:
    """Count what NNI would pack from ``directory`` after its ``.nniignore``.

    ``count_directories=False`` is NNI 3.0's remote platform (files and symlinks, ``lstat``
    sizes); ``True`` is ``validateCodeDir`` (directories too, sizes through symlinks).
    """
    root = Path(directory)
    ignore_file = root / IGNORE_FILE
    rules = parse_ignore(ignore_file.read_text(encoding="utf-8")) if ignore_file.is_file() else []
    entries = size = 0
    top: Counter[str] = Counter()
    for path, info, is_dir in _walk(root, "", rules, follow_symlinks=count_directories):
        if is_dir and not count_directories:
            continue
        entries += 1
        size += info.st_size
        top[path.split("/", 1)[0]] += 1
        if entries >= _WALK_CAP:
            return UploadCount(entries, size, tuple(top.most_common(3)), capped=True)
    return UploadCount(entries, size, tuple(top.most_common(3)))


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def upload_problem(count: UploadCount, directory: Path, *, platform: str,
                   count_directories: bool) -> str | None:
    """The one-line error for an upload over NNI's limits, or None within them."""
    if count.entries <= NNI_MAX_FILES and count.size <= NNI_MAX_BYTES:
        return None
    what = "files and directories" if count_directories else "files"
    amount = f"{'more than ' if count.capped else ''}{count.entries} {what}"
    biggest = ", ".join(f"{name!r} ({n})" for name, n in count.by_top_level)
    ignore_file = directory / IGNORE_FILE
    return (f"trialCodeDirectory {str(directory)!r} would upload {amount}, "
            f"{_megabytes(count.size)}, after {'its' if ignore_file.is_file() else 'no'} "
            f"{IGNORE_FILE}: NNI's {platform} platform refuses more than {NNI_MAX_FILES} {what} "
            f"or {NNI_MAX_BYTES // (1024 * 1024)} MB (and nnictl create still returns 0); most "
            f"are under {biggest}: list them in {str(ignore_file)!r}")


def training_platforms(config: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(platform, section)`` for each training service of a v2 or legacy config."""
    if "trainingServicePlatform" in config:
        return [(str(config["trainingServicePlatform"]), config)]
    service = config.get("trainingService")
    sections = service if isinstance(service, list) else [service]
    return [(str(s.get("platform")), s) for s in sections if isinstance(s, Mapping)]


def _reuse_mode(config: Mapping[str, Any], section: Mapping[str, Any]) -> bool:
    """NNI's reuse mode: a list of services, ``reuseMode: true``, or legacy ``remoteConfig``."""
    legacy = config.get("remoteConfig")
    return (isinstance(config.get("trainingService"), list) or bool(section.get("reuseMode"))
            or (isinstance(legacy, Mapping) and bool(legacy.get("reuse"))))


def _machines(section: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The remote platform's ``machineList`` entries, skipping what is not a mapping."""
    machines = section.get("machineList")
    return [m for m in machines if isinstance(m, Mapping)] if isinstance(machines, list) else []


def _trial_command(config: Mapping[str, Any]) -> str:
    """The trial command of a v2 (``trialCommand``) or legacy (``trial.command``) config."""
    trial = config.get("trial")
    if "trainingServicePlatform" in config and isinstance(trial, Mapping):
        return str(trial.get("command", ""))
    return str(config.get("trialCommand", ""))


def remote_warnings(config: Mapping[str, Any]) -> list[str]:
    """Warnings for the remote platform: a trial interpreter named by a bare or relative path
    while ``pythonPath`` is set, and an ``nniManagerIp`` the workers cannot call back."""
    warnings = []
    for platform, section in training_platforms(config):
        if platform != "remote":
            continue
        machines = _machines(section)
        words = _trial_command(config).split()
        settings = list(itertools.takewhile(_ASSIGNMENT.match, words))
        command = words[len(settings):]
        interpreter = command[0] if command else ""
        if (any(m.get("pythonPath") for m in machines)
                and _PYTHON.match(PurePosixPath(interpreter).name)
                and not interpreter.startswith("/")):
            where = "the uploaded code directory" if "/" in interpreter else "PATH"
            instead = " ".join([*settings, "/path/to/venv/bin/python", *command[1:]])
            warnings.append(
                f"trialCommand starts with {interpreter!r}: on the remote platform NNI starts "
                f"trials under /bin/bash, which can read the remote user's ~/.bashrc, and finds "
                f"{interpreter!r} through {where}, so it may not be the python of pythonPath "
                f"(trials fail with 'No module named nni'); name the workers' interpreter by "
                f"its absolute path: trialCommand: {instead}")
        ip = config.get("nniManagerIp") or section.get("nniManagerIp")
        remote_hosts = {str(m.get("host") or m.get("ip")) for m in machines} - _LOOPBACK_HOSTS
        if not ip:
            warnings.append(
                "nniManagerIp is not set: NNI 3.0's remote workers then call the manager "
                "back at ws://localhost:<port>, which works only when every machine is this "
                "one; set nniManagerIp to an address of this machine that the workers reach")
        elif str(ip) in _LOOPBACK_HOSTS and remote_hosts:
            warnings.append(
                f"nniManagerIp is {ip!r} but machineList has {sorted(remote_hosts)}: those "
                f"workers cannot call the manager back at a loopback address")
    return warnings


def check_training_service(config: Mapping[str, Any], code_directory: Path) -> list[str]:
    """Raise ``ValueError`` if NNI would refuse to upload ``code_directory``; return warnings."""
    uploading = [(p, s) for p, s in training_platforms(config) if p != "local"]
    if uploading:
        if not code_directory.is_dir():
            raise ValueError(f"trialCodeDirectory {str(code_directory)!r} is not a directory")
        platform = ", ".join(p for p, _ in uploading)
        count_directories = any(p != "remote" or _reuse_mode(config, s) for p, s in uploading)
        count = count_upload(code_directory, count_directories=count_directories)
        _logger.info("NNI would upload %d %s (%s) from %s", count.entries,
                     "files and directories" if count_directories else "files",
                     _megabytes(count.size), code_directory)
        problem = upload_problem(count, code_directory, platform=platform,
                                 count_directories=count_directories)
        if problem is not None:
            raise ValueError(problem)
    return remote_warnings(config)
