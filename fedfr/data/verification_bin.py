"""InsightFace verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``...), loaded safely.

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` the ``2N`` encoded images (JPEG/PNG
bytes), pair ``i`` being ``bins[2i], bins[2i+1]``; ``issame_list`` the ``N`` booleans (Python
``bool`` or numpy ``bool_``). Files made under Python 2 hold ``str`` images, read back as bytes
with ``encoding="bytes"``, which is how this module always unpickles.

Pickles can run arbitrary code, so they are never read with ``pickle.load``: the unpickler below
resolves only an explicit allow-list of globals (what numpy bool scalars, bool arrays and
protocol-2 bytes need) and refuses everything else before anything is called.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedfr.data.images import (
    _check_size,
    decode_image,
    default_workers,
    encode_image,
    read_file_bytes,
    resize_area,
    write_bytes_atomic,
)
from fedfr.errors import DataFormatError

logger = logging.getLogger(__name__)

__all__ = [
    "VerificationSet",
    "load_verification_bin",
    "pairs_from_issame",
    "write_verification_bin",
]


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 protocol<3 pickles use it for bytes (``'latin1'`` only)."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(obj, encoding, errors)


def _numpy_module(name: str) -> Any:
    """``numpy._core.<name>`` (numpy 2) or ``numpy.core.<name>`` (numpy 1), without warnings."""
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # numpy < 2
        return importlib.import_module(f"numpy.core.{name}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_module("multiarray")
    numeric = _numpy_module("numeric")
    allowed: dict[tuple[str, str], Any] = {
        # bytes written by Python 3 with protocol 2: _codecs.encode('...', 'latin1')
        ("_codecs", "encode"): _latin1_encode,
        # numpy bool_ scalars: scalar(dtype('b1'), b'\x01'); arrays: _reconstruct / _frombuffer
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
    }
    for pkg in ("numpy.core", "numpy._core"):  # numpy 1 writes numpy.core, numpy 2 numpy._core
        allowed[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` resolves only the allow-list above."""

    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        key = (
            module.decode() if isinstance(module, bytes) else module,
            name.decode() if isinstance(name, bytes) else name,
        )
        try:
            return self._allowed[key]
        except KeyError:
            raise DataFormatError(
                f"{self._source}: refuses to unpickle global {key[0]}.{key[1]}: a verification "
                ".bin holds only images and booleans (this file may be malicious)"
            ) from None


def _restricted_loads(data: bytes, source: str) -> Any:
    try:
        return _RestrictedUnpickler(data, source).load()
    except DataFormatError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, TypeError from a bad reduce...
        raise DataFormatError(f"{source}: not a valid pickle: {type(exc).__name__}: {exc}") from exc


def pairs_from_issame(n: int) -> np.ndarray:
    """Image index pairs of ``n`` verification pairs: int64 ``(n, 2)`` = ``[[0,1],[2,3],...]``."""
    n = int(n)
    if n < 0:
        raise ValueError(f"number of pairs must be >= 0, got {n}")
    return np.arange(2 * n, dtype=np.int64).reshape(n, 2)


@dataclass(frozen=True, eq=False)
class VerificationSet:
    """A verification benchmark: ``N`` image pairs, same identity or not.

    Attributes:
        images: uint8 ``(2N, H, W, 3)`` RGB; pair ``i`` is ``images[2i], images[2i+1]``.
        issame: bool ``(N,)``.
        name: the set's name (the file stem, e.g. ``"lfw"``).
    """

    images: np.ndarray
    issame: np.ndarray
    name: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (2N, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        if self.issame.ndim != 1 or self.issame.dtype != np.bool_:
            raise ValueError(
                f"issame must be bool (N,), got {self.issame.dtype} {self.issame.shape}"
            )
        if self.images.shape[0] != 2 * self.issame.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images for {self.issame.shape[0]} pairs")

    def __len__(self) -> int:
        """Number of pairs ``N``."""
        return int(self.issame.shape[0])

    @property
    def pairs(self) -> np.ndarray:
        """int64 ``(N, 2)`` image indices of each pair (:func:`pairs_from_issame`)."""
        return pairs_from_issame(len(self))


def _as_image_bytes(b: object, i: int, source: str) -> bytes:
    if isinstance(b, bytes):
        return b
    if isinstance(b, bytearray | memoryview):
        return bytes(b)
    if isinstance(b, np.ndarray) and b.dtype == np.uint8 and b.ndim == 1:
        return b.tobytes()
    raise DataFormatError(f"{source}: image {i} is a {type(b).__name__}, not encoded image bytes")


def _as_bool(x: object, i: int, source: str) -> bool:
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer) and int(x) in (0, 1):
        return bool(int(x))
    raise DataFormatError(f"{source}: issame[{i}] = {x!r} is not a boolean")


