"""Opening a user's data by path: the one place that maps a path to a reader.

Training sets (``fedfr pretrain --data``):
- a synthetic benchmark folder (``manifest.json`` from ``fedfr data synth``) -> its public split;
- an image folder ``identity/*.jpg|png``;
- an InsightFace RecordIO file ``train.rec`` (with ``train.idx`` beside it).

Evaluation sets (``fedfr eval --data``): a synthetic benchmark folder (every split), or a
verification ``.bin`` pair file (LFW / CFP-FP / AgeDB-30 style; 1:1 only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedfr.data.contract import ARCFACE_CONTRACT
from fedfr.errors import DataFormatError


@dataclass(frozen=True)
class TrainingSet:
    """Decoded training data: uint8 (N, 112, 112, 3) RGB crops and int64 (N,) labels 0..C-1."""

    images: np.ndarray
    labels: np.ndarray
    description: str

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1


def load_training_set(path: str | Path) -> TrainingSet:
    """Open ``path`` as one of the training-set formats above and decode it into memory.

    Raises:
        DataFormatError: the path does not exist or is none of the supported formats.
    """
    from fedfr.data.folder import ImageFolder
    from fedfr.data.manifest import SyntheticDataset, is_synthetic_dataset
    from fedfr.data.recordio import RecordIODataset

    p = Path(path)
    size = ARCFACE_CONTRACT.size
    if not p.exists():
        raise DataFormatError(f"{p}: no such file or directory")
    if p.is_dir() and is_synthetic_dataset(p):
        ds = SyntheticDataset.load(p)
        return TrainingSet(ds.public.load(), np.asarray(ds.public.labels, dtype=np.int64),
                           f"synthetic:{ds.profile}:seed={ds.seed}:public")
    if p.is_dir():
        folder = ImageFolder(p)
        images, labels = folder.load(size=size)
        return TrainingSet(images, np.asarray(labels, dtype=np.int64), f"folder:{p.name}")
    if p.suffix == ".rec":
        rec = RecordIODataset(p)
        labels = np.asarray(rec.labels, dtype=np.int64)
        images = np.stack([_fit(rec[i][0], size) for i in range(len(rec))])
        _, labels = np.unique(labels, return_inverse=True)  # contiguous 0..C-1
        return TrainingSet(images, labels.astype(np.int64), f"recordio:{p.name}")
    raise DataFormatError(
        f"{p}: not a training set (expected a synthetic data set folder with manifest.json, an "
        "image folder identity/*.jpg|png, or an InsightFace .rec file)"
    )


def _fit(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from fedfr.data.images import resize_area

    return img if img.shape[:2] == size else resize_area(img, size)
