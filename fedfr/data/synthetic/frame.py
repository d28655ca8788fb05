"""The rendering canvas of one chunk: pixel grids, per-image parameters, bands, compositing.

Faces are drawn in the *face frame* (aligned, frontal template; coordinates are fractions of
the crop side, y down). Each image's alignment jitter and roll is a similarity transform; the
face-frame coordinates ``X, Y`` of every output pixel are computed once (the transform applied
to the grid), so every shape is evaluated directly at output resolution with no resampling.

Shapes have compact support (clipped linear ramps, never Gaussians), so a layer only needs to be
evaluated on a *band* (a row/column window) covering its support in every image of the chunk;
outside it the layer's alpha is exactly 0. That keeps results byte-identical however images are
chunked while most layers cost a fraction of a full frame.
"""

from __future__ import annotations

import threading

import numpy as np

F32 = np.float32
_TLS = threading.local()


def _pool(cap: int, h: int, w: int) -> dict[str, np.ndarray]:
    """Per-thread scratch arrays of shape ``(cap, h, w)`` / ``(3, cap, h, w)``, reused across
    chunks: fresh multi-megabyte temporaries cost page faults (glibc gives them back to the
    OS between chunks), which used to take a third of the rendering time."""
    key = (cap, h, w)
    cur = getattr(_TLS, "pool", None)
    if cur is None or cur[0] != key:
        cur = (key, {})
        _TLS.pool = cur
    return cur[1]


def _shaped(a: np.ndarray) -> np.ndarray:
    return a.reshape(3, -1, 1, 1) if a.ndim == 2 else a.reshape(-1, 1, 1)


class Params:
    """Per-image parameters of a chunk (or a subset of it) as broadcastable float32 arrays.

    ``flat`` maps names to ``(m,)`` scalars or planar ``(3, m)`` colors. ``q.name`` is
    ``(m, 1, 1)`` for scalars and ``(3, m, 1, 1)`` for colors; ``q.raw(name)`` is the flat array.
    """

    def __init__(self, flat: dict[str, np.ndarray], idx: np.ndarray | None = None) -> None:
        self._flat = flat
        self._idx = idx

    def raw(self, name: str) -> np.ndarray:
        """The flat ``(m,)`` / ``(3, m)`` array."""
        a = self._flat[name]
        return a if self._idx is None else a[..., self._idx]

    def __getattr__(self, name: str) -> np.ndarray:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            a = _shaped(self.raw(name))
        except KeyError:
            raise AttributeError(name) from None
        self.__dict__[name] = a  # later lookups skip __getattr__
        return a

    def subset(self, idx: np.ndarray) -> Params:
        """Parameters of the images at positions ``idx`` of this chunk."""
        return Params(self._flat, idx if self._idx is None else self._idx[idx])


_CLIP = getattr(getattr(np, "_core", None), "umath", None)
_CLIP = getattr(_CLIP, "clip", None) or np.clip  # the ufunc skips np.clip's Python wrapper


def clip(x: np.ndarray, lo, hi, out: np.ndarray | None = None) -> np.ndarray:
    """``np.clip`` without the wrapper overhead (many small calls per chunk)."""
    return _CLIP(x, lo, hi, out=out)


def ramp(d: np.ndarray, inv_soft: np.ndarray) -> np.ndarray:
    """Alpha of a soft edge: ``clip(d / soft + 0.5, 0, 1)`` (``d`` > 0 inside). In place on d."""
    d *= inv_soft
    d += F32(0.5)
    _CLIP(d, F32(0.0), F32(1.0), out=d)  # one SIMD pass (maximum(d, scalar) is slow)
    return d


def rgb(r: float, g: float, b: float) -> np.ndarray:
    """A constant color, shaped ``(3, 1, 1, 1)`` to broadcast against planar images."""
    return np.array([r, g, b], F32).reshape(3, 1, 1, 1)


