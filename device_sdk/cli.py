"""``device_sdk`` command line (placeholder: the commands arrive with their issue)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fedfr.placeholder import placeholder_main


def main(argv: Sequence[str] | None = None) -> int:
    return placeholder_main("device_sdk", argv)


if __name__ == "__main__":
    sys.exit(main())
