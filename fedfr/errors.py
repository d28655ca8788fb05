"""The library's exception hierarchy: every error a user can cause is a ``FedFRError``."""

from __future__ import annotations


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
