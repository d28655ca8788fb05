"""The device's HTTP client to the aggregator (REST contract v1; see ``docs/ARCHITECTURE.md``).

:func:`register` (with an enrollment token), then :class:`DeviceClient` (with the device
token): check-in, resumable hash-checked downloads, uploads. Every request has timeouts;
connection errors, timeouts and 5xx answers are retried with exponential backoff (and jitter,
or the server's ``Retry-After``), 4xx answers are not. A :class:`DeviceClient` counts the
bytes it puts on the wire (request line, headers and body) and receives.

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
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from device_sdk import __version__
from device_sdk.errors import DeviceSDKError, ServerError, ServerUnavailable

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_INFO_KEYS",
    "DeviceClient",
    "DownloadError",
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
            hooks: Callable[[httpx.Response], None] | None = None,
            **kw: Any) -> httpx.Response:
    """One request with retries; returns a response with status < 400.

    ``hooks`` is called with every response (retried ones included).

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
        if hooks is not None:
            hooks(r)
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
             http: httpx.Client | None = None,
             traffic: dict[str, int] | None = None) -> tuple[Any, str]:
    """``POST /v1/devices``: register this device with an enrollment token.

    Args:
        server: the aggregator's base URL.
        enrollment_token: from ``aggregator admin enrollment-token``.
        info: what the device says about itself (default :func:`device_info`); only
            :data:`ALLOWED_INFO_KEYS`.
        http: a client to use (tests pass one with event hooks); default a new one.
        traffic: a ``{"sent", "received"}`` dict the request's bytes are added to.

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
        def count(resp: httpx.Response) -> None:
            if traffic is not None:
                traffic["sent"] = traffic.get("sent", 0) + _request_bytes(resp.request)
                traffic["received"] = (traffic.get("received", 0) + len(resp.content)
                                       + _response_head_bytes(resp))

        r = request(client, "POST", url, json=body, retry=retry, hooks=count)
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


# ------------------------------------------------------------------------- with a device token
class DownloadError(ServerError):
    """A download whose bytes do not match the announced sha256 or size (after a retry)."""


def _response_head_bytes(r: httpx.Response) -> int:
    """Bytes of a response's headers on the wire (HTTP/1.1, status line not counted)."""
    return sum(len(k) + len(v) + 4 for k, v in r.headers.raw) + 2


def _request_bytes(req: httpx.Request) -> int:
    """Bytes of a request on the wire (HTTP/1.1): request line, headers, body."""
    line = len(req.method) + len(req.url.raw_path) + len(b" HTTP/1.1\r\n") + 1
    head = sum(len(k) + len(v) + 4 for k, v in req.headers.raw) + 2
    body = int(req.headers.get("content-length") or 0)
    return line + head + body