def over(img: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
    """Composite ``color`` over planar ``img`` (3, m, h, w) with ``alpha`` (m, h, w), in place.

    ``img`` may be a view. Planar layout keeps the innermost loop over contiguous pixels.
    """
    t = color - img
    t *= alpha
    img += t


class Frame:
    """Grids and canvas of a chunk of ``n`` images of size ``(h, w)``."""

    def __init__(self, n: int, h: int, w: int, roll, scale, tx, ty, soft, cap: int = 0) -> None:
        self.n, self.h, self.w = n, h, w
        self._cap = max(cap, n)
        self._pool = _pool(self._cap, h, w)
        self.s = s = min(h, w)
        self.xs = ((np.arange(w, dtype=np.float64) + 0.5 - w / 2) / s + 0.5).astype(F32)
        self.ys = ((np.arange(h, dtype=np.float64) + 0.5 - h / 2) / s + 0.5).astype(F32)
        roll = np.asarray(roll, np.float64)
        self.cos, self.sin = np.cos(roll), np.sin(roll)
        self.scale = np.asarray(scale, np.float64)
        self.tx, self.ty = np.asarray(tx, np.float64), np.asarray(ty, np.float64)
        a, b = self.cos / self.scale, self.sin / self.scale
        cx = 0.5 - a * (0.5 + self.tx) - b * (0.5 + self.ty)
        cy = 0.5 + b * (0.5 + self.tx) - a * (0.5 + self.ty)
        col = lambda v: np.asarray(v, F32).reshape(n, 1, 1)  # noqa: E731
        xr, yc = self.xs.reshape(1, 1, w), self.ys.reshape(1, h, 1)
        self.X = np.add(col(a) * xr, col(b) * yc + col(cx), out=self.buf("X"))
        self.Y = np.add(col(-b) * xr, col(a) * yc + col(cy), out=self.buf("Y"))
        self.Xc, self.Yc = xr, yc  # camera frame (background, clothes)
        self.soft = np.asarray(soft, np.float64)
        self.inv_soft = col(1.0 / self.soft)
        self.margin = self.soft * 1.6 + 1.5 / s  # per image: soft edges reach soft/2 out
        self.img = self.buf("img", planar=True)  # planar RGB

    def buf(self, name: str, planar: bool = False) -> np.ndarray:
        """A named scratch array ``(n, h, w)`` (``(3, n, h, w)`` if planar); contents undefined.

        Names are slots: a layer must not use a name whose array is still alive elsewhere.
        """
        k = ("3:" if planar else "1:") + name
        arr = self._pool.get(k)
        if arr is None:
            shape = (3, self._cap, self.h, self.w) if planar else (self._cap, self.h, self.w)
            arr = self._pool[k] = np.empty(shape, F32)
        return arr[:, : self.n] if planar else arr[: self.n]

    def over(self, img: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
        """:func:`over` for a band or subset of this frame, with a reused temporary."""
        t = self.buf("over", planar=True)[:, : img.shape[1], : img.shape[2]]
        np.subtract(color, img, out=t)
        t *= alpha
        img += t

    def band(
        self, fy, ry, idx: np.ndarray | None = None, fx=0.5, rx=0.0, top: bool = False
    ) -> slice | None:
        """Rows covering face-frame boxes (centre ``fx, fy``; half extents ``rx, ry``).

        Bands are whole rows: a row window of a C-contiguous ``(n, H, W)`` array is contiguous
        per image, so numpy runs one long inner loop per image instead of one per row.
        ``idx`` restricts to a subset (box arrays then have the subset's length); ``top`` extends
        the band to the first row. ``None`` when the boxes are all outside the image.

        A layer must have no coverage outside its boxes (plus the soft-edge margin): the band
        is the union over the chunk, so anything drawn outside an image's own box would make
        the result depend on its chunk neighbours.
        """
        sel = slice(None) if idx is None else idx
        c, s, k = self.cos[sel], self.sin[sel], self.scale[sel]
        fx, fy, rx, ry = (np.asarray(v, np.float64) for v in (fx, fy, rx, ry))
        yc = 0.5 + self.ty[sel] + k * (s * (fx - 0.5) + c * (fy - 0.5))
        ey = k * (np.abs(s) * rx + np.abs(c) * ry) + self.margin[sel]
        r0 = int(np.floor(np.min((yc - ey - 0.5) * self.s + self.h / 2 - 0.5)))
        r1 = int(np.ceil(np.max((yc + ey - 0.5) * self.s + self.h / 2 - 0.5))) + 1
        r0, r1 = (0 if top else max(r0, 0)), min(r1, self.h)
        return slice(r0, r1) if r1 > r0 else None

    def to_camera(self, fx, fy, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (column, row; float) of face-frame points."""
        sel = slice(None) if idx is None else idx
        c, s, k = self.cos[sel], self.sin[sel], self.scale[sel]
        xc = 0.5 + self.tx[sel] + k * (c * (fx - 0.5) - s * (fy - 0.5))
        yc = 0.5 + self.ty[sel] + k * (s * (fx - 0.5) + c * (fy - 0.5))
        return (xc - 0.5) * self.s + self.w / 2 - 0.5, (yc - 0.5) * self.s + self.h / 2 - 0.5

    def region(self, rows: slice, idx: np.ndarray | None = None):
        """``(X, Y, img, inv_soft)`` of a row band; views for the whole batch, copies for a
        subset (write those back with :meth:`store`)."""
        if idx is None:
            return self.X[:, rows], self.Y[:, rows], self.img[:, :, rows], self.inv_soft
        return self.X[idx, rows], self.Y[idx, rows], self.img[:, idx, rows], self.inv_soft[idx]

    def store(self, rows: slice, idx: np.ndarray, img: np.ndarray) -> None:
        """Write back a subset's band (see :meth:`region`)."""
        self.img[:, idx, rows] = img
