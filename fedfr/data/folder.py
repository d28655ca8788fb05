"""A face dataset stored as one folder per identity: ``root/<identity>/*.jpg|*.jpeg|*.png``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from fedfr.data.images import load_images
from fedfr.errors import DataFormatError

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "ImageFolder"]

#: File suffixes (compared case-insensitively) that count as images.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and not _is_hidden(p) and p.is_file()


class ImageFolder:
    """Index of an identity-per-folder image dataset (nothing is decoded until :meth:`load`).

    Layout: ``root/<identity>/<image>``, images with suffix ``.jpg``, ``.jpeg`` or ``.png`` in
    any case. Identities are sorted by folder name and numbered ``0..C-1``; the files of each
    identity are sorted by name. Hidden entries (name starting with ``.``) are skipped, as are
    other files and nested folders inside identity folders. Files directly in ``root`` are
    ignored with a logged warning; identity folders without any image are dropped with a
    warning (so that every class index has images).

    Attributes:
        root: the dataset folder.
        classes: identity names, index = class label.
        paths: ``N`` image files, grouped by identity.
        labels: int64 array ``(N,)``, the class of each path.

    Raises:
        DataFormatError: naming ``root``, if it is missing or not a folder, has no identity
            folder, or holds no image at all.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise DataFormatError(f"{self.root}: image folder does not exist")
        if not self.root.is_dir():
            raise DataFormatError(f"{self.root}: not a directory")
        try:
            entries = sorted(self.root.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            raise DataFormatError(f"{self.root}: cannot list directory: {exc}") from exc

        stray = [p for p in entries if not _is_hidden(p) and not p.is_dir()]
        if stray:
            logger.warning(
                "%s: ignoring %d file(s) outside identity folders (e.g. %s)",
                self.root,
                len(stray),
                stray[0].name,
            )
        identity_dirs = [p for p in entries if not _is_hidden(p) and p.is_dir()]
        if not identity_dirs:
            raise DataFormatError(
                f"{self.root}: no identity folders; expected root/<identity>/<image>.jpg|png"
            )

        classes: list[str] = []
        paths: list[Path] = []
        labels: list[int] = []
        empty: list[str] = []
        for d in identity_dirs:
            try:
                files = sorted((p for p in d.iterdir() if _is_image_file(p)), key=lambda p: p.name)
            except OSError as exc:
                raise DataFormatError(f"{d}: cannot list directory: {exc}") from exc
            if not files:
                empty.append(d.name)
                continue
            label = len(classes)
            classes.append(d.name)
            paths.extend(files)
            labels.extend([label] * len(files))
        if empty:
            logger.warning(
                "%s: dropping %d identity folder(s) without images (e.g. %s)",
                self.root,
                len(empty),
                empty[0],
            )
        if not paths:
            raise DataFormatError(
                f"{self.root}: empty dataset: no .jpg/.jpeg/.png image in any identity folder"
            )
        self.classes = classes
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        """Number of identities ``C``."""
        return len(self.classes)

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, images={len(self)}, classes={self.num_classes})"

    def load(
        self, size: tuple[int, int] | None = None, *, workers: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode every image.

        Args:
            size: ``(height, width)`` to resize to (``cv2.INTER_AREA``); when ``None`` all images
                must already share one shape.
            workers: decoding threads (see :func:`fedfr.data.images.load_images`).

        Returns:
            ``(images, labels)``: uint8 ``(N, H, W, 3)`` RGB and int64 ``(N,)``.

        Raises:
            DataFormatError: naming the first unreadable / non-image / odd-shaped file.
        """
        images = load_images(self.paths, size=size, workers=workers)
        return images, self.labels.copy()
