"""5-point similarity alignment to the ArcFace template."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fedfr.data.align import (
    ARCFACE_TEMPLATE_112,
    align_face,
    alignment_matrix,
    arcface_template,
    estimate_similarity,
    transform_points,
)


def _similarity(theta: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def test_template_values():
    assert ARCFACE_TEMPLATE_112.shape == (5, 2)
    np.testing.assert_array_equal(ARCFACE_TEMPLATE_112[0], [38.2946, 51.6963])
    np.testing.assert_array_equal(ARCFACE_TEMPLATE_112[4], [70.7299, 92.2041])
    with pytest.raises(ValueError):
        ARCFACE_TEMPLATE_112[0, 0] = 1.0  # read-only
    np.testing.assert_allclose(arcface_template(224), 2 * ARCFACE_TEMPLATE_112)


@pytest.mark.parametrize(
    "theta,scale,tx,ty",
    [(0.0, 1.0, 0.0, 0.0), (0.3, 2.5, 40.0, -12.0), (-2.9, 0.37, 300.0, 150.5), (np.pi, 1.1, 5, 5)],
)
def test_recovers_known_similarity(theta, scale, tx, ty):
    truth = _similarity(theta, scale, tx, ty)
    dst = transform_points(truth, ARCFACE_TEMPLATE_112)
    est = estimate_similarity(ARCFACE_TEMPLATE_112, dst)
    assert est.shape == (2, 3) and est.dtype == np.float64
    np.testing.assert_allclose(est, truth, atol=1e-6)
    # cv2 agrees on noiseless points
    cv_m, inliers = cv2.estimateAffinePartial2D(
        ARCFACE_TEMPLATE_112.astype(np.float32), dst.astype(np.float32), method=cv2.LMEDS
    )
    assert inliers.all()
    np.testing.assert_allclose(est, cv_m, atol=1e-3 * max(1.0, abs(tx), abs(ty)))


def test_least_squares_optimal_with_noise():
    rng = np.random.default_rng(0)
    truth = _similarity(0.4, 1.7, 20, 30)
    src = ARCFACE_TEMPLATE_112
    dst = transform_points(truth, src) + rng.normal(0, 2.0, src.shape)
    est = estimate_similarity(src, dst)
    res = np.sum((transform_points(est, src) - dst) ** 2)
    # no other similarity does better: perturb each parameter
    a, b, tx, ty = est[0, 0], est[1, 0], est[0, 2], est[1, 2]
    for d in np.eye(4) * 1e-3:
        for sgn in (1, -1):
            p = np.array([a, b, tx, ty]) + sgn * d
            m = np.array([[p[0], -p[1], p[2]], [p[1], p[0], p[3]]])
            assert np.sum((transform_points(m, src) - dst) ** 2) >= res - 1e-9
    # a similarity: equal scale on both axes, no shear, proper rotation
    lin = est[:, :2]
    assert lin[0, 0] == pytest.approx(lin[1, 1]) and lin[0, 1] == pytest.approx(-lin[1, 0])
    assert np.linalg.det(lin) > 0


def test_no_reflection():
    mirrored = ARCFACE_TEMPLATE_112 * np.array([-1.0, 1.0])
    est = estimate_similarity(ARCFACE_TEMPLATE_112, mirrored)
    assert np.linalg.det(est[:, :2]) > 0


def test_align_face_puts_landmarks_on_template():
    rng = np.random.default_rng(1)
    # a smooth "face" in template coordinates, placed in a larger photo by a known similarity
    yy, xx = np.mgrid[0:112, 0:112]
    face = np.stack(
        [127 + 100 * np.sin(xx / 7.0), 127 + 100 * np.cos(yy / 9.0), (xx + yy) % 256], axis=-1
    ).astype(np.uint8)
    truth = _similarity(0.35, 2.2, 120.0, 60.0)
    photo = cv2.warpAffine(face, truth, (400, 360), flags=cv2.INTER_LINEAR)
    landmarks = transform_points(truth, ARCFACE_TEMPLATE_112) + rng.normal(0, 1e-9, (5, 2))

    m = alignment_matrix(landmarks)
    np.testing.assert_allclose(transform_points(m, landmarks), ARCFACE_TEMPLATE_112, atol=1e-6)
    np.testing.assert_allclose(m, cv2.invertAffineTransform(truth), atol=1e-6)

    aligned = align_face(photo, landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    center = np.s_[20:92, 20:92]  # away from the border resampling
    assert np.abs(aligned[center].astype(int) - face[center]).mean() < 4

    big = align_face(photo, landmarks, size=224)
    assert big.shape == (224, 224, 3)
    m224 = alignment_matrix(landmarks, size=224)
    np.testing.assert_allclose(
        transform_points(m224, landmarks), 2 * ARCFACE_TEMPLATE_112, atol=1e-6
    )


def test_align_face_border_is_black():
    photo = np.full((50, 50, 3), 200, np.uint8)
    landmarks = ARCFACE_TEMPLATE_112 / 4 + 40  # small face near the corner: crop leaves photo
    out = align_face(photo, landmarks)
    assert (out[-1, -1] == 0).all() and (out[0, 0] == 200).all()


@pytest.mark.parametrize("shape", [(4, 2), (5, 3), (10,), (5, 2, 1)])
def test_bad_landmark_shape(shape):
    with pytest.raises(ValueError, match=rf"\({', '.join(map(str, shape))},?\)"):
        align_face(np.zeros((10, 10, 3), np.uint8), np.ones(shape))


def test_bad_landmarks_and_images():
    img = np.zeros((10, 10, 3), np.uint8)
    lm = ARCFACE_TEMPLATE_112.copy()
    lm[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        align_face(img, lm)
    with pytest.raises(ValueError, match="degenerate"):
        align_face(img, np.full((5, 2), 30.0))
    with pytest.raises(ValueError, match="degenerate"):
        estimate_similarity(ARCFACE_TEMPLATE_112, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="same shape"):
        estimate_similarity(np.ones((5, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="uint8"):
        align_face(img.astype(np.float32), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="uint8"):
        align_face(img[..., 0], ARCFACE_TEMPLATE_112)
