"""The device's HTTP client to the aggregator (REST contract v1; see ``docs/ARCHITECTURE.md``).

Small for now: :func:`register`. Every request has timeouts; connection errors, timeouts and
5xx answers are retried with exponential backoff (and jitter), 4xx answers are not.

Errors:

- :class:`~device_sdk.errors.ServerError` ``(status, reason, detail)`` — the server refused
  (a 4xx, or a 5xx after the last retry); ``reason`` is the problem body's (RFC 9457);
- :class:`~device_sdk.errors.ServerUnavailable` — no answer after the retries.

Privacy: what the device says about itself at registration is limited to
:data:`ALLOWED_INFO_KEYS` (platform and SDK version), short strings; nothing about its
identities or images is ever sent.
"""

from __future__ import annotations

import logging
import platform
import random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from device_sdk import __version__
from device_sdk.errors import DeviceSDKError, ServerError, ServerUnavailable

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_INFO_KEYS",
    "Retry",
    "device_info",
    "normalize_server_url",
    "register",
]

#: The only keys a device sends about itself, each a string of at most 100 characters.
ALLOWED_INFO_KEYS = frozenset({"platform", "machine", "sdk", "sdk_version", "python"})
SDK_NAME = "fedfr-device-sdk-python"


class Retry:
    """Retry policy: ``attempts`` tries in all; waits ``backoff * 2**i`` (capped at
    ``max_backoff``, +/-25% jitter, or the server's ``Retry-After`` when smaller than the
    cap) between them."""

    def __init__(self, attempts: int = 4, backoff: float = 0.5, max_backoff: float = 8.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.attempts = int(attempts)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.sleep = sleep

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff)
            except ValueError:
                pass
        d = min(self.backoff * 2**attempt, self.max_backoff)
        return d * random.uniform(0.75, 1.25)


def device_info() -> dict[str, str]:
    """What the device says about itself when registering: platform and SDK version only."""
    return {"platform": platform.system().lower() or "unknown",
            "machine": platform.machine().lower() or "unknown",
            "sdk": SDK_NAME, "sdk_version": __version__,
            "python": platform.python_version()}


def normalize_server_url(server: str) -> str:
    """``server`` without a trailing slash; ValueError-like DeviceSDKError unless it is an
    ``http(s)://host[:port][/prefix]`` URL."""
    s = str(server).strip().rstrip("/")
    try:
        parts = urlsplit(s)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises on a bad port
    except ValueError:
        ok = False
    if not ok or parts.query or parts.fragment:
        raise DeviceSDKError(f"invalid server URL {server!r}; expected http(s)://HOST[:PORT]")
    return s


def _check_info(info: Mapping[str, Any]) -> dict[str, str]:
    bad = sorted(set(info) - ALLOWED_INFO_KEYS)
    if bad:
        raise DeviceSDKError(f"registration info may only carry {sorted(ALLOWED_INFO_KEYS)}; "
                             f"refusing to send {bad}")
    out = {}
    for k, v in info.items():
        if not isinstance(v, str) or len(v) > 100:
            raise DeviceSDKError(f"registration info {k!r} must be a string of at most 100 "
                                 f"characters")
        out[k] = v
    return out


def _problem(r: httpx.Response) -> ServerError:
    reason, detail = f"http_{r.status_code}", r.reason_phrase or ""
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        reason = str(body.get("reason") or reason)
        detail = str(body.get("detail") or body.get("title") or detail)
    elif r.text:
        detail = r.text[:300]
    return ServerError(r.status_code, reason, detail)


def request(http: httpx.Client, method: str, url: str, *, retry: Retry | None = None,
            **kw: Any) -> httpx.Response:
    """One request with retries; returns a response with status < 400.

    Raises:
        ServerError: on a 4xx, or a 5xx on the last attempt.
        ServerUnavailable: on transport errors (connect, timeouts...) on the last attempt.
    """
    retry = retry or Retry()
    for attempt in range(retry.attempts):
        last = attempt == retry.attempts - 1
        try:
            r = http.request(method, url, **kw)
        except httpx.TransportError as e:
            if last:
                raise ServerUnavailable(f"cannot reach {url}: "
                                        f"{type(e).__name__}: {e}") from None
            wait = retry.delay(attempt)
            logger.info("%s %s: %s; retrying in %.1fs", method, url, type(e).__name__, wait)
            retry.sleep(wait)
            continue
        if r.status_code < 400:
            return r
        if r.status_code < 500 or last:
            raise _problem(r)
        wait = retry.delay(attempt, r.headers.get("retry-after"))
        logger.info("%s %s: HTTP %d; retrying in %.1fs", method, url, r.status_code, wait)
        retry.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def make_http(server: str, *, timeout: float | httpx.Timeout = 30.0,
              **kw: Any) -> httpx.Client:
    """An ``httpx.Client`` for ``server`` (connect timeout 10 s, the rest ``timeout``)."""
    t = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=10.0)
    return httpx.Client(base_url=normalize_server_url(server), timeout=t,
                        headers={"User-Agent": f"{SDK_NAME}/{__version__}"}, **kw)


def register(server: str, enrollment_token: str, info: Mapping[str, str] | None = None, *,
             retry: Retry | None = None, timeout: float = 30.0,
             http: httpx.Client | None = None) -> tuple[Any, str]:
    """``POST /v1/devices``: register this device with an enrollment token.

    Args:
        server: the aggregator's base URL.
        enrollment_token: from ``aggregator admin enrollment-token``.
        info: what the device says about itself (default :func:`device_info`); only
            :data:`ALLOWED_INFO_KEYS`.
        http: a client to use (tests pass one with event hooks); default a new one.

    Returns:
        ``(device_id, device_token)``.

    Raises:
        ServerError: e.g. ``401 invalid_enrollment_token``.
        ServerUnavailable: the server cannot be reached.
        DeviceSDKError: a bad URL, an empty token, or ``info`` with other keys.
    """
    if not isinstance(enrollment_token, str) or not enrollment_token.strip():
        raise DeviceSDKError("the enrollment token is empty")
    body = {**_check_info(device_info() if info is None else info),
            "enrollment_token": enrollment_token.strip()}
    url = normalize_server_url(server) + "/v1/devices"
    own = http is None
    client = make_http(server, timeout=timeout) if own else http
    try:
        r = request(client, "POST", url, json=body, retry=retry)
    finally:
        if own:
            client.close()
    try:
        out = r.json()
        device_id, token = out["device_id"], out["device_token"]
        if not isinstance(token, str) or not token:
            raise TypeError("device_token is not a string")
    except (ValueError, KeyError, TypeError) as e:
        raise ServerError(r.status_code, "invalid_response",
                          f"the registration answer is not {{device_id, device_token}}: {e}"
                          ) from None
    return device_id, token
