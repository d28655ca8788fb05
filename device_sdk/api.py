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
    DuplicateIdentityError,
    EnrollError,
    FaceError,
    UnknownIdentityError,
)
from device_sdk.faces import MTCNNDetector, load_face
from device_sdk.home import DeviceHome, utc_now
from fedfr.data.images import encode_png

__all__ = [
    "MAX_NAME_LENGTH",
    "check_identity",
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
             progress: Callable[[int, int], None] | None, check_crops: bool = True
             ) -> list[tuple[Path, bytes, str, str, np.ndarray]]:
    """``(path, png, method, sha256, crop)`` for every file, or an EnrollError listing those
    that cannot be enrolled."""
    out, problems = [], []
    for i, p in enumerate(paths):
        try:
            crop, method = load_face(p, detector=detector, check_crops=check_crops)
        except (DataFormatError, FaceError) as e:
            problems.append((str(p), str(e)))
        except DetectorUnavailable as e:
            raise DetectorUnavailable(f"{p}: {e}") from None
        else:
            # the sha256 of the pixels: the same face from a re-encoded file is a duplicate
            sha = hashlib.sha256(crop.tobytes()).hexdigest()
            out.append((p, encode_png(crop), method, sha, crop))
        if progress is not None:
            progress(i + 1, len(paths))
    if problems:
        raise EnrollError(problems)
    return out


#: The FAR of the threshold enroll's same-face check uses when it has to calibrate one.
IDENTITY_CHECK_FAR = 1e-3
#: Public pack images in the cohort of that calibration (fewer than export's: it runs on
#: every enroll).
IDENTITY_CHECK_COHORT = 500


def _current_model(h: DeviceHome):
    """``(embed, model, description, private metadata)`` of the device's current model — the
    personalized recognizer once trained, else the newest cached generic model — or ``None``
    when it holds none."""
    from fedfr.fl import GlobalModel

    meta, _ = training.private_summary(h)
    mpath = training.cached_model_path(h, meta.get("model_sha256", "")) if meta else None
    if mpath is not None and mpath.exists():
        private, _ = training.load_private(h, [])
        if private is not None and private.local_backbone is not None:
            from fedfr.train.recognizer import personalized_embedder

            model = GlobalModel.load(mpath)
            return (personalized_embedder(model, private), model,
                    f"personalized model (from v{meta.get('model_version')})", meta)
    for version, sha in h.db.execute("SELECT version, sha256 FROM models ORDER BY version DESC"):
        path = training.cached_model_path(h, sha)
        if path.exists():
            from fedfr.train.recognizer import generic_embedder

            model = GlobalModel.load(path)
            return generic_embedder(model), model, f"generic model v{version}", {}
    return None


def _identity_threshold(h: DeviceHome, model, meta: dict, embed, emb: np.ndarray,
                        labels: np.ndarray) -> tuple[float, str] | None:
    """The threshold of the same-face check and where it comes from: the last export's (same
    personalized model), else the generic model's own at FAR 1e-3 (``fedfr.thresholds``),
    else one calibrated now like export does (enrolled identities against each other and
    against public pack images); ``None`` when there is nothing to calibrate on."""
    from export.bundle import calibrate_threshold
    from fedfr.train.local_state import PublicPack

    last = h.get_state("last_calibration")
    if meta and last and last.get("model_sha256") == meta.get("model_sha256") \
            and last.get("trained_at") == meta.get("trained_at"):
        return float(last["threshold"]), (f"the last export's threshold (FAR "
                                          f"{last['far_target']:g})")
    if not meta:
        far = ((model.metadata or {}).get("fedfr.thresholds") or {}).get("far") or {}
        t = far.get("1e-03")
        if t is not None:
            src = model.metadata["fedfr.thresholds"].get("source", "")
            return float(t), f"the model's threshold at FAR 1e-3 ({src})"
    cohort = None
    pack_path = training.cached_model_path(h, meta.get("pack_sha256", "")) if meta else None
    if pack_path is not None and pack_path.exists():
        pack = PublicPack.load(pack_path)
        if pack.kind == "images":
            cohort = embed(_cohort_sample(pack, IDENTITY_CHECK_COHORT)[0])
    try:
        cal = calibrate_threshold(emb, labels, IDENTITY_CHECK_FAR, cohort=cohort,
                                  cohort_name="public pack")
    except ValueError:
        return None
    n = 0 if cohort is None else len(cohort)
    return cal["threshold"], (f"calibrated now at FAR {IDENTITY_CHECK_FAR:g} on the enrolled "
                              f"identities and {n} public pack images")


