"""What travels between a device and the aggregator, as safetensors files (numpy only).

- An **update** (device → server): the shared tensors of :class:`~fedfr.fl.params.SharedUpdate`
  plus string metadata — ``format=fedfr-update``, ``format_version``, ``base_version``,
  ``round_id``, ``num_samples`` and ``metrics`` (a JSON object of numbers, aggregates only).
- A **public pack** (server → device): the public face crops a device mines hard negatives
  from — ``images`` uint8 (P, H, W, 3) and ``labels`` int64 (P,) row numbers into the public
  class embedding matrix — or, for the embedding-only variant, no tensor at all.

Both sides call these functions, so the device SDK and the aggregator cannot drift apart.
Decoding is strict: anything that is not exactly this format raises
:class:`~fedfr.errors.DataFormatError` with the reason, and never returns a partial result.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedfr.errors import DataFormatError
from fedfr.fl.params import SharedUpdate

UPDATE_FORMAT = "fedfr-update"
UPDATE_FORMAT_VERSION = "1"
PACK_FORMAT = "fedfr-public-pack"
PACK_FORMAT_VERSION = "1"
PACK_KINDS = ("images", "embeddings")

#: Longest metadata JSON accepted in an update (metrics are a handful of numbers).
MAX_METADATA_BYTES = 64 * 1024


@dataclass(frozen=True, eq=False)
class UpdateEnvelope:
    """A decoded upload: the update and the round it answers."""

    update: SharedUpdate
    base_version: int
    round_id: int


def _contiguous(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # np.array(order="C"), not ascontiguousarray: that one turns 0-d counters into (1,).
    return {k: np.array(v, order="C") for k, v in arrays.items()}


def encode_update(update: SharedUpdate, *, base_version: int, round_id: int) -> bytes:
    """The upload body for ``update`` (a safetensors file in memory)."""
    from safetensors.numpy import save

    meta = {
        "format": UPDATE_FORMAT,
        "format_version": UPDATE_FORMAT_VERSION,
        "base_version": str(int(base_version)),
        "round_id": str(int(round_id)),
        "num_samples": str(int(update.num_samples)),
        "metrics": json.dumps(update.metrics, sort_keys=True),
    }
    return save(_contiguous(update.arrays), metadata=meta)


def _int_field(meta: dict, key: str, minimum: int) -> int:
    raw = meta.get(key)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise DataFormatError(f"update metadata {key!r} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise DataFormatError(f"update metadata {key!r} must be >= {minimum}, got {value}")
    return value


def parse_update_metadata(meta: dict | None) -> tuple[int, int, int, dict[str, float]]:
    """``(base_version, round_id, num_samples, metrics)`` from an update's metadata.

    Raises:
        DataFormatError: not a fedfr update, an unsupported version, or a bad field.
    """
    meta = meta or {}
    if meta.get("format") != UPDATE_FORMAT:
        raise DataFormatError(f"not a fedfr update (format={meta.get('format')!r})")
    if meta.get("format_version") != UPDATE_FORMAT_VERSION:
        raise DataFormatError(f"unsupported update format version {meta.get('format_version')!r}"
                              f" (this server reads {UPDATE_FORMAT_VERSION})")
    if sum(len(k) + len(v) for k, v in meta.items()) > MAX_METADATA_BYTES:
        raise DataFormatError(f"update metadata larger than {MAX_METADATA_BYTES} bytes")
    base = _int_field(meta, "base_version", 0)
    round_id = _int_field(meta, "round_id", 0)
    num = _int_field(meta, "num_samples", 1)
    try:
        metrics = json.loads(meta.get("metrics", "{}"))
    except ValueError as e:
        raise DataFormatError(f"update metrics are not JSON: {e}") from None
    if not isinstance(metrics, dict):
        raise DataFormatError("update metrics must be a JSON object of numbers")
    clean = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
            raise DataFormatError(f"update metric {k!r} must be a finite number, got {v!r}")
        clean[str(k)] = float(v)
    return base, round_id, num, clean


def _read_safetensors(path: Path | None, data: bytes | None, what: str
                      ) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors import safe_open
    from safetensors.numpy import load

    try:
        if path is not None:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        else:
            meta = _metadata_of_bytes(data)
            arrays = load(data)
    except DataFormatError:
        raise
    except Exception as e:  # safetensors raises its own and builtin types on bad input
        raise DataFormatError(f"{what} is not a valid safetensors file: {e}") from None
    return meta, arrays


def _metadata_of_bytes(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file held in memory."""
    if len(data) < 8:
        raise DataFormatError("safetensors file shorter than its 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise DataFormatError("safetensors header length exceeds the file")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as e:
        raise DataFormatError(f"safetensors header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise DataFormatError("safetensors header is not a JSON object")
    return dict(header.get("__metadata__") or {})


def decode_update(source: bytes | str | os.PathLike[str]) -> UpdateEnvelope:
    """Read an upload (bytes, or a file path: memory-mapped) into an :class:`UpdateEnvelope`.

    Checks the format, the metadata and that every tensor is shared (no private name). Shapes
    against a model are the aggregator's check (:mod:`aggregator.validation`).

    Raises:
        DataFormatError: anything malformed, with the reason.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        meta, arrays = _read_safetensors(None, bytes(source), "update")
    else:
        meta, arrays = _read_safetensors(Path(source), None, "update")
    base, round_id, num, metrics = parse_update_metadata(meta)
    try:
        update = SharedUpdate(arrays=arrays, num_samples=num, metrics=metrics)
    except ValueError as e:
        raise DataFormatError(f"update tensors: {e}") from None
    return UpdateEnvelope(update=update, base_version=base, round_id=round_id)


def save_public_pack(path: str | os.PathLike[str], kind: str, images: np.ndarray | None = None,
                     labels: np.ndarray | None = None, *, metadata: dict | None = None) -> Path:
    """Write a public pack (atomically)."""
    from safetensors.numpy import save_file

    from fedfr.io import atomic_path

    if kind not in PACK_KINDS:
        raise ValueError(f"public pack kind must be one of {PACK_KINDS}, got {kind!r}")
    tensors: dict[str, np.ndarray] = {}
    if kind == "images":
        if images is None or labels is None:
            raise ValueError("an 'images' public pack needs images and labels")
        _check_pack(np.asarray(images), np.asarray(labels))
        tensors = {"images": np.array(images, np.uint8, order="C"),
                   "labels": np.array(labels, np.int64, order="C")}
    meta = {"format": PACK_FORMAT, "format_version": PACK_FORMAT_VERSION, "kind": kind,
            "metadata": json.dumps(metadata or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def _check_pack(images: np.ndarray, labels: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataFormatError(f"public pack images must be uint8 (P, H, W, 3), got "
                              f"{images.dtype} {images.shape}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"public pack labels must be (P,) integers, got {labels.dtype} "
                              f"{labels.shape} for {len(images)} images")
    if labels.size and labels.min() < 0:
        raise DataFormatError("public pack labels must be row numbers >= 0")


def load_public_pack(path: str | os.PathLike[str]) -> tuple[str, np.ndarray | None,
                                                             np.ndarray | None, dict]:
    """``(kind, images, labels, metadata)`` of a public pack file.

    Raises:
        DataFormatError: unreadable, not a public pack, or inconsistent tensors.
    """
    path = Path(path)
    meta, arrays = _read_safetensors(path, None, f"public pack {path}")
    if meta.get("format") != PACK_FORMAT:
        raise DataFormatError(f"{path}: not a fedfr public pack (format={meta.get('format')!r})")
    if meta.get("format_version") != PACK_FORMAT_VERSION:
        raise DataFormatError(f"{path}: unsupported public pack version "
                              f"{meta.get('format_version')!r}")
    kind = meta.get("kind")
    if kind not in PACK_KINDS:
        raise DataFormatError(f"{path}: unknown public pack kind {kind!r}")
    try:
        user = json.loads(meta.get("metadata", "{}"))
    except ValueError as e:
        raise DataFormatError(f"{path}: public pack metadata is not JSON: {e}") from None
    if kind == "embeddings":
        if arrays:
            raise DataFormatError(f"{path}: an 'embeddings' pack carries no tensor")
        return kind, None, None, user
    if set(arrays) != {"images", "labels"}:
        raise DataFormatError(f"{path}: an 'images' pack holds exactly 'images' and 'labels', "
                              f"got {sorted(arrays)}")
    try:
        _check_pack(arrays["images"], arrays["labels"])
    except DataFormatError as e:
        raise DataFormatError(f"{path}: {e}") from None
    return kind, arrays["images"], arrays["labels"].astype(np.int64), user


# --------------------------------------------------------------------------- validation sets
VALIDATION_FORMAT = "fedfr-validation-set"
VALIDATION_FORMAT_VERSION = "1"


@dataclass(frozen=True, eq=False)
class ValidationSet:
    """The server's held-out face crops it evaluates every model version on (never sent to a
    device): ``images`` uint8 (N, H, W, 3) RGB and ``labels`` int64 (N,) identity labels, with
    free-form JSON ``metadata`` (its source)."""

    images: np.ndarray
    labels: np.ndarray
    metadata: dict

    @property
    def num_identities(self) -> int:
        return len(np.unique(self.labels))


def _check_validation(images: np.ndarray, labels: np.ndarray, where: str = "") -> None:
    pre = f"{where}: " if where else ""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataFormatError(f"{pre}validation images must be uint8 (N, H, W, 3), got "
                              f"{images.dtype} {images.shape}")
    if min(images.shape[1:3]) < 8:
        raise DataFormatError(f"{pre}validation images of {images.shape[1]}x{images.shape[2]} "
                              f"pixels are too small to be face crops")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{pre}validation labels must be (N,) integers, got {labels.dtype} "
                              f"{labels.shape} for {len(images)} images")
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2:
        raise DataFormatError(f"{pre}a validation set needs at least 2 identities (impostor "
                              f"pairs), got {len(counts)}")
    if counts.max() < 2:
        raise DataFormatError(f"{pre}a validation set needs an identity with at least 2 images "
                              f"(genuine pairs); every identity has one")


def save_validation_set(path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray,
                        *, metadata: dict | None = None) -> Path:
    """Write a validation set file (atomically).

    Raises:
        DataFormatError: the arrays are not a usable validation set.
    """
    from safetensors.numpy import save_file

    from fedfr.io import atomic_path

    images, labels = np.asarray(images), np.asarray(labels)
    _check_validation(images, labels)
    meta = {"format": VALIDATION_FORMAT, "format_version": VALIDATION_FORMAT_VERSION,
            "metadata": json.dumps(metadata or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"images": np.array(images, np.uint8, order="C"),
                   "labels": np.array(labels, np.int64, order="C")}, str(tmp), metadata=meta)
    return path


def load_validation_set(path: str | os.PathLike[str]) -> ValidationSet:
    """Read a validation set file.

    Raises:
        DataFormatError: unreadable, not a validation set (a public pack, an update...), another
            format version, or tensors that are not a usable validation set.
    """
    path = Path(path)
    meta, arrays = _read_safetensors(path, None, f"validation set {path}")
    fmt = meta.get("format")
    if fmt != VALIDATION_FORMAT:
        hint = " (a public pack: devices train on it; pass the --validation-out file)" \
            if fmt == PACK_FORMAT else ""
        raise DataFormatError(f"{path}: not a fedfr validation set (format={fmt!r}){hint}")
    if meta.get("format_version") != VALIDATION_FORMAT_VERSION:
        raise DataFormatError(f"{path}: unsupported validation set version "
                              f"{meta.get('format_version')!r} (this code reads "
                              f"{VALIDATION_FORMAT_VERSION})")
    try:
        user = json.loads(meta.get("metadata", "{}"))
    except ValueError as e:
        raise DataFormatError(f"{path}: validation set metadata is not JSON: {e}") from None
    if not isinstance(user, dict):
        raise DataFormatError(f"{path}: validation set metadata must be a JSON object")
    if set(arrays) != {"images", "labels"}:
        raise DataFormatError(f"{path}: a validation set holds exactly 'images' and 'labels', "
                              f"got {sorted(arrays)}")
    _check_validation(arrays["images"], arrays["labels"], str(path))
    return ValidationSet(arrays["images"], arrays["labels"].astype(np.int64), user)
