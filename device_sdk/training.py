"""``device_sdk train``: take part in federated rounds (PRODUCT.md §2 steps 2-4, §4).

One round, as the device sees it:

1. ``POST /v1/checkin`` — a task, or ``204`` with ``Retry-After`` (the device waits that long);
2. download the round's model version and public pack into the device home's cache
   (``models/<sha256>.bin``; resumable, sha256-checked, reused by later rounds);
3. :func:`fedfr.train.local.local_round` — the one FedFR local step the simulator also runs —
   on this device's enrolled identities (labels = their stable label order), with the
   private state of its previous round, configured by the round's ``config``
   (:func:`fedfr.train.methods.round_config`);
4. store the update to upload and the new private state as **pending** (one transaction), then
   upload with retries; once the server has the update (``202``, or a retry's duplicate
   receipt) or the round has closed without it, the pending private state becomes the
   device's private state.

A run interrupted during training stores nothing and trains again on the next check-in (the
server gives an assigned device its task again). A run interrupted during the upload leaves
the pending update, which the next ``train`` sends first — the same bytes, so the server
answers with the same receipt if it had already received them.

What leaves the device: the encoded :class:`fedfr.fl.SharedUpdate` (backbone tensors, the
public class rows it trained, the number of images, loss and train accuracy) and the HTTP
requests around it. The private state (identity weights, DFC converter and classifiers, the
local backbone) stays in ``HOME/private/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_sdk import client
from device_sdk.errors import DeviceSDKError, NotRegisteredError, ServerError
from device_sdk.home import DeviceHome, utc_now
from fedfr.io import sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "NoRoundError",
    "RoundConfigError",
    "load_private",
    "train",
]

PRIVATE_FILE = "private/state.safetensors"
PENDING_PRIVATE_FILE = "private/pending-state.safetensors"
PENDING_UPDATE_FILE = "private/pending-update.safetensors"
LABELS_KEY = "local.labels"
#: Waiting for a round when the server sends no ``Retry-After``.
DEFAULT_POLL_SECONDS = 30.0

Event = Callable[[str, dict], None]


class NoRoundError(DeviceSDKError):
    """``train`` waited ``wait`` seconds and the server had no round for this device."""


class RoundConfigError(DeviceSDKError):
    """The round's training config cannot be used by this SDK (the message says why)."""


# ------------------------------------------------------------------------- local data
def enrolled_images(home: DeviceHome) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Every enrolled crop as uint8 ``(N, 112, 112, 3)``, its row index into the identities
    (ordered by stable label), and the identities ``[{"id", "name", "label"}]``."""
    from fedfr.data.images import decode_image

    idents = [{"id": i, "name": n, "label": lab} for i, n, lab in home.db.execute(
        "SELECT id, name, label FROM identities ORDER BY label")]
    row = {d["id"]: k for k, d in enumerate(idents)}
    images, labels = [], []
    for ident, rel in home.db.execute("SELECT identity_id, path FROM images ORDER BY "
                                      "identity_id, id"):
        p = home.path / rel
        images.append(decode_image(p.read_bytes(), source=str(p)))
        labels.append(row[ident])
    if not images:
        return np.zeros((0, 112, 112, 3), np.uint8), np.zeros(0, np.int64), idents
    return np.stack(images), np.asarray(labels, np.int64), idents


# ------------------------------------------------------------------------- private state
def _read_private(path: Path):
    """``(PrivateState, stable labels of its rows, metadata)`` from one read of the file."""
    from safetensors import safe_open

    from fedfr.train.local_state import PrivateState

    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata() or {})
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    labels = arrays.pop(LABELS_KEY)
    return PrivateState.from_arrays(arrays), labels.astype(np.int64), meta


def _private_bytes(private, labels: np.ndarray, meta: dict[str, str]) -> bytes:
    from safetensors.numpy import save

    arrays = {k: np.array(v, order="C") for k, v in private.to_arrays().items()}
    arrays[LABELS_KEY] = np.asarray(labels, np.int64)
    return save(arrays, metadata=meta)


def _private_meta(path: Path) -> dict[str, str]:
    """The private state file's metadata (the model and round it was trained from)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def private_summary(home: DeviceHome) -> tuple[dict[str, str], int]:
    """``(metadata, rounds trained)`` of the current private state; ``({}, 0)`` before any."""
    from safetensors import safe_open

    path = home.path / PRIVATE_FILE
    if not path.exists():
        return {}, 0
    with safe_open(str(path), framework="numpy") as f:
        has = "local.rounds" in f.keys()  # noqa: SIM118
        return dict(f.metadata() or {}), int(f.get_tensor("local.rounds")) if has else 0


