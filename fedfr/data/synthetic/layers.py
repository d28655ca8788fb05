"""Face layers drawn on a :class:`Frame`, back to front. All geometry in the face frame.

Each layer reads its per-image parameters from a :class:`Params` (identity traits, nuisance and
the derived geometry of :func:`geometry`). Paired features (eyes, brows, ears, nostrils, lenses)
are drawn in one pass: each pixel takes the parameters of the feature on its side.
"""

from __future__ import annotations

import numpy as np

from .frame import F32, Frame, Params, clip, over, ramp, rgb
from .identity import MAX_MOLES

_0, _1 = F32(0.0), F32(1.0)


def clip01(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] in place."""
    return clip(x, _0, _1, out=x)


def geometry(p: dict[str, np.ndarray]) -> None:
    """Add pose-dependent feature positions to ``p`` (flat float arrays, in place)."""
    yaw, pitch = p["yaw"], p["pitch"]
    p["cxf"] = 0.5 + 0.03 * yaw
    p["cyf"] = p["face_cy"] + 0.012 * pitch
    p["wf"] = p["face_w"] * (1.0 - 0.07 * np.abs(yaw))
    p["hf"] = p["face_h"] * (1.0 - 0.05 * np.abs(pitch))
    for s, side in ((-1.0, "l"), (1.0, "r")):
        fore = 1.0 - 0.32 * s * yaw  # foreshortening of the side turning away
        p[f"ex_{side}"] = 0.5 + 0.055 * yaw + s * p["eye_dx"] * (1.0 - 0.2 * s * yaw)
        p[f"ew_{side}"] = p["eye_w"] * np.clip(fore, 0.4, 1.5)
        p[f"ear_vis_{side}"] = np.clip(1.0 - 2.2 * s * yaw, 0.0, 1.0)
    p["eye_mid"] = (p["ex_l"] + p["ex_r"]) / 2
    p["ey"] = p["eye_y"] + 0.035 * pitch
    p["eh"] = p["eye_h"] * p["eye_open"]
    p["by"] = p["ey"] - p["brow_dy"] - 0.012 * p["brow_raise"] - 0.004 * pitch
    p["nx"] = 0.5 + 0.095 * yaw
    p["ny"] = p["nose_y"] + 0.055 * pitch
    p["mx"] = 0.5 + 0.065 * yaw
    p["my"] = p["mouth_y"] + 0.045 * pitch + 0.01 * p["open"]
    p["mw"] = p["mouth_w"] * (1.0 + 0.18 * p["smile"]) * (1.0 - 0.12 * np.abs(yaw))
    p["hl"] = p["cyf"] - p["hf"] * p["hairline"] + p["hair_shift"]
    p["long"] = np.clip((p["hair_len"] - 0.35) * 2.5, 0.0, 1.0)
    p["hair_on"] = 1.0 - p["bald"]
    p["hair_bottom"] = p["ear_y"] + 0.03  # lowest point of the front hair (sideburns)
    p["ear_x"] = p["wf"] * 0.96 + p["ear_out"]
    p["ear_rx"] = 0.03 + p["ear_out"] * 0.6


def _side(X: np.ndarray, mid: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per-pixel choice between a left and a right parameter (``X > mid`` is right)."""
    return np.where(mid < X, right, left)


def hair_texture(fr: Frame, q: Params, rows: slice | None = None) -> np.ndarray:
    """Strand texture (multiplicative, around 1), attenuated by blur; in scratch slot "tex"."""
    sl = slice(None) if rows is None else rows
    X, Y = fr.X[:, sl], fr.Y[:, sl]
    t = fr.buf("tex")[:, sl]
    ang, freq = q.hair_angle, q.hair_freq
    amp = F32(0.11) / (_1 + (freq / (F32(5.0) * fr.inv_soft)) ** 2)
    np.multiply(X, np.cos(ang) * freq, out=t)
    t += Y * (np.sin(ang) * freq) + q.hair_phase * F32(6.28)
    np.sin(t, out=t)
    t *= amp
    t += _1
    return t


