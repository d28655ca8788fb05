"""Tests of fedfr.fl: FedAvg, per-row public embedding averaging and the shared/private split.

Aggregation is checked against hand-computed literal arrays, against brute-force references
and with hypothesis properties (permutation invariance, identity, weight scaling, bounds);
validation is checked to reject bad updates without touching the accumulators; the split is
checked never to put a private tensor into what leaves a device.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedfr.fl import (
    BACKBONE_PREFIX,
    PRIVATE_PREFIXES,
    PUBLIC_INDEX_KEY,
    PUBLIC_ROWS_KEY,
    SHARED_PREFIXES,
    RoundAggregate,
    RowAverage,
    SharedUpdate,
    WeightedAverage,
    aggregate_updates,
    backbone_arrays,
    check_shared,
    fedavg,
    is_shared,
    split_state,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
NBT = "backbone.bn.num_batches_tracked"

PROPERTY = settings(max_examples=50, deadline=None)

FLOAT32_ELEMS = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
# no float64 values near underflow: x * w / w loses bits there (float64 itself, not the
# library), which would make the exact identity properties fail for a reason beside the point
FLOAT64_ELEMS = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False).filter(
    lambda x: x == 0 or abs(x) > 1e-100
)
INT_ELEMS = st.integers(0, 10**6)
WEIGHTS = st.integers(1, 1000)


# --------------------------------------------------------------------------- helpers


def assert_same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Same keys, dtypes, shapes and values (exactly)."""
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def assert_close_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Same keys and dtypes; integers exactly equal, floats equal up to summation order."""
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        if np.issubdtype(want[k].dtype, np.integer):
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        elif want[k].dtype == np.float32:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-9, err_msg=k)


def good_update() -> dict[str, np.ndarray]:
    return {
        "backbone.w": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
        "backbone.b": np.array([0.5, -0.5], np.float64),
        NBT: np.array(7, np.int64),
    }


def shared_update(index, rows, num_samples=1, metrics=None, w=None) -> SharedUpdate:
    arrays = {"backbone.w": np.array([0.0, 0.0] if w is None else w, np.float32)}
    if index is not None:
        arrays[PUBLIC_INDEX_KEY] = np.asarray(index, np.int64)
        arrays[PUBLIC_ROWS_KEY] = np.asarray(rows, np.float32)
    return SharedUpdate(arrays, num_samples, dict(metrics or {}))


@st.composite
def update_lists(draw, min_size: int = 1, max_size: int = 4):
    """``(updates, weights)``: 1-4 updates with a float32, a float64 and an int64 entry."""
    n = draw(st.integers(min_size, max_size))
    shape_w = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4))
    shape_b = draw(hnp.array_shapes(min_dims=1, max_dims=1, max_side=4))
    updates = [
        {
            "backbone.w": draw(hnp.arrays(np.float32, shape_w, elements=FLOAT32_ELEMS)),
            "backbone.b": draw(hnp.arrays(np.float64, shape_b, elements=FLOAT64_ELEMS)),
            NBT: draw(hnp.arrays(np.int64, (), elements=INT_ELEMS)),
        }
        for _ in range(n)
    ]
    weights = draw(st.lists(WEIGHTS, min_size=n, max_size=n))
    return updates, weights


@st.composite
def round_updates(draw):
    """``(base (C, D) float64, [SharedUpdate])`` with random public rows per device."""
    c = draw(st.integers(1, 6))
    d = draw(st.integers(1, 3))
    base = draw(hnp.arrays(np.float64, (c, d), elements=FLOAT64_ELEMS))
    n = draw(st.integers(1, 4))
    updates = []
    for _ in range(n):
        index = draw(st.lists(st.integers(0, c - 1), unique=True, max_size=c))
        rows = draw(hnp.arrays(np.float64, (len(index), d), elements=FLOAT64_ELEMS))
        arrays = {
            "backbone.w": draw(hnp.arrays(np.float64, (3,), elements=FLOAT64_ELEMS)),
            NBT: draw(hnp.arrays(np.int64, (), elements=INT_ELEMS)),
            PUBLIC_INDEX_KEY: np.array(index, np.int64),
            PUBLIC_ROWS_KEY: rows,
        }
        metrics = {"loss": draw(st.floats(0, 10, allow_nan=False))}
        updates.append(SharedUpdate(arrays, draw(WEIGHTS), metrics))
    return base, updates


# --------------------------------------------------------------------------- fedavg, by hand


def test_fedavg_two_updates_weights_one_and_three_hand_computed():
    a = {"backbone.w": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)}
    b = {"backbone.w": np.array([[5.0, 6.0], [7.0, 8.0]], np.float32)}
    # (1 * a + 3 * b) / 4
    want = np.array([[4.0, 5.0], [6.0, 7.0]], np.float32)
    out = fedavg([a, b], [1, 3])
    assert out["backbone.w"].dtype == np.float32
    np.testing.assert_array_equal(out["backbone.w"], want)


def test_fedavg_three_updates_hand_computed():
    a = {"backbone.b": np.array([0.0, 10.0, -2.0])}
    b = {"backbone.b": np.array([4.0, 0.0, 2.0])}
    c = {"backbone.b": np.array([8.0, 5.0, 6.0])}
    # weights 2, 1, 1 over 4: (2*a + b + c) / 4
    want = np.array([3.0, 6.25, 1.0])
    out = fedavg([a, b, c], [2, 1, 1])
    assert out["backbone.b"].dtype == np.float64
    np.testing.assert_array_equal(out["backbone.b"], want)


def test_fedavg_equal_weights_is_plain_mean():
    a = {"backbone.w": np.array([1.0, 3.0], np.float32)}
    b = {"backbone.w": np.array([2.0, 5.0], np.float32)}
    np.testing.assert_array_equal(fedavg([a, b], [7, 7])["backbone.w"], [1.5, 4.0])


def test_fedavg_fractional_weights():
    a = {"backbone.w": np.array([0.0, 8.0])}
    b = {"backbone.w": np.array([4.0, 0.0])}
    # weights 0.25 and 0.75 (already normalised): 0.25*a + 0.75*b
    np.testing.assert_array_equal(fedavg([a, b], [0.25, 0.75])["backbone.w"], [3.0, 2.0])


def test_fedavg_preserves_float32_dtype_and_float64_dtype_per_key():
    a = {"backbone.w": np.ones(3, np.float32), "backbone.b": np.ones(2, np.float64)}
    b = {"backbone.w": np.zeros(3, np.float32), "backbone.b": np.zeros(2, np.float64)}
    out = fedavg([a, b], [1, 1])
    assert out["backbone.w"].dtype == np.float32
    assert out["backbone.b"].dtype == np.float64
    np.testing.assert_array_equal(out["backbone.w"], np.full(3, 0.5, np.float32))


def test_fedavg_integer_buffer_is_maximum_not_average():
    updates = [
        {NBT: np.array(5, np.int64), "backbone.w": np.array([1.0], np.float32)},
        {NBT: np.array(9, np.int64), "backbone.w": np.array([2.0], np.float32)},
        {NBT: np.array(3, np.int64), "backbone.w": np.array([3.0], np.float32)},
    ]
    out = fedavg(updates, [100, 1, 100])
    assert out[NBT].dtype == np.int64
    assert out[NBT].shape == ()
    assert int(out[NBT]) == 9  # not the weighted mean (5*100 + 9 + 3*100) / 201 ~ 4.02
    # the float entry is averaged: (100 * 1 + 1 * 2 + 100 * 3) / 201 = 402 / 201 = 2
    np.testing.assert_array_equal(out["backbone.w"], np.array([2.0], np.float32))


def test_fedavg_integer_array_maximum_is_elementwise():
    a = {"backbone.counts": np.array([1, 8, 3], np.int32)}
    b = {"backbone.counts": np.array([4, 2, 3], np.int32)}
    out = fedavg([a, b], [1, 1])
    assert out["backbone.counts"].dtype == np.int32
    np.testing.assert_array_equal(out["backbone.counts"], [4, 8, 3])


def test_fedavg_accumulates_in_float64():
    # 2**24 + 1 == 2**24 in float32, so a float32 running sum would lose every 1.0 below and
    # give 2**24 / 5 = 3355443.25; the float64 sum gives (2**24 + 4) / 5 = 3355444 exactly.
    big = {"backbone.w": np.array([16777216.0], np.float32)}
    one = {"backbone.w": np.array([1.0], np.float32)}
    out = fedavg([big, one, one, one, one], [1, 1, 1, 1, 1])
    assert out["backbone.w"].dtype == np.float32
    np.testing.assert_array_equal(out["backbone.w"], np.array([3355444.0], np.float32))


def test_fedavg_float32_weighted_mean_is_rounded_once_from_float64():
    a = {"backbone.w": np.array([0.1], np.float32)}
    b = {"backbone.w": np.array([0.2], np.float32)}
    want = ((np.float64(np.float32(0.1)) * 1 + np.float64(np.float32(0.2)) * 2) / 3)
    np.testing.assert_array_equal(
        fedavg([a, b], [1, 2])["backbone.w"], np.array([want], np.float32)
    )


def test_fedavg_rejects_length_mismatch_and_empty():
    with pytest.raises(ValueError, match="weights"):
        fedavg([good_update(), good_update()], [1])
    with pytest.raises(ValueError, match="no update"):
        fedavg([], [])


# --------------------------------------------------------------------------- WeightedAverage


def test_weighted_average_docstring_example():
    avg = WeightedAverage()
    avg.add({"w": np.array([1.0, 2.0])}, 1)
    avg.add({"w": np.array([3.0, 6.0])}, 3)
    np.testing.assert_array_equal(avg.result()["w"], [2.5, 5.0])
    assert avg.count == 2
    assert avg.total_weight == 4.0


def test_weighted_average_streaming_equals_batch_hand_computed():
    updates = [
        {"backbone.w": np.array([2.0, 4.0], np.float32), NBT: np.array(1, np.int64)},
        {"backbone.w": np.array([4.0, 0.0], np.float32), NBT: np.array(6, np.int64)},
        {"backbone.w": np.array([8.0, 8.0], np.float32), NBT: np.array(2, np.int64)},
    ]
    weights = [1, 2, 1]
    avg = WeightedAverage()
    for u, w in zip(updates, weights, strict=True):
        avg.add(u, w)
    streamed = avg.result()
    assert_same_arrays(streamed, fedavg(updates, weights))
    np.testing.assert_array_equal(streamed["backbone.w"], np.array([4.5, 3.0], np.float32))
    assert int(streamed[NBT]) == 6


def test_weighted_average_result_without_updates_raises():
    with pytest.raises(ValueError, match="no update"):
        WeightedAverage().result()


def test_weighted_average_does_not_alias_inputs_or_results():
    a = {"backbone.w": np.array([1.0, 1.0]), NBT: np.array([3], np.int64)}
    avg = WeightedAverage()
    avg.add(a, 1)
    a["backbone.w"][:] = 100.0  # mutating the caller's arrays after add
    a[NBT][:] = 100
    first = avg.result()
    np.testing.assert_array_equal(first["backbone.w"], [1.0, 1.0])
    np.testing.assert_array_equal(first[NBT], [3])
    first["backbone.w"][:] = -5.0  # mutating a result
    first[NBT][:] = -5
    second = avg.result()
    np.testing.assert_array_equal(second["backbone.w"], [1.0, 1.0])
    np.testing.assert_array_equal(second[NBT], [3])


def test_weighted_average_can_continue_after_result():
    avg = WeightedAverage()
    avg.add({"w": np.array([0.0])}, 1)
    np.testing.assert_array_equal(avg.result()["w"], [0.0])
    avg.add({"w": np.array([3.0])}, 2)
    np.testing.assert_array_equal(avg.result()["w"], [2.0])


def _bad_updates() -> list[tuple[str, dict[str, np.ndarray]]]:
    def with_(**changes):
        u = good_update()
        for k, v in changes.items():
            key = {"w": "backbone.w", "b": "backbone.b", "nbt": NBT}[k]
            if v is None:
                del u[key]
            else:
                u[key] = v
        return u

    extra = good_update()
    extra["backbone.extra"] = np.zeros(1, np.float32)
    return [
        ("missing key", with_(b=None)),
        ("extra key", extra),
        ("shape mismatch", with_(w=np.zeros((2, 3), np.float32))),
        ("transposed shape", with_(b=np.zeros((2, 1), np.float64))),
        ("float dtype mismatch", with_(w=np.zeros((2, 2), np.float64))),
        ("float16 vs float32", with_(w=np.zeros((2, 2), np.float16))),
        ("integer dtype mismatch", with_(nbt=np.array(7, np.int32))),
        ("float for integer buffer", with_(nbt=np.array(7.0, np.float64))),
        ("nan", with_(b=np.array([0.5, np.nan]))),
        ("inf", with_(b=np.array([np.inf, 0.0]))),
        ("-inf in float32", with_(w=np.array([[1.0, 2.0], [-np.inf, 4.0]], np.float32))),
        ("bool dtype", with_(nbt=np.array(True))),
        ("complex dtype", with_(b=np.array([1 + 1j, 0j]))),
        ("object dtype", with_(b=np.array(["a", "b"], dtype=object))),
    ]


@pytest.mark.parametrize(("why", "bad"), _bad_updates(), ids=[w for w, _ in _bad_updates()])
def test_weighted_average_rejects_bad_update_and_stays_unchanged(why, bad):
    avg = WeightedAverage()
    avg.add(good_update(), 2)
    second = good_update()
    second["backbone.w"] = second["backbone.w"] * 3
    second[NBT] = np.array(11, np.int64)
    avg.add(second, 1)
    before = avg.result()
    count, total = avg.count, avg.total_weight
    with pytest.raises(ValueError):
        avg.add(bad, 1)
    assert avg.count == count
    assert avg.total_weight == total
    assert_same_arrays(avg.result(), before)


@pytest.mark.parametrize("weight", [0, -1, -0.5, float("nan"), float("inf"), -float("inf")])
def test_weighted_average_rejects_non_positive_or_non_finite_weight(weight):
    avg = WeightedAverage()
    avg.add(good_update(), 1)
    before = avg.result()
    with pytest.raises(ValueError, match="weight"):
        avg.add(good_update(), weight)
    assert avg.count == 1
    assert avg.total_weight == 1.0
    assert_same_arrays(avg.result(), before)


def test_weighted_average_rejected_first_update_leaves_it_empty():
    avg = WeightedAverage()
    with pytest.raises(ValueError, match="non-finite"):
        avg.add({"backbone.a": np.ones(2), "backbone.z": np.array([np.nan])}, 1)
    assert avg.count == 0
    with pytest.raises(ValueError, match="no update"):
        avg.result()
    # the keys of the rejected update did not stick: a different key set is accepted
    avg.add({"backbone.other": np.array([2.0])}, 1)
    assert set(avg.result()) == {"backbone.other"}


def test_weighted_average_rejection_late_in_dict_does_not_fold_earlier_keys():
    avg = WeightedAverage()
    avg.add({"backbone.a": np.array([1.0]), "backbone.z": np.array([1.0])}, 1)
    with pytest.raises(ValueError):
        avg.add({"backbone.a": np.array([100.0]), "backbone.z": np.array([np.inf])}, 1)
    np.testing.assert_array_equal(avg.result()["backbone.a"], [1.0])


# --------------------------------------------------------------------------- fedavg properties


@PROPERTY
@given(update_lists(min_size=2), st.data())
def test_fedavg_is_permutation_invariant(case, data):
    updates, weights = case
    perm = data.draw(st.permutations(range(len(updates))))
    got = fedavg([updates[i] for i in perm], [weights[i] for i in perm])
    assert_close_arrays(got, fedavg(updates, weights))


@PROPERTY
@given(update_lists(min_size=1, max_size=1), st.integers(1, 1000))
def test_fedavg_single_update_float32_and_int_is_identity_for_any_weight(case, weight):
    (update,), _ = case
    out = fedavg([update], [weight])
    for k in ("backbone.w", NBT):
        assert out[k].dtype == update[k].dtype
        np.testing.assert_array_equal(out[k], update[k])


@PROPERTY
@given(update_lists(min_size=1, max_size=1), st.integers(-10, 10))
def test_fedavg_single_update_is_exact_identity_for_power_of_two_weight(case, exponent):
    (update,), _ = case
    assert_same_arrays(fedavg([update], [2.0**exponent]), update)


@PROPERTY
@given(update_lists(min_size=1, max_size=1))
def test_fedavg_single_update_float64_is_identity_up_to_rounding(case):
    (update,), (weight,) = case
    out = fedavg([update], [weight])
    np.testing.assert_allclose(out["backbone.b"], update["backbone.b"], rtol=1e-15, atol=0)


def test_fedavg_single_float64_update_with_weight_three_is_exact_identity():
    update = {"backbone.b": np.array([0.1, 0.7, 1 / 3])}
    np.testing.assert_array_equal(fedavg([update], [3])["backbone.b"], update["backbone.b"])


@PROPERTY
@given(update_lists(), st.sampled_from([0.001, 0.5, 3.0, 7.0, 1000.0]))
def test_fedavg_is_invariant_to_scaling_all_weights(case, scale):
    updates, weights = case
    got = fedavg(updates, [w * scale for w in weights])
    assert_close_arrays(got, fedavg(updates, weights))


@PROPERTY
@given(update_lists())
def test_fedavg_lies_within_elementwise_min_and_max(case):
    updates, weights = case
    out = fedavg(updates, weights)
    for k, slack in (("backbone.w", 0.0), ("backbone.b", 1e-9)):
        stack = np.stack([u[k] for u in updates])
        assert np.all(out[k] >= stack.min(axis=0) - slack), k
        assert np.all(out[k] <= stack.max(axis=0) + slack), k
    assert int(out[NBT]) == max(int(u[NBT]) for u in updates)


@PROPERTY
@given(update_lists())
def test_fedavg_matches_float64_reference(case):
    updates, weights = case
    out = fedavg(updates, weights)
    w = np.array(weights, np.float64)
    for k in ("backbone.w", "backbone.b"):
        stack = np.stack([u[k].astype(np.float64) for u in updates])
        ref = np.tensordot(w, stack, axes=1) / w.sum()
        np.testing.assert_allclose(out[k], ref.astype(updates[0][k].dtype), rtol=1e-6, atol=1e-6)


@PROPERTY
@given(update_lists())
def test_streaming_weighted_average_equals_batch_fedavg(case):
    updates, weights = case
    avg = WeightedAverage()
    for u, w in zip(updates, weights, strict=True):
        avg.add(u, w)
    assert avg.count == len(updates)
    assert avg.total_weight == float(sum(weights))
    assert_same_arrays(avg.result(), fedavg(updates, weights))


# --------------------------------------------------------------------------- RowAverage


BASE = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]], np.float32)
ROWS_A = np.array([[10.0, 20.0], [30.0, 40.0]], np.float32)  # device A: rows 0 and 2
ROWS_B = np.array([[50.0, 60.0], [70.0, 80.0]], np.float32)  # device B: rows 2 and 3


def test_row_average_uniform_hand_computed():
    ra = RowAverage(4, 2)
    ra.add(np.array([0, 2]), ROWS_A)
    ra.add(np.array([2, 3]), ROWS_B)
    want = np.array([[10.0, 20.0], [2.0, 3.0], [40.0, 50.0], [70.0, 80.0]], np.float32)
    out = ra.apply(BASE)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(ra.rows_trained, [0, 2, 3])


def test_row_average_weighted_hand_computed():
    ra = RowAverage(4, 2)
    ra.add(np.array([0, 2]), ROWS_A, weight=1)
    ra.add(np.array([2, 3]), ROWS_B, weight=3)
    # row 2: (1 * [30, 40] + 3 * [50, 60]) / 4 = [45, 55]
    want = np.array([[10.0, 20.0], [2.0, 3.0], [45.0, 55.0], [70.0, 80.0]], np.float32)
    np.testing.assert_array_equal(ra.apply(BASE), want)


def test_row_average_index_order_within_an_update_is_respected():
    ra = RowAverage(4, 2)
    ra.add(np.array([3, 0]), np.array([[1.0, 1.0], [9.0, 9.0]]))
    out = ra.apply(BASE)
    np.testing.assert_array_equal(out[3], [1.0, 1.0])
    np.testing.assert_array_equal(out[0], [9.0, 9.0])


def test_row_average_apply_returns_new_array_and_keeps_base():
    base = BASE.copy()
    ra = RowAverage(4, 2)
    ra.add(np.array([1]), np.array([[-1.0, -1.0]]))
    out = ra.apply(base)
    np.testing.assert_array_equal(base, BASE)
    assert out is not base
    np.testing.assert_array_equal(out[1], [-1.0, -1.0])


def test_row_average_with_no_updates_returns_base_copy():
    ra = RowAverage(4, 2)
    out = ra.apply(BASE)
    np.testing.assert_array_equal(out, BASE)
    assert out is not BASE
    assert ra.rows_trained.size == 0
    assert ra.shape == (4, 2)


def test_row_average_accepts_empty_integer_index():
    ra = RowAverage(4, 2)
    ra.add(np.zeros(0, np.int64), np.zeros((0, 2)))
    np.testing.assert_array_equal(ra.apply(BASE), BASE)


@pytest.mark.parametrize(("num_rows", "dim"), [(-1, 2), (4, 0), (4, -3)])
def test_row_average_rejects_bad_construction(num_rows, dim):
    with pytest.raises(ValueError):
        RowAverage(num_rows, dim)


def test_row_average_apply_rejects_wrong_base_shape():
    ra = RowAverage(4, 2)
    with pytest.raises(ValueError, match="base matrix"):
        ra.apply(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="base matrix"):
        ra.apply(np.zeros((5, 2)))


@pytest.mark.parametrize(
    ("index", "rows", "weight"),
    [
        pytest.param([4], [[1.0, 1.0]], 1.0, id="index == num_rows"),
        pytest.param([-1], [[1.0, 1.0]], 1.0, id="negative index"),
        pytest.param([0, 99], [[1.0, 1.0], [1.0, 1.0]], 1.0, id="far out of range"),
        pytest.param([1, 1], [[1.0, 1.0], [2.0, 2.0]], 1.0, id="repeated row"),
        pytest.param(np.array([0.0, 1.0]), [[1.0, 1.0], [2.0, 2.0]], 1.0, id="float index"),
        pytest.param(np.array([True, False]), [[1.0, 1.0], [2.0, 2.0]], 1.0, id="bool index"),
        pytest.param([0], [[1.0, 1.0, 1.0]], 1.0, id="rows too wide"),
        pytest.param([0], [[1.0]], 1.0, id="rows too narrow"),
        pytest.param([0], [1.0, 1.0], 1.0, id="rows 1-d"),
        pytest.param([0, 1], [[1.0, 1.0]], 1.0, id="fewer rows than index"),
        pytest.param([[0], [1]], [[1.0, 1.0], [2.0, 2.0]], 1.0, id="index 2-d"),
        pytest.param([0], [[np.nan, 1.0]], 1.0, id="nan row"),
        pytest.param([0], [[1.0, np.inf]], 1.0, id="inf row"),
        pytest.param([0], [[1.0, 1.0]], 0.0, id="zero weight"),
        pytest.param([0], [[1.0, 1.0]], -2.0, id="negative weight"),
        pytest.param([0], [[1.0, 1.0]], float("nan"), id="nan weight"),
        pytest.param([0], [[1.0, 1.0]], float("inf"), id="inf weight"),
    ],
)
def test_row_average_rejects_bad_rows_and_stays_unchanged(index, rows, weight):
    ra = RowAverage(4, 2)
    ra.add(np.array([0, 2]), ROWS_A)
    before = ra.apply(BASE)
    trained = ra.rows_trained.copy()
    with pytest.raises(ValueError):
        ra.add(np.asarray(index), np.asarray(rows), weight)
    np.testing.assert_array_equal(ra.apply(BASE), before)
    np.testing.assert_array_equal(ra.rows_trained, trained)


# --------------------------------------------------------------------------- RoundAggregate


def test_round_aggregate_uniform_rows_and_sample_weighted_backbone():
    agg = RoundAggregate(BASE, row_weighting="uniform")
    agg.add(shared_update([0, 2], ROWS_A, num_samples=1, w=[4.0, 0.0]))
    agg.add(shared_update([2, 3], ROWS_B, num_samples=3, w=[0.0, 8.0]))
    arrays, public = agg.result()
    assert set(arrays) == {"backbone.w"}  # public rows/index are not FedAvg-ed
    np.testing.assert_array_equal(arrays["backbone.w"], np.array([1.0, 6.0], np.float32))
    want = np.array([[10.0, 20.0], [2.0, 3.0], [40.0, 50.0], [70.0, 80.0]], np.float32)
    assert public.dtype == np.float32
    np.testing.assert_array_equal(public, want)
    assert agg.count == 2
    assert agg.num_samples == 4


def test_round_aggregate_samples_row_weighting_hand_computed():
    agg = RoundAggregate(BASE, row_weighting="samples")
    agg.add(shared_update([0, 2], ROWS_A, num_samples=1))
    agg.add(shared_update([2, 3], ROWS_B, num_samples=3))
    _, public = agg.result()
    # row 2: (1 * [30, 40] + 3 * [50, 60]) / 4; rows 0 and 3 have one device each
    want = np.array([[10.0, 20.0], [2.0, 3.0], [45.0, 55.0], [70.0, 80.0]], np.float32)
    np.testing.assert_array_equal(public, want)


def test_round_aggregate_does_not_modify_base_matrix():
    base = BASE.copy()
    agg = RoundAggregate(base)
    agg.add(shared_update([0], [[9.0, 9.0]]))
    _, public = agg.result()
    np.testing.assert_array_equal(base, BASE)
    np.testing.assert_array_equal(public[0], [9.0, 9.0])


def test_round_aggregate_updates_without_rows_keep_base():
    agg = RoundAggregate(BASE)
    agg.add(shared_update(None, None, w=[1.0, 2.0]))
    arrays, public = agg.result()
    np.testing.assert_array_equal(public, BASE)
    np.testing.assert_array_equal(arrays["backbone.w"], np.array([1.0, 2.0], np.float32))


def test_round_aggregate_without_public_matrix_returns_none():
    agg = RoundAggregate()
    agg.add(shared_update(None, None, num_samples=2, w=[2.0, 2.0]))
    agg.add(shared_update(None, None, num_samples=2, w=[4.0, 0.0]))
    arrays, public = agg.result()
    assert public is None
    np.testing.assert_array_equal(arrays["backbone.w"], np.array([3.0, 1.0], np.float32))


def test_round_aggregate_metrics_are_sample_weighted_means():
    agg = RoundAggregate(BASE)
    agg.add(shared_update([0], [[1.0, 1.0]], num_samples=1, metrics={"loss": 2.0, "acc": 0.5}))
    agg.add(shared_update([1], [[1.0, 1.0]], num_samples=3, metrics={"loss": 1.0, "acc": 0.9}))
    # loss: (1 * 2.0 + 3 * 1.0) / 4 = 1.25; acc: (1 * 0.5 + 3 * 0.9) / 4 = 0.8
    assert agg.metrics == pytest.approx({"loss": 1.25, "acc": 0.8})


def test_round_aggregate_metrics_empty_before_any_update():
    assert RoundAggregate().metrics == {}


def test_round_aggregate_metric_reported_by_some_devices_is_their_weighted_mean():
    agg = RoundAggregate()
    agg.add(shared_update(None, None, num_samples=1, metrics={"loss": 2.0}))
    agg.add(shared_update(None, None, num_samples=3, metrics={}))
    assert agg.metrics == pytest.approx({"loss": 2.0})


def test_round_aggregate_rejects_public_rows_without_public_matrix():
    agg = RoundAggregate()
    agg.add(shared_update(None, None, num_samples=2, w=[1.0, 1.0]))
    with pytest.raises(ValueError, match="public embedding rows"):
        agg.add(shared_update([0], [[1.0, 1.0]], num_samples=5, metrics={"loss": 9.0}))
    assert agg.count == 1
    assert agg.num_samples == 2
    arrays, public = agg.result()
    assert public is None
    np.testing.assert_array_equal(arrays["backbone.w"], np.array([1.0, 1.0], np.float32))


def test_round_aggregate_rejects_bad_row_weighting():
    with pytest.raises(ValueError, match="row_weighting"):
        RoundAggregate(BASE, row_weighting="median")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: shared_update([4], [[1.0, 1.0]], num_samples=5), id="row 4 of 4"),
        pytest.param(lambda: shared_update([0], [[1.0, 1.0, 1.0]], num_samples=5), id="width"),
        pytest.param(lambda: shared_update([0], [[np.nan, 1.0]], num_samples=5), id="nan row"),
        pytest.param(
            lambda: shared_update([1], [[1.0, 1.0]], num_samples=5, w=[1.0, 2.0, 3.0]),
            id="backbone shape (valid rows)",
        ),
        pytest.param(
            lambda: shared_update([1], [[1.0, 1.0]], num_samples=5, w=[np.inf, 2.0]),
            id="backbone inf (valid rows)",
        ),
    ],
)
def test_round_aggregate_rejected_update_changes_nothing(bad):
    agg = RoundAggregate(BASE, row_weighting="samples")
    agg.add(shared_update([0, 2], ROWS_A, num_samples=2, metrics={"loss": 1.0}, w=[1.0, 3.0]))
    arrays_before, public_before = agg.result()
    metrics_before = agg.metrics
    update = bad()
    with pytest.raises(ValueError):
        agg.add(update)
    assert agg.count == 1
    assert agg.num_samples == 2
    assert agg.metrics == metrics_before
    arrays, public = agg.result()
    assert_same_arrays(arrays, arrays_before)
    np.testing.assert_array_equal(public, public_before)


def test_aggregate_updates_equals_round_aggregate():
    updates = [
        shared_update([0, 2], ROWS_A, num_samples=1, w=[4.0, 0.0]),
        shared_update([2, 3], ROWS_B, num_samples=3, w=[0.0, 8.0]),
    ]
    for weighting in ("uniform", "samples"):
        agg = RoundAggregate(BASE, row_weighting=weighting)
        for u in updates:
            agg.add(u)
        want_arrays, want_public = agg.result()
        arrays, public = aggregate_updates(iter(updates), BASE, row_weighting=weighting)
        assert_same_arrays(arrays, want_arrays)
        np.testing.assert_array_equal(public, want_public)


def _reference_rows(base: np.ndarray, updates: list[SharedUpdate], weighting: str) -> np.ndarray:
    """Brute force: each row the (weighted) mean over the updates that carry it."""
    out = base.astype(np.float64).copy()
    for r in range(base.shape[0]):
        vals, ws = [], []
        for u in updates:
            index = list(u.arrays[PUBLIC_INDEX_KEY])
            if r in index:
                vals.append(u.arrays[PUBLIC_ROWS_KEY][index.index(r)])
                ws.append(1.0 if weighting == "uniform" else float(u.num_samples))
        if vals:
            out[r] = np.average(np.stack(vals), axis=0, weights=ws)
    return out


@PROPERTY
@given(round_updates(), st.sampled_from(["uniform", "samples"]))
def test_round_aggregate_rows_match_brute_force(case, weighting):
    base, updates = case
    _, public = aggregate_updates(updates, base, row_weighting=weighting)
    np.testing.assert_allclose(
        public, _reference_rows(base, updates, weighting), rtol=1e-12, atol=1e-9
    )


@PROPERTY
@given(round_updates(), st.sampled_from(["uniform", "samples"]), st.data())
def test_round_aggregate_is_permutation_invariant(case, weighting, data):
    base, updates = case
    perm = data.draw(st.permutations(range(len(updates))))
    shuffled = [updates[i] for i in perm]
    agg_a = RoundAggregate(base, row_weighting=weighting)
    agg_b = RoundAggregate(base, row_weighting=weighting)
    for u in updates:
        agg_a.add(u)
    for u in shuffled:
        agg_b.add(u)
    arrays_a, public_a = agg_a.result()
    arrays_b, public_b = agg_b.result()
    assert_close_arrays(arrays_b, arrays_a)
    np.testing.assert_allclose(public_b, public_a, rtol=1e-12, atol=1e-9)
    assert agg_a.num_samples == agg_b.num_samples
    assert set(agg_a.metrics) == set(agg_b.metrics)
    for k, v in agg_a.metrics.items():
        assert agg_b.metrics[k] == pytest.approx(v, rel=1e-12, abs=1e-12)


@PROPERTY
@given(round_updates())
def test_round_aggregate_metrics_match_weighted_mean(case):
    base, updates = case
    agg = RoundAggregate(base)
    for u in updates:
        agg.add(u)
    n = np.array([u.num_samples for u in updates], np.float64)
    losses = np.array([u.metrics["loss"] for u in updates])
    assert agg.metrics["loss"] == pytest.approx(float(n @ losses / n.sum()), rel=1e-12, abs=1e-12)
    assert agg.num_samples == int(n.sum())


@PROPERTY
@given(round_updates())
def test_round_aggregate_single_update_is_identity_on_carried_rows(case):
    base, updates = case
    u = updates[0]
    arrays, public = aggregate_updates([u], base)
    index = u.arrays[PUBLIC_INDEX_KEY]
    np.testing.assert_array_equal(public[index], u.arrays[PUBLIC_ROWS_KEY])
    untouched = np.setdiff1d(np.arange(base.shape[0]), index)
    np.testing.assert_array_equal(public[untouched], base[untouched])
    np.testing.assert_array_equal(arrays[NBT], u.arrays[NBT])


# --------------------------------------------------------------------------- shared / private


SHARED_EXAMPLES = [
    "backbone.conv1.weight",
    "backbone.layer1.0.bn1.running_mean",
    NBT,
    PUBLIC_ROWS_KEY,
    PUBLIC_INDEX_KEY,
]
PRIVATE_EXAMPLES = [
    "local.identity_weights",
    "dfc.converter",
    "dfc.binary_weights",
    "prev_local.conv1.weight",
    "prev_local.backbone.w",
    "dfc.backbone.x",
    "local.backbone.w",
    "optimizer.state.0.momentum_buffer",
]
UNKNOWN_EXAMPLES = [
    "backbone",
    "Backbone.w",
    "xbackbone.w",
    "backbone_w",
    "public_embeddings",
    "public_embeddings.rows.0",
    "public_embeddings.rowsx",
    "public_embeddings.weight",
    "local",
    "dfc",
    "prev_local",
    "head.weight",
    "",
]


def full_state() -> dict[str, np.ndarray]:
    return {
        "backbone.conv.weight": np.ones((2, 2), np.float32),
        NBT: np.array(3, np.int64),
        PUBLIC_ROWS_KEY: np.ones((2, 4), np.float32),
        PUBLIC_INDEX_KEY: np.array([0, 5], np.int64),
        "local.identity_weights": np.ones((3, 4), np.float32),
        "dfc.converter": np.eye(4, dtype=np.float32),
        "dfc.binary_weights": np.ones((3, 4), np.float32),
        "prev_local.conv.weight": np.zeros((2, 2), np.float32),
    }


def test_split_state_puts_each_name_on_its_side():
    state = full_state()
    shared, private = split_state(state)
    assert set(shared) == {"backbone.conv.weight", NBT, PUBLIC_ROWS_KEY, PUBLIC_INDEX_KEY}
    assert set(private) == {
        "local.identity_weights",
        "dfc.converter",
        "dfc.binary_weights",
        "prev_local.conv.weight",
    }
    for k, v in {**shared, **private}.items():
        assert v is state[k]
    check_shared(shared)  # what split_state shares passes the upload check


@pytest.mark.parametrize("name", SHARED_EXAMPLES)
def test_is_shared_true_for_shared_names(name):
    assert is_shared(name)


@pytest.mark.parametrize("name", PRIVATE_EXAMPLES + UNKNOWN_EXAMPLES)
def test_is_shared_false_for_private_and_tricky_names(name):
    assert not is_shared(name)


@pytest.mark.parametrize("name", PRIVATE_EXAMPLES)
def test_split_state_keeps_private_names_private(name):
    shared, private = split_state({name: np.zeros(1)})
    assert shared == {}
    assert set(private) == {name}


@pytest.mark.parametrize("name", UNKNOWN_EXAMPLES)
def test_split_state_rejects_unknown_names(name):
    state = full_state()
    state[name] = np.zeros(1)
    with pytest.raises(ValueError, match="neither shared nor private"):
        split_state(state)


def test_prefix_lists_do_not_overlap():
    for p in SHARED_PREFIXES:
        assert not any(p == q or p.startswith(q) for q in PRIVATE_PREFIXES), p
    assert BACKBONE_PREFIX in SHARED_PREFIXES
    assert PUBLIC_ROWS_KEY in SHARED_PREFIXES
    assert PUBLIC_INDEX_KEY in SHARED_PREFIXES


SUFFIX = st.from_regex(r"[a-z_][a-z0-9_]{0,6}(\.[a-z0-9_]{1,6}){0,2}", fullmatch=True)
SHARED_NAME = st.one_of(
    st.sampled_from([PUBLIC_ROWS_KEY, PUBLIC_INDEX_KEY]),
    SUFFIX.map(lambda s: BACKBONE_PREFIX + s),
)
PRIVATE_NAME = st.one_of(
    st.sampled_from(["local.identity_weights", "dfc.converter", "dfc.binary_weights"]),
    st.tuples(st.sampled_from(PRIVATE_PREFIXES), SUFFIX).map("".join),
    # private prefixes wrapped around shared-looking names must stay private
    st.tuples(st.sampled_from(PRIVATE_PREFIXES), SHARED_NAME).map("".join),
)


@PROPERTY
@given(st.sets(SHARED_NAME, max_size=6), st.sets(PRIVATE_NAME, max_size=6))
def test_split_state_never_shares_a_private_name(shared_names, private_names):
    state = {n: np.zeros(1) for n in shared_names | private_names}
    shared, private = split_state(state)
    assert set(shared) == shared_names
    assert set(private) == private_names
    assert not set(shared) & private_names
    assert all(is_shared(n) for n in shared)
    assert not any(is_shared(n) for n in private_names)


@PROPERTY
@given(st.sets(PRIVATE_NAME, min_size=1, max_size=4))
def test_check_shared_rejects_any_private_name(private_names):
    arrays = {"backbone.w": np.zeros(1), **{n: np.zeros(1) for n in private_names}}
    with pytest.raises(ValueError, match="not shareable"):
        check_shared(arrays)
    with pytest.raises(ValueError, match="not shareable"):
        SharedUpdate(arrays, 1)


def test_check_shared_accepts_valid_update():
    check_shared({"backbone.w": np.zeros(2)})
    check_shared({})
    check_shared({PUBLIC_ROWS_KEY: np.zeros((2, 3)), PUBLIC_INDEX_KEY: np.array([4, 1])})
    check_shared({PUBLIC_ROWS_KEY: np.zeros((0, 3)), PUBLIC_INDEX_KEY: np.zeros(0, np.int64)})


@pytest.mark.parametrize(
    "arrays",
    [
        pytest.param({"local.identity_weights": np.zeros((2, 2))}, id="private"),
        pytest.param({"dfc.converter": np.eye(2), "backbone.w": np.zeros(1)}, id="dfc"),
        pytest.param({"prev_local.backbone.w": np.zeros(1)}, id="prev_local"),
        pytest.param({"head.weight": np.zeros(1)}, id="unknown"),
        pytest.param({PUBLIC_ROWS_KEY: np.zeros((2, 3))}, id="rows without index"),
        pytest.param({PUBLIC_INDEX_KEY: np.array([0, 1])}, id="index without rows"),
        pytest.param(
            {PUBLIC_ROWS_KEY: np.zeros((2, 3)), PUBLIC_INDEX_KEY: np.array([1, 1])},
            id="repeated index",
        ),
        pytest.param(
            {PUBLIC_ROWS_KEY: np.zeros((2, 3)), PUBLIC_INDEX_KEY: np.array([0, -1])},
            id="negative index",
        ),
        pytest.param(
            {PUBLIC_ROWS_KEY: np.zeros((2, 3)), PUBLIC_INDEX_KEY: np.array([0.0, 1.0])},
            id="float index",
        ),
        pytest.param(
            {PUBLIC_ROWS_KEY: np.zeros((2, 3)), PUBLIC_INDEX_KEY: np.array([0, 1, 2])},
            id="index longer than rows",
        ),
        pytest.param(
            {PUBLIC_ROWS_KEY: np.zeros(3), PUBLIC_INDEX_KEY: np.array([0, 1, 2])},
            id="rows 1-d",
        ),
        pytest.param(
            {PUBLIC_ROWS_KEY: np.zeros((2, 3)), PUBLIC_INDEX_KEY: np.array([[0, 1]])},
            id="index 2-d",
        ),
    ],
)
def test_check_shared_rejects_bad_updates(arrays):
    with pytest.raises(ValueError):
        check_shared(arrays)
    with pytest.raises(ValueError):
        SharedUpdate(arrays, 1)


def test_shared_update_accepts_valid_update_and_counts_bytes():
    u = SharedUpdate(
        {
            "backbone.w": np.zeros((2, 3), np.float32),
            PUBLIC_ROWS_KEY: np.zeros((2, 4), np.float32),
            PUBLIC_INDEX_KEY: np.array([0, 3], np.int64),
        },
        10,
        {"loss": 0.5, "steps": 3},
    )
    assert u.num_samples == 10
    assert u.nbytes == 2 * 3 * 4 + 2 * 4 * 4 + 2 * 8


@pytest.mark.parametrize("num_samples", [0, -1, -100])
def test_shared_update_rejects_non_positive_num_samples(num_samples):
    with pytest.raises(ValueError, match="num_samples"):
        SharedUpdate({"backbone.w": np.zeros(1)}, num_samples)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("0.5", id="str"),
        pytest.param(None, id="None"),
        pytest.param(True, id="bool"),
        pytest.param([0.5], id="list"),
        pytest.param({"per_identity": 1.0}, id="dict"),
        pytest.param(np.array([0.1, 0.2]), id="array"),
    ],
)
def test_shared_update_rejects_non_numeric_metrics(value):
    with pytest.raises(ValueError, match="metric"):
        SharedUpdate({"backbone.w": np.zeros(1)}, 1, {"loss": value})


def test_shared_update_accepts_numpy_scalar_metrics_as_floats():
    u = SharedUpdate({"backbone.w": np.zeros(1)}, 1,
                     {"loss": np.float32(0.5), "n": np.int64(3)})
    assert u.metrics == {"loss": 0.5, "n": 3.0}
    assert all(type(v) is float for v in u.metrics.values())


def test_a_bare_prefix_is_not_a_shared_name():
    assert not is_shared("backbone.")
    with pytest.raises(ValueError):
        check_shared({"backbone.": np.zeros(1)})


def test_backbone_arrays_strips_prefix_and_drops_the_rest():
    shared, _ = split_state(full_state())
    bb = backbone_arrays(shared)
    assert set(bb) == {"conv.weight", "bn.num_batches_tracked"}
    assert bb["conv.weight"] is shared["backbone.conv.weight"]


# --------------------------------------------------------------------------- packaging


def test_importing_fedfr_fl_does_not_import_torch():
    proc = subprocess.run(
        [sys.executable, "-c", "import fedfr.fl, sys; assert 'torch' not in sys.modules"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
