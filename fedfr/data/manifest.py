"""Reading synthetic datasets written by :func:`fedfr.data.synthetic.synthesize`.

See :mod:`fedfr.data.synthetic.writer` for the on-disk format. Everything a reader touches is
validated: an unreadable or malformed manifest, a missing image or protocol file, or a protocol
array that does not fit its image list raises :class:`~fedfr.errors.DataFormatError` naming the
file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedfr.data.contract import InputContract
from fedfr.errors import DataFormatError

FORMAT = "fedfr-synthetic"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

__all__ = [
    "DeviceSplit",
    "EvalSplit",
    "ImageSet",
    "InMemoryImageSet",
    "SyntheticDataset",
    "is_synthetic_dataset",
]


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A list of images of a dataset.

    Attributes:
        root: the dataset folder; ``paths`` are relative to it.
        paths: relative image paths.
        labels: int64 class labels (see the writer's documentation for their meaning per split).
        identity_ids: int64 global identity ids of the generator.
        image_indices: int64 image indices of the generator (``None`` if unknown).
    """

    root: Path
    paths: tuple[str, ...]
    labels: np.ndarray
    identity_ids: np.ndarray
    image_indices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def files(self) -> list[Path]:
        """Absolute image paths."""
        return [self.root / p for p in self.paths]

    @property
    def num_classes(self) -> int:
        """Number of distinct labels."""
        return len(np.unique(self.labels))

    def load(self, *, workers: int | None = None) -> np.ndarray:
        """Decode all images: uint8 ``(N, H, W, 3)`` RGB (a thread pool decodes the PNGs)."""
        from fedfr.data.images import load_images

        return load_images(self.files, workers=workers)

    def in_memory(self, *, workers: int | None = None) -> InMemoryImageSet:
        """A copy whose :meth:`load` returns the images decoded once, here (the same array on
        every call: callers must not modify it)."""
        pixels = self.load(workers=workers)
        return InMemoryImageSet(self.root, self.paths, self.labels, self.identity_ids,
                                self.image_indices, pixels)


@dataclass(frozen=True, eq=False)
class InMemoryImageSet(ImageSet):
    """An :class:`ImageSet` holding its decoded uint8 ``(N, H, W, 3)`` pixels (shared)."""

    pixels: np.ndarray | None = None

    def load(self, *, workers: int | None = None) -> np.ndarray:
        return self.pixels

    def in_memory(self, *, workers: int | None = None) -> InMemoryImageSet:
        return self


@dataclass(frozen=True, eq=False)
class DeviceSplit:
    """One device: its registered users' train/test images and its strangers' images."""

    name: str
    index: int
    domain: dict[str, Any]
    train: ImageSet
    test: ImageSet
    strangers: ImageSet

    @property
    def num_classes(self) -> int:
        """Registered identities of the device (labels ``0..K-1``)."""
        return self.train.num_classes


@dataclass(frozen=True, eq=False)
class EvalSplit:
    """An evaluation set with its verification pairs and 1:N gallery/probe split.

    Attributes:
        images: the images (labels ``0..E-1``).
        pairs: int ``(M, 2)`` indices into ``images``.
        issame: bool ``(M,)``, True for genuine pairs.
        gallery: int indices of the gallery images (first image(s) of enrolled identities).
        probes: int indices of the probe images (the rest; unenrolled identities included).
        device_index: per-image device whose domain rendered it (eval_devices), else ``None``.
    """

    images: ImageSet
    pairs: np.ndarray
    issame: np.ndarray
    gallery: np.ndarray
    probes: np.ndarray
    device_index: np.ndarray | None = None

    @property
    def known_probes(self) -> np.ndarray:
        """Boolean mask over ``probes``: whether the probe's identity is in the gallery."""
        enrolled = np.unique(self.images.labels[self.gallery])
        return np.isin(self.images.labels[self.probes], enrolled)


