"""The global model as numpy arrays: what the server holds, sends and publishes per round.

It reads and writes the same safetensors checkpoint format as :mod:`fedfr.checkpoint`
(``backbone.*`` tensors, ``head.public_class_embeddings``, string metadata) without torch, so
the aggregator and the harness's server side stay numpy-only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fedfr.errors import CheckpointError
from fedfr.fl.params import BACKBONE_PREFIX

#: Must equal fedfr.checkpoint.FORMAT / FORMAT_VERSION (a test checks it).
CHECKPOINT_FORMAT = "fedfr-checkpoint"
CHECKPOINT_FORMAT_VERSION = "1"
PUBLIC_EMBEDDINGS_KEY = "head.public_class_embeddings"


@dataclass(frozen=True, eq=False)
class GlobalModel:
    """A generic model: backbone arrays, the public class embeddings, and what describes them.

    Attributes:
        arch: registered backbone name.
        embedding_size: D.
        contract: the input contract as a dict (:meth:`InputContract.to_dict`).
        backbone: the backbone state dict as ``{key: array}`` (no prefix).
        public_embeddings: (C, D) float32 public class embedding matrix, or ``None``.
        version: a label of this version (round number, hash...).
        metadata: free provenance.
    """

    arch: str
    embedding_size: int
    contract: dict
    backbone: dict[str, np.ndarray]
    public_embeddings: np.ndarray | None = None
    version: str = "0"
    metadata: dict = field(default_factory=dict)

    def with_(self, **changes: object) -> GlobalModel:
        return replace(self, **changes)

    @property
    def backbone_nbytes(self) -> int:
        return int(sum(v.nbytes for v in self.backbone.values()))

    @property
    def nbytes(self) -> int:
        """Bytes a device downloads for this model (backbone + public embeddings)."""
        pub = 0 if self.public_embeddings is None else self.public_embeddings.nbytes
        return self.backbone_nbytes + int(pub)

    def shared_arrays(self) -> dict[str, np.ndarray]:
        """The backbone under its shared names (``backbone.<key>``)."""
        return {BACKBONE_PREFIX + k: v for k, v in self.backbone.items()}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GlobalModel:
        """Read a fedfr safetensors checkpoint (e.g. from ``fedfr pretrain``).

        Raises:
            CheckpointError: unreadable, corrupt or not a fedfr checkpoint.
        """
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as e:  # safetensors' own error types
            raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not a fedfr checkpoint (format={meta.get('format')!r})")
        if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
            raise CheckpointError(f"{path}: unsupported format version "
                                  f"{meta.get('format_version')!r}")
        try:
            user = json.loads(meta.get("metadata", "{}"))
            contract = json.loads(meta["input_contract"])
            emb = int(meta["embedding_size"])
            arch = meta["arch"]
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: invalid fedfr metadata ({e!r})") from e
        n = len(BACKBONE_PREFIX)
        backbone = {k[n:]: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)}
        return cls(arch=arch, embedding_size=emb, contract=contract, backbone=backbone,
                   public_embeddings=tensors.get(PUBLIC_EMBEDDINGS_KEY),
                   version=str(user.get("model_version", "0")), metadata=user)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as a fedfr checkpoint (atomically); readable by
        :func:`fedfr.checkpoint.load_backbone` and :meth:`load`."""
        from safetensors.numpy import save_file

        from fedfr.io import atomic_path

        # np.array(order="C"), not ascontiguousarray: that one turns 0-d counters into (1,).
        tensors = {BACKBONE_PREFIX + k: np.array(v, order="C") for k, v in self.backbone.items()}
        if self.public_embeddings is not None:
            tensors[PUBLIC_EMBEDDINGS_KEY] = np.array(self.public_embeddings, order="C")
        meta = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "arch": self.arch,
            "embedding_size": str(int(self.embedding_size)),
            "input_contract": json.dumps(self.contract),
            "metadata": json.dumps({**self.metadata, "model_version": self.version}),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path
