"""The fair protocol's parts (docs/RESULTS.md): the controls' data, personalized evaluation
against every federated identity, hyperparameter selection on a validation data set, and
paired statistics.

- **Controls** run the one local step on one pseudo-device: ``"pooled"`` holds every device's
  training images (labels offset per device), ``"public"`` as many public images as the devices
  hold together. Same rounds, epochs and batch size as the federated methods, so the same
  number of SGD steps over the same number of images.
- **Personalized evaluation against all federated identities**: besides its own strangers, a
  device's recognizer must reject every other device's test images (the reference code's
  protocol), so TAR@1e-3 rests on tens of thousands of impostor pairs per device, not ~16.
- **Hyperparameter selection**: each method's grid point is scored on a *validation data
  set* — the same profile rendered with its own seed (``selection_seed``): its own public,
  device and evaluation identities, none of them a test seed's. The score is the mean of the
  generic TAR@1e-3 (its evaluation identities) and the personalized TAR@1e-3 (its devices).
- **Paired statistics**: per metric, the difference between two methods on the same seed
  (and, for personalized metrics, on the same device), with a 95 % Student-t interval.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

#: The metrics the selection score averages: (split, key).
SELECTION_METRICS = (("generic", "tar@far=1e-03"), ("personalized", "tar@far=1e-03"))

#: (split, metric) pairs reported with paired differences.
PAIRED_METRICS = (
    ("generic", "tar@far=1e-03"),
    ("generic", "tar@far=1e-02"),
    ("generic", "rank1"),
    ("personalized", "tar@far=1e-03"),
    ("personalized", "tar@far=1e-02"),
    ("personalized", "dir@fpir=1e-02"),
)


# --------------------------------------------------------------------------- controls


def control_data(dataset, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The pseudo-device of a control: uint8 (N, H, W, 3) images and labels 0..K-1.

    ``"pooled"``: every device's training images, device ``d``'s label ``l`` becoming
    ``offset_d + l``. ``"public"``: a seeded random sample of the public split of the same
    size (all of it when smaller), labels renumbered 0..K-1.
    """
    if kind == "pooled":
        images, labels, offset = [], [], 0
        for d in dataset.devices:
            y = np.asarray(d.train.labels, np.int64)
            images.append(d.train.load())
            labels.append(y + offset)
            offset += int(y.max()) + 1
        return np.concatenate(images), np.concatenate(labels)
    if kind == "public":
        n = sum(len(d.train) for d in dataset.devices)
        pub_labels = np.asarray(dataset.public.labels, np.int64)
        rng = np.random.default_rng([seed, 0xC0])
        sel = np.sort(rng.permutation(len(pub_labels))[:n])
        _, labels = np.unique(pub_labels[sel], return_inverse=True)
        return dataset.public.load()[sel], labels.astype(np.int64)
    raise ValueError(f"unknown control {kind!r}; choices: 'pooled', 'public'")


# --------------------------------------------------------------------------- evaluation


def with_cross_device_impostors(dataset):
    """``dataset`` whose every device's strangers also hold all other devices' test images
    (as unknown identities: impostors for 1:1, unknown probes for 1:N)."""
    from fedfr.data.manifest import DeviceSplit, InMemoryImageSet

    tests = [(d.test.load(), np.asarray(d.test.identity_ids, np.int64)) for d in dataset.devices]
    devices = []
    for i, d in enumerate(dataset.devices):
        imgs = [d.strangers.load()] + [t[0] for j, t in enumerate(tests) if j != i]
        ids = [np.asarray(d.strangers.identity_ids, np.int64)] + [
            t[1] for j, t in enumerate(tests) if j != i]
        ids_all = np.concatenate(ids)
        strangers = InMemoryImageSet(d.strangers.root, ("",) * len(ids_all), ids_all, ids_all,
                                     None, np.concatenate(imgs))
        devices.append(DeviceSplit(d.name, d.index, d.domain, d.train, d.test, strangers))
    return replace(dataset, devices=tuple(devices))


# --------------------------------------------------------------------------- selection


def grid_points(grid: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of a ``{LocalConfig field: values}`` grid, in a stable order."""
    keys = sorted(grid)
    return [dict(zip(keys, vals, strict=True))
            for vals in itertools.product(*(tuple(grid[k]) for k in keys))]


def point_key(point: Mapping) -> str:
    """A file-name-safe key of a grid point (``bn_policy=frozen,lr=0.01``)."""
    return ",".join(f"{k}={point[k]}" for k in sorted(point)) or "default"


def selection_score(result: Mapping) -> float:
    """The mean of :data:`SELECTION_METRICS` of a method's final round (unresolvable
    metrics count as 0)."""
    vals = [result[split].get(key) for split, key in SELECTION_METRICS]
    return float(np.mean([0.0 if v is None else v for v in vals]))


def choose(scores: Mapping[str, float]) -> str:
    """The best-scoring point key (ties: the first in sorted order)."""
    return max(sorted(scores), key=lambda k: scores[k])


# --------------------------------------------------------------------------- statistics


def t_interval(diffs: Sequence[float], level: float = 0.95) -> dict:
    """Mean of paired differences with a Student-t confidence interval.

    Returns ``{"n", "mean", "low", "high"}`` (``low``/``high`` are ``None`` for n < 2).
    """
    from scipy import stats

    d = np.asarray([x for x in diffs if x is not None and math.isfinite(x)], float)
    out: dict = {"n": len(d), "mean": float(d.mean()) if len(d) else None,
                 "low": None, "high": None}
    if len(d) >= 2:
        half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
        out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def paired_differences(per_seed: Mapping[int, Mapping[str, Mapping]], method: str, ref: str,
                       metrics: Sequence[tuple[str, str]] = PAIRED_METRICS) -> dict:
    """``method - ref`` per metric: over seeds (``per_seed``) and, for personalized metrics,
    over (seed, device) pairs (``per_device``), each with a 95 % t-interval."""
    out: dict = {}
    for split, key in metrics:
        seeds = [s for s in per_seed if method in per_seed[s] and ref in per_seed[s]]
        diffs = []
        for s in seeds:
            a, b = per_seed[s][method][split].get(key), per_seed[s][ref][split].get(key)
            diffs.append(None if a is None or b is None else a - b)
        entry = {"per_seed": t_interval(diffs)}
        if split == "personalized":
            dev = []
            for s in seeds:
                a = per_seed[s][method].get("personalized_per_device")
                b = per_seed[s][ref].get("personalized_per_device")
                if a and b and len(a) == len(b):
                    dev += [None if x.get(key) is None or y.get(key) is None
                            else x[key] - y[key] for x, y in zip(a, b, strict=True)]
            entry["per_device"] = t_interval(dev)
        out[f"{split}.{key}"] = entry
    return out
