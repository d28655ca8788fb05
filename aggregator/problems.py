"""Errors the service answers with: RFC 9457 problem details (``application/problem+json``).

Every client mistake becomes a :class:`Problem` with an HTTP status, a stable machine-readable
``reason`` (what ``/metrics`` counts rejections by) and a human ``detail``.
"""

from __future__ import annotations


class Problem(Exception):
    """A request the service refuses; nothing was changed."""

    def __init__(self, status: int, reason: str, detail: str, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}

    def body(self, instance: str | None = None) -> dict:
        out = {"type": f"urn:fedfr:problem:{self.reason}", "title": self.reason.replace("_", " "),
               "status": self.status, "detail": self.detail, "reason": self.reason}
        if instance:
            out["instance"] = instance
        return out


def bad_request(reason: str, detail: str) -> Problem:
    return Problem(400, reason, detail)


def conflict(reason: str, detail: str) -> Problem:
    return Problem(409, reason, detail)


def not_found(reason: str, detail: str) -> Problem:
    return Problem(404, reason, detail)