@dataclass(frozen=True, eq=False)
class SyntheticDataset:
    """A synthetic dataset folder, loaded from its manifest (images are decoded on demand)."""

    root: Path
    profile: str
    seed: int
    contract: InputContract
    public: ImageSet
    devices: tuple[DeviceSplit, ...]
    eval: EvalSplit
    eval_devices: EvalSplit
    num_public_classes: int
    generator: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, root: str | os.PathLike[str], *, check_files: bool = True) -> SyntheticDataset:
        """Load and validate a dataset folder (or the path of its ``manifest.json``).

        Args:
            root: the folder.
            check_files: verify that every referenced image exists.

        Raises:
            DataFormatError: naming the manifest or the missing/invalid file.
        """
        root = Path(root)
        if root.name == MANIFEST and root.is_file():
            root = root.parent
        mpath = root / MANIFEST
        try:
            with open(mpath, encoding="utf-8") as f:
                m = json.load(f)
        except FileNotFoundError:
            raise DataFormatError(
                f"{mpath}: no manifest (not a synthetic dataset folder)"
            ) from None
        except (OSError, ValueError) as e:
            raise DataFormatError(f"{mpath}: unreadable manifest ({e})") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise DataFormatError(f"{mpath}: not a {FORMAT!r} manifest")
        if m.get("format_version") != FORMAT_VERSION:
            raise DataFormatError(
                f"{mpath}: format_version {m.get('format_version')!r} is not supported "
                f"(this version reads {FORMAT_VERSION})"
            )
        try:
            ds = _parse(root, m, mpath)
        except DataFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataFormatError(
                f"{mpath}: malformed manifest ({type(e).__name__}: {e})"
            ) from None
        if check_files:
            _check_files(ds)
        return ds

    def in_memory(self, *, workers: int | None = None) -> SyntheticDataset:
        """A copy with every image set decoded once into memory (repeated evaluations and
        training then never touch the PNGs again)."""
        def dev(d: DeviceSplit) -> DeviceSplit:
            return replace(d, train=d.train.in_memory(workers=workers),
                           test=d.test.in_memory(workers=workers),
                           strangers=d.strangers.in_memory(workers=workers))

        def ev(e: EvalSplit) -> EvalSplit:
            return replace(e, images=e.images.in_memory(workers=workers))

        return replace(self, public=self.public.in_memory(workers=workers),
                       devices=tuple(dev(d) for d in self.devices), eval=ev(self.eval),
                       eval_devices=ev(self.eval_devices))

    def image_sets(self) -> dict[str, ImageSet]:
        """Every image list by a readable name (``"devices/device_000/train"``...)."""
        out = {
            "public": self.public,
            "eval": self.eval.images,
            "eval_devices": self.eval_devices.images,
        }
        for d in self.devices:
            for k in ("train", "test", "strangers"):
                out[f"devices/{d.name}/{k}"] = getattr(d, k)
        return out


