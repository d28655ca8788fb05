"""The evaluation protocol: generic (identities seen by nobody) and per-device metrics.

Generic: the global backbone on the evaluation identities — 1:1 verification on the split's
pair list (TAR@FAR, EER, 10-fold accuracy) and open-set 1:N (rank-1 over known probes,
DIR@FPIR with probes of identities that are not enrolled).

Per device ("personalized" when the embedding function is the device's own recognizer): the
device's registered identities are enrolled from its *train* images (one template per identity:
mean of L2-normalized embeddings, re-normalized); probes are its held-out *test* images plus
images of *strangers* in the same camera domain, who must be rejected. 1:1 uses every pair among
test and stranger images except stranger-stranger pairs. Device metrics are averaged over devices.

An embedding function maps uint8 (N, 112, 112, 3) RGB crops to float32 (N, D) L2-normalized
embeddings; :func:`backbone_embedder` makes one from a backbone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedfr.errors import DataFormatError
from fedfr.metrics import (
    build_templates,
    identification_report,
    pair_scores,
    verification_report,
)

if TYPE_CHECKING:
    from fedfr.data.manifest import DeviceSplit, EvalSplit

log = logging.getLogger(__name__)

EmbedFn = Callable[[np.ndarray], np.ndarray]

DEFAULT_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
DEFAULT_FPIRS: tuple[float, ...] = (1e-1, 1e-2)


def backbone_embedder(backbone, contract, *, device="cpu", batch_size=256, flip=False) -> EmbedFn:
    """An :data:`EmbedFn` running ``backbone`` (put in eval mode) with :func:`embed_images`."""
    from fedfr.train.embedding import embed_images

    backbone.eval()

    def embed(images: np.ndarray) -> np.ndarray:
        return embed_images(backbone, images, contract=contract, device=device,
                            batch_size=batch_size, flip=flip)

    return embed


def _rate_key(rate: float) -> str:
    return f"{rate:.0e}"


def pairs_report(scores: np.ndarray, issame: np.ndarray,
                 fars: Sequence[float] = DEFAULT_FARS) -> dict:
    """1:1 metrics (:func:`~fedfr.metrics.verification_report`) of (M,) pair scores and
    their (M,) genuine flags; FAR keys formatted as ``"1e-03"``."""
    rep = verification_report(scores, issame, fars)
    rep["tar_at_far"] = {_rate_key(f): v for f, v in rep["tar_at_far"].items()}
    rep["threshold_at_far"] = {_rate_key(f): v for f, v in rep["threshold_at_far"].items()}
    return rep


def _identification(gallery_emb, gallery_labels, probe_emb, probe_labels,
                    fpirs: Sequence[float]) -> dict:
    t_labels, templates = build_templates(gallery_emb, gallery_labels)
    rep = identification_report(templates, t_labels, probe_emb, probe_labels, fpirs)
    if isinstance(rep.get("dir_at_fpir"), dict):
        rep["dir_at_fpir"] = {_rate_key(f): v for f, v in rep["dir_at_fpir"].items()}
    return rep


def evaluate_split(embed: EmbedFn, split: EvalSplit, *, fars: Sequence[float] = DEFAULT_FARS,
                   fpirs: Sequence[float] = DEFAULT_FPIRS) -> dict:
    """Generic 1:1 and 1:N metrics of ``embed`` on an evaluation split."""
    return split_report(embed(split.images.load()), split, fars=fars, fpirs=fpirs)[0]


def split_report(emb: np.ndarray, split: EvalSplit, *, fars: Sequence[float] = DEFAULT_FARS,
                 fpirs: Sequence[float] = DEFAULT_FPIRS) -> tuple[dict, np.ndarray]:
    """:func:`evaluate_split` from precomputed (N, D) embeddings of ``split.images``.

    Returns ``(report, scores)`` — scores (M,) of ``split.pairs``, for ROC plots.
    """
    labels = np.asarray(split.images.labels)
    scores = pair_scores(emb, split.pairs)
    report = {
        "num_images": len(emb),
        "num_identities": len(np.unique(labels)),
        "verification": pairs_report(scores, split.issame, fars),
        "identification": _identification(emb[split.gallery], labels[split.gallery],
                                          emb[split.probes], labels[split.probes], fpirs),
    }
    return report, scores


def device_pairs(test_labels: np.ndarray, num_strangers: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair among a device's test + stranger images, except stranger-stranger pairs.

    Images are indexed test first, then strangers. Returns ``(pairs (M, 2) int64, issame (M,))``.
    """
    n_test = len(test_labels)
    n = n_test + num_strangers
    i, j = np.triu_indices(n, k=1)
    keep = i < n_test  # i < j, so this drops exactly the stranger-stranger pairs
    i, j = i[keep], j[keep]
    same = np.zeros(len(i), dtype=bool)
    both_test = j < n_test
    same[both_test] = test_labels[i[both_test]] == test_labels[j[both_test]]
    return np.stack([i, j], axis=1).astype(np.int64), same


