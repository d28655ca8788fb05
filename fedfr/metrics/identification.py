"""1:N identification metrics: templates, closed-set rank-k / CMC, open-set DIR@FPIR (numpy only).

Conventions:

* ``scores``: finite float ``(P, G)`` similarities of ``P`` probes against ``G`` gallery entries
  (larger = more alike), e.g. :func:`cosine_similarity_matrix`.
* ``gallery_labels`` ``(G,)`` and ``probe_labels`` ``(P,)``: identity labels (ints or strings).
  A gallery may hold several entries per identity; an identity's score for a probe is the
  maximum over its entries.
* Ties are broken against the probe: the true identity is at rank ``r`` when ``r - 1`` other
  identities score ``>=`` it, so a tie for first place is not a rank-1 hit. The results are
  therefore independent of the order of gallery entries.
* Bad arguments raise ``ValueError`` naming the offending shape or value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedfr.metrics.verification import (
    Rates,
    _check_rates,
    _package,
    _resolvable,
    _roc_counts,
    _unit_rows,
)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """``x / max(||x||_2, eps)`` along ``axis`` (a zero vector stays zero, like torch's).

    Args:
        x: numeric array of any shape. axis: the vector axis. eps: lower bound of the norm.

    Returns:
        Floating array of ``x``'s shape (float32/float64 kept, other dtypes become float64).

    Raises:
        ValueError: non-numeric input or ``eps <= 0``.
    """
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"x must be numeric, got dtype {a.dtype}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    norm = np.linalg.norm(a, axis=axis, keepdims=True)
    return a / np.maximum(norm, a.dtype.type(eps))


def cosine_similarity_matrix(a, b) -> np.ndarray:
    """Cosine similarities of every row of ``a`` with every row of ``b``.

    Args:
        a: float ``(P, D)``. b: float ``(G, D)``.

    Returns:
        float64 ``(P, G)`` in [-1, 1].

    Raises:
        ValueError: not 2-D, different ``D``, non-finite values, or a zero-norm row.
    """
    ua, ub = _unit_rows(a, "a"), _unit_rows(b, "b")
    if ua.shape[1] != ub.shape[1]:
        raise ValueError(f"a and b must have the same width, got {ua.shape} and {ub.shape}")
    return np.clip(ua @ ub.T, -1.0, 1.0)


def build_templates(embeddings, labels) -> tuple[np.ndarray, np.ndarray]:
    """One template per identity: the mean of its L2-normalized embeddings, re-normalized.

    Args:
        embeddings: float ``(N, D)``. labels: ``(N,)`` identity labels.

    Returns:
        ``(template_labels, templates)``: the sorted unique labels ``(K,)`` and float64
        ``(K, D)`` unit-norm templates, row ``k`` belonging to ``template_labels[k]``.

    Raises:
        ValueError: shape mismatch, zero-norm or non-finite embeddings, or an identity whose
            embeddings cancel out (zero mean).
    """
    e = _unit_rows(embeddings)
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != e.shape[0]:
        raise ValueError(f"labels must be ({e.shape[0]},) to match embeddings, got {lab.shape}")
    order = np.argsort(lab, kind="stable")
    uniq, starts = np.unique(lab[order], return_index=True)
    sums = np.add.reduceat(e[order], starts, axis=0)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    if np.any(norms <= 1e-12):
        bad = uniq[int(np.argmax(norms[:, 0] <= 1e-12))]
        raise ValueError(f"identity {bad!r}: its embeddings average to zero")
    return uniq, sums / norms


def _identity_scores(scores, gallery_labels, probe_labels):
    """Validate; return ``(identities (K,), id_scores (P, K), probe_labels (P,))``."""
    s = np.asarray(scores)
    g = np.asarray(gallery_labels)
    p = np.asarray(probe_labels)
    if s.ndim != 2 or not np.issubdtype(s.dtype, np.number):
        raise ValueError(f"scores must be a numeric (P, G) array, got shape {s.shape}, {s.dtype}")
    if g.shape != (s.shape[1],) or p.shape != (s.shape[0],):
        raise ValueError(
            f"scores {s.shape} need gallery_labels ({s.shape[1]},) and probe_labels "
            f"({s.shape[0]},), got {g.shape} and {p.shape}"
        )
    if s.size == 0:
        raise ValueError(f"scores is empty, shape {s.shape}")
    s = s.astype(np.float64, copy=False)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contains NaN or inf")
    order = np.argsort(g, kind="stable")
    ids, starts = np.unique(g[order], return_index=True)
    return ids, np.maximum.reduceat(s[:, order], starts, axis=1), p


def _ranks(ids, id_scores, p) -> np.ndarray:
    """Pessimistic rank (1-based) of each probe's true identity; probes must be known."""
    col = np.clip(np.searchsorted(ids, p), 0, ids.size - 1)
    known = ids[col] == p
    if not np.all(known):
        raise ValueError(
            f"closed-set metric: {int((~known).sum())} probe(s) have labels absent from the "
            f"gallery, e.g. {p[~known][0]!r}"
        )
    true = id_scores[np.arange(p.size), col]
    return (id_scores >= true[:, None]).sum(axis=1)


def cmc_curve(scores, gallery_labels, probe_labels, max_rank: int | None = None) -> np.ndarray:
    """Closed-set cumulative match characteristic.

    Returns:
        float64 ``(R,)`` with ``cmc[k - 1]`` the fraction of probes whose true identity is within
        rank ``k``; ``R = min(max_rank, K)`` (all ``K`` gallery identities by default).

    Raises:
        ValueError: bad shapes, non-finite scores, ``max_rank < 1``, or a probe label missing
            from the gallery (closed set).
    """
    ids, id_scores, p = _identity_scores(scores, gallery_labels, probe_labels)
    r = ids.size if max_rank is None else int(max_rank)
    if r < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    r = min(r, ids.size)
    ranks = _ranks(ids, id_scores, p)
    return np.cumsum(np.bincount(ranks, minlength=ids.size + 1)[1 : r + 1]) / p.size


def rank_k_accuracy(scores, gallery_labels, probe_labels, k: int = 1) -> float:
    """Fraction of probes whose true identity is among the top ``k`` (closed set).

    Raises:
        ValueError: as :func:`cmc_curve`, or ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float(cmc_curve(scores, gallery_labels, probe_labels, max_rank=k)[-1])


def rank1_accuracy(scores, gallery_labels, probe_labels) -> float:
    """Closed-set rank-1 accuracy; a tie for first place counts as a miss.

    Raises:
        ValueError: as :func:`cmc_curve`.
    """
    return rank_k_accuracy(scores, gallery_labels, probe_labels, k=1)


def dir_fpir_curve(scores, gallery_labels, probe_labels):
    """Open-set DIR/FPIR operating points, one per distinct relevant score.

    Probes whose label is absent from the gallery are unknown. At threshold ``t`` (accept
    ``score >= t``): FPIR = fraction of unknown probes whose best gallery score is ``>= t``;
    DIR = fraction of known probes identified correctly at rank 1 with that score ``>= t``.

    Returns:
        ``(fpir, dir, thresholds)``: float64 arrays ``(M + 1,)``, starting at ``(0, 0, +inf)``,
        thresholds strictly decreasing, fpir and dir non-decreasing.

    Raises:
        ValueError: bad shapes, non-finite scores, no known or no unknown probe.
    """
    ids, id_scores, p = _identity_scores(scores, gallery_labels, probe_labels)
    known = np.isin(p, ids)
    n_known, n_unknown = int(known.sum()), int((~known).sum())
    if n_known == 0 or n_unknown == 0:
        raise ValueError(
            f"open-set metric needs known and unknown probes, got {n_known} known and "
            f"{n_unknown} unknown"
        )
    hit = _ranks(ids, id_scores[known], p[known]) == 1
    top_hit = id_scores[known][hit].max(axis=1)
    top_unknown = id_scores[~known].max(axis=1)
    s = np.r_[top_hit, top_unknown]
    y = np.r_[np.ones(top_hit.size, bool), np.zeros(n_unknown, bool)]
    fps, tps, thr = _roc_counts(s, y)
    return fps / n_unknown, tps / n_known, thr


def dir_at_fpir(scores, gallery_labels, probe_labels, fpir: Rates):
    """Largest DIR over the :func:`dir_fpir_curve` points with FPIR ``<= fpir``.

    Args:
        fpir: a float in [0, 1] or a sequence of them.

    Returns:
        A float for a float ``fpir``; a ``dict[float, float]`` ``{fpir: dir}`` for a sequence.

    Raises:
        ValueError: as :func:`dir_fpir_curve`, or an ``fpir`` outside [0, 1].
    """
    rates, scalar = _check_rates(fpir, "fpir")
    f, d, _ = dir_fpir_curve(scores, gallery_labels, probe_labels)
    return _package(d[np.searchsorted(f, rates, side="right") - 1], rates, scalar)


def identification_report(
    gallery_emb,
    gallery_labels,
    probe_emb,
    probe_labels,
    fpirs: Sequence[float] = (1e-1, 1e-2),
) -> dict:
    """Cosine-similarity identification metrics of probe embeddings against a gallery.

    Pass :func:`build_templates` output as the gallery for one template per identity.
    ``fpir`` is reported when ``fpir * num_unknown_probes >= 1`` (at least one false positive
    allowed), else ``None``; all ``None`` when there is no unknown probe.

    Returns:
        ``{"num_gallery": int, "num_identities": int, "num_probes": int, "num_known_probes":
        int, "num_unknown_probes": int, "rank1": float`` (over known probes),
        ``"dir_at_fpir": dict[float, float | None]}``.

    Raises:
        ValueError: bad shapes or embeddings (see :func:`cosine_similarity_matrix`), no known
            probe, or an ``fpir`` outside [0, 1].
    """
    scores = cosine_similarity_matrix(probe_emb, gallery_emb)
    ids, _, p = _identity_scores(scores, gallery_labels, probe_labels)
    rates, _ = _check_rates(list(fpirs), "fpir")
    known = np.isin(p, ids)
    n_known, n_unknown = int(known.sum()), int((~known).sum())
    if n_known == 0:
        raise ValueError("no probe label occurs in gallery_labels: nothing to identify")
    rank1 = rank1_accuracy(scores[known], gallery_labels, p[known])
    dirs: dict[float, float | None] = {float(f): None for f in rates}
    if n_unknown:
        values = dir_at_fpir(scores, gallery_labels, p, rates)
        dirs = {f: (values[f] if _resolvable(f, n_unknown) else None) for f in dirs}
    return {
        "num_gallery": int(scores.shape[1]),
        "num_identities": int(ids.size),
        "num_probes": int(p.size),
        "num_known_probes": n_known,
        "num_unknown_probes": n_unknown,
        "rank1": rank1,
        "dir_at_fpir": dirs,
    }
