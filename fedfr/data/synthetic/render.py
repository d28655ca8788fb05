"""Vectorized renderer: identity parameters + per-image nuisance + domain -> uint8 RGB faces.

Pipeline per chunk (all images of a chunk at once, float32, planar RGB):
background -> back hair -> neck/clothes -> ears -> face oval -> freckles, moles, scar -> beard
-> nose -> mouth -> eyes -> brows -> front hair -> glasses -> occluders -> shading (light
direction on an ellipsoid normal, ambient, exposure, vignetting) -> saturation -> sensor noise
-> quantization -> tone curve (white balance, black level, gamma, contrast: one LUT) ->
resolution loss -> JPEG.

Blur is rendered, not filtered: every soft edge's width grows with the image's blur, and
textures are attenuated accordingly (cheap, and equivalent at these sizes). Resolution loss is
rendered too: a low-resolution camera's images are drawn at its resolution (cheaper) and
upsampled.

Per-image results never depend on the rest of the batch (see :mod:`.frame`), so images are
reordered freely (by where their eyes land, which keeps the row bands of a chunk tight) and
chunked: the bytes are the same for any batch composition, on a given platform (numpy's SIMD
transcendental functions may differ in the last bit across CPUs).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from . import _rng, layers
from .config import GeneratorConfig
from .domain import DomainStyle, background_texture, tone_lut, vignette_map
from .frame import F32, Frame, Params, clip, ramp
from .identity import IdentityParams
from .nuisance import image_nuisance

#: Images rendered together (keeps the working set in cache; any value gives the same bytes).
CHUNK = 16


@lru_cache(maxsize=8)
def noise_bank(h: int, w: int) -> np.ndarray:
    """A fixed planar ``(3, Hb, Wb)`` float32 standard-normal field; images take windows of it."""
    hb, wb = max(256, 2 * h), max(256, 2 * w)
    z = _rng.normal(_rng.key(0, _rng.TAG_BANK, np.arange(hb * wb)), 3).astype(F32)
    out = np.ascontiguousarray(z.T).reshape(3, hb, wb)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def stubble_texture(h: int, w: int) -> np.ndarray:
    """``(h, w)`` float32 in [0.35, 1]: hair-follicle texture for beards."""
    z = noise_bank(h, w)[0, :h, :w]
    out = np.clip(0.7 + 0.35 * z, 0.35, 1.0).astype(F32)
    out.setflags(write=False)
    return out


def render_batch(
    seed: int,
    params: IdentityParams,
    indices: np.ndarray,
    domain: DomainStyle,
    config: GeneratorConfig,
    size: tuple[int, int],
) -> np.ndarray:
    """Render one image per ``(params[i], indices[i])`` in ``domain``: uint8 ``(N, H, W, 3)``."""
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise ValueError(f"image size must be at least 8x8, got {h}x{w}")
    n = len(params)
    indices = np.asarray(indices, np.int64).reshape(-1)
    if len(indices) != n:
        raise ValueError(f"{n} identities but {len(indices)} image indices")
    out = np.empty((n, h, w, 3), np.uint8)
    if n == 0:
        return out
    nz = image_nuisance(seed, params.ids, indices, domain, config)
    data: dict[str, np.ndarray] = {}
    data.update(params.fields)
    data.update(nz)
    # A glasses wearer sometimes takes them off; a non-wearer sometimes wears (sun)glasses.
    wearer, flip, u = params.glasses > 0.5, nz["glasses_flip"], nz["sunglasses"]
    data["glasses"] = np.where(wearer, 1.0 - flip, flip * (u < 0.3))
    data["dark_lens"] = np.where(wearer, u < 0.08, 1.0)
    layers.geometry(data)
    # Resolution loss: a low-resolution camera is rendered at its own resolution, then upsampled.
    rh, rw = h, w
    if domain.downscale < 1.0:
        rh, rw = max(8, round(h * domain.downscale)), max(8, round(w * domain.downscale))
    px = 1.0 / min(rh, rw)
    data["soft"] = np.sqrt((0.9 * px) ** 2 + (2.2 * nz["blur"].astype(np.float64) / 112.0) ** 2)
    flat = {
        k: np.ascontiguousarray(np.asarray(v, F32).T) if np.ndim(v) == 2 else np.asarray(v, F32)
        for k, v in data.items()
    }
    # Render images with similar vertical layouts together: a layer is evaluated on the union
    # of its rows over the chunk, so sorting by where the eyes land keeps those unions tight.
    # Each image's bytes do not depend on its chunk, so the order is free.
    eye_row = data["ty"] + data["scale"] * (
        np.sin(data["roll"]) * (data["eye_mid"] - 0.5) + np.cos(data["roll"]) * (data["ey"] - 0.5)
    )
    order = np.argsort(eye_row, kind="stable")
    for start in range(0, n, CHUNK):
        sel = order[start : start + CHUNK]
        chunk = {k: v[..., sel] for k, v in flat.items()}
        out[sel] = _render_chunk(chunk, domain, rh, rw, (h, w))
    return out


def _render_chunk(
    data: dict[str, np.ndarray], domain: DomainStyle, h: int, w: int, size
) -> np.ndarray:
    q = Params(data)
    n = len(data["soft"])
    fr = Frame(
        n, h, w, data["roll"], data["scale"], data["tx"], data["ty"], data["soft"], cap=CHUNK
    )

    _background(fr, q, domain)
    hair_a = layers.back_hair(fr, q)
    layers.neck_and_clothes(fr, q)
    layers.ears(fr, q)
    face_a, dx, dy, d2 = layers.face_oval(fr, q)
    idx = np.nonzero(data["freckles"] > 0)[0]
    if len(idx):
        layers.freckles(fr, q, idx)
    layers.moles(fr, q, face_a)
    idx = np.nonzero(data["scar"] > 0)[0]
    if len(idx):
        layers.scar(fr, q, idx, face_a)
    idx = np.nonzero((data["beard"] > 0) | (data["moustache"] > 0))[0]
    if len(idx):
        layers.beard(fr, q, idx, face_a, stubble_texture(h, w))
    layers.nose(fr, q)
    layers.mouth(fr, q)
    layers.eyes(fr, q)
    layers.brows(fr, q)
    layers.front_hair(fr, q)
    idx = np.nonzero(data["glasses"] > 0.5)[0]
    if len(idx):
        layers.glasses(fr, q, idx)
    _occluders(fr, q, data["occ"].astype(np.int64), d2)
    _shade(fr, q, domain, face_a, hair_a, dx, dy, d2)
    return _camera(fr, data, domain, size)


def _background(fr: Frame, q: Params, d: DomainStyle) -> None:
    """Flat color x (gradient + texture): per-image for public, the room's for a device."""
    f = np.add(q.bg_gx * (fr.Xc - F32(0.5)), q.bg_gy * (fr.Yc - F32(0.5)), out=fr.buf("t0"))
    amp = F32(0.14 * d.bg_random)
    if amp > 0:
        t = np.add(
            fr.Xc * (np.cos(q.bg_ang) * q.bg_freq),
            fr.Yc * (np.sin(q.bg_ang) * q.bg_freq) + q.bg_phase,
            out=fr.buf("t1"),
        )
        np.sin(t, out=t)
        t *= amp
        f += t
    if d.bg_texture > 0:
        f += F32(d.bg_texture) * background_texture(d.bg_freq, d.bg_angle, fr.h, fr.w)
    f += F32(1.0)
    np.multiply(f, q.bg, out=fr.img)


