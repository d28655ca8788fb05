"""The fair protocol (issue 12): controls, cross-device impostors, hyperparameter selection on
a validation data set, FedFR with and without its converter, paired statistics."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from fedfr.sim import SimConfig
from fedfr.sim.protocol import (
    choose,
    control_data,
    grid_points,
    paired_differences,
    point_key,
    selection_score,
    t_interval,
    with_cross_device_impostors,
)
from fedfr.train.methods import FEDERATED_METHODS, METHODS, round_config

# --------------------------------------------------------------------------- units


def test_t_interval_matches_hand_computation():
    got = t_interval([1.0, 2.0, 3.0])
    # mean 2, sample sd 1, t(0.975, df=2) = 4.302653
    half = 4.302653 / math.sqrt(3)
    assert got["n"] == 3 and got["mean"] == pytest.approx(2.0)
    assert got["low"] == pytest.approx(2.0 - half, rel=1e-5)
    assert got["high"] == pytest.approx(2.0 + half, rel=1e-5)
    one = t_interval([0.5, None])
    assert one == {"n": 1, "mean": 0.5, "low": None, "high": None}


def test_paired_differences_per_seed_and_per_device():
    def run(g, per_dev):
        return {"generic": {"tar@far=1e-03": g}, "personalized": {"tar@far=1e-03":
                                                                  float(np.mean(per_dev))},
                "personalized_per_device": [{"tar@far=1e-03": v} for v in per_dev]}
    per_seed = {0: {"a": run(0.5, [0.9, 0.8]), "b": run(0.4, [0.7, 0.8])},
                1: {"a": run(0.6, [1.0, 0.9]), "b": run(0.3, [0.9, 0.6])}}
    d = paired_differences(per_seed, "a", "b", [("generic", "tar@far=1e-03"),
                                                ("personalized", "tar@far=1e-03")])
    assert d["generic.tar@far=1e-03"]["per_seed"]["mean"] == pytest.approx(0.2)
    assert d["generic.tar@far=1e-03"]["per_seed"]["n"] == 2
    dev = d["personalized.tar@far=1e-03"]["per_device"]
    assert dev["n"] == 4
    assert dev["mean"] == pytest.approx(np.mean([0.2, 0.0, 0.1, 0.3]))
    assert "per_device" not in d["generic.tar@far=1e-03"]


def test_grid_points_keys_and_choice():
    pts = grid_points({"lr": (0.001, 0.01), "bn_policy": ("train", "frozen")})
    assert len(pts) == 4
    assert pts[0] == {"bn_policy": "train", "lr": 0.001}
    assert point_key(pts[0]) == "bn_policy=train,lr=0.001"
    assert choose({"x": 0.2, "y": 0.5, "z": 0.5}) == "y"  # ties: the first in sorted order
    assert selection_score({"generic": {"tar@far=1e-03": 0.2},
                            "personalized": {"tar@far=1e-03": None}}) == pytest.approx(0.1)


def test_controls_are_not_round_methods():
    assert "public_more" in METHODS and "centralized" in METHODS
    assert set(FEDERATED_METHODS) == {"fedavg", "fedavg_public", "fedprox", "fedfr",
                                      "fedfr_emb"}
    for name in ("public_more", "centralized", "local", "pretrained"):
        with pytest.raises(ValueError, match="federated method"):
            round_config({"method": name})


def _split(ids, n_per, domain=0):
    from fedfr.data.manifest import InMemoryImageSet

    ids = np.repeat(np.asarray(ids, np.int64), n_per)
    pix = np.stack([np.full((4, 4, 3), i % 256, np.uint8) for i in ids])
    labels = np.unique(ids, return_inverse=True)[1].astype(np.int64)
    return InMemoryImageSet(None, ("",) * len(ids), labels, ids, None, pix)


def _toy_dataset():
    from fedfr.data.manifest import DeviceSplit

    devices = tuple(DeviceSplit(f"d{k}", k, {}, _split([10 * k, 10 * k + 1], 3),
                                _split([10 * k, 10 * k + 1], 2), _split([100 + k], 2))
                    for k in range(3))
    return SimpleNamespace(devices=devices, public=_split(range(200, 210), 4))


def test_control_data_pooled_and_public():
    ds = _toy_dataset()
    x, y = control_data(ds, "pooled", 0)
    assert len(x) == 18 and list(np.unique(y)) == list(range(6))
    np.testing.assert_array_equal(y, np.repeat([0, 1, 2, 3, 4, 5], 3))
    xp, yp = control_data(ds, "public", 0)
    assert len(xp) == 18  # as many images as the devices hold together
    assert yp.min() == 0 and yp.max() == len(np.unique(yp)) - 1
    # every image really is a public image, chosen by the seed
    assert set(xp[:, 0, 0, 0]) <= set(range(200, 210))
    assert not np.array_equal(control_data(ds, "public", 1)[0], xp)
    with pytest.raises(ValueError, match="unknown control"):
        control_data(ds, "more", 0)


def test_cross_device_impostors_hold_every_other_devices_test_images():
    import dataclasses

    from fedfr.data.manifest import DeviceSplit

    ds = _toy_dataset()

    @dataclasses.dataclass(frozen=True)
    class DS:
        devices: tuple[DeviceSplit, ...]

    out = with_cross_device_impostors(DS(ds.devices))
    for k, d in enumerate(out.devices):
        ids = set(d.strangers.identity_ids.tolist())
        others = {10 * j + i for j in range(3) if j != k for i in (0, 1)}
        assert ids == {100 + k} | others
        assert len(d.strangers.load()) == 2 + 2 * 4
        assert d.test is ds.devices[k].test and d.train is ds.devices[k].train


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("protocol") / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedfr", "simulate", "--profile", "tiny", "--methods",
         "pretrained,fedavg,fedfr,public_more,centralized", "--rounds", "1", "--seeds", "0",
         "--pretrain-epochs", "1", "--device", "cpu", "--select", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_selection_runs_on_the_validation_seed_and_its_choice_is_used(protocol_run):
    out, res = protocol_run
    sel = res["selection"]
    assert sel["seed"] == 1000 and sel["grid"] == {"lr": [0.003, 0.01]}
    for m in ("fedavg", "fedfr", "public_more", "centralized"):
        e = sel["methods"][m]
        assert set(e["scores"]) == {"lr=0.003", "lr=0.01"}
        assert e["chosen"] == {"lr": float(choose(e["scores"]).split("=")[1])}
        assert res["methods"][m]["overrides"] == e["chosen"]
        seed_res = json.loads((out / "seeds" / "seed-0" / f"{m}.json").read_text())
        assert seed_res["overrides"] == e["chosen"]
    assert "pretrained" not in sel["methods"]
    # the validation data set is its own rendering, not a test seed's
    assert (out / "data" / "tiny-seed1000").is_dir()
    md = (out / "results.md").read_text()
    assert "Hyperparameters chosen on the validation data set" in md


def test_controls_train_as_much_and_send_nothing(protocol_run):
    _, res = protocol_run
    m = res["methods"]
    for c in ("public_more", "centralized"):
        assert m[c]["bytes"]["upload_per_device_round"] == 0
        assert m[c]["generic"] != m["pretrained"]["generic"]  # the generic model moved
    # as many images and epochs as all devices together: the same steps within rounding
    assert m["public_more"]["total_steps"] == pytest.approx(m["fedavg"]["total_steps"], rel=0.2)
    # the pooled learner also trains on the public negatives it mines
    assert m["centralized"]["total_steps"] > m["fedavg"]["total_steps"]
    assert m["fedavg"]["bytes"]["upload_per_device_round"] > 0


def test_personalized_evaluation_uses_cross_device_impostors_and_dfc_is_paired(protocol_run):
    _, res = protocol_run
    fedfr = res["methods"]["fedfr"]
    assert "personalized_backbone" in fedfr and "personalized_backbone" not in res["methods"][
        "fedavg"]
    per_dev = fedfr["per_seed"]["0"]["personalized_per_device"]
    assert len(per_dev) == 4
    # with every other device's test images as impostors, 1e-3 is resolvable per device
    assert all(d["tar@far=1e-03"] is not None for d in per_dev)
    dfc = res["paired"]["dfc"]["fedfr"]["personalized.tar@far=1e-03"]["per_device"]
    assert dfc["n"] == 4
    pf = res["paired"]["fedfr"]["pretrained"]["personalized.tar@far=1e-03"]["per_device"]
    assert pf["n"] == 4 and pf["low"] is not None


def test_selection_refuses_a_test_seed(tmp_path):
    from fedfr.sim.runner import select_hyperparameters

    cfg = SimConfig("tiny", ("fedavg",), tmp_path, seeds=(1000,), select=True)
    with pytest.raises(ValueError, match="validation data set"):
        select_hyperparameters(cfg)
    with pytest.raises(ValueError, match="no hyperparameter grid"):
        SimConfig("small", ("fedavg",), tmp_path, select=True)