def back_hair(fr: Frame, q: Params) -> np.ndarray:
    """Hair behind the head (full frame). Returns its alpha (slot "hair_a") for shading."""
    X, Y, inv = fr.X, fr.Y, fr.inv_soft
    hx = q.cxf - F32(0.01) * q.yaw
    rx = q.wf * F32(1.1) + q.hair_volume * F32(0.4)
    ry = q.hf + q.hair_volume
    ax = np.subtract(X, hx, out=fr.buf("t0"))
    np.abs(ax, out=ax)
    d = np.divide(ax, rx, out=fr.buf("hair_a"))
    d *= d
    dy = np.subtract(Y, q.cyf - F32(0.03) - q.hair_volume * F32(0.5), out=fr.buf("t1"))
    dy /= ry
    dy *= dy
    d += dy
    np.subtract(_1, d, out=d)
    d *= rx * F32(0.5)
    a = ramp(d, inv)
    box = np.subtract(q.wf * (F32(1.12) + F32(0.12) * q.long), ax, out=ax)
    ramp(box, inv)
    box *= q.long
    np.maximum(a, box, out=a)
    np.subtract(q.ear_y - F32(0.03) + q.hair_len * F32(0.55), Y, out=box)
    a *= ramp(box, inv)
    a *= q.hair_on
    tex = hair_texture(fr, q)
    tex *= a
    fr.over(fr.img, tex, q.hair * (q.hair_bright * F32(0.82)))
    return a


def neck_and_clothes(fr: Frame, q: Params) -> None:
    """Neck (face frame) and clothes at the bottom corners (camera frame)."""
    top = q.raw("cyf") + q.raw("hf") * 0.5
    rows = fr.band(top + 0.4, np.full(fr.n, 0.4), rx=q.raw("wf") + 0.03, fx=q.raw("cxf"))
    if rows is not None:
        X, Y, img, inv = fr.region(rows)
        a = ramp(q.wf * F32(0.58) - np.abs(X - q.cxf), inv)
        a *= clip01((Y - q.cyf - q.hf * F32(0.5)) * F32(60.0))
        fr.over(img, a, q.skin * F32(0.7))
    r0 = max(int(np.floor((0.84 - 0.5) * fr.s + fr.h / 2)), 0)
    if r0 < fr.h:
        d = fr.Yc[:, r0:] - (
            F32(1.02) - F32(0.6) * np.maximum(np.abs(fr.Xc - F32(0.5)) - F32(0.2), _0)
        )
        a = clip01(d * F32(fr.s) + F32(0.5))
        fr.over(fr.img[:, :, r0:], a, q.cloth)


def ears(fr: Frame, q: Params) -> None:
    """Both ears in one pass; hidden by long hair and, on the far side, by yaw."""
    ey = q.raw("ear_y") + 0.02 * q.raw("pitch")
    rows = fr.band(ey, q.raw("ear_h"), rx=q.raw("ear_x") + q.raw("ear_rx") + 0.05)
    if rows is None:
        return
    X, Y, img, inv = fr.region(rows)
    dx = X - (q.cxf + F32(0.02) * q.yaw)
    vis = _side(dx, _0, q.ear_vis_l, q.ear_vis_r)
    u = np.abs(dx)
    u -= q.ear_x
    u /= q.ear_rx
    u *= u
    v = (Y - (q.ear_y + F32(0.02) * q.pitch)) / q.ear_h
    v *= v
    u += v
    np.subtract(_1, u, out=u)
    u *= q.ear_rx * F32(0.5)
    a = ramp(u, inv)
    a *= vis
    a *= _1 - F32(0.9) * q.long * q.hair_on
    fr.over(img, a, q.skin * F32(0.88))


