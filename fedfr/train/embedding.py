"""From uint8 face crops to embeddings: preprocessing per the input contract, batched inference.

Every consumer (pretraining, evaluation, the FedFR local step, export parity checks) embeds
through these functions, so the preprocessing exists once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedfr.data.contract import InputContract
from fedfr.train.runtime import autocast, memory_format


def preprocess(
    images: torch.Tensor,
    model_contract: InputContract,
) -> torch.Tensor:
    """uint8 NHWC RGB crops -> the model's float32 NCHW input.

    Args:
        images: uint8 tensor (N, H, W, 3), RGB, aligned crops (112x112 when stored per
            :data:`~fedfr.data.contract.ARCFACE_CONTRACT`).
        model_contract: the backbone's contract; when its size differs from the crops' (the
            small CPU variants run at 64x64) they are resized with antialiased bilinear
            interpolation.

    Returns:
        float32 (N, 3, h, w) tensor normalized by ``(x - mean) / std`` on ``images.device``.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {tuple(images.shape)}"
        )
    x = images.permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) != model_contract.size:
        x = F.interpolate(x, size=model_contract.size, mode="bilinear", antialias=True,
                          align_corners=False)
    return (x - model_contract.mean) / model_contract.std


@torch.no_grad()
def embed_images(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    *,
    contract: InputContract,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    flip: bool = False,
    amp: bool = True,
) -> np.ndarray:
    """Embed uint8 crops with a backbone (or any module mapping input -> embedding).

    Args:
        model: in eval mode on ``device`` (not changed here).
        images: uint8 (N, H, W, 3) RGB.
        contract: the model's input contract.
        flip: add the embedding of the horizontally flipped crop (InsightFace's test-time
            augmentation) before normalizing.

    Returns:
        float32 (N, D) L2-normalized embeddings.
    """
    device = torch.device(device)
    if len(images) == 0:
        raise ValueError("no images to embed")
    out = []
    fmt = memory_format(device)
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        x = preprocess(batch.to(device), contract).contiguous(memory_format=fmt)
        with autocast(device, amp):
            emb = model(x).float()
            if flip:
                emb = emb + model(torch.flip(x, dims=[3])).float()
        out.append(F.normalize(emb, dim=1).cpu())
    return torch.cat(out).numpy()
