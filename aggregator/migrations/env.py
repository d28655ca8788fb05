"""Alembic environment: the URL comes from ``config.attributes["url"]`` (see
:func:`aggregator.db.migrate`), never from a file."""

from __future__ import annotations

from alembic import context

from aggregator.db import Base, make_engine

config = context.config
url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("no database URL: call aggregator.db.migrate(url)")

engine = make_engine(url)
with engine.connect() as connection:
    # render_as_batch: SQLite can only ALTER a table by copying it; Alembic does that for us
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        # Several workers may start at once: one migrates, the others wait and find it done
        # (SQLite: the engine's BEGIN IMMEDIATE already serializes; PostgreSQL: a lock).
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(724401)")
        context.run_migrations()
engine.dispose()
