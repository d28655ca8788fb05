"""A small HTTP client for the admin endpoints (``aggregator admin`` uses it; so can scripts)."""

from __future__ import annotations

from pathlib import Path

import httpx


class ServerError(Exception):
    """The server refused a request; carries its problem body."""

    def __init__(self, status: int, problem: dict) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"HTTP {status} {problem.get('reason', '')}: "
                         f"{problem.get('detail', problem)}")


class Unreachable(Exception):
    """No answer from the server."""


class AdminClient:
    def __init__(self, server: str, token: str, *, timeout: float = 120.0) -> None:
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server, timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: object) -> object:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise Unreachable(f"cannot reach {self.server}: {e}") from None
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"detail": r.text[:500]}
            raise ServerError(r.status_code, body if isinstance(body, dict) else {"detail": body})
        return r.json()

    def upload_public_pack(self, path: str | Path) -> dict:
        with open(path, "rb") as f:
            return self._call("POST", "/v1/admin/public-packs", content=f)

    def upload_validation_set(self, path: str | Path) -> dict:
        with open(path, "rb") as f:
            return self._call("POST", "/v1/admin/validation-sets", content=f)

    def publish_model(self, checkpoint: str | Path, *, public_pack: str | None = None,
                      parent: int | None = None, validation_set: str | None = None) -> dict:
        params = {k: v for k, v in (("public_pack", public_pack), ("parent_version", parent),
                                    ("validation_set", validation_set)) if v is not None}
        with open(checkpoint, "rb") as f:
            return self._call("POST", "/v1/admin/models", content=f, params=params)

    def models(self) -> list[dict]:
        return self._call("GET", "/v1/admin/models")

    def model(self, version: int) -> dict:
        """A version's description (status, validation metrics), not its checkpoint."""
        return self._call("GET", f"/v1/admin/models/{int(version)}",
                          headers={"Accept": "application/json"})

    def download_model(self, version: int, out: str | Path) -> Path:
        """Write model ``version``'s checkpoint to ``out`` (atomically, sha256-checked)."""
        import hashlib

        from fedfr.io import atomic_path

        out = Path(out)
        try:
            with self._http.stream("GET", f"/v1/admin/models/{int(version)}") as r:
                if r.status_code >= 400:
                    r.read()
                    try:
                        body = r.json()
                    except ValueError:
                        body = {"detail": r.text[:500]}
                    raise ServerError(r.status_code, body if isinstance(body, dict)
                                      else {"detail": body})
                etag = r.headers.get("etag", "").strip('"')
                h = hashlib.sha256()
                out.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(out) as tmp, open(tmp, "wb") as f:
                    for chunk in r.iter_bytes(1 << 20):
                        h.update(chunk)
                        f.write(chunk)
                    f.close()
                    if etag and h.hexdigest() != etag:
                        raise ServerError(502, {"reason": "download_corrupt", "detail":
                                                f"model v{version}: sha256 {h.hexdigest()} "
                                                f"!= ETag {etag}"})
        except httpx.TransportError as e:
            raise Unreachable(f"cannot reach {self.server}: {e}") from None
        return out

    def enrollment_token(self, *, label: str = "", max_uses: int = 1,
                         expires_in: float | None = None) -> dict:
        body = {"label": label, "max_uses": max_uses}
        if expires_in is not None:
            body["expires_in"] = expires_in
        return self._call("POST", "/v1/admin/enrollment-tokens", json=body)

    def start_round(self, body: dict) -> dict:
        return self._call("POST", "/v1/admin/rounds", json=body)

    def rounds(self, status: str | None = None) -> list[dict]:
        return self._call("GET", "/v1/admin/rounds", params={"status": status} if status else {})

    def round(self, round_id: int) -> dict:
        return self._call("GET", f"/v1/admin/rounds/{round_id}")

    def close_round(self, round_id: int) -> dict:
        return self._call("POST", f"/v1/admin/rounds/{round_id}/close")

    def abort_round(self, round_id: int) -> dict:
        return self._call("POST", f"/v1/admin/rounds/{round_id}/abort")