def check_identity(h: DeviceHome, name: str, prepared: list, *, force: bool = False) -> dict:
    """``enroll``'s same-face check of ``prepared`` images for identity ``name`` against the
    other enrolled identities; raises :class:`DuplicateIdentityError` unless ``force``.

    1. A crop with the same pixels as another identity's image: the same face, whatever the
       model (score 1).
    2. With a model on the device (:func:`_current_model`): the new images' template (mean
       of their normalized embeddings) against every other identity's template; a score at
       or above the threshold of :func:`_identity_threshold` is the same face.

    Returns:
        ``{"checked": False, "reason"}`` without a model or threshold, else ``{"checked":
        True, "model", "threshold", "threshold_source", "closest", "score"}`` (closest and
        score ``None`` when nobody else is enrolled); ``"forced": True`` when it matched.
    """
    from export.bundle import make_templates

    shas = [p[3] for p in prepared]
    rows = h.db.execute(
        "SELECT i.name, m.source_name FROM images m JOIN identities i ON i.id = m.identity_id "
        f"WHERE i.name != ? AND m.sha256 IN ({','.join('?' * len(shas))})",
        (name, *shas)).fetchall()
    forced = False
    if rows:
        other, src = rows[0]
        if not force:
            raise DuplicateIdentityError(
                f"this face is already enrolled as {other!r}: the aligned crop has the same "
                f"pixels as its image {src!r} (score 1.0). The same person under two names "
                f"makes verify accept either name; add the photos to {other!r}, or enroll "
                f"anyway with --force (force=True) if they are different people", other, 1.0,
                None)
        forced = True
    current = _current_model(h)
    if current is None:
        return {"checked": False, "reason": "no model on this device yet (train first); only "
                "identical images were compared", **({"forced": True} if forced else {})}
    embed, model, desc, meta = current
    images, labels, idents = training.enrolled_images(h)
    names = np.asarray([d["name"] for d in idents], dtype=object)
    others = [d["name"] for d in idents if d["name"] != name and (labels == idents.index(d)).any()]
    emb = embed(images) if len(images) else np.zeros((0, 0), np.float32)
    found = _identity_threshold(h, model, meta, embed, emb, names[labels]) if len(emb) else None
    if found is None:
        return {"checked": False, "reason": f"no threshold for the {desc}: fewer than two "
                "identities enrolled and no public pack", **({"forced": True} if forced else {})}
    t, source = found
    new = make_templates({name: embed(np.stack([p[4] for p in prepared]))})[name]
    tpl = make_templates({n: emb[names[labels] == n] for n in others})
    scores = {n: float(tpl[n] @ new) for n in others}
    closest = max(scores, key=scores.get) if scores else None
    out = {"checked": True, "model": desc, "threshold": t, "threshold_source": source,
           "closest": closest, "score": scores.get(closest)}
    if closest is not None and scores[closest] >= t:
        if not force:
            raise DuplicateIdentityError(
                f"this face matches {closest!r}, already enrolled: score "
                f"{scores[closest]:.4f} against {closest!r}'s template, at or above the "
                f"threshold {t:.4f} ({source}) of the {desc}. The same person under two names "
                f"makes verify accept either name; add the photos to {closest!r}, or enroll "
                f"anyway with --force (force=True) if they are different people", closest,
                scores[closest], t)
        forced = True
    return {**out, **({"forced": True} if forced else {})}


