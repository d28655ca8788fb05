"""The normalized class head: cosine similarity between embeddings and class weights.

Its ``weight`` (C, D) is what the FedFR method calls the *class embedding matrix*: after
pretraining on the public set it is the public class embeddings the server distributes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_logits(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cosines between L2-normalized rows: (N, D) x (C, D) -> (N, C), float32 or input dtype."""
    if embeddings.ndim != 2 or weight.ndim != 2 or embeddings.shape[1] != weight.shape[1]:
        raise ValueError(
            f"embeddings (N, D) and weight (C, D) must share D; got {tuple(embeddings.shape)} "
            f"and {tuple(weight.shape)}"
        )
    return F.linear(F.normalize(embeddings, dim=1), F.normalize(weight, dim=1))


class NormalizedClassHead(nn.Module):
    """A bias-free linear head on the unit sphere: ``forward(emb) -> cos`` of shape (N, C).

    Args:
        embedding_size: D.
        num_classes: C.
        weight: optional (C, D) initial class embeddings (copied).
    """

    def __init__(
        self, embedding_size: int, num_classes: int, weight: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if weight is not None:
            if tuple(weight.shape) != (num_classes, embedding_size):
                raise ValueError(
                    f"initial weight must be ({num_classes}, {embedding_size}), "
                    f"got {tuple(weight.shape)}"
                )
            init = weight.detach().clone().float()
        else:
            init = torch.empty(num_classes, embedding_size).normal_(0.0, 0.01)
        self.weight = nn.Parameter(init)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return cosine_logits(embeddings.float(), self.weight)
