"""The device SDK's library API: every CLI command is one function here.

Each function takes ``home``: a :class:`~device_sdk.home.DeviceHome`, a path, or ``None``
(``$FEDFR_DEVICE_HOME``, else ``~/.fedfr-device``), and returns plain JSON-able data.

Bad input raises a :class:`fedfr.errors.FedFRError` whose message names the file or value at
fault (:mod:`device_sdk.errors`); the server's answers raise
:class:`~device_sdk.errors.ServerError` / :class:`~device_sdk.errors.ServerUnavailable`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx

from device_sdk import client
from device_sdk.errors import (
    DataFormatError,
    DetectorUnavailable,
    DeviceSDKError,
    EnrollError,
    FaceError,
    UnknownIdentityError,
)
from device_sdk.faces import MTCNNDetector, load_face
from device_sdk.home import DeviceHome, utc_now
from fedfr.data.images import encode_png

__all__ = ["MAX_NAME_LENGTH", "enroll", "forget", "identities", "register", "validate_name"]

MAX_NAME_LENGTH = 64
Home = DeviceHome | str | os.PathLike[str] | None


@contextlib.contextmanager
def open_home(home: Home) -> Iterator[DeviceHome]:
    """``home`` itself if it is an open :class:`DeviceHome`, else one opened (and closed)."""
    if isinstance(home, DeviceHome):
        yield home
        return
    h = DeviceHome(home)
    try:
        yield h
    finally:
        h.close()


# ------------------------------------------------------------------------- register
def register(home: Home, server: str, enrollment_token: str, *, force: bool = False,
             retry: client.Retry | None = None, http: httpx.Client | None = None) -> dict:
    """Register the device with the aggregator at ``server`` and store its credentials.

    Sends only :func:`device_sdk.client.device_info` (platform, SDK version) and the token.

    Returns:
        ``{"server", "device_id"}`` (never the token).

    Raises:
        DeviceSDKError: already registered (unless ``force``), a bad URL or empty token.
        ServerError: the server refused (e.g. ``invalid_enrollment_token``).
        ServerUnavailable: the server cannot be reached.
    """
    url = client.normalize_server_url(server)
    with open_home(home) as h:
        creds = h.credentials()
        if creds is not None and not force:
            raise DeviceSDKError(f"this device is already registered with {creds.server_url} "
                                 f"as device {creds.device_id}; register again with --force "
                                 f"(force=True)")
        device_id, token = client.register(url, enrollment_token, retry=retry, http=http)
        h.set_credentials(url, device_id, token)
        return {"server": url, "device_id": device_id}


# ------------------------------------------------------------------------- identities
def validate_name(name: object) -> str:
    """An identity name, NFC-normalized; DeviceSDKError unless it is 1-64 characters with no
    path separator, control or format character, and no leading or trailing white space."""
    if not isinstance(name, str):
        raise DeviceSDKError(f"an identity name must be a string, got {type(name).__name__}")
    n = unicodedata.normalize("NFC", name)
    if not 1 <= len(n) <= MAX_NAME_LENGTH:
        raise DeviceSDKError(f"an identity name must be 1 to {MAX_NAME_LENGTH} characters, got "
                             f"{len(n)}")
    bad = [c for c in n if c in "/\\" or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl",
                                                                     "Zp")]
    if bad:
        raise DeviceSDKError(f"identity name {n!r} contains {bad[0]!r}: no path separators or "
                             f"control characters")
    if n != n.strip():
        raise DeviceSDKError(f"identity name {n!r} starts or ends with white space")
    return n


def _prepare(paths: Sequence[Path], detector: MTCNNDetector | None,
             progress: Callable[[int, int], None] | None) -> list[tuple[Path, bytes, str, str]]:
    """``(path, png, method, sha256)`` for every file, or an EnrollError listing those that
    cannot be enrolled."""
    out, problems = [], []
    for i, p in enumerate(paths):
        try:
            crop, method = load_face(p, detector=detector)
        except (DataFormatError, FaceError) as e:
            # PIL names the in-memory buffer it read from; the message names the file already
            problems.append((str(p), re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "",
                                            str(e))))
        except DetectorUnavailable as e:
            raise DetectorUnavailable(f"{p}: {e}") from None
        else:
            # the sha256 of the pixels: the same face from a re-encoded file is a duplicate
            sha = hashlib.sha256(crop.tobytes()).hexdigest()
            out.append((p, encode_png(crop), method, sha))
        if progress is not None:
            progress(i + 1, len(paths))
    if problems:
        raise EnrollError(problems)
    return out


def enroll(home: Home, name: str, paths: Sequence[str | os.PathLike[str]], *,
           detector: MTCNNDetector | None = None,
           progress: Callable[[int, int], None] | None = None) -> dict:
    """Enroll identity ``name`` (created if new) with the images at ``paths``.

    Every file is read, and detected and aligned (photos) or taken as is (112x112 crops)
    first; only if all succeed is anything stored, in one transaction: the crops as PNG under
    ``crops/<identity id>/<sha256>.png``, then their rows. Images already enrolled for this
    identity (same pixels after alignment) are skipped.

    Returns:
        ``{"name", "created", "added", "skipped_duplicates", "total_images"}``.

    Raises:
        EnrollError: naming each file that is unreadable, not an image, or has no face or
            several faces (nothing stored).
        DeviceSDKError: a bad name or no file.
    """
    name = validate_name(name)
    files = [Path(p) for p in paths]
    if not files:
        raise DeviceSDKError("no image given: enroll NAME IMAGE [IMAGE ...]")
    prepared = _prepare(files, detector, progress)
    with open_home(home) as h, h.write() as tx:
        db = tx.db
        row = db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
        created = row is None
        if created:
            (top,) = db.execute("SELECT COALESCE(MAX(label) + 1, 0) FROM identities").fetchone()
            label = max(int(h.get_state("next_label", 0)), int(top))
            h.set_state("next_label", label + 1)  # labels are never reused
            ident = db.execute("INSERT INTO identities (name, label, created_at) "
                               "VALUES (?, ?, ?)", (name, label, utc_now())).lastrowid
        else:
            ident = row[0]
        seen = {r[0] for r in db.execute("SELECT sha256 FROM images WHERE identity_id = ?",
                                         (ident,))}
        added = skipped = 0
        for path, png, method, sha in prepared:
            if sha in seen:
                skipped += 1
                continue
            seen.add(sha)
            target = h.crops_dir(ident) / f"{sha}.png"
            tx.write_file(target, png)  # the file first, then its row
            db.execute("INSERT INTO images (identity_id, sha256, path, source_name, method, "
                       "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (ident, sha, target.relative_to(h.path).as_posix(), path.name, method,
                        utc_now()))
            added += 1
        (total,) = db.execute("SELECT COUNT(*) FROM images WHERE identity_id = ?",
                              (ident,)).fetchone()
    return {"name": name, "created": created, "added": added, "skipped_duplicates": skipped,
            "total_images": int(total)}


def identities(home: Home) -> list[dict]:
    """The enrolled identities, by name: ``[{"name", "images"}]``."""
    with open_home(home) as h:
        rows = h.db.execute(
            "SELECT i.name, COUNT(m.id) FROM identities i LEFT JOIN images m "
            "ON m.identity_id = i.id GROUP BY i.id ORDER BY i.name").fetchall()
    return [{"name": n, "images": int(c)} for n, c in rows]


def forget(home: Home, name: str) -> dict:
    """Remove identity ``name``: its rows, its crops and its private state directory.

    Returns:
        ``{"name", "removed_images"}``.

    Raises:
        UnknownIdentityError: no such identity on this device.
    """
    key = unicodedata.normalize("NFC", name) if isinstance(name, str) else name
    with open_home(home) as h, h.write() as tx:
        row = tx.db.execute("SELECT id FROM identities WHERE name = ?", (key,)).fetchone()
        if row is None:
            known = [r[0] for r in tx.db.execute("SELECT name FROM identities ORDER BY name")]
            hint = f"; enrolled: {', '.join(known)}" if known else "; none is enrolled"
            raise UnknownIdentityError(f"no identity named {name!r} on this device{hint}")
        ident = row[0]
        (n,) = tx.db.execute("SELECT COUNT(*) FROM images WHERE identity_id = ?",
                             (ident,)).fetchone()
        tx.db.execute("DELETE FROM images WHERE identity_id = ?", (ident,))
        tx.db.execute("DELETE FROM identities WHERE id = ?", (ident,))
        tx.move_to_trash(h.crops_dir(ident))
        tx.move_to_trash(h.private_dir(ident))
    return {"name": key, "removed_images": int(n)}
