"""5-point face alignment to the ArcFace template (what insightface's ``norm_crop`` does).

A detector's five landmarks (left eye, right eye, nose tip, left and right mouth corners, in the
image's pixel coordinates, ``x`` then ``y``) are mapped onto :data:`ARCFACE_TEMPLATE_112` by the
least-squares similarity transform (rotation, uniform scale, translation; no reflection, no
shear), and the image is warped with it. "Left" is the subject's right side as seen in the image,
i.e. the point with the smaller ``x`` on a frontal face.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "DLIB_TEMPLATE_150",
    "align_face",
    "alignment_matrix",
    "arcface_template",
    "estimate_similarity",
    "reframe_matrices",
    "template_for",
    "transform_points",
]

#: ArcFace destination landmarks for a 112x112 crop, float64 ``(5, 2)`` of ``(x, y)``: left eye,
#: right eye, nose, left mouth corner, right mouth corner.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_TEMPLATE_112.setflags(write=False)

#: dlib's face chip (``get_face_chip_details(shape, 150, 0.25)``, the crop ``dlib_r34`` takes)
#: in the same five points, float64 ``(5, 2)``: dlib aligns its chips with its mean face shape
#: (68 points, ``mean_face_shape_x/y`` in dlib's ``interpolation.h``, each ``p`` placed at
#: ``(0.25 + p) / 1.5 * 150``); these are that shape's eye centres (means of points 36-41 and
#: 42-47), nose tip (30) and mouth corners (48, 54), so a detector's five points give dlib's
#: framing. On the real photos, MTCNN + this template gives descriptors at cosine 0.948-0.996
#: (median 0.993) to dlib's own detector + 5-point predictor + chip
#: (benchmarks/dlib_alignment.py).
DLIB_TEMPLATE_150 = np.array(
    [
        [47.5492, 46.5990],
        [100.4761, 46.5990],
        [74.0127, 76.5625],
        [50.4149, 103.0233],
        [97.6104, 103.0233],
    ],
    dtype=np.float64,
)
DLIB_TEMPLATE_150.setflags(write=False)


def arcface_template(size: int = 112) -> np.ndarray:
    """The template for a ``size x size`` crop: :data:`ARCFACE_TEMPLATE_112` * ``size / 112``."""
    return template_for("arcface", size)


def template_for(alignment: str = "arcface", size: int = 112) -> np.ndarray:
    """The five landmarks of a ``size x size`` crop of the named geometry
    (:attr:`fedfr.data.contract.InputContract.alignment`): ``"arcface"`` or ``"dlib"``.

    Raises:
        ValueError: an unknown alignment or a non-positive size.
    """
    if int(size) != size or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if alignment == "arcface":
        return ARCFACE_TEMPLATE_112 * (float(size) / 112.0)
    if alignment == "dlib":
        return DLIB_TEMPLATE_150 * (float(size) / 150.0)
    raise ValueError(f"unknown alignment {alignment!r}; choose arcface or dlib")


def reframe_matrices(src: tuple[str, int], dst: tuple[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resampling of an aligned crop of one geometry into another, as two matrices.

    ``src``/``dst`` are ``(alignment, size)``. The map between the two templates is fitted as a
    scale and a translation (no rotation: both templates are left-right symmetric up to 0.2
    degrees), so the warp is separable: ``out = A_h @ crop @ A_w.T`` per channel, with
    ``A_h (dst, src)`` for rows and ``A_w`` for columns. Sampling follows ``cv2.warpAffine``'s
    pixel convention (pixel centres at integer coordinates); samples outside the source crop
    read 0 (black), so where the target framing reaches past the source's it gets black margins.

    Returns:
        float32 ``(A_h, A_w)``, each ``(dst_size, src_size)``.
    """
    s_pts = template_for(*src)
    d_pts = template_for(*dst)
    # least squares for d = k * s + t (shared k on both axes)
    sc, dc = s_pts - s_pts.mean(0), d_pts - d_pts.mean(0)
    k = float((sc * dc).sum() / (sc * sc).sum())
    t = d_pts.mean(0) - k * s_pts.mean(0)
    n_src, n_dst = int(src[1]), int(dst[1])

    def axis(shift: float) -> np.ndarray:
        a = np.zeros((n_dst, n_src), np.float64)
        pos = (np.arange(n_dst) - shift) / k
        lo = np.floor(pos).astype(int)
        w = pos - lo
        for i, (j, f) in enumerate(zip(lo, w, strict=True)):
            if 0 <= j < n_src:
                a[i, j] += 1 - f
            if 0 <= j + 1 < n_src:
                a[i, j + 1] += f
        return a.astype(np.float32)

    return axis(float(t[1])), axis(float(t[0]))


