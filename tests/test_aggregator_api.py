"""The aggregator's REST contract, driven over HTTP against the real server (SQLite).

One module-scoped server carries most tests: each test that opens a round closes or aborts it
before it ends (only one round may be in progress at a time). Every refusal is checked for its
status, its problem body's ``reason``, and that nothing changed (the round's counters, the model
versions, the blob store) while ``/metrics`` counted it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import stat
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from aggsupport import (
    FakeDevice,
    Server,
    enrollment_token,
    get_round,
    make_checkpoint,
    make_pack,
    publish,
    start_round,
    wait_round,
)
from safetensors.numpy import save as st_save

PROBLEM = "application/problem+json"


# ----------------------------------------------------------------------------- helpers
def problem(r: httpx.Response, status: int, reason: str) -> dict:
    """Assert ``r`` is an RFC 9457 problem with this status and reason; its body."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith(PROBLEM), r.headers["content-type"]
    body = r.json()
    assert body["reason"] == reason, body
    assert body["status"] == status and body["detail"], body
    return body


_METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[a-zA-Z_]+="[^"]*"'
                          r'(?:,[a-zA-Z_]+="[^"]*")*\})?) (\S+)$')


def metrics(s: Server) -> dict[str, float]:
    r = httpx.get(s.url + "/metrics", timeout=30)
    assert r.status_code == 200
    out = {}
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            continue
        m = _METRIC_LINE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out[m.group(1)] = float(m.group(2))
    return out


def rejected(s: Server, reason: str) -> float:
    return metrics(s).get(f'fedfr_updates_rejected_total{{reason="{reason}"}}', 0.0)


def model_versions(s: Server) -> list[dict]:
    with s.admin() as c:
        r = c.get("/v1/admin/models")
        assert r.status_code == 200, r.text
        return r.json()


def blob_files(s: Server) -> set[str]:
    """Every file in the blob store (staging included)."""
    root = s.data_dir / "blobs"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def open_rounds(s: Server) -> list[dict]:
    with s.admin() as c:
        return [r for r in c.get("/v1/admin/rounds").json()
                if r["status"] in ("open", "aggregating")]


def abort_if_open(s: Server, rid: int) -> None:
    with s.admin() as c:
        if c.get(f"/v1/admin/rounds/{rid}").json()["status"] == "open":
            c.post(f"/v1/admin/rounds/{rid}/abort")


@contextlib.contextmanager
def a_round(s: Server, **body: object):
    """Start a round; abort it on the way out if it is still open."""
    assert not open_rounds(s), "a previous test left a round open"
    rnd = start_round(s, **body)
    try:
        yield rnd
    finally:
        abort_if_open(s, rnd["id"])


def raw_update(arrays: dict, *, base_version: object, round_id: object,
               num_samples: object = 10, fmt: str = "fedfr-update",
               metrics: dict | None = None) -> bytes:
    """An update file written by hand (metadata the encoder would refuse to write)."""
    meta = {"format": fmt, "format_version": "1", "base_version": str(base_version),
            "round_id": str(round_id), "num_samples": str(num_samples),
            "metrics": json.dumps({"loss": 1.0} if metrics is None else metrics)}
    return st_save({k: np.array(v, order="C") for k, v in arrays.items()}, metadata=meta)


def first_float_key(arrays: dict) -> str:
    return next(k for k, v in arrays.items()
                if k.startswith("backbone.") and v.dtype == np.float32 and v.ndim == 4)


def devices(ctx, n: int, seed: int = 0) -> list[FakeDevice]:
    return [FakeDevice(ctx.server.url, ctx.tok, seed=seed + i) for i in range(n)]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("artifacts")
    return make_checkpoint(d / "ckpt.safetensors"), make_pack(d / "pack.safetensors")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, artifacts):
    ckpt, pack = artifacts
    srv = Server(tmp_path_factory.mktemp("api") / "data").start()
    try:
        v1 = publish(srv, ckpt, pack)
        yield SimpleNamespace(server=srv, v1=v1, tok=enrollment_token(srv, max_uses=10_000),
                              ckpt=ckpt, pack=pack)
    finally:
        srv.stop()
    assert "Traceback" not in srv.log_text(), srv.log_text()[-5000:]


# ----------------------------------------------------------------------------- uploads
def _good(a: dict, t: dict, **kw: object) -> bytes:
    return raw_update(a, base_version=t["model_version"], round_id=t["round_id"], **kw)


def _set(a: dict, key: str, value: np.ndarray) -> dict:
    out = dict(a)
    out[key] = value
    return out


def _drop(a: dict, key: str) -> dict:
    out = dict(a)
    del out[key]
    return out


def _nan(a: dict) -> dict:
    k = first_float_key(a)
    v = a[k].copy()
    v.flat[3] = np.nan
    return _set(a, k, v)


def _plus(a: dict, x: float) -> dict:
    return {k: (v + x).astype(v.dtype) if k.startswith("backbone.") and v.dtype.kind == "f"
            else v for k, v in a.items()}


