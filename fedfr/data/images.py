"""Decoding, encoding and batch loading of images, in one convention: uint8 RGB ``(H, W, 3)``.

Every reader in :mod:`fedfr.data` goes through :func:`decode_image`, so that PNG, JPEG and the
image records inside RecordIO / verification ``.bin`` files all come out the same way (RGB, never
BGR; grayscale, palette, RGBA and CMYK converted to RGB). EXIF orientation is applied, as
browsers apply it (a phone photo comes out upright, and the web demo sees the same pixels); the
field's aligned-face datasets carry no orientation tag, so they are unaffected.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from fedfr.errors import DataFormatError
from fedfr.io import write_bytes_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "decode_image",
    "encode_image",
    "encode_jpeg",
    "encode_png",
    "load_images",
    "read_image",
    "resize_area",
    "write_bytes_atomic",
    "write_image_atomic",
]

_JPEG_SUFFIXES = {".jpg", ".jpeg"}
_PNG_SUFFIXES = {".png"}


def decode_image(data: bytes, *, source: str) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, or anything else PIL reads) to RGB.

    Args:
        data: the encoded file contents.
        source: what the bytes are (a path, ``"train.rec key 17"``...); used in error messages.

    Returns:
        uint8 array ``(H, W, 3)``, RGB, C-contiguous.

    Raises:
        DataFormatError: naming ``source``, when the bytes are empty, truncated or not an image.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DataFormatError(f"{source}: expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise DataFormatError(f"{source}: empty image data")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            # a phone photo's EXIF orientation, applied as browsers and viewers apply it
            img = ImageOps.exif_transpose(img) or img
            rgb = img if img.mode == "RGB" else _to_rgb(img)
            arr = np.asarray(rgb, dtype=np.uint8)
    except DataFormatError:
        raise
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBomb...)
        # PIL names the in-memory buffer ("<_io.BytesIO object at 0x...>"): ``source`` says it
        why = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))
        raise DataFormatError(f"{source}: cannot decode image: {why}") from exc
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataFormatError(f"{source}: decoded to an unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (alpha dropped, 16-bit gray scaled down to 8 bits)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        gray = np.clip(np.rint(arr / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read and decode one image file.

    Returns:
        uint8 array ``(H, W, 3)``, RGB.

    Raises:
        DataFormatError: naming ``path``, when it is missing, unreadable or not an image.
    """
    p = Path(path)
    return decode_image(read_file_bytes(p, "image file"), source=str(p))


def read_file_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of ``path``; a missing or unreadable file raises DataFormatError naming it
    and ``what`` it was meant to be."""
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError as exc:
        raise DataFormatError(f"{p}: no such {what}") from exc
    except OSError as exc:
        raise DataFormatError(f"{p}: cannot read {what}: {exc}") from exc


def _check_image(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    return np.ascontiguousarray(arr)


def encode_png(img: np.ndarray) -> bytes:
    """Encode a uint8 RGB ``(H, W, 3)`` image as PNG (lossless). Raises ValueError on bad input."""
    buf = io.BytesIO()
    Image.fromarray(_check_image(img), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    """Encode a uint8 RGB ``(H, W, 3)`` image as baseline JPEG at ``quality`` (1..100).

    Raises:
        ValueError: on a bad image or quality.
    """
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(_check_image(img), mode="RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def encode_image(img: np.ndarray, image_format: str = "jpeg", *, quality: int = 95) -> bytes:
    """Encode as ``"jpeg"`` (``"jpg"``) or ``"png"``; ValueError on any other format name."""
    fmt = image_format.lower()
    if fmt in ("jpeg", "jpg"):
        return encode_jpeg(img, quality=quality)
    if fmt == "png":
        return encode_png(img)
    raise ValueError(f"unknown image format {image_format!r}; expected 'jpeg' or 'png'")


def write_image_atomic(path: str | os.PathLike[str], img: np.ndarray, *, quality: int = 95) -> None:
    """Encode ``img`` (uint8 RGB ``(H, W, 3)``) by the suffix of ``path`` and write it atomically.

    ``.png`` is written losslessly, ``.jpg``/``.jpeg`` at ``quality``.

    Raises:
        ValueError: on an unknown suffix or a bad image.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in _PNG_SUFFIXES:
        data = encode_png(img)
    elif suffix in _JPEG_SUFFIXES:
        data = encode_jpeg(img, quality=quality)
    else:
        raise ValueError(f"{p}: cannot infer the image format from suffix {p.suffix!r}")
    write_bytes_atomic(p, data)


def resize_area(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 ``(H, W, 3)`` image to ``size = (h, w)`` with ``cv2.INTER_AREA``.

    Returns the input unchanged when it already has that size.
    """
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    if out.ndim == 2:  # cv2 drops a singleton channel axis
        out = out[:, :, None]
    return out


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or any(int(s) != s or int(s) <= 0 for s in size):
        raise ValueError(f"size must be (height, width) of positive ints, got {size!r}")
    return (int(size[0]), int(size[1]))


def default_workers() -> int:
    """Threads used for decoding when none is asked: ``min(8, cpu_count)``."""
    return max(1, min(8, os.cpu_count() or 1))


def load_images(
    paths: Iterable[str | os.PathLike[str]],
    *,
    size: tuple[int, int] | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Decode many image files into one batch, in a thread pool (PIL and cv2 release the GIL).

    Args:
        paths: image files, in the order of the output.
        size: ``(height, width)``; images of another size are resized with ``cv2.INTER_AREA``.
            When ``None``, all images must share one shape.
        workers: decoding threads (default :func:`default_workers`).

    Returns:
        uint8 array ``(N, H, W, 3)``, RGB. With no paths: ``(0, *size, 3)``, or ``(0, 0, 0, 3)``.

    Raises:
        DataFormatError: naming the first (in ``paths`` order) file that is unreadable, not an
            image, or (without ``size``) of a shape other than the first image's.
    """
    path_list: Sequence[Path] = [Path(p) for p in paths]
    size = _check_size(size)
    if not path_list:
        return np.zeros((0, *(size or (0, 0)), 3), dtype=np.uint8)
    n_workers = default_workers() if workers is None else int(workers)
    if n_workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    def _load(p: Path) -> np.ndarray:
        img = read_image(p)
        return resize_area(img, size) if size is not None else img

    out: np.ndarray | None = None
    pool = ThreadPoolExecutor(max_workers=min(n_workers, len(path_list)))
    try:
        for i, img in enumerate(pool.map(_load, path_list)):  # ordered: first failure first
            if out is None:
                out = np.empty((len(path_list), *img.shape), dtype=np.uint8)
            elif img.shape != out.shape[1:]:
                raise DataFormatError(
                    f"{path_list[i]}: image shape {img.shape} differs from {out.shape[1:]} "
                    f"(of {path_list[0]}); pass size=(h, w) to resize"
                )
            out[i] = img
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error, skip the pending decodes
    assert out is not None
    return out
