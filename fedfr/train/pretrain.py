"""Pretraining the generic model: a backbone and a normalized class head with a margin loss.

The server's generic model in FedFR is exactly this: the backbone pretrained on the public set
plus the head's weight, the *public class embedding matrix*. Both are saved in one safetensors
checkpoint (``backbone.*`` and ``head.public_class_embeddings``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fedfr.backbones import build_backbone, get_backbone_spec
from fedfr.checkpoint import save_checkpoint
from fedfr.evaluation import THRESHOLDS_KEY
from fedfr.heads import MARGIN_PRESETS, MarginConfig, NormalizedClassHead, margin_cross_entropy
from fedfr.train.embedding import preprocess
from fedfr.train.runtime import autocast, memory_format, resolve_device

log = logging.getLogger(__name__)

#: Name of the public class embedding matrix (C, D) in a pretrained checkpoint.
PUBLIC_EMBEDDINGS_KEY = "head.public_class_embeddings"
#: Training images the stored thresholds are calibrated on when no validation set is given.
THRESHOLD_IMAGES = 2000


@dataclass(frozen=True)
class PretrainConfig:
    """Hyperparameters of :func:`pretrain` (arcface_torch's recipe, scaled down by default).

    ``lr`` follows a linear warm-up over ``warmup_epochs`` then a polynomial (power 2) decay to
    zero, per step. ``amp`` means bf16 autocast and channels_last, on CUDA only.
    """

    arch: str = "mbf"
    embedding_size: int | None = None
    margin: MarginConfig = field(default_factory=lambda: MARGIN_PRESETS["cosface"])
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    flip: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"epochs, batch_size and lr must be positive: {self}")


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` produced: the checkpoint path and the per-epoch history."""

    checkpoint: Path
    history: list[dict[str, float]]
    seconds: float
    images_per_second: float


def train_step(
    backbone: nn.Module,
    head: NormalizedClassHead,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    margin: MarginConfig,
    *,
    amp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One plain margin-loss step: forward, loss, backward, optimizer step.

    Args:
        x: float32 (N, 3, H, W) model input on the model's device.
        y: int64 (N,) labels, -1 ignored.

    Returns:
        (loss, cosines) — detached; cosines (N, C) for accuracy bookkeeping.
    """
    with autocast(x.device, amp):
        cos = head(backbone(x))
    loss = margin_cross_entropy(cos.float(), y, margin)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), cos.detach()


def _poly_lr(step: int, total: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 1.0 - progress) ** 2


def pretrain(
    images: np.ndarray,
    labels: np.ndarray,
    cfg: PretrainConfig,
    out_path: str | Path,
    *,
    metadata: dict[str, str | int | float] | None = None,
    progress: bool = True,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    threshold_images: int = THRESHOLD_IMAGES,
) -> PretrainResult:
    """Train ``cfg.arch`` with a margin loss on (images, labels) and save a checkpoint.

    Args:
        images: uint8 (N, H, W, 3) aligned RGB crops (112x112 per the input contract).
        labels: int (N,) class indices 0..C-1 (C = max + 1).
        out_path: the safetensors checkpoint to write (atomically).
        metadata: extra provenance stored in the checkpoint (data set, profile...).
        validation: (images, labels) of identities not trained on; the thresholds at FAR
            1e-1/1e-2/1e-3 stored in the checkpoint (metadata ``fedfr.thresholds``, see
            :func:`fedfr.evaluation.model_thresholds`) are calibrated on them. Without it,
            on up to ``threshold_images`` training images (a fixed draw), named as such in
            the metadata's ``source``: seen identities, so optimistic for new people.

    Returns:
        The checkpoint path and per-epoch loss/accuracy/lr history.

    Raises:
        ValueError: images and labels disagree, or there is no data.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
        raise ValueError(
            f"need uint8 images (N, H, W, 3) and N labels; got {images.dtype} {images.shape} "
            f"and {labels.shape}"
        )
    if len(labels) == 0 or labels.min() < 0:
        raise ValueError("pretraining needs at least one image and labels >= 0")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    spec = get_backbone_spec(cfg.arch)
    kw = {} if cfg.embedding_size is None else {"embedding_size": cfg.embedding_size}
    backbone = build_backbone(cfg.arch, **kw).to(device, memory_format=memory_format(device))
    emb_size = cfg.embedding_size or spec.embedding_size
    num_classes = int(labels.max()) + 1
    head = NormalizedClassHead(emb_size, num_classes).to(device)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(labels) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _poly_lr(s, total, warmup))

    # The whole set stays uint8 on the training device when it fits (cheap indexing, no
    # host->device copies per step); otherwise batches are copied from host memory.
    on_device = device.type == "cpu" or images.nbytes < 0.3 * _free_memory(device)
    data = torch.from_numpy(images)
    data = data.to(device) if on_device else data.pin_memory()
    targets = torch.from_numpy(labels).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    fmt = memory_format(device)

    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"pretrain {cfg.arch}", disable=not progress, unit="step")
    backbone.train()
    head.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(labels), generator=gen)
        order_dev = order.to(device)  # one transfer per epoch, not per step
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            step = slice(i * cfg.batch_size, (i + 1) * cfg.batch_size)
            idx = order_dev[step]
            batch = data[idx if on_device else order[step]].to(device, non_blocking=True)
            x = preprocess(batch, spec.contract)
            if cfg.flip:
                flip = torch.rand(len(idx), generator=gen).to(device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            x = x.contiguous(memory_format=fmt)
            y = targets[idx]
            loss, cos = train_step(backbone, head, optimizer, x, y, cfg.margin, amp=cfg.amp)
            scheduler.step()
            loss_sum += loss * len(idx)
            correct += (cos.argmax(1) == y).sum()
            bar.update(1)
        row = {
            "epoch": epoch + 1,
            "loss": float(loss_sum) / len(labels),
            "train_accuracy": float(correct) / len(labels),
            "lr": optimizer.param_groups[0]["lr"],
        }
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_accuracy']:.3f}")
        log.info("epoch %d loss %.4f acc %.4f", row["epoch"], row["loss"], row["train_accuracy"])
    bar.close()
    seconds = time.perf_counter() - start

    meta: dict[str, str | int | float] = {
        "num_classes": num_classes,
        "epochs": cfg.epochs,
        "final_loss": history[-1]["loss"],
        "pretrain_config": str(asdict(cfg)),
        THRESHOLDS_KEY: _thresholds(backbone, spec.contract, device, images, labels,
                                    validation, threshold_images, cfg.seed),
        **(metadata or {}),
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        out_path,
        backbone.cpu().state_dict(),
        arch=cfg.arch,
        embedding_size=emb_size,
        contract=spec.contract,
        extra_tensors={PUBLIC_EMBEDDINGS_KEY: head.weight.detach().cpu()},
        metadata=meta,
    )
    return PretrainResult(out_path, history, seconds, len(labels) * cfg.epochs / seconds)


def _thresholds(backbone: nn.Module, contract, device: torch.device, images: np.ndarray,
                labels: np.ndarray, validation: tuple[np.ndarray, np.ndarray] | None,
                limit: int, seed: int) -> dict:
    """The ``fedfr.thresholds`` metadata of the trained backbone (see :func:`pretrain`)."""
    from fedfr.evaluation import backbone_embedder, calibrate_model_thresholds

    if validation is not None:
        vi, vl = validation[0], np.asarray(validation[1])
        source = (f"validation set given to pretrain: {len(vl)} images of "
                  f"{len(np.unique(vl))} identities not trained on")
    else:
        sel = np.arange(len(labels))
        if len(sel) > limit:
            sel = np.sort(np.random.default_rng(seed).permutation(len(sel))[:limit])
        vi, vl = images[sel], labels[sel]
        source = (f"training set: {len(vl)} of its images, {len(np.unique(vl))} identities "
                  f"(seen in training: optimistic for new people)")
    embed = backbone_embedder(backbone, contract, device=str(device))
    try:
        return calibrate_model_thresholds(embed, vi, vl, source)
    except ValueError as e:  # one identity only: no impostor pair
        return {"far": {}, "source": source, "error": str(e)}
    finally:
        backbone.train()


def _free_memory(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    return float("inf")
