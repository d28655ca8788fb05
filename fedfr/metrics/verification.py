"""1:1 verification metrics: ROC, TAR@FAR, EER, AUC and the LFW k-fold accuracy (numpy only).

Conventions shared by every function here:

* ``scores``: finite float array ``(N,)``, one similarity per pair; larger means more alike.
* ``labels``: bool array ``(N,)`` (or 0/1 integers), ``True`` for a genuine (same identity)
  pair, ``False`` for an impostor pair.
* A pair is *accepted* at threshold ``t`` when ``score >= t``.
* Metrics are threshold-free: the operating points are the ones the data can realize, one per
  distinct score (ties form a single point) plus the reject-everything point ``t = +inf``.
* Bad arguments (shape mismatch, NaN/inf scores, a missing class, a rate outside [0, 1]) raise
  ``ValueError`` with a message naming the offending shape or value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)

Rates = float | Sequence[float] | np.ndarray


def _check_scores_labels(scores, labels, *, need_both: bool = True):
    """Validate and convert to ``(float64 (N,), bool (N,))``."""
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1 or s.shape != y.shape:
        raise ValueError(
            f"scores and labels must be 1-D of equal length, got {s.shape} and {y.shape}"
        )
    if s.size == 0:
        raise ValueError("scores is empty")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.all(np.isfinite(s)):
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"scores must be finite, got {s[bad]} at index {bad}")
    if y.dtype != np.bool_:
        if not np.issubdtype(y.dtype, np.number) or not np.all((y == 0) | (y == 1)):
            raise ValueError(f"labels must be bool or 0/1, got dtype {y.dtype} with other values")
        y = y.astype(bool)
    if need_both:
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == y.size:
            raise ValueError(
                f"need both genuine and impostor pairs, got {n_pos} genuine and "
                f"{y.size - n_pos} impostor"
            )
    return s, y


def _check_rates(rates, name: str = "far") -> tuple[np.ndarray, bool]:
    """Return ``(float64 (K,) rates, is_scalar)``; each rate must lie in [0, 1]."""
    arr = np.asarray(rates, dtype=np.float64)
    scalar = arr.ndim == 0
    arr = arr.reshape(-1)
    if arr.size == 0 or np.any(~((arr >= 0) & (arr <= 1))):
        raise ValueError(
            f"{name} must be in [0, 1] (a float or a non-empty sequence), got {rates!r}"
        )
    return arr, scalar


def _package(values: np.ndarray, rates: np.ndarray, scalar: bool):
    if scalar:
        return float(values[0])
    return {float(r): float(v) for r, v in zip(rates, values, strict=True)}


def _resolvable(rate: float, n: int) -> bool:
    """A rate is resolvable when it allows at least one false accept among ``n`` trials."""
    return rate * n >= 1.0 - 1e-9


def _roc_counts(s: np.ndarray, y: np.ndarray):
    """Cumulative ``(fps, tps, thresholds)``, each ``(M + 1,)``, starting at ``(0, 0, +inf)``."""
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted = s[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y[order], dtype=np.int64)[last]
    fps = last + 1 - tps
    zero = np.zeros(1, dtype=np.int64)
    return np.r_[zero, fps], np.r_[zero, tps], np.r_[np.inf, s_sorted[last]]


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Threshold-free ROC curve, like ``sklearn.metrics.roc_curve(drop_intermediate=False)``.

    Args:
        scores: float ``(N,)``, finite. labels: bool ``(N,)``, True = genuine.

    Returns:
        ``(fpr, tpr, thresholds)``, float64 arrays ``(M + 1,)`` where ``M`` is the number of
        distinct scores: point 0 is ``(0, 0)`` at ``+inf``; point ``i`` accepts ``score >=
        thresholds[i]`` (thresholds strictly decreasing, fpr and tpr non-decreasing, ending at 1).

    Raises:
        ValueError: mismatched shapes, non-finite scores, no genuine or no impostor pair.
    """
    s, y = _check_scores_labels(scores, labels)
    fps, tps, thr = _roc_counts(s, y)
    return fps / fps[-1], tps / tps[-1], thr


