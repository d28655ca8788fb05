"""The synthetic face generator: determinism, identity structure, domains, profiles, protocols."""

from __future__ import annotations

import numpy as np
import pytest

from fedfr.data.synthetic import (
    DomainStyle,
    GeneratorConfig,
    Profile,
    SyntheticFaces,
    allocate,
    available_profiles,
    device_domain,
    get_profile,
    public_domain,
)
from fedfr.data.synthetic import render as render_mod
from fedfr.data.synthetic.profiles import eval_protocol, genuine_pairs
from fedfr.errors import FedFRError, UnknownNameError


@pytest.fixture(scope="module")
def faces() -> SyntheticFaces:
    return SyntheticFaces(7)


def _small(x: np.ndarray) -> np.ndarray:
    """Images as float vectors at 28x28 (enough for pixel-space comparisons)."""
    n = len(x)
    return x.reshape(n, 28, 4, 28, 4, 3).mean(axis=(2, 4)).reshape(n, -1)


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_bytes(faces):
    ids, idx = np.arange(10), np.arange(10) % 3
    a = faces.render(ids, idx, public_domain())
    b = SyntheticFaces(7).render(ids, idx, public_domain())
    assert a.dtype == np.uint8 and a.shape == (10, 112, 112, 3)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("domain", [public_domain(), device_domain(7, 2)], ids=["public", "device"])
def test_chunking_and_order_do_not_change_bytes(faces, domain, monkeypatch):
    rng = np.random.default_rng(0)
    ids, idx = rng.integers(0, 10_000, 40), rng.integers(0, 100, 40)
    whole = faces.render(ids, idx, domain)
    pieces = np.concatenate(
        [faces.render(ids[a : a + 7], idx[a : a + 7], domain) for a in range(0, 40, 7)]
    )
    assert np.array_equal(whole, pieces)
    perm = rng.permutation(40)
    assert np.array_equal(faces.render(ids[perm], idx[perm], domain), whole[perm])
    monkeypatch.setattr(render_mod, "CHUNK", 3)  # other internal chunk size, same bytes
    assert np.array_equal(faces.render(ids, idx, domain), whole)
    single = np.concatenate(
        [faces.render(ids[i : i + 1], idx[i : i + 1], domain) for i in range(5)]
    )
    assert np.array_equal(single, whole[:5])


def test_different_seed_or_index_gives_different_images(faces):
    ids = np.arange(6)
    a = faces.render(ids, np.zeros(6), public_domain())
    b = SyntheticFaces(8).render(ids, np.zeros(6), public_domain())
    c = faces.render(ids, np.ones(6), public_domain())
    assert (a != b).any(axis=(1, 2, 3)).all()
    assert (a != c).any(axis=(1, 2, 3)).all()


# --- identities and families --------------------------------------------------------------------


def test_identity_params_are_stable_and_batch_independent(faces):
    p1 = faces.identity_params([5, 9, 5])
    p2 = faces.identity_params([9])
    assert p1.face_w[0] == p1.face_w[2]
    assert p1.face_w[1] == p2.face_w[0]
    assert p1.skin.shape == (3, 3)
    assert set(p1.row(0)) >= {"face_w", "eye_dx", "nose_w", "mouth_w", "skin", "hair", "glasses"}


def test_same_identity_closer_than_different_identities(faces):
    n_id, n_img = 16, 6
    ids = np.repeat(np.arange(n_id) * 4, n_img)  # one per family: unrelated identities
    x = _small(faces.render(ids, np.tile(np.arange(n_img), n_id), public_domain()))
    d = np.abs(x[:, None, :] - x[None, :, :]).mean(-1)
    same = ids[:, None] == ids[None, :]
    off = ~np.eye(len(ids), dtype=bool)
    assert d[same & off].mean() < 0.8 * d[~same].mean()


def test_family_members_look_alike(faces):
    fs = faces.config.family_size
    ids = np.arange(40 * fs)
    fam = faces.families(ids)
    p = faces.identity_params(ids)
    names = ["face_w", "face_h", "eye_dx", "eye_w", "nose_w", "mouth_w", "skin_tone", "hair_tone"]
    v = np.stack([getattr(p, k) for k in names], 1)
    v = (v - v.mean(0)) / v.std(0)
    d = np.abs(v[:, None] - v[None]).mean(-1)
    same = fam[:, None] == fam[None, :]
    off = ~np.eye(len(ids), dtype=bool)
    assert d[same & off].mean() < 0.75 * d[~same].mean()
    # ... and in pixel space: mean image of each identity (averages the nuisance out).
    ids = np.arange(12 * fs)
    imgs = _small(faces.render(np.repeat(ids, 4), np.tile(np.arange(4), len(ids)), public_domain()))
    means = imgs.reshape(len(ids), 4, -1).mean(1)
    dp = np.abs(means[:, None] - means[None]).mean(-1)
    fam = faces.families(ids)
    same = fam[:, None] == fam[None, :]
    off = ~np.eye(len(ids), dtype=bool)
    assert dp[same & off].mean() < dp[~same].mean()


def test_family_size_one_disables_families():
    g = SyntheticFaces(0, config=GeneratorConfig(family_size=1))
    assert np.array_equal(g.families([0, 1, 2]), [0, 1, 2])


