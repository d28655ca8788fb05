"""Privacy, proven on the wire: everything a device sends during registration, check-in and a
full federated round, captured at the TCP level, holds no identity name, no enrolled image
and no private tensor, and is nothing but the requests of the REST contract.

A small threaded TCP proxy sits between the device SDK and a real ``aggregator serve``
process on loopback and records every byte in both directions. The device is registered
through the proxy (so the server URL it stores, and uses for every later request, is the
proxy's), enrolls three identities (one with a non-ASCII name), trains one round to
completion and uploads. The captured client-to-server bytes are then searched for the names
(in every plausible encoding), for windows of every enrolled image (PNG file, raw pixels,
normalized float pixels) and for windows of the private tensors the round left in
``HOME/private/state.safetensors``; the HTTP requests are parsed back out of the stream and
checked one by one, the upload body decoded and its tensors and metadata enumerated.

A negative control sends a name, an image and a private tensor through a proxy on purpose
and checks that the same detectors find them, so the absence checks are not vacuous.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import unicodedata
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from aggsupport import (
    Server,
    enrollment_token,
    make_checkpoint,
    make_pack,
    publish,
    start_round,
    wait_round,
)

from device_sdk import api
from device_sdk.client import ALLOWED_INFO_KEYS
from fedfr.data.images import encode_png

NAMES = ("Zoë Ångström", "alice-secret-name", "Bob O'Brien")
IMAGES_PER_NAME = (4, 4, 5)  # 13 images in all: num_samples must say 13
ROUND_CONFIG = {"method": "fedfr", "local": {"batch_size": 16, "lr": 0.01, "epochs_start": 1,
                                             "epochs_min": 1, "max_hard_negatives": 16}}
PRIVATE_KEYS = ("local.identity_weights", "dfc.converter", "dfc.binary_weights",
                "dfc.binary_bias")
#: What the update's safetensors metadata holds (fedfr.fl.wire.encode_update), exactly.
UPDATE_METADATA_KEYS = {"format", "format_version", "base_version", "round_id", "num_samples",
                        "metrics"}
#: Header names the SDK's httpx client may put on a request.
ALLOWED_HEADERS = {"host", "accept", "accept-encoding", "connection", "user-agent",
                   "content-length", "content-type", "authorization", "range", "if-range"}


# ------------------------------------------------------------------------- the proxy
class Proxy:
    """A TCP forwarder on a free loopback port that records both directions, per connection.

    Request bytes are recorded before they are forwarded, so once the device has an answer
    to a request the request is in :attr:`conns`.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.conns: list[tuple[bytearray, bytearray]] = []  # (client->server, server->client)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._acceptor.join(5)
        self.listener.close()
        for t in self._threads:
            t.join(5)

    def sent(self) -> bytes:
        """Every client-to-server byte, connections in the order they were opened."""
        with self._lock:
            return b"".join(bytes(c2s) for c2s, _ in self.conns)

    def streams(self) -> list[bytes]:
        with self._lock:
            return [bytes(c2s) for c2s, _ in self.conns]

    def received(self) -> bytes:
        with self._lock:
            return b"".join(bytes(s2c) for _, s2c in self.conns)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            rec = (bytearray(), bytearray())
            with self._lock:
                self.conns.append(rec)
            t = threading.Thread(target=self._serve, args=(client, upstream, rec), daemon=True)
            self._threads.append(t)
            t.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, buf: bytearray) -> None:
        try:
            while data := src.recv(1 << 16):
                buf += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def _serve(self, client: socket.socket, upstream: socket.socket,
               rec: tuple[bytearray, bytearray]) -> None:
        back = threading.Thread(target=self._pump, args=(upstream, client, rec[1]), daemon=True)
        back.start()
        self._pump(client, upstream, rec[0])
        back.join(30)
        client.close()
        upstream.close()


# ------------------------------------------------------------------------- parsing
@dataclass
class HttpRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path


def parse_requests(stream: bytes) -> list[HttpRequest]:
    """The HTTP/1.1 requests of one connection's client-to-server bytes. Every byte must
    belong to a request (request line, headers, a Content-Length body): anything else, e.g.
    a chunked body or trailing bytes, fails the parse."""
    out, pos = [], 0
    while pos < len(stream):
        end = stream.find(b"\r\n\r\n", pos)
        assert end >= 0, f"bytes after the last complete request: {stream[pos:pos + 200]!r}"
        lines = stream[pos:end].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            assert k.strip().lower() not in headers, f"repeated header {k!r}"
            headers[k.strip().lower()] = v.strip()
        assert "transfer-encoding" not in headers, headers
        n = int(headers.get("content-length", "0"))
        body = stream[end + 4:end + 4 + n]
        assert len(body) == n, f"{method} {target}: body cut short"
        out.append(HttpRequest(method, target, headers, body))
        pos = end + 4 + n
    return out