def face_oval(fr: Frame, q: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The face oval (full frame). Returns alpha and the normalized ``dx, dy, d2`` for shading
    (scratch slots "face_a", "dx", "dy", "d2")."""
    dy = np.subtract(fr.Y, q.cyf, out=fr.buf("dy"))
    dy /= q.hf
    t = clip(dy, _0, _1, out=fr.buf("t0"))
    t *= t
    t *= -q.jaw
    t += _1
    t *= q.wf  # half width at this height
    dx = np.subtract(fr.X, q.cxf, out=fr.buf("dx"))
    dx /= t
    d2 = np.multiply(dx, dx, out=fr.buf("d2"))
    a = np.multiply(dy, dy, out=fr.buf("face_a"))
    d2 += a
    np.subtract(_1, d2, out=a)
    a *= t
    a *= F32(0.5)
    ramp(a, fr.inv_soft)
    fr.over(fr.img, a, q.skin)
    return a, dx, dy, d2


def freckles(fr: Frame, q: Params, idx: np.ndarray) -> None:
    """Identity-specific freckle pattern over nose and cheeks."""
    s = q.subset(idx)
    rows = fr.band(s.raw("ny") - 0.04, np.full(len(idx), 0.12), idx, s.raw("cxf"), s.raw("wf"))
    if rows is None:
        return
    X, Y, img, _ = fr.region(rows, idx)
    pat = None
    for k in "123":
        f = F32(140.0) + F32(110.0) * getattr(s, f"freckle_f{k}")
        ang = getattr(s, f"freckle_a{k}") * F32(6.283)
        t = X * (np.cos(ang) * f) + Y * (np.sin(ang) * f) + getattr(s, f"freckle_p{k}") * F32(6.283)
        np.sin(t, out=t)
        pat = t if pat is None else pat * t
    cx = (X - s.cxf) / (s.wf * F32(0.85))
    cy = (Y - s.ny + F32(0.04)) / F32(0.11)
    cheek = clip01(_1 - cx * cx - cy * cy)
    a = clip01((pat - F32(0.2)) * F32(4.0)) * cheek
    a *= np.minimum(s.freckles, _1) * F32(0.7)
    fr.over(img, a, s.skin * F32(0.68))
    fr.store(rows, idx, img)


def moles(fr: Frame, q: Params, face_a: np.ndarray) -> None:
    """Up to three moles per identity at stable positions: small square patches, vectorized
    over the chunk per mole slot (one image has at most one mole per slot)."""
    nm = q.raw("n_moles")
    col = rgb(70, 45, 38)
    ar = None
    for k in range(MAX_MOLES):
        i = np.nonzero(nm > k)[0]
        if len(i) == 0:
            break
        wf, ey = q.raw("wf")[i], q.raw("ey")[i]
        mx = q.raw("cxf")[i] + (q.raw(f"mole{k}_x")[i] - F32(0.5)) * F32(1.5) * wf
        my = ey + F32(0.03) + q.raw(f"mole{k}_y")[i] * (q.raw("my")[i] + F32(0.05) - ey)
        r = F32(0.004) + F32(0.006) * q.raw(f"mole{k}_r")[i]
        c, rw = fr.to_camera(mx.astype(np.float64), my.astype(np.float64), i)
        reach = (r + fr.soft[i]) * fr.scale[i] * fr.s + 2.0
        size = min(2 * int(np.ceil(reach.max())) + 1, fr.h, fr.w)
        if ar is None or len(ar) != size:
            ar = np.arange(size)
        r0 = np.clip(np.round(rw).astype(np.int64) - size // 2, 0, fr.h - size)
        c0 = np.clip(np.round(c).astype(np.int64) - size // 2, 0, fr.w - size)
        ii = i[:, None, None]
        rr = (r0[:, None] + ar)[:, :, None]
        cc = (c0[:, None] + ar)[:, None, :]
        dx = fr.X[ii, rr, cc] - mx[:, None, None]
        dy = fr.Y[ii, rr, cc] - my[:, None, None]
        d = r[:, None, None] - np.sqrt(dx * dx + dy * dy)
        a = ramp(d, fr.inv_soft[i]) * face_a[ii, rr, cc]
        a *= (F32(0.5) + F32(0.45) * q.raw(f"mole{k}_d")[i])[:, None, None]
        patch = fr.img[:, ii, rr, cc]
        over(patch, a, col)
        fr.img[:, ii, rr, cc] = patch


def scar(fr: Frame, q: Params, idx: np.ndarray, face_a: np.ndarray) -> None:
    """A thin pale line at a stable position (a few identities)."""
    s = q.subset(idx)
    sx = s.raw("cxf") + (s.raw("scar_x") - 0.5) * 1.2 * s.raw("wf")
    sy = s.raw("ey") + 0.02 + s.raw("scar_y") * 0.25
    ln = 0.02 + 0.04 * s.raw("scar_len")
    rows = fr.band(sy, ln, idx, sx, ln)
    if rows is None:
        return
    X, Y, img, inv = fr.region(rows, idx)
    P = lambda v: np.asarray(v, F32).reshape(-1, 1, 1)  # noqa: E731
    ang = P(s.raw("scar_angle") * np.pi)
    dx, dy = X - P(sx), Y - P(sy)
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = dy * np.cos(ang) - dx * np.sin(ang)
    a = ramp(F32(0.0035) - np.abs(v), inv) * ramp(P(ln) - np.abs(u), inv)
    a *= face_a[idx, rows] * F32(0.6)
    fr.over(img, a, s.skin * rgb(1.08, 0.82, 0.82))
    fr.store(rows, idx, img)


def beard(fr: Frame, q: Params, idx: np.ndarray, face_a: np.ndarray, stubble: np.ndarray) -> None:
    """Beard (jaw, chin, cheeks) and moustache, with a stubble texture."""
    s = q.subset(idx)
    top = s.raw("my") - 0.2
    bottom = s.raw("cyf") + s.raw("hf") + 0.02
    rows = fr.band((top + bottom) / 2, (bottom - top) / 2, idx, s.raw("cxf"), s.raw("wf"))
    if rows is None:
        return
    X, Y, img, inv = fr.region(rows, idx)
    ax = np.abs(X - s.cxf)
    rel = clip(ax / s.wf, _0, _1)
    ytop = s.my + F32(0.012) - s.beard_cover * F32(0.2) * rel * rel
    a = clip01((Y - ytop) * F32(45.0))
    a *= ramp(s.mw * F32(1.3) + s.beard_cover * s.wf - ax, inv)
    a *= np.minimum(s.beard, _1)
    mu = ramp(F32(0.011) - np.abs(Y - (s.my - s.lip_upper - F32(0.012))), inv)
    mu *= ramp(s.mw * F32(1.05) - np.abs(X - s.mx), inv)
    mu *= np.minimum(s.moustache, _1)
    np.maximum(a, mu, out=a)
    a *= face_a[idx, rows]
    a *= stubble[rows]
    fr.over(img, a, s.hair * F32(0.75))
    fr.store(rows, idx, img)


def nose(fr: Frame, q: Params) -> None:
    """Bridge shadow (away from the light), underside shadow, tip highlight, nostrils."""
    cy = (q.raw("ey") + q.raw("ny")) / 2 + 0.02
    ry = (q.raw("ny") - q.raw("ey")) / 2 + 0.04
    rows = fr.band(cy, ry, rx=q.raw("nose_w") * 2.0 + 0.01, fx=q.raw("nx"))
    if rows is None:
        return
    X, Y, img, inv = fr.region(rows)
    dx = X - q.nx
    dy = Y - q.ny
    a = ramp(F32(0.007) - np.abs(dx + np.sign(q.lx) * q.nose_w * F32(0.6)), inv)
    a *= clip01((Y - q.ey - F32(0.03)) * F32(40.0))
    a *= clip01(dy * F32(-40.0))
    a *= (F32(0.1) + F32(0.35) * np.abs(q.lx)) * q.nose_bridge
    fr.over(img, a, q.skin * F32(0.55))
    ux = dx / (q.nose_w * F32(1.05))
    uy = (dy - F32(0.006)) * F32(1 / 0.016)
    a = ramp((_1 - ux * ux - uy * uy) * F32(0.008), inv) * F32(0.3)
    fr.over(img, a, q.skin * F32(0.55))
    tx = (dx - q.lx * F32(0.01)) / (q.nose_w * F32(0.5))
    ty = (dy + F32(0.022)) * F32(1 / 0.02)
    a = ramp((_1 - tx * tx - ty * ty) * F32(0.008), inv) * F32(0.18)
    fr.over(img, a, np.minimum(q.skin * F32(1.25), F32(255)))
    ox = (np.abs(dx) - q.nose_w * F32(0.5)) / (q.nose_w * F32(0.3))
    oy = (dy + F32(0.002)) * F32(1 / 0.0085)
    a = ramp((_1 - ox * ox - oy * oy) * F32(0.006), inv) * F32(0.75)
    fr.over(img, a, q.skin * F32(0.3))


def mouth(fr: Frame, q: Params) -> None:
    """Lips, the dark opening (with teeth when smiling) and the lip line."""
    rows = fr.band(q.raw("my") + 0.01, np.full(fr.n, 0.06), rx=q.raw("mw"), fx=q.raw("mx"))
    if rows is None:
        return
    X, Y, img, inv = fr.region(rows)
    pn = (X - q.mx) / q.mw
    tt = _1 - pn * pn
    lift = q.mouth_curve * F32(0.01) + q.smile * F32(0.022)
    dyl = Y - q.my + lift * (_1 - tt)
    o = q.open * F32(0.032)
    cupid = _1 - F32(0.35) * clip01(_1 - np.abs(pn) * F32(5.0))
    top = -(q.lip_upper * cupid + F32(0.002)) * tt
    bot = (q.lip_lower + o + F32(0.002)) * tt
    a = ramp(np.minimum(dyl - top, bot - dyl), inv)
    fr.over(img, a, q.lip)
    inside = clip01(tt * F32(6.0))
    if np.any(q.raw("open") > 0):
        inner = ramp(np.minimum(dyl + F32(0.002) * tt, o * tt - dyl), inv)
        inner *= inside
        inner *= clip01(q.open * F32(20.0))
        fr.over(img, inner, rgb(70, 22, 28))
        teeth = ramp(np.minimum(dyl, np.minimum(o, F32(0.01)) * tt * q.smile - dyl), inv)
        teeth *= inner
        fr.over(img, teeth, rgb(232, 226, 212))
    line = ramp(F32(0.0022) - np.abs(dyl), inv)
    line *= inside
    line *= F32(0.8)
    fr.over(img, line, q.lip * F32(0.45))


def eyes(fr: Frame, q: Params) -> None:
    """Both eyes in one pass: socket shade, sclera, iris, pupil, glint, lash line."""
    up = 2.8 * q.raw("eye_h") + 0.01  # socket shade top
    down = 1.0 * q.raw("eye_h") + 0.004
    tilt = np.abs(np.sin(q.raw("eye_tilt"))) * 1.4 * np.maximum(q.raw("ew_l"), q.raw("ew_r"))
    half = (q.raw("ex_r") - q.raw("ex_l")) / 2 + 1.4 * np.maximum(q.raw("ew_l"), q.raw("ew_r"))
    rows = fr.band(
        q.raw("ey") + (down - up) / 2, (up + down) / 2 + tilt, fx=q.raw("eye_mid"), rx=half
    )
    if rows is None:
        return
    X, Y, img, inv = fr.region(rows)
    right = q.eye_mid < X
    sgn = np.where(right, _1, -_1)
    ex = np.where(right, q.ex_r, q.ex_l)
    ew = np.where(right, q.ew_r, q.ew_l)
    dx, dy = X - ex, Y - q.ey
    ct, st = np.cos(q.eye_tilt), np.sin(q.eye_tilt)
    sst = sgn * st  # rotation by -sgn * tilt
    p = dx * ct - dy * sst
    v = dy * ct + dx * sst
    pn = p / ew
    tt = _1 - pn * pn
    sry = q.eye_h * F32(2.2) + F32(0.008)
    sv = (v + q.eh * F32(0.6)) / sry
    d = (_1 - pn * pn * F32(0.55) - sv * sv) * (sry * F32(0.5))
    fr.over(img, ramp(d, inv) * F32(0.22), q.skin * F32(0.62))
    up = q.eh * (F32(1.1) + F32(0.25) * q.eye_round) * tt
    lo = q.eh * (F32(0.75) + F32(0.2) * q.eye_round) * tt
    white = ramp(np.minimum(v + up, lo - v), inv)
    fr.over(img, white, rgb(228, 222, 214))
    ir = q.iris_r * ew
    ix = ex + (q.gaze_x * F32(0.25) + F32(0.12) * q.yaw) * ew
    iy = q.ey + q.gaze_y * F32(0.004)
    r2 = (X - ix) ** 2 + (Y - iy) ** 2
    iris = ramp((ir * ir - r2) / (F32(2.0) * ir), inv) * white
    fr.over(img, iris, q.iris)
    pr = ir * F32(0.42)
    fr.over(img, ramp((pr * pr - r2) / (F32(2.0) * pr), inv) * white, rgb(12, 10, 10))
    hr = ir * F32(0.22)
    h2 = (X - ix + ir * F32(0.35)) ** 2 + (Y - iy + ir * F32(0.35)) ** 2
    glint = ramp((hr * hr - h2) / (F32(2.0) * hr), inv) * white
    glint *= F32(0.85)
    fr.over(img, glint, rgb(250, 250, 250))
    lash = ramp(F32(0.0032) + q.eh * F32(0.08) - np.abs(v + up), inv)
    lash *= clip01(tt * F32(5.0))
    fr.over(img, lash, rgb(28, 22, 22))


def brows(fr: Frame, q: Params) -> None:
    """Both brows in one pass: tapered arcs above the eyes."""
    bl = q.raw("eye_w") * 1.25 * q.raw("brow_len")
    reach = (
        q.raw("brow_thick")
        + 0.01 * np.abs(q.raw("brow_arch"))
        + np.abs(np.sin(q.raw("brow_tilt"))) * bl
    )
    half = (q.raw("ex_r") - q.raw("ex_l")) / 2 + bl + 0.15 * q.raw("eye_w")
    rows = fr.band(q.raw("by"), reach + 0.004, fx=q.raw("eye_mid"), rx=half)
    if rows is None:
        return
    X, Y, img, inv = fr.region(rows)
    right = q.eye_mid < X
    sgn = np.where(right, _1, -_1)
    bx = X - np.where(right, q.ex_r, q.ex_l)
    bx -= sgn * (q.brow_gap * q.eye_w * F32(0.4))
    by = Y - q.by
    bl = q.eye_w * F32(1.25) * q.brow_len
    cb, sb = np.cos(q.brow_tilt), np.sin(q.brow_tilt)
    ssb = sgn * sb
    bp = bx * cb + by * ssb
    bv = by * cb - bx * ssb
    bpn = bp / bl
    curve = -q.brow_arch * F32(0.01) * (_1 - bpn * bpn)
    th = q.brow_thick * (_1 - F32(0.55) * clip01(bpn * sgn))
    a = ramp(th - np.abs(bv - curve), inv)
    a *= ramp((_1 - np.abs(bpn)) * bl, inv)
    a *= F32(0.92)
    fr.over(img, a, q.brow)


def front_hair(fr: Frame, q: Params) -> None:
    """Hair over the forehead: hairline (recession, widow's peak, part), sideburns, fringe."""
    if not np.any(q.raw("hair_on") > 0):
        return
    bottom = q.raw("hair_bottom")
    top = q.raw("cyf") - q.raw("hf") - 0.1
    rows = fr.band((top + bottom) / 2, (bottom - top) / 2, rx=np.full(fr.n, 0.8), top=True)
    if rows is None:
        return
    X, Y, img, inv = fr.region(rows)
    rel = (X - q.cxf) / q.wf
    arel = np.abs(rel)
    edge = q.hl + q.recess * F32(0.09) * rel * rel + q.part * F32(0.02) * rel
    edge -= q.widow * F32(0.035) * clip01(_1 - arel * F32(4.0))
    side = clip01((arel - F32(0.74)) * F32(6.0))
    edge += side * ((q.ear_y - q.hl) * (F32(0.4) + F32(0.6) * q.sideburn))
    side_sign = np.sign(q.part + F32(1e-3))
    fedge = clip01(F32(0.7) - side_sign * rel * F32(0.9))
    fedge *= q.fringe * F32(0.19)
    fedge += q.hl
    np.maximum(edge, fedge, out=edge)
    np.minimum(edge, q.hair_bottom, out=edge)  # compact support: nothing below the band
    edge -= Y
    a = ramp(edge, inv)
    a *= q.hair_on
    tex = hair_texture(fr, q, rows)
    tex *= a
    fr.over(img, tex, q.hair * q.hair_bright)


def glasses(fr: Frame, q: Params, idx: np.ndarray) -> None:
    """Frames (round to rectangular), bridge, temples; clear or dark lenses."""
    s = q.subset(idx)
    ry_max = s.raw("eye_w") * s.raw("glasses_size") * s.raw("glasses_ratio")
    rows = fr.band(s.raw("ey"), ry_max + 0.012, idx, s.raw("cxf"), s.raw("wf"))
    if rows is None:
        return
    X, Y, img, inv = fr.region(rows, idx)
    ly = s.ey + F32(0.004)
    right = s.eye_mid < X
    ex = np.where(right, s.ex_r, s.ex_l)
    rx = np.where(right, s.ew_r, s.ew_l) * s.glasses_size
    ry = s.eye_w * s.glasses_size * s.glasses_ratio
    u = (X - ex) / rx
    v = (Y - ly) / ry
    u *= u
    v *= v
    f = (_1 - s.glasses_square) * (u + v) + s.glasses_square * np.sqrt(u * u + v * v)
    a = ramp(s.glasses_thick - np.abs(f - _1) * ry * F32(0.5), inv)
    lens = ramp((_1 - f) * ry * F32(0.5), inv)
    bar = ramp(s.glasses_thick - np.abs(Y - ly + ry * F32(0.45)), inv)
    ax = np.abs(X - s.cxf)
    inner = (s.ex_r - s.ex_l) * F32(0.5) - (s.ew_l + s.ew_r) * F32(0.5) * s.glasses_size
    outer = (s.ex_r - s.ex_l) * F32(0.5) + np.maximum(s.ew_l, s.ew_r) * s.glasses_size
    reach = ramp(inner + F32(0.004) - ax, inv)
    reach += ramp(ax - outer, inv) * ramp(s.wf - ax, inv)
    np.maximum(a, bar * reach, out=a)
    dark = s.dark_lens
    tint = rgb(232, 236, 240) * (_1 - dark) + F32(18) * dark
    fr.over(img, lens * (F32(0.08) + F32(0.72) * dark), tint)
    fr.over(img, a, s.frame)
    fr.store(rows, idx, img)
