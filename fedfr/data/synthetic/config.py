"""Difficulty knobs of the synthetic face generator."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from fedfr.errors import FedFRError

#: Bumped whenever the rendering of a given (seed, identity, image, domain) changes.
GENERATOR_VERSION = 1


def check_known_keys(cls: type, d: dict[str, object]) -> None:
    """Raise FedFRError naming the keys of ``d`` that are not fields of dataclass ``cls``."""
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise FedFRError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(known)}")


@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs that set how hard the synthetic data is. ``1.0`` is the calibrated default.

    Attributes:
        family_size: identities per look-alike family (global ids ``f*family_size + j``).
            ``1`` disables families.
        family_spread: how far members of a family are from the family's base parameters, as
            the fraction of the population's spread (0: clones, 1: unrelated).
        pose: scale of yaw/pitch/roll.
        expression: scale of smile, mouth opening, eye closure, brow raise.
        lighting: scale of per-image light direction/intensity variation.
        occlusion: probability multiplier of occluders (rectangles, hands, masks, caps).
        blur: scale of per-image defocus blur.
        noise: scale of per-image sensor noise.
        jitter: scale of the alignment jitter (similarity transform of the aligned crop).
        accessory_flip: probability that a glasses wearer is seen without them (and a
            non-wearer with them) in a given image.
        domain_strength: how far device domains are from the neutral public domain
            (0: identical to public).
    """

    family_size: int = 4
    family_spread: float = 0.4
    pose: float = 1.0
    expression: float = 1.0
    lighting: float = 1.0
    occlusion: float = 1.0
    blur: float = 1.0
    noise: float = 1.0
    jitter: float = 1.0
    accessory_flip: float = 0.15
    domain_strength: float = 1.0

    def __post_init__(self) -> None:
        if int(self.family_size) < 1:
            raise FedFRError(f"family_size must be >= 1, got {self.family_size}")
        if not 0.0 <= float(self.family_spread) <= 1.0:
            raise FedFRError(f"family_spread must be in [0, 1], got {self.family_spread}")
        for f in fields(self):
            if f.name != "family_size" and float(getattr(self, f.name)) < 0:
                raise FedFRError(f"{f.name} must be >= 0, got {getattr(self, f.name)}")

    def to_dict(self) -> dict[str, float | int]:
        """JSON-serializable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> GeneratorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected."""
        check_known_keys(cls, d)
        return cls(**d)  # type: ignore[arg-type]