# ------------------------------------------------------------------------- detectors
def name_needles(name: str) -> list[bytes]:
    """Every encoding a name could travel in: UTF-8 (NFC and NFD), UTF-16-LE, JSON
    ``\\u`` escapes (lower and upper hex), percent-encoding."""
    forms = {unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)}
    needles: set[bytes] = set()
    for f in forms:
        needles.add(f.encode("utf-8"))
        needles.add(f.encode("utf-16-le"))
        esc = json.dumps(f)[1:-1]  # ensure_ascii: \u00eb
        needles.add(esc.encode("ascii"))
        needles.add(re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m.group(1).upper(),
                           esc).encode("ascii"))
        needles.add(urllib.parse.quote(f).encode("ascii"))
        needles.add(urllib.parse.quote_plus(f).encode("ascii"))
    return sorted(needles)


def find_name(haystack: bytes, name: str) -> list[bytes]:
    """The encodings of ``name`` found in ``haystack``; ASCII ones case-insensitively."""
    lower = haystack.lower()
    found = []
    for needle in name_needles(name):
        if needle.isascii():
            if needle.lower() in lower:
                found.append(needle)
        elif needle in haystack:
            found.append(needle)
    return found


def windows(data: bytes, width: int, count: int) -> list[bytes]:
    """``count`` windows of ``width`` bytes spread over the middle of ``data``, each with at
    least ``width * 3 // 8`` distinct byte values: no run of padding or of a constant that a
    shared tensor could hold by chance."""
    lo, hi = len(data) // 8, len(data) - len(data) // 8 - width
    assert hi > lo, f"{len(data)} bytes is too short for windows of {width}"
    out = []
    for off in np.linspace(lo, hi, 8 * count).astype(int):
        w = data[off:off + width]
        if len(set(w)) >= width * 3 // 8:
            out.append(w)
        if len(out) == count * 4:
            break
    assert len(out) >= count, f"only {len(out)} distinctive windows of {width} bytes"
    idx = np.linspace(0, len(out) - 1, count).astype(int)
    return [out[i] for i in idx]


def found_windows(streams: list[bytes], needles: list[bytes]) -> list[bytes]:
    return [n for n in needles if any(n in s for s in streams)]


def tensor_needles(arr: np.ndarray) -> list[bytes]:
    """Windows of a private tensor as float32 and float16 (32 bytes each), or the whole
    tensor when it is shorter than that."""
    out = []
    for dt in (np.float32, np.float16):
        raw = np.ascontiguousarray(arr, dt).tobytes()
        if len(raw) >= 64:
            out += windows(raw, 32, 4)
        else:  # e.g. the (3,) binary bias: 12 / 6 bytes, every value distinct and non-zero
            assert len(set(raw)) >= len(raw) // 2, f"{arr} is not distinctive"
            out.append(raw)
    return out


# ------------------------------------------------------------------------- the round
@dataclass
class Capture:
    proxy: Proxy
    server: Server
    home: Path
    png_files: list[bytes]
    crops: list[np.ndarray]
    private: dict[str, np.ndarray]
    result: dict
    num_images: int


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Capture:
    import torch
    from safetensors.numpy import load_file

    root = tmp_path_factory.mktemp("privacy")
    (root / "srv").mkdir()
    srv = Server(root / "srv", env={"FEDFR_CHECKIN_RETRY_AFTER": "1"}).start()
    proxy = None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny round on a shared 2-core machine
    try:
        publish(srv, make_checkpoint(root / "model.safetensors"),
                make_pack(root / "pack.safetensors", size=112))
        token = enrollment_token(srv)
        proxy = Proxy(srv.port).start()
        home = root / "home"
        api.register(home, proxy.url, token)

        rng = np.random.default_rng(7)
        pngs, crops = [], []
        for name, n in zip(NAMES, IMAGES_PER_NAME, strict=True):
            files = []
            for _ in range(n):
                crop = rng.integers(0, 256, (112, 112, 3), np.uint8)
                png = encode_png(crop)
                f = root / f"img{len(crops)}.png"
                f.write_bytes(png)
                files.append(f)
                crops.append(crop)
                pngs.append(png)
            api.enroll(home, name, files, check_crops=False)
        # the PNG files the home stores (enroll re-encodes the crop) are checked as well
        pngs += [p.read_bytes() for p in sorted((home / "crops").rglob("*.png"))]

        rd = start_round(srv, target=1, config=ROUND_CONFIG, deadline_seconds=300)
        result = api.train(home, rounds=1, wait=60, device="cpu")
        assert wait_round(srv, rd["id"])["status"] == "completed"
        private = load_file(str(home / "private" / "state.safetensors"))
        yield Capture(proxy, srv, home, pngs, crops, private, result, sum(IMAGES_PER_NAME))
    finally:
        torch.set_num_threads(threads)
        if proxy is not None:
            proxy.stop()
        srv.stop()