class DeviceClient:
    """The device's side of the REST contract, authenticated with its device token.

    Args:
        server: the aggregator's base URL.
        token: the device token from :func:`register`.
        retry: retry policy of every request.
        http: an ``httpx.Client`` to use (tests pass one with event hooks); it gets this
            client's bearer token on each request.

    Attributes:
        bytes_sent, bytes_received: what went over the wire so far (request line + headers
            + body; response headers + body).
    """

    def __init__(self, server: str, token: str, *, retry: Retry | None = None,
                 timeout: float = 60.0, http: httpx.Client | None = None) -> None:
        self.server = normalize_server_url(server)
        self.retry = retry or Retry()
        self._own = http is None
        self.http = make_http(self.server, timeout=timeout) if http is None else http
        self._auth = {"Authorization": f"Bearer {token}"}
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self) -> None:
        if self._own:
            self.http.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.server + path

    def _count(self, r: httpx.Response) -> None:
        self.bytes_sent += _request_bytes(r.request)
        self.bytes_received += _response_head_bytes(r)

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**kw.pop("headers", {}), **self._auth}
        r = request(self.http, method, self.url(path), retry=self.retry, headers=headers,
                    hooks=self._count, **kw)
        self.bytes_received += len(r.content)
        return r

    # -- check-in
    def checkin(self) -> tuple[dict | None, float | None]:
        """``POST /v1/checkin``: ``(task, None)`` when assigned, else ``(None, retry_after)``
        with the server's ``Retry-After`` in seconds (``None`` when it sent none)."""
        r = self._send("POST", "/v1/checkin")
        if r.status_code == 204:
            ra = r.headers.get("retry-after")
            try:
                return None, max(float(ra), 0.0) if ra else None
            except ValueError:
                return None, None
        try:
            task = r.json()
            if not isinstance(task, dict):
                raise TypeError(f"a JSON {type(task).__name__}, not an object")
            missing = [k for k in ("round_id", "model_version", "model", "upload_url")
                       if k not in task]
            missing += [f"model.{k}" for k in ("url", "sha256", "size")
                        if k not in task.get("model", {})]
            if missing:
                raise KeyError(", ".join(missing))
        except (ValueError, KeyError, TypeError) as e:
            raise ServerError(r.status_code, "invalid_response",
                              f"the check-in answer is not a task: {e!r}") from None
        return task, None

    # -- downloads
    def download(self, path: str, dest: Path, *, sha256: str, size: int,
                 progress: Callable[[int, int], None] | None = None) -> Path:
        """Download ``path`` into ``dest`` (atomically), resuming from ``dest + '.part'``.

        A partial file from an interrupted download is continued with ``Range`` (``If-Range``
        = the expected sha256, so a changed blob restarts from 0). The result must have
        ``size`` bytes and the sha256 ``sha256``; a mismatch discards it and downloads once
        more from scratch, then raises :class:`DownloadError` (nothing is kept).
        """
        import os

        from fedfr.io import sha256_file

        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        for attempt in range(2):
            have = part.stat().st_size if part.exists() else 0
            if have > size:
                part.unlink()
                have = 0
            if have < size:
                self._fetch_into(path, part, have, sha256, size, progress)
            got_size, got_sha = part.stat().st_size, sha256_file(part)
            if got_size == size and got_sha == sha256:
                with open(part, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(part, dest)
                return dest
            part.unlink(missing_ok=True)
            logger.warning("%s: got %d bytes with sha256 %s, expected %d bytes with %s%s",
                           path, got_size, got_sha[:12], size, sha256[:12],
                           "; downloading again" if attempt == 0 else "")
        raise DownloadError(200, "download_corrupt",
                            f"{path}: the downloaded bytes do not match the announced sha256 "
                            f"{sha256} ({size} bytes), twice; nothing was kept")

    def _fetch_into(self, path: str, part: Path, have: int, sha256: str, size: int,
                    progress: Callable[[int, int], None] | None) -> None:
        for attempt in range(self.retry.attempts):
            headers = dict(self._auth)
            if have:
                headers.update({"Range": f"bytes={have}-", "If-Range": f'"{sha256}"'})
            try:
                with self.http.stream("GET", self.url(path), headers=headers) as r:
                    self._count(r)
                    if r.status_code >= 400:
                        r.read()
                        if r.status_code < 500 or attempt == self.retry.attempts - 1:
                            raise _problem(r)
                        self.retry.sleep(self.retry.delay(attempt, r.headers.get("retry-after")))
                        continue
                    mode = "ab" if r.status_code == 206 else "wb"
                    have = have if r.status_code == 206 else 0
                    with open(part, mode) as f:
                        for chunk in r.iter_bytes(1 << 20):
                            f.write(chunk)
                            have += len(chunk)
                            self.bytes_received += len(chunk)
                            if progress is not None:
                                progress(have, size)
                    return
            except httpx.TransportError as e:
                # what arrived is kept in the .part file: the next attempt resumes after it
                have = part.stat().st_size if part.exists() else 0
                if attempt == self.retry.attempts - 1:
                    raise ServerUnavailable(f"downloading {path}: {type(e).__name__}: {e}"
                                            ) from None
                wait = self.retry.delay(attempt)
                logger.info("GET %s: %s after %d bytes; resuming in %.1fs", path,
                            type(e).__name__, have, wait)
                self.retry.sleep(wait)

    # -- uploads
    def upload(self, path: str, body: bytes) -> dict:
        """``POST`` an encoded update; returns the receipt (``duplicate`` True on a retry of
        bytes the server already has)."""
        r = self._send("POST", path, content=body,
                       headers={"Content-Type": "application/octet-stream"})
        try:
            return dict(r.json())
        except (ValueError, TypeError):
            raise ServerError(r.status_code, "invalid_response",
                              "the upload answer is not a JSON receipt") from None