def _occluders(fr: Frame, q: Params, kind: np.ndarray, d2: np.ndarray) -> None:
    """Rectangles (objects), hands, medical masks and caps; drawn before shading."""
    for i in np.nonzero(kind == 1)[0]:
        a, b, c, d, e = (float(q.raw(f"occ_{k}")[i]) for k in "abcde")
        cx, cy = (0.2 + 0.6 * a) * fr.w, (0.3 + 0.65 * b) * fr.h
        hw, hh = (0.08 + 0.16 * c) * fr.w, (0.06 + 0.14 * d) * fr.h
        r0, r1 = max(int(cy - hh), 0), min(int(cy + hh), fr.h)
        c0, c1 = max(int(cx - hw), 0), min(int(cx + hw), fr.w)
        col = np.array(
            [40 + 200 * e, 40 + 200 * ((e * 7.31) % 1.0), 40 + 200 * ((e * 3.17) % 1.0)], F32
        )
        fr.img[:, i, r0:r1, c0:c1] = (col * F32(0.85 + 0.3 * d))[:, None, None]
    idx = np.nonzero(kind == 2)[0]
    if len(idx):  # a hand: skin-colored ellipse over the lower face
        s = q.subset(idx)
        ang = (s.occ_e - F32(0.5)) * F32(1.5)
        dx = fr.Xc - (F32(0.3) + F32(0.4) * s.occ_a)
        dy = fr.Yc - (F32(0.72) + F32(0.2) * s.occ_b)
        u = (dx * np.cos(ang) + dy * np.sin(ang)) / (F32(0.16) + F32(0.08) * s.occ_c)
        v = (dy * np.cos(ang) - dx * np.sin(ang)) / (F32(0.1) + F32(0.06) * s.occ_d)
        a = ramp((F32(1.0) - u * u - v * v) * F32(0.05), fr.inv_soft[idx])
        img = fr.img[:, idx]
        fr.over(img, a, s.skin * (F32(0.85) + F32(0.25) * s.occ_d))
        fr.img[:, idx] = img
    idx = np.nonzero(kind == 3)[0]
    if len(idx):  # a medical mask from the nose bridge to under the chin
        s = q.subset(idx)
        X, Y = fr.X[idx], fr.Y[idx]
        rel = (X - s.cxf) / s.wf
        top = s.ny - F32(0.03) + F32(0.05) * rel * rel
        a = ramp(Y - top, fr.inv_soft[idx]) * ramp(
            (F32(1.12) - d2[idx]) * F32(0.2), fr.inv_soft[idx]
        )
        palette = np.array([[150, 195, 225], [236, 236, 236], [36, 36, 42], [90, 120, 170]], F32)
        col = palette[np.minimum((s.raw("occ_a") * 4).astype(np.int64), 3)].T.reshape(3, -1, 1, 1)
        img = fr.img[:, idx]
        fr.over(img, a, col)
        fr.img[:, idx] = img
    idx = np.nonzero(kind == 4)[0]
    if len(idx):  # a cap over the hair and forehead
        s = q.subset(idx)
        X, Y = fr.X[idx], fr.Y[idx]
        edge = s.hl + F32(0.01) + F32(0.07) * s.occ_b
        a = ramp(edge - Y, fr.inv_soft[idx]) * ramp(
            s.wf * F32(1.3) - np.abs(X - s.cxf), fr.inv_soft[idx]
        )
        col = (np.stack([s.raw(f"occ_{k}") for k in "cde"]) * 200 + 20).reshape(3, -1, 1, 1)
        img = fr.img[:, idx]
        fr.over(img, a, col.astype(F32))
        brim = ramp(F32(0.012) - np.abs(Y - edge + F32(0.006)), fr.inv_soft[idx]) * a
        fr.over(img, brim, col.astype(F32) * F32(0.6))
        fr.img[:, idx] = img