def _validate(obj: object, source: str) -> tuple[list[bytes], np.ndarray]:
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        raise DataFormatError(
            f"{source}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}"
            + (f" of length {len(obj)}" if isinstance(obj, tuple | list) else "")
        )
    bins, issame = obj
    if not isinstance(bins, list | tuple):
        raise DataFormatError(f"{source}: bins must be a list, got {type(bins).__name__}")
    if isinstance(issame, np.ndarray):
        if issame.ndim != 1:
            raise DataFormatError(f"{source}: issame must be 1-D, got shape {issame.shape}")
        issame = issame.tolist()
    if not isinstance(issame, list | tuple):
        raise DataFormatError(f"{source}: issame_list must be a list, got {type(issame).__name__}")
    if len(bins) != 2 * len(issame):
        raise DataFormatError(
            f"{source}: {len(bins)} images for {len(issame)} pairs; expected {2 * len(issame)}"
        )
    images = [_as_image_bytes(b, i, source) for i, b in enumerate(bins)]
    flags = np.array([_as_bool(x, i, source) for i, x in enumerate(issame)], dtype=np.bool_)
    return images, flags


def load_verification_bin(
    path: str | os.PathLike[str],
    *,
    image_size: tuple[int, int] = (112, 112),
    workers: int | None = None,
) -> VerificationSet:
    """Load an insightface verification ``.bin`` without executing anything from the file.

    Args:
        path: the ``.bin`` file.
        image_size: ``(height, width)``; images of another size are resized with
            ``cv2.INTER_AREA`` (insightface resizes them too).
        workers: decoding threads.

    Returns:
        A :class:`VerificationSet` named after the file stem.

    Raises:
        DataFormatError: naming the file, if it is missing or unreadable, references a global
            outside the allow-list ("refuses to unpickle global ..."), is not a
            ``(bins, issame_list)`` pair with ``len(bins) == 2 * len(issame_list)``, or holds an
            image that does not decode.
    """
    p = Path(path)
    size = _check_size(image_size)
    assert size is not None
    data = read_file_bytes(p, "verification .bin")
    bins, issame = _validate(_restricted_loads(data, str(p)), str(p))
    del data

    images = np.empty((len(bins), size[0], size[1], 3), dtype=np.uint8)

    def _decode(i: int) -> None:
        images[i] = resize_area(decode_image(bins[i], source=f"{p}: image {i}"), size)

    n_workers = default_workers() if workers is None else max(1, int(workers))
    if bins:
        pool = ThreadPoolExecutor(max_workers=min(n_workers, len(bins)))
        try:
            for _ in pool.map(_decode, range(len(bins))):
                pass
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    logger.info("loaded %s: %d pairs (%d same)", p, issame.size, int(issame.sum()))
    return VerificationSet(images=images, issame=issame, name=p.stem)


def write_verification_bin(
    path: str | os.PathLike[str],
    images: np.ndarray | Sequence[np.ndarray],
    issame: np.ndarray | Sequence[bool],
    *,
    image_format: str = "jpeg",
    quality: int = 95,
) -> None:
    """Write a verification set in insightface's ``.bin`` format (atomically).

    Args:
        path: the ``.bin`` to write.
        images: ``2N`` uint8 RGB images ``(H, W, 3)`` (an array ``(2N, H, W, 3)`` or a sequence).
        issame: ``N`` booleans.
        image_format: ``"jpeg"`` (as insightface's files) or ``"png"`` (lossless).
        quality: JPEG quality.

    The pickle is ``(list of bytes, list of bool)`` at protocol 4, readable by insightface's
    ``pickle.load(f, encoding="bytes")`` and by :func:`load_verification_bin`.

    Raises:
        ValueError: if ``len(images) != 2 * len(issame)`` or on a bad image.
    """
    flags = [bool(x) for x in np.asarray(issame, dtype=np.bool_).ravel()]
    if len(images) != 2 * len(flags):
        raise ValueError(f"{len(images)} images for {len(flags)} pairs; expected {2 * len(flags)}")
    bins = [encode_image(img, image_format, quality=quality) for img in images]
    write_bytes_atomic(path, pickle.dumps((bins, flags), protocol=4))