def _check_points(pts: object, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(pts, dtype=np.float64)
    ok = arr.ndim == 2 and arr.shape[1] == 2 and arr.shape[0] >= 2
    if n is not None:
        ok = ok and arr.shape[0] == n
    if not ok:
        want = f"({n}, 2)" if n is not None else "(N, 2) with N >= 2"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} of shape {arr.shape} contain non-finite values")
    return arr


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` (Umeyama 1991).

    Minimizes ``sum ||s R src_i + t - dst_i||^2`` over rotations ``R`` (``det R = +1``: no
    reflection), scales ``s > 0`` and translations ``t``.

    Args:
        src, dst: float ``(N, 2)`` point sets, ``N >= 2``, corresponding row by row.

    Returns:
        float64 ``(2, 3)`` matrix ``[s R | t]``, usable with ``cv2.warpAffine``.

    Raises:
        ValueError: on shapes other than matching ``(N, 2)``, non-finite values, or degenerate
            points (all ``src`` or all ``dst`` points equal).
    """
    s = _check_points(src, "src")
    d = _check_points(dst, "dst")
    if s.shape != d.shape:
        raise ValueError(f"src and dst must have the same shape, got {s.shape} and {d.shape}")
    n = s.shape[0]
    mu_s, mu_d = s.mean(axis=0), d.mean(axis=0)
    sc, dc = s - mu_s, d - mu_d
    var_s = float((sc**2).sum() / n)
    var_d = float((dc**2).sum() / n)
    tiny = 1e-12
    if var_s <= tiny * max(1.0, float(np.abs(s).max()) ** 2):
        raise ValueError("degenerate source points: all points (nearly) coincide")
    if var_d <= tiny * max(1.0, float(np.abs(d).max()) ** 2):
        raise ValueError("degenerate destination points: all points (nearly) coincide")
    cov = dc.T @ sc / n
    u, sv, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0  # best proper rotation instead of a reflection
    rot = u @ np.diag(sign) @ vt
    scale = float((sv * sign).sum() / var_s)
    if scale <= 0:
        raise ValueError("degenerate point configuration: no similarity with a positive scale")
    t = mu_d - scale * rot @ mu_s
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = t
    return m


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` affine matrix to float ``(N, 2)`` points; returns float64 ``(N, 2)``."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"matrix must have shape (2, 3), got {m.shape}")
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {p.shape}")
    return p @ m[:, :2].T + m[:, 2]


def alignment_matrix(landmarks: np.ndarray, *, size: int = 112,
                     template: np.ndarray | None = None) -> np.ndarray:
    """The float64 ``(2, 3)`` similarity taking five ``landmarks`` onto ``template`` (default:
    :func:`arcface_template` at ``size``).

    Raises:
        ValueError: if ``landmarks`` or ``template`` is not a finite ``(5, 2)`` array or is
            degenerate.
    """
    lm = _check_points(landmarks, "landmarks", n=5)
    dst = arcface_template(size) if template is None else _check_points(template, "template",
                                                                          n=5)
    return estimate_similarity(lm, dst)


def align_face(image: np.ndarray, landmarks: np.ndarray, *, size: int = 112,
               template: np.ndarray | None = None) -> np.ndarray:
    """Crop and align a face to the ArcFace template.

    Args:
        image: uint8 ``(H, W, 3)`` (any channel order; it is kept).
        landmarks: float ``(5, 2)`` ``(x, y)`` pixel coordinates in ``image``: left eye, right
            eye, nose, left mouth corner, right mouth corner.
        size: side of the square output; the template is scaled by ``size / 112``.
        template: float ``(5, 2)`` destination landmarks in the ``size x size`` output
            (:func:`template_for`); default: the ArcFace template.

    Returns:
        uint8 ``(size, size, 3)``, bilinear ``cv2.warpAffine`` with black (0) borders.

    Raises:
        ValueError: naming the shape, if ``landmarks`` is not a finite ``(5, 2)`` array; if the
            landmarks are degenerate (all equal); on a non-uint8 or non-``(H, W, 3)`` image.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    m = alignment_matrix(landmarks, size=size, template=template)
    out = cv2.warpAffine(
        np.ascontiguousarray(img),
        m,
        (int(size), int(size)),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    return out
