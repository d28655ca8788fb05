"""``python -m aggregator admin|migrate`` as a subprocess against a real server (SQLite).

Exit codes (aggregator/cli.py): 0 ok, 1 the server refused, 2 usage error, 3 unreachable.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys

import httpx
import pytest
from aggsupport import ROOT, FakeDevice, Server, free_port, make_checkpoint, make_pack, wait_round


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("FEDFR_ADMIN_TOKEN", "FEDFR_SERVER")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "aggregator", *args], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=120)


def admin(srv: Server, *args: str, json_out: bool = True) -> subprocess.CompletedProcess:
    return run_cli("admin", "--server", srv.url, "--data-dir", str(srv.data_dir),
                   *(["--json"] if json_out else []), *args)


def ok(p: subprocess.CompletedProcess, parse: bool = True):
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    return json.loads(p.stdout) if parse else p.stdout


def refused(p: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    assert p.stderr.startswith("error: "), p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)
    return p.stderr


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("artifacts")
    return make_checkpoint(d / "ckpt.safetensors"), make_pack(d / "pack.safetensors")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("cli") / "data").start()
    yield s
    s.stop()
    assert "Traceback" not in s.log_text()


@pytest.fixture(scope="module")
def published(srv, artifacts):
    """Version 1 (with the public pack) published through the CLI."""
    ckpt, pack = artifacts
    v = ok(admin(srv, "publish-model", str(ckpt), "--public-pack", str(pack)))
    return v


def test_migrate_creates_the_database(tmp_path):
    d = tmp_path / "fresh" / "data"
    p = run_cli("migrate", "--data-dir", str(d))
    out = ok(p, parse=False)
    assert "newest schema" in out and str(d / "aggregator.db") in out
    con = sqlite3.connect(d / "aggregator.db")
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        (head,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        con.close()
    assert {"rounds", "devices", "enrollment_tokens", "model_versions", "assignments",
            "counters", "alembic_version"} <= tables
    assert head
    ok(run_cli("migrate", "--data-dir", str(d)), parse=False)  # again: a no-op


def test_publish_model_and_models(srv, artifacts, published):
    ckpt, pack = artifacts
    v = published
    assert v["version"] == 1 and v["parent_version"] is None and v["arch"] == "mbf_tiny"
    assert v["public_pack"]["sha256"] == hashlib.sha256(pack.read_bytes()).hexdigest()
    assert v["public_pack"]["size"] == pack.stat().st_size and v["public_classes"] == 20
    ms = ok(admin(srv, "models"))
    assert [m["version"] for m in ms] == [1] and ms[0]["current"] is True
    text = ok(admin(srv, "models", json_out=False), parse=False)
    assert text.startswith("v1 ") and "mbf_tiny" in text and "+public pack" in text
    assert "(current)" in text and v["sha256"][:12] in text
    # a child without a pack inherits its parent's; text output names the parent
    out = ok(admin(srv, "publish-model", str(ckpt), "--parent", "1", json_out=False),
             parse=False)
    assert out.startswith("published v2 ") and "parent v1" in out and "+public pack" in out
    ms = ok(admin(srv, "models"))
    assert [m["current"] for m in ms] == [False, True]
    assert ms[1]["public_pack"] == v["public_pack"]


def test_download_model(srv, published, tmp_path):
    out = tmp_path / "sub" / "v1.safetensors"
    r = ok(admin(srv, "download-model", "1", "--out", str(out)))
    assert r == {"version": 1, "path": str(out)}
    # the version's bytes (the server stamps its version into the checkpoint's metadata)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == published["sha256"]
    from fedfr.fl import GlobalModel

    assert GlobalModel.load(out).arch == "mbf_tiny"
    # the endpoint is admin-only: a device token or none is refused
    assert httpx.get(srv.url + "/v1/admin/models/1").status_code == 401
    refused(admin(srv, "download-model", "999", "--out", str(tmp_path / "x")), 1, "999")
    assert not (tmp_path / "x").exists()
    p = admin(srv, "download-model", "1")  # --out is required
    assert p.returncode == 2


def test_enrollment_token(srv, published):
    t = ok(admin(srv, "enrollment-token", "--max-uses", "2", "--label", "lab", "--expires-in",
                 "600"))
    assert t["max_uses"] == 2 and t["label"] == "lab" and t["expires_at"] is not None
    codes = [httpx.post(srv.url + "/v1/devices",
                        json={"enrollment_token": t["enrollment_token"]}).status_code
             for _ in range(3)]
    assert codes == [201, 201, 401]
    plain = ok(admin(srv, "enrollment-token", json_out=False), parse=False).strip()
    assert plain.startswith("fet_") and "\n" not in plain
    assert httpx.post(srv.url + "/v1/devices",
                      json={"enrollment_token": plain}).status_code == 201


def test_round_commands(srv, published, tmp_path):
    tok = ok(admin(srv, "enrollment-token", "--max-uses", "5"))["enrollment_token"]
    r = ok(admin(srv, "start-round", "--target", "2", "--min", "1", "--over-selection", "1.5",
                 "--deadline", "120", "--config", '{"epochs": 3, "method": "fedfr"}'))
    rid = r["id"]
    assert r["status"] == "open" and r["capacity"] == 3 and r["min_devices"] == 1
    assert r["config"] == {"epochs": 3, "method": "fedfr"}
    assert r["deadline_at"] - r["created_at"] == pytest.approx(120, abs=1)
    # a second round while this one is open: refused, the reason is printed
    refused(admin(srv, "start-round", "--target", "1"), 1, "409", "round_in_progress")
    text = ok(admin(srv, "rounds", json_out=False), parse=False)
    assert f"round {rid:>4}  open" in text and "received 0/2 (min 1, assigned 0/3)" in text
    assert [x["id"] for x in ok(admin(srv, "rounds", "--status", "open"))] == [rid]
    assert ok(admin(srv, "rounds", "--status", "completed")) == []

    d = FakeDevice(srv.url, tok)
    task, _, up = d.participate()
    assert task["config"] == {"epochs": 3, "method": "fedfr"}
    assert up.status_code == 202, up.text
    assert ok(admin(srv, "round", str(rid)))["num_received"] == 1
    closed = ok(admin(srv, "close", str(rid)))
    assert closed["status"] == "completed" and closed["result_version"]
    assert closed["stats"]["devices"] == 1
    # aborting a finished round: the server refuses (exit 1) and the reason is printed
    refused(admin(srv, "abort", str(rid)), 1, "409", "round_not_open")
    refused(admin(srv, "close", str(rid)), 1, "round_not_open")
    refused(admin(srv, "round", "999"), 1, "404", "unknown_round")
    shown = ok(admin(srv, "round", str(rid), json_out=False), parse=False)
    assert "completed" in shown and f"-> v{closed['result_version']}" in shown
    assert '"devices": 1' in shown  # the stats follow the summary line

    # --config @FILE, --repeat, --base; then abort
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"lr": 0.1}))
    r2 = ok(admin(srv, "start-round", "--target", "1", "--base", "1", "--config", f"@{cfg}",
                  "--repeat", "3", "--row-weighting", "samples"))
    assert r2["config"] == {"lr": 0.1} and r2["base_version"] == 1 and r2["repeat"] == 3
    assert r2["row_weighting"] == "samples"
    aborted = ok(admin(srv, "abort", str(r2["id"]), json_out=False), parse=False)
    assert "aborted" in aborted and "(aborted by an operator)" in aborted
    assert ok(admin(srv, "round", str(r2["id"])))["status"] == "aborted"
    d.close()


def test_refusals_and_usage_errors(srv, published, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    before = ok(admin(srv, "models"))
    refused(admin(srv, "publish-model", str(garbage)), 1, "400", "invalid_checkpoint")
    refused(admin(srv, "publish-model", str(tmp_path / "missing.safetensors")), 2,
            "missing.safetensors")
    refused(admin(srv, "start-round", "--target", "1", "--config", "{not json"), 2,
            "--config is not JSON")
    refused(admin(srv, "start-round", "--target", "0"), 1, "422", "invalid_request")
    refused(admin(srv, "start-round", "--target", "2", "--min", "3"), 1, "invalid_round")
    assert ok(admin(srv, "models")) == before
    assert ok(admin(srv, "rounds", "--status", "open")) == []
    # a wrong token: the server refuses
    p = run_cli("admin", "--server", srv.url, "--token", "fat_wrong", "models")
    refused(p, 1, "401", "unauthorized")
    # the token from the environment works without --data-dir
    p = run_cli("admin", "--server", srv.url, "--json", "models",
                env={"FEDFR_ADMIN_TOKEN": srv.admin_token})
    assert [m["version"] for m in ok(p)] == [m["version"] for m in before]
    # so does --token
    p = run_cli("admin", "--server", srv.url, "--token", srv.admin_token, "--json", "models")
    assert ok(p) == ok(admin(srv, "models"))


def test_unreachable_server_exits_3():
    url = f"http://127.0.0.1:{free_port()}"
    p = run_cli("admin", "--server", url, "--token", "fat_x", "models")
    refused(p, 3, "cannot reach", url)
    p = run_cli("admin", "--server", url, "--token", "fat_x", "start-round", "--target", "1")
    refused(p, 3, "cannot reach")


def test_no_admin_token_is_a_clear_usage_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    url = f"http://127.0.0.1:{free_port()}"
    for extra in (["--data-dir", str(empty)], []):
        p = run_cli("admin", "--server", url, *extra, "models")
        refused(p, 2, "no admin token", "FEDFR_ADMIN_TOKEN", "--token")
        assert p.stdout == ""


def test_round_past_its_deadline_shows_why_it_failed(srv, published):
    """start-round with a short deadline and no device: the sweep fails it; `round` says why."""
    r = ok(admin(srv, "start-round", "--target", "2", "--min", "1", "--deadline", "1"))
    done = wait_round(srv, r["id"], timeout=30)
    assert done["status"] == "failed"
    shown = ok(admin(srv, "round", str(r["id"]), json_out=False), parse=False)
    assert "failed" in shown and "below the minimum of 1" in shown
