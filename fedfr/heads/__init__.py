"""Classification heads and margin losses for face recognition.

A margin is a pure transform of cosine logits (``margins``), kept apart from the class head that
produces the cosines (``classifier``) and from cross-entropy.
"""

from fedfr.heads.classifier import NormalizedClassHead, cosine_logits
from fedfr.heads.margins import (
    MARGIN_PRESETS,
    MarginConfig,
    arcface_logits,
    cosface_logits,
    margin_cross_entropy,
    margin_logits,
)

__all__ = [
    "MARGIN_PRESETS",
    "MarginConfig",
    "NormalizedClassHead",
    "arcface_logits",
    "cosface_logits",
    "cosine_logits",
    "margin_cross_entropy",
    "margin_logits",
]
