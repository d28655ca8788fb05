"""Identity parameters: stable per (seed, identity id), grouped into look-alike families.

Every identity ``i`` belongs to family ``i // family_size``. Each continuous trait is a standard
normal latent ``z = sqrt(1 - s^2) * z_family + s * z_individual`` (``s`` = ``family_spread``),
mapped through the normal CDF onto the trait's range. Discrete traits (glasses, beard, fringe,
freckles, scar) threshold such latents too, so family members mostly share them. Marks (mole
positions, scar geometry, freckle pattern) are individual: they are what tells look-alikes apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _rng
from .config import GeneratorConfig

# (name, low, high): continuous traits, family-correlated. Units: fractions of the crop side
# in the canonical (aligned, frontal) face frame; y grows downwards.
CONTINUOUS: tuple[tuple[str, float, float], ...] = (
    ("face_w", 0.335, 0.415),  # half width of the face oval
    ("face_h", 0.50, 0.60),  # half height
    ("face_cy", 0.50, 0.56),  # centre y
    ("jaw", 0.05, 0.45),  # narrowing of the lower face
    ("eye_dx", 0.14, 0.185),  # half distance between the eyes
    ("eye_y", 0.435, 0.49),
    ("eye_w", 0.048, 0.074),  # half width of an eye
    ("eye_h", 0.016, 0.032),  # half opening
    ("eye_tilt", -0.2, 0.2),  # radians, outer corner up when positive
    ("eye_round", 0.0, 1.0),  # almond (0) .. round (1)
    ("iris_r", 0.36, 0.5),  # iris radius / eye half width
    ("brow_dy", 0.05, 0.09),  # brow above the eye
    ("brow_thick", 0.008, 0.024),
    ("brow_arch", -0.4, 1.6),
    ("brow_len", 0.85, 1.35),
    ("brow_tilt", -0.2, 0.25),
    ("nose_y", 0.60, 0.68),  # nose tip
    ("nose_w", 0.032, 0.062),
    ("nose_bridge", 0.0, 1.0),
    ("mouth_y", 0.775, 0.85),
    ("mouth_w", 0.07, 0.12),
    ("lip_upper", 0.006, 0.018),
    ("lip_lower", 0.008, 0.024),
    ("mouth_curve", -0.6, 0.6),
    ("ear_out", 0.0, 0.045),
    ("ear_y", 0.50, 0.58),
    ("ear_h", 0.05, 0.09),
    ("skin_tone", 0.0, 1.0),
    ("skin_warm", -1.0, 1.0),
    ("lip_red", 0.0, 1.0),
    ("hair_tone", 0.0, 1.0),
    ("hair_gray", 0.0, 1.0),
    ("iris_tone", 0.0, 1.0),
    ("hairline", 0.46, 0.74),  # hairline height above the face centre, / face_h
    ("hair_volume", 0.0, 0.08),
    ("hair_len", 0.0, 1.0),
    ("hair_cover", 0.0, 1.0),  # < 0.07: bald
    ("recess", 0.0, 1.0),
    ("widow", -0.5, 1.0),
    ("part", -1.0, 1.0),
    ("fringe", 0.0, 1.0),
    ("sideburn", 0.0, 1.0),
    ("hair_freq", 90.0, 220.0),  # strand texture frequency
    ("hair_angle", -0.6, 0.6),
    ("beard", 0.0, 1.0),
    ("beard_cover", 0.0, 1.0),
    ("moustache", 0.0, 1.0),
    ("glasses", 0.0, 1.0),
    ("glasses_square", 0.0, 1.0),
    ("glasses_size", 1.35, 1.75),
    ("glasses_ratio", 0.6, 0.9),
    ("glasses_tone", 0.0, 1.0),
    ("glasses_thick", 0.003, 0.009),
    ("freckles", 0.0, 1.0),
    ("brow_gap", -0.2, 0.3),
)

# Individual (not family-shared) uniforms: marks.
MAX_MOLES = 3
_MARKS = (
    ["n_moles"]
    + [f"mole{k}_{a}" for k in range(MAX_MOLES) for a in ("x", "y", "r", "d")]
    + ["scar", "scar_x", "scar_y", "scar_angle", "scar_len"]
    + [f"freckle_{a}" for a in ("f1", "f2", "f3", "a1", "a2", "a3", "p1", "p2", "p3")]
    + ["hair_phase"]
)

_SKIN = np.array(
    [
        [255, 226, 204],
        [243, 202, 170],
        [228, 178, 140],
        [205, 148, 108],
        [170, 112, 78],
        [130, 84, 58],
        [92, 58, 42],
    ],
    np.float32,
)
_HAIR = np.array(
    [
        [22, 18, 18],
        [52, 36, 28],
        [92, 60, 38],
        [132, 66, 36],
        [150, 112, 70],
        [205, 172, 118],
        [228, 214, 186],
    ],
    np.float32,
)
_IRIS = np.array(
    [[50, 30, 18], [92, 56, 28], [112, 92, 46], [72, 104, 64], [104, 118, 128], [60, 100, 160]],
    np.float32,
)
_FRAMES = np.array(
    [[20, 20, 22], [60, 40, 30], [150, 150, 158], [120, 30, 40], [30, 50, 110], [190, 160, 90]],
    np.float32,
)


def palette(colors: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation of ``colors`` (K, 3) at ``u`` in [0, 1] -> (N, 3)."""
    k = len(colors) - 1
    t = np.clip(np.asarray(u, np.float64), 0.0, 1.0) * k
    i = np.minimum(t.astype(np.int64), k - 1)
    f = (t - i)[:, None]
    return (colors[i] * (1.0 - f) + colors[i + 1] * f).astype(np.float32)


