"""The library's exception hierarchy: every error a user can cause is a ``FedFRError``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class FedFRError(Exception):
    """Base class of the errors the library raises for bad input or configuration."""


class UnknownNameError(FedFRError, KeyError):
    """A name (backbone, profile, margin) that is not registered; the message lists the choices."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class DataFormatError(FedFRError, ValueError):
    """A file that is unreadable, corrupt or not in the expected format; names the file."""


class CheckpointError(FedFRError, ValueError):
    """A checkpoint that does not match the requested architecture, or is unreadable."""


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """``table[name]``, or an :class:`UnknownNameError` naming ``what`` and the choices."""
    try:
        return table[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown {what} {name!r}; choose from: {', '.join(table)}"
        ) from None
