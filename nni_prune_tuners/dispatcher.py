"""What the algorithms need from NNI's dispatcher process: where the experiment is, how to end it.

NNI starts the dispatcher in the experiment's log folder with the experiment config on its command
line, and talks to it over the tuner command channel. A tuner or assessor that cannot start must
end the dispatcher with one line that the manager shows (not a traceback and a 10 s timeout), and
a relative path in classArgs means the trial code directory, where users keep their profile.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

_logger = logging.getLogger(__name__)


def experiment_code_directory() -> Path | None:
    """The running experiment's ``trialCodeDirectory`` when called inside NNI's dispatcher.

    NNI starts the dispatcher in the experiment's log folder with the whole experiment config
    base64-encoded in ``--exp_params``; NNI already made the code directory absolute there.
    """
    if "--exp_params" not in sys.argv[:-1]:
        return None
    encoded = sys.argv[sys.argv.index("--exp_params") + 1]
    config = json.loads(base64.b64decode(encoded).decode("utf-8"))
    directory = config.get("trialCodeDirectory") or config.get("trial", {}).get("codeDir")
    return None if directory is None else Path(directory)


def report_to_nni_manager(message: str) -> None:
    """Tell the NNI manager of a fatal error so that the experiment shows ERROR with ``message``.

    NNI's dispatcher logs an exception of a tuner's handler and waits for the next command that
    never comes; its own error command (what NNI sends when the dispatcher itself fails), sent on
    a connection of the tuner command channel, makes the manager end the experiment in ERROR.
    Outside an experiment (no ``NNI_TUNER_COMMAND_CHANNEL``) this does nothing.
    """
    url = os.environ.get("NNI_TUNER_COMMAND_CHANNEL")
    if not url:
        return
    _logger.error("%s", message)
    from nni.runtime.tuner_command_channel import TunerCommandChannel
    from nni.runtime.tuner_command_channel.command_type import CommandType

    channel = TunerCommandChannel(url)
    try:
        channel.connect()
        channel._send(CommandType.Error, message)
        channel.disconnect()
    except Exception as failure:  # the error is already logged; a broken channel adds nothing
        _logger.warning("could not report the error to the NNI manager: %s", failure)


#: What a tuner built only to be read or checked would log at INFO: its seed, its search space,
#: the allocation sampler's notes, Optuna's "A new study created in memory".
_PROBE_LOGGERS = ("nni_prune_tuners.tuner", "nni_prune_tuners.constraint",
                  "nni_prune_tuners.warm_start", "nni_prune_tuners.proxy", "nni_prune_tuners.dedup",
                  "nni_prune_tuners.study", "nni_prune_tuners.allocation", "optuna")


@contextlib.contextmanager
def quiet_probe() -> Iterator[None]:
    """Hide the INFO lines of a tuner built only to check a config or read its plan (``check``,
    ``export``, ``presearch``); warnings still show."""
    loggers = [logging.getLogger(name) for name in _PROBE_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def exit_dispatcher(message: str) -> None:
    """Inside NNI's dispatcher, end it with ``message``; elsewhere do nothing.

    A tuner whose constructor raises has not connected to the manager yet: NNI would log a
    traceback and the manager would give up after 10 s with ``Tuner did not connect in 10
    seconds``. Instead the message is logged as one line (dispatcher.log), sent to the manager
    (the experiment is in ERROR at once, ``nnimanager.log`` says ``Dispatcher error: <message>``)
    and is the last line the dispatcher writes to stderr (nnictl_stderr.log), with no traceback.
    """
    if "--exp_params" not in sys.argv[:-1] or not os.environ.get("NNI_TUNER_COMMAND_CHANNEL"):
        return
    report_to_nni_manager(message)
    raise SystemExit(f"error: {message}")


def resolve_path(path: str, base: Path | None) -> Path:
    """A relative classArgs path is relative to the trial code, where users keep the profile."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or base is None:
        return candidate
    return base / candidate
