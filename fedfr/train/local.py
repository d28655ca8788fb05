"""The FedFR local step: one device's training in one round (PRODUCT.md §2, steps 2-4).

:func:`local_round` is the one implementation the research harness, the device SDK and the
benchmarks call. Given the global model (numpy arrays, as downloaded), the device's images and
its private state from the previous round, it

1. embeds the local images with the **frozen global model** once (both flips when flip
   augmentation is on) — these features serve hard-negative mining, the initialization of new
   identity weights and the contrastive regularizer's positives;
2. **mines hard negatives** from the public pack: public images (or, for the embedding-only
   pack, public class embedding rows) whose cosine to any local feature exceeds the threshold;
3. embeds the training set once with the **frozen previous local model** (the contrastive
   regularizer's negatives), so no frozen network runs inside the training loop;
4. trains with SGD for the round's adaptive number of epochs on: CosFace over [local identity
   weights ‖ public class embedding rows (all, or the mined classes')] + ``dfc_weight`` x DFC
   binary loss +
   ``contrastive_mu`` x contrastive regularizer + FedProx's proximal term (each term off when
   its weight is 0);
5. returns the :class:`~fedfr.fl.SharedUpdate` (backbone + the public rows it trained) and the
   new :class:`PrivateState` (identity weights, converter and binary classifiers, the trained
   backbone = next round's "previous local model" and this device's personalized backbone).

Round 0 (no previous local model): with ``round0_negative="random"`` (the default, as the
FedFR reference code does) the contrastive negatives are the features of a **randomly
initialised** backbone (seeded by the device's seed), so the term pulls toward the global
features from the first, longest round; ``"none"`` omits the term in round 0 (MOON's other
choice — the global model as its own negative — would be exactly log 2 with zero gradient).

BatchNorm (``bn_policy``): ``"train"`` updates the running statistics with every local batch,
so they drift to the device's camera domain and FedAvg averages the drifted statistics;
``"frozen"`` keeps every BatchNorm layer in eval mode during the local step — the global
model's running statistics normalize the batches and are returned unchanged (the affine
parameters still train). The reference backbone (SphereFace-64) has no BatchNorm at all, so
neither is "the paper's"; the protocol in :mod:`fedfr.sim` chooses per method.

FedAvg weight (``sample_weight``): the sample count a device reports is its local images
(``"local"``) or local images plus the public hard negatives it trained on
(``"local+negatives"``, the reference code's count).

New identity weights (and DFC classifiers) start at the normalized class means of the global
model's features of the identity's images (a good start for a cosine head, no random
classifier), then persist in the private state from round to round.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fedfr.data.contract import InputContract
from fedfr.fl import BACKBONE_PREFIX, PUBLIC_INDEX_KEY, PUBLIC_ROWS_KEY, GlobalModel, SharedUpdate
from fedfr.heads import MARGIN_PRESETS, MarginConfig, cosine_logits, margin_cross_entropy
from fedfr.heads.dfc import BinaryMarginConfig, DFCHead, binary_margin_loss
from fedfr.train.embedding import preprocess
from fedfr.train.local_state import PUBLIC_KINDS, LocalResult, PrivateState, PublicPack
from fedfr.train.losses import contrastive_regularizer, proximal_term
from fedfr.train.recognizer import (
    build_model_backbone,
    generic_embedder,
    numpy_state,
    personalized_embedder,
    personalized_recognizer,
)
from fedfr.train.runtime import autocast, memory_format, resolve_device

log = logging.getLogger(__name__)

__all__ = [
    "PUBLIC_KINDS",
    "LocalConfig",
    "LocalResult",
    "LocalTrainer",
    "PrivateState",
    "PublicPack",
    "build_model_backbone",
    "generic_embedder",
    "local_round",
    "mine_hard_negatives",
    "personalized_embedder",
    "personalized_recognizer",
    "random_backbone",
    "set_train_mode",
]



BN_POLICIES = ("train", "frozen")
ROUND0_NEGATIVES = ("random", "none")
SAMPLE_WEIGHTS = ("local", "local+negatives")


def set_train_mode(net: nn.Module, bn_policy: str) -> nn.Module:
    """``net`` in training mode, its BatchNorm layers in eval mode when ``bn_policy`` is
    ``"frozen"`` (running statistics used, not updated; affine parameters still train)."""
    net.train()
    if bn_policy == "frozen":
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    return net


@dataclass(frozen=True)
class LocalConfig:
    """Hyperparameters of one device's local step. Defaults are the FedFR paper's.

    Attributes:
        margin: CosFace over local + public classes (s=30, m=0.4).
        public: ``None`` (local classes only), ``"images"`` (public images as hard negatives,
            the paper) or ``"embeddings"`` (public class embedding rows as negatives, no image).
        hard_negative_threshold: a public image/row is a hard negative when its cosine to any
            local image's global feature exceeds this.
        max_hard_negatives: keep at most this many (the most similar); ``None`` = no cap.
        public_rows: with public images, which public class embedding rows the CosFace head
            holds (trained, then uploaded): ``"all"`` (every public class is a negative, as
            the FedFR reference code does) or ``"mined"`` (only the classes of the mined
            images: less to upload). With the embedding-only pack the mined rows are fixed
            negatives (never trained, never uploaded) either way.
        dfc_weight: weight of the DFC binary loss (0 = no DFC, no converter).
        dfc: the binary loss's positive weight, scale and margin.
        contrastive_mu, contrastive_temperature: the contrastive regularizer (0 = off).
        prox_mu: FedProx's proximal weight (0 = off).
        lr, momentum, weight_decay, batch_size: SGD.
        epochs_start, epochs_step, epochs_min: adaptive local epochs,
            ``max(epochs_min, epochs_start - epochs_step * round)``.
        lr_decay_at, lr_decay_factor: the lr is multiplied by ``lr_decay_factor`` once
            ``lr_decay_at`` of the round's steps are done (the reference decays at 3/4).
        bn_policy: ``"train"`` (running statistics follow the local batches) or
            ``"frozen"`` (BatchNorm in eval mode during the local step; module doc).
        round0_negative: the contrastive negative in round 0: ``"random"`` (a randomly
            initialised backbone, the reference) or ``"none"`` (no term in round 0).
        sample_weight: the FedAvg weight a device reports: ``"local"`` images, or
            ``"local+negatives"`` (plus the public hard negatives, the reference).
        converter_bias: the DFC converter has a bias (the reference's ``nn.Linear``); off
            by default (see :mod:`fedfr.heads.dfc`).
        flip: random horizontal flips (features of both flips are cached).
        device, amp: where to train; bf16 autocast and channels_last on CUDA.
        seed: batch order, flips and new classifier rows.
    """

    margin: MarginConfig = field(default_factory=lambda: MARGIN_PRESETS["fedfr_cosface"])
    public: str | None = "images"
    hard_negative_threshold: float = 0.4
    max_hard_negatives: int | None = None
    public_rows: str = "all"
    dfc_weight: float = 10.0
    dfc: BinaryMarginConfig = field(default_factory=BinaryMarginConfig)
    contrastive_mu: float = 5.0
    contrastive_temperature: float = 0.5
    prox_mu: float = 0.0
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    epochs_start: int = 10
    epochs_step: int = 2
    epochs_min: int = 4
    lr_decay_at: float = 0.75
    lr_decay_factor: float = 0.1
    bn_policy: str = "train"
    round0_negative: str = "random"
    sample_weight: str = "local"
    converter_bias: bool = False
    flip: bool = True
    device: str = "auto"
    amp: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.public is not None and self.public not in PUBLIC_KINDS:
            raise ValueError(f"public must be None or one of {PUBLIC_KINDS}, got {self.public!r}")
        if self.batch_size < 2 or not self.lr > 0 or self.epochs_min < 1:
            raise ValueError(f"need batch_size >= 2, lr > 0, epochs_min >= 1: {self}")
        weights = (self.dfc_weight, self.contrastive_mu, self.prox_mu)
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"loss weights (dfc_weight, contrastive_mu, prox_mu) must be "
                             f"finite and >= 0, got {weights}")
        if not (self.momentum >= 0 and self.weight_decay >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"need a finite lr, momentum >= 0 and weight_decay >= 0; got "
                             f"lr={self.lr}, momentum={self.momentum}, "
                             f"weight_decay={self.weight_decay}")
        if not self.contrastive_temperature > 0:
            raise ValueError(f"contrastive_temperature must be > 0, got "
                             f"{self.contrastive_temperature}")
        if not -1.0 <= self.hard_negative_threshold <= 1.0:
            raise ValueError(f"hard_negative_threshold is a cosine in [-1, 1], got "
                             f"{self.hard_negative_threshold}")
        if self.max_hard_negatives is not None and self.max_hard_negatives < 0:
            raise ValueError(f"max_hard_negatives must be None or >= 0, got "
                             f"{self.max_hard_negatives}")
        if self.epochs_start < 1 or self.epochs_step < 0 or not self.lr_decay_factor > 0:
            raise ValueError(f"need epochs_start >= 1, epochs_step >= 0, lr_decay_factor > 0; "
                             f"got {self.epochs_start}, {self.epochs_step}, "
                             f"{self.lr_decay_factor}")
        if self.public_rows not in ("all", "mined"):
            raise ValueError(f"public_rows must be 'all' or 'mined', got {self.public_rows!r}")
        if not 0.0 <= self.lr_decay_at <= 1.0:
            raise ValueError(f"lr_decay_at must be in [0, 1], got {self.lr_decay_at}")
        for name, allowed in (("bn_policy", BN_POLICIES), ("round0_negative", ROUND0_NEGATIVES),
                              ("sample_weight", SAMPLE_WEIGHTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def epochs_for_round(self, round_index: int) -> int:
        """Adaptive local epochs: 10, 8, 6, 4, 4, ... with the defaults."""
        return max(self.epochs_min, self.epochs_start - self.epochs_step * int(round_index))

    def with_(self, **changes: object) -> LocalConfig:
        return replace(self, **changes)


# --------------------------------------------------------------------------- helpers


@torch.no_grad()
def _features(net: nn.Module, images: torch.Tensor, contract: InputContract, *,
              flips: tuple[bool, ...], batch_size: int, amp: bool) -> torch.Tensor:
    """(N, len(flips), D) L2-normalized features of uint8 (N, H, W, 3) images, one view per
    entry of ``flips`` (True: the horizontally flipped crop)."""
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    fmt = memory_format(dev)
    out = []
    for s in range(0, len(images), batch_size):
        x = preprocess(images[s:s + batch_size].to(dev), contract).contiguous(memory_format=fmt)
        with autocast(dev, amp):
            vs = [F.normalize(net(x.flip(3) if f else x).float(), dim=1) for f in flips]
        out.append(torch.stack(vs, 1))
    net.train(was_training)
    return torch.cat(out)


def _class_means(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalized mean feature per class: (N, D), (N,) -> (K, D)."""
    sums = torch.zeros(num_classes, feats.shape[1], device=feats.device)
    sums.index_add_(0, labels, feats)
    return F.normalize(sums, dim=1)


def _fill_rows(rows: np.ndarray, fallback: torch.Tensor) -> torch.Tensor:
    """``rows`` (L, D) as a tensor on ``fallback``'s device, with every row that holds a NaN
    replaced by ``fallback``'s row (a new identity starts like in round 0)."""
    w = torch.from_numpy(np.array(rows, np.float32)).to(fallback.device)
    fresh = ~torch.isfinite(w).all(1)
    return torch.where(fresh[:, None], fallback, w)


def mine_hard_negatives(local_feats: torch.Tensor, candidate_feats: torch.Tensor,
                        threshold: float, max_count: int | None = None) -> torch.Tensor:
    """Indices of candidates whose cosine to any local feature exceeds ``threshold``.

    Args:
        local_feats: (N, D) L2-normalized features of the device's images (global model).
        candidate_feats: (P, D) L2-normalized features of public images, or public class
            embedding rows (normalized here).
        max_count: keep the ``max_count`` most similar.

    Returns:
        int64 (S,) candidate indices, sorted ascending.
    """
    cand = F.normalize(candidate_feats.float(), dim=1)
    best = torch.full((len(cand),), -2.0, device=cand.device)
    for s in range(0, len(local_feats), 4096):  # (P, 4096) blocks bound the memory
        best = torch.maximum(best, (cand @ local_feats[s:s + 4096].float().T).amax(1))
    sel = torch.nonzero(best > threshold, as_tuple=True)[0]
    if max_count is not None and len(sel) > max_count:
        sel = sel[torch.topk(best[sel], max_count).indices]
    return torch.sort(sel).values


def random_backbone(model: GlobalModel, *, seed: int, device: torch.device) -> nn.Module:
    """A randomly initialised backbone of ``model``'s arch (eval mode), seeded by ``seed``
    without touching the global RNG: round 0's contrastive negative (module doc)."""
    from fedfr.backbones import build_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed ^ 0x5EED)
        net = build_backbone(model.arch, embedding_size=model.embedding_size,
                             input_size=InputContract.from_dict(model.contract).size)
    return net.to(device, memory_format=memory_format(device)).eval()


