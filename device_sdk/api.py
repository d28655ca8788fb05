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
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np

from device_sdk import client, training
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

__all__ = [
    "MAX_NAME_LENGTH",
    "enroll",
    "export",
    "forget",
    "identify",
    "identities",
    "register",
    "status",
    "train",
    "validate_name",
    "verify",
]

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
        traffic = {"sent": 0, "received": 0}
        device_id, token = client.register(url, enrollment_token, retry=retry, http=http,
                                           traffic=traffic)
        h.set_credentials(url, device_id, token)
        training.add_traffic(h, traffic["sent"], traffic["received"])
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
            problems.append((str(p), str(e)))
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
    """Remove identity ``name``: its rows, its crops, and its rows of the private state (local
    identity weight, DFC classifier); a bundle exported afterwards no longer holds it.

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
        (label,) = tx.db.execute("SELECT label FROM identities WHERE id = ?",
                                 (ident,)).fetchone()
        (n,) = tx.db.execute("SELECT COUNT(*) FROM images WHERE identity_id = ?",
                             (ident,)).fetchone()
        training.scrub_private(h, tx, int(label))
        tx.db.execute("DELETE FROM images WHERE identity_id = ?", (ident,))
        tx.db.execute("DELETE FROM identities WHERE id = ?", (ident,))
        tx.move_to_trash(h.crops_dir(ident))
        tx.move_to_trash(h.private_dir(ident))
    return {"name": key, "removed_images": int(n)}


# ------------------------------------------------------------------------- training
def train(home: Home, *, rounds: int | None = 1, wait: float | None = None,
          device: str = "auto", progress: bool = False, retry: client.Retry | None = None,
          http: httpx.Client | None = None,
          on_event: Callable[[str, dict], None] | None = None) -> dict:
    """Take part in ``rounds`` federated rounds (``None``: forever); see
    :func:`device_sdk.training.train` for the round and what it returns.

    Raises:
        NotRegisteredError: before ``register``.
        NoRoundError: no task within ``wait`` seconds.
        RoundConfigError: a round this SDK cannot train (its config names the problem).
        ServerError / ServerUnavailable: the server refused, or cannot be reached.
    """
    with open_home(home) as h:
        return training.train(h, rounds=rounds, wait=wait, device=device, progress=progress,
                              retry=retry, http=http, on_event=on_event)


# ------------------------------------------------------------------------- export & use
#: Public pack images used as extra impostors when calibrating an exported threshold.
CALIBRATION_PUBLIC_IMAGES = 2000


def export(home: Home, out: str | os.PathLike[str], *, int8: bool = False,
           far_target: float = 1e-3, make_zip: bool = False) -> dict:
    """The personalized recognizer as a bundle (:func:`export.bundle.create_bundle`).

    The model is the device's local backbone → its DFC converter, from its last accepted
    round; the templates are the enrolled identities' images embedded by that model; the
    threshold is calibrated at ``far_target`` on impostor pairs among the enrolled images and
    up to :data:`CALIBRATION_PUBLIC_IMAGES` public pack images (other people than the
    device's, so the false accepts are counted on many more pairs than the device's own
    identities give).

    Returns:
        ``{"bundle", "identities", "model_version", "threshold", "report"}``.

    Raises:
        DeviceSDKError: nothing enrolled, or no personalized model yet (train first).
    """
    import tempfile

    from export.bundle import create_bundle
    from export.onnx_export import export_personalized
    from fedfr.fl import GlobalModel
    from fedfr.train.local_state import PublicPack

    with open_home(home) as h:
        images, labels, idents = training.enrolled_images(h)
        if not idents or not len(images):
            raise DeviceSDKError("nobody is enrolled: device_sdk enroll NAME IMAGE... first")
        private, meta = training.load_private(h, [int(d["label"]) for d in idents])
        if private is None or private.local_backbone is None:
            raise DeviceSDKError("no personalized model yet: run device_sdk train first")
        mpath = training.cached_model_path(h, meta.get("model_sha256", ""))
        if not mpath.exists():
            raise DeviceSDKError(f"the model version {meta.get('model_version')} the private "
                                 f"state was trained from is no longer cached; run device_sdk "
                                 f"train again")
        model = GlobalModel.load(mpath)
        enrolled = {d["name"]: images[labels == k] for k, d in enumerate(idents)
                    if (labels == k).any()}
        held, held_labels = images, labels
        pack_path = training.cached_model_path(h, meta.get("pack_sha256", ""))
        if pack_path.exists():
            pack = PublicPack.load(pack_path)
            if pack.kind == "images":
                rng = np.random.default_rng(0)
                sel = np.sort(rng.permutation(len(pack.images))[:CALIBRATION_PUBLIC_IMAGES])
                held = np.concatenate([images, pack.images[sel]])
                held_labels = np.concatenate([labels, len(idents) + np.asarray(
                    pack.labels, np.int64)[sel]])
        with tempfile.TemporaryDirectory(dir=h.path, prefix=".export-") as td:
            onnx_path = export_personalized(model, private, Path(td) / "model.onnx")
            path, report = create_bundle(out, model=onnx_path, enrolled=enrolled,
                                         heldout=held, heldout_labels=held_labels,
                                         far_target=far_target, int8=int8,
                                         make_zip=make_zip)
        h.set_state("last_bundle", str(Path(path).resolve()))
    return {"bundle": str(path), "identities": sorted(enrolled),
            "model_version": int(meta.get("model_version", 0)),
            "threshold": float(report["calibration"]["threshold"]) if "calibration" in report
            else None, "report": report}


def _bundle_path(h: DeviceHome, bundle: str | os.PathLike[str] | None) -> Path:
    if bundle is not None:
        return Path(bundle)
    last = h.get_state("last_bundle")
    if not last:
        raise DeviceSDKError("no bundle: run device_sdk export --out BUNDLE first, or pass "
                             "--bundle")
    return Path(last)


def _bundle_and_face(home: Home, image: str | os.PathLike[str],
                     bundle: str | os.PathLike[str] | None, variant: str,
                     detector: MTCNNDetector | None):
    """``(Bundle, path, crop)`` for verify/identify: the bundle (default: the last export)
    and the aligned face of ``image``."""
    from export.bundle import Bundle

    with open_home(home) as h:
        path = _bundle_path(h, bundle)
    crop, _ = load_face(image, detector=detector)
    return Bundle.load(path, variant=variant), path, crop


def verify(home: Home, image: str | os.PathLike[str], name: str, *,
           bundle: str | os.PathLike[str] | None = None, variant: str = "fp32",
           detector: MTCNNDetector | None = None) -> dict:
    """Is the face in ``image`` ``name``? Runs the bundle (default: the last export) with ONNX
    Runtime: ``{"name", "score", "threshold", "accepted", "image", "bundle"}``.

    Raises:
        FaceError / DataFormatError: the image (named) has no usable face or is unreadable.
        UnknownIdentityError: ``name`` is not in the bundle.
        BundleError: the bundle is missing, altered or unusable.
    """
    b, path, crop = _bundle_and_face(home, image, bundle, variant, detector)
    key = unicodedata.normalize("NFC", name) if isinstance(name, str) else name
    try:
        r = b.verify(crop, key)
    except KeyError as e:
        raise UnknownIdentityError(str(e.args[0]) if e.args else str(e)) from None
    return {**r, "image": str(image), "bundle": str(path)}


def identify(home: Home, image: str | os.PathLike[str], *,
             bundle: str | os.PathLike[str] | None = None, variant: str = "fp32",
             detector: MTCNNDetector | None = None) -> dict:
    """Who is the face in ``image``? ``{"name" (or "unknown"), "best", "score", "threshold",
    "image", "bundle"}`` from the bundle (default: the last export)."""
    from export.bundle import UNKNOWN

    b, path, crop = _bundle_and_face(home, image, bundle, variant, detector)
    try:
        r = b.identify(crop)
    except KeyError as e:
        raise DeviceSDKError(str(e.args[0]) if e.args else str(e)) from None
    return {**r, "known": r["name"] != UNKNOWN, "image": str(image), "bundle": str(path)}


def status(home: Home) -> dict:
    """What the device holds: registration, identities, models, private state, pending
    upload, traffic so far, last bundle (never the token)."""
    with open_home(home) as h:
        creds = h.credentials()
        meta, rounds = training.private_summary(h)
        models = [{"version": v, "sha256": sha} for v, sha in h.db.execute(
            "SELECT version, sha256 FROM models ORDER BY version")]
        return {
            "home": str(h.path),
            "registered": creds is not None,
            "server": creds.server_url if creds else None,
            "device_id": creds.device_id if creds else None,
            "identities": len(identities(h)),
            "images": int(h.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]),
            "models": models,
            "personalized_from_version": int(meta["model_version"]) if meta else None,
            "rounds_trained": rounds,
            "pending_upload": h.get_state("pending_upload"),
            "traffic": h.get_state("traffic", {"sent": 0, "received": 0}),
            "last_bundle": h.get_state("last_bundle"),
        }