# --- domains ------------------------------------------------------------------------------------


def test_domains_are_deterministic_and_distinct():
    d0 = device_domain(3, 0)
    assert d0 == device_domain(3, 0)
    assert d0 != device_domain(3, 1)
    assert d0 != device_domain(4, 0)
    assert d0.name == "device_000" and d0.index == 0 and public_domain().index == -1
    assert DomainStyle.from_dict(d0.to_dict()) == d0
    assert device_domain(3, 5, strength=0.0).gain == public_domain().gain
    with pytest.raises(FedFRError):
        device_domain(3, -1)


def test_domain_changes_images_but_keeps_identity(faces):
    ids = np.repeat(np.arange(0, 48, 4), 2)  # 12 unrelated identities
    idx = np.zeros(len(ids), np.int64)
    pub = faces.render(ids, idx, public_domain())
    dev = faces.render(ids, idx, faces.device_domain(1))
    assert (pub != dev).any(axis=(1, 2, 3)).all()
    # The domain shifts pixel statistics consistently (here: the mean color over its images).
    doms = [faces.device_domain(k) for k in range(4)]
    means = [faces.render(ids, idx + 1, d).reshape(-1, 3).mean(0) for d in doms]
    assert min(np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1 :]) > 1.0


# --- shapes -------------------------------------------------------------------------------------


def test_sizes_and_empty_batches(faces):
    assert faces.render([1, 2], [0, 0], size=(64, 80)).shape == (2, 64, 80, 3)
    assert faces.render([1], [0], size=(160, 160)).shape == (1, 160, 160, 3)
    assert faces.render([], []).shape == (0, 112, 112, 3)
    with pytest.raises(ValueError):
        faces.render([1, 2], [0])
    with pytest.raises(ValueError):
        faces.render([-1], [0])


# --- profiles, pools and protocols -------------------------------------------------------------


def test_unknown_profile_lists_choices():
    with pytest.raises(UnknownNameError) as e:
        get_profile("huge")
    assert isinstance(e.value, KeyError)
    for name in ("tiny", "small", "paper", "fair"):
        assert name in str(e.value)
    assert set(available_profiles()) == {"tiny", "small", "paper", "fair"}


def test_profile_sizes_and_roundtrip():
    assert get_profile("tiny").total_images == 1_560
    assert get_profile("small").total_images == 28_000
    assert get_profile("paper").total_images == 338_000
    p = get_profile("paper")
    assert (p.public_identities, p.devices, p.device_identities) == (6000, 40, 100)
    assert Profile.from_dict(get_profile("small").to_dict()) == get_profile("small")
    with pytest.raises(FedFRError):
        get_profile("tiny").with_(eval_images=1)


@pytest.mark.parametrize("name", ["tiny", "small", "paper"])
def test_identity_pools_are_disjoint(name):
    prof = get_profile(name)
    pools = allocate(prof, 0)
    groups = {
        "public": pools.public,
        "devices": pools.devices.ravel(),
        "strangers": pools.strangers.ravel(),
        "eval": pools.eval,
        "eval_devices": pools.eval_devices,
    }
    assert len(pools.public) == prof.public_identities
    assert pools.devices.shape == (prof.devices, prof.device_identities)
    assert pools.strangers.shape == (prof.devices, prof.strangers)
    assert len(pools.eval) == prof.eval_identities
    everything = np.concatenate(list(groups.values()))
    assert len(np.unique(everything)) == len(everything)
    # Families span the public and device pools (public holds device users' look-alikes).
    fs = prof.generator.family_size
    assert np.intersect1d(pools.public // fs, pools.devices.ravel() // fs).size > 0
    assert set(pools.eval_devices_domain.tolist()) <= set(range(prof.devices))
    again = allocate(prof, 0)
    assert np.array_equal(again.devices, pools.devices)
    assert not np.array_equal(allocate(prof, 1).public, pools.public)


def test_eval_protocol():
    prof = get_profile("tiny")
    pools = allocate(prof, 0)
    n = prof.eval_device_images
    labels = np.repeat(np.arange(len(pools.eval_devices)), n)
    fam = np.repeat(pools.eval_devices // prof.generator.family_size, n)
    dom = np.repeat(pools.eval_devices_domain, n)
    r = eval_protocol(labels, fam, dom, prof, np.random.default_rng(0))
    pairs, issame = r["pairs"], r["issame"].astype(bool)
    assert r["num_genuine"] == len(pools.eval_devices) * n * (n - 1) // 2
    assert np.array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], issame)
    assert (dom[pairs[:, 0]] == dom[pairs[:, 1]]).all()  # impostors within a domain
    assert r["num_impostor"] >= 2_000 and r["num_hard_impostor"] > 0
    assert len(np.unique(np.sort(pairs, 1), axis=0)) == len(pairs)
    gallery, probes = r["gallery"], r["probes"]
    assert len(np.intersect1d(gallery, probes)) == 0 and len(gallery) + len(probes) == len(labels)
    unknown = np.setdiff1d(labels[probes], labels[gallery])
    assert len(unknown) > 0  # probes of identities not in the gallery


def test_genuine_pairs_uneven_groups():
    pairs = genuine_pairs(np.array([0, 0, 0, 1, 2, 2]))
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (0, 2), (1, 2), (4, 5)]