# --------------------------------------------------------------------------- the step


class LocalTrainer:
    """One device's round, split so that the benchmark can time the step alone.

    ``prepare`` runs steps 1-3 of the module doc (frozen features, mining, heads);
    :meth:`step` is one SGD step of the full objective; :meth:`run` the whole round.
    """

    def __init__(self, model: GlobalModel, images: np.ndarray, labels: np.ndarray,
                 cfg: LocalConfig, *, round_index: int = 0, private: PrivateState | None = None,
                 pack: PublicPack | None = None) -> None:
        labels = np.asarray(labels, np.int64)
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"need uint8 images (N, H, W, 3) and N labels; got {images.dtype} "
                             f"{images.shape} and {labels.shape}")
        if len(labels) < 2:
            raise ValueError("local training needs at least 2 images")
        num_classes = int(labels.max()) + 1
        if labels.min() < 0 or len(np.unique(labels)) != num_classes:
            raise ValueError("local labels must be 0..L-1 with every identity present")
        if private is not None and private.identity_weights.shape[0] != num_classes:
            raise ValueError(f"private state has {private.identity_weights.shape[0]} identities, "
                             f"the data {num_classes}")
        if cfg.public is not None and pack is None and cfg.public == "images":
            raise ValueError("this method mines public images: pass a PublicPack of images")
        if cfg.public is not None and model.public_embeddings is None:
            raise ValueError("this method needs the model's public class embeddings")
        self.model, self.cfg, self.round_index = model, cfg, round_index
        self.private, self.pack = private, pack
        self.num_classes = num_classes
        self._images, self._labels = images, labels
        self.device = resolve_device(cfg.device)
        self.contract = InputContract.from_dict(model.contract)
        self.timings: dict[str, float] = {}
        self.prepared = False

    # -- steps 1-3 ----------------------------------------------------------------------
    def prepare(self) -> LocalTrainer:
        cfg, dev = self.cfg, self.device
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        flips = (False, True) if cfg.flip else (False,)
        fb = max(cfg.batch_size, 256)
        glob = build_model_backbone(self.model, device=dev).eval()
        local_u8 = torch.from_numpy(np.ascontiguousarray(self._images))
        z_local = _features(glob, local_u8, self.contract, flips=flips, batch_size=fb,
                            amp=cfg.amp)
        y_local = torch.from_numpy(self._labels).to(dev)
        self.timings["global_features_s"] = time.perf_counter() - t0

        # Hard negatives.
        t1 = time.perf_counter()
        L = self.num_classes
        pub_images = local_u8[:0]
        pub_rows = torch.zeros(0, dtype=torch.int64)
        z_pub = z_local[:0]
        self.public_classes = np.zeros(0, np.int64)
        if cfg.public == "images":
            pack_u8 = torch.from_numpy(np.ascontiguousarray(self.pack.images))
            z_pack = _features(glob, pack_u8, self.contract, flips=(False,), batch_size=fb,
                               amp=cfg.amp)
            sel = mine_hard_negatives(z_local[:, 0], z_pack[:, 0], cfg.hard_negative_threshold,
                                      cfg.max_hard_negatives).cpu()
            pub_images = pack_u8[sel]
            pub_rows = torch.from_numpy(np.asarray(self.pack.labels, np.int64))[sel]
            if len(sel):
                z_pub = z_pack[sel.to(dev)]
                if cfg.flip:  # the flipped view, for the selected images only
                    z_pub = torch.cat([z_pub, _features(glob, pub_images, self.contract,
                                                        flips=(True,), batch_size=fb,
                                                        amp=cfg.amp)], 1)
            self.public_classes = (
                np.arange(len(self.model.public_embeddings), dtype=np.int64)
                if cfg.public_rows == "all" else np.unique(pub_rows.numpy()))
        elif cfg.public == "embeddings":
            rows = torch.from_numpy(np.asarray(self.model.public_embeddings)).to(dev)
            sel = mine_hard_negatives(z_local[:, 0], rows, cfg.hard_negative_threshold,
                                      cfg.max_hard_negatives).cpu()
            self.public_classes = sel.numpy().astype(np.int64)
        self.num_hard_negatives = (len(pub_images) if cfg.public == "images"
                                   else len(self.public_classes))
        self.timings["mining_s"] = time.perf_counter() - t1

        # The training set: local images then public images (CosFace labels L + class slot).
        slots = np.searchsorted(self.public_classes, pub_rows.numpy())
        x_host = torch.cat([local_u8, pub_images])
        self.x_u8 = x_host.to(dev)
        self.y = torch.cat([y_local, torch.from_numpy(L + slots).to(dev)])
        self.y_dfc = torch.cat([y_local, torch.full((len(pub_images),), -1, device=dev)])
        self.is_local = torch.cat([torch.ones(len(local_u8), dtype=torch.bool),
                                   torch.zeros(len(pub_images), dtype=torch.bool)]).to(dev)
        self.z_global = torch.cat([z_local, z_pub])  # (N_all, len(flips), D)

        # The previous local model's features (the contrastive negatives), once.
        t2 = time.perf_counter()
        self.z_prev = None
        have_prev = self.private is not None and self.private.local_backbone is not None
        prev = None
        if cfg.contrastive_mu > 0 and have_prev:
            prev = build_model_backbone(self.model, self.private.local_backbone, device=dev)
        elif cfg.contrastive_mu > 0 and cfg.round0_negative == "random":
            prev = random_backbone(self.model, seed=cfg.seed, device=dev)
        if prev is not None:
            self.z_prev = _features(prev, x_host, self.contract, flips=flips,
                                    batch_size=fb, amp=cfg.amp)
            del prev
        self.timings["previous_features_s"] = time.perf_counter() - t2

        # Trainable parts.
        D = self.model.embedding_size
        self.backbone = set_train_mode(build_model_backbone(self.model, device=dev),
                                       cfg.bn_policy)
        means = _class_means(z_local[:, 0], y_local, L)
        init = means
        if self.private is not None:  # NaN rows: identities new since the last round
            init = _fill_rows(self.private.identity_weights, means)
        self.identity_weights = nn.Parameter(init.clone())
        params = [*self.backbone.parameters(), self.identity_weights]
        self.public_weights: torch.Tensor
        if len(self.public_classes):
            rows = torch.from_numpy(
                np.asarray(self.model.public_embeddings)[self.public_classes].astype(np.float32)
            ).to(dev)
            if cfg.public == "images":  # trained (and uploaded) rows
                self.public_weights = nn.Parameter(rows)
                params.append(self.public_weights)
            else:  # embedding-only pack: fixed negatives
                self.public_weights = rows
        else:
            self.public_weights = torch.zeros(0, D, device=dev)
        self.dfc = None
        if cfg.dfc_weight > 0:
            cls_init = init
            if self.private is not None and self.private.binary_weights is not None:
                cls_init = _fill_rows(self.private.binary_weights, means)
            self.dfc = DFCHead(D, L, classifiers=cls_init,
                               converter_bias=cfg.converter_bias).to(dev)
            with torch.no_grad():
                if self.private is not None and self.private.converter is not None:
                    self.dfc.converter.weight.copy_(torch.from_numpy(
                        np.asarray(self.private.converter, np.float32)))
                if (cfg.converter_bias and self.private is not None
                        and self.private.converter_bias is not None):
                    self.dfc.converter.bias.copy_(torch.from_numpy(
                        np.asarray(self.private.converter_bias, np.float32)))
                if self.private is not None and self.private.binary_bias is not None:
                    self.dfc.bias.copy_(torch.from_numpy(np.nan_to_num(
                        np.asarray(self.private.binary_bias, np.float32), nan=0.0)))
            params += list(self.dfc.parameters())
        self.anchors = None
        if cfg.prox_mu > 0:
            self.anchors = [p.detach().clone() for p in self.backbone.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.fmt = memory_format(dev)
        del glob
        self.timings["prepare_s"] = time.perf_counter() - t0
        self.prepared = True
        return self

    @property
    def num_train_images(self) -> int:
        return len(self.y)

    # -- one step -----------------------------------------------------------------------
    def step(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """One SGD step on the training images ``idx`` (a tensor of indices on the device).

        Returns detached loss terms (``loss``, ``cosface``, ``dfc``, ``contrastive``,
        ``prox``) and ``correct`` (local images classified right by the CosFace head).
        """
        cfg = self.cfg
        if cfg.flip:
            view = (torch.rand(len(idx), generator=self.gen) < 0.5).to(self.device)
        else:
            view = torch.zeros(len(idx), dtype=torch.bool, device=self.device)
        x = preprocess(self.x_u8[idx], self.contract)
        x = torch.where(view[:, None, None, None], x.flip(3), x).contiguous(
            memory_format=self.fmt)
        y = self.y[idx]
        v = view.long()
        with autocast(self.device, cfg.amp):
            feats = self.backbone(x)
        feats = feats.float()
        weight = torch.cat([self.identity_weights, self.public_weights])
        cos = cosine_logits(feats, weight)
        terms: dict[str, torch.Tensor] = {"cosface": margin_cross_entropy(cos, y, cfg.margin)}
        total = terms["cosface"]
        if self.dfc is not None:
            terms["dfc"] = binary_margin_loss(self.dfc(feats), self.y_dfc[idx], cfg.dfc,
                                              self.dfc.bias)
            total = total + cfg.dfc_weight * terms["dfc"]
        if self.z_prev is not None:
            # view index 1 exists only with flips on; without them every view index is 0
            terms["contrastive"] = contrastive_regularizer(feats, self.z_global[idx, v],
                                                           self.z_prev[idx, v],
                                                           cfg.contrastive_temperature)
            total = total + cfg.contrastive_mu * terms["contrastive"]
        if self.anchors is not None:
            terms["prox"] = proximal_term(self.backbone.parameters(), self.anchors, cfg.prox_mu)
            total = total + terms["prox"]
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        local = self.is_local[idx]
        out = {k: t.detach() for k, t in terms.items()}
        out["loss"] = total.detach()
        out["correct"] = ((cos.detach().argmax(1) == y) & local).sum()
        out["local"] = local.sum()
        return out

    # -- the round ----------------------------------------------------------------------
    def run(self, *, progress: bool = False, desc: str = "local") -> LocalResult:
        if not self.prepared:
            self.prepare()
        cfg = self.cfg
        n = self.num_train_images
        bs = min(cfg.batch_size, n)
        steps_per_epoch = math.ceil(n / bs)
        epochs = cfg.epochs_for_round(self.round_index)
        total_steps = steps_per_epoch * epochs
        decay_step = round(cfg.lr_decay_at * total_steps)
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        t0 = time.perf_counter()
        bar = tqdm(total=total_steps, desc=desc, disable=not progress, unit="step", leave=False)
        step = 0
        for _ in range(epochs):
            order = torch.randperm(n, generator=self.gen).to(self.device)
            for s in range(steps_per_epoch):
                idx = order[s * bs:(s + 1) * bs]
                if step == decay_step and cfg.lr_decay_factor != 1.0:
                    for g in self.optimizer.param_groups:
                        g["lr"] = cfg.lr * cfg.lr_decay_factor
                step += 1
                bar.update(1)
                if len(idx) < 2:  # BatchNorm cannot train on one image
                    continue
                out = self.step(idx)
                for k, v in out.items():
                    w = 1 if k in ("correct", "local") else len(idx)
                    sums[k] = sums.get(k, 0) + v * w
                seen += len(idx)
        bar.close()
        train_s = time.perf_counter() - t0
        self.timings["train_s"] = train_s
        return self._result(sums, seen, epochs, total_steps, train_s)

    def _result(self, sums, seen, epochs, steps, train_s) -> LocalResult:
        cfg = self.cfg
        backbone_state = numpy_state(self.backbone)
        arrays = {BACKBONE_PREFIX + k: v for k, v in backbone_state.items()}
        if cfg.public == "images" and len(self.public_classes):
            arrays[PUBLIC_ROWS_KEY] = self.public_weights.detach().cpu().numpy().copy()
            arrays[PUBLIC_INDEX_KEY] = self.public_classes.astype(np.int64)
        metrics = {k: float(v) / max(seen, 1) for k, v in sums.items()
                   if k not in ("correct", "local")}
        local_seen = float(sums.get("local", 0))
        metrics["train_accuracy"] = float(sums.get("correct", 0)) / max(local_seen, 1.0)
        metrics["hard_negatives"] = float(self.num_hard_negatives)
        metrics["public_rows"] = float(len(self.public_classes))
        metrics["epochs"] = float(epochs)
        metrics["steps"] = float(steps)
        metrics["images_per_second"] = seen / train_s if train_s > 0 else 0.0
        metrics.update(self.timings)
        num_samples = len(self._labels)
        if cfg.sample_weight == "local+negatives" and cfg.public == "images":
            num_samples += self.num_hard_negatives
        update = SharedUpdate(arrays, num_samples=num_samples,
                              metrics={k: metrics[k] for k in ("loss", "train_accuracy")
                                       if k in metrics})
        private = PrivateState(
            identity_weights=self.identity_weights.detach().cpu().numpy().copy(),
            converter=(None if self.dfc is None
                       else self.dfc.converter.weight.detach().cpu().numpy().copy()),
            converter_bias=(None if self.dfc is None or self.dfc.converter.bias is None
                            else self.dfc.converter.bias.detach().cpu().numpy().copy()),
            binary_weights=(None if self.dfc is None
                            else self.dfc.classifiers.detach().cpu().numpy().copy()),
            binary_bias=(None if self.dfc is None
                         else self.dfc.bias.detach().cpu().numpy().copy()),
            local_backbone=backbone_state,
            rounds=(0 if self.private is None else self.private.rounds) + 1,
        )
        return LocalResult(update, private, metrics)


def local_round(model: GlobalModel, images: np.ndarray, labels: np.ndarray, cfg: LocalConfig,
                *, round_index: int = 0, private: PrivateState | None = None,
                pack: PublicPack | None = None, progress: bool = False) -> LocalResult:
    """One device's local step (module doc): train on ``images`` and return the update.

    Args:
        model: the global model of this round (as downloaded).
        images: uint8 (N, 112, 112, 3) aligned RGB crops of the device's identities.
        labels: (N,) int64 local identity labels 0..L-1 (stable across rounds).
        cfg: hyperparameters (the method's flags included).
        round_index: the global round number (sets the adaptive epochs).
        private: the state this device kept from its previous round (``None`` at first).
            Rows of NaN in its identity weights, binary classifiers and biases are
            identities enrolled since then: they start as in round 0 (class means, bias 0).
        pack: the public pack (needed when ``cfg.public == "images"``).

    Returns:
        :class:`LocalResult`: the shared update (backbone + trained public rows, sample count,
        loss/accuracy), the new private state, and the round's statistics.

    Raises:
        ValueError: inconsistent images/labels/private state, or a missing public pack.
    """
    trainer = LocalTrainer(model, images, labels, cfg, round_index=round_index,
                           private=private, pack=pack)
    return trainer.run(progress=progress)