def enroll(home: Home, name: str, paths: Sequence[str | os.PathLike[str]], *,
           detector: MTCNNDetector | None = None,
           progress: Callable[[int, int], None] | None = None, force: bool = False,
           check_crops: bool = True) -> dict:
    """Enroll identity ``name`` (created if new) with the images at ``paths``.

    A 112x112 image is taken as an aligned crop when it looks like a face
    (:func:`device_sdk.faces.prepare_face`); ``check_crops=False`` takes such crops as they
    are (aligned crops of a data set, e.g. the synthetic benchmark's cartoon faces).

    Every file is read, and detected and aligned (photos) or taken as is (112x112 crops)
    first; only if all succeed is anything stored, in one transaction: the crops as PNG under
    ``crops/<identity id>/<sha256>.png``, then their rows. Images already enrolled for this
    identity (same pixels after alignment) are skipped.

    The same face under two names is refused unless ``force`` (:func:`check_identity`): a
    crop with the same pixels as another identity's, or — when the device holds a model —
    the new images' template scoring at or above the model's threshold against another
    identity's template. Adding photos to the same name is never refused.

    Returns:
        ``{"name", "created", "added", "skipped_duplicates", "total_images",
        "identity_check"}`` (what the same-face check compared, see :func:`check_identity`).

    Raises:
        EnrollError: naming each file that is unreadable, not an image, or has no face or
            several faces (nothing stored).
        DuplicateIdentityError: the face is already enrolled under another name (nothing
            stored; the message names it and the score).
        DeviceSDKError: a bad name or no file.
    """
    name = validate_name(name)
    files = [Path(p) for p in paths]
    if not files:
        raise DeviceSDKError("no image given: enroll NAME IMAGE [IMAGE ...]")
    prepared = _prepare(files, detector, progress, check_crops)
    with open_home(home) as h:
        check = check_identity(h, name, prepared, force=force)
        result = _store(h, name, prepared)
    return {**result, "identity_check": check} if check["checked"] or check.get("forced") \
        else result


def _store(h: DeviceHome, name: str, prepared: list) -> dict:
    """``enroll``'s transaction: the identity's row if new, the crops and their rows."""
    with h.write() as tx:
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
        for path, png, method, sha, _ in prepared:
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
           far_target: float = 1e-3, make_zip: bool = False, min_tar: float | None = None,
           force: bool = False) -> dict:
    """The personalized recognizer as a bundle (:func:`export.bundle.create_bundle`).

    The model is the device's local backbone → its DFC converter, from its last accepted
    round; the templates are the enrolled identities' images embedded by that model; the
    threshold is calibrated at ``far_target`` on the impostor pairs of the enrolled
    identities against each other, and of the enrolled images against up to
    :data:`CALIBRATION_PUBLIC_IMAGES` public pack images (the cohort: other people than the
    device's). Public-pack-vs-public-pack pairs are not used: the pack is synthetic faces, a
    domain the device's photos are not, and its own pairs alone once gave a threshold that
    rejected every enrolled person. The FAR is held on each source separately.

    Unless ``force``, a calibration whose TAR (or, with one photo per person, its estimate
    from augmented views) is below ``min_tar`` (default
    :data:`export.bundle.DEFAULT_MIN_TAR`), or whose threshold rejects an enrolled image
    against its own template, is refused (:class:`export.bundle.CalibrationError`).

    Returns:
        ``{"bundle", "identities", "model_version", "threshold", "report"}``; the report's
        ``"calibration"`` is also in bundle.json.

    Raises:
        DeviceSDKError: nothing enrolled, or no personalized model yet (train first).
        CalibrationError: a guard failed (the message names the numbers); nothing written.
    """
    import tempfile

    from export.bundle import DEFAULT_MIN_TAR, create_bundle
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
        cohort = cohort_labels = None
        pack_path = training.cached_model_path(h, meta.get("pack_sha256", ""))
        if pack_path.exists():
            pack = PublicPack.load(pack_path)
            if pack.kind == "images":
                cohort, cohort_labels = _cohort_sample(pack, CALIBRATION_PUBLIC_IMAGES)
        with tempfile.TemporaryDirectory(dir=h.path, prefix=".export-") as td:
            onnx_path = export_personalized(model, private, Path(td) / "model.onnx")
            path, report = create_bundle(
                out, model=onnx_path, enrolled=enrolled, far_target=far_target, int8=int8,
                make_zip=make_zip, cohort=cohort, cohort_labels=cohort_labels,
                cohort_name="public pack",
                min_tar=DEFAULT_MIN_TAR if min_tar is None else min_tar, force=force)
        h.set_state("last_bundle", str(Path(path).resolve()))
        # what enroll's same-face check compares against while this model is current
        h.set_state("last_calibration", {
            "threshold": float(report["calibration"]["threshold"]),
            "far_target": float(far_target), "model_sha256": meta.get("model_sha256", ""),
            "trained_at": meta.get("trained_at", ""), "bundle": str(Path(path).resolve())})
    return {"bundle": str(path), "identities": sorted(enrolled),
            "model_version": int(meta.get("model_version", 0)),
            "threshold": float(report["calibration"]["threshold"]) if "calibration" in report
            else None, "report": report}


