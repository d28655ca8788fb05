"""``device_sdk`` command line (placeholder: the commands arrive with their issue)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedfr import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="device_sdk",
        description="device_sdk of the FedFR platform. Subcommands: see README.md.",
    )
    parser.add_argument("--version", action="version", version=f"device_sdk {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