def load_private(home: DeviceHome, labels: list[int]):
    """The private state aligned to the identities with stable ``labels`` (in this order):
    rows of forgotten identities dropped, NaN rows for identities new since the last round.

    Returns:
        ``(PrivateState | None, metadata)`` — ``None`` before the first round.
    """
    from dataclasses import replace

    path = home.path / PRIVATE_FILE
    if not path.exists():
        return None, {}
    private, stored, meta = _read_private(path)
    pos = {int(lab): k for k, lab in enumerate(stored)}

    def align(rows):
        if rows is None:
            return None
        out = np.full((len(labels), *rows.shape[1:]), np.nan, np.float32)
        for k, lab in enumerate(labels):
            if lab in pos:
                out[k] = rows[pos[lab]]
        return out

    return replace(private, identity_weights=align(private.identity_weights),
                   binary_weights=align(private.binary_weights),
                   binary_bias=align(private.binary_bias)), meta


def scrub_private(home: DeviceHome, tx, label: int) -> None:
    """Inside ``forget``'s transaction: remove identity ``label``'s rows from the private
    state files (current and pending)."""
    from dataclasses import replace

    for rel in (PRIVATE_FILE, PENDING_PRIVATE_FILE):
        path = home.path / rel
        if not path.exists():
            continue
        private, stored, meta = _read_private(path)
        keep = stored != label
        if keep.all():
            continue

        def sel(rows, keep=keep):
            return None if rows is None else np.ascontiguousarray(rows[keep])

        private = replace(private, identity_weights=sel(private.identity_weights),
                          binary_weights=sel(private.binary_weights),
                          binary_bias=sel(private.binary_bias))
        tx.write_file(path, _private_bytes(private, stored[keep], meta))


# ------------------------------------------------------------------------- model cache
def cached_model_path(home: DeviceHome, sha256: str) -> Path:
    return home.path / "models" / f"{sha256}.bin"


def _fetch(home: DeviceHome, dc: client.DeviceClient, spec: dict, what: str,
           progress: bool) -> Path:
    sha, size = str(spec["sha256"]), int(spec["size"])
    if not (len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ServerError(200, "invalid_response", f"the task's {what} sha256 is {sha!r}")
    dest = cached_model_path(home, sha)
    if dest.exists():  # reused only while it is still exactly what the server announced
        if dest.stat().st_size == size and sha256_file(dest) == sha:
            return dest
        logger.warning("%s: the cached file is damaged; downloading it again", dest)
        dest.unlink()
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=size, desc=f"download {what}", unit="B", unit_scale=True,
                   file=sys.stderr, leave=False, disable=not sys.stderr.isatty())

    def tick(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)

    try:
        return dc.download(spec["url"], dest, sha256=sha, size=size, progress=tick)
    finally:
        if bar is not None:
            bar.close()


def _prune_cache(home: DeviceHome, keep: set[str]) -> None:
    for p in (home.path / "models").glob("*.bin"):
        if p.stem not in keep:
            p.unlink(missing_ok=True)


# ------------------------------------------------------------------------- one round
@dataclass
class _Pending:
    round_id: int
    model_version: int
    upload_url: str
    sha256: str
    size: int


def _pending(home: DeviceHome) -> _Pending | None:
    d = home.get_state("pending_upload")
    if not d:
        return None
    if not (home.path / PENDING_UPDATE_FILE).exists():  # crash before the file: drop it
        return None
    return _Pending(**d)


def _finish_pending(home: DeviceHome, keep_private: bool) -> None:
    """The pending update is done with: promote (or drop) the pending private state."""
    with home.write():
        pend = home.path / PENDING_PRIVATE_FILE
        if keep_private and pend.exists():
            os.replace(pend, home.path / PRIVATE_FILE)
        else:
            pend.unlink(missing_ok=True)
        (home.path / PENDING_UPDATE_FILE).unlink(missing_ok=True)
        home.set_state("pending_upload", None)


def _upload_pending(home: DeviceHome, dc: client.DeviceClient, p: _Pending,
                    emit: Event) -> dict | None:
    """Send the pending update; returns the receipt, or ``None`` when the round no longer
    takes it (closed, unknown, not assigned). Other refusals drop it and raise."""
    body = (home.path / PENDING_UPDATE_FILE).read_bytes()
    if hashlib.sha256(body).hexdigest() != p.sha256:
        logger.warning("the pending update file is damaged; dropping it")
        _finish_pending(home, keep_private=False)
        return None
    t0 = time.perf_counter()
    try:
        receipt = dc.upload(p.upload_url, body)
    except ServerError as e:
        if e.status >= 500 or e.status == 429:  # the server's trouble: send it again later
            raise
        if e.status in (403, 404, 409) and e.reason in ("round_closed", "unknown_round",
                                                         "not_assigned", "already_received"):
            emit("upload_refused", {"round_id": p.round_id, "reason": e.reason,
                                    "detail": e.detail})
            _finish_pending(home, keep_private=True)  # the local training stands
            return None
        _finish_pending(home, keep_private=False)
        raise
    receipt["upload_s"] = time.perf_counter() - t0
    _finish_pending(home, keep_private=True)
    return receipt


