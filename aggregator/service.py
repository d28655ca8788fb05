"""The aggregator's logic, independent of HTTP: devices, model versions, rounds, updates.

Every state change is one database transaction, and every invariant that several workers
could race on is enforced by the database (see :mod:`aggregator.db`), not by process memory:

- **assignment**: ``UPDATE rounds SET num_assigned = num_assigned + 1 WHERE ... AND
  num_assigned < capacity`` and a unique (round, device) assignment;
- **upload**: the blob is written (fsynced, renamed) first, then one transaction flips the
  device's assignment ``assigned -> received`` and bumps ``num_received`` under ``< target``;
  only then is the 202 sent. A retry of the same bytes gets the same receipt;
- **aggregation**: a conditional UPDATE claims the round (``open -> aggregating`` with a
  random claim and a lease); the updates are folded in one at a time with
  :class:`fedfr.fl.RoundAggregate` (O(model) memory); one transaction inserts the new model
  version and marks the round ``completed`` *only if the claim is still ours*. A process killed
  while aggregating leaves the round ``aggregating``; once the lease runs out any worker's
  sweep takes it over. No partial version can be published.
- **evaluation and policy**: when the base version has a validation set, the aggregated model
  is evaluated on it (torch, imported only then) under the same claim, renewing the lease
  between batches, *before* the publishing transaction; that one transaction then either
  publishes the version (current) or stores it ``rejected`` and ends the round ``rejected``
  (publication policy: the metric fell more than the round's ``max_regression`` below the
  base's). A crash during evaluation is a crash during aggregation: nothing was written, the
  lease expires, another worker redoes both.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator import db
from aggregator.blobs import FileBlobStore
from aggregator.problems import Problem, bad_request, conflict, not_found
from aggregator.settings import MetricSpec, Settings, check_max_regression, parse_metric
from aggregator.validation import check_against_spec, check_norm, shared_spec
from fedfr.errors import DataFormatError
from fedfr.fl import GlobalModel, RoundAggregate, backbone_arrays
from fedfr.fl.wire import ValidationSet, decode_update, load_public_pack, load_validation_set

log = logging.getLogger("aggregator")

DEVICE_TOKEN_PREFIX = "fdt_"
ENROLLMENT_TOKEN_PREFIX = "fet_"
ADMIN_TOKEN_PREFIX = "fat_"
ROUND_STATES = ("open", "aggregating", "completed", "rejected", "failed", "aborted")
#: ``start_round(max_regression=SERVER_DEFAULT)``: the server's ``publish_max_regression``.
SERVER_DEFAULT = ...
#: Largest training config a round may carry (it goes to every device in every check-in).
MAX_CONFIG_BYTES = 64 * 1024
#: Largest sample count an update may claim (``assignments.num_samples`` is a 32-bit INTEGER on
#: PostgreSQL; a larger claim is the device's mistake, not a database error).
MAX_NUM_SAMPLES = 2**31 - 1


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def now() -> float:
    return time.time()


@dataclass(frozen=True)
class DeviceIdentity:
    id: int


@dataclass(frozen=True)
class Receipt:
    round_id: int
    device_id: int
    sha256: str
    size: int
    num_samples: int
    received_at: float
    duplicate: bool = False

    def to_json(self) -> dict:
        return {"status": "accepted", "round_id": self.round_id, "device_id": self.device_id,
                "sha256": self.sha256, "size": self.size, "num_samples": self.num_samples,
                "received_at": self.received_at, "duplicate": self.duplicate}


class Service:
    """One aggregator: a database, a blob store and the settings (thread-safe; one per process
    or worker, any number of them on one database)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.blobs = FileBlobStore(settings.blob_dir)
        self.engine = db.make_engine(settings.url)
        self.sessions = db.make_sessionmaker(self.engine)
        self._models: OrderedDict[int, GlobalModel] = OrderedDict()
        self._models_lock = threading.Lock()
        self._admin_hash = hash_token(load_admin_token(settings))

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- counters (/metrics)
    def bump(self, name: str, amount: float = 1.0) -> None:
        """Add to a shared counter (its own small transaction; never fails a request)."""
        try:
            with self.sessions.begin() as s:
                n = s.execute(update(db.Counter).where(db.Counter.name == name)
                              .values(value=db.Counter.value + amount)).rowcount
                if not n:
                    s.add(db.Counter(name=name, value=amount))
        except IntegrityError:  # another worker inserted it first
            with self.sessions.begin() as s:
                s.execute(update(db.Counter).where(db.Counter.name == name)
                          .values(value=db.Counter.value + amount))
        except Exception:  # metrics must not take a request down
            log.exception("counter %s not updated", name)

    def reject(self, problem: Problem) -> Problem:
        self.bump(f'fedfr_updates_rejected_total{{reason="{problem.reason}"}}')
        return problem

    # ---------------------------------------------------------------- auth
    def authenticate_admin(self, token: str | None) -> None:
        if not token:
            raise Problem(401, "unauthorized", "missing bearer token",
                          headers={"WWW-Authenticate": "Bearer"})
        if hmac.compare_digest(hash_token(token), self._admin_hash):
            return
        with self.sessions() as s:
            is_device = s.scalar(select(db.Device.id).where(
                db.Device.token_hash == hash_token(token))) is not None
        if is_device:
            raise Problem(403, "forbidden", "device tokens cannot use admin endpoints")
        raise Problem(401, "unauthorized", "invalid admin token",
                      headers={"WWW-Authenticate": "Bearer"})

    def authenticate_device(self, token: str | None) -> DeviceIdentity:
        if not token:
            raise Problem(401, "unauthorized", "missing bearer token",
                          headers={"WWW-Authenticate": "Bearer"})
        with self.sessions.begin() as s:
            dev = s.scalar(select(db.Device).where(db.Device.token_hash == hash_token(token)))
            if dev is None:
                raise Problem(401, "unauthorized", "invalid device token",
                              headers={"WWW-Authenticate": "Bearer"})
            t = now()
            if dev.last_seen is None or t - dev.last_seen > 60:  # rate-limit the write
                dev.last_seen = t
            return DeviceIdentity(dev.id)

    # ---------------------------------------------------------------- enrollment, devices
    def create_enrollment_token(self, *, label: str = "", max_uses: int = 1,
                                expires_in: float | None = None) -> dict:
        if max_uses < 1:
            raise bad_request("invalid_request", "max_uses must be >= 1")
        if expires_in is not None and not expires_in > 0:
            raise bad_request("invalid_request", "expires_in must be > 0 seconds")
        token = new_token(ENROLLMENT_TOKEN_PREFIX)
        t = now()
        with self.sessions.begin() as s:
            row = db.EnrollmentToken(token_hash=hash_token(token), label=label,
                                     max_uses=max_uses, uses=0, created_at=t,
                                     expires_at=None if expires_in is None else t + expires_in)
            s.add(row)
            s.flush()
            return {"id": row.id, "enrollment_token": token, "label": label,
                    "max_uses": max_uses, "expires_at": row.expires_at}

    def register_device(self, enrollment_token: str, info: dict) -> dict:
        token = new_token(DEVICE_TOKEN_PREFIX)
        with self.sessions.begin() as s:
            et = s.scalar(select(db.EnrollmentToken).where(
                db.EnrollmentToken.token_hash == hash_token(enrollment_token)))
            if et is None:
                raise Problem(401, "invalid_enrollment_token", "unknown enrollment token")
            if et.expires_at is not None and et.expires_at < now():
                raise Problem(401, "invalid_enrollment_token", "the enrollment token expired")
            used = s.execute(update(db.EnrollmentToken)
                             .where(db.EnrollmentToken.id == et.id,
                                    db.EnrollmentToken.uses < db.EnrollmentToken.max_uses)
                             .values(uses=db.EnrollmentToken.uses + 1)).rowcount
            if not used:
                raise Problem(401, "invalid_enrollment_token",
                              "the enrollment token has been used up")
            dev = db.Device(token_hash=hash_token(token), enrollment_token_id=et.id,
                            info=info, created_at=now())
            s.add(dev)
            s.flush()
            device_id = dev.id
        self.bump("fedfr_devices_registered_total")
        return {"device_id": device_id, "device_token": token}

    # ---------------------------------------------------------------- model versions
    def publish_model(self, checkpoint: Path, *, public_pack: Path | None = None,
                      public_pack_sha: str | None = None, parent_version: int | None = None,
                      description: dict | None = None, validation_set: Path | None = None,
                      validation_set_sha: str | None = None) -> dict:
        """Publish a checkpoint (``fedfr pretrain``'s format) as a new model version.

        The public pack (a :func:`fedfr.fl.wire.save_public_pack` file) is a path, or the sha256
        of one already in the blob store (``POST /v1/admin/public-packs``); without either the
        parent's pack, if any, is inherited. The validation set (a
        :func:`fedfr.fl.wire.save_validation_set` file; ``POST /v1/admin/validation-sets``) is
        given and inherited the same way; with one, the version is evaluated on it before it
        is published.
        """
        try:
            model = GlobalModel.load(checkpoint)
        except ValueError as e:  # CheckpointError, DataFormatError
            raise bad_request("invalid_checkpoint", str(e)) from None
        if not model.backbone:
            raise bad_request("invalid_checkpoint", "the checkpoint holds no backbone tensor")
        parent = None
        if parent_version is not None:
            with self.sessions() as s:  # versions are immutable: read once, outside the insert
                parent = s.get(db.ModelVersion, parent_version)
            if parent is None:
                raise not_found("unknown_model_version", f"no model version {parent_version}")
        val_sha = val_size = None
        if validation_set_sha is not None:
            validation_set = self._uploaded(validation_set_sha, "validation set",
                                            "validation-sets")
        val = None
        if validation_set is not None:
            val = self._read_validation_set(validation_set)
        elif parent is not None and parent.validation_sha:
            val_sha, val_size = parent.validation_sha, parent.validation_size
            val = self._read_validation_set(self.blobs.path(val_sha))
        metrics = None
        if val is not None:
            try:
                metrics = self.evaluate(model, val)
            except (ValueError, RuntimeError) as e:  # unusable embeddings, images that do not fit
                raise bad_request("evaluation_failed", f"the model could not be evaluated on "
                                  f"the validation set: {e}") from None
        if validation_set is not None:
            val_sha, val_size = self._keep_blob(validation_set, validation_set_sha)
        pack_sha = pack_size = None
        if public_pack_sha is not None:
            public_pack = self._uploaded(public_pack_sha, "public pack", "public-packs")
        if public_pack is not None:
            try:
                kind, _, labels, _ = load_public_pack(public_pack)
            except DataFormatError as e:
                raise bad_request("invalid_public_pack", str(e)) from None
            if kind == "images" and model.public_embeddings is None:
                raise bad_request("invalid_public_pack", "an images public pack needs a model "
                                  "with public class embeddings")
            if labels is not None and labels.size and (
                    int(labels.max()) >= model.public_embeddings.shape[0]):
                raise bad_request("invalid_public_pack", f"public pack labels reach row "
                                  f"{int(labels.max())} but the model has "
                                  f"{model.public_embeddings.shape[0]} public classes")
            pack_sha, pack_size = self._keep_blob(public_pack, public_pack_sha)
        if public_pack is None and parent is not None:
            pack_sha, pack_size = parent.public_pack_sha, parent.public_pack_size
        with self.sessions.begin() as s:
            row = self._insert_version(s, model, parent_version=parent_version, round_id=None,
                                       pack=(pack_sha, pack_size),
                                       description=description or {},
                                       validation=(val_sha, val_size), metrics=metrics)
            out = version_json(row)
        self.bump("fedfr_model_versions_published_total")
        return out

    def _uploaded(self, sha: str, what: str, endpoint: str) -> Path:
        """The path of an uploaded blob (``what``: "public pack", "validation set"), or a 400
        ``unknown_<what>`` naming the endpoint to POST it to."""
        if not self.blobs.exists(sha):
            raise bad_request(f"unknown_{what.replace(' ', '_')}", f"no uploaded {what} {sha}: "
                              f"POST it to /v1/admin/{endpoint}")
        return self.blobs.path(sha)

    def _keep_blob(self, path: Path, sha: str | None) -> tuple[str, int]:
        """``(sha256, size)`` of a file in the blob store: the stored blob ``sha`` as is, else
        a copy of ``path`` put into the store."""
        if sha is not None:
            return sha, self.blobs.size(sha)
        import shutil

        tmp = self.blobs.staging()
        shutil.copyfile(path, tmp)
        return self.blobs.put_file(tmp)

    @staticmethod
    def _read_validation_set(path: Path) -> ValidationSet:
        try:
            return load_validation_set(path)
        except DataFormatError as e:
            raise bad_request("invalid_validation_set", str(e)) from None

    def evaluate(self, model: GlobalModel, val: ValidationSet,
                 progress: Callable[[], None] | None = None) -> dict:
        """:func:`fedfr.evaluation.evaluate_model_on_validation` of ``model`` (the one place
        the aggregator runs torch; imported here, never on a request path of devices)."""
        from fedfr.evaluation import evaluate_model_on_validation

        rep = evaluate_model_on_validation(model, val.images, val.labels,
                                           device=self.settings.evaluation_device,
                                           batch_size=self.settings.evaluation_batch_size,
                                           progress=progress)
        return _finite(rep)

    def _insert_version(self, s: Session, model: GlobalModel, *, parent_version: int | None,
                        round_id: int | None, pack: tuple[str | None, int | None],
                        description: dict,
                        validation: tuple[str | None, int | None] = (None, None),
                        metrics: dict | None = None, status: str = "published"
                        ) -> db.ModelVersion:
        """Insert a version row, write its blob (stamped with the version number) and point the
        row at it — all inside the caller's transaction: no row without its blob."""
        row = db.ModelVersion(parent_version=parent_version, round_id=round_id, blob_sha="",
                              size=0, public_pack_sha=pack[0], public_pack_size=pack[1],
                              arch=model.arch, embedding_size=int(model.embedding_size),
                              shared_spec=shared_spec(model), description=description,
                              created_at=now(), status=status, validation_sha=validation[0],
                              validation_size=validation[1], validation=metrics)
        s.add(row)
        s.flush()
        from fedfr.evaluation import THRESHOLDS_KEY, model_thresholds

        meta = dict(model.metadata)
        if round_id is not None:  # the base version's thresholds are not this model's
            meta.pop(THRESHOLDS_KEY, None)
        if metrics and metrics.get("threshold_at_far"):  # calibrated on the validation set
            meta[THRESHOLDS_KEY] = model_thresholds(
                metrics, f"server validation set {validation[0]} ({metrics['num_images']} "
                f"images of {metrics['num_identities']} identities)")
        stamped = model.with_(version=str(row.version), metadata={
            **meta, "parent_version": parent_version, "round_id": round_id})
        tmp = self.blobs.staging()
        try:
            stamped.save(tmp)
            row.blob_sha, row.size = self.blobs.put_file(tmp)
        finally:
            tmp.unlink(missing_ok=True)
        return row

    def current_version(self, s: Session) -> db.ModelVersion | None:
        """The newest published version (a rejected one is never current)."""
        return s.scalar(select(db.ModelVersion).where(db.ModelVersion.status == "published")
                        .order_by(db.ModelVersion.version.desc()).limit(1))

    def list_models(self) -> list[dict]:
        with self.sessions() as s:
            rows = s.scalars(select(db.ModelVersion).order_by(db.ModelVersion.version)).all()
            cur = self.current_version(s)
            cur = cur.version if cur else None
            return [{**version_json(r), "current": r.version == cur} for r in rows]

    def model_info(self, version: int) -> dict:
        """A version's JSON (as in the list), metrics included."""
        with self.sessions() as s:
            row = s.get(db.ModelVersion, version)
            if row is None:
                raise not_found("unknown_model_version", f"no model version {version}")
            cur = self.current_version(s)
            return {**version_json(row), "current": cur is not None and cur.version == version}

    def store_validation_set(self, staged: Path, sha: str) -> dict:
        """Check an uploaded validation set and keep it (``POST /v1/admin/validation-sets``)."""
        val = self._read_validation_set(staged)
        size = self.blobs.put_file(staged, sha)[1]
        return {"sha256": sha, "size": size, "images": len(val.images),
                "identities": val.num_identities,
                "image_size": [int(val.images.shape[1]), int(val.images.shape[2])]}

    def model_row(self, version: int) -> db.ModelVersion:
        with self.sessions() as s:
            row = s.get(db.ModelVersion, version)
        if row is None:
            raise not_found("unknown_model_version", f"no model version {version}")
        return row

    def load_model(self, version: int) -> GlobalModel:
        """A model version's arrays (cached: the last few versions stay in memory)."""
        with self._models_lock:
            if version in self._models:
                self._models.move_to_end(version)
                return self._models[version]
        row = self.model_row(version)
        model = GlobalModel.load(self.blobs.path(row.blob_sha))
        with self._models_lock:
            self._models[version] = model
            while len(self._models) > 2:
                self._models.popitem(last=False)
        return model

    # ---------------------------------------------------------------- rounds
    def start_round(self, *, base_version: int | None, target: int, min_devices: int | None,
                    over_selection: float, deadline_seconds: float, config: dict,
                    row_weighting: str = "uniform", repeat: int = 1,
                    max_regression: float | EllipsisType | None = SERVER_DEFAULT) -> dict:
        """Start a round. ``max_regression``: the publication policy's margin for this round
        (and the rounds ``repeat`` starts after it); ``None``: always publish; default: the
        server's ``publish_max_regression``."""
        if max_regression is SERVER_DEFAULT:
            max_regression = self.settings.publish_max_regression
        if max_regression is not None:
            try:
                max_regression = check_max_regression(max_regression)
            except (TypeError, ValueError) as e:
                raise bad_request("invalid_round", str(e)) from None
        if target < 1:
            raise bad_request("invalid_round", "target must be >= 1 device")
        min_devices = target if min_devices is None else min_devices
        if not 1 <= min_devices <= target:
            raise bad_request("invalid_round", f"min_devices must be in 1..target ({target}), "
                              f"got {min_devices}")
        if not (math.isfinite(over_selection) and over_selection >= 1.0):
            raise bad_request("invalid_round", "over_selection must be >= 1.0 "
                              "(1.3 assigns 30% more devices than the target)")
        if not (math.isfinite(deadline_seconds) and deadline_seconds > 0):
            raise bad_request("invalid_round", "deadline_seconds must be > 0")
        if row_weighting not in ("uniform", "samples"):
            raise bad_request("invalid_round", "row_weighting must be 'uniform' or 'samples'")
        if repeat < 1:
            raise bad_request("invalid_round", "repeat must be >= 1")
        if len(json.dumps(config)) > MAX_CONFIG_BYTES:
            raise bad_request("invalid_round", f"config larger than {MAX_CONFIG_BYTES} bytes")
        with self.sessions.begin() as s:
            if base_version is None:
                cur = self.current_version(s)
                if cur is None:
                    raise conflict("no_model", "no model version is published yet: publish one "
                                   "(POST /v1/admin/models) before starting a round")
                base_version = cur.version
            elif s.get(db.ModelVersion, base_version) is None:
                raise not_found("unknown_model_version", f"no model version {base_version}")
            base = s.get(db.ModelVersion, base_version)
            if base.status != "published":
                raise conflict("rejected_model_version", f"model version {base_version} was "
                               f"rejected by the publication policy: it cannot be a round's base")
            spec = parse_metric(self.settings.publish_metric)
            if (max_regression is not None and base.validation
                    and spec.value(base.validation) is None):
                raise bad_request("invalid_round", f"the publication metric {spec.name} is not "
                                  f"resolvable on version {base_version}'s validation set "
                                  f"({base.validation.get('num_impostor')} impostor pairs): "
                                  f"use a larger set or another FEDFR_PUBLISH_METRIC")
            busy = s.scalar(select(db.Round.id).where(
                db.Round.status.in_(("open", "aggregating"))).limit(1))
            if busy is not None:
                raise conflict("round_in_progress", f"round {busy} is still in progress: close "
                               f"or abort it first")
            row = self._new_round(s, base_version, target, min_devices, over_selection,
                                  deadline_seconds, config, row_weighting, repeat,
                                  max_regression)
            out = round_json(row)
        self.bump("fedfr_rounds_started_total")
        return out

    @staticmethod
    def _new_round(s: Session, base_version: int, target: int, min_devices: int,
                   over_selection: float, deadline_seconds: float, config: dict,
                   row_weighting: str, repeat: int, max_regression: float | None) -> db.Round:
        t = now()
        row = db.Round(base_version=base_version, status="open", target=target,
                       min_devices=min_devices, over_selection=over_selection,
                       capacity=max(target, math.ceil(target * over_selection - 1e-9)),
                       deadline_at=t + deadline_seconds, config=dict(config),
                       row_weighting=row_weighting, repeat=repeat, num_assigned=0,
                       num_received=0, stats={"deadline_seconds": deadline_seconds},
                       created_at=t, max_regression=max_regression)
        s.add(row)
        s.flush()
        return row

    def list_rounds(self, status: str | None = None) -> list[dict]:
        with self.sessions() as s:
            q = select(db.Round).order_by(db.Round.id)
            if status:
                if status not in ROUND_STATES:
                    raise bad_request("invalid_request", f"status must be one of {ROUND_STATES}")
                q = q.where(db.Round.status == status)
            return [round_json(r) for r in s.scalars(q).all()]

    def get_round(self, round_id: int) -> dict:
        with self.sessions() as s:
            r = s.get(db.Round, round_id)
            if r is None:
                raise not_found("unknown_round", f"no round {round_id}")
            return round_json(r)

    def abort_round(self, round_id: int) -> dict:
        with self.sessions.begin() as s:
            n = s.execute(update(db.Round).where(db.Round.id == round_id,
                                                 db.Round.status == "open")
                          .values(status="aborted", closed_at=now(),
                                  reason="aborted by an operator")).rowcount
            if not n:
                r = s.get(db.Round, round_id)
                if r is None:
                    raise not_found("unknown_round", f"no round {round_id}")
                raise conflict("round_not_open", f"round {round_id} is {r.status}, not open")
        self.bump('fedfr_rounds_finished_total{status="aborted"}')
        return self.get_round(round_id)

    def close_round(self, round_id: int) -> dict:
        """End a round now: aggregate what arrived if at least the minimum did, else fail."""
        with self.sessions() as s:
            r = s.get(db.Round, round_id)
            if r is None:
                raise not_found("unknown_round", f"no round {round_id}")
            if r.status != "open":
                raise conflict("round_not_open", f"round {round_id} is {r.status}, not open")
        self.try_aggregate(round_id, force=True)
        return self.get_round(round_id)

    # ---------------------------------------------------------------- device work
    def checkin(self, device: DeviceIdentity) -> dict | None:
        """The device's task in the open round (assigning it if there is room), or ``None``."""
        self.sweep()
        for _ in range(3):  # retried only when the same device raced itself
            try:
                return self._checkin(device)
            except IntegrityError:  # the unique (round, device) assignment: one wins
                continue
        raise Problem(409, "conflict", "concurrent check-ins of one device; retry")

    def _checkin(self, device: DeviceIdentity) -> dict | None:
        with self.sessions.begin() as s:
            r = s.scalar(select(db.Round).where(db.Round.status == "open")
                         .order_by(db.Round.id).limit(1))
            if r is None or r.deadline_at <= now():
                return None
            a = s.scalar(select(db.Assignment).where(db.Assignment.round_id == r.id,
                                                     db.Assignment.device_id == device.id))
            if a is not None:
                return self._task(s, r) if a.status == "assigned" else None
            got = s.execute(update(db.Round).where(db.Round.id == r.id,
                                                   db.Round.status == "open",
                                                   db.Round.num_assigned < db.Round.capacity)
                            .values(num_assigned=db.Round.num_assigned + 1)).rowcount
            if not got:
                # A concurrent check-in of this same device may have taken the last place
                # (PostgreSQL re-evaluates the UPDATE once that one commits): re-read, so an
                # assigned device is always given its task, never a 204.
                a = s.scalar(select(db.Assignment).where(db.Assignment.round_id == r.id,
                                                         db.Assignment.device_id == device.id))
                return self._task(s, r) if a is not None and a.status == "assigned" else None
            s.add(db.Assignment(round_id=r.id, device_id=device.id, status="assigned",
                                assigned_at=now()))
            s.flush()  # IntegrityError here rolls the whole transaction back
            task = self._task(s, r)
        self.bump("fedfr_assignments_total")
        return task

    def _task(self, s: Session, r: db.Round) -> dict:
        mv = s.get(db.ModelVersion, r.base_version)
        pack = None
        if mv.public_pack_sha:
            pack = {"url": f"/v1/models/{mv.version}/public-pack", "sha256": mv.public_pack_sha,
                    "size": mv.public_pack_size}
        return {"round_id": r.id, "model_version": mv.version, "deadline_at": r.deadline_at,
                "config": r.config,
                "model": {"url": f"/v1/models/{mv.version}", "sha256": mv.blob_sha,
                          "size": mv.size, "arch": mv.arch,
                          "embedding_size": mv.embedding_size},
                "public_pack": pack,
                "upload_url": f"/v1/rounds/{r.id}/updates"}

    def upload_limit(self, round_id: int) -> int:
        if self.settings.max_upload_bytes:
            return self.settings.max_upload_bytes
        with self.sessions() as s:
            r = s.get(db.Round, round_id)
            if r is None:
                return 1 << 20
            mv = s.get(db.ModelVersion, r.base_version)
            return 2 * int(mv.size) + (1 << 20)

    def precheck_upload(self, device: DeviceIdentity, round_id: int) -> None:
        """Refuse an upload before reading its body when the answer cannot be yes."""
        # The session is closed before counting the refusal: on SQLite every transaction takes
        # the write lock (BEGIN IMMEDIATE), so bumping a counter inside it would wait for itself.
        with self.sessions() as s:
            r = s.get(db.Round, round_id)
            a = None if r is None else s.scalar(
                select(db.Assignment).where(db.Assignment.round_id == round_id,
                                            db.Assignment.device_id == device.id))
        if r is None:
            raise self.reject(not_found("unknown_round", f"no round {round_id}"))
        if a is None:
            raise self.reject(Problem(403, "not_assigned", f"device {device.id} is not "
                                      f"assigned to round {round_id}"))
        if a.status == "assigned" and r.status != "open":
            raise self.reject(conflict("round_closed", f"round {round_id} is {r.status}: "
                                       f"the update is too late"))

    def accept_update(self, device: DeviceIdentity, round_id: int, staged: Path,
                      sha256: str, size: int) -> Receipt:
        """Validate a staged upload and accept it (see the module doc); the staged file is
        consumed. Raises :class:`Problem` (counted by reason) when refused."""
        try:
            return self._accept(device, round_id, staged, sha256, size)
        except Problem as p:
            if p.reason != "duplicate":
                self.reject(p)
            raise
        finally:
            staged.unlink(missing_ok=True)

    def _accept(self, device: DeviceIdentity, round_id: int, staged: Path, sha256: str,
                size: int) -> Receipt:
        with self.sessions() as s:
            r = s.get(db.Round, round_id)
            if r is None:
                raise not_found("unknown_round", f"no round {round_id}")
            a = s.scalar(select(db.Assignment).where(db.Assignment.round_id == round_id,
                                                     db.Assignment.device_id == device.id))
            if a is None:
                raise Problem(403, "not_assigned",
                              f"device {device.id} is not assigned to round {round_id}")
            mv = s.get(db.ModelVersion, r.base_version)
        if a.status == "received":  # a retry: same bytes -> same receipt; else a conflict
            if a.update_sha == sha256:
                return Receipt(round_id, device.id, sha256, int(a.update_size),
                               int(a.num_samples), float(a.received_at), duplicate=True)
            raise conflict("already_received", f"device {device.id} already sent a different "
                           f"update for round {round_id} (sha256 {a.update_sha})")
        if r.status != "open":
            raise conflict("round_closed", f"round {round_id} is {r.status}: the update is "
                           f"too late")
        try:
            env = decode_update(staged)
        except DataFormatError as e:
            raise bad_request("invalid_format", str(e)) from None
        if env.update.num_samples > MAX_NUM_SAMPLES:
            raise bad_request("invalid_format", f"update metadata 'num_samples' must be <= "
                              f"{MAX_NUM_SAMPLES}, got {env.update.num_samples}")
        if env.round_id != round_id:
            raise bad_request("wrong_round", f"the update says round {env.round_id}, it was "
                              f"sent to round {round_id}")
        if env.base_version != r.base_version:
            raise bad_request("wrong_base_version", f"the update was trained from model "
                              f"version {env.base_version}; round {round_id} trains version "
                              f"{r.base_version}")
        check_against_spec(env, mv.shared_spec)
        check_norm(env, self.load_model(r.base_version), self.settings.max_update_norm_ratio)
        num_samples = int(env.update.num_samples)
        del env
        self.blobs.put_file(staged, sha256)  # durable before the row that points at it
        t = now()
        with self.sessions.begin() as s:
            flipped = s.execute(
                update(db.Assignment)
                .where(db.Assignment.round_id == round_id, db.Assignment.device_id == device.id,
                       db.Assignment.status == "assigned")
                .values(status="received", update_sha=sha256, update_size=size,
                        num_samples=num_samples, received_at=t)
            ).rowcount
            counted = flipped and s.execute(
                update(db.Round).where(db.Round.id == round_id, db.Round.status == "open",
                                       db.Round.num_received < db.Round.target,
                                       db.Round.deadline_at > t)
                .values(num_received=db.Round.num_received + 1)).rowcount
            if not counted:
                s.rollback()
        if not counted:
            self._drop_unreferenced(sha256)
            if not flipped:  # a concurrent retry of this device won: answer as a retry
                return self._accept(device, round_id, _NO_FILE, sha256, size)
            raise conflict("round_closed", f"round {round_id} no longer takes updates "
                           f"(target reached, deadline passed or closed)")
        self.bump("fedfr_updates_accepted_total")
        self.bump("fedfr_upload_bytes_total", size)
        return Receipt(round_id, device.id, sha256, size, num_samples, t)

    def _drop_unreferenced(self, sha256: str) -> None:
        with self.sessions() as s:
            used = s.scalar(select(func.count()).select_from(db.Assignment)
                            .where(db.Assignment.update_sha == sha256))
        if not used:
            self.blobs.delete(sha256)

    def round_ready(self, round_id: int) -> bool:
        with self.sessions() as s:
            r = s.get(db.Round, round_id)
            return r is not None and r.status == "open" and r.num_received >= r.target

    # ---------------------------------------------------------------- aggregation
    def sweep(self) -> None:
        """Aggregate or fail the rounds whose time has come (target reached, deadline passed,
        or an aggregation lease that expired with its process)."""
        t = now()
        with self.sessions() as s:
            due = s.scalars(select(db.Round.id).where(
                ((db.Round.status == "open")
                 & ((db.Round.num_received >= db.Round.target) | (db.Round.deadline_at <= t)))
                | ((db.Round.status == "aggregating") & (db.Round.lease_until < t)))).all()
        for rid in due:
            self.try_aggregate(rid)

    def try_aggregate(self, round_id: int, *, force: bool = False) -> bool:
        """Claim the round and aggregate it (or fail it below the minimum). ``False`` when
        the round was not due or another worker holds it."""
        claim = uuid.uuid4().hex
        t = now()
        is_open = db.Round.status == "open"
        if not force:
            is_open = is_open & ((db.Round.num_received >= db.Round.target)
                                 | (db.Round.deadline_at <= t))
        with self.sessions.begin() as s:
            got = s.execute(
                update(db.Round).where(
                    db.Round.id == round_id,
                    is_open | ((db.Round.status == "aggregating") & (db.Round.lease_until < t)))
                .values(status="aggregating", claim=claim,
                        lease_until=t + self.settings.aggregation_lease)).rowcount
        if not got:
            return False
        try:
            self._aggregate(round_id, claim, t)
        except Exception as e:  # a broken blob or a bug: fail the round, keep the base
            log.exception("aggregation of round %s failed", round_id)
            self._finish_failed(round_id, claim, f"aggregation error: {e}")
        return True

    def _renew_lease(self, round_id: int, claim: str) -> None:
        """Keep a long aggregation's claim alive (a dead process stops renewing it)."""
        with self.sessions.begin() as s:
            s.execute(update(db.Round).where(db.Round.id == round_id, db.Round.claim == claim)
                      .values(lease_until=now() + self.settings.aggregation_lease))

    def _finish_failed(self, round_id: int, claim: str, reason: str) -> None:
        with self.sessions.begin() as s:
            s.execute(update(db.Round).where(db.Round.id == round_id, db.Round.claim == claim,
                                             db.Round.status == "aggregating")
                      .values(status="failed", reason=reason[:500], closed_at=now()))
        self.bump('fedfr_rounds_finished_total{status="failed"}')

    def _aggregate(self, round_id: int, claim: str, started: float) -> None:
        t0 = time.perf_counter()
        with self.sessions() as s:
            r = s.get(db.Round, round_id)
            received = s.execute(select(db.Assignment.update_sha, db.Assignment.num_samples)
                                 .where(db.Assignment.round_id == round_id,
                                        db.Assignment.status == "received")
                                 .order_by(db.Assignment.device_id)).all()
            base_row = s.get(db.ModelVersion, r.base_version)
        if len(received) < r.min_devices:
            self._finish_failed(round_id, claim, f"{len(received)} updates received, below the "
                                f"minimum of {r.min_devices}; model version {r.base_version} "
                                f"stays current")
            return
        base = self.load_model(r.base_version)
        agg = RoundAggregate(base.public_embeddings, row_weighting=r.row_weighting)
        renewed = time.monotonic()
        for sha, _ in received:  # one update in memory at a time
            agg.add(decode_update(self.blobs.path(sha)).update)
            if time.monotonic() - renewed > self.settings.aggregation_lease / 3:
                self._renew_lease(round_id, claim)
                renewed = time.monotonic()
        arrays, public = agg.result()
        model = base.with_(backbone=backbone_arrays(arrays), public_embeddings=public)
        seconds = time.perf_counter() - t0
        # a mean whose weighted sum overflowed is dropped: JSON (and PostgreSQL) has no inf
        stats = {**(r.stats or {}), "devices": agg.count, "samples": agg.num_samples,
                 "metrics": {k: v for k, v in agg.metrics.items() if math.isfinite(v)},
                 "aggregation_seconds": seconds}
        metrics = None
        if base_row.validation_sha:  # evaluated before the publishing transaction, same claim
            self._renew_lease(round_id, claim)
            metrics = self._evaluate_candidate(model, base_row.validation_sha, round_id, claim)
            stats["evaluation_seconds"] = metrics.get("seconds")
        decision = publication_decision(parse_metric(self.settings.publish_metric),
                                        r.max_regression, base_row.validation, metrics)
        stats["publication"] = decision
        published = decision["published"]
        status = "completed" if published else "rejected"
        reason = None
        if not published:
            reason = decision["reason"]
            if r.repeat > 1:
                reason += (f"; the {r.repeat - 1} remaining round(s) of the series were not "
                           f"started")
        self._renew_lease(round_id, claim)  # the publishing transaction gets a full lease
        with self.sessions.begin() as s:
            mine = s.execute(update(db.Round).where(db.Round.id == round_id,
                                                    db.Round.claim == claim,
                                                    db.Round.status == "aggregating")
                             .values(status=status, closed_at=now(), reason=reason))
            if not mine.rowcount:  # lease lost to another worker: publish nothing
                s.rollback()
                return
            row = self._insert_version(
                s, model, parent_version=r.base_version, round_id=round_id,
                pack=(base_row.public_pack_sha, base_row.public_pack_size),
                description={"round": round_id, "devices": agg.count,
                             "samples": agg.num_samples},
                validation=(base_row.validation_sha, base_row.validation_size),
                metrics=metrics, status="published" if published else "rejected")
            decision["candidate_version"] = row.version
            s.execute(update(db.Round).where(db.Round.id == round_id)
                      .values(result_version=row.version if published else None,
                              stats=stats))
            if published and r.repeat > 1:
                self._new_round(s, row.version, r.target, r.min_devices, r.over_selection,
                                float((r.stats or {}).get("deadline_seconds", 3600)),
                                r.config, r.row_weighting, r.repeat - 1, r.max_regression)
        self.bump(f'fedfr_rounds_finished_total{{status="{status}"}}')
        self.bump("fedfr_aggregation_seconds_sum", seconds)
        self.bump("fedfr_aggregation_seconds_count")
        self.bump("fedfr_model_versions_published_total" if published
                  else "fedfr_model_versions_rejected_total")
        if not self.settings.keep_updates:
            for sha, _ in received:
                self._drop_unreferenced_after_round(sha)
        if published:
            log.info("round %s aggregated %d updates into version %s in %.2fs", round_id,
                     agg.count, row.version, seconds)
        else:
            log.warning("round %s rejected: %s (version %s stored as rejected)", round_id,
                        reason, row.version)

    def _evaluate_candidate(self, model: GlobalModel, validation_sha: str, round_id: int,
                            claim: str) -> dict:
        """A round's new model on its validation set, renewing the claim's lease between
        batches. A model (or set) that cannot be evaluated gives ``{"error": ...}``: the
        policy then refuses it, no policy publishes it as before."""
        renewed = time.monotonic()

        def progress() -> None:
            nonlocal renewed
            if time.monotonic() - renewed > self.settings.aggregation_lease / 3:
                self._renew_lease(round_id, claim)
                renewed = time.monotonic()

        try:
            val = load_validation_set(self.blobs.path(validation_sha))
            return self.evaluate(model, val, progress)
        except Exception as e:  # non-finite embeddings of a diverged model, a broken blob...
            log.exception("evaluation of round %s's model failed", round_id)
            return {"error": f"{type(e).__name__}: {e}"[:300]}

    def _drop_unreferenced_after_round(self, sha: str) -> None:
        with self.sessions() as s:
            live = s.scalar(select(func.count()).select_from(db.Assignment)
                            .join(db.Round, db.Round.id == db.Assignment.round_id)
                            .where(db.Assignment.update_sha == sha,
                                   db.Round.status.in_(("open", "aggregating"))))
        if not live:
            self.blobs.delete(sha)

    def collect_garbage(self, min_age: float = 3600.0) -> int:
        """Delete blobs nothing refers to (older than ``min_age`` seconds, so an upload between
        its blob and its row, or a pack waiting to be published, is kept): update blobs a
        killed process left without a row, and updates of finished rounds a kill kept from
        being deleted. Model versions, their packs and validation sets are never deleted
        (an uploaded validation set not yet attached to a version is kept ``min_age``).
        Returns how many."""
        with self.sessions() as s:
            keep = set(s.scalars(select(db.ModelVersion.blob_sha)).all())
            keep |= {x for x in s.scalars(select(db.ModelVersion.public_pack_sha)).all() if x}
            keep |= {x for x in s.scalars(select(db.ModelVersion.validation_sha)).all() if x}
            q = select(db.Assignment.update_sha).where(db.Assignment.update_sha.is_not(None))
            if not self.settings.keep_updates:
                q = q.join(db.Round, db.Round.id == db.Assignment.round_id).where(
                    db.Round.status.in_(("open", "aggregating")))
            keep |= set(s.scalars(q).all())
        n = 0
        cutoff = now() - min_age
        for sha, mtime in self.blobs.list():
            if sha not in keep and mtime < cutoff:
                self.blobs.delete(sha)
                n += 1
        if n:
            log.info("deleted %d unreferenced blobs", n)
        return n

    # ---------------------------------------------------------------- metrics
    def metrics_text(self) -> str:
        with self.sessions() as s:
            counters = s.execute(select(db.Counter.name, db.Counter.value)
                                 .order_by(db.Counter.name)).all()
            by_status = dict(s.execute(select(db.Round.status, func.count())
                                       .group_by(db.Round.status)).all())
            devices = s.scalar(select(func.count()).select_from(db.Device))
            versions = s.scalar(select(func.count()).select_from(db.ModelVersion))
            cur = self.current_version(s)
        lines = []
        seen: set[str] = set()
        for name, value in counters:
            base = name.split("{", 1)[0]
            if base not in seen:
                seen.add(base)
                kind = "summary" if base.startswith("fedfr_aggregation_seconds") else "counter"
                if kind == "summary":
                    base = "fedfr_aggregation_seconds"
                    if base in seen:
                        lines.append(f"{name} {value:.17g}")
                        continue
                    seen.add(base)
                lines.append(f"# TYPE {base} {kind}")
            lines.append(f"{name} {value:.17g}")
        lines.append("# TYPE fedfr_rounds gauge")
        for st in ROUND_STATES:
            lines.append(f'fedfr_rounds{{status="{st}"}} {by_status.get(st, 0)}')
        lines += ["# TYPE fedfr_devices gauge", f"fedfr_devices {devices}",
                  "# TYPE fedfr_model_versions gauge", f"fedfr_model_versions {versions}",
                  "# TYPE fedfr_current_model_version gauge",
                  f"fedfr_current_model_version {cur.version if cur else 0}"]
        return "\n".join(lines) + "\n"


