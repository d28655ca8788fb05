"""The device home: where a device keeps its state (a SQLite database and files).

Layout (directories ``0700``, the database ``0600``; nothing in it is meant for other users)::

    HOME/
      device.db          SQLite (WAL): credentials, identities, images, models, state
      crops/<id>/        aligned 112x112 crops of identity <id>, named <sha256>.png
      private/           the private personalized state (later slices): local identity
                         weights, converter, previous local model; per identity in
                         private/identities/<id>/
      models/            cached model versions and public packs (later slices)
      trash/             what ``forget`` is deleting (emptied on the next write)

The home is ``--home DIR``, else ``$FEDFR_DEVICE_HOME``, else ``~/.fedfr-device``
(:func:`resolve_home`).

**Credentials** (server URL, device id, device token) are a row of the ``credentials`` table,
not a separate token file: the token then changes atomically with the device id and server
it belongs to (no half-registered state after a crash), and the database file is created
``0600`` in a ``0700`` directory, which is the protection a ``0600`` token file would give.

**Labels.** Each identity has a ``label``: the row of the local identity weights that
training uses for it. Labels never change and are never reused (a counter in ``state``), so
a forgotten identity's weight row can never be inherited by a later one; the trainer drops
the rows whose label no longer exists.

**Atomicity.** Every change runs in one SQLite transaction that holds the database's write
lock (``BEGIN IMMEDIATE``) from before its first file write to its commit: a crop is
written with :func:`fedfr.io.write_bytes_atomic` before its row is inserted, and a failure
removes the files that the transaction wrote. Files left by a crash (a crop with no row, an
identity directory with no identity, the trash) are removed by :meth:`DeviceHome.sweep`
under the same lock, at the start of every write.

**Schema.** ``schema_version`` holds one row; :data:`MIGRATIONS` ``[i]`` takes a database
from version ``i`` to ``i + 1`` and :func:`migrate` runs the missing steps in one
transaction when a home is opened. A database from a newer SDK is refused, not altered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from device_sdk.errors import HomeError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_HOME",
    "ENV_HOME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Credentials",
    "DeviceHome",
    "migrate",
    "resolve_home",
]

ENV_HOME = "FEDFR_DEVICE_HOME"
DEFAULT_HOME = "~/.fedfr-device"
DB_NAME = "device.db"
DIR_MODE = 0o700
DB_MODE = 0o600


def resolve_home(path: str | os.PathLike[str] | None = None) -> Path:
    """The home directory: ``path``, else ``$FEDFR_DEVICE_HOME``, else ``~/.fedfr-device``."""
    raw = os.fspath(path) if path is not None else os.environ.get(ENV_HOME) or DEFAULT_HOME
    return Path(raw).expanduser()


def utc_now() -> str:
    """The current time, ISO 8601 UTC with a ``Z`` (what the tables store)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ------------------------------------------------------------------------- schema
def _v1(c: sqlite3.Connection) -> None:
    # one statement per execute(): executescript() would commit the caller's transaction
    for sql in (
        """CREATE TABLE credentials (
            id            INTEGER PRIMARY KEY CHECK (id = 1),
            server_url    TEXT NOT NULL,
            device_id     NOT NULL,
            device_token  TEXT NOT NULL,
            registered_at TEXT NOT NULL)""",
        """CREATE TABLE identities (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            name       TEXT NOT NULL UNIQUE,
            label      INTEGER NOT NULL UNIQUE CHECK (label >= 0),
            created_at TEXT NOT NULL)""",
        """CREATE TABLE images (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
            sha256      TEXT NOT NULL,
            path        TEXT NOT NULL UNIQUE,
            source_name TEXT NOT NULL,
            method      TEXT NOT NULL CHECK (method IN ('crop', 'aligned')),
            created_at  TEXT NOT NULL,
            UNIQUE (identity_id, sha256))""",
        """CREATE TABLE models (
            version    INTEGER PRIMARY KEY,
            sha256     TEXT NOT NULL,
            path       TEXT NOT NULL,
            size       INTEGER NOT NULL CHECK (size >= 0),
            created_at TEXT NOT NULL)""",
        """CREATE TABLE state (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL)""",
    ):
        c.execute(sql)


