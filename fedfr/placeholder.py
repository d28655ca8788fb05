"""The entry point of a package whose commands have not been built yet (``aggregator``,
``device_sdk``): ``--version`` and ``--help`` work, and it says where the status is."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fedfr import __version__


def placeholder_main(prog: str, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (``--version``/``--help`` only), print the help, return 0."""
    parser = argparse.ArgumentParser(
        prog=prog, description=f"{prog} of the FedFR platform. Subcommands: see README.md."
    )
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0