def _shade(fr, q, d: DomainStyle, face_a, hair_a, dx, dy, d2) -> None:
    """Directional + ambient light on the face/hair ellipsoid; exposure; vignetting."""
    nz = np.subtract(F32(1.0), d2, out=d2)
    np.clip(nz, F32(0), F32(1), out=nz)
    np.sqrt(nz, out=nz)
    nz *= q.lz
    np.clip(dx, F32(-1.3), F32(1.3), out=dx)
    dx *= q.lx
    nz += dx
    np.clip(dy, F32(-1.3), F32(1.3), out=dy)
    dy *= q.ly
    nz += dy
    dot = np.clip(nz, F32(0), F32(1.2), out=nz)
    dot *= q.diffuse
    dot += q.ambient - F32(1.0)
    hair_a *= F32(0.8)
    np.maximum(face_a, hair_a, out=hair_a)
    dot *= hair_a
    dot += F32(1.0)
    dot *= q.exposure
    if d.vignette > 0:
        dot *= vignette_map(float(d.vignette), fr.h, fr.w)
    fr.img *= dot


def _camera(
    fr: Frame, nz: dict[str, np.ndarray], d: DomainStyle, size: tuple[int, int]
) -> np.ndarray:
    """Saturation, sensor noise, quantization, tone curve, upsampling, JPEG."""
    img = fr.img
    if d.saturation != 1.0:
        g = img[0] * F32(0.299)
        g += img[1] * F32(0.587)
        g += img[2] * F32(0.114)
        g *= F32(1.0 - d.saturation)
        img *= F32(d.saturation)
        img += g
    h, w = fr.h, fr.w
    bank = noise_bank(h, w)
    hb, wb = bank.shape[1:]
    oy = (nz["noise_dy"].astype(np.float64) * (hb - h)).astype(np.int64)
    ox = (nz["noise_dx"].astype(np.float64) * (wb - w)).astype(np.int64)
    sig = nz["noise"].astype(F32)
    for i in range(fr.n):
        img[:, i] += sig[i] * bank[:, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
    img += F32(0.5)
    clip(img, F32(0), F32(255), out=img)
    planar = img.astype(np.uint8)
    out = np.empty((fr.n, h, w, 3), np.uint8)
    for i in range(fr.n):  # cv2.merge interleaves far faster than a numpy transpose copy
        cv2.merge((planar[0, i], planar[1, i], planar[2, i]), dst=out[i])
    lut = tone_lut(d)
    if not np.array_equal(lut[0], np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)):
        flat = out.reshape(fr.n * h, w, 3)
        cv2.LUT(flat, lut, dst=flat)
    if (h, w) != tuple(size):
        big = np.empty((fr.n, size[0], size[1], 3), np.uint8)
        for i in range(fr.n):
            cv2.resize(out[i], (size[1], size[0]), dst=big[i], interpolation=cv2.INTER_LINEAR)
        out = big
    if d.jpeg_quality > 0:
        params = [cv2.IMWRITE_JPEG_QUALITY, int(d.jpeg_quality)]
        for i in range(fr.n):
            _, buf = cv2.imencode(".jpg", cv2.cvtColor(out[i], cv2.COLOR_RGB2BGR), params)
            cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB, dst=out[i])
    return out