def _cohort_sample(pack, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` public pack images (a fixed draw) and their labels: the cohort."""
    rng = np.random.default_rng(0)
    sel = np.sort(rng.permutation(len(pack.images))[:n])
    return pack.images[sel], np.asarray(pack.labels, np.int64)[sel]


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
                     detector: MTCNNDetector | None, check_crops: bool = True):
    """``(Bundle, path, crop)`` for verify/identify: the bundle (default: the last export)
    and the aligned face of ``image``."""
    from export.bundle import Bundle

    with open_home(home) as h:
        path = _bundle_path(h, bundle)
    crop, _ = load_face(image, detector=detector, check_crops=check_crops)
    return Bundle.load(path, variant=variant), path, crop


def verify(home: Home, image: str | os.PathLike[str], name: str, *,
           bundle: str | os.PathLike[str] | None = None, variant: str = "fp32",
           detector: MTCNNDetector | None = None, check_crops: bool = True) -> dict:
    """Is the face in ``image`` ``name``? Runs the bundle (default: the last export) with ONNX
    Runtime: ``{"name", "score", "threshold", "accepted", "image", "bundle"}``.

    Raises:
        FaceError / DataFormatError: the image (named) has no usable face or is unreadable.
        UnknownIdentityError: ``name`` is not in the bundle.
        BundleError: the bundle is missing, altered or unusable.
    """
    b, path, crop = _bundle_and_face(home, image, bundle, variant, detector, check_crops)
    key = unicodedata.normalize("NFC", name) if isinstance(name, str) else name
    try:
        r = b.verify(crop, key)
    except KeyError as e:
        raise UnknownIdentityError(str(e.args[0]) if e.args else str(e)) from None
    return {**r, "image": str(image), "bundle": str(path)}


def identify(home: Home, image: str | os.PathLike[str], *,
             bundle: str | os.PathLike[str] | None = None, variant: str = "fp32",
             detector: MTCNNDetector | None = None, check_crops: bool = True) -> dict:
    """Who is the face in ``image``? ``{"name" (or "unknown"), "best", "score", "threshold",
    "image", "bundle"}`` from the bundle (default: the last export)."""
    from export.bundle import UNKNOWN

    b, path, crop = _bundle_and_face(home, image, bundle, variant, detector, check_crops)
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