def _requests(cap: Capture) -> list[HttpRequest]:
    return [r for s in cap.proxy.streams() for r in parse_requests(s)]


# ------------------------------------------------------------------------- tests
def test_the_round_went_through_the_proxy(capture):
    """Sanity: the device stored the proxy as its server, every request went through it, the
    round was accepted, and the answers (model and public pack) came back through it."""
    st = api.status(capture.home)
    assert st["server"] == capture.proxy.url
    assert capture.result["rounds"][0]["accepted"] is True
    paths = [r.path for r in _requests(capture)]
    assert "/v1/devices" in paths and "/v1/checkin" in paths
    assert any(re.fullmatch(r"/v1/rounds/\d+/updates", p) for p in paths)
    assert any(re.fullmatch(r"/v1/models/\d+", p) for p in paths)
    assert any(re.fullmatch(r"/v1/models/\d+/public-pack", p) for p in paths)
    got = capture.proxy.received()
    models = sorted((capture.home / "models").glob("*.bin"))
    assert len(models) == 2  # the model version and its public pack, sha-named
    assert len(got) > sum(p.stat().st_size for p in models)
    for p in models:  # the downloads are in the server->client bytes, unchanged
        data = p.read_bytes()
        assert data[len(data) // 2:len(data) // 2 + 4096] in got
    assert b"HTTP/1.1 201" in got and b"HTTP/1.1 202" in got
    # the device's own traffic count is what went on the wire
    assert st["traffic"]["sent"] == len(capture.proxy.sent())


def test_no_identity_name_is_sent(capture):
    sent = capture.proxy.sent()
    assert len(sent) > 100_000  # the upload is in it
    for name in NAMES:
        assert find_name(sent, name) == [], name
        for part in name.split():  # nor a part of one (first name, family name)
            if len(part) >= 4:
                assert find_name(sent, part) == [], part


def test_no_enrolled_image_is_sent(capture):
    import torch

    from fedfr.backbones import get_backbone_spec
    from fedfr.train.embedding import preprocess

    streams = capture.proxy.streams()
    needles = []
    for png in capture.png_files:  # the PNG files: compressed pixel data in the middle
        needles += windows(png, 64, 2)
    contract = get_backbone_spec("mbf_tiny").contract
    for crop in capture.crops:
        raw = crop.tobytes()
        needles += windows(raw, 64, 4)  # HWC uint8
        needles += windows(np.ascontiguousarray(crop.transpose(2, 0, 1)).tobytes(), 64, 2)
        norm = ((crop.astype(np.float32) - 127.5) / 127.5)
        needles += windows(norm.tobytes(), 64, 2)  # normalized, HWC
        needles += windows(np.ascontiguousarray(norm.transpose(2, 0, 1)).tobytes(), 64, 2)
        model_in = preprocess(torch.from_numpy(crop[None]), contract).numpy()
        needles += windows(model_in.tobytes(), 64, 2)  # exactly what the backbone sees
    assert len(needles) > 200
    assert found_windows(streams, needles) == []


def test_no_private_tensor_is_sent(capture):
    streams = capture.proxy.streams()
    priv = capture.private
    assert set(PRIVATE_KEYS) <= set(priv), sorted(priv)
    assert np.isfinite(priv["local.identity_weights"]).all()
    assert priv["local.identity_weights"].shape[0] == len(NAMES)
    # the converter was trained (not the identity matrix it starts as): windows off the
    # diagonal are not runs of 0.0
    assert not np.allclose(priv["dfc.converter"], np.eye(len(priv["dfc.converter"])))
    assert (priv["dfc.binary_bias"] != 0).all()
    for key in PRIVATE_KEYS:
        needles = tensor_needles(priv[key])
        assert found_windows(streams, needles) == [], key


def test_the_upload_holds_only_shared_tensors_and_allowed_metadata(capture, tmp_path):
    from safetensors import safe_open

    from fedfr.fl.wire import decode_update

    uploads = [r for r in _requests(capture)
               if r.method == "POST" and re.fullmatch(r"/v1/rounds/\d+/updates", r.path)]
    assert len(uploads) == 1
    body = uploads[0].body
    assert uploads[0].headers["content-type"] == "application/octet-stream"
    env = decode_update(body)
    keys = set(env.update.arrays)
    assert keys, "an empty update"
    extra = {k for k in keys if not k.startswith("backbone.")}
    assert extra == {"public_embeddings.rows", "public_embeddings.index"}
    assert env.update.num_samples == capture.num_images == 13
    assert env.round_id == int(re.search(r"/v1/rounds/(\d+)/", uploads[0].path).group(1))

    f = tmp_path / "upload.safetensors"
    f.write_bytes(body)
    with safe_open(str(f), framework="numpy") as st:
        meta = st.metadata()
        assert set(st.keys()) == keys
    assert set(meta) == UPDATE_METADATA_KEYS
    assert meta["format"] == "fedfr-update"
    assert meta["num_samples"] == "13"
    metrics = json.loads(meta["metrics"])
    assert set(metrics) <= {"loss", "train_accuracy"} and "loss" in metrics
    assert all(isinstance(v, float) for v in metrics.values())


def test_every_request_is_part_of_the_contract(capture):
    reqs = _requests(capture)
    kinds = []
    for r in reqs:
        assert set(r.headers) <= ALLOWED_HEADERS, (r.method, r.target, sorted(r.headers))
        assert "?" not in r.target, r.target  # no query string carries anything
        if r.method == "POST" and r.path == "/v1/devices":
            body = json.loads(r.body)
            assert set(body) <= {"enrollment_token"} | ALLOWED_INFO_KEYS, sorted(body)
            assert all(isinstance(v, str) and len(v) <= 100 for v in body.values())
            kinds.append("register")
        elif r.method == "POST" and r.path == "/v1/checkin":
            assert r.body == b""
            kinds.append("checkin")
        elif r.method == "GET" and re.fullmatch(r"/v1/models/\d+(/public-pack)?", r.path):
            assert r.body == b""
            kinds.append("download")
        elif r.method == "POST" and re.fullmatch(r"/v1/rounds/\d+/updates", r.path):
            kinds.append("upload")
        else:
            pytest.fail(f"unexpected request {r.method} {r.target}")
        if r.path != "/v1/devices":
            assert r.headers["authorization"].startswith("Bearer ")
    assert kinds[0] == "register" and kinds.count("register") == 1
    assert kinds.count("upload") == 1 and kinds[-1] == "upload"
    assert kinds.count("download") == 2 and "checkin" in kinds


def test_negative_control_the_detectors_find_what_is_sent(capture):
    """The same detectors, on bytes sent through a proxy on purpose, find every kind of
    leak: the checks above can fail."""
    proxy = Proxy(capture.server.port).start()

    def post(**kw) -> None:
        httpx.post(proxy.url + "/v1/checkin", timeout=10, **kw)

    zoe, alice, bob = NAMES
    bias = capture.private["dfc.binary_bias"]
    w = capture.private["local.identity_weights"]
    try:
        post(json={"who": zoe})  # httpx: UTF-8 JSON
        post(content=json.dumps({"who": zoe}).encode())  # JSON with ASCII escapes
        post(content=zoe.encode("utf-16-le"))
        post(content=alice.upper().encode())  # ASCII, another case
        post(content=capture.png_files[0])
        post(content=capture.crops[1].tobytes())
        post(content=b"x" + w.astype(np.float16).tobytes() + bias.tobytes())
        httpx.get(proxy.url + "/v1/whoami", params={"n": bob}, timeout=10)  # percent-encoded
    finally:
        proxy.stop()
    sent, streams = proxy.sent(), proxy.streams()
    found = find_name(sent, zoe)
    assert zoe.encode() in found and zoe.encode("utf-16-le") in found
    assert json.dumps(zoe)[1:-1].encode() in found
    assert find_name(sent, alice) == [alice.encode()]
    assert find_name(sent, bob)
    assert found_windows(streams, windows(capture.png_files[0], 64, 2))
    assert len(found_windows(streams, windows(capture.crops[1].tobytes(), 64, 4))) == 4
    assert len(found_windows(streams, tensor_needles(w))) == 4  # the float16 windows
    assert found_windows(streams, tensor_needles(bias))  # the float32 bias
    reqs = [r for s in streams for r in parse_requests(s)]
    assert [r.path for r in reqs][-1] == "/v1/whoami"  # the request check would flag it
