"""The aggregator's tables (SQLAlchemy 2) and the engine: SQLite by default, PostgreSQL by URL.

Schema changes go through Alembic (``aggregator/migrations``); :func:`migrate` applies them.
Invariants the service relies on are constraints here, so that several workers or processes
on one database cannot break them:

- one assignment per (round, device) — a device cannot be assigned twice nor upload twice;
- the counters ``rounds.num_assigned`` / ``num_received`` only move by conditional UPDATEs
  (``... WHERE num_assigned < cap``), which the database serializes;
- a round becomes ``aggregating`` by one conditional UPDATE that carries a claim token and a
  lease, and ``completed`` only in the transaction that inserts its model version.

Times are UNIX seconds (float) — the same on SQLite and PostgreSQL, no time-zone traps.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    max_uses: Mapped[int] = mapped_column(Integer, default=1)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    enrollment_token_id: Mapped[int] = mapped_column(ForeignKey("enrollment_tokens.id"))
    info: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_version: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.version"), nullable=True)
    round_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    blob_sha: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    public_pack_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    public_pack_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    arch: Mapped[str] = mapped_column(String(100))
    embedding_size: Mapped[int] = mapped_column(Integer)
    # name -> [dtype, shape] of every tensor a device may upload (validation without the blob)
    shared_spec: Mapped[dict] = mapped_column(JSON)
    description: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float)
    # published (may be current) | rejected (a round's candidate the publication policy refused:
    # kept for the operator, never current, never a round's base)
    status: Mapped[str] = mapped_column(String(20), default="published",
                                        server_default="published")
    # the server's held-out validation set (a blob never sent to devices), inherited like the pack
    validation_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    validation_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # fedfr.evaluation.validation_report of this version on that set (None: no set)
    validation: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Round(Base):
    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_version: Mapped[int] = mapped_column(ForeignKey("model_versions.version"))
    # open -> aggregating -> completed | rejected | failed; open -> aborted | failed
    status: Mapped[str] = mapped_column(String(20), index=True)
    target: Mapped[int] = mapped_column(Integer)
    min_devices: Mapped[int] = mapped_column(Integer)
    over_selection: Mapped[float] = mapped_column(Float)
    capacity: Mapped[int] = mapped_column(Integer)
    deadline_at: Mapped[float] = mapped_column(Float)
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    row_weighting: Mapped[str] = mapped_column(String(20), default="uniform")
    repeat: Mapped[int] = mapped_column(Integer, default=1)
    num_assigned: Mapped[int] = mapped_column(Integer, default=0)
    num_received: Mapped[int] = mapped_column(Integer, default=0)
    claim: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    result_version: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.version"), nullable=True)
    # aggregate statistics only: device count, samples, sample-weighted mean metrics, seconds
    stats: Mapped[dict] = mapped_column(JSON, default=dict)
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # publication policy: the largest validation-metric drop vs the base that still publishes
    # (None: always publish); fixed when the round starts
    max_regression: Mapped[float | None] = mapped_column(Float, nullable=True)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("round_id", "device_id", name="uq_assignment"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    status: Mapped[str] = mapped_column(String(20))  # assigned | received
    assigned_at: Mapped[float] = mapped_column(Float)
    update_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    update_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    num_samples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    received_at: Mapped[float | None] = mapped_column(Float, nullable=True)


Index("ix_assignments_round_status", Assignment.round_id, Assignment.status)


class Counter(Base):
    """Monotonic counters for ``/metrics``, shared by every worker process."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


def make_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite: WAL, full fsync, a 30 s busy timeout, and ``BEGIN
    IMMEDIATE`` transactions (take the write lock up front, so two writers queue instead of
    one failing on a lock upgrade)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (Alembic ``upgrade head``)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["url"] = url
    command.upgrade(cfg, "head")