#: Passed when re-answering a retry: the assignment is already ``received``, no file is read.
_NO_FILE = Path("/nonexistent/fedfr-retry")


def version_json(r: db.ModelVersion) -> dict:
    return {"version": r.version, "status": r.status or "published",
            "parent_version": r.parent_version, "round_id": r.round_id,
            "sha256": r.blob_sha, "size": r.size, "arch": r.arch,
            "embedding_size": r.embedding_size,
            "public_pack": None if not r.public_pack_sha else {
                "sha256": r.public_pack_sha, "size": r.public_pack_size},
            "public_classes": (r.shared_spec or {}).get("public_rows"),
            "validation_set": None if not r.validation_sha else {
                "sha256": r.validation_sha, "size": r.validation_size},
            "validation": r.validation,
            "description": r.description, "created_at": r.created_at}


def _finite(obj: object) -> object:
    """``obj`` with non-finite floats as ``None`` (JSON, and PostgreSQL's JSON, have no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def publication_decision(spec: MetricSpec, max_regression: float | None,
                         base_metrics: dict | None, metrics: dict | None) -> dict:
    """Whether a round's new version is published: ``{"published", "metric",
    "max_regression", "base", "candidate", "regression", "reason"}``.

    Published when there is no policy (``max_regression`` None), no validation set, or the
    base has no value to compare with; refused when the candidate could not be evaluated (or
    its metric is missing while the base's is not), or it is worse than the base by more than
    ``max_regression``.
    """
    out: dict = {"metric": spec.name, "max_regression": max_regression, "base": None,
                 "candidate": None, "regression": None, "published": True, "reason": None}
    if metrics is None:
        out["reason"] = "no validation set: published without evaluation"
        return out
    if "error" in metrics:
        if max_regression is None:
            out["reason"] = f"not evaluated ({metrics['error']}); no policy: published"
            return out
        out.update(published=False, reason=f"evaluation_failed: the new model could not be "
                   f"evaluated on the validation set ({metrics['error']})")
        return out
    base, cand = spec.value(base_metrics), spec.value(metrics)
    out.update(base=base, candidate=cand)
    if max_regression is None:
        out["reason"] = "no policy (max_regression unset): published"
        return out
    if base is None:
        out["reason"] = f"the base version has no {spec.name} to compare with: published"
        return out
    if cand is None:
        out.update(published=False, reason=f"regression: {spec.name} of the new model is not "
                   f"resolvable (base {base:.4f})")
        return out
    drop = spec.regression(cand, base)
    out["regression"] = drop
    if drop > max_regression + 1e-12:
        out.update(published=False, reason=f"regression: {spec.name} {cand:.4f} vs the base's "
                   f"{base:.4f} (worse by {drop:.4f}, more than the margin {max_regression:g})")
    else:
        out["reason"] = (f"{spec.name} {cand:.4f} vs the base's {base:.4f}: within the margin "
                         f"{max_regression:g}")
    return out


def round_json(r: db.Round) -> dict:
    return {"id": r.id, "status": r.status, "base_version": r.base_version,
            "result_version": r.result_version, "target": r.target,
            "min_devices": r.min_devices, "over_selection": r.over_selection,
            "capacity": r.capacity, "deadline_at": r.deadline_at, "config": r.config,
            "row_weighting": r.row_weighting, "repeat": r.repeat,
            "max_regression": r.max_regression,
            "num_assigned": r.num_assigned, "num_received": r.num_received,
            "stats": r.stats, "reason": r.reason, "created_at": r.created_at,
            "closed_at": r.closed_at}


def load_admin_token(settings: Settings) -> str:
    """The admin token: ``settings.admin_token``, else ``DATA_DIR/admin_token`` (created with
    mode 0600 on first start)."""
    if settings.admin_token:
        return settings.admin_token
    path = settings.admin_token_file
    if not path.exists():
        import os

        token = new_token(ADMIN_TOKEN_PREFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker wrote it first
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
                f.flush()
                os.fsync(f.fileno())
    for _ in range(50):  # a concurrent writer may not have written yet
        token = path.read_text().strip()
        if token:
            return token
        time.sleep(0.05)
    raise RuntimeError(f"{path} is empty")
