"""Writing synthetic datasets (synthesize) and reading them back (SyntheticDataset.load)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedfr.data.manifest import SyntheticDataset, is_synthetic_dataset
from fedfr.data.synthetic import (
    DatasetExistsError,
    DomainStyle,
    SyntheticFaces,
    get_profile,
    public_domain,
    synthesize,
)
from fedfr.data.synthetic import writer as writer_mod
from fedfr.errors import DataFormatError, UnknownNameError

# A few dozen images: for the tests that damage or rewrite a dataset.
MICRO = get_profile("tiny").with_(
    name="micro",
    public_identities=6,
    public_images=2,
    devices=2,
    device_identities=2,
    device_train=2,
    device_test=1,
    strangers=1,
    stranger_images=2,
    eval_identities=8,
    eval_images=3,
    eval_device_identities=4,
    eval_device_images=3,
    impostor_pairs=100,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "ds"
    manifest = synthesize("tiny", out, seed=3, workers=2, progress=False)
    assert manifest == out / "manifest.json"
    return out


@pytest.fixture()
def micro(tmp_path) -> Path:
    out = tmp_path / "micro"
    synthesize(MICRO, out, seed=1, workers=1, progress=False)
    return out


def test_tiny_round_trip(tiny):
    prof = get_profile("tiny")
    ds = SyntheticDataset.load(tiny)
    assert ds.profile == "tiny" and ds.seed == 3
    assert ds.contract.size == (112, 112)
    assert len(ds.public) == prof.public_identities * prof.public_images
    assert ds.num_public_classes == prof.public_identities
    assert np.array_equal(np.unique(ds.public.labels), np.arange(prof.public_identities))
    assert len(ds.devices) == prof.devices
    for k, dev in enumerate(ds.devices):
        assert dev.index == k and dev.name == f"device_{k:03d}"
        assert len(dev.train) == prof.device_identities * prof.device_train
        assert len(dev.test) == prof.device_identities * prof.device_test
        assert len(dev.strangers) == prof.strangers * prof.stranger_images
        assert np.array_equal(np.unique(dev.train.labels), np.arange(prof.device_identities))
        assert np.array_equal(np.unique(dev.test.identity_ids), np.unique(dev.train.identity_ids))
        assert not set(dev.train.image_indices) & set(dev.test.image_indices)
        assert DomainStyle.from_dict(dev.domain).index == k
    # Identity pools disjoint across splits.
    groups = [
        ds.public.identity_ids,
        ds.eval.images.identity_ids,
        ds.eval_devices.images.identity_ids,
    ]
    for dev in ds.devices:
        groups += [dev.train.identity_ids, dev.strangers.identity_ids]
    sets = [set(np.unique(g).tolist()) for g in groups]
    assert sum(len(s) for s in sets) == len(set().union(*sets))
    for split, n_img in ((ds.eval, prof.eval_images), (ds.eval_devices, prof.eval_device_images)):
        n = len(split.images)
        assert split.pairs.shape[1] == 2 and split.pairs.min() >= 0 and split.pairs.max() < n
        assert split.issame.any() and (~split.issame).any()
        assert (~split.issame).sum() >= 2_000
        lab = split.images.labels
        assert np.array_equal(lab[split.pairs[:, 0]] == lab[split.pairs[:, 1]], split.issame)
        assert len(split.gallery) + len(split.probes) == n
        assert split.known_probes.any() and (~split.known_probes).any()
        assert n == len(np.unique(lab)) * n_img
    assert ds.eval_devices.device_index is not None and ds.eval.device_index is None


def test_images_decode_and_match_the_generator(tiny):
    ds = SyntheticDataset.load(tiny)
    x = ds.devices[1].test.load(workers=2)
    assert x.shape == (len(ds.devices[1].test), 112, 112, 3) and x.dtype == np.uint8
    g = SyntheticFaces(ds.seed)
    dom = DomainStyle.from_dict(ds.devices[1].domain)
    t = ds.devices[1].test
    assert np.array_equal(x[:6], g.render(t.identity_ids[:6], t.image_indices[:6], dom))
    p = ds.public
    assert np.array_equal(
        p.load()[:3], g.render(p.identity_ids[:3], p.image_indices[:3], public_domain())
    )


def test_no_temp_dir_left_and_detection(tiny):
    assert is_synthetic_dataset(tiny) and is_synthetic_dataset(tiny / "manifest.json")
    assert not is_synthetic_dataset(tiny / "images")
    assert [p.name for p in tiny.parent.iterdir()] == ["ds"]


def test_unknown_profile(tmp_path):
    with pytest.raises(UnknownNameError, match="tiny"):
        synthesize("nope", tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_refuses_to_overwrite(micro, tmp_path):
    with pytest.raises(DatasetExistsError):
        synthesize(MICRO, micro, seed=2, workers=1, progress=False)
    assert SyntheticDataset.load(micro).seed == 1
    synthesize(MICRO, micro, seed=2, workers=1, progress=False, overwrite=True)
    assert SyntheticDataset.load(micro).seed == 2
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):  # not a dataset: never removed, even with overwrite
        synthesize(MICRO, other, workers=1, progress=False, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    synthesize(MICRO, empty, workers=1, progress=False)
    assert is_synthetic_dataset(empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "micro", "notes"]


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer_mod, "_write_manifest", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        synthesize(MICRO, tmp_path / "ds", workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_manifest(micro):
    m = micro / "manifest.json"
    m.write_text("{not json")
    with pytest.raises(DataFormatError, match=r"manifest\.json"):
        SyntheticDataset.load(micro)
    assert not is_synthetic_dataset(micro)
    m.write_text(json.dumps({"format": "fedfr-synthetic", "format_version": 99}))
    with pytest.raises(DataFormatError, match="format_version"):
        SyntheticDataset.load(micro)
    m.write_text(json.dumps({"format": "fedfr-synthetic", "format_version": 1, "splits": {}}))
    with pytest.raises(DataFormatError, match=r"manifest\.json"):
        SyntheticDataset.load(micro)
    with pytest.raises(DataFormatError, match="no manifest"):
        SyntheticDataset.load(micro / "images")


def test_missing_files_are_named(micro):
    ds = SyntheticDataset.load(micro)
    victim = ds.devices[0].strangers.paths[1]
    os.remove(micro / victim)
    with pytest.raises(DataFormatError, match=victim.rsplit("/", 1)[-1]) as e:
        SyntheticDataset.load(micro)
    assert str(micro / victim) in str(e.value)
    SyntheticDataset.load(micro, check_files=False)  # opt out of the check
    shutil.rmtree(micro / "images" / "public")
    with pytest.raises(DataFormatError, match="public"):
        SyntheticDataset.load(micro)
    os.remove(micro / "eval_pairs.npy")
    with pytest.raises(DataFormatError, match=r"eval_pairs\.npy"):
        SyntheticDataset.load(micro, check_files=False)


def test_inconsistent_protocol_arrays(micro):
    np.save(micro / "eval_gallery.npy", np.array([0, 10_000], np.int32))
    with pytest.raises(DataFormatError, match=r"eval_gallery\.npy"):
        SyntheticDataset.load(micro)


def test_in_memory_copy_decodes_once_and_matches(tiny):
    ds = SyntheticDataset.load(tiny)
    mem = ds.in_memory()
    for name, s in ds.image_sets().items():
        got = mem.image_sets()[name]
        assert got.paths == s.paths and np.array_equal(got.labels, s.labels)
        assert got.load() is got.load()  # decoded once, the same array
        np.testing.assert_array_equal(got.load(), s.load())
    assert mem.devices[0].train.in_memory() is mem.devices[0].train
    np.testing.assert_array_equal(mem.eval.pairs, ds.eval.pairs)
