"""The HTTP face of the aggregator (FastAPI): ``create_app(settings)`` builds it, nothing runs
at import time. uvicorn's workers call :func:`app_from_env` (settings from ``FEDFR_*``).

REST contract v1 — see docs/ARCHITECTURE.md for the table. Errors are RFC 9457 problem
bodies (``application/problem+json``) with a ``reason``; a client's mistake is always a 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from aggregator import __version__
from aggregator.blobs import BlobTooLarge
from aggregator.problems import Problem, bad_request
from aggregator.service import DeviceIdentity, Service
from aggregator.settings import Settings

log = logging.getLogger("aggregator")
PROBLEM = "application/problem+json"
#: Largest id (model version, round) a request may name: ids are SQL INTEGER columns (32-bit on
#: PostgreSQL), so a larger number is a client's mistake (422), not a database error (500).
MAX_ID = 2**31 - 1
Id = Annotated[int, Path(ge=0, le=MAX_ID)]


# ------------------------------------------------------------------------- request bodies
class RegisterBody(BaseModel):
    """``POST /v1/devices``: the enrollment token, and anything the device says about itself
    (platform, SDK version...; at most a few kB, never an identity)."""

    model_config = ConfigDict(extra="allow")
    enrollment_token: str = Field(min_length=1, max_length=200)


class EnrollmentTokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(default="", max_length=200)
    max_uses: int = Field(default=1, ge=1, le=1_000_000)
    expires_in: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                     description="seconds")


class RoundBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_version: int | None = Field(default=None, ge=0, le=MAX_ID,
                                     description="default: the current version")
    target: int = Field(ge=1, le=1_000_000, description="devices whose updates end the round")
    min_devices: int | None = Field(default=None, ge=1,
                                    description="quorum at the deadline (default: target)")
    over_selection: float = Field(default=1.3, ge=1.0, le=100.0, allow_inf_nan=False)
    deadline_seconds: float = Field(default=3600.0, gt=0, le=30 * 86400, allow_inf_nan=False)
    config: dict[str, Any] = Field(default_factory=dict,
                                   description="training config sent to the devices")
    row_weighting: str = Field(default="uniform", pattern="^(uniform|samples)$")
    repeat: int = Field(default=1, ge=1, le=100_000,
                        description="rounds to run back to back (each from the last result)")
    max_regression: float | None = Field(
        default=None, ge=0, le=1e6, allow_inf_nan=False,
        description="publication policy: refuse the new version when its validation metric is "
                    "worse than the base's by more than this; null: always publish; absent: "
                    "the server's FEDFR_PUBLISH_MAX_REGRESSION")


# ------------------------------------------------------------------------- helpers
def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def problem_response(p: Problem, request: Request | None = None) -> JSONResponse:
    return JSONResponse(p.body(str(request.url.path) if request else None), status_code=p.status,
                        headers=p.headers, media_type=PROBLEM)


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive of a single ``bytes=`` range; ``None`` for a header we do not
    honour (several ranges: the whole body is sent, as RFC 9110 allows)."""
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
    else:  # suffix: the last N bytes
        n = int(m.group(2))
        if n == 0:
            raise Problem(416, "range_not_satisfiable", "empty suffix range",
                          headers={"Content-Range": f"bytes */{size}"})
        start, end = max(0, size - n), size - 1
    if start >= size or start > end:
        raise Problem(416, "range_not_satisfiable",
                      f"range {header!r} is outside the {size}-byte body",
                      headers={"Content-Range": f"bytes */{size}"})
    return start, min(end, size - 1)


def blob_response(service: Service, request: Request, sha: str, size: int,
                  filename: str) -> Response:
    """A blob with a strong ``ETag`` (its sha256), ``304`` on ``If-None-Match``, and a single
    ``Range`` (``206``) for resumable downloads."""
    etag = f'"{sha}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "public, immutable",
               "Content-Disposition": f'attachment; filename="{filename}"'}
    inm = request.headers.get("if-none-match")
    if inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]
                or sha in inm):
        return Response(status_code=304, headers=headers)
    rng = request.headers.get("range")
    if_range = request.headers.get("if-range")
    span = _parse_range(rng, size) if rng and (not if_range or if_range.strip() == etag) else None
    start, end = span if span else (0, size - 1)
    length = end - start + 1 if size else 0
    headers["Content-Length"] = str(length)
    status = 200
    if span:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    service.bump("fedfr_download_bytes_total", length)
    body = service.blobs.iter_range(sha, start, end) if length else iter(())
    return StreamingResponse(body, status_code=status, headers=headers,
                             media_type="application/octet-stream")


async def _limited_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "too_large", f"body of {declared} bytes exceeds {limit}")
    chunks, n = [], 0
    async for c in request.stream():
        n += len(c)
        if n > limit:
            raise Problem(413, "too_large", f"body exceeds {limit} bytes")
        chunks.append(c)
    return b"".join(chunks)


