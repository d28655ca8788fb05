"""What a device's local round consumes and produces besides the model: the public pack,
the private state kept between rounds, and the round's result (see :mod:`fedfr.train.local`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedfr.fl import SharedUpdate

PUBLIC_KINDS = ("images", "embeddings")


@dataclass(frozen=True, eq=False)
class PublicPack:
    """The public data a device mines hard negatives from.

    Attributes:
        kind: ``"images"`` — public face crops with their class rows (the paper), or
            ``"embeddings"`` — no image; the public class embedding rows are the negatives.
        images: uint8 (P, H, W, 3) RGB crops (``images`` kind only).
        labels: (P,) int64 row numbers into the public class embedding matrix.
    """

    kind: str
    images: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in PUBLIC_KINDS:
            raise ValueError(f"public pack kind must be one of {PUBLIC_KINDS}, got {self.kind!r}")
        if self.kind == "images":
            if self.images is None or self.labels is None:
                raise ValueError("an 'images' public pack needs images and labels")
            if (self.images.dtype != np.uint8 or self.images.ndim != 4
                    or self.images.shape[-1] != 3 or len(self.labels) != len(self.images)):
                raise ValueError(f"public pack images must be uint8 (P, H, W, 3) with P labels; "
                                 f"got {self.images.dtype} {self.images.shape}, "
                                 f"{len(self.labels)} labels")

    @property
    def nbytes(self) -> int:
        """Raw bytes of the pack's images and labels (0 for the embedding-only pack)."""
        if self.kind != "images":
            return 0
        return int(self.images.nbytes + np.asarray(self.labels, np.int64).nbytes)

    @classmethod
    def from_images(cls, images: np.ndarray, labels: np.ndarray, *, per_class: int | None = None,
                    seed: int = 0) -> PublicPack:
        """An ``images`` pack from a public split, keeping ``per_class`` images of each class."""
        labels = np.asarray(labels, np.int64)
        if per_class is not None:
            rng = np.random.default_rng(seed)
            keep = []
            for c in np.unique(labels):
                idx = np.flatnonzero(labels == c)
                keep.append(np.sort(rng.permutation(idx)[:per_class]))
            sel = np.concatenate(keep)
            images, labels = images[sel], labels[sel]
        return cls("images", np.ascontiguousarray(images), labels)

    def save(self, path: str | os.PathLike[str], *, metadata: dict | None = None) -> Path:
        """Write the pack in the wire format the aggregator serves
        (:func:`fedfr.fl.wire.save_public_pack`)."""
        from fedfr.fl.wire import save_public_pack

        return save_public_pack(path, self.kind, self.images, self.labels, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicPack:
        """Read a pack file (raises :class:`~fedfr.errors.DataFormatError` when invalid)."""
        from fedfr.fl.wire import load_public_pack

        kind, images, labels, _ = load_public_pack(path)
        return cls(kind, images, labels)


@dataclass(frozen=True, eq=False)
class PrivateState:
    """What a device keeps between rounds and never uploads.

    Attributes:
        identity_weights: (L, D) float32 local identity weights of the CosFace head.
        converter: (D, D) float32 DFC converter, or ``None`` (method without DFC).
        converter_bias: (D,) float32 the converter's bias, or ``None`` (no bias).
        binary_weights: (L, D) float32 DFC binary classifiers, or ``None``.
        binary_bias: (L,) float32 their biases, or ``None``.
        local_backbone: the backbone after the last local training: the personalized
            backbone and next round's "previous local model"; ``None`` before any round.
        rounds: rounds trained so far.
    """

    identity_weights: np.ndarray
    converter: np.ndarray | None = None
    converter_bias: np.ndarray | None = None
    binary_weights: np.ndarray | None = None
    binary_bias: np.ndarray | None = None
    local_backbone: dict[str, np.ndarray] | None = None
    rounds: int = 0

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat ``{name: array}`` with private names (see :mod:`fedfr.fl.params`)."""
        out = {"local.identity_weights": self.identity_weights,
               "local.rounds": np.asarray(self.rounds, np.int64)}
        if self.converter is not None:
            out["dfc.converter"] = self.converter
        if self.converter_bias is not None:
            out["dfc.converter_bias"] = self.converter_bias
        if self.binary_weights is not None:
            out["dfc.binary_weights"] = self.binary_weights
        if self.binary_bias is not None:
            out["dfc.binary_bias"] = self.binary_bias
        for k, v in (self.local_backbone or {}).items():
            out["prev_local." + k] = v
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PrivateState:
        n = len("prev_local.")
        local = {k[n:]: v for k, v in arrays.items() if k.startswith("prev_local.")}
        return cls(identity_weights=arrays["local.identity_weights"],
                   converter=arrays.get("dfc.converter"),
                   converter_bias=arrays.get("dfc.converter_bias"),
                   binary_weights=arrays.get("dfc.binary_weights"),
                   binary_bias=arrays.get("dfc.binary_bias"),
                   local_backbone=local or None,
                   rounds=int(arrays.get("local.rounds", 0)))


@dataclass(frozen=True, eq=False)
class LocalResult:
    """A device's round: the update to upload, the new private state, statistics."""

    update: SharedUpdate
    private: PrivateState
    metrics: dict[str, float]