@dataclass(frozen=True)
class IdentityParams:
    """Parameters of a batch of identities: ``ids``, ``families`` and named float32 arrays.

    Trait arrays are accessed as attributes (``p.face_w``), each of shape ``(N,)``; colors
    (``skin``, ``hair``, ``brow``, ``iris``, ``lip``, ``frame``) have shape ``(N, 3)``.
    """

    ids: np.ndarray
    families: np.ndarray
    fields: dict[str, np.ndarray]

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: np.ndarray) -> IdentityParams:
        """The sub-batch at positions ``idx``."""
        return IdentityParams(
            self.ids[idx], self.families[idx], {k: v[idx] for k, v in self.fields.items()}
        )

    def row(self, i: int) -> dict[str, object]:
        """One identity's parameters as plain Python values (for inspection)."""
        return {k: v[i].tolist() for k, v in self.fields.items()}


def family_of(ids: np.ndarray, config: GeneratorConfig) -> np.ndarray:
    """Family id of each identity id."""
    return np.asarray(ids, np.int64) // int(config.family_size)


def identity_params(seed: int, ids: np.ndarray, config: GeneratorConfig) -> IdentityParams:
    """Deterministic parameters of identities ``ids`` (int array, any order, repeats allowed)."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    fam = family_of(ids, config)
    n_c = len(CONTINUOUS)
    s = float(config.family_spread)
    z = np.sqrt(1.0 - s * s) * _rng.normal(_rng.key(seed, _rng.TAG_FAMILY, fam), n_c)
    z += s * _rng.normal(_rng.key(seed, _rng.TAG_IDENTITY, ids), n_c)
    u = _rng.normal_cdf(z)
    f: dict[str, np.ndarray] = {}
    for j, (name, lo, hi) in enumerate(CONTINUOUS):
        f[name] = (lo + (hi - lo) * u[:, j]).astype(np.float32)
    m = _rng.uniform(_rng.key(seed, _rng.TAG_MARKS, ids), len(_MARKS))
    for j, name in enumerate(_MARKS):
        f[name] = m[:, j].astype(np.float32)

    # Derived / discrete traits.
    f["bald"] = (f["hair_cover"] < 0.07).astype(np.float32)
    f["glasses"] = (f["glasses"] > 0.78).astype(np.float32)
    f["beard"] = np.where(f["beard"] > 0.72, 0.45 + 1.6 * (f["beard"] - 0.72), 0.0).astype(
        np.float32
    )
    f["moustache"] = np.where(f["moustache"] > 0.7, 0.5 + 1.5 * (f["moustache"] - 0.7), 0.0).astype(
        np.float32
    )
    f["fringe"] = np.where(f["fringe"] > 0.55, (f["fringe"] - 0.55) / 0.45, 0.0).astype(np.float32)
    f["freckles"] = np.where(f["freckles"] > 0.8, 0.4 + 3.0 * (f["freckles"] - 0.8), 0.0).astype(
        np.float32
    )
    f["n_moles"] = np.floor(f["n_moles"] ** 1.6 * (MAX_MOLES + 1)).astype(np.float32)
    f["scar"] = (f["scar"] > 0.9).astype(np.float32)
    f["hair_gray"] = np.clip((f["hair_gray"] - 0.75) * 3.0, 0.0, 0.8).astype(np.float32)

    skin = palette(_SKIN, f["skin_tone"])
    skin[:, 0] += 10.0 * f["skin_warm"]
    skin[:, 2] -= 10.0 * f["skin_warm"]
    f["skin"] = np.clip(skin, 0, 255)
    hair = palette(_HAIR, f["hair_tone"])
    g = f["hair_gray"][:, None]
    f["hair"] = hair * (1.0 - g) + np.float32(175.0) * g
    f["brow"] = f["hair"] * np.float32(0.7) + np.float32(12.0)
    f["iris"] = palette(_IRIS, f["iris_tone"])
    lip = skin * np.array([0.8, 0.56, 0.56], np.float32)
    lip[:, 0] += 40.0 * f["lip_red"]
    f["lip"] = np.clip(lip, 0, 255)
    ft = np.minimum((f["glasses_tone"] * len(_FRAMES)).astype(np.int64), len(_FRAMES) - 1)
    f["frame"] = _FRAMES[ft]
    return IdentityParams(ids, fam, f)
