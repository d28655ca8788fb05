"""InsightFace / MXNet RecordIO (``train.rec`` + ``train.idx``), read and written without mxnet.

Format (dmlc-core ``recordio``, as used by ``mx.recordio.MXIndexedRecordIO``):

* ``.idx``: text, one line ``"<key>\\t<offset>\\n"`` per record; ``offset`` is the byte position of
  the record's first part in the ``.rec``.
* ``.rec``: a sequence of *parts*. Each part is ``uint32 magic = 0xced7230a`` (little endian),
  ``uint32 lrecord`` (upper 3 bits: continuation flag ``cflag``, lower 29 bits: length), ``length``
  payload bytes, then zero padding to a multiple of 4. A record is one part with ``cflag == 0``,
  or several: ``cflag`` 1 (first), 2 (middle)..., 3 (last). The dmlc writer splits a record where
  the magic word occurs at a 4-aligned position of the payload and drops those 4 bytes; a reader
  joins the parts with the magic word in between. Both directions are implemented here.
* An image record's payload (``mx.recordio.pack``): ``IRHeader`` = ``struct "<IfQQ"``
  ``(flag: uint32, label: float32, id: uint64, id2: uint64)``; if ``flag > 0``, ``flag`` float32
  labels follow (the label is then that array, and the ``label`` field is 0); then the encoded
  image (JPEG or PNG).
* InsightFace training sets (``faces_emore``, ``faces_webface_112x112``, ``glint360k``...) put a
  header record at key 0: ``flag > 0``, no image, ``label = [n + 1, n + 1 + C]``: images are keys
  ``1..n``, followed by ``C`` identity records (key ``n + 1 + c`` with ``label = [first, end)``, the
  image keys of class ``c``). Without that header, every key is an image.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import struct
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fedfr.data.images import decode_image, encode_image
from fedfr.errors import DataFormatError
from fedfr.io import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "IR_FORMAT",
    "IR_SIZE",
    "MAGIC",
    "IRHeader",
    "RecordIODataset",
    "RecordIOReader",
    "encode_record",
    "pack",
    "unpack",
    "write_recordio",
]

#: The dmlc RecordIO magic word, stored little endian.
MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_PART_HEADER = struct.Struct("<II")
_LEN_MASK = (1 << 29) - 1
_MAX_LEN = 1 << 29

#: ``struct`` format of the image-record header (MXNet's ``IRHeader``), and its size (24 bytes).
IR_FORMAT = "<IfQQ"
_IR = struct.Struct(IR_FORMAT)
IR_SIZE = _IR.size

_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


class IRHeader(NamedTuple):
    """Header of an image record.

    Attributes:
        flag: number of float32 labels that follow the header (0: scalar ``label``).
        label: a float, or float32 array ``(flag,)`` when ``flag > 0``.
        id, id2: uint64 fields (im2rec and insightface store the record key in ``id``).
    """

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack(
    label: float | Sequence[float] | np.ndarray, image_bytes: bytes, *, id: int = 0, id2: int = 0
) -> bytes:
    """Build a record payload like ``mx.recordio.pack``.

    Args:
        label: a number (stored in the header, ``flag = 0``) or a sequence of numbers (stored as
            ``flag`` float32 values after the header).
        image_bytes: the encoded image (may be empty, as in insightface header records).
        id, id2: the header's uint64 fields.

    Returns:
        The payload bytes ``header [+ labels] + image_bytes``.
    """
    if isinstance(label, numbers.Number):
        return _IR.pack(0, float(label), int(id), int(id2)) + bytes(image_bytes)
    arr = np.asarray(label, dtype="<f4").ravel()
    if arr.size == 0:
        raise ValueError("a label array must not be empty")
    return _IR.pack(arr.size, 0.0, int(id), int(id2)) + arr.tobytes() + bytes(image_bytes)


def unpack(payload: bytes, *, source: str = "record") -> tuple[IRHeader, bytes]:
    """Split a record payload into its header and the encoded image (``mx.recordio.unpack``).

    Args:
        payload: the bytes returned by :meth:`RecordIOReader.read_record`.
        source: names the record in error messages.

    Returns:
        ``(header, image_bytes)``; ``header.label`` is a float32 array ``(flag,)`` if ``flag > 0``.

    Raises:
        DataFormatError: naming ``source``, if the payload is shorter than its header says.
    """
    if len(payload) < IR_SIZE:
        raise DataFormatError(
            f"{source}: record of {len(payload)} bytes is shorter than its {IR_SIZE}-byte header"
        )
    flag, label, id_, id2 = _IR.unpack_from(payload, 0)
    start = IR_SIZE
    if flag > 0:
        end = IR_SIZE + 4 * flag
        if end > len(payload):
            raise DataFormatError(
                f"{source}: header announces {flag} float labels but the record has only "
                f"{len(payload) - IR_SIZE} bytes after the header"
            )
        labels = np.frombuffer(payload, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
        return IRHeader(flag, labels, id_, id2), bytes(payload[end:])
    return IRHeader(flag, float(label), id_, id2), bytes(payload[start:])


def encode_record(payload: bytes) -> bytes:
    """Frame a payload as dmlc RecordIO part(s), exactly as ``dmlc::RecordIOWriter`` does.

    Where the magic word occurs at a 4-aligned position of the payload the record is split there
    (those 4 bytes are dropped and restored by the reader); the last part is zero padded to a
    multiple of 4 bytes.

    Raises:
        ValueError: for a payload of 2**29 bytes or more (the format's limit).
    """
    data = bytes(payload)
    n = len(data)
    if n >= _MAX_LEN:
        raise ValueError(f"RecordIO records must be shorter than 2**29 bytes, got {n}")
    out = bytearray()
    start = 0
    pos = data.find(_MAGIC_BYTES)
    while pos != -1 and pos + 4 <= (n // 4) * 4:
        if pos % 4 == 0:
            cflag = 1 if start == 0 else 2
            out += _PART_HEADER.pack(MAGIC, (cflag << 29) | (pos - start))
            out += data[start:pos]
            start = pos + 4
            pos = data.find(_MAGIC_BYTES, start)
        else:
            pos = data.find(_MAGIC_BYTES, pos + 1)
    cflag = 3 if start != 0 else 0
    out += _PART_HEADER.pack(MAGIC, (cflag << 29) | (n - start))
    out += data[start:]
    out += b"\x00" * (-(n - start) % 4)  # parts before the last are 4-aligned already
    return bytes(out)


def _default_idx(rec_path: Path) -> Path:
    return rec_path.with_suffix(".idx")


def _parse_idx(idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse an ``.idx`` file into int64 ``keys`` and ``offsets`` (file order)."""
    try:
        text = idx_path.read_bytes().decode("ascii")
    except FileNotFoundError as exc:
        raise DataFormatError(f"{idx_path}: RecordIO index file not found") from exc
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{idx_path}: not a RecordIO index (non-ASCII bytes)") from exc
    except OSError as exc:
        raise DataFormatError(f"{idx_path}: cannot read RecordIO index: {exc}") from exc
    lines = text.splitlines()
    tokens = text.split()
    n_nonempty = sum(1 for ln in lines if ln.strip())
    if len(tokens) == 2 * n_nonempty:  # fast path: two tokens per line, vectorized int parsing
        try:
            pairs = np.array(tokens, dtype=np.int64).reshape(-1, 2)
        except (ValueError, OverflowError):
            pairs = None
        if pairs is not None and (pairs[:, 1] >= 0).all():
            return pairs[:, 0].copy(), pairs[:, 1].copy()
    # Slow path, only to name the offending line.
    for lineno, ln in enumerate(lines, start=1):
        if not ln.strip():
            continue
        parts = ln.split()
        try:
            if len(parts) != 2:
                raise ValueError
            int(parts[0])
            if int(parts[1]) < 0:
                raise ValueError
        except ValueError:
            raise DataFormatError(
                f"{idx_path}: line {lineno}: malformed index line {ln[:80]!r}; "
                "expected '<key>\\t<offset>'"
            ) from None
    raise DataFormatError(f"{idx_path}: malformed RecordIO index")  # pragma: no cover


class RecordIOReader:
    """Random access to the records of an indexed RecordIO file (``mx.recordio.MXIndexedRecordIO``).

    The ``.rec`` is opened lazily, once per process, and read with ``os.pread`` (no shared file
    position), so one reader can serve several threads, and a copy sent to (or forked into) a
    DataLoader worker process reopens the file there.

    Args:
        rec_path: the ``.rec`` file.
        idx_path: its index; default: ``rec_path`` with suffix ``.idx``.

    Attributes:
        rec_path, idx_path: the files.
        key_array: int64 ``(K,)``, the record keys in index-file order.

    Raises:
        DataFormatError: naming the file, if either file is missing, an index line is
            malformed, or an offset lies past the end of the ``.rec``.
    """

    def __init__(
        self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None
    ) -> None:
        self._fd: int | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else _default_idx(self.rec_path)
        if not self.rec_path.is_file():
            raise DataFormatError(f"{self.rec_path}: RecordIO file not found")
        if not self.idx_path.is_file():
            raise DataFormatError(
                f"{self.idx_path}: RecordIO index file not found (needed for {self.rec_path})"
            )
        keys, offsets = _parse_idx(self.idx_path)
        self._size = self.rec_path.stat().st_size
        past = np.flatnonzero(offsets >= self._size)
        if past.size:
            i = int(past[0])
            raise DataFormatError(
                f"{self.idx_path}: key {int(keys[i])}: offset {int(offsets[i])} is past the end "
                f"of {self.rec_path} ({self._size} bytes)"
            )
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        if sk.size > 1 and (sk[1:] == sk[:-1]).any():
            keep_last = np.append(sk[1:] != sk[:-1], True)
            logger.warning(
                "%s: %d duplicate key(s); the last entry of each wins",
                self.idx_path,
                int((~keep_last).sum()),
            )
            order = order[keep_last]
            kept = np.sort(order)
            keys, offsets = keys[kept], offsets[kept]
            order = np.argsort(keys, kind="stable")
        self.key_array = keys
        self._offsets = offsets
        self._sorted_keys = keys[order]
        self._sorted_offsets = offsets[order]

    # -- file handle -------------------------------------------------------------------------
    def _get_fd(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            with self._lock:
                if self._fd is None or self._pid != pid:
                    try:
                        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
                        self._fd = os.open(self.rec_path, flags)
                    except OSError as exc:
                        raise DataFormatError(f"{self.rec_path}: cannot open: {exc}") from exc
                    self._pid = pid
        return self._fd

    def _pread(self, offset: int, n: int) -> bytes:
        fd = self._get_fd()
        if hasattr(os, "pread"):
            chunks = []
            while n > 0:
                b = os.pread(fd, n, offset)
                if not b:
                    break
                chunks.append(b)
                n -= len(b)
                offset += len(b)
            return b"".join(chunks)
        with self._lock:  # pragma: no cover - platforms without pread (Windows)
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, n)

    def close(self) -> None:
        """Close the ``.rec`` file handle (it is reopened on the next read)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._pid = None

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_pid"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- records -----------------------------------------------------------------------------
    @property
    def keys(self) -> list[int]:
        """The record keys, in index-file order (a new list on each access)."""
        return self.key_array.tolist()

    def __len__(self) -> int:
        return int(self.key_array.size)

    def __contains__(self, key: object) -> bool:
        try:
            self._offset(int(key))  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def _offset(self, key: int) -> int:
        i = int(np.searchsorted(self._sorted_keys, key))
        if i >= self._sorted_keys.size or int(self._sorted_keys[i]) != key:
            raise KeyError(f"{self.rec_path}: no record with key {key}")
        return int(self._sorted_offsets[i])

    def _read_part_header(self, pos: int, key: int) -> tuple[int, int]:
        head = self._pread(pos, _PART_HEADER.size)
        if len(head) < _PART_HEADER.size:
            raise DataFormatError(
                f"{self.rec_path}: key {key}: truncated record header at offset {pos} "
                f"(file has {self._size} bytes)"
            )
        magic, lrec = _PART_HEADER.unpack(head)
        if magic != MAGIC:
            raise DataFormatError(
                f"{self.rec_path}: key {key}: bad magic 0x{magic:08x} at offset {pos} "
                f"(expected 0x{MAGIC:08x}); the file is corrupt or the index does not match it"
            )
        return lrec >> 29, lrec & _LEN_MASK

    def _read_body(self, pos: int, length: int, key: int) -> bytes:
        body = self._pread(pos, length)
        if len(body) < length:
            raise DataFormatError(
                f"{self.rec_path}: key {key}: truncated record: {length} bytes expected at "
                f"offset {pos}, {len(body)} available"
            )
        return body

    def read_record(self, key: int) -> bytes:
        """The payload of record ``key`` (multi-part records reassembled).

        Raises:
            KeyError: if the index has no such key.
            DataFormatError: naming the file, key and offset, on a bad magic word, a truncated
                record or an invalid sequence of continuation flags.
        """
        key = int(key)
        pos = self._offset(key)
        parts: list[bytes] = []
        first = True
        while True:
            cflag, length = self._read_part_header(pos, key)
            expected = (0, 1) if first else (2, 3)
            if cflag not in expected:
                raise DataFormatError(
                    f"{self.rec_path}: key {key}: unexpected continuation flag {cflag} at offset "
                    f"{pos} (expected one of {expected})"
                )
            parts.append(self._read_body(pos + _PART_HEADER.size, length, key))
            pos += _PART_HEADER.size + length + (-length % 4)
            if cflag in (0, 3):
                break
            parts.append(_MAGIC_BYTES)
            first = False
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_header(self, key: int) -> IRHeader:
        """The :class:`IRHeader` of record ``key``, reading only its first bytes."""
        key = int(key)
        pos = self._offset(key)
        cflag, length = self._read_part_header(pos, key)
        body_pos = pos + _PART_HEADER.size
        if cflag == 0 and length >= IR_SIZE:
            fixed = self._read_body(body_pos, IR_SIZE, key)
            flag = _IR.unpack(fixed)[0]
            need = IR_SIZE + 4 * flag
            if need <= length:
                prefix = fixed if flag == 0 else self._read_body(body_pos, need, key)
                return unpack(prefix, source=f"{self.rec_path}: key {key}")[0]
        return unpack(self.read_record(key), source=f"{self.rec_path}: key {key}")[0]

    @staticmethod
    def unpack(payload: bytes) -> tuple[IRHeader, bytes]:
        """:func:`unpack`: ``(header, image_bytes)`` of a payload."""
        return unpack(payload)

    def __repr__(self) -> str:
        n = len(self) if hasattr(self, "key_array") else "?"
        return f"RecordIOReader({str(self.rec_path)!r}, records={n})"


def _looks_like_image(data: bytes) -> bool:
    return any(data.startswith(sig) for sig in _IMAGE_SIGNATURES)


def _class_of(label: float | np.ndarray, source: str) -> int:
    value = float(label) if isinstance(label, float) else float(np.asarray(label).ravel()[0])
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise DataFormatError(f"{source}: label {value!r} is not a non-negative integer class")
    return int(value)


class RecordIODataset:
    """The images of an InsightFace RecordIO training set, with integer class labels.

    Image keys: ``1..label[0]-1`` of the header record at key 0 when present (a record with
    ``flag > 0`` whose data is not a JPEG/PNG image; insightface writes none), else every key in
    index order. The class of an image is its
    label, or ``label[0]`` for multi-float labels (as insightface's ``MXFaceDataset`` does).

    Args:
        rec_path, idx_path: see :class:`RecordIOReader`.

    Attributes:
        reader: the :class:`RecordIOReader`.
        image_keys: int64 ``(N,)``, the record key of each item.
        header0: ``(label[0], label[1])`` of the insightface header, or ``None``.

    Raises:
        DataFormatError: as :class:`RecordIOReader`, or if the header points at missing keys.
    """

    def __init__(
        self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None
    ) -> None:
        self.reader = RecordIOReader(rec_path, idx_path)
        self.header0: tuple[int, int] | None = None
        self._labels: np.ndarray | None = None
        self.image_keys = self._resolve_keys()

    def _resolve_keys(self) -> np.ndarray:
        r = self.reader
        if 0 not in r:
            return r.key_array.copy()
        src = f"{r.rec_path}: key 0"
        header, img = unpack(r.read_record(0), source=src)
        if header.flag == 0 or (img and _looks_like_image(img)):
            return r.key_array.copy()
        label = np.asarray(header.label, dtype=np.float64).ravel()
        end = label[0]
        if not math.isfinite(end) or end < 1 or end != int(end):
            raise DataFormatError(f"{src}: header record label {label.tolist()} is not a key range")
        keys = np.arange(1, int(end), dtype=np.int64)
        missing = keys[~np.isin(keys, r.key_array)]
        if missing.size:
            raise DataFormatError(
                f"{r.idx_path}: the header record of {r.rec_path} announces images at keys "
                f"1..{int(end) - 1} but key {int(missing[0])} is not in the index "
                f"({missing.size} missing)"
            )
        second = int(label[1]) if label.size > 1 and math.isfinite(label[1]) else int(end)
        self.header0 = (int(end), second)
        return keys

    def __len__(self) -> int:
        return int(self.image_keys.size)

    def _key(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} images")
        return int(self.image_keys[i])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        """``(image, label)``: uint8 RGB ``(H, W, 3)`` and the int class.

        Raises:
            IndexError: out of range. DataFormatError: corrupt record or undecodable image.
        """
        key = self._key(index)
        src = f"{self.reader.rec_path}: key {key}"
        header, img = unpack(self.reader.read_record(key), source=src)
        return decode_image(img, source=src), _class_of(header.label, src)

    @property
    def labels(self) -> np.ndarray:
        """int64 ``(N,)`` class of every image (record headers only; computed once, cached)."""
        if self._labels is None:
            r = self.reader
            out = np.empty(len(self), dtype=np.int64)
            for i, key in enumerate(self.image_keys.tolist()):
                out[i] = _class_of(r.read_header(key).label, f"{r.rec_path}: key {key}")
            self._labels = out
        return self._labels

    @property
    def num_classes(self) -> int:
        """Number of classes: from the insightface header (``label[1] - label[0]`` identity
        records) when it has them, else ``max(labels) + 1`` (0 for an empty dataset)."""
        if self.header0 is not None and self.header0[1] > self.header0[0]:
            return self.header0[1] - self.header0[0]
        labels = self.labels
        return int(labels.max()) + 1 if labels.size else 0

    def __repr__(self) -> str:
        return f"RecordIODataset({str(self.reader.rec_path)!r}, images={len(self)})"


def write_recordio(
    rec_path: str | os.PathLike[str],
    idx_path: str | os.PathLike[str] | None,
    items: Iterable[tuple[np.ndarray, int | Sequence[float] | np.ndarray]],
    *,
    insightface_header: bool = True,
    image_format: str = "jpeg",
    quality: int = 95,
) -> int:
    """Pack images into an indexed RecordIO file pair readable by mxnet and insightface.

    Args:
        rec_path: the ``.rec`` to write.
        idx_path: its index; ``None``: ``rec_path`` with suffix ``.idx``.
        items: ``(image, label)`` pairs, streamed; image uint8 RGB ``(H, W, 3)``; label an int
            class, or a sequence of floats whose first entry is the class (stored as a
            multi-float label, ``flag = len(label)``).
        insightface_header: write the insightface layout: header record at key 0
            (``label = [n + 1, n + 1 + C]``), images at keys ``1..n`` (``id`` = key), identity
            records ``n + 1 + c`` with ``label = [first key, last key + 1]`` of class ``c`` for
            ``c`` in ``0..C-1`` (``C = max class + 1``). Otherwise images at keys ``0..n-1``.
        image_format: ``"jpeg"`` or ``"png"``.
        quality: JPEG quality.

    Returns:
        The number of images written.

    Both files are written to temporary files next to them and renamed into place when complete.

    Raises:
        ValueError: on a bad image, label or format.
    """
    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path is not None else _default_idx(rec_path)
    encode_image(np.zeros((1, 1, 3), np.uint8), image_format)  # validates image_format early
    # The .idx is renamed into place after the .rec (the outer context exits last).
    with atomic_path(idx_path) as idx_tmp, atomic_path(rec_path) as rec_tmp:
        index: list[tuple[int, int]] = []
        ranges: dict[int, list[int]] = {}
        with open(rec_tmp, "wb") as f:

            def put(key: int, payload: bytes) -> None:
                index.append((key, f.tell()))
                f.write(encode_record(payload))

            placeholder = b""
            if insightface_header:
                placeholder = encode_record(pack([0.0, 0.0], b"", id=0))
                put(0, pack([0.0, 0.0], b"", id=0))
            key = 1 if insightface_header else 0
            n = 0
            noncontiguous: set[int] = set()
            for img, label in items:
                src = f"item {n}"
                if isinstance(label, numbers.Number):
                    if isinstance(label, float | np.floating) and not float(label).is_integer():
                        raise ValueError(f"{src}: label {label!r} is not an integer class")
                    cls = int(label)
                    stored: Any = cls
                else:
                    stored = np.asarray(label, dtype=np.float32).ravel()
                    if stored.size == 0:
                        raise ValueError(f"{src}: empty label sequence")
                    first = float(stored[0])
                    if not first.is_integer():
                        raise ValueError(f"{src}: label[0] = {first!r} is not an integer class")
                    cls = int(first)
                if cls < 0:
                    raise ValueError(f"{src}: negative class {cls}")
                put(key, pack(stored, encode_image(img, image_format, quality=quality), id=key))
                r = ranges.get(cls)
                if r is None:
                    ranges[cls] = [key, key + 1]
                else:
                    if r[1] != key:
                        noncontiguous.add(cls)
                    r[1] = key + 1
                key += 1
                n += 1
            if insightface_header:
                num_classes = max(ranges) + 1 if ranges else 0
                if noncontiguous:
                    logger.warning(
                        "%s: %d class(es) have non-contiguous images; their identity records "
                        "span [first, last + 1) and include other classes' images",
                        rec_path,
                        len(noncontiguous),
                    )
                first_id = n + 1
                for c in range(num_classes):
                    r = ranges.get(c, [first_id, first_id])
                    put(first_id + c, pack([float(r[0]), float(r[1])], b"", id=first_id + c))
                header = encode_record(
                    pack([float(first_id), float(first_id + num_classes)], b"", id=0)
                )
                if len(header) != len(placeholder):  # cannot happen for non-negative counts
                    raise RuntimeError("RecordIO header record changed size")
                f.seek(0)
                f.write(header)
        with open(idx_tmp, "w", encoding="ascii", newline="\n") as g:
            g.writelines(f"{k}\t{off}\n" for k, off in index)
    logger.info("wrote %d images to %s (+ %s)", n, rec_path, idx_path)
    return n