#: ``MIGRATIONS[i]`` migrates a database at schema version ``i`` to ``i + 1`` (no commit: the
#: caller's transaction covers all steps). Append, never edit, to change the schema.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(c: sqlite3.Connection) -> int:
    """The database's schema version; 0 for an empty database."""
    has = c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = "
                    "'schema_version'").fetchone()
    if not has:
        return 0
    row = c.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(c: sqlite3.Connection, *, source: str = DB_NAME) -> int:
    """Bring the database to :data:`SCHEMA_VERSION` in one transaction; returns the version
    it was at. ``c`` must be in autocommit mode (``isolation_level=None``).

    Raises:
        HomeError: for a database written by a newer SDK (it is left untouched).
    """
    if schema_version(c) == SCHEMA_VERSION:  # the usual case: no write lock needed
        return SCHEMA_VERSION
    c.execute("BEGIN IMMEDIATE")
    try:
        before = schema_version(c)  # again, under the lock: another process may have won
        if before > SCHEMA_VERSION:
            raise HomeError(f"{source}: schema version {before} is newer than this device_sdk "
                            f"supports ({SCHEMA_VERSION}); upgrade device_sdk")
        if before < SCHEMA_VERSION:
            if before == 0:
                c.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                c.execute("INSERT INTO schema_version VALUES (0)")
            for step in range(before, SCHEMA_VERSION):
                try:
                    MIGRATIONS[step](c)
                except sqlite3.Error as e:
                    raise HomeError(f"{source}: migrating the schema from version {step} to "
                                    f"{step + 1} failed (nothing was changed): {e}") from None
                c.execute("UPDATE schema_version SET version = ?", (step + 1,))
            logger.info("%s: schema migrated from version %d to %d", source, before,
                        SCHEMA_VERSION)
        c.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            c.execute("ROLLBACK")
        raise
    return before


# ------------------------------------------------------------------------- the home
class Credentials:
    """The device's registration: ``server_url``, ``device_id``, ``device_token``."""

    __slots__ = ("device_id", "device_token", "registered_at", "server_url")

    def __init__(self, server_url: str, device_id: object, device_token: str,
                 registered_at: str) -> None:
        self.server_url = server_url
        self.device_id = device_id
        self.device_token = device_token
        self.registered_at = registered_at

    def __repr__(self) -> str:  # never the token
        return f"Credentials(server_url={self.server_url!r}, device_id={self.device_id!r})"