def evaluate_device(embed: EmbedFn, device: DeviceSplit, *,
                    fars: Sequence[float] = DEFAULT_FARS,
                    fpirs: Sequence[float] = DEFAULT_FPIRS) -> dict:
    """Local 1:1 and open-set 1:N metrics of ``embed`` on one device's data (see module doc)."""
    return _device_report(embed, device, fars, fpirs)[0]


def _device_report(embed: EmbedFn, device: DeviceSplit, fars: Sequence[float],
                   fpirs: Sequence[float]) -> tuple[dict, np.ndarray, np.ndarray]:
    """:func:`evaluate_device` plus the pair scores and genuine flags (for ROC curves)."""
    e_train = embed(device.train.load())
    e_test = embed(device.test.load())
    e_str = embed(device.strangers.load())
    y_train = np.asarray(device.train.labels, dtype=np.int64)
    y_test = np.asarray(device.test.labels, dtype=np.int64)
    # Strangers get labels no enrolled identity has, so they count as unknown probes.
    _, y_str = np.unique(np.asarray(device.strangers.labels), return_inverse=True)
    y_str = y_str.astype(np.int64) + int(max(y_train.max(), y_test.max())) + 1
    pairs, same = device_pairs(y_test, len(e_str))
    emb = np.concatenate([e_test, e_str])
    scores = pair_scores(emb, pairs)
    report = {
        "device": device.name,
        "verification": pairs_report(scores, same, fars),
        "identification": _identification(e_train, y_train, emb,
                                          np.concatenate([y_test, y_str]), fpirs),
    }
    return report, scores, same


def mean_over_devices(reports: Sequence[dict]) -> dict[str, float | None]:
    """The flat summary (see :func:`summarize`) averaged over devices; ``None`` where any
    device cannot resolve a metric (too few impostor pairs for that FAR)."""
    flats = [summarize(r) for r in reports]
    out: dict[str, float | None] = {}
    for key in flats[0]:
        vals = [f.get(key) for f in flats]
        out[key] = None if any(v is None for v in vals) else float(np.mean(vals))
    return out


def summarize(report: dict) -> dict[str, float | None]:
    """A flat ``{metric: value}`` view of an :func:`evaluate_split`/:func:`evaluate_device`
    report: ``tar@far=1e-03``, ``eer``, ``acc``, ``rank1``, ``dir@fpir=1e-02``."""
    ver, ident = report["verification"], report["identification"]
    out: dict[str, float | None] = {}
    for k, v in ver["tar_at_far"].items():
        out[f"tar@far={k}"] = v
    out["eer"] = ver["eer"]
    out["acc"] = ver["accuracy_mean"]
    out["rank1"] = ident.get("rank1")
    for k, v in ident.get("dir_at_fpir", {}).items():
        out[f"dir@fpir={k}"] = v
    return out


