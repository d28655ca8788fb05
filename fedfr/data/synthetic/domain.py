"""Camera/environment domains: the public one and one per device (phone).

A domain is everything about the pictures that is not the person: white balance, tone curve,
saturation, sensor noise, optics blur, resolution loss, JPEG compression, vignetting, the
background and the typical lighting. A device's photos share its domain; a model pretrained on
the neutral public domain does worse on them, which is what on-device personalization fixes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np

from fedfr.errors import FedFRError

from . import _rng
from .config import check_known_keys


@dataclass(frozen=True)
class DomainStyle:
    """A camera/environment style. ``index`` is ``-1`` for the public domain.

    Attributes:
        name: ``"public"`` or ``"device_007"``.
        index: device index, ``-1`` for public.
        gain: per-channel RGB gain (white balance / color cast).
        black: black level lift in [0, 1) (washed-out shadows).
        gamma: tone curve exponent applied as ``v ** (1 / gamma)``.
        contrast: contrast around mid-gray.
        saturation: 1 keeps colors, 0 is grayscale.
        noise: sensor noise standard deviation, in 0..255 units.
        blur: optics blur in pixels (at 112 px).
        downscale: resolution factor (1: none; 0.5: captured at half resolution).
        jpeg_quality: JPEG quality of the camera pipeline (0: no JPEG).
        vignette: darkening at the corners (0..1).
        bg_color: background RGB.
        bg_random: per-image randomness of the background color (1: arbitrary backgrounds).
        bg_texture: amplitude of the background texture.
        bg_freq, bg_angle: frequency and orientation of the background texture.
        light_x, light_y: bias of the light direction (x: from the right, y: from below).
        light_strength: multiplier of the directional light.
        ambient: additive change of the ambient light.
        light_jitter: scale of the per-image variation of the light.
        exposure: global brightness multiplier.
    """

    name: str = "public"
    index: int = -1
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    black: float = 0.0
    gamma: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    noise: float = 2.0
    blur: float = 0.0
    downscale: float = 1.0
    jpeg_quality: int = 0
    vignette: float = 0.0
    bg_color: tuple[float, float, float] = (128.0, 128.0, 128.0)
    bg_random: float = 1.0
    bg_texture: float = 0.0
    bg_freq: float = 9.0
    bg_angle: float = 0.0
    light_x: float = 0.0
    light_y: float = 0.0
    light_strength: float = 1.0
    ambient: float = 0.0
    light_jitter: float = 1.0
    exposure: float = 1.0

    @property
    def key(self) -> int:
        """Integer key of the domain in per-image random streams (public: 0)."""
        return self.index + 1

    def to_dict(self) -> dict[str, object]:
        """JSON-serializable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> DomainStyle:
        """Inverse of :meth:`to_dict`."""
        check_known_keys(cls, d)
        kw = dict(d)
        for k in ("gain", "bg_color"):
            if k in kw:
                kw[k] = tuple(float(x) for x in kw[k])  # type: ignore[union-attr]
        return cls(**kw)  # type: ignore[arg-type]


def public_domain() -> DomainStyle:
    """The neutral domain of the public and eval splits: varied backgrounds and lighting."""
    return DomainStyle()


