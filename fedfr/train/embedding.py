"""From uint8 face crops to embeddings: preprocessing per the input contract, batched inference.

Every consumer (pretraining, evaluation, the FedFR local step, export parity checks) embeds
through these functions, so the preprocessing exists once.
"""

from __future__ import annotations

import functools
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
        images: uint8 tensor (N, H, W, 3), RGB, crops aligned to the ArcFace template at their
            size (112x112 when stored per :data:`~fedfr.data.contract.ARCFACE_CONTRACT`).
        model_contract: the backbone's contract; see :func:`to_model_frame` for how crops of
            another size or geometry are brought to it.

    Returns:
        float32 (N, 3, h, w) tensor normalized by ``(x - mean) / std`` (per channel where the
        contract gives three) on ``images.device``.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {tuple(images.shape)}"
        )
    x = to_model_frame(images.permute(0, 3, 1, 2).float(), model_contract)
    return normalize_channels(x, model_contract)


def to_model_frame(x: torch.Tensor, model_contract: InputContract) -> torch.Tensor:
    """float (N, 3, H, W) pixels of ArcFace-aligned crops -> the model's crop.

    The same size and geometry: unchanged. Another size, the same (ArcFace) geometry (the
    64x64 CPU variants): antialiased bilinear resize. Another geometry (``dlib_r34``'s 150x150
    chip, the face higher in it): the crop is resampled into it
    (:func:`fedfr.data.align.reframe_matrices`, bilinear, black where the chip reaches past the
    crop — its bottom ~12 %).
    """
    if tuple(x.shape[-2:]) == model_contract.size and model_contract.alignment == "arcface":
        return x
    if model_contract.alignment == "arcface":
        return F.interpolate(x, size=model_contract.size, mode="bilinear", antialias=True,
                             align_corners=False)
    if x.shape[-1] != x.shape[-2] or model_contract.height != model_contract.width:
        raise ValueError(f"reframing needs square crops, got {tuple(x.shape[-2:])} -> "
                         f"{model_contract.size}")
    a_h, a_w = reframe_tensors(int(x.shape[-1]), model_contract.alignment,
                               model_contract.height)
    a_h, a_w = a_h.to(x.device), a_w.to(x.device)
    return torch.matmul(torch.matmul(a_h, x), a_w.T)


@functools.lru_cache(maxsize=8)
def reframe_tensors(src_size: int, alignment: str, dst_size: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fedfr.data.align.reframe_matrices` from ArcFace crops, as float32 tensors."""
    from fedfr.data.align import reframe_matrices

    a_h, a_w = reframe_matrices(("arcface", src_size), (alignment, dst_size))
    return torch.from_numpy(a_h), torch.from_numpy(a_w)


def normalize_channels(x: torch.Tensor, contract: InputContract) -> torch.Tensor:
    """``(x - mean) / std`` with the contract's scalar or per-channel (R, G, B) values."""
    if isinstance(contract.mean, tuple) or isinstance(contract.std, tuple):
        mean = torch.as_tensor(contract.channel_mean(), device=x.device).view(1, 3, 1, 1)
        std = torch.as_tensor(contract.channel_std(), device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std
    return (x - contract.mean) / contract.std


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
