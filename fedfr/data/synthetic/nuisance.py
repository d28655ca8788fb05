"""Per-image nuisance: pose, expression, lighting, occlusion, blur, noise, alignment jitter.

Deterministic from ``(seed, identity, image index, domain)``; scaled by the
:class:`GeneratorConfig` strengths and biased by the :class:`DomainStyle`.
"""

from __future__ import annotations

import numpy as np

from . import _rng
from .config import GeneratorConfig
from .domain import DomainStyle

_NAMES = (
    "yaw", "pitch", "roll", "scale", "tx", "ty",
    "smile", "open_p", "open", "blink", "squint", "brow_raise", "gaze_x", "gaze_y",
    "lx", "ly", "lstr", "amb", "exposure",
    "occ", "occ_a", "occ_b", "occ_c", "occ_d", "occ_e",
    "blur", "noise", "glasses_flip", "sunglasses",
    "bg_r", "bg_g", "bg_b", "bg_gx", "bg_gy", "bg_phase", "bg_freq", "bg_ang",
    "cloth_r", "cloth_g", "cloth_b", "hair_shift", "hair_bright",
    "noise_dy", "noise_dx", "face_shift",
)  # fmt: skip
OCCLUSION_KINDS = ("none", "rect", "hand", "mask", "cap")


def _n(u: np.ndarray) -> np.ndarray:
    """Standard normal from a uniform (inverse-CDF approximation, deterministic)."""
    u = np.clip(u, 1e-7, 1 - 1e-7)
    t = np.sqrt(-2.0 * np.log(np.minimum(u, 1 - u)))
    z = t - (2.515517 + 0.802853 * t + 0.010328 * t * t) / (
        1 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t**3
    )
    return np.where(u < 0.5, -z, z)


def image_nuisance(
    seed: int,
    ids: np.ndarray,
    indices: np.ndarray,
    domain: DomainStyle,
    config: GeneratorConfig,
) -> dict[str, np.ndarray]:
    """Nuisance parameters of each image, float32 arrays of shape ``(N,)``."""
    u = _rng.uniform(_rng.key(seed, _rng.TAG_IMAGE, ids, indices, domain.key), len(_NAMES))
    r = {name: u[:, j] for j, name in enumerate(_NAMES)}
    c = config
    out: dict[str, np.ndarray] = {}
    out["yaw"] = np.clip(0.31 * c.pose * _n(r["yaw"]), -0.7, 0.7)
    out["pitch"] = np.clip(0.17 * c.pose * _n(r["pitch"]), -0.45, 0.45)
    out["roll"] = 0.065 * c.pose * _n(r["roll"]) + 0.02 * c.jitter * _n(r["face_shift"])
    out["scale"] = np.exp(0.04 * c.jitter * _n(r["scale"]))
    out["tx"] = 0.018 * c.jitter * _n(r["tx"])
    out["ty"] = 0.018 * c.jitter * _n(r["ty"])
    e = c.expression
    out["smile"] = np.clip(0.15 + 0.45 * _n(r["smile"]), 0.0, 1.0) * e
    out["open"] = np.where(r["open_p"] < 0.18 * min(e, 3.0), 0.25 + 0.75 * r["open"], 0.0) * min(
        e, 1.0
    )
    eye = 1.0 - 0.45 * e * r["squint"] ** 2
    out["eye_open"] = np.where(r["blink"] < 0.06 * min(e, 3.0), 0.08, eye)
    out["brow_raise"] = 0.6 * e * _n(r["brow_raise"])
    out["gaze_x"] = 0.5 * _n(r["gaze_x"])
    out["gaze_y"] = 0.3 * _n(r["gaze_y"])
    lj = 1.3 * c.lighting * domain.light_jitter
    lx = domain.light_x + 0.55 * lj * _n(r["lx"])
    ly = domain.light_y - 0.25 + 0.35 * lj * _n(r["ly"])
    norm = np.sqrt(lx * lx + ly * ly + 1.0)
    out["lx"], out["ly"], out["lz"] = lx / norm, ly / norm, 1.0 / norm
    out["diffuse"] = np.clip((0.5 + 0.22 * lj * _n(r["lstr"])) * domain.light_strength, 0.05, 1.5)
    out["ambient"] = np.clip(0.55 + 0.12 * lj * _n(r["amb"]) + domain.ambient, 0.15, 1.2)
    out["exposure"] = domain.exposure * np.exp(0.12 * lj * _n(r["exposure"]))
    # Occlusion: kind index into OCCLUSION_KINDS, and five shape parameters in (0, 1).
    p = np.array([0.05, 0.04, 0.035, 0.035]) * c.occlusion
    edges = np.cumsum(p)
    occ = np.searchsorted(edges, r["occ"], side="right") + 1
    out["occ"] = np.where(occ > 4, 0, occ)
    for k in "abcde":
        out[f"occ_{k}"] = r[f"occ_{k}"]
    out["blur"] = np.sqrt((0.55 * c.blur * _n(r["blur"])) ** 2 + domain.blur**2)
    out["noise"] = np.sqrt((1.5 * c.noise * r["noise"]) ** 2 + domain.noise**2)
    out["glasses_flip"] = (r["glasses_flip"] < c.accessory_flip).astype(np.float64)
    out["sunglasses"] = r["sunglasses"]
    rand_bg = np.stack([r["bg_r"], r["bg_g"], r["bg_b"]], 1) * 230.0 + 15.0
    bg = (
        np.asarray(domain.bg_color)[None, :] * (1.0 - domain.bg_random) + rand_bg * domain.bg_random
    )
    out["bg"] = bg * np.exp(0.1 * _n(r["bg_g"]))[:, None] ** (1.0 - domain.bg_random)
    out["bg_gx"] = 0.5 * (r["bg_gx"] - 0.5) * (0.3 + domain.bg_random)
    out["bg_gy"] = 0.5 * (r["bg_gy"] - 0.5) * (0.3 + domain.bg_random)
    out["bg_phase"] = r["bg_phase"] * 2 * np.pi
    out["bg_freq"] = 3.0 + 14.0 * r["bg_freq"]
    out["bg_ang"] = r["bg_ang"] * np.pi
    out["cloth"] = np.stack([r["cloth_r"], r["cloth_g"], r["cloth_b"]], 1) * 200.0 + 20.0
    out["hair_shift"] = 0.012 * _n(r["hair_shift"])
    out["hair_bright"] = np.exp(0.08 * _n(r["hair_bright"]))
    out["noise_dy"], out["noise_dx"] = r["noise_dy"], r["noise_dx"]
    return {k: np.asarray(v, np.float32) for k, v in out.items()}