def is_synthetic_dataset(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (a folder or its manifest file) holds a synthetic dataset manifest."""
    p = Path(path)
    m = p if p.name == MANIFEST and p.is_file() else p / MANIFEST
    try:
        with open(m, encoding="utf-8") as f:
            head = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(head, dict) and head.get("format") == FORMAT


def _image_set(root: Path, d: dict[str, Any], where: str, mpath: Path) -> ImageSet:
    paths = tuple(str(p) for p in d["paths"])
    labels = np.asarray(d["labels"], np.int64)
    ids = np.asarray(d["identity_ids"], np.int64)
    idx = np.asarray(d["image_indices"], np.int64) if "image_indices" in d else None
    n = len(paths)
    if labels.shape != (n,) or ids.shape != (n,) or (idx is not None and idx.shape != (n,)):
        raise DataFormatError(f"{mpath}: {where}: paths, labels and identity ids differ in length")
    if int(d.get("count", n)) != n:
        raise DataFormatError(f"{mpath}: {where}: count {d.get('count')} but {n} paths")
    for p in paths:
        if os.path.isabs(p) or ".." in Path(p).parts:
            raise DataFormatError(f"{mpath}: {where}: path {p!r} escapes the dataset folder")
    return ImageSet(root, paths, labels, ids, idx)


def _npy(root: Path, name: Any, mpath: Path, where: str) -> np.ndarray:
    if not isinstance(name, str) or os.path.isabs(name) or ".." in Path(name).parts:
        raise DataFormatError(f"{mpath}: {where}: bad file reference {name!r}")
    path = root / name
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: missing ({where} of {mpath})") from None
    except (OSError, ValueError, EOFError) as e:
        raise DataFormatError(f"{path}: unreadable .npy ({e})") from None


def _eval_split(root: Path, d: dict[str, Any], name: str, mpath: Path) -> EvalSplit:
    images = _image_set(root, d["images"], name, mpath)
    n = len(images)
    pairs = _npy(root, d["pairs"], mpath, f"{name} pairs").astype(np.int64)
    issame = _npy(root, d["issame"], mpath, f"{name} issame")
    gallery = _npy(root, d["gallery"], mpath, f"{name} gallery").astype(np.int64)
    probes = _npy(root, d["probes"], mpath, f"{name} probes").astype(np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or issame.shape != (len(pairs),):
        raise DataFormatError(f"{root / d['pairs']}: pairs must be (M, 2) with an (M,) issame")
    for arr, key in ((pairs, "pairs"), (gallery, "gallery"), (probes, "probes")):
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise DataFormatError(f"{root / d[key]}: indices outside the {n} images of {name}")
    issame = issame.astype(bool)
    labels = images.labels
    if len(pairs) and not np.array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], issame):
        raise DataFormatError(f"{root / d['issame']}: issame disagrees with the labels of {name}")
    dev = np.asarray(d["device_index"], np.int64) if d.get("device_index") is not None else None
    if dev is not None and dev.shape != (n,):
        raise DataFormatError(f"{mpath}: {name}: device_index has the wrong length")
    return EvalSplit(images, pairs, issame, gallery, probes, dev)


def _parse(root: Path, m: dict[str, Any], mpath: Path) -> SyntheticDataset:
    s = m["splits"]
    pub = _image_set(root, s["public"]["images"], "public", mpath)
    n_cls = int(s["public"]["num_classes"])
    if len(pub) and (pub.labels.min() < 0 or pub.labels.max() >= n_cls):
        raise DataFormatError(f"{mpath}: public labels outside 0..{n_cls - 1}")
    devices = tuple(
        DeviceSplit(
            name=str(d["name"]),
            index=int(d["index"]),
            domain=dict(d["domain"]),
            train=_image_set(root, d["train"], f"{d['name']} train", mpath),
            test=_image_set(root, d["test"], f"{d['name']} test", mpath),
            strangers=_image_set(root, d["strangers"], f"{d['name']} strangers", mpath),
        )
        for d in s["devices"]
    )
    contract = InputContract.from_dict(dict(m["contract"]))
    return SyntheticDataset(
        root=root,
        profile=str(m["profile"]),
        seed=int(m["seed"]),
        contract=contract,
        public=pub,
        devices=devices,
        eval=_eval_split(root, s["eval"], "eval", mpath),
        eval_devices=_eval_split(root, s["eval_devices"], "eval_devices", mpath),
        num_public_classes=n_cls,
        generator=dict(m.get("generator", {})),
        manifest=m,
    )


def _check_files(ds: SyntheticDataset) -> None:
    """Every image exists (one directory listing per folder, not one stat per file)."""
    listing: dict[str, set[str]] = {}
    for s in ds.image_sets().values():
        for p in s.paths:
            folder, _, name = p.rpartition("/")
            have = listing.get(folder)
            if have is None:
                try:
                    have = set(os.listdir(ds.root / folder))
                except OSError:
                    have = set()
                listing[folder] = have
            if name not in have:
                raise DataFormatError(
                    f"{ds.root / p}: missing image (listed in {ds.root / MANIFEST})"
                )
