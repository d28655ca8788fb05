"""Tests of fedfr.metrics against sklearn and brute-force reference computations."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from fedfr.metrics import (
    best_accuracy_threshold,
    build_templates,
    cmc_curve,
    cosine_similarity_matrix,
    dir_at_fpir,
    dir_fpir_curve,
    eer,
    identification_report,
    impostor_threshold,
    kfold_best_accuracy,
    l2_normalize,
    pair_scores,
    rank1_accuracy,
    rank_k_accuracy,
    roc_auc,
    roc_curve,
    tar_at_far,
    tar_far_table,
    threshold_at_far,
    verification_report,
)


def tied_data(seed: int, n: int = 300, decimals: int = 1):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    y[:2] = [True, False]
    s = np.round(rng.normal(size=n) + 1.2 * y, decimals)
    return s, y


def brute_tar(s, y, far):
    """O(N^2): every candidate threshold, keep the best TAR whose FAR <= far."""
    best = 0.0
    for t in np.r_[np.inf, np.unique(s)]:
        acc = s >= t
        fa = np.sum(acc & ~y) / np.sum(~y)
        if fa <= far:
            best = max(best, np.sum(acc & y) / np.sum(y))
    return best


# ---------------------------------------------------------------- verification vs references


@pytest.mark.parametrize("seed", range(5))
def test_roc_matches_sklearn_with_ties(seed):
    s, y = tied_data(seed)
    fpr, tpr, thr = roc_curve(s, y)
    sf, st_, sthr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf)
    np.testing.assert_allclose(tpr, st_)
    assert thr[0] == np.inf
    np.testing.assert_allclose(thr[1:], sthr[1:])
    assert len(thr) == len(np.unique(s)) + 1
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_tar_at_far_matches_brute_force(seed):
    s, y = tied_data(seed, n=200, decimals=seed % 3)
    fars = [0.0, 0.005, 0.01, 0.05, 0.1, 0.3, 0.5, 1.0]
    got = tar_at_far(s, y, fars)
    assert list(got) == fars
    for f in fars:
        assert got[f] == pytest.approx(brute_tar(s, y, f), abs=1e-12)
        assert tar_at_far(s, y, f) == got[f]
        t = threshold_at_far(s, y, f)
        acc = s >= t
        assert np.mean(acc[~y]) <= f
        assert np.mean(acc[y]) == pytest.approx(got[f], abs=1e-12)
        # the highest such threshold: any higher observed score gives a lower TAR
        higher = np.unique(s[s > t])
        if higher.size:
            assert np.mean(s[y] >= higher[0]) < got[f]


def test_tiny_hand_example():
    s = np.array([0.9, 0.8, 0.8, 0.7, 0.3, 0.2])
    y = np.array([True, True, False, False, True, False])
    fpr, tpr, thr = roc_curve(s, y)
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.7, 0.3, 0.2])
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert tar_at_far(s, y, 0.0) == pytest.approx(1 / 3)
    assert tar_at_far(s, y, 0.5) == pytest.approx(2 / 3)
    assert threshold_at_far(s, y, 0.5) == 0.8
    assert tar_at_far(s, y, 2 / 3) == pytest.approx(1.0)
    assert threshold_at_far(s, y, 0.7) == 0.3
    # FRR - FPR over the points: 1, 2/3, 0, ... -> exact crossing at FRR = FPR = 1/3
    assert eer(s, y) == pytest.approx(1 / 3)


def test_eer_interpolates():
    s = np.array([3.0, 2.0, 1.0, 0.0])
    y = np.array([True, False, True, False])
    # points (fpr, frr): (0,1) (0,.5) (.5,.5) ... exact at point 2
    assert eer(s, y) == pytest.approx(0.5)
    s2 = np.array([2.0, 1.0, 0.0])
    y2 = np.array([True, False, True])
    # (0,1) (0,.5) (1,.5) -> FRR - FPR goes .5 -> -.5, midpoint FPR = .5
    assert eer(s2, y2) == pytest.approx(0.5)
    perfect = np.array([1.0, 0.9, 0.1, 0.0])
    assert eer(perfect, [1, 1, 0, 0]) == 0.0
    assert eer(-perfect, [1, 1, 0, 0]) == 1.0


def test_impostor_threshold():
    imp = np.array([0.1, 0.5, 0.5, 0.9, 0.3])
    assert impostor_threshold(imp, 0.0) == np.nextafter(0.9, np.inf)
    assert impostor_threshold(imp, 0.2) == np.nextafter(0.5, np.inf)  # 1 allowed, 0.5 twice
    assert impostor_threshold(imp, 0.6) == np.nextafter(0.3, np.inf)
    assert impostor_threshold(imp, 1.0) == -np.inf
    got = impostor_threshold(imp, [0.0, 0.2])
    assert got == {0.0: np.nextafter(0.9, np.inf), 0.2: np.nextafter(0.5, np.inf)}
    f32 = impostor_threshold(imp.astype(np.float32), 0.0)
    assert f32 == float(np.nextafter(np.float32(0.9), np.float32(np.inf)))
    rng = np.random.default_rng(3)
    many = np.round(rng.normal(size=1000), 2)
    for f in (1e-3, 1e-2, 0.1, 0.37):
        t = impostor_threshold(many, f)
        assert np.mean(many >= t) <= f
        assert np.mean(many >= np.nextafter(t, -np.inf)) > f  # smallest such threshold


def test_tar_far_table_resolution_rule():
    s, y = tied_data(0, n=300)
    n_imp = int((~y).sum())
    assert 100 < n_imp < 1000
    table = tar_far_table(s, y)
    assert table[1e-1] == tar_at_far(s, y, 1e-1)
    assert table[1e-2] == tar_at_far(s, y, 1e-2)
    assert table[1e-3] is None and table[1e-6] is None


def test_kfold_and_best_accuracy():
    s = np.r_[np.linspace(0.6, 1.0, 50), np.linspace(-0.5, 0.4, 50)]
    y = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    rng = np.random.default_rng(0)
    perm = rng.permutation(100)
    assert kfold_best_accuracy(s[perm], y[perm]) == (1.0, 0.0)
    t, acc = best_accuracy_threshold(s, y)
    assert acc == 1.0 and t == pytest.approx(0.5)
    # hand example: folds [0,1] [2,3]; each fold's threshold comes from the other fold
    s4 = np.array([0.9, 0.1, 0.2, 0.8])
    y4 = np.array([True, False, True, False])
    # fold 1 trains on (0.2 gen, 0.8 imp): best is reject-all (acc .5, highest threshold)
    # -> on fold 0 accuracy .5; fold 2 trains on (0.9 gen, 0.1 imp): t = 0.5 -> fold 1: 0.0
    mean, std = kfold_best_accuracy(s4, y4, n_folds=2)
    assert mean == pytest.approx(0.25) and std == pytest.approx(0.25)
    assert best_accuracy_threshold([0.3, 0.2], [True, True]) == (-np.inf, 1.0)
    assert best_accuracy_threshold([0.3, 0.2], [False, False]) == (np.inf, 1.0)


def test_kfold_matches_grid_search_reference():
    s, y = tied_data(7, n=400, decimals=2)
    folds = np.array_split(np.arange(s.size), 10)
    ref = []
    for f in folds:
        tr = np.setdiff1d(np.arange(s.size), f)
        cands = np.r_[np.inf, np.unique(s[tr])]
        accs = [np.mean((s[tr] >= c) == y[tr]) for c in cands]
        best_train = max(accs)
        t, tacc = best_accuracy_threshold(s[tr], y[tr])
        assert tacc == pytest.approx(best_train)
        ref.append(np.mean((s[f] >= t) == y[f]))
    mean, std = kfold_best_accuracy(s, y)
    assert mean == pytest.approx(np.mean(ref)) and std == pytest.approx(np.std(ref))
    assert 0.6 < mean < 0.95


def test_verification_report():
    s, y = tied_data(1, n=500, decimals=3)
    r = verification_report(s, y, fars=(1e-1, 1e-2, 1e-4))
    assert r["num_genuine"] == int(y.sum()) and r["num_impostor"] == int((~y).sum())
    assert r["tar_at_far"][1e-4] is None and r["threshold_at_far"][1e-4] is None
    assert r["tar_at_far"][1e-1] == tar_at_far(s, y, 1e-1)
    assert r["threshold_at_far"][1e-2] == threshold_at_far(s, y, 1e-2)
    assert r["auc"] == pytest.approx(roc_auc_score(y, s))
    assert r["eer"] == eer(s, y)
    assert (r["accuracy_mean"], r["accuracy_std"]) == kfold_best_accuracy(s, y)


def test_pair_scores():
    e = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, 0.0]])
    pairs = np.array([[0, 1], [0, 2], [1, 3], [2, 2]])
    np.testing.assert_allclose(pair_scores(e, pairs), [0.6, 0.8, -1.0, 1.0])
    assert pair_scores(e, np.zeros((0, 2), int)).shape == (0,)
    with pytest.raises(ValueError, match="row 4 has zero norm"):
        pair_scores(e, [[0, 4]])
    with pytest.raises(ValueError, match="indices"):
        pair_scores(e, [[0, 5]])
    with pytest.raises(ValueError, match=r"\(P, 2\)"):
        pair_scores(e, [[0, 1, 2]])
    with pytest.raises(ValueError, match="integer"):
        pair_scores(e, [[0.0, 1.0]])


# ---------------------------------------------------------------- verification errors


def test_verification_errors():
    s = np.array([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="impostor"):
        roc_curve(s, [True, True, True])
    with pytest.raises(ValueError, match="genuine"):
        tar_at_far(s, [False, False, False], 0.1)
    with pytest.raises(ValueError, match="finite"):
        eer([0.1, np.nan, 0.3], [True, False, True])
    with pytest.raises(ValueError, match=r"\(3,\) and \(2,\)"):
        roc_auc(s, [True, False])
    with pytest.raises(ValueError, match="1-D"):
        roc_curve(s[None], np.array([[True, False, True]]))
    with pytest.raises(ValueError, match="far"):
        tar_at_far(s, [True, False, True], 1.5)
    with pytest.raises(ValueError, match="far"):
        threshold_at_far(s, [True, False, True], [0.1, np.nan])
    with pytest.raises(ValueError, match="labels"):
        roc_curve(s, [0, 1, 2])
    with pytest.raises(ValueError, match="n_folds"):
        kfold_best_accuracy(s, [True, False, True], n_folds=4)
    with pytest.raises(ValueError, match="empty"):
        impostor_threshold([], 0.1)


# ---------------------------------------------------------------- properties

score_lists = st.lists(st.integers(min_value=-20, max_value=20), min_size=2, max_size=60).map(
    lambda v: np.array(v, dtype=np.float64) / 4
)


@st.composite
def scored_pairs(draw):
    s = draw(score_lists)
    y = np.array(draw(st.lists(st.booleans(), min_size=s.size, max_size=s.size)))
    y[0], y[1] = True, False
    return s, y


fars_st = st.floats(min_value=0.0, max_value=1.0)


@settings(max_examples=60, deadline=None)
@given(scored_pairs(), fars_st, fars_st)
def test_prop_monotone_in_far(data, f1, f2):
    s, y = data
    lo, hi = min(f1, f2), max(f1, f2)
    assert tar_at_far(s, y, lo) <= tar_at_far(s, y, hi)
    assert tar_at_far(s, y, 1.0) == 1.0
    assert tar_at_far(s, y, lo) == pytest.approx(brute_tar(s, y, lo), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(scored_pairs(), st.randoms(use_true_random=False))
def test_prop_invariances(data, rnd):
    s, y = data
    fars = [0.0, 0.1, 0.25, 0.5]
    ref = tar_at_far(s, y, fars)
    t = np.exp(s) * 3 - 1  # strictly increasing transform
    assert tar_at_far(t, y, fars) == ref
    assert eer(t, y) == pytest.approx(eer(s, y))
    assert roc_auc(t, y) == pytest.approx(roc_auc(s, y))
    perm = np.array(rnd.sample(range(s.size), s.size))
    assert tar_at_far(s[perm], y[perm], fars) == ref
    assert roc_auc(s[perm], y[perm]) == pytest.approx(roc_auc(s, y))
    assert 0.0 <= eer(s, y) <= 1.0


def test_speed_one_million():
    rng = np.random.default_rng(0)
    y = rng.random(1_000_000) < 0.05
    s = rng.normal(size=y.size) + 2 * y
    t0 = time.perf_counter()
    tar_at_far(s, y, [1e-1, 1e-3, 1e-5])
    assert time.perf_counter() - t0 < 3.0  # ~0.2 s on a laptop core; loose for CI


# ---------------------------------------------------------------- identification


def test_l2_normalize_and_cosine():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(x, axis=0), [[1.0, 1.0], [0.0, 0.0]])
    assert l2_normalize(x.astype(np.float32)).dtype == np.float32
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    ref = (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(cosine_similarity_matrix(a, b), ref)
    with pytest.raises(ValueError, match="zero norm"):
        cosine_similarity_matrix(x, b[:, :2])
    with pytest.raises(ValueError, match="width"):
        cosine_similarity_matrix(a, b[:, :3])


def test_build_templates():
    e = np.array([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0], [0.0, -3.0]])
    labels = np.array(["b", "b", "a", "c"])
    ids, t = build_templates(e, labels)
    assert list(ids) == ["a", "b", "c"]
    h = np.sqrt(0.5)
    np.testing.assert_allclose(t, [[h, h], [h, h], [0.0, -1.0]])
    with pytest.raises(ValueError, match="average to zero"):
        build_templates([[1.0, 0.0], [-1.0, 0.0]], [7, 7])
    with pytest.raises(ValueError, match="labels"):
        build_templates(e, labels[:3])


def test_rank1_and_cmc_hand_example():
    gallery = np.array([10, 20, 30, 20])
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # true 10 -> rank 1
            [0.5, 0.2, 0.1, 0.6],  # true 20 (best entry 0.6) -> rank 1
            [0.8, 0.7, 0.6, 0.1],  # true 30 -> rank 3
            [0.5, 0.5, 0.1, 0.0],  # true 20, tied with 10 -> rank 2 (ties count against)
        ]
    )
    probes = np.array([10, 20, 30, 20])
    assert rank1_accuracy(scores, gallery, probes) == 0.5
    np.testing.assert_allclose(cmc_curve(scores, gallery, probes), [0.5, 0.75, 1.0])
    assert rank_k_accuracy(scores, gallery, probes, k=2) == 0.75
    assert rank_k_accuracy(scores, gallery, probes, k=10) == 1.0
    perm = [3, 0, 2, 1]
    assert rank1_accuracy(scores[:, perm], gallery[perm], probes) == 0.5
    with pytest.raises(ValueError, match="absent from the gallery"):
        rank1_accuracy(scores, gallery, np.array([10, 20, 30, 99]))
    with pytest.raises(ValueError, match="gallery_labels"):
        rank1_accuracy(scores, gallery[:3], probes)
    with pytest.raises(ValueError, match="NaN"):
        rank1_accuracy(np.where(scores > 0.85, np.nan, scores), gallery, probes)


def test_dir_at_fpir_hand_example():
    gallery = np.array([1, 2])
    scores = np.array(
        [
            [0.9, 0.1],  # known 1, correct, top 0.9
            [0.2, 0.7],  # known 2, correct, top 0.7
            [0.6, 0.3],  # known 2, wrong -> never counts
            [0.5, 0.4],  # known 1, correct, top 0.5
            [0.8, 0.0],  # unknown, max 0.8
            [0.1, 0.45],  # unknown, max 0.45
            [0.3, 0.2],  # unknown, max 0.3
            [0.2, 0.1],  # unknown, max 0.2
        ]
    )
    probes = np.array([1, 2, 2, 1, 7, 8, 9, 9])
    # thresholds: >0.8 -> DIR 1/4 at FPIR 0; 0.8 -> FPIR 1/4; 0.7 -> DIR 2/4; 0.5 -> DIR 3/4
    # at FPIR 1/4; 0.45 -> FPIR 2/4
    assert dir_at_fpir(scores, gallery, probes, 0.0) == 0.25
    assert dir_at_fpir(scores, gallery, probes, 0.25) == 0.75
    assert dir_at_fpir(scores, gallery, probes, [0.1, 1.0]) == {0.1: 0.25, 1.0: 0.75}
    f, d, t = dir_fpir_curve(scores, gallery, probes)
    np.testing.assert_allclose(t, [np.inf, 0.9, 0.8, 0.7, 0.5, 0.45, 0.3, 0.2])
    np.testing.assert_allclose(f, [0, 0, 0.25, 0.25, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(d, [0, 0.25, 0.25, 0.5, 0.75, 0.75, 0.75, 0.75])
    with pytest.raises(ValueError, match="0 unknown"):
        dir_at_fpir(scores[:4], gallery, probes[:4], 0.1)
    with pytest.raises(ValueError, match="0 known"):
        dir_at_fpir(scores[4:], gallery, probes[4:], 0.1)
    with pytest.raises(ValueError, match="fpir"):
        dir_at_fpir(scores, gallery, probes, -0.1)


def test_identification_report():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 16))
    gal = centers[:4] + 0.05 * rng.normal(size=(4, 16))
    probe_ids = np.array([0, 1, 2, 3, 0, 1, 4, 5, 4, 5, 4, 5])
    probes = centers[probe_ids] + 0.05 * rng.normal(size=(12, 16))
    ids, templates = build_templates(np.r_[gal, gal], np.r_[np.arange(4), np.arange(4)])
    r = identification_report(templates, ids, probes, probe_ids, fpirs=(0.5, 0.1))
    assert r["num_gallery"] == 4 and r["num_identities"] == 4
    assert (r["num_probes"], r["num_known_probes"], r["num_unknown_probes"]) == (12, 6, 6)
    assert r["rank1"] == 1.0
    assert r["dir_at_fpir"][0.1] is None  # 0.1 * 6 < 1 false positive
    assert r["dir_at_fpir"][0.5] == 1.0  # strangers score far below the known probes
    closed = identification_report(gal, np.arange(4), probes[:6], probe_ids[:6])
    assert closed["rank1"] == 1.0 and closed["dir_at_fpir"] == {0.1: None, 0.01: None}
    with pytest.raises(ValueError, match="nothing to identify"):
        identification_report(gal, np.arange(4), probes[6:], probe_ids[6:])