def _last_within(fps: np.ndarray, n_neg: int, rates: np.ndarray) -> np.ndarray:
    """Index of the last ROC point whose FPR ``fps / n_neg`` is ``<= rate``, for each rate."""
    return np.searchsorted(fps / n_neg, rates, side="right") - 1


def tar_at_far(scores, labels, far: Rates):
    """True accept rate at the best operating point whose false accept rate is ``<= far``.

    Exactly ``max(tpr[i] for i if fpr[i] <= far)`` over the :func:`roc_curve` points.

    Args:
        scores, labels: as in :func:`roc_curve`. far: a float in [0, 1] or a sequence of them.

    Returns:
        A float for a float ``far``; a ``dict[float, float]`` ``{far: tar}`` for a sequence.

    Raises:
        ValueError: as :func:`roc_curve`, or a ``far`` outside [0, 1].
    """
    s, y = _check_scores_labels(scores, labels)
    rates, scalar = _check_rates(far)
    fps, tps, _ = _roc_counts(s, y)
    idx = _last_within(fps, int(fps[-1]), rates)
    return _package(tps[idx] / tps[-1], rates, scalar)


def threshold_at_far(scores, labels, far: Rates):
    """Decision threshold of the :func:`tar_at_far` operating point (accept ``score >= t``).

    Among the points reaching that TAR, the highest threshold (fewest false accepts) is
    returned; it is one of the observed scores, or ``+inf`` when the TAR is 0.

    Returns:
        A float for a float ``far``; a ``dict[float, float]`` for a sequence.

    Raises:
        ValueError: as :func:`tar_at_far`.
    """
    s, y = _check_scores_labels(scores, labels)
    rates, scalar = _check_rates(far)
    fps, tps, thr = _roc_counts(s, y)
    idx = _last_within(fps, int(fps[-1]), rates)
    first = np.searchsorted(tps, tps[idx], side="left")
    return _package(thr[first], rates, scalar)


def impostor_threshold(impostor_scores, far: Rates):
    """Smallest threshold ``t`` with ``mean(impostor_scores >= t) <= far``, from impostors only.

    With ``k = floor(far * N)`` false accepts allowed, ``t`` is the smallest float (in the
    scores' dtype: float32 stays float32, others use float64) strictly above the ``(k+1)``-th
    largest impostor score; ``-inf`` when ``k >= N`` (every threshold qualifies).

    Args:
        impostor_scores: float ``(N,)``, finite, ``N >= 1``. far: float or sequence in [0, 1].

    Returns:
        A float for a float ``far``; a ``dict[float, float]`` for a sequence.

    Raises:
        ValueError: empty, non-1-D or non-finite scores; a ``far`` outside [0, 1].
    """
    raw = np.asarray(impostor_scores)
    s, _ = _check_scores_labels(raw, np.zeros(raw.shape, dtype=bool), need_both=False)
    dtype = raw.dtype if raw.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    rates, scalar = _check_rates(far)
    desc = np.sort(s.astype(dtype))[::-1]
    n = desc.size
    # k = number of false accepts allowed: largest k with k / n <= far (same test as the ROC).
    k = np.searchsorted(np.arange(n + 1) / n, rates, side="right") - 1
    out = np.full(rates.shape, -np.inf)
    inside = k < n
    out[inside] = np.nextafter(desc[k[inside]], dtype.type(np.inf))
    return _package(out, rates, scalar)


