"""Image → model input, exactly as the web demo does it (``android_demo/app.js`` mirrors this
function line for line, and a browser test checks the two agree).

1. decode to RGB uint8 (alpha dropped, no colour management):
   :func:`fedfr.data.images.decode_image`;
2. a 112x112 image is used as is (an aligned crop); any other size is centre-cropped to a
   square (side ``min(h, w)``, offsets ``floor((h - side) / 2)``, ``floor((w - side) / 2)``)
   and resized to 112x112 by bilinear interpolation with ``align_corners=False`` (source
   coordinate ``(dst + 0.5) * side / 112 - 0.5`` clamped to ``[0, side - 1]``), no
   antialiasing, in float32 (rows first, then columns), rounded with ``floor(v + 0.5)`` and
   clipped to uint8;
3. ``(x - mean) / std`` to float32 NCHW.

The demo's input is an aligned crop; step 2 only makes an ordinary photo usable (it does not
align a face — the device SDK's enrollment does that).
"""

from __future__ import annotations

import os

import numpy as np

from fedfr.data.images import decode_image, read_file_bytes

CROP = 112


def _axis(n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = np.float32(n_src / n_dst)
    src = (np.arange(n_dst, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.clip(src, np.float32(0), np.float32(n_src - 1))
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_src - 1)
    frac = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, frac


def to_crop(rgb: np.ndarray, size: int = CROP) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image as a ``size`` x ``size`` uint8 crop (see the module doc)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    sq = rgb[top:top + side, left:left + side].astype(np.float32)
    y0, y1, fy = _axis(side, size)
    x0, x1, fx = _axis(side, size)
    one = np.float32(1)
    # vertical first, then horizontal, each rounded to float32 — the order app.js uses (the
    # rounding of .5 ties depends on it)
    rows = sq[y0] * (one - fy)[:, None, None] + sq[y1] * fy[:, None, None]
    out = rows[:, x0] * (one - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.floor(out + np.float32(0.5)), 0, 255).astype(np.uint8)


def normalize(crops: np.ndarray, mean: float = 127.5, std: float = 127.5) -> np.ndarray:
    """uint8 (N, H, W, 3) or (H, W, 3) crops → float32 (N, 3, H, W), ``(x - mean) / std``."""
    arr = np.asarray(crops)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) crops, got {arr.dtype} {arr.shape}")
    x = (arr.astype(np.float32) - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def load_crop(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as a 112x112 RGB crop.

    Raises:
        DataFormatError: naming the file, when it is missing or not a decodable image.
    """
    return to_crop(decode_image(read_file_bytes(path, "image file"), source=str(path)))