#: name -> (reason, build(arrays, task) -> body, words the detail must contain)
BAD_UPLOADS = {
    "random_bytes": ("invalid_format",
                     lambda a, t: np.random.default_rng(1).bytes(5000), ["safetensors"]),
    "truncated": ("invalid_format", lambda a, t: _good(a, t)[: len(_good(a, t)) // 2],
                  ["safetensors"]),
    "wrong_format_metadata": ("invalid_format", lambda a, t: _good(a, t, fmt="fedfr-checkpoint"),
                              ["not a fedfr update"]),
    "private_tensor": ("invalid_format",
                       lambda a, t: _good(_set(a, "local.identity_weights",
                                               np.zeros((4, 64), np.float32)), t),
                       ["local.identity_weights"]),
    "missing_backbone_key": ("keys_mismatch",
                             lambda a, t: _good(_drop(a, first_float_key(a)), t), ["missing"]),
    "extra_key": ("keys_mismatch",
                  lambda a, t: _good(_set(a, "backbone.extra.weight",
                                          np.zeros(3, np.float32)), t),
                  ["backbone.extra.weight"]),
    "wrong_shape": ("shape_mismatch",
                    lambda a, t: _good(_set(a, first_float_key(a),
                                            a[first_float_key(a)][:1].copy()), t), ["shape"]),
    "wrong_dtype": ("dtype_mismatch",
                    lambda a, t: _good(_set(a, first_float_key(a),
                                            a[first_float_key(a)].astype(np.float64)), t),
                    ["float64"]),
    "nan_value": ("non_finite", lambda a, t: _good(_nan(a), t), ["NaN"]),
    "public_index_outside": ("shape_mismatch",
                             lambda a, t: _good(_set(a, "public_embeddings.index",
                                                     np.array([0, 1, 20], np.int64)), t),
                             ["outside the 20 public classes"]),
    "wrong_round_id": ("wrong_round",
                       lambda a, t: raw_update(a, base_version=t["model_version"],
                                               round_id=t["round_id"] + 7), ["round"]),
    "wrong_base_version": ("wrong_base_version",
                           lambda a, t: raw_update(a, base_version=t["model_version"] + 5,
                                                   round_id=t["round_id"]), ["version"]),
    "norm_over_bound": ("norm_bound", lambda a, t: _good(_plus(a, 10.0), t), ["exceeds"]),
    "zero_samples": ("invalid_format", lambda a, t: _good(a, t, num_samples=0),
                     ["num_samples"]),
    "samples_beyond_int32": ("invalid_format", lambda a, t: _good(a, t, num_samples=2**40),
                             ["num_samples"]),
    "body_too_large": ("too_large",
                       lambda a, t: b"\0" * (2 * t["model"]["size"] + (1 << 20) + 1),
                       ["exceeds"]),
}


@pytest.fixture(scope="class")
def up(ctx):
    """An open round (target 50) and one device assigned to it; aborted afterwards."""
    s = ctx.server
    assert not open_rounds(s)
    rnd = start_round(s, target=50, min_devices=1, deadline_seconds=600)
    dev = FakeDevice(s.url, ctx.tok, seed=11)
    task = dev.task()
    assert task["round_id"] == rnd["id"]
    upd = dev.make_update(dev.model(task))
    yield SimpleNamespace(rnd=rnd, dev=dev, task=task, arrays=upd.arrays,
                          good=dev.encode(task, upd))
    abort_if_open(s, rnd["id"])
    dev.close()


class TestUploadValidation:
    """One open round with one assigned device; every bad upload is refused and changes
    nothing; then the good one is accepted exactly once."""

    @pytest.mark.parametrize("case", list(BAD_UPLOADS))
    def test_bad_upload_is_refused_and_changes_nothing(self, ctx, up, case):
        s = ctx.server
        reason, build, words = BAD_UPLOADS[case]
        body = build(up.arrays, up.task)
        before_count, before_versions = rejected(s, reason), model_versions(s)
        before_blobs = blob_files(s)
        r = up.dev.upload(up.task, body)
        p = problem(r, 413 if reason == "too_large" else 400, reason)
        for w in words:
            assert w in p["detail"], (w, p["detail"])
        assert rejected(s, reason) == before_count + 1
        rnd = get_round(s, up.rnd["id"])
        assert rnd["status"] == "open" and rnd["num_received"] == 0
        assert model_versions(s) == before_versions
        assert blob_files(s) == before_blobs  # nothing stored, no staging file left behind

    def test_upload_without_assignment_is_forbidden(self, ctx, up):
        s = ctx.server
        other = FakeDevice(s.url, ctx.tok, seed=12)
        try:
            before = rejected(s, "not_assigned")
            problem(other.upload(up.task, up.good), 403, "not_assigned")
            assert rejected(s, "not_assigned") == before + 1
            assert get_round(s, up.rnd["id"])["num_received"] == 0
        finally:
            other.close()

    def test_upload_to_unknown_round_is_404(self, ctx, up):
        before = rejected(ctx.server, "unknown_round")
        r = up.dev.http.post("/v1/rounds/9999/updates", content=up.good)
        problem(r, 404, "unknown_round")
        assert rejected(ctx.server, "unknown_round") == before + 1

    def test_good_upload_is_accepted_once_and_a_retry_is_idempotent(self, ctx, up):
        s = ctx.server
        m0 = metrics(s)
        r = up.dev.upload(up.task, up.good)
        assert r.status_code == 202, r.text
        first = r.json()
        assert first["status"] == "accepted" and first["duplicate"] is False
        assert first["sha256"] == hashlib.sha256(up.good).hexdigest()
        assert first["size"] == len(up.good) and first["num_samples"] == 10
        # the same bytes again: the same receipt, counted once
        r2 = up.dev.upload(up.task, up.good)
        assert r2.status_code == 202, r2.text
        second = r2.json()
        assert second["duplicate"] is True
        assert {k: v for k, v in second.items() if k != "duplicate"} == {
            k: v for k, v in first.items() if k != "duplicate"}
        assert get_round(s, up.rnd["id"])["num_received"] == 1
        m1 = metrics(s)
        assert m1["fedfr_updates_accepted_total"] == m0.get("fedfr_updates_accepted_total",
                                                            0) + 1
        assert m1["fedfr_upload_bytes_total"] == m0.get("fedfr_upload_bytes_total",
                                                        0) + len(up.good)
        # a different second update: refused
        other = up.dev.encode(up.task, up.dev.make_update(up.dev.model(up.task)))
        before = rejected(s, "already_received")
        problem(up.dev.upload(up.task, other), 409, "already_received")
        assert rejected(s, "already_received") == before + 1
        assert get_round(s, up.rnd["id"])["num_received"] == 1
        # the device has nothing more to do in this round
        r = up.dev.checkin()
        assert r.status_code == 204 and int(r.headers["retry-after"]) > 0


def test_late_update_after_the_target_is_refused(ctx):
    s = ctx.server
    a, b = devices(ctx, 2, seed=20)
    with a_round(s, target=1, over_selection=2.0, deadline_seconds=120) as rnd:
        assert rnd["capacity"] == 2
        ta, tb = a.task(), b.task()
        assert ta["round_id"] == tb["round_id"] == rnd["id"]
        _, _, r = a.participate()
        assert r.status_code == 202, r.text
        done = wait_round(s, rnd["id"])
        assert done["status"] == "completed"
        versions = model_versions(s)
        before = rejected(s, "round_closed")
        late = b.encode(tb, b.make_update(b.model(tb)))
        problem(b.upload(tb, late), 409, "round_closed")
        assert rejected(s, "round_closed") == before + 1
        assert get_round(s, rnd["id"])["num_received"] == 1
        assert model_versions(s) == versions
    for d in (a, b):
        d.close()


def test_overflowing_metric_does_not_break_the_round(ctx):
    """A device's finite but huge metric overflows the sample-weighted sum: the round still
    completes and stays readable (the overflowed mean is left out of the stats)."""
    s = ctx.server
    (d,) = devices(ctx, 1, seed=25)
    with a_round(s, target=1, deadline_seconds=120) as rnd:
        task = d.task()
        upd = d.make_update(d.model(task))
        body = raw_update(upd.arrays, base_version=task["model_version"],
                          round_id=task["round_id"], num_samples=10,
                          metrics={"loss": 1e308, "acc": 0.5})
        assert d.upload(task, body).status_code == 202
        done = wait_round(s, rnd["id"])
    assert done["status"] == "completed", done["reason"]
    assert done["stats"]["metrics"] == {"acc": 0.5}
    with s.admin() as c:
        assert c.get("/v1/admin/rounds").status_code == 200
    d.close()


# ----------------------------------------------------------------------------- auth
def test_missing_and_bad_tokens_are_401(ctx):
    url = ctx.server.url
    for headers in ({}, {"Authorization": "Bearer fdt_not-a-token"},
                    {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
        r = httpx.post(url + "/v1/checkin", headers=headers)
        problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        problem(httpx.get(url + "/v1/admin/models", headers=headers), 401, "unauthorized")
        problem(httpx.get(url + "/v1/models/1", headers=headers), 401, "unauthorized")


def test_device_token_on_admin_endpoints_is_403(ctx):
    (d,) = devices(ctx, 1, seed=30)
    try:
        for method, path, kw in [("GET", "/v1/admin/models", {}),
                                 ("GET", "/v1/admin/rounds", {}),
                                 ("POST", "/v1/admin/rounds", {"json": {"target": 1}}),
                                 ("POST", "/v1/admin/enrollment-tokens", {"json": {}})]:
            problem(d.http.request(method, path, **kw), 403, "forbidden")
        assert not open_rounds(ctx.server)
    finally:
        d.close()


def test_admin_token_on_device_endpoints_is_401(ctx):
    with ctx.server.admin() as c:
        problem(c.post("/v1/checkin"), 401, "unauthorized")
        problem(c.get("/v1/models/1"), 401, "unauthorized")
        problem(c.post("/v1/rounds/1/updates", content=b"x"), 401, "unauthorized")


def test_enrollment_token_used_up(ctx):
    s = ctx.server
    tok = enrollment_token(s, max_uses=2)
    for _ in range(2):
        r = httpx.post(s.url + "/v1/devices", json={"enrollment_token": tok})
        assert r.status_code == 201, r.text
        assert r.json()["device_token"].startswith("fdt_")
    m0 = metrics(s)["fedfr_devices"]
    r = httpx.post(s.url + "/v1/devices", json={"enrollment_token": tok})
    assert "used up" in problem(r, 401, "invalid_enrollment_token")["detail"]
    assert metrics(s)["fedfr_devices"] == m0
    r = httpx.post(s.url + "/v1/devices", json={"enrollment_token": "fet_unknown"})
    problem(r, 401, "invalid_enrollment_token")


def test_expired_enrollment_token(ctx):
    s = ctx.server
    with s.admin() as c:
        r = c.post("/v1/admin/enrollment-tokens", json={"max_uses": 5, "expires_in": 0.5,
                                                        "label": "short"})
        assert r.status_code == 201, r.text
        tok = r.json()["enrollment_token"]
        assert r.json()["expires_at"] == pytest.approx(time.time() + 0.5, abs=5)
    time.sleep(1.0)
    r = httpx.post(s.url + "/v1/devices", json={"enrollment_token": tok})
    assert "expired" in problem(r, 401, "invalid_enrollment_token")["detail"]


def test_tokens_are_stored_hashed(ctx):
    s = ctx.server
    tok = enrollment_token(s, max_uses=1)
    r = httpx.post(s.url + "/v1/devices", json={"enrollment_token": tok, "platform": "x"})
    assert r.status_code == 201
    dev_id, dev_tok = r.json()["device_id"], r.json()["device_token"]
    con = sqlite3.connect(f"file:{s.data_dir / 'aggregator.db'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT * FROM devices").fetchall()
        etoks = con.execute("SELECT * FROM enrollment_tokens").fetchall()
        (h,) = con.execute("SELECT token_hash FROM devices WHERE id = ?", (dev_id,)).fetchone()
    finally:
        con.close()
    assert dev_tok not in repr(rows) and dev_tok[4:] not in repr(rows)
    assert tok not in repr(etoks)
    assert h == hashlib.sha256(dev_tok.encode()).hexdigest()
    for f in s.data_dir.glob("aggregator.db*"):  # the database, its WAL and shared memory
        raw = f.read_bytes()
        assert dev_tok.encode() not in raw and tok.encode() not in raw, f


def test_admin_token_file_is_private(ctx):
    f = ctx.server.data_dir / "admin_token"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert f.read_text().strip().startswith("fat_")


# ----------------------------------------------------------------------------- check-in
def test_checkin_without_a_round_is_204_with_retry_after(ctx):
    assert not open_rounds(ctx.server)
    (d,) = devices(ctx, 1, seed=40)
    r = d.checkin()
    assert r.status_code == 204 and r.content == b""
    assert r.headers["retry-after"] == "30"
    d.close()


def test_over_selection_caps_assignments(ctx):
    s = ctx.server
    devs = devices(ctx, 4, seed=50)
    m0 = metrics(s)
    with a_round(s, target=2, over_selection=1.5, deadline_seconds=120) as rnd:
        assert rnd["capacity"] == 3
        tasks = [d.checkin() for d in devs]
        assert [r.status_code for r in tasks] == [200, 200, 200, 204]
        assert {r.json()["round_id"] for r in tasks[:3]} == {rnd["id"]}
        t0 = tasks[0].json()
        assert t0["model_version"] == rnd["base_version"]
        assert t0["upload_url"] == f"/v1/rounds/{rnd['id']}/updates"
        # a re-check-in of an assigned device: the same task, no new assignment
        again = devs[0].checkin()
        assert again.status_code == 200 and again.json() == t0
        assert devs[3].checkin().status_code == 204
        r = get_round(s, rnd["id"])
        assert r["num_assigned"] == 3 and r["num_received"] == 0
        # after uploading, nothing more to do
        up = devs[0].upload(t0, devs[0].encode(t0, devs[0].make_update(devs[0].model(t0))))
        assert up.status_code == 202, up.text
        assert devs[0].checkin().status_code == 204
        assert devs[1].checkin().status_code == 200  # still assigned
    m1 = metrics(s)
    assert m1['fedfr_checkins_total{result="no_work"}'] - m0.get(
        'fedfr_checkins_total{result="no_work"}', 0) == 3
    assert m1["fedfr_assignments_total"] - m0.get("fedfr_assignments_total", 0) == 3
    for d in devs:
        d.close()


# ----------------------------------------------------------------------------- lifecycle
def test_deadline_with_quorum_completes(ctx):
    s = ctx.server
    (d,) = devices(ctx, 1, seed=60)
    base = model_versions(s)[-1]["version"]
    with a_round(s, target=3, min_devices=1, deadline_seconds=4) as rnd:
        _, _, r = d.participate()
        assert r.status_code == 202, r.text
        assert get_round(s, rnd["id"])["status"] == "open"  # 1 of 3: waits for the deadline
        done = wait_round(s, rnd["id"], timeout=30)
    assert done["status"] == "completed" and done["num_received"] == 1
    vs = model_versions(s)
    assert done["result_version"] == vs[-1]["version"] == base + 1
    assert vs[-1]["parent_version"] == base and vs[-1]["round_id"] == rnd["id"]
    assert vs[-1]["current"] and not any(v["current"] for v in vs[:-1])
    d.close()


def test_deadline_below_minimum_fails_and_keeps_the_base(ctx):
    s = ctx.server
    (d,) = devices(ctx, 1, seed=61)
    before = model_versions(s)
    with a_round(s, target=3, min_devices=2, deadline_seconds=4) as rnd:
        _, _, r = d.participate()
        assert r.status_code == 202, r.text
        done = wait_round(s, rnd["id"], timeout=30)
    assert done["status"] == "failed" and done["result_version"] is None
    assert "minimum" in done["reason"] and done["closed_at"] is not None
    after = model_versions(s)
    assert after == before and after[-1]["version"] == rnd["base_version"]
    # the device is told there is no work once the deadline passed
    assert d.checkin().status_code == 204
    d.close()


def test_abort_refuses_later_uploads(ctx):
    s = ctx.server
    (d,) = devices(ctx, 1, seed=62)
    versions = model_versions(s)
    with a_round(s, target=2, deadline_seconds=120) as rnd:
        task = d.task()
        with s.admin() as c:
            r = c.post(f"/v1/admin/rounds/{rnd['id']}/abort")
            assert r.status_code == 200 and r.json()["status"] == "aborted"
            assert r.json()["reason"]
            problem(c.post(f"/v1/admin/rounds/{rnd['id']}/abort"), 409, "round_not_open")
            problem(c.post(f"/v1/admin/rounds/{rnd['id']}/close"), 409, "round_not_open")
        before = rejected(s, "round_closed")
        body = d.encode(task, d.make_update(d.model(task)))
        problem(d.upload(task, body), 409, "round_closed")
        assert rejected(s, "round_closed") == before + 1
        assert get_round(s, rnd["id"])["num_received"] == 0
        assert d.checkin().status_code == 204
    assert model_versions(s) == versions
    d.close()


def test_close_with_quorum_completes_and_below_fails(ctx):
    s = ctx.server
    d1, d2 = devices(ctx, 2, seed=63)
    with a_round(s, target=3, min_devices=1, deadline_seconds=120) as rnd:
        _, _, r = d1.participate()
        assert r.status_code == 202
        with s.admin() as c:
            out = c.post(f"/v1/admin/rounds/{rnd['id']}/close")
        assert out.status_code == 200, out.text
        assert out.json()["status"] == "completed" and out.json()["result_version"]
        assert out.json()["stats"]["devices"] == 1
    assert model_versions(s)[-1]["version"] == out.json()["result_version"]
    before = model_versions(s)
    with a_round(s, target=3, min_devices=2, deadline_seconds=120) as rnd:
        _, _, r = d2.participate()
        assert r.status_code == 202
        with s.admin() as c:
            out = c.post(f"/v1/admin/rounds/{rnd['id']}/close")
        assert out.status_code == 200
        assert out.json()["status"] == "failed" and "minimum" in out.json()["reason"]
    assert model_versions(s) == before
    with s.admin() as c:
        problem(c.post("/v1/admin/rounds/424242/close"), 404, "unknown_round")
        problem(c.post("/v1/admin/rounds/424242/abort"), 404, "unknown_round")
        problem(c.get("/v1/admin/rounds/424242"), 404, "unknown_round")
    d1.close()
    d2.close()


def test_second_round_while_one_is_open_is_409(ctx):
    s = ctx.server
    with a_round(s, target=2, deadline_seconds=120) as rnd, s.admin() as c:
        before = len(c.get("/v1/admin/rounds").json())
        p = problem(c.post("/v1/admin/rounds", json={"target": 1}), 409, "round_in_progress")
        assert str(rnd["id"]) in p["detail"]
        assert len(c.get("/v1/admin/rounds").json()) == before
        assert [r["id"] for r in c.get("/v1/admin/rounds", params={"status": "open"}).json()
                ] == [rnd["id"]]


@pytest.mark.parametrize("body,status,reason", [
    ({"target": 0}, 422, "invalid_request"),
    ({"target": -3}, 422, "invalid_request"),
    ({"target": 2, "min_devices": 3}, 400, "invalid_round"),
    ({"target": 2, "min_devices": 0}, 422, "invalid_request"),
    ({"target": 2, "over_selection": 0.5}, 422, "invalid_request"),
    ({"target": 2, "deadline_seconds": 0}, 422, "invalid_request"),
    ({"target": 2, "row_weighting": "median"}, 422, "invalid_request"),
    ({"target": 2, "bogus": 1}, 422, "invalid_request"),
    ({"target": "many"}, 422, "invalid_request"),
    ({}, 422, "invalid_request"),
    ({"target": 2, "config": [1, 2]}, 422, "invalid_request"),
    ({"target": 2, "config": {"x": "y" * 70_000}}, 400, "invalid_round"),
    ({"target": 2, "base_version": 999}, 404, "unknown_model_version"),
    ({"target": 2, "base_version": 10**20}, 422, "invalid_request"),
    ({"target": 2, "repeat": 0}, 422, "invalid_request"),
])
def test_invalid_round_bodies(ctx, body, status, reason):
    s = ctx.server
    with s.admin() as c:
        n = len(c.get("/v1/admin/rounds").json())
        problem(c.post("/v1/admin/rounds", json=body), status, reason)
        assert len(c.get("/v1/admin/rounds").json()) == n


def test_repeat_starts_the_next_round_from_the_result(ctx):
    s = ctx.server
    (d,) = devices(ctx, 1, seed=70)
    with a_round(s, target=1, deadline_seconds=120, repeat=2,
                 config={"epochs": 2}) as rnd:
        _, _, r = d.participate()
        assert r.status_code == 202
        done = wait_round(s, rnd["id"])
        assert done["status"] == "completed"
    with s.admin() as c:
        nxt = [r for r in c.get("/v1/admin/rounds").json() if r["id"] > rnd["id"]]
    try:
        assert len(nxt) == 1, nxt
        nxt = nxt[0]
        assert nxt["status"] == "open" and nxt["base_version"] == done["result_version"]
        assert nxt["repeat"] == 1 and nxt["target"] == 1 and nxt["config"] == {"epochs": 2}
        assert nxt["deadline_at"] - nxt["created_at"] == pytest.approx(120, abs=1)
        task = d.task()
        assert task["round_id"] == nxt["id"]
        assert task["model_version"] == done["result_version"]
    finally:
        abort_if_open(s, nxt["id"] if isinstance(nxt, dict) else -1)
    assert not open_rounds(s)
    d.close()


# ----------------------------------------------------------------------------- downloads
def test_model_download_etag_ranges_and_304(ctx):
    (d,) = devices(ctx, 1, seed=80)
    v1 = ctx.v1
    r = d.http.get("/v1/models/1")
    assert r.status_code == 200
    full = r.content
    sha = hashlib.sha256(full).hexdigest()
    assert r.headers["etag"] == f'"{sha}"' and sha == v1["sha256"]
    assert int(r.headers["content-length"]) == len(full) == v1["size"]
    assert r.headers["accept-ranges"] == "bytes"
    n = len(full)
    # conditional
    r = d.http.get("/v1/models/1", headers={"If-None-Match": f'"{sha}"'})
    assert r.status_code == 304 and r.content == b""
    r = d.http.get("/v1/models/1", headers={"If-None-Match": '"0000"'})
    assert r.status_code == 200 and r.content == full
    # ranges
    r = d.http.get("/v1/models/1", headers={"Range": "bytes=10-99"})
    assert r.status_code == 206 and r.content == full[10:100]
    assert r.headers["content-range"] == f"bytes 10-99/{n}"
    assert r.headers["content-length"] == "90"
    r = d.http.get("/v1/models/1", headers={"Range": "bytes=-100"})
    assert r.status_code == 206 and r.content == full[-100:]
    assert r.headers["content-range"] == f"bytes {n - 100}-{n - 1}/{n}"
    r = d.http.get("/v1/models/1", headers={"Range": "bytes=100-"})
    assert r.status_code == 206 and r.content == full[100:]
    r = d.http.get("/v1/models/1", headers={"Range": f"bytes={n - 5}-{n + 1000}"})
    assert r.status_code == 206 and r.content == full[-5:]
    for bad in (f"bytes={n}-", f"bytes={n + 10}-{n + 20}", "bytes=-0", "bytes=50-10"):
        r = d.http.get("/v1/models/1", headers={"Range": bad})
        problem(r, 416, "range_not_satisfiable")
        assert r.headers["content-range"] == f"bytes */{n}"
    # a Range we do not honour (several ranges, other units): the whole body
    for ignored in ("bytes=0-1,5-6", "items=0-5", "bytes=-"):
        r = d.http.get("/v1/models/1", headers={"Range": ignored})
        assert r.status_code == 200 and r.content == full
    # If-Range with another validator: the whole body
    r = d.http.get("/v1/models/1", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert r.status_code == 200 and r.content == full
    # resume: two ranged halves
    half = n // 2
    a = d.http.get("/v1/models/1", headers={"Range": f"bytes=0-{half - 1}"})
    b = d.http.get("/v1/models/1", headers={"Range": f"bytes={half}-", "If-Range": f'"{sha}"'})
    assert a.status_code == b.status_code == 206
    assert hashlib.sha256(a.content + b.content).hexdigest() == sha
    d.close()


def test_public_pack_download_and_missing_versions(ctx):
    (d,) = devices(ctx, 1, seed=81)
    want = ctx.pack.read_bytes()
    r = d.http.get("/v1/models/1/public-pack")
    assert r.status_code == 200 and r.content == want
    assert r.headers["etag"] == f'"{hashlib.sha256(want).hexdigest()}"'
    assert r.headers["etag"].strip('"') == ctx.v1["public_pack"]["sha256"]
    r = d.http.get("/v1/models/1/public-pack", headers={"Range": "bytes=0-7"})
    assert r.status_code == 206 and r.content == want[:8]
    problem(d.http.get("/v1/models/999"), 404, "unknown_model_version")
    problem(d.http.get("/v1/models/999/public-pack"), 404, "unknown_model_version")
    for bad in ("abc", "1.5", "99999999999999999999", "-99999999999999999999"):
        r = d.http.get(f"/v1/models/{bad}")
        assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith(PROBLEM)
    d.close()


def test_version_without_public_pack(ctx, tmp_path):
    s = ctx.server
    assert not open_rounds(s)
    with s.admin() as c:
        r = c.post("/v1/admin/models", content=ctx.ckpt.read_bytes())
        assert r.status_code == 201, r.text
        v = r.json()
        assert v["public_pack"] is None and v["public_classes"] == 20
        assert v["parent_version"] is None
        # with a parent and no pack: the parent's pack is inherited
        r = c.post("/v1/admin/models", content=ctx.ckpt.read_bytes(),
                   params={"parent_version": 1})
        assert r.status_code == 201, r.text
        child = r.json()
        assert child["parent_version"] == 1
        assert child["public_pack"] == ctx.v1["public_pack"]
    (d,) = devices(ctx, 1, seed=82)
    problem(d.http.get(f"/v1/models/{v['version']}/public-pack"), 404, "no_public_pack")
    assert d.http.get(f"/v1/models/{child['version']}/public-pack").content == \
        ctx.pack.read_bytes()
    d.close()


# ----------------------------------------------------------------------------- malformed
def test_malformed_requests_never_500(ctx):
    s = ctx.server
    (d,) = devices(ctx, 1, seed=90)
    admin = {"Authorization": f"Bearer {s.admin_token}"}
    dev = {"Authorization": f"Bearer {d.token}"}
    garbage = [b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe\x00garbage", b"{" * 5000,
               b'{"a": NaN}', b"0" * 20000]
    ctypes = ["application/json", "text/plain", "application/octet-stream",
              "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]
    targets = [("/v1/devices", {}), ("/v1/checkin", dev), ("/v1/admin/rounds", admin),
               ("/v1/admin/enrollment-tokens", admin), ("/v1/admin/models", admin),
               ("/v1/admin/public-packs", admin), ("/v1/admin/rounds/1/close", admin),
               ("/v1/admin/rounds/1/abort", admin), ("/v1/rounds/1/updates", dev)]
    versions = model_versions(s)
    seen = []
    with httpx.Client(base_url=s.url, timeout=30) as c:
        for path, auth in targets:
            for body in garbage:
                for ct in ctypes[:2] if body not in (b"", b"{") else ctypes:
                    r = c.post(path, content=body, headers={**auth, "Content-Type": ct})
                    assert r.status_code < 500, (path, body[:20], ct, r.status_code, r.text)
                    if r.status_code >= 400:
                        assert r.headers["content-type"].startswith(PROBLEM), (path, r.text)
                        seen.append((path, r.json()["reason"]))
        # specific reasons
        for body in garbage:
            problem(c.post("/v1/admin/models", content=body, headers=admin), 400,
                    "invalid_checkpoint")
            problem(c.post("/v1/admin/public-packs", content=body, headers=admin), 400,
                    "invalid_public_pack")
        problem(c.post("/v1/admin/models", content=ctx.pack.read_bytes(), headers=admin), 400,
                "invalid_checkpoint")
        problem(c.post("/v1/admin/public-packs", content=ctx.ckpt.read_bytes(), headers=admin),
                400, "invalid_public_pack")
        problem(c.post("/v1/admin/models", content=ctx.ckpt.read_bytes(), headers=admin,
                       params={"public_pack": "0" * 64}), 400, "unknown_public_pack")
        problem(c.post("/v1/admin/models", content=ctx.ckpt.read_bytes(), headers=admin,
                       params={"public_pack": "not-a-sha"}), 422, "invalid_request")
        problem(c.post("/v1/admin/models", content=ctx.ckpt.read_bytes(), headers=admin,
                       params={"parent_version": 777}), 404, "unknown_model_version")
        problem(c.post("/v1/admin/models", content=ctx.ckpt.read_bytes(), headers=admin,
                       params={"parent_version": 10**20}), 422, "invalid_request")
        problem(c.post("/v1/devices", content=b'{"enrollment_token": "' + b"x" * 20000 + b'"}'),
                413, "too_large")
        problem(c.post("/v1/admin/enrollment-tokens", json={"max_uses": 0}, headers=admin),
                422, "invalid_request")
        problem(c.post("/v1/admin/enrollment-tokens", json={"expires_in": -1}, headers=admin),
                422, "invalid_request")
        problem(c.get("/v1/admin/rounds", params={"status": "weird"}, headers=admin), 400,
                "invalid_request")
        for path in ("/v1/admin/rounds/99999999999999999999", "/v1/admin/rounds/abc",
                     "/v1/admin/rounds/-99999999999999999999/close"):
            r = c.request("GET" if path.count("/") == 4 else "POST", path, headers=admin)
            problem(r, 422, "invalid_request")
        problem(c.post("/v1/rounds/99999999999999999999/updates", content=b"x", headers=dev),
                422, "invalid_request")
        # unknown paths, wrong methods
        for path in ("/nope", "/v1/admin/nothing", "/v1/models", "/v2/checkin"):
            problem(c.get(path, headers=admin), 404, "not_found")
        for method, path in (("GET", "/v1/checkin"), ("DELETE", "/v1/admin/rounds"),
                             ("PUT", "/v1/models/1"), ("GET", "/v1/devices"),
                             ("POST", "/healthz"), ("GET", "/v1/rounds/1/updates")):
            problem(c.request(method, path, headers=admin), 405, "method_not_allowed")
    assert model_versions(s) == versions and not open_rounds(s)
    assert {reason for _, reason in seen} <= {
        "invalid_request", "invalid_checkpoint", "invalid_public_pack", "unauthorized",
        "invalid_enrollment_token", "unknown_round", "not_assigned", "round_not_open",
        "too_large"}, seen
    assert "Traceback" not in s.log_text()
    assert httpx.get(s.url + "/healthz").json()["status"] == "ok"
    d.close()


# ----------------------------------------------------------------------------- ops
def test_openapi_lists_the_contract(ctx):
    r = httpx.get(ctx.server.url + "/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for p in ("/healthz", "/metrics", "/v1/devices", "/v1/checkin", "/v1/models/{version}",
              "/v1/models/{version}/public-pack", "/v1/rounds/{round_id}/updates",
              "/v1/admin/enrollment-tokens", "/v1/admin/models", "/v1/admin/rounds",
              "/v1/admin/rounds/{round_id}", "/v1/admin/rounds/{round_id}/close",
              "/v1/admin/rounds/{round_id}/abort", "/v1/admin/public-packs"):
        assert p in paths, p
    assert "post" in paths["/v1/rounds/{round_id}/updates"]
    assert set(paths["/v1/admin/rounds"]) == {"get", "post"}


def test_metrics_are_prometheus_text(ctx):
    s = ctx.server
    (d,) = devices(ctx, 1, seed=95)
    before = metrics(s)
    with a_round(s, target=1, deadline_seconds=120) as rnd:
        _, _, r = d.participate()
        assert r.status_code == 202
        assert wait_round(s, rnd["id"])["status"] == "completed"
    d.http.get("/v1/models/1")
    r = httpx.get(s.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    types = {}
    for line in lines:
        if line.startswith("#"):
            m = re.match(r"^# TYPE ([a-z_]+) (counter|gauge|summary)$", line)
            assert m, line
            assert m.group(1) not in types, f"TYPE {m.group(1)} twice"
            types[m.group(1)] = m.group(2)
        else:
            assert _METRIC_LINE.match(line), line
    after = metrics(s)
    assert after["fedfr_updates_accepted_total"] == before.get(
        "fedfr_updates_accepted_total", 0) + 1
    assert after["fedfr_upload_bytes_total"] > before.get("fedfr_upload_bytes_total", 0)
    base_size = next(v["size"] for v in model_versions(s) if v["version"] == rnd["base_version"])
    # participate's download of the base + the GET of version 1 above
    assert after["fedfr_download_bytes_total"] == before.get(
        "fedfr_download_bytes_total", 0) + base_size + ctx.v1["size"]
    assert after["fedfr_aggregation_seconds_count"] == before.get(
        "fedfr_aggregation_seconds_count", 0) + 1
    assert after["fedfr_aggregation_seconds_sum"] > before.get(
        "fedfr_aggregation_seconds_sum", 0)
    assert types["fedfr_aggregation_seconds"] == "summary"
    assert types["fedfr_updates_accepted_total"] == "counter"
    assert types["fedfr_rounds"] == "gauge"
    assert after['fedfr_rounds{status="completed"}'] >= 1
    assert after["fedfr_current_model_version"] == model_versions(s)[-1]["version"]
    assert after["fedfr_model_versions"] == len(model_versions(s))
    d.close()


# ----------------------------------------------------------------------------- env settings
def test_admin_token_from_env_and_upload_cap(tmp_path, artifacts):
    ckpt, _ = artifacts
    token = "fat_from-the-environment-" + os.urandom(8).hex()
    s = Server(tmp_path / "data", env={"FEDFR_ADMIN_TOKEN": token,
                                       "FEDFR_MAX_UPLOAD_BYTES": "4096"}).start()
    try:
        assert not (s.data_dir / "admin_token").exists()
        r = httpx.get(s.url + "/v1/admin/models", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json() == []
        problem(httpx.get(s.url + "/v1/admin/models",
                          headers={"Authorization": "Bearer fat_other"}), 401, "unauthorized")
        with s.admin() as c:
            problem(c.post("/v1/admin/rounds", json={"target": 1}), 409, "no_model")
        publish(s, ckpt)
        tok = enrollment_token(s)
        d = FakeDevice(s.url, tok)
        rnd = start_round(s, target=1, deadline_seconds=120)
        task = d.task()
        body = d.encode(task, d.make_update(d.model(task)))
        assert len(body) > 4096
        problem(d.upload(task, body), 413, "too_large")

        def chunks():  # no Content-Length: the cap applies while streaming
            for i in range(0, len(body), 1000):
                yield body[i:i + 1000]

        problem(d.http.post(task["upload_url"], content=chunks()), 413, "too_large")
        m = metrics(s)
        assert m['fedfr_updates_rejected_total{reason="too_large"}'] == 2
        assert get_round(s, rnd["id"])["num_received"] == 0
        assert not list((s.data_dir / "blobs" / "tmp").iterdir())
        d.close()
    finally:
        s.stop()
    assert "Traceback" not in s.log_text()