def device_domain(seed: int, device_index: int, *, strength: float = 1.0) -> DomainStyle:
    """The domain of device ``device_index``: deterministic from ``(seed, device_index)``.

    ``strength`` interpolates every attribute between the public domain (0) and the drawn
    device style (1); values above 1 extrapolate (clipped to valid ranges).
    """
    if device_index < 0:
        raise FedFRError(f"device_index must be >= 0, got {device_index}")
    u = _rng.uniform(_rng.key(seed, _rng.TAG_DOMAIN, device_index), 32)[0]
    z = np.sqrt(-2.0 * np.log(u[12:18])) * np.cos(2.0 * np.pi * u[18:24])
    temp = (u[0] * 2 - 1) * 0.3  # warm (+) / cool (-) cast
    tint = (u[1] * 2 - 1) * 0.12  # green / magenta
    drawn = {
        "gain": (1.0 + temp, 1.0 + tint, 1.0 - temp),
        "black": 0.1 * u[2] ** 2,
        "gamma": float(np.exp(0.3 * z[0])),
        "contrast": float(np.exp(0.25 * z[1])),
        "saturation": 0.35 + 0.95 * u[3],
        "noise": 3.0 + 11.0 * u[4],
        "blur": 1.3 * u[5],
        "downscale": 1.0 if u[6] < 0.4 else 0.4 + 0.35 * u[7],
        "vignette": 0.55 * u[8],
        "bg_color": tuple(float(x) for x in 25.0 + 205.0 * u[9:12] ** 1.2),
        "bg_random": 0.15,
        "bg_texture": 0.3 * abs(z[2]) / 2.0,
        "bg_freq": 4.0 + 20.0 * u[24],
        "bg_angle": float(np.pi * u[25] * 2.0),
        "light_x": float(np.clip(0.75 * z[3], -1.1, 1.1)),
        "light_y": float(np.clip(0.35 * z[4] - 0.1, -0.8, 0.6)),
        "light_strength": 0.8 + 0.7 * u[26],
        "ambient": -0.18 + 0.26 * u[27],
        "light_jitter": 0.45,
        "exposure": float(np.exp(0.22 * z[5])),
    }
    jpeg = 0 if u[28] < 0.35 else int(12 + 40 * u[29])
    pub = public_domain()
    kw: dict[str, object] = {"name": f"device_{device_index:03d}", "index": int(device_index)}
    s = float(strength)
    for k, v in drawn.items():
        p = getattr(pub, k)
        if isinstance(v, tuple):
            kw[k] = tuple(float(a + s * (b - a)) for a, b in zip(p, v, strict=True))
        else:
            kw[k] = float(p + s * (float(v) - p))
    kw["jpeg_quality"] = jpeg if s >= 0.5 else 0
    kw["saturation"] = max(0.0, float(kw["saturation"]))  # type: ignore[arg-type]
    kw["gamma"] = max(0.3, float(kw["gamma"]))  # type: ignore[arg-type]
    kw["downscale"] = float(np.clip(kw["downscale"], 0.25, 1.0))  # type: ignore[arg-type]
    kw["gain"] = tuple(max(0.2, g) for g in kw["gain"])  # type: ignore[union-attr]
    return replace(pub, **kw)  # type: ignore[arg-type]


def tone_lut(d: DomainStyle) -> np.ndarray:
    """``(1, 256, 3)`` uint8 lookup table: gain, black level, gamma and contrast."""
    v = np.arange(256, dtype=np.float64)[:, None] / 255.0 * np.asarray(d.gain, np.float64)[None, :]
    v = np.clip(v, 0.0, 1.0)
    v = d.black + (1.0 - d.black) * v
    v = v ** (1.0 / d.gamma)
    v = 0.5 + (v - 0.5) * d.contrast
    return np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8)[None]


@lru_cache(maxsize=64)
def vignette_map(strength: float, h: int, w: int) -> np.ndarray:
    """``(h, w)`` float32 multiplicative vignetting."""
    s = min(h, w)
    y = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / s
    x = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / s
    r2 = (x[None, :] ** 2 + y[:, None] ** 2) * 2.0
    out = (1.0 - strength * r2 * r2).astype(np.float32)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=64)
def background_texture(freq: float, angle: float, h: int, w: int) -> np.ndarray:
    """``(h, w)`` float32 zero-mean texture in [-1, 1] (wallpaper-like)."""
    s = min(h, w)
    y = (np.arange(h, dtype=np.float32) + 0.5 - h / 2)[:, None] / s
    x = (np.arange(w, dtype=np.float32) + 0.5 - w / 2)[None, :] / s
    c, sn = np.cos(angle), np.sin(angle)
    a = np.sin(freq * (c * x + sn * y) * 2.0)
    b = np.sin(freq * 0.61 * (-sn * x + c * y) * 2.0 + 1.3)
    out = (0.6 * a + 0.4 * a * b).astype(np.float32)
    out.setflags(write=False)
    return out
