"""The ``nni-prune-tuners`` command (``python -m nni_prune_tuners``): register, check, export, profile,
presearch.

A failure is one line ``error: ...`` and no traceback: exit status 2 when the input is wrong
(the command line, the config or the files they name: fix it and run again), 1 when the work
itself failed (nnictl, a corrupt database, an output that cannot be written).

``profile`` and ``presearch`` are torch-side (:mod:`nni_prune_tuners.trial.profile` and
:mod:`nni_prune_tuners.trial.presearch`, the ``trial`` extra), imported only when that command
runs, so the other commands never load torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from nni_prune_tuners import registration

_logger = logging.getLogger(__name__)


def _prog() -> str:
    """The name the user typed: the installed command, or ``python -m nni_prune_tuners``."""
    if Path(sys.argv[0]).name.startswith("nni-prune-tuners"):  # also nni-prune-tuners.exe
        return "nni-prune-tuners"
    return "python -m nni_prune_tuners"


#: What ``--help`` says; plain text (the module docstring is reStructuredText).
_DESCRIPTION = ("Register PruneTPE and PruneEarlyStop with nnictl, check an experiment config, "
                "export the best trial of an experiment, and (with torch) profile a model or "
                "presearch its allocations.")


def _parser() -> argparse.ArgumentParser:
    """The commands; ``profile`` and ``presearch`` only named here, parsed torch-side."""
    parser = argparse.ArgumentParser(prog=_prog(), description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    _command(commands, "register", "register PruneTPE and PruneEarlyStop with nnictl",
             "Register PruneTPE and PruneEarlyStop with the nnictl of this environment "
             "(nnictl algo register); registering again updates them.")
    _command(commands, "unregister", "remove them from nnictl",
             "Remove PruneTPE and PruneEarlyStop from nnictl's registry, if registered.")
    check = _command(
        commands, "check", "validate an experiment config (classArgs, search space, profile, "
        "target) before nnictl create",
        "Build the tuner and assessor of an experiment config as NNI's dispatcher will, so "
        "that a mistake is named before nnictl create rather than as an experiment in ERROR.")
    check.add_argument("--config", required=True, type=Path,
                       help="the experiment config YAML that nnictl create would be given")
    export = _command(
        commands, "export", "write the best trial of a finished experiment as an NNI config_list",
        "Write the best trial of an experiment (running or stopped) as JSON with its NNI "
        "pruning config_list, the statuses of all trials and how it compares with the warm "
        "starts.")
    export.add_argument("--experiment", required=True, help="experiment id")
    export.add_argument("--out", required=True, type=Path, help="the JSON file to write")
    export.add_argument("--experiment-dir", type=Path,
                        help="the experiment's folder, if nnictl's registry does not know it")
    commands.add_parser(
        "profile", add_help=False,
        help="write a model's profile JSON (needs torch: the 'trial' extra); "
        "'profile --help' lists its options")
    commands.add_parser(
        "presearch", add_help=False,
        help="search allocations on a one-shot proxy and store the best few in the profile "
        "(needs torch); 'presearch --help' lists its options")
    return parser


def _command(commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
             summary: str, description: str) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (the command list) and its own ``--help`` text."""
    return commands.add_parser(name, help=summary, description=description)


def _torch_command(command: str, argv: Sequence[str], prog: str) -> int:
    """Run a torch-side command; without torch, say which extra installs it."""
    try:
        if command == "presearch":
            from nni_prune_tuners.trial.presearch import main as command_main
        else:
            from nni_prune_tuners.trial.profile import main as command_main
    except ImportError as error:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        _logger.error("error: %s needs torch: pip install 'nni-prune-tuners[trial]' (%s)",
                      command, error)
        return 1
    return command_main(argv, prog=prog)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status (2: wrong input, 1: the work failed)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["profile"], ["presearch"]):  # its own parser, in the torch-side module
        return _torch_command(argv[0], argv[1:], prog=f"{_parser().prog} {argv[0]}")
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from nni_prune_tuners.export import ExportError

    try:
        if args.command == "register":
            _logger.info("registered: %s", ", ".join(registration.register()))
        elif args.command == "unregister":
            removed = registration.unregister()
            _logger.info("unregistered: %s", ", ".join(removed) or "nothing was registered")
        elif args.command == "check":
            from nni_prune_tuners.config_check import check_config

            checked = check_config(args.config)
            _logger.info("%s is valid: trial code in %s; target branches: %s; %d warm starts%s",
                         args.config, checked.code_directory,
                         ", ".join(checked.branches) or "none", checked.warm_starts,
                         _seed_note(checked.tuner, checked.seed))
        elif args.command == "export":
            from nni_prune_tuners.export import export_best

            result = export_best(args.experiment, args.out, experiment_dir=args.experiment_dir)
            _logger.info("%s", json.dumps(result["config_list"]))
    except ValueError as error:
        _logger.error("error: %s", _one_line(error))
        return 2
    except (registration.RegistrationError, ExportError, OSError) as error:
        _logger.error("error: %s", _one_line(error))
        return 1
    return 0


def _seed_note(tuner: str | None, seed: int | None) -> str:
    """What ``check`` says of PruneTPE's seed: it checks with a probe, not the experiment's tuner."""
    if tuner != "PruneTPE":
        return ""
    if seed is not None:
        return f"; seed {seed}"
    return ("; seed: drawn when the experiment starts (dispatcher.log says 'PruneTPE seed N'; "
            "set classArgs seed to fix it)")


def _one_line(error: Exception) -> str:
    """The message on one line: nnictl's output and YAML errors come with line breaks."""
    return " | ".join(line.strip() for line in str(error).splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