# ------------------------------------------------------------------------- auth dependencies
# (module level: with postponed annotations FastAPI resolves names in the module's globals)
def require_admin(request: Request,
                  authorization: Annotated[str | None, Header()] = None) -> None:
    request.app.state.service.authenticate_admin(_bearer(authorization))


def require_device(request: Request,
                   authorization: Annotated[str | None, Header()] = None) -> DeviceIdentity:
    return request.app.state.service.authenticate_device(_bearer(authorization))


Admin = Depends(require_admin)
Device = Annotated[DeviceIdentity, Depends(require_device)]


# ------------------------------------------------------------------------- the app
def create_app(settings: Settings) -> FastAPI:
    """The aggregator app for ``settings`` (opens the database; migrates it if
    ``settings.auto_migrate``)."""
    if settings.auto_migrate:
        from aggregator.db import migrate

        migrate(settings.url)
    service = Service(settings)
    service.blobs.clean_staging()
    service.collect_garbage()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def sweeper() -> None:
            while True:
                try:
                    await run_in_threadpool(service.sweep)
                except Exception:  # keep sweeping; the next pass retries
                    log.exception("sweep failed")
                await asyncio.sleep(settings.sweep_interval)

        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            service.close()

    app = FastAPI(title="FedFR aggregator", version=__version__, lifespan=lifespan,
                  description="Rounds, model versions and devices of a FedFR federation.")
    app.state.service = service

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}"
                         for e in exc.errors()[:5])
        return problem_response(Problem(422, "invalid_request", errs or "invalid request"),
                                request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem_response(Problem(exc.status_code, reason, str(exc.detail),
                                        headers=dict(exc.headers or {})), request)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(Problem(500, "internal_error", "internal error (logged)"),
                                request)

    # --------------------------------------------------------------- health, metrics
    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        from sqlalchemy import text

        with service.engine.connect() as c:
            c.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics_text(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    # --------------------------------------------------------------- devices
    @app.post("/v1/devices", status_code=201, tags=["devices"])
    async def register(request: Request) -> JSONResponse:
        raw = await _limited_body(request, 16 * 1024)
        try:
            body = RegisterBody.model_validate_json(raw)
        except ValueError as e:
            raise Problem(422, "invalid_request", f"registration body: {e}") from None
        info = body.model_extra or {}
        out = await run_in_threadpool(service.register_device, body.enrollment_token, info)
        return JSONResponse(out, status_code=201)

    @app.post("/v1/checkin", tags=["devices"], responses={204: {"description": "no work"}})
    def checkin(dev: Device) -> Response:
        task = service.checkin(dev)
        service.bump(f'fedfr_checkins_total{{result="{"task" if task else "no_work"}"}}')
        if task is None:
            return Response(status_code=204,
                            headers={"Retry-After": str(settings.checkin_retry_after)})
        return JSONResponse(task)

    @app.get("/v1/models/{version}", tags=["devices"])
    def get_model(version: Id, request: Request, dev: Device) -> Response:
        row = service.model_row(version)
        return blob_response(service, request, row.blob_sha, row.size,
                             f"model-v{version}.safetensors")

    @app.get("/v1/models/{version}/public-pack", tags=["devices"])
    def get_pack(version: Id, request: Request, dev: Device) -> Response:
        row = service.model_row(version)
        if not row.public_pack_sha:
            raise Problem(404, "no_public_pack", f"model version {version} has no public pack")
        return blob_response(service, request, row.public_pack_sha, int(row.public_pack_size),
                             f"public-pack-v{version}.safetensors")

    @app.post("/v1/rounds/{round_id}/updates", status_code=202, tags=["devices"])
    async def upload(round_id: Id, request: Request, dev: Device,
                     background: BackgroundTasks) -> JSONResponse:
        await run_in_threadpool(service.precheck_upload, dev, round_id)
        limit = await run_in_threadpool(service.upload_limit, round_id)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise service.reject(Problem(413, "too_large", f"update of {declared} bytes "
                                         f"exceeds the limit of {limit}"))
        staged = service.blobs.staging()
        try:
            sha, size = await _stage(request, staged, limit)
        except BlobTooLarge:
            staged.unlink(missing_ok=True)
            raise service.reject(Problem(413, "too_large",
                                         f"update exceeds the limit of {limit} bytes")) from None
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        receipt = await run_in_threadpool(service.accept_update, dev, round_id, staged, sha,
                                          size)
        if not receipt.duplicate:
            background.add_task(_maybe_aggregate, service, round_id)
        return JSONResponse(receipt.to_json(), status_code=202)

    # --------------------------------------------------------------- admin
    @app.post("/v1/admin/enrollment-tokens", status_code=201, tags=["admin"],
              dependencies=[Admin])
    def create_enrollment_token(body: EnrollmentTokenBody) -> dict:
        return service.create_enrollment_token(label=body.label, max_uses=body.max_uses,
                                               expires_in=body.expires_in)

    @app.post("/v1/admin/models", status_code=201, tags=["admin"], dependencies=[Admin])
    async def publish_model(request: Request,
                            public_pack: Annotated[str | None, Query(
                                pattern="^[0-9a-f]{64}$",
                                description="sha256 of a pack uploaded to "
                                            "/v1/admin/public-packs")] = None,
                            parent_version: Annotated[int | None, Query(
                                ge=0, le=MAX_ID)] = None,
                            validation_set: Annotated[str | None, Query(
                                pattern="^[0-9a-f]{64}$",
                                description="sha256 of a set uploaded to "
                                            "/v1/admin/validation-sets")] = None
                            ) -> JSONResponse:
        """Publish a checkpoint (the request body: a fedfr safetensors checkpoint); with a
        validation set (given or the parent's) it is evaluated first, the metrics are in the
        answer."""
        staged = service.blobs.staging()
        try:
            await _stage(request, staged, 1 << 34)
            out = await run_in_threadpool(service.publish_model, staged,
                                          public_pack_sha=public_pack,
                                          parent_version=parent_version,
                                          validation_set_sha=validation_set)
        finally:
            staged.unlink(missing_ok=True)
        return JSONResponse(out, status_code=201)

    @app.post("/v1/admin/public-packs", status_code=201, tags=["admin"], dependencies=[Admin])
    async def upload_pack(request: Request) -> JSONResponse:
        """Store a public pack (body: a fedfr public pack) to attach to a model version."""
        from fedfr.errors import DataFormatError
        from fedfr.fl.wire import load_public_pack

        staged = service.blobs.staging()
        try:
            sha, size = await _stage(request, staged, 1 << 36)
            try:
                kind, images, _, _ = await run_in_threadpool(load_public_pack, staged)
            except DataFormatError as e:
                raise bad_request("invalid_public_pack", str(e)) from None
            await run_in_threadpool(service.blobs.put_file, staged, sha)
        finally:
            staged.unlink(missing_ok=True)
        return JSONResponse({"sha256": sha, "size": size, "kind": kind,
                             "images": 0 if images is None else len(images)}, status_code=201)

    @app.post("/v1/admin/validation-sets", status_code=201, tags=["admin"],
              dependencies=[Admin])
    async def upload_validation_set(request: Request) -> JSONResponse:
        """Store a validation set (body: ``fedfr public-pack --validation-out``'s file) to
        attach to a model version; it is never served to devices."""
        staged = service.blobs.staging()
        try:
            sha, _ = await _stage(request, staged, 1 << 36)
            out = await run_in_threadpool(service.store_validation_set, staged, sha)
        finally:
            staged.unlink(missing_ok=True)
        return JSONResponse(out, status_code=201)

    @app.get("/v1/admin/models", tags=["admin"], dependencies=[Admin])
    def list_models() -> list[dict]:
        return service.list_models()

    @app.get("/v1/admin/models/{version}", tags=["admin"], dependencies=[Admin])
    def admin_get_model(version: Id, request: Request) -> Response:
        """A model version's checkpoint, for operators (evaluation, shipping the generic
        model); the same bytes devices download. With ``Accept: application/json``: the
        version's description instead (status, validation metrics, as in the list)."""
        accept = request.headers.get("accept", "")
        if "application/json" in accept and "application/octet-stream" not in accept:
            return JSONResponse(service.model_info(version))
        row = service.model_row(version)
        return blob_response(service, request, row.blob_sha, row.size,
                             f"model-v{version}.safetensors")

    @app.post("/v1/admin/rounds", status_code=201, tags=["admin"], dependencies=[Admin])
    def start_round(body: RoundBody) -> dict:
        kw = body.model_dump()
        if "max_regression" not in body.model_fields_set:
            del kw["max_regression"]  # the server's default
        return service.start_round(**kw)

    @app.get("/v1/admin/rounds", tags=["admin"], dependencies=[Admin])
    def list_rounds(status: str | None = None) -> list[dict]:
        return service.list_rounds(status)

    @app.get("/v1/admin/rounds/{round_id}", tags=["admin"], dependencies=[Admin])
    def get_round(round_id: Id) -> dict:
        return service.get_round(round_id)

    @app.post("/v1/admin/rounds/{round_id}/close", tags=["admin"], dependencies=[Admin])
    def close_round(round_id: Id) -> dict:
        return service.close_round(round_id)

    @app.post("/v1/admin/rounds/{round_id}/abort", tags=["admin"], dependencies=[Admin])
    def abort_round(round_id: Id) -> dict:
        return service.abort_round(round_id)

    return app


async def _stage(request: Request, staged, limit: int) -> tuple[str, int]:
    """Stream the request body into ``staged`` (hashing it); :class:`BlobTooLarge` past
    ``limit``."""
    import hashlib

    h = hashlib.sha256()
    size = 0
    with open(staged, "wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BlobTooLarge(limit)
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest(), size


def _maybe_aggregate(service: Service, round_id: int) -> None:
    if service.round_ready(round_id):
        service.try_aggregate(round_id)


def app_from_env() -> FastAPI:
    """uvicorn's factory (``--factory aggregator.app:app_from_env``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s "
                        "%(message)s")
    return create_app(Settings.from_env())
