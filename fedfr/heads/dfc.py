"""Decoupled Feature Customization (DFC): the personalized head of FedFR.

A device's personalized recognizer is its local backbone followed by a *converter*, a D x D
linear map initialized to the identity, trained with one binary classifier per local identity
(FedFR, AAAI 2022). The binary classifiers are normalized weight rows with a bias; the loss is
the SphereFace2-style binary loss the FedFR reference code uses. With ``c`` the cosine of a
converted feature to classifier ``k`` and the similarity adjustment
``g(c) = 2 * ((c + 1) / 2) ** t - 1``::

    positive (image of identity k):  lam / r       * softplus(-(r * (g(c) - m) + b_k))
    negative (any other image):      (1 - lam) / r * softplus(  r * (g(c) + m) + b_k)

summed over the local identities and averaged over images; public images are negatives for
every local identity. Defaults: ``lam=0.7, r=30, m=0.4, t=3``.

The ``1/r`` factor and ``g`` matter: without them a negative at cosine 0.3 costs
``0.3 * softplus(30 * 0.7) ~ 6.3`` per identity instead of ``~0.002``, so with 20 identities
and the loss weight 10 the DFC gradient swamps CosFace and wrecks the backbone (the first
version of this module did exactly that; docs/RESULTS.md shows the effect).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedfr.heads.classifier import cosine_logits


@dataclass(frozen=True)
class BinaryMarginConfig:
    """Parameters of :func:`binary_margin_loss` (positive weight, scale, margin)."""

    pos_weight: float = 0.7
    scale: float = 30.0
    margin: float = 0.4
    t: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.pos_weight <= 1.0 or not self.scale > 0 or self.margin < 0:
            raise ValueError(f"need 0 <= pos_weight <= 1, scale > 0, margin >= 0: {self}")
        if not self.t >= 1.0:
            raise ValueError(f"the similarity adjustment needs t >= 1, got {self.t}")


def similarity_adjustment(cos: torch.Tensor, t: float) -> torch.Tensor:
    """``g(c) = 2 * ((c + 1) / 2) ** t - 1``: maps [-1, 1] onto itself, lowering mid cosines."""
    return 2.0 * ((cos.clamp(-1.0, 1.0) + 1.0) / 2.0).pow(t) - 1.0


def binary_margin_loss(cos: torch.Tensor, labels: torch.Tensor,
                       cfg: BinaryMarginConfig = BinaryMarginConfig(),
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """The DFC loss of (N, K) cosines to K binary classifiers (see module doc).

    Args:
        cos: (N, K) cosines in [-1, 1].
        labels: (N,) int64 local identity in ``0..K-1``, or -1 for an image of none of them
            (a public negative).
        bias: (K,) per-classifier bias (``None``: zero).

    Returns:
        Scalar: the per-image sum over classifiers, averaged over the N images.
    """
    if cos.ndim != 2 or labels.shape != (cos.shape[0],):
        raise ValueError(f"need cos (N, K) and labels (N,); got {tuple(cos.shape)}, "
                         f"{tuple(labels.shape)}")
    if labels.numel() and int(labels.max()) >= cos.shape[1]:
        raise ValueError(f"label {int(labels.max())} out of range for {cos.shape[1]} classifiers")
    if bias is not None and bias.shape != (cos.shape[1],):
        raise ValueError(f"bias must be ({cos.shape[1]},), got {tuple(bias.shape)}")
    g = similarity_adjustment(cos.float(), cfg.t)
    b = 0.0 if bias is None else bias.float()[None, :]
    target = torch.zeros_like(g, dtype=torch.bool)
    rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
    target[rows, labels[rows]] = True
    r = cfg.scale
    pos = (cfg.pos_weight / r) * F.softplus(-(r * (g - cfg.margin) + b))
    neg = ((1.0 - cfg.pos_weight) / r) * F.softplus(r * (g + cfg.margin) + b)
    return torch.where(target, pos, neg).sum(dim=1).mean()


class DFCHead(nn.Module):
    """Converter (D x D, identity at start) + K normalized binary classifiers with biases.

    Args:
        embedding_size: D.
        num_classes: K, the device's local identities.
        classifiers: optional (K, D) initial classifier rows (e.g. class-mean features).
        converter_bias: give the converter a bias (zero at start), as the reference code's
            ``nn.Linear`` has. Off by default: the converter starts as the identity, and a
            shared offset added to every embedding moves every cosine the bundle compares
            (templates and probes alike); the binary classifiers keep their own biases.
    """

    def __init__(self, embedding_size: int, num_classes: int,
                 classifiers: torch.Tensor | None = None, *,
                 converter_bias: bool = False) -> None:
        super().__init__()
        self.converter = nn.Linear(embedding_size, embedding_size, bias=converter_bias)
        with torch.no_grad():
            self.converter.weight.copy_(torch.eye(embedding_size))
            if converter_bias:
                self.converter.bias.zero_()
        init = (torch.empty(num_classes, embedding_size).normal_(0, 0.01)
                if classifiers is None else classifiers.detach().clone().float())
        if tuple(init.shape) != (num_classes, embedding_size):
            raise ValueError(f"classifiers must be ({num_classes}, {embedding_size}), "
                             f"got {tuple(init.shape)}")
        self.classifiers = nn.Parameter(init)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def convert(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, D) converted features (not normalized)."""
        return self.converter(features.float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) backbone features -> (N, K) cosines of converted features to classifiers."""
        return cosine_logits(self.convert(features), self.classifiers)
