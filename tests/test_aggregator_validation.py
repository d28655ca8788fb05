"""The server's validation set, per-version evaluation and the publication policy.

Files and the pack hold-out are tested directly; everything the aggregator does is tested over
HTTP against the real server (SQLite file, and PostgreSQL for the round lifecycle), with metrics
checked against an independent computation with :mod:`fedfr.evaluation` on the checkpoint the
server stores.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from aggsupport import (
    FakeDevice,
    Server,
    create_pg_database,
    drop_pg_database,
    enrollment_token,
    get_round,
    make_checkpoint,
    make_pack,
    pg_available,
    wait_round,
)

from fedfr.errors import DataFormatError
from fedfr.fl import GlobalModel, SharedUpdate
from fedfr.fl.wire import load_validation_set, save_validation_set

FINISHED = ("completed", "rejected", "failed")


# ------------------------------------------------------------------------------ helpers
def make_validation_set(path: Path, *, identities: int = 12, per: int = 4, size: int = 64,
                        seed: int = 0) -> Path:
    """Identities = random prototype crops; their images = the prototype + noise (a random
    network separates them: TAR 1 at every FAR, so a damaged model's drop is unambiguous)."""
    rng = np.random.default_rng(seed)
    proto = rng.integers(0, 256, (identities, size, size, 3))
    images = np.clip(np.repeat(proto, per, 0) + rng.normal(0, 20, (identities * per, size,
                                                                    size, 3)), 0, 255)
    return save_validation_set(path, images.astype(np.uint8),
                               np.repeat(np.arange(100, 100 + identities), per),
                               metadata={"source": "test"})


def damaged_backbone(model: GlobalModel) -> dict[str, np.ndarray]:
    """The backbone with its last 1x1 convolution zeroed and its BN shifted: every image gets
    the same (non-zero) embedding, so TAR falls to 0 — a small change by norm (~0.17 of the
    backbone's, inside the server's default bound of 1.0)."""
    bb = {k: np.array(v) for k, v in model.backbone.items()}
    bb["conv_sep.layers.0.weight"] = np.zeros_like(bb["conv_sep.layers.0.weight"])
    bb["conv_sep.layers.1.bias"] = np.full_like(bb["conv_sep.layers.1.bias"], 0.5)
    return bb


def damaging_update(model: GlobalModel, num_samples: int = 10) -> SharedUpdate:
    return SharedUpdate({"backbone." + k: v for k, v in damaged_backbone(model).items()},
                        num_samples, {"loss": 1.0})


def independent_metrics(ckpt: Path, val: Path) -> dict:
    """TAR@FAR, EER, AUC and rank-1 of a checkpoint on a validation file, computed here with
    fedfr.evaluation / fedfr.metrics on every pair (these sets are below the impostor cap)."""
    from fedfr.evaluation import pairs_report
    from fedfr.metrics import cosine_similarity_matrix, pair_scores, rank1_accuracy
    from fedfr.train.recognizer import generic_embedder

    vs = load_validation_set(val)
    emb = generic_embedder(GlobalModel.load(ckpt))(vs.images)
    i, j = np.triu_indices(len(vs.labels), k=1)
    rep = pairs_report(pair_scores(emb, np.stack([i, j], 1)), vs.labels[i] == vs.labels[j],
                       (1e-1, 1e-2, 1e-3))
    first = np.array([np.flatnonzero(vs.labels == c)[0] for c in np.unique(vs.labels)])
    probe = np.setdiff1d(np.arange(len(vs.labels)), first)
    rank1 = rank1_accuracy(cosine_similarity_matrix(emb[probe], emb[first]), vs.labels[first],
                           vs.labels[probe])
    return {"tar_at_far": rep["tar_at_far"], "eer": rep["eer"], "auc": rep["auc"],
            "rank1": rank1, "num_genuine": rep["num_genuine"],
            "num_impostor": rep["num_impostor"]}


def assert_metrics_match(got: dict, want: dict) -> None:
    assert got is not None and "error" not in got, got
    assert got["num_genuine"] == want["num_genuine"]
    assert got["num_impostor"] == want["num_impostor"]
    assert got["tar_at_far"] == pytest.approx(want["tar_at_far"], abs=1e-9)
    for k in ("eer", "auc", "rank1"):
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


def download(srv: Server, version: int, out: Path) -> Path:
    with srv.admin() as c:
        r = c.get(f"/v1/admin/models/{version}")
        assert r.status_code == 200, r.text
    out.write_bytes(r.content)
    return out


def upload_val(c: httpx.Client, path: Path) -> httpx.Response:
    return c.post("/v1/admin/validation-sets", content=path.read_bytes())


def admin_cli(srv: Server, *args: str, capsys) -> str:
    from aggregator.cli import main

    code = main(["admin", "--server", srv.url, "--token", srv.admin_token, *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("val_artifacts")
    return (make_checkpoint(d / "ckpt.safetensors"), make_pack(d / "pack.safetensors"),
            make_validation_set(d / "val.safetensors"))


def _server(request, tmp_path, env: dict | None = None):
    url = None
    if getattr(request, "param", "sqlite") == "postgresql":
        if not pg_available():
            pytest.skip("no PostgreSQL on 127.0.0.1:5432")
        url = create_pg_database()
    srv = Server(tmp_path / "data", database_url=url, env=env or {}).start()
    return srv, url


# ------------------------------------------------------------------------------ files
def test_validation_set_file_round_trip_and_refusals(tmp_path, artifacts):
    _, pack, _ = artifacts
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (6, 32, 32, 3), np.uint8)
    labels = np.array([3, 3, 5, 5, 5, 9])
    p = save_validation_set(tmp_path / "v.safetensors", imgs, labels, metadata={"k": 1})
    vs = load_validation_set(p)
    np.testing.assert_array_equal(vs.images, imgs)
    assert vs.labels.dtype == np.int64 and vs.labels.tolist() == labels.tolist()
    assert vs.metadata == {"k": 1} and vs.num_identities == 3

    def refused(path: Path, *words: str) -> None:
        with pytest.raises(DataFormatError) as e:
            load_validation_set(path)
        for w in words:
            assert w in str(e.value), str(e.value)

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(p.read_bytes()[:100])
    refused(bad, "not a valid safetensors file")
    bad.write_bytes(b"\x00" * 3)
    refused(bad, "not a valid safetensors file")
    refused(pack, "not a fedfr validation set", "public pack")
    from safetensors.numpy import save_file

    meta = {"format": "fedfr-validation-set", "format_version": "2"}
    save_file({"images": imgs, "labels": labels}, str(bad), metadata=meta)
    refused(bad, "unsupported validation set version '2'")
    meta["format_version"] = "1"
    save_file({"images": imgs.astype(np.float32), "labels": labels}, str(bad), metadata=meta)
    refused(bad, "uint8 (N, H, W, 3)")
    save_file({"images": imgs, "labels": labels[:5]}, str(bad), metadata=meta)
    refused(bad, "labels must be (N,)")
    save_file({"images": imgs, "labels": np.zeros(6, np.int64)}, str(bad), metadata=meta)
    refused(bad, "at least 2 identities")
    save_file({"images": imgs, "labels": np.arange(6)}, str(bad), metadata=meta)
    refused(bad, "at least 2 images")
    save_file({"images": imgs, "labels": labels, "extra": labels}, str(bad), metadata=meta)
    refused(bad, "exactly 'images' and 'labels'")
    with pytest.raises(DataFormatError):  # the saver refuses what the loader would
        save_validation_set(tmp_path / "x.safetensors", imgs, np.arange(6))


def test_validation_pairs_are_all_genuine_and_a_bounded_deterministic_impostor_sample():
    from fedfr.evaluation import validation_pairs

    labels = np.repeat(np.arange(30), 3)
    pairs, same = validation_pairs(labels)
    assert same.sum() == 30 * 3 and (~same).sum() == 90 * 89 // 2 - 90
    pairs, same = validation_pairs(labels, max_impostor_pairs=500, seed=7)
    again, _ = validation_pairs(labels, max_impostor_pairs=500, seed=7)
    np.testing.assert_array_equal(pairs, again)
    assert same.sum() == 90 and (~same).sum() == 500
    assert (pairs[:, 0] < pairs[:, 1]).all() and len(np.unique(pairs, axis=0)) == len(pairs)
    assert (labels[pairs[~same, 0]] != labels[pairs[~same, 1]]).all()
    other, _ = validation_pairs(labels, max_impostor_pairs=500, seed=8)
    assert not np.array_equal(pairs, other)


def test_publication_decision():
    from aggregator.service import publication_decision
    from aggregator.settings import parse_metric

    tar = parse_metric("tar@far=0.01")
    assert tar.name == "tar@far=1e-02"
    base = {"tar_at_far": {"1e-02": 0.90}, "eer": 0.05}
    d = publication_decision(tar, 0.02, base, {"tar_at_far": {"1e-02": 0.87}})
    assert not d["published"] and d["reason"].startswith("regression")
    assert (d["base"], d["candidate"], d["max_regression"]) == (0.90, 0.87, 0.02)
    assert publication_decision(tar, 0.05, base, {"tar_at_far": {"1e-02": 0.87}})["published"]
    assert publication_decision(tar, None, base, {"tar_at_far": {"1e-02": 0.1}})["published"]
    assert publication_decision(tar, 0.0, base, None)["published"]  # no validation set
    assert not publication_decision(tar, 0.5, base, {"error": "x"})["published"]
    assert publication_decision(tar, None, base, {"error": "x"})["published"]
    eer = parse_metric("EER")  # lower is better
    assert not publication_decision(eer, 0.01, base, {"eer": 0.07})["published"]
    assert publication_decision(eer, 0.01, base, {"eer": 0.01})["published"]
    for bad in ("tar@far=1e-05", "acc", "tar@far=x"):
        with pytest.raises(ValueError):
            parse_metric(bad)


def test_public_pack_holds_the_validation_identities_out(tmp_path, capsys):
    from fedfr.cli import main
    from fedfr.data.manifest import SyntheticDataset
    from fedfr.train.local_state import PublicPack

    data = tmp_path / "tiny"
    assert main(["data", "synth", "--profile", "tiny", "--out", str(data), "--json"]) == 0
    capsys.readouterr()
    ds = SyntheticDataset.load(data)
    pub_labels = np.asarray(ds.public.labels)
    runs = []
    for name in ("a", "b"):
        pack, val = tmp_path / f"pack-{name}.safetensors", tmp_path / f"val-{name}.safetensors"
        assert main(["public-pack", "--data", str(data), "--per-class", "2", "--out", str(pack),
                     "--validation-identities", "10", "--validation-out", str(val),
                     "--seed", "3", "--json"]) == 0
        runs.append((json.loads(capsys.readouterr().out), pack, val))
    info, pack, val = runs[0]
    vs, pk = load_validation_set(val), PublicPack.load(pack)
    held = set(vs.labels.tolist())
    assert len(held) == 10 and info["validation"]["identities"] == 10
    # every image of the held-out identities is in the validation set, none in the pack
    assert len(vs.labels) == int(np.isin(pub_labels, list(held)).sum())
    assert held.isdisjoint(pk.labels.tolist())
    assert set(pk.labels.tolist()) | held == set(pub_labels.tolist())
    assert info["classes"] == len(set(pub_labels.tolist())) - 10
    pub = ds.public.load()
    for img, lab in zip(vs.images[:3], vs.labels[:3], strict=True):  # the public crops
        hits = np.flatnonzero((pub == img).all(axis=(1, 2, 3)))
        assert hits.size and pub_labels[hits[0]] == lab
    assert vs.metadata["identities"] == sorted(held)
    # deterministic by --seed: the same contents twice (safetensors' header order varies)
    vs_b, pk_b = load_validation_set(runs[1][2]), PublicPack.load(runs[1][1])
    np.testing.assert_array_equal(vs_b.images, vs.images)
    np.testing.assert_array_equal(vs_b.labels, vs.labels)
    np.testing.assert_array_equal(pk_b.images, pk.images)
    np.testing.assert_array_equal(pk_b.labels, pk.labels)
    assert main(["public-pack", "--data", str(data), "--out", str(tmp_path / "p.safetensors"),
                 "--validation-identities", "10", "--validation-out", str(tmp_path / "o"),
                 "--seed", "4", "--json"]) == 0
    other = load_validation_set(tmp_path / "o")
    assert set(other.labels.tolist()) != held
    # usage errors
    for bad in (["--validation-identities", "3"], ["--validation-out", str(tmp_path / "z")],
                ["--validation-identities", "1", "--validation-out", str(tmp_path / "z")],
                ["--validation-identities", "100", "--validation-out", str(tmp_path / "z")]):
        assert main(["public-pack", "--data", str(data), "--out",
                     str(tmp_path / "q.safetensors"), *bad]) == 1, bad
        assert "validation" in capsys.readouterr().err


# ------------------------------------------------------------------------------ over HTTP
@pytest.fixture
def srv(request, tmp_path):
    srv, url = _server(request, tmp_path)
    yield srv
    srv.stop()
    if url:
        drop_pg_database(url)


def test_publish_with_a_validation_set_records_its_metrics(srv, artifacts, tmp_path, capsys):
    ckpt, pack, val = artifacts
    with srv.admin() as c:
        # refusals: a clear 400, never a 500, nothing stored
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(val.read_bytes()[: val.stat().st_size // 2])
        r = upload_val(c, bad)
        assert r.status_code == 400 and r.json()["reason"] == "invalid_validation_set", r.text
        r = upload_val(c, pack)
        assert r.status_code == 400 and "public pack" in r.json()["detail"], r.text
        r = c.post("/v1/admin/models", content=ckpt.read_bytes(),
                   params={"validation_set": "0" * 64})
        assert r.status_code == 400 and r.json()["reason"] == "unknown_validation_set", r.text
        r = c.post("/v1/admin/models", content=ckpt.read_bytes(),
                   params={"validation_set": "xyz"})
        assert r.status_code == 422, r.text
        assert c.get("/v1/admin/models").json() == []

        r = upload_val(c, val)
        assert r.status_code == 201, r.text
        up = r.json()
        assert (up["images"], up["identities"], up["image_size"]) == (48, 12, [64, 64])
        r = c.post("/v1/admin/models", content=ckpt.read_bytes(),
                   params={"validation_set": up["sha256"]})
        assert r.status_code == 201, r.text
        v1 = r.json()
    want = independent_metrics(ckpt, val)
    assert v1["status"] == "published" and v1["validation_set"]["sha256"] == up["sha256"]
    assert_metrics_match(v1["validation"], want)
    assert v1["validation"]["num_images"] == 48 and v1["validation"]["num_identities"] == 12
    assert want["tar_at_far"]["1e-02"] == 1.0  # the set is easy for this model (see above)

    with srv.admin() as c:
        # GET /v1/admin/models/{v}: the metrics as JSON, the checkpoint otherwise
        info = c.get("/v1/admin/models/1", headers={"Accept": "application/json"}).json()
        assert info["validation"] == v1["validation"] and info["current"] is True
        assert c.get("/v1/admin/models/1").content[:8] != b'{"versio'
        # a version with a parent inherits its validation set and is evaluated on it
        ckpt2 = make_checkpoint(tmp_path / "c2.safetensors", seed=5)
        r = c.post("/v1/admin/models", content=ckpt2.read_bytes(), params={"parent_version": 1})
        assert r.status_code == 201, r.text
        v2 = r.json()
        assert v2["validation_set"] == v1["validation_set"]
        assert_metrics_match(v2["validation"], independent_metrics(ckpt2, val))
        # a model whose embeddings are unusable (all zero) is refused with a reason
        zero = GlobalModel.load(ckpt2)
        bb = dict(zero.backbone)
        bb["conv_sep.layers.0.weight"] = np.zeros_like(bb["conv_sep.layers.0.weight"])
        zero.with_(backbone=bb).save(tmp_path / "zero.safetensors")
        r = c.post("/v1/admin/models", content=(tmp_path / "zero.safetensors").read_bytes(),
                   params={"parent_version": 1})
        assert r.status_code == 400 and r.json()["reason"] == "evaluation_failed", r.text
        # no validation set, no parent: no metrics, published as before
        r = c.post("/v1/admin/models", content=ckpt.read_bytes())
        assert r.status_code == 201, r.text
        v3 = r.json()
    assert v3["validation"] is None and v3["validation_set"] is None
    ms = srv.models()
    assert [(m["version"], m["current"]) for m in ms] == [(1, False), (2, False), (3, True)]
    assert ms[0]["validation"] == v1["validation"]

    # the CLI: publish with --validation-set, the compact column, --json, `model V`
    out = admin_cli(srv, "publish-model", str(ckpt), "--validation-set", str(val),
                    capsys=capsys)
    assert out.startswith("published v4 ") and "val TAR@1e-2 1.000" in out
    assert "validation (48 images, 12 identities" in out
    text = admin_cli(srv, "models", capsys=capsys)
    lines = text.splitlines()
    assert "val TAR@1e-2 1.000 EER 0.000" in lines[0] and "val —" in lines[2]
    got = json.loads(admin_cli(srv, "--json", "models", capsys=capsys))
    assert got[3]["validation"]["tar_at_far"] == v1["validation"]["tar_at_far"]
    assert "TAR@FAR 1e-01 1.0000" in admin_cli(srv, "model", "1", capsys=capsys)


@pytest.mark.parametrize("srv_policy", ["sqlite", "postgresql"], indirect=True)
def test_round_versions_are_evaluated_and_the_policy_rejects_a_regression(
        srv_policy, artifacts, tmp_path, capsys):
    srv = srv_policy
    ckpt, pack, val = artifacts
    with srv.admin() as c:
        sha = upload_val(c, val).json()["sha256"]
        pk = c.post("/v1/admin/public-packs", content=pack.read_bytes()).json()["sha256"]
        r = c.post("/v1/admin/models", content=ckpt.read_bytes(),
                   params={"validation_set": sha, "public_pack": pk})
        assert r.status_code == 201, r.text
        v1 = r.json()
        # a series of 3 rounds; the server's FEDFR_PUBLISH_MAX_REGRESSION is its margin
        r = c.post("/v1/admin/rounds", json={"target": 2, "over_selection": 1.0,
                                              "deadline_seconds": 300, "repeat": 3})
        assert r.status_code == 201, r.text
        rnd = r.json()
    assert rnd["max_regression"] == 0.05
    tok = enrollment_token(srv)
    devs = [FakeDevice(srv.url, tok, seed=i) for i in range(3)]

    # round 1: small updates -> published, evaluated
    for d in devs[:2]:
        _, _, r = d.participate(scale=1e-3)
        assert r.status_code == 202, r.text
    done = wait_round(srv, rnd["id"], FINISHED)
    assert done["status"] == "completed" and done["result_version"] == 2, done
    v2 = srv.models()[1]
    assert v2["status"] == "published" and v2["validation_set"] == v1["validation_set"]
    assert_metrics_match(v2["validation"],
                         independent_metrics(download(srv, 2, tmp_path / "v2.st"), val))
    pub = done["stats"]["publication"]
    assert pub["published"] and pub["metric"] == "tar@far=1e-02" and pub["max_regression"] == 0.05
    assert pub["base"] == v1["validation"]["tar_at_far"]["1e-02"]
    assert pub["candidate"] == v2["validation"]["tar_at_far"]["1e-02"]
    assert pub["candidate_version"] == 2 and done["stats"]["evaluation_seconds"] > 0

    # round 2 (the series goes on from v2): damaging updates -> rejected, v2 stays current
    rnd2 = next(x for x in srv.admin().get("/v1/admin/rounds").json() if x["id"] != rnd["id"])
    assert rnd2["base_version"] == 2 and rnd2["max_regression"] == 0.05
    for d in devs[:2]:
        task = d.task()
        assert task["model_version"] == 2
        r = d.upload(task, d.encode(task, damaging_update(d.model(task))))
        assert r.status_code == 202, r.text
    done2 = wait_round(srv, rnd2["id"], FINISHED)
    assert done2["status"] == "rejected" and done2["result_version"] is None, done2
    assert done2["reason"].startswith("regression: tar@far=1e-02 0.0000 vs the base's 1.0000")
    assert "margin 0.05" in done2["reason"] and "1 remaining round(s)" in done2["reason"]
    pub2 = done2["stats"]["publication"]
    assert (pub2["published"], pub2["base"], pub2["candidate"], pub2["max_regression"]) == (
        False, 1.0, 0.0, 0.05)
    assert pub2["candidate_version"] == 3
    ms = srv.models()
    assert [(m["version"], m["status"], m["current"]) for m in ms] == [
        (1, "published", False), (2, "published", True), (3, "rejected", False)]
    assert ms[2]["round_id"] == rnd2["id"] and ms[2]["parent_version"] == 2
    assert_metrics_match(ms[2]["validation"],
                         independent_metrics(download(srv, 3, tmp_path / "v3.st"), val))
    # the series stopped: no round from the rejected version; check-ins get no task
    with srv.admin() as c:
        assert len(c.get("/v1/admin/rounds").json()) == 2
        assert c.get("/v1/admin/rounds", params={"status": "rejected"}).json()[0]["id"] == \
            rnd2["id"]
    assert devs[2].checkin().status_code == 204
    metrics = httpx.get(srv.url + "/metrics").text
    assert 'fedfr_rounds{status="rejected"} 1' in metrics
    assert 'fedfr_rounds_finished_total{status="rejected"} 1' in metrics
    assert "fedfr_model_versions_rejected_total 1" in metrics
    assert "fedfr_current_model_version 2" in metrics
    # the CLI shows the decision
    out = admin_cli(srv, "round", str(rnd2["id"]), capsys=capsys)
    assert "rejected" in out and "-> v3 rejected" in out and '"candidate": 0.0' in out
    text = admin_cli(srv, "models", capsys=capsys)
    assert "REJECTED" in text.splitlines()[2] and "(current)" in text.splitlines()[1]

    with srv.admin() as c:
        # a rejected version cannot be a base
        r = c.post("/v1/admin/rounds", json={"target": 1, "base_version": 3})
        assert r.status_code == 409 and r.json()["reason"] == "rejected_model_version", r.text
        r = c.post("/v1/admin/rounds", json={"target": 1, "max_regression": -1})
        assert r.status_code == 422, r.text
        # max_regression: null -> no policy for this round: the same damage is published
        r = c.post("/v1/admin/rounds", json={"target": 1, "max_regression": None,
                                              "deadline_seconds": 300})
        assert r.status_code == 201 and r.json()["max_regression"] is None, r.text
        rid = r.json()["id"]
    task = devs[2].task()
    assert task["model_version"] == 2
    r = devs[2].upload(task, devs[2].encode(task, damaging_update(devs[2].model(task))))
    assert r.status_code == 202, r.text
    done3 = wait_round(srv, rid, FINISHED)
    assert done3["status"] == "completed" and done3["result_version"] == 4, done3
    assert srv.models()[-1]["validation"]["tar_at_far"]["1e-02"] == 0.0
    assert srv.models()[-1]["current"] is True
    # and a margin that the same drop fits in publishes too (CLI flag)
    admin_cli(srv, "start-round", "--target", "1", "--base", "2", "--max-regression", "1.0",
              "--deadline", "300", capsys=capsys)
    (last,) = [x for x in srv.admin().get("/v1/admin/rounds").json() if x["status"] == "open"]
    assert last["max_regression"] == 1.0
    task = devs[0].task()
    r = devs[0].upload(task, devs[0].encode(task, damaging_update(devs[0].model(task))))
    assert r.status_code == 202, r.text
    done4 = wait_round(srv, last["id"], FINISHED)
    assert done4["status"] == "completed", done4
    assert done4["stats"]["publication"]["published"] is True
    assert done4["stats"]["publication"]["regression"] == 1.0
    for d in devs:
        d.close()


def test_a_round_without_validation_set_publishes_as_before(srv, artifacts):
    ckpt, _, _ = artifacts
    with srv.admin() as c:
        assert c.post("/v1/admin/models", content=ckpt.read_bytes()).status_code == 201
        r = c.post("/v1/admin/rounds", json={"target": 1, "max_regression": 0.0,
                                              "deadline_seconds": 300})
        assert r.status_code == 201, r.text
    dev = FakeDevice(srv.url, enrollment_token(srv))
    task = dev.task()
    r = dev.upload(task, dev.encode(task, damaging_update(dev.model(task))))
    assert r.status_code == 202, r.text
    done = wait_round(srv, r.json()["round_id"], FINISHED)
    assert done["status"] == "completed" and done["result_version"] == 2
    assert done["stats"]["publication"]["published"] is True
    assert "no validation set" in done["stats"]["publication"]["reason"]
    v2 = srv.models()[1]
    assert v2["validation"] is None and v2["current"] and get_round(srv, done["id"])["reason"] \
        is None
    dev.close()


@pytest.fixture
def srv_policy(request, tmp_path):
    srv, url = _server(request, tmp_path, {"FEDFR_PUBLISH_MAX_REGRESSION": "0.05"})
    yield srv
    srv.stop()
    if url:
        drop_pg_database(url)


def test_sigkill_during_evaluation_is_redone_and_publishes_once(artifacts, tmp_path):
    """Evaluation runs under the aggregation claim: the lease is renewed while it works, a
    SIGKILL in the middle leaves the round ``aggregating`` with no version, and the restarted
    server redoes aggregation + evaluation and publishes exactly one evaluated version."""
    import sqlite3
    import time

    ckpt, _, _ = artifacts
    # evaluation must outlast several renewals (every lease / 3 = 0.4 s): 600 images in
    # batches of 2 take ~2 s here (batches of 128: ~1 s, and CI once finished before the first
    # renewal was seen); 300 renewal points, each batch far below the lease. 600 images keep
    # the impostor pairs under the cap, so independent_metrics sees the same pairs.
    val = make_validation_set(tmp_path / "big.safetensors", identities=60, per=10, seed=3)
    srv = Server(tmp_path / "data", env={"FEDFR_AGGREGATION_LEASE": "1.2",
                                         "FEDFR_EVALUATION_BATCH_SIZE": "2"}).start()
    db = tmp_path / "data" / "aggregator.db"

    def row() -> dict:
        con = sqlite3.connect(db)
        con.row_factory = sqlite3.Row
        try:
            r = dict(con.execute("SELECT status, claim, lease_until FROM rounds").fetchone())
            r["versions"] = con.execute("SELECT count(*) FROM model_versions").fetchone()[0]
            return r
        finally:
            con.close()

    try:
        with srv.admin() as c:
            sha = upload_val(c, val).json()["sha256"]
            t0 = time.monotonic()
            r = c.post("/v1/admin/models", content=ckpt.read_bytes(),
                       params={"validation_set": sha})
            assert r.status_code == 201, r.text
            publish_seconds = time.monotonic() - t0
            v1 = r.json()
            rid = c.post("/v1/admin/rounds", json={"target": 1, "deadline_seconds": 600}
                         ).json()["id"]
        dev = FakeDevice(srv.url, enrollment_token(srv))
        _, _, r = dev.participate()
        assert r.status_code == 202, r.text
        # the aggregation of one tiny update takes milliseconds: 'aggregating' is evaluation
        seen, t_end = [], time.monotonic() + 60
        while time.monotonic() < t_end:
            now = row()
            if now["status"] == "open":
                time.sleep(0.02)
                continue
            seen.append(now)
            if now["status"] != "aggregating" or now["lease_until"] > seen[0]["lease_until"]:
                break
            time.sleep(0.05)
        assert seen and seen[0]["status"] == "aggregating", (seen, publish_seconds)
        assert seen[-1]["status"] == "aggregating" and seen[-1]["versions"] == 1, seen
        # the lease moved on while evaluating (renewed between batches), same claim
        assert seen[-1]["lease_until"] > seen[0]["lease_until"], seen
        assert seen[-1]["claim"] == seen[0]["claim"]
        srv.kill()
        dead = row()
        assert dead["status"] == "aggregating" and dead["versions"] == 1, dead
        srv.start()
        done = wait_round(srv, rid, FINISHED, timeout=120)
        assert done["status"] == "completed" and done["result_version"] == 2, done
        ms = srv.models()
        assert [m["version"] for m in ms] == [1, 2] and ms[1]["current"]
        assert_metrics_match(ms[1]["validation"],
                             independent_metrics(download(srv, 2, tmp_path / "v2.st"), val))
        assert ms[0]["validation"] == v1["validation"]
        dev.close()
    finally:
        srv.stop()
