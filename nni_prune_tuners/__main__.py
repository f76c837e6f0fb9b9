"""Command line: ``python -m nni_prune_tuners {register,unregister,check}``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from nni_prune_tuners import registration

_logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nni_prune_tuners", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("register", help="register PruneTPE and PruneEarlyStop with nnictl")
    commands.add_parser("unregister", help="remove them from nnictl")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "register":
            names = registration.register()
            _logger.info("registered: %s", ", ".join(names))
        elif args.command == "unregister":
            names = registration.unregister()
            _logger.info("unregistered: %s", ", ".join(names) or "nothing was registered")
    except (registration.RegistrationError, ValueError) as error:
        _logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