class DeviceHome:
    """A device home at ``path`` (created if missing, with the layout in the module doc).

    Use as a context manager, or call :meth:`close`.

    Raises:
        HomeError: when ``path`` exists and is not a directory, cannot be created, or holds a
            database that is corrupt or from a newer SDK.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = resolve_home(path)
        self._conn: sqlite3.Connection | None = None
        try:
            self._make_dir(self.path)
            for sub in ("crops", "private", "private/identities", "models", "trash"):
                self._make_dir(self.path / sub)
            db = self.path / DB_NAME
            if not db.exists():
                os.close(os.open(db, os.O_CREAT | os.O_WRONLY, DB_MODE))
            os.chmod(db, DB_MODE)
        except OSError as e:
            raise HomeError(f"{self.path}: cannot use it as the device home: "
                            f"{e.strerror or e}") from None
        try:
            self._conn = sqlite3.connect(db, isolation_level=None, timeout=30.0,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")  # rare, small writes: durable
            self._conn.execute("PRAGMA foreign_keys = ON")
            migrate(self._conn, source=str(db))
        except sqlite3.DatabaseError as e:
            self.close()
            raise HomeError(f"{db}: not a usable device database: {e}") from None
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _make_dir(p: Path) -> None:
        if p.exists() and not p.is_dir():
            raise HomeError(f"{p}: exists and is not a directory")
        p.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(p, DIR_MODE)

    # -- lifecycle
    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> DeviceHome:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DeviceHome({str(self.path)!r})"

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise HomeError(f"{self.path}: the device home is closed")
        return self._conn

    @property
    def db_path(self) -> Path:
        return self.path / DB_NAME

    # -- transactions
    @contextlib.contextmanager
    def write(self) -> Iterator[WriteTx]:
        """A write transaction (``BEGIN IMMEDIATE``: the write lock is held throughout).

        Files written through :meth:`WriteTx.write_file` are removed if the transaction does
        not commit; :meth:`WriteTx.after_commit` callbacks run after a successful commit.
        Stale files from earlier crashes are swept first (:meth:`sweep`).
        """
        c = self.db
        c.execute("BEGIN IMMEDIATE")
        tx = WriteTx(self)
        try:
            self.sweep()
            yield tx
            c.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            tx._undo()
            raise
        tx._committed()

    def sweep(self) -> None:
        """Remove what a crash can leave behind: the trash, identity directories of identities
        that do not exist, crop files with no row. Call with the write lock held."""
        c = self.db
        shutil.rmtree(self.path / "trash", ignore_errors=True)
        self._make_dir(self.path / "trash")
        ids = {str(r[0]) for r in c.execute("SELECT id FROM identities")}
        known = {r[0] for r in c.execute("SELECT path FROM images")}
        for top in ("crops", "private/identities"):
            for d in sorted((self.path / top).iterdir()):
                if d.name not in ids:
                    logger.warning("%s: removing the files of a deleted identity", d)
                    _remove(d)
                elif top == "crops":
                    for f in d.iterdir():
                        if f.relative_to(self.path).as_posix() not in known:
                            logger.warning("%s: removing a crop with no row", f)
                            _remove(f)

    # -- credentials
    def credentials(self) -> Credentials | None:
        row = self.db.execute("SELECT server_url, device_id, device_token, registered_at "
                              "FROM credentials WHERE id = 1").fetchone()
        return Credentials(*row) if row else None

    def set_credentials(self, server_url: str, device_id: object, device_token: str) -> None:
        with self.write():
            self.db.execute(
                "INSERT INTO credentials (id, server_url, device_id, device_token, "
                "registered_at) VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "server_url = excluded.server_url, device_id = excluded.device_id, "
                "device_token = excluded.device_token, registered_at = excluded.registered_at",
                (server_url, device_id, device_token, utc_now()))

    # -- key/value state (JSON)
    def get_state(self, key: str, default: object = None) -> object:
        row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_state(self, key: str, value: object) -> None:
        """Set ``key`` (inside an open :meth:`write` transaction, or on its own)."""
        sql = ("INSERT INTO state (key, value) VALUES (?, ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        args = (key, json.dumps(value))
        if self.db.in_transaction:
            self.db.execute(sql, args)
        else:
            with self.write():
                self.db.execute(sql, args)

    # -- paths
    def crops_dir(self, identity_id: int) -> Path:
        return self.path / "crops" / str(int(identity_id))

    def private_dir(self, identity_id: int) -> Path:
        """Where an identity's private personalized state goes (removed by ``forget``)."""
        return self.path / "private" / "identities" / str(int(identity_id))

    def make_dir(self, p: Path) -> Path:
        """Create ``p`` (and parents inside the home) with mode 0700."""
        p = Path(p)
        rel = p.relative_to(self.path)
        cur = self.path
        for part in rel.parts:
            cur = cur / part
            if not cur.is_dir():
                self._make_dir(cur)
        return p


class WriteTx:
    """An open :meth:`DeviceHome.write` transaction."""

    def __init__(self, home: DeviceHome) -> None:
        self.home = home
        self.db = home.db
        self._written: list[Path] = []
        self._made_dirs: list[Path] = []
        self._after: list[Callable[[], None]] = []
        self._moved: list[tuple[Path, Path]] = []

    def write_file(self, path: Path, data: bytes) -> None:
        """Write ``data`` atomically at ``path`` (inside the home); removed on rollback."""
        from fedfr.io import write_bytes_atomic

        path = Path(path)
        if not path.parent.is_dir():
            self._made_dirs.append(path.parent)
            self.home.make_dir(path.parent)
        existed = path.exists()
        write_bytes_atomic(path, data)
        os.chmod(path, 0o600)
        if not existed:
            self._written.append(path)

    def move_to_trash(self, path: Path) -> None:
        """Move ``path`` into the trash now (back on rollback; deleted after the commit)."""
        path = Path(path)
        if not path.exists():
            return
        dest = self.home.path / "trash" / f"{path.name}-{uuid.uuid4().hex}"
        os.replace(path, dest)
        self._moved.append((dest, path))
        self._after.append(lambda: _remove(dest))

    def after_commit(self, fn: Callable[[], None]) -> None:
        self._after.append(fn)

    def _undo(self) -> None:
        for p in reversed(self._written):
            with contextlib.suppress(OSError):
                p.unlink()
        for d in reversed(self._made_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()
        for dest, orig in reversed(self._moved):
            with contextlib.suppress(OSError):
                os.replace(dest, orig)

    def _committed(self) -> None:
        for fn in self._after:
            try:
                fn()
            except OSError as e:  # the sweep at the next write finishes the job
                logger.warning("after commit: %s", e)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