def evaluate_dataset(embed: EmbedFn, dataset, *, fars: Sequence[float] = DEFAULT_FARS,
                     fpirs: Sequence[float] = DEFAULT_FPIRS,
                     device_embedders: Callable[[DeviceSplit], EmbedFn] | None = None,
                     devices: bool = True,
                     ) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every metric of a synthetic benchmark data set (:class:`SyntheticDataset`).

    Args:
        embed: the generic model's embedding function.
        device_embedders: the embedding function to use on each device (its personalized
            recognizer); default: ``embed`` everywhere (the pretrained baseline).
        devices: ``False``: the generic splits only (``devices`` and its curve are absent).

    Returns:
        ``(report, curves)``: report has ``generic`` (evaluation identities, public domain),
        ``generic_device_domains`` (evaluation identities in the devices' camera domains) and
        ``devices`` (``mean`` summary and ``per_device`` reports); curves maps a name
        (``generic``, ``generic_device_domains``, ``devices`` — every device's pairs pooled)
        to ``(scores, issame)`` for ROC plots.
    """
    report: dict = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, split in (("generic", dataset.eval), ("generic_device_domains",
                                                     dataset.eval_devices)):
        emb = embed(split.images.load())
        report[name], scores = split_report(emb, split, fars=fars, fpirs=fpirs)
        curves[name] = (scores, np.asarray(split.issame, dtype=bool))
    if not devices:
        return report, curves
    per_device, dev_scores, dev_same = [], [], []
    for d in dataset.devices:
        rep, scores, same = _device_report(device_embedders(d) if device_embedders else embed,
                                           d, fars, fpirs)
        per_device.append(rep)
        dev_scores.append(scores)
        dev_same.append(same)
    # Pooled over devices: each device's pairs are scored by its own recognizer.
    curves["devices"] = (np.concatenate(dev_scores), np.concatenate(dev_same))
    report["devices"] = {"mean": mean_over_devices(per_device), "per_device": per_device}
    return report, curves


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("tar@far=1e-01", "TAR@1e-1"),
    ("tar@far=1e-02", "TAR@1e-2"),
    ("tar@far=1e-03", "TAR@1e-3"),
    ("tar@far=1e-04", "TAR@1e-4"),
    ("eer", "EER"),
    ("acc", "Acc(10f)"),
    ("rank1", "Rank-1"),
    ("dir@fpir=1e-01", "DIR@1e-1"),
    ("dir@fpir=1e-02", "DIR@1e-2"),
)


def format_table(rows: dict[str, dict[str, float | None]]) -> str:
    """A Markdown table: one row per named flat summary, the :data:`TABLE_COLUMNS` columns
    ('—' where a metric is not resolvable with the available pairs)."""
    head = "| model / split | " + " | ".join(t for _, t in TABLE_COLUMNS) + " |"
    sep = "|---|" + "|".join("---:" for _ in TABLE_COLUMNS) + "|"
    lines = [head, sep]
    for name, flat in rows.items():
        cells = []
        for key, _ in TABLE_COLUMNS:
            v = flat.get(key)
            cells.append("—" if v is None else f"{v:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_rows(report: dict, label: str = "") -> dict[str, dict[str, float | None]]:
    """The three summary rows of an :func:`evaluate_dataset` report."""
    prefix = f"{label} " if label else ""
    return {
        f"{prefix}generic (public domain)": summarize(report["generic"]),
        f"{prefix}generic (device domains)": summarize(report["generic_device_domains"]),
        f"{prefix}per-device (mean)": report["devices"]["mean"],
    }


def evaluate_checkpoint(checkpoint: Path, data: Path, out: Path, *, arch: str | None = None,
                        device: str = "auto", flip: bool = False) -> dict:
    """Evaluate a checkpoint on a synthetic benchmark folder or a ``.bin`` pair file.

    Writes ``out/eval.json``, ``out/eval.md`` (the table) and ``out/roc.png``; returns the
    report (with a ``table`` entry holding the Markdown table).
    """
    from fedfr.backbones import get_backbone_spec
    from fedfr.checkpoint import load_backbone, read_checkpoint
    from fedfr.data.manifest import SyntheticDataset, is_synthetic_dataset
    from fedfr.io import write_bytes_atomic, write_json_atomic
    from fedfr.train.runtime import resolve_device

    dev = resolve_device(device)
    if arch is None:
        arch = read_checkpoint(checkpoint).arch
    backbone = load_backbone(checkpoint, arch).to(dev)
    embed = backbone_embedder(backbone, get_backbone_spec(arch).contract, device=dev, flip=flip)
    if data.is_dir() and is_synthetic_dataset(data):
        report, curves = evaluate_dataset(embed, SyntheticDataset.load(data))
        rows = table_rows(report)
    elif data.suffix == ".bin":
        from fedfr.data.verification_bin import load_verification_bin, pairs_from_issame

        vs = load_verification_bin(data)
        emb = embed(vs.images)
        scores = pair_scores(emb, pairs_from_issame(len(vs.issame)))
        report = {data.stem: {"verification": pairs_report(scores, vs.issame),
                              "identification": {}}}
        curves = {data.stem: (scores, vs.issame)}
        rows = {data.stem: summarize(report[data.stem])}
    else:
        raise DataFormatError(
            f"{data}: expected a synthetic data set folder or a verification .bin pair file"
        )
    report["checkpoint"] = str(checkpoint)
    report["arch"] = arch
    report["data"] = str(data)
    table = format_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "eval.json", report)
    write_bytes_atomic(out / "eval.md", (table + "\n").encode())
    try:
        from fedfr.plots import plot_roc

        plot_roc(curves, out / "roc.png", title=f"{arch}: {checkpoint.name}")
    except ImportError:
        log.warning("matplotlib not installed: no ROC plot (pip install 'fedfr[plot]')")
    report["table"] = table
    return report


# --------------------------------------------------------------------------- validation sets
#: FARs a model version is judged at on the server's validation set.
VALIDATION_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3)
#: Impostor pairs scored at most (a uniform sample without replacement above this).
MAX_IMPOSTOR_PAIRS = 200_000


def validation_pairs(labels: np.ndarray, *, max_impostor_pairs: int = MAX_IMPOSTOR_PAIRS,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The pairs a validation set is scored on: every genuine pair, and every impostor pair
    when there are at most ``max_impostor_pairs`` of them, else that many drawn uniformly
    without replacement (a pure function of ``labels`` and ``seed``).

    Returns:
        ``(pairs (M, 2) int64 with i < j, sorted, issame (M,) bool)``.
    """
    lab = np.asarray(labels)
    n = len(lab)
    order = np.argsort(lab, kind="stable")
    _, starts, counts = np.unique(lab[order], return_index=True, return_counts=True)
    genuine = []
    for s, c in zip(starts, counts, strict=True):
        if c > 1:
            i, j = np.triu_indices(int(c), k=1)
            members = np.sort(order[s:s + c])
            genuine.append(np.stack([members[i], members[j]], axis=1))
    gen = np.concatenate(genuine) if genuine else np.zeros((0, 2), np.int64)
    n_imp = n * (n - 1) // 2 - len(gen)
    if n_imp <= max_impostor_pairs:
        i, j = np.triu_indices(n, k=1)
        keep = lab[i] != lab[j]
        imp = np.stack([i[keep], j[keep]], axis=1)
    else:
        rng = np.random.default_rng(seed)
        codes = np.zeros(0, np.int64)
        while len(codes) < max_impostor_pairs:
            m = 2 * (max_impostor_pairs - len(codes)) + 64
            a, b = rng.integers(0, n, m), rng.integers(0, n, m)
            ok = lab[a] != lab[b]
            lo, hi = np.minimum(a, b)[ok], np.maximum(a, b)[ok]
            codes = np.concatenate([codes, lo.astype(np.int64) * n + hi])
            _, first = np.unique(codes, return_index=True)
            codes = codes[np.sort(first)]  # first draws kept, in draw order
        codes = np.sort(codes[:max_impostor_pairs])
        imp = np.stack([codes // n, codes % n], axis=1)
    pairs = np.concatenate([gen.astype(np.int64), imp.astype(np.int64)])
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return pairs, lab[pairs[:, 0]] == lab[pairs[:, 1]]


def validation_report(emb: np.ndarray, labels: np.ndarray, *,
                      fars: Sequence[float] = VALIDATION_FARS,
                      max_impostor_pairs: int = MAX_IMPOSTOR_PAIRS, seed: int = 0) -> dict:
    """Verification and rank-1 metrics of (N, D) embeddings of a validation set.

    1:1 on :func:`validation_pairs`; rank-1 with the first image (in file order) of every
    identity as its gallery image and every other image as a probe (closed set).

    Returns:
        ``{"num_images", "num_identities", "num_genuine", "num_impostor", "tar_at_far"
        {"1e-02": float | None (None: too few impostor pairs for that FAR)}, "eer", "auc",
        "rank1", "threshold_at_far" {"1e-02": float | None}}``; the thresholds are
        :func:`far_thresholds` of the impostor pairs.
    """
    from fedfr.metrics import cosine_similarity_matrix, rank1_accuracy

    lab = np.asarray(labels)
    pairs, issame = validation_pairs(lab, max_impostor_pairs=max_impostor_pairs, seed=seed)
    scores = pair_scores(emb, pairs)
    ver = pairs_report(scores, issame, fars)
    _, first = np.unique(lab, return_index=True)
    probe = np.ones(len(lab), bool)
    probe[first] = False
    rank1 = rank1_accuracy(cosine_similarity_matrix(emb[probe], emb[first]), lab[first],
                           lab[probe])
    return {"num_images": len(lab), "num_identities": len(first),
            "num_genuine": ver["num_genuine"], "num_impostor": ver["num_impostor"],
            "tar_at_far": ver["tar_at_far"], "eer": ver["eer"], "auc": ver["auc"],
            "rank1": rank1, "threshold_at_far": far_thresholds(scores[~issame], fars)}


#: Where a model keeps the thresholds calibrated on the data it was trained or validated on:
#: a key of its checkpoint metadata, and of its ONNX ``metadata_props`` (as JSON).
THRESHOLDS_KEY = "fedfr.thresholds"


def far_thresholds(impostor_scores: np.ndarray,
                   fars: Sequence[float] = VALIDATION_FARS) -> dict[str, float | None]:
    """``{"1e-03": t}``: the smallest threshold accepting at most that fraction of the
    impostor scores (:func:`fedfr.metrics.impostor_threshold`); ``None`` where the pairs are
    too few to resolve the FAR (``far * pairs < 1``)."""
    from fedfr.metrics import impostor_threshold

    s = np.asarray(impostor_scores, np.float64)
    return {_rate_key(f): (float(impostor_threshold(s, f)) if s.size and f * s.size >= 1
                           else None) for f in fars}


def model_thresholds(report: dict, source: str) -> dict:
    """A model's :data:`THRESHOLDS_KEY` metadata from a :func:`validation_report`:
    ``{"far": {"1e-01": t, "1e-02": t, "1e-03": t}, "source", "pairs", "genuine_pairs",
    "tar_at_far"}`` (``pairs``: the impostor pairs the thresholds come from)."""
    return {"far": dict(report["threshold_at_far"]), "source": source,
            "pairs": int(report["num_impostor"]), "genuine_pairs": int(report["num_genuine"]),
            "tar_at_far": dict(report["tar_at_far"])}


def calibrate_model_thresholds(embed: EmbedFn, images: np.ndarray, labels: np.ndarray,
                               source: str, *, batch_size: int = 256) -> dict:
    """:func:`model_thresholds` of ``embed`` on (images, labels) (every identity's pairs, as
    :func:`validation_pairs`)."""
    emb = np.concatenate([embed(images[i:i + batch_size])
                          for i in range(0, len(images), batch_size)])
    return model_thresholds(validation_report(emb, labels), source)


def evaluate_model_on_validation(model, images: np.ndarray, labels: np.ndarray, *,
                                 device: str = "cpu", batch_size: int = 128,
                                 progress: Callable[[], None] | None = None,
                                 max_impostor_pairs: int = MAX_IMPOSTOR_PAIRS,
                                 seed: int = 0) -> dict:
    """:func:`validation_report` of a :class:`~fedfr.fl.GlobalModel`'s generic backbone
    (:func:`fedfr.train.recognizer.generic_embedder`; torch is imported here, not before).

    ``progress`` is called after every batch (the aggregator renews its lease there).

    Raises:
        ValueError: the model produces unusable embeddings (non-finite, zero), or the images
            do not fit it.
    """
    import time

    from fedfr.train.recognizer import generic_embedder

    t0 = time.perf_counter()
    embed = generic_embedder(model, device=device, batch_size=batch_size)
    parts = []
    for start in range(0, len(images), batch_size):
        parts.append(embed(images[start:start + batch_size]))
        if progress is not None:
            progress()
    report = validation_report(np.concatenate(parts), labels, max_impostor_pairs=
                               max_impostor_pairs, seed=seed)
    report["seconds"] = time.perf_counter() - t0
    return report
