"""A full round over HTTP against the real server, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
from aggsupport import (
    FakeDevice,
    Server,
    create_pg_database,
    drop_pg_database,
    enrollment_token,
    make_checkpoint,
    make_pack,
    pg_available,
    publish,
    start_round,
    wait_round,
)

from fedfr.fl import GlobalModel, aggregate_updates


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("artifacts")
    return make_checkpoint(d / "ckpt.safetensors"), make_pack(d / "pack.safetensors")


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request, tmp_path):
    url = None
    if request.param == "postgresql":
        if not pg_available():
            pytest.skip("no PostgreSQL on 127.0.0.1:5432")
        url = create_pg_database()
    srv = Server(tmp_path / "data", database_url=url).start()
    yield srv
    srv.stop()
    if url:
        drop_pg_database(url)


def test_full_round_publishes_the_fedavg_of_the_updates(server, artifacts, tmp_path):
    ckpt, pack = artifacts
    v1 = publish(server, ckpt, pack)
    assert v1["version"] == 1 and v1["public_pack"]["size"] == pack.stat().st_size
    tok = enrollment_token(server)
    rnd = start_round(server, target=3, min_devices=2, over_selection=1.5,
                      deadline_seconds=120, config={"method": "fedfr", "epochs": 1})
    assert rnd["capacity"] == 5
    devices = [FakeDevice(server.url, tok, seed=i) for i in range(3)]
    updates = []
    for i, d in enumerate(devices):
        task, upd, r = d.participate(num_samples=10 * (i + 1), metrics={"loss": float(i)})
        assert task["config"] == {"method": "fedfr", "epochs": 1}
        assert task["public_pack"]["sha256"] == v1["public_pack"]["sha256"]
        assert r.status_code == 202, r.text
        assert r.json()["num_samples"] == 10 * (i + 1)
        updates.append(upd)
    done = wait_round(server, rnd["id"])
    assert done["status"] == "completed" and done["result_version"] == 2
    assert done["stats"]["devices"] == 3 and done["stats"]["samples"] == 60
    # the sample-weighted mean of the reported losses (aggregates only)
    assert done["stats"]["metrics"]["loss"] == pytest.approx((0 * 10 + 1 * 20 + 2 * 30) / 60)

    r = devices[0].http.get("/v1/models/2")
    assert r.status_code == 200
    got_path = tmp_path / "v2.safetensors"
    got_path.write_bytes(r.content)
    got = GlobalModel.load(got_path)
    base = GlobalModel.load(ckpt)
    want_arrays, want_pub = aggregate_updates(updates, base.public_embeddings)
    for k, v in got.backbone.items():
        np.testing.assert_array_equal(v, want_arrays["backbone." + k])
    np.testing.assert_array_equal(got.public_embeddings, want_pub)
    assert got.version == "2" and got.metadata["parent_version"] == 1
    # the base version is untouched
    r1 = devices[0].http.get("/v1/models/1")
    assert r1.content == ckpt_bytes_as_published(server, 1)
    for d in devices:
        d.close()


def ckpt_bytes_as_published(server, version):
    with server.admin() as c:
        sha = next(m for m in c.get("/v1/admin/models").json() if m["version"] == version)
    import hashlib

    path = server.data_dir / "blobs" / sha["sha256"][:2] / sha["sha256"][2:4] / sha["sha256"]
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha["sha256"]
    return data


def test_the_service_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, aggregator.app, aggregator.service, aggregator.cli, aggregator.db; "
            "app = aggregator.app; bad = [m for m in ('torch', 'torchvision') if m in sys.modules];"
            " print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