def tar_far_table(
    scores, labels, fars: Sequence[float] = DEFAULT_FARS
) -> dict[float, float | None]:
    """TAR at each FAR in ``fars`` that the impostor count can resolve.

    Rule: ``far`` is resolvable when ``far * num_impostors >= 1`` (at least one false accept is
    allowed); unresolvable entries map to ``None`` rather than a misleading 0.

    Returns:
        ``dict[float, float | None]`` in the order of ``fars``.

    Raises:
        ValueError: as :func:`tar_at_far`.
    """
    s, y = _check_scores_labels(scores, labels)
    rates, _ = _check_rates(list(fars))
    n_neg = int((~y).sum())
    tars = tar_at_far(s, y, rates)
    return {float(f): (tars[float(f)] if _resolvable(f, n_neg) else None) for f in rates}


def eer(scores, labels) -> float:
    """Equal error rate: where the ROC's FPR meets the false reject rate ``1 - TPR``.

    The ROC points are joined by straight lines; on the first segment where ``FRR - FPR``
    changes sign (from > 0 to <= 0) both rates are linearly interpolated to their crossing, and
    the common value is returned (exact when a point has ``FPR == FRR``).

    Raises:
        ValueError: as :func:`roc_curve`.
    """
    fpr, tpr, _ = roc_curve(scores, labels)
    d = (1.0 - tpr) - fpr  # +1 at the origin, -1 at the last point
    i = int(np.argmax(d <= 0))
    a, b = d[i - 1], d[i]
    w = a / (a - b)
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve by the trapezoid rule (a tie counts half, like sklearn).

    Raises:
        ValueError: as :func:`roc_curve`.
    """
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def best_accuracy_threshold(scores, labels) -> tuple[float, float]:
    """Threshold maximizing accuracy ``mean((score >= t) == label)`` on the given pairs.

    All operating points are tried (every distinct score, plus reject-all and accept-all); on a
    tie the highest threshold wins. The threshold returned lies halfway between the lowest
    accepted and the highest rejected score (``+inf`` for reject-all, ``-inf`` for accept-all).
    One class only is allowed here.

    Returns:
        ``(threshold, accuracy)`` as floats.

    Raises:
        ValueError: mismatched shapes, empty or non-finite scores.
    """
    s, y = _check_scores_labels(scores, labels, need_both=False)
    fps, tps, thr = _roc_counts(s, y)
    n_neg = int(fps[-1])
    acc = (tps + (n_neg - fps)) / s.size
    j = int(np.argmax(acc))
    if j == 0:
        return float(np.inf), float(acc[j])
    if j == thr.size - 1:
        return float(-np.inf), float(acc[j])
    hi, lo = thr[j], thr[j + 1]
    mid = hi / 2.0 + lo / 2.0
    if not lo < mid <= hi:  # adjacent floats: the midpoint rounded onto the rejected one
        mid = hi
    return float(mid), float(acc[j])


def kfold_best_accuracy(scores, labels, n_folds: int = 10) -> tuple[float, float]:
    """LFW-protocol accuracy: ``n_folds`` contiguous folds, threshold picked on the others.

    Folds are ``np.array_split`` of the pairs in the given order (as LFW / insightface with an
    unshuffled KFold: the first ``N % n_folds`` folds are one pair longer). For each fold the
    threshold comes from :func:`best_accuracy_threshold` on the remaining folds (candidates =
    every distinct training score, boundary placed halfway between training scores), and the
    accuracy is measured on the held-out fold.

    Returns:
        ``(mean, std)`` over folds (population std, ``ddof=0``), floats in [0, 1].

    Raises:
        ValueError: mismatched shapes, non-finite scores, ``n_folds`` not in ``[2, N]``.
    """
    s, y = _check_scores_labels(scores, labels, need_both=False)
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer):
        raise ValueError(f"n_folds must be an int, got {n_folds!r}")
    if not 2 <= n_folds <= s.size:
        raise ValueError(f"n_folds must be in [2, {s.size}] for {s.size} pairs, got {n_folds}")
    accs = []
    for fold in np.array_split(np.arange(s.size), n_folds):
        train = np.ones(s.size, dtype=bool)
        train[fold] = False
        t, _ = best_accuracy_threshold(s[train], y[train])
        accs.append(np.mean((s[fold] >= t) == y[fold]))
    return float(np.mean(accs)), float(np.std(accs))


def verification_report(
    scores, labels, fars: Sequence[float] = DEFAULT_FARS, n_folds: int = 10
) -> dict:
    """All verification metrics at once.

    Returns:
        ``{"num_genuine": int, "num_impostor": int, "tar_at_far": dict[float, float | None]``
        (see :func:`tar_far_table`), ``"threshold_at_far": dict[float, float | None]`` (same
        keys and rule), ``"eer": float, "auc": float, "accuracy_mean": float | None,
        "accuracy_std": float | None, "n_folds": int}``; the accuracies are ``None`` when
        there are fewer pairs than ``n_folds``.

    Raises:
        ValueError: as :func:`roc_curve`, or a FAR outside [0, 1].
    """
    s, y = _check_scores_labels(scores, labels)
    n_neg = int((~y).sum())
    table = tar_far_table(s, y, fars)
    thr = threshold_at_far(s, y, list(table))
    if s.size >= n_folds:
        acc_mean, acc_std = kfold_best_accuracy(s, y, n_folds)
    else:
        acc_mean = acc_std = None
    return {
        "num_genuine": int(y.sum()),
        "num_impostor": n_neg,
        "tar_at_far": table,
        "threshold_at_far": {f: (thr[f] if _resolvable(f, n_neg) else None) for f in table},
        "eer": eer(s, y),
        "auc": roc_auc(s, y),
        "accuracy_mean": acc_mean,
        "accuracy_std": acc_std,
        "n_folds": int(n_folds),
    }


def _unit_rows(x, name: str = "embeddings") -> np.ndarray:
    """Rows of a float ``(N, D)`` array scaled to unit L2 norm, as float64.

    Raises:
        ValueError: not 2-D, non-finite values, or a row of (near) zero norm (``<= 1e-12``).
    """
    a = np.asarray(x)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be a numeric (N, D) array, got shape {a.shape}, {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if np.any(norms <= 1e-12):
        raise ValueError(f"{name} row {int(np.argmax(norms[:, 0] <= 1e-12))} has zero norm")
    return a / norms


def pair_scores(embeddings, pairs) -> np.ndarray:
    """Cosine similarity of ``embeddings[pairs[:, 0]]`` and ``embeddings[pairs[:, 1]]``.

    Args:
        embeddings: float ``(M, D)``; L2-normalized inside. pairs: int ``(P, 2)`` row indices.

    Returns:
        float64 ``(P,)`` in [-1, 1].

    Raises:
        ValueError: bad shapes, non-integer or out-of-range indices, non-finite values, or a
            zero-norm row that a pair uses.
    """
    e = np.asarray(embeddings)
    p = np.asarray(pairs)
    if e.ndim != 2 or not np.issubdtype(e.dtype, np.number):
        raise ValueError(f"embeddings must be a numeric (M, D) array, got {e.shape}, {e.dtype}")
    if p.ndim != 2 or p.shape[1] != 2 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"pairs must be an integer (P, 2) array, got shape {p.shape}, {p.dtype}")
    if p.size and (p.min() < 0 or p.max() >= e.shape[0]):
        raise ValueError(f"pair indices must be in [0, {e.shape[0]}), got [{p.min()}, {p.max()}]")
    used, inv = np.unique(p, return_inverse=True)
    sub = e[used]
    if sub.size and np.all(np.isfinite(sub)):
        zero = np.linalg.norm(sub.astype(np.float64), axis=1) <= 1e-12
        if zero.any():
            raise ValueError(f"embeddings row {int(used[np.argmax(zero)])} has zero norm")
    u = _unit_rows(sub) if used.size else np.zeros((0, e.shape[1]))
    inv = inv.reshape(p.shape)
    return np.clip(np.einsum("ij,ij->i", u[inv[:, 0]], u[inv[:, 1]]), -1.0, 1.0)
