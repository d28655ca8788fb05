"""The evaluation protocol, checked with embedders whose answers are known."""

from dataclasses import dataclass

import numpy as np
import pytest

from fedfr.evaluation import (
    device_pairs,
    evaluate_device,
    format_table,
    mean_over_devices,
    summarize,
)


@dataclass
class _Set:
    images: np.ndarray
    labels: np.ndarray

    def load(self):
        return self.images

    def __len__(self):
        return len(self.labels)


@dataclass
class _Device:
    name: str
    train: _Set
    test: _Set
    strangers: _Set


def _images(labels):
    # Each image encodes its identity in its pixel value (identity * 3 + 1).
    return np.stack([np.full((4, 4, 3), 3 * int(y) + 1, np.uint8) for y in labels])


def _oracle(num=40):
    def embed(images):
        ids = (images[:, 0, 0, 0].astype(int) - 1) // 3
        return np.eye(num, dtype=np.float32)[ids]

    return embed


def _device(k=4, n_train=3, n_test=3, strangers=(30, 31, 32, 33, 34, 35)):
    y_tr = np.repeat(np.arange(k), n_train)
    y_te = np.repeat(np.arange(k), n_test)
    y_st = np.repeat(np.asarray(strangers), 2)
    return _Device("d0", _Set(_images(y_tr), y_tr), _Set(_images(y_te), y_te),
                   _Set(_images(y_st), y_st))


def test_device_pairs_cover_test_and_stranger_pairs_but_not_stranger_stranger():
    labels = np.array([0, 0, 1])
    pairs, same = device_pairs(labels, num_strangers=2)
    as_set = {tuple(p) for p in pairs.tolist()}
    assert (3, 4) not in as_set  # stranger-stranger
    assert len(as_set) == len(pairs) == 3 + 3 * 2  # C(3,2) test pairs + test x stranger
    assert same.tolist() == [t == (0, 1) for t in map(tuple, pairs.tolist())]


def test_perfect_embedder_scores_perfectly():
    rep = evaluate_device(_oracle(), _device(), fars=(1e-1,), fpirs=(1e-1,))
    flat = summarize(rep)
    assert flat["tar@far=1e-01"] == 1.0
    assert flat["rank1"] == 1.0
    assert flat["dir@fpir=1e-01"] == 1.0
    assert flat["eer"] == 0.0


def test_embedder_that_confuses_strangers_with_members_fails_open_set():
    def confused(images):
        ids = (images[:, 0, 0, 0].astype(int) - 1) // 3
        ids = np.where(ids >= 30, 0, ids)  # every stranger looks like identity 0
        return np.eye(40, dtype=np.float32)[ids]

    flat = summarize(evaluate_device(confused, _device(), fars=(1e-1,), fpirs=(1e-1,)))
    assert flat["rank1"] == 1.0  # closed set is unaffected
    assert flat["dir@fpir=1e-01"] < 0.5  # but strangers cannot be rejected
    assert flat["tar@far=1e-01"] < 1.0


def test_mean_over_devices_and_table():
    good = summarize(evaluate_device(_oracle(), _device(), fars=(1e-1,), fpirs=(1e-1,)))
    rng = np.random.default_rng(0)

    def noisy(images):
        e = _oracle()(images) + rng.normal(0, 0.8, (len(images), 40)).astype(np.float32)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    reps = [evaluate_device(_oracle(), _device(), fars=(1e-1,), fpirs=(1e-1,)),
            evaluate_device(noisy, _device(), fars=(1e-1,), fpirs=(1e-1,))]
    mean = mean_over_devices(reps)
    worse = summarize(reps[1])
    assert mean["rank1"] == pytest.approx((good["rank1"] + worse["rank1"]) / 2)
    table = format_table({"model": mean})
    assert table.splitlines()[0].startswith("| model / split | TAR@1e-1")
    assert "| model |" in table
    assert "—" in table  # TAR@1e-3 is not resolvable with this few impostor pairs