def _task_config(task: dict, device: str):
    from fedfr.train.methods import round_config

    try:
        cfg = round_config(task.get("config") or {})
    except ValueError as e:
        raise RoundConfigError(f"round {task['round_id']}: {e}") from None
    if cfg.public == "images" and not task.get("public_pack"):
        raise RoundConfigError(f"round {task['round_id']}: its method mines public images but "
                               f"model version {task['model_version']} has no public pack")
    return cfg.with_(device=device)


def _train_round(home: DeviceHome, dc: client.DeviceClient, task: dict, *, device: str,
                 progress: bool, emit: Event) -> dict:
    from fedfr.fl import GlobalModel
    from fedfr.fl.wire import encode_update
    from fedfr.train.local import LocalTrainer
    from fedfr.train.local_state import PublicPack

    rid, version = int(task["round_id"]), int(task["model_version"])
    cfg = _task_config(task, device)
    sent0, recv0 = dc.bytes_sent, dc.bytes_received
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model_path = _fetch(home, dc, task["model"], f"model v{version}", progress)
    pack_path = None
    if cfg.public == "images":
        pack_path = _fetch(home, dc, task["public_pack"], "public pack", progress)
    timings["download_s"] = time.perf_counter() - t0
    model = GlobalModel.load(model_path)
    pack = PublicPack.load(pack_path) if pack_path is not None else None
    with home.write():  # the versions this device holds (for export and status)
        home.db.execute("INSERT INTO models (version, sha256, path, size, created_at) VALUES "
                        "(?, ?, ?, ?, ?) ON CONFLICT (version) DO UPDATE SET sha256 = "
                        "excluded.sha256, path = excluded.path, size = excluded.size",
                        (version, task["model"]["sha256"],
                         model_path.relative_to(home.path).as_posix(),
                         int(task["model"]["size"]), utc_now()))

    images, labels, idents = enrolled_images(home)
    if len(idents) == 0 or len(images) < 2:
        raise DeviceSDKError("nothing to train on: enroll at least one identity with two "
                             "images or more (device_sdk enroll NAME IMAGE...)")
    if pack is not None and pack.kind == "images" and pack.images.shape[1:3] != images.shape[1:3]:
        raise RoundConfigError(f"round {rid}: the public pack's images are "
                               f"{pack.images.shape[1]}x{pack.images.shape[2]}, this device's "
                               f"aligned crops {images.shape[1]}x{images.shape[2]}; the pack "
                               f"must hold aligned crops of the input contract's size")
    stable = [int(d["label"]) for d in idents]
    private, _ = load_private(home, stable)
    creds = home.credentials()
    seed = int.from_bytes(hashlib.sha256(f"{creds.device_id}:{rid}".encode()).digest()[:4],
                          "little")
    trainer = LocalTrainer(model, images, labels, cfg.with_(seed=seed),
                           round_index=0 if private is None else private.rounds,
                           private=private, pack=pack)
    emit("training", {"round_id": rid, "model_version": version, "images": len(images),
                      "identities": len(idents), "device": str(trainer.device)})
    result = trainer.run(progress=progress, desc=f"round {rid}")
    timings["mining_s"] = result.metrics.get("mining_s", 0.0)
    timings["prepare_s"] = result.metrics.get("prepare_s", 0.0)
    timings["train_s"] = result.metrics.get("train_s", 0.0)

    body = encode_update(result.update, base_version=version, round_id=rid)
    sha = hashlib.sha256(body).hexdigest()
    meta = {"model_version": str(version), "model_sha256": task["model"]["sha256"],
            "pack_sha256": (task.get("public_pack") or {}).get("sha256", ""),
            "round_id": str(rid), "trained_at": utc_now()}
    with home.write() as tx:
        tx.write_file(home.path / PENDING_UPDATE_FILE, body)
        tx.write_file(home.path / PENDING_PRIVATE_FILE,
                      _private_bytes(result.private, np.asarray(stable), meta))
        home.set_state("pending_upload", {"round_id": rid, "model_version": version,
                                          "upload_url": task["upload_url"], "sha256": sha,
                                          "size": len(body)})
    receipt = _upload_pending(home, dc, _pending(home), emit)
    timings["upload_s"] = receipt.pop("upload_s", 0.0) if receipt else 0.0
    keep = {task["model"]["sha256"]}
    if task.get("public_pack"):
        keep.add(task["public_pack"]["sha256"])
    if (home.path / PRIVATE_FILE).exists():  # what the personalized state belongs to
        meta = _private_meta(home.path / PRIVATE_FILE)
        keep |= {meta.get("model_sha256", ""), meta.get("pack_sha256", "")}
    _prune_cache(home, keep)
    return {"round_id": rid, "model_version": version, "accepted": receipt is not None,
            "num_samples": int(result.update.num_samples), "identities": len(idents),
            "update_bytes": len(body), "bytes_sent": dc.bytes_sent - sent0,
            "bytes_received": dc.bytes_received - recv0, "timings": timings,
            "metrics": {k: float(result.metrics[k]) for k in
                        ("loss", "train_accuracy", "hard_negatives", "epochs",
                         "images_per_second") if k in result.metrics}}


