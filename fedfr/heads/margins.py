"""Margin logits: pure functions from cosine similarities to scaled, margin-adjusted logits.

The combined margin of InsightFace covers the usual losses with one formula applied to the
target class only::

    logit_target = s * (cos(m1 * theta + m2) - m3),   logit_other = s * cos(theta_j)

``m1=1, m2=0, m3>0`` is CosFace, ``m1=1, m2>0, m3=0`` is ArcFace. Rows whose label is ``-1`` are
ignored: they are only scaled, and cross-entropy skips them (``ignore_index=-1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedfr.errors import UnknownNameError

IGNORE_INDEX = -1


@dataclass(frozen=True)
class MarginConfig:
    """Parameters of the combined margin ``s * (cos(m1*theta + m2) - m3)``.

    Attributes:
        s: logit scale (> 0).
        m1: multiplicative angular margin (SphereFace style; 1.0 = none).
        m2: additive angular margin in radians (ArcFace).
        m3: additive cosine margin (CosFace).
    """

    s: float = 64.0
    m1: float = 1.0
    m2: float = 0.0
    m3: float = 0.4

    def __post_init__(self) -> None:
        if not self.s > 0:
            raise ValueError(f"margin scale s must be > 0, got {self.s}")
        if self.m1 < 1.0 or self.m2 < 0.0 or self.m3 < 0.0:
            raise ValueError(f"margins must be m1 >= 1, m2 >= 0, m3 >= 0; got {self}")

    @property
    def kind(self) -> str:
        """``"cosface"``, ``"arcface"``, ``"combined"`` or ``"softmax"`` (no margin)."""
        angular = self.m1 != 1.0 or self.m2 != 0.0
        if angular and self.m3 != 0.0:
            return "combined"
        if angular:
            return "arcface" if self.m1 == 1.0 else "combined"
        return "cosface" if self.m3 != 0.0 else "softmax"

    @classmethod
    def preset(cls, name: str) -> MarginConfig:
        """A named configuration: see :data:`MARGIN_PRESETS`."""
        try:
            return MARGIN_PRESETS[name]
        except KeyError:
            choices = ", ".join(sorted(MARGIN_PRESETS))
            raise UnknownNameError(f"unknown margin {name!r}; choose one of: {choices}") from None


#: Named margins. ``fedfr_cosface`` is the FedFR paper's local loss (s=30, m=0.4).
MARGIN_PRESETS: dict[str, MarginConfig] = {
    "cosface": MarginConfig(s=64.0, m3=0.4),
    "arcface": MarginConfig(s=64.0, m2=0.5, m3=0.0),
    "combined": MarginConfig(s=64.0, m1=1.0, m2=0.3, m3=0.2),
    "fedfr_cosface": MarginConfig(s=30.0, m3=0.4),
}


def _check(cos: torch.Tensor, labels: torch.Tensor) -> None:
    if cos.ndim != 2:
        raise ValueError(f"cosines must have shape (N, C), got {tuple(cos.shape)}")
    if labels.ndim != 1 or labels.shape[0] != cos.shape[0]:
        raise ValueError(
            f"labels must have shape ({cos.shape[0]},) to match cosines {tuple(cos.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    if labels.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")


def margin_logits(cos: torch.Tensor, labels: torch.Tensor, cfg: MarginConfig) -> torch.Tensor:
    """Apply the combined margin to the target cosines and scale.

    Args:
        cos: (N, C) cosine similarities in [-1, 1], any float dtype; never modified.
        labels: (N,) int64 class indices in [0, C), or -1 for rows to ignore.
        cfg: the margin.

    Returns:
        (N, C) logits, a new tensor of ``cos``'s dtype.

    Raises:
        ValueError: on shape or dtype mismatches, or a label >= C.
    """
    _check(cos, labels)
    if labels.numel() and int(labels.max()) >= cos.shape[1]:
        raise ValueError(f"label {int(labels.max())} out of range for {cos.shape[1]} classes")
    valid = labels != IGNORE_INDEX
    rows = torch.nonzero(valid, as_tuple=True)[0]
    cols = labels[rows]
    target = cos[rows, cols].float().clamp(-1.0, 1.0)
    if cfg.m1 != 1.0 or cfg.m2 != 0.0:
        theta = torch.acos(target.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
        angle = cfg.m1 * theta + cfg.m2
        # Past pi the cosine is no longer monotone in theta; fall back to a linear penalty
        # (InsightFace's "th/mm" rule) so the target logit keeps decreasing with theta.
        fallback = target - math.sin(math.pi - cfg.m2) * cfg.m2 - (cfg.m1 - 1.0) * theta
        adjusted = torch.where(angle < math.pi, torch.cos(angle), fallback)
    else:
        adjusted = target
    adjusted = adjusted - cfg.m3
    out = cos.clone()
    out[rows, cols] = adjusted.to(out.dtype)
    return out * cfg.s


def cosface_logits(cos: torch.Tensor, labels: torch.Tensor, s: float = 64.0, m: float = 0.4):
    """CosFace: ``s * (cos - m)`` on the target class. See :func:`margin_logits`."""
    return margin_logits(cos, labels, MarginConfig(s=s, m3=m))


def arcface_logits(cos: torch.Tensor, labels: torch.Tensor, s: float = 64.0, m: float = 0.5):
    """ArcFace: ``s * cos(theta + m)`` on the target class. See :func:`margin_logits`."""
    return margin_logits(cos, labels, MarginConfig(s=s, m2=m, m3=0.0))


def margin_cross_entropy(
    cos: torch.Tensor, labels: torch.Tensor, cfg: MarginConfig, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of :func:`margin_logits`; rows labelled -1 contribute nothing.

    Returns a scalar (``reduction="mean"`` over non-ignored rows; 0 if every row is ignored)
    or per-row losses (``reduction="none"``, 0 for ignored rows).
    """
    logits = margin_logits(cos, labels, cfg).float()
    if reduction == "mean" and not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction=reduction)
