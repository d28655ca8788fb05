"""The extra terms of the federated local objectives (pure functions of tensors).

- :func:`contrastive_regularizer` — FedFR's MOON-style term: the local feature of an image is
  pulled toward the global model's feature of the same image and pushed from the previous local
  model's.
- :func:`proximal_term` — FedProx's ``mu/2 * ||w - w_global||^2``.

The DFC loss lives with its head (:mod:`fedfr.heads.dfc`); CosFace is
:func:`fedfr.heads.margin_cross_entropy`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def contrastive_regularizer(z: torch.Tensor, z_global: torch.Tensor, z_prev: torch.Tensor,
                            temperature: float = 0.5) -> torch.Tensor:
    """``-log(e^{s(z,zg)/t} / (e^{s(z,zg)/t} + e^{s(z,zp)/t}))`` averaged over the batch.

    Args:
        z: (N, D) features of the model being trained (gradients flow).
        z_global: (N, D) the frozen global model's features of the same images.
        z_prev: (N, D) the frozen previous local model's features of the same images.
        temperature: t > 0.

    ``s`` is cosine similarity. When ``z_prev == z_global`` the loss is log 2 with zero
    gradient, which is why the local step skips the term when no previous model exists.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if z.shape != z_global.shape or z.shape != z_prev.shape or z.ndim != 2:
        raise ValueError(f"features must share one (N, D) shape; got {tuple(z.shape)}, "
                         f"{tuple(z_global.shape)}, {tuple(z_prev.shape)}")
    z = F.normalize(z.float(), dim=1)
    pos = (z * F.normalize(z_global.float(), dim=1)).sum(1) / temperature
    neg = (z * F.normalize(z_prev.float(), dim=1)).sum(1) / temperature
    # -log softmax over [pos, neg], picking pos: logsumexp(pos, neg) - pos
    return (torch.logaddexp(pos, neg) - pos).mean()


def proximal_term(params: Iterable[torch.Tensor], anchors: Iterable[torch.Tensor],
                  mu: float) -> torch.Tensor:
    """FedProx: ``mu / 2 * sum ||p - a||^2`` over matching parameter/anchor pairs."""
    total = None
    for p, a in zip(params, anchors, strict=True):
        if p.shape != a.shape:
            raise ValueError(f"parameter {tuple(p.shape)} and anchor {tuple(a.shape)} differ")
        d = (p.float() - a.float()).pow(2).sum()
        total = d if total is None else total + d
    if total is None:
        raise ValueError("no parameters for the proximal term")
    return 0.5 * mu * total