# ------------------------------------------------------------------------- the command
def add_traffic(home: DeviceHome, sent: int, received: int) -> None:
    t = home.get_state("traffic", {"sent": 0, "received": 0})
    home.set_state("traffic", {"sent": int(t["sent"]) + int(sent),
                               "received": int(t["received"]) + int(received)})


def train(home: DeviceHome, *, rounds: int | None = 1, wait: float | None = None,
          device: str = "auto", progress: bool = False, retry: client.Retry | None = None,
          http=None, sleep: Callable[[float], None] = time.sleep,
          on_event: Event | None = None) -> dict:
    """Take part in ``rounds`` rounds (``None``: forever), then return what happened.

    Args:
        rounds: rounds whose update the server accepted before returning; ``None`` = forever.
        wait: give up (:class:`NoRoundError`) after this many seconds without a task;
            ``None`` waits as long as it takes.
        device: ``auto``, ``cpu``, ``cuda``... (where the local step runs).
        on_event: ``(kind, data)`` callback for progress lines (``waiting``, ``training``,
            ``uploaded``, ``upload_refused``).

    Returns:
        ``{"rounds": [per round: round_id, model_version, accepted, num_samples,
        update_bytes, bytes_sent, bytes_received, timings, metrics], "bytes_sent",
        "bytes_received"}``.
    """
    creds = home.credentials()
    if creds is None:
        raise NotRegisteredError("this device is not registered: run device_sdk register "
                                 "--server URL --enrollment-token TOKEN first")
    if rounds is not None and rounds < 1:
        raise DeviceSDKError(f"rounds must be >= 1, got {rounds}")

    def emit(kind: str, data: dict) -> None:
        logger.info("%s %s", kind, data)
        if on_event is not None:
            on_event(kind, data)

    (n_images,) = home.db.execute("SELECT COUNT(*) FROM images").fetchone()
    if n_images < 2:  # before checking in: a task would hold a place in the round for nothing
        raise DeviceSDKError("nothing to train on: enroll at least one identity with two "
                             "images or more (device_sdk enroll NAME IMAGE...)")
    with _train_lock(home):
        return _train(home, creds, rounds=rounds, wait=wait, device=device,
                      progress=progress, retry=retry, http=http, sleep=sleep, emit=emit)


@contextlib.contextmanager
def _train_lock(home: DeviceHome) -> Iterator[None]:
    """One ``train`` per home at a time (an OS lock: released when the process dies)."""
    import fcntl

    fd = os.open(home.path / "train.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeviceSDKError(f"another device_sdk train is running on {home.path}") from None
        yield
    finally:
        os.close(fd)


def _train(home: DeviceHome, creds, *, rounds: int | None, wait: float | None, device: str,
           progress: bool, retry: client.Retry | None, http, sleep: Callable[[float], None],
           emit: Event) -> dict:
    done: list[dict] = []
    accepted = 0
    dc = client.DeviceClient(creds.server_url, creds.device_token, retry=retry, http=http)
    try:
        p = _pending(home)
        if p is not None:  # an upload an earlier run did not finish
            emit("resuming_upload", {"round_id": p.round_id})
            receipt = _upload_pending(home, dc, p, emit)
            if receipt is not None:
                accepted += 1
                done.append({"round_id": p.round_id, "model_version": p.model_version,
                             "accepted": True, "resumed": True, "update_bytes": p.size})
                emit("uploaded", done[-1])
        waited_since = time.monotonic()
        while rounds is None or accepted < rounds:
            task, retry_after = dc.checkin()
            if task is None:
                delay = DEFAULT_POLL_SECONDS if retry_after is None else retry_after
                if wait is not None and time.monotonic() - waited_since + delay > wait:
                    raise NoRoundError(f"no round for this device within {wait:g} s "
                                       f"({accepted} round(s) done)")
                emit("waiting", {"seconds": delay})
                sleep(delay)
                continue
            r = _train_round(home, dc, task, device=device, progress=progress, emit=emit)
            done.append(r)
            if r["accepted"]:
                accepted += 1
                emit("uploaded", r)
            waited_since = time.monotonic()
    finally:
        add_traffic(home, dc.bytes_sent, dc.bytes_received)
        dc.close()
    return {"rounds": done, "bytes_sent": dc.bytes_sent, "bytes_received": dc.bytes_received}
