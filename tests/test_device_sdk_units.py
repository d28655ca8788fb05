"""Fast unit tests of the device side of a round, without an aggregator:

- :func:`fedfr.train.methods.round_config`: the round's JSON config to a LocalConfig — the
  defaults, typed ``local`` overrides, and a ValueError naming the key for everything else;
- :class:`fedfr.train.local.LocalTrainer` with a private state holding NaN rows (identities
  enrolled since the last round): stored rows continue, NaN rows start like round 0;
- :func:`device_sdk.training.load_private` / ``scrub_private`` (through ``api.forget``): the
  private state's rows follow the identities' stable labels;
- :class:`device_sdk.client.DeviceClient` against a small local HTTP server: resumable,
  hash-checked downloads, Retry-After, no retry on 4xx, and the check-in answers.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from device_sdk import api, client, training
from device_sdk.errors import ServerError
from device_sdk.home import DeviceHome
from fedfr.data.images import encode_png
from fedfr.train.local import LocalConfig
from fedfr.train.methods import round_config


# ========================================================================= round_config
def test_round_config_defaults_to_fedfr():
    cfg = round_config({})
    assert cfg == round_config({"method": "fedfr"})
    assert cfg.public == "images"
    assert cfg.dfc_weight > 0 and cfg.contrastive_mu > 0
    assert cfg.prox_mu == 0.0
    base = LocalConfig()
    assert (cfg.lr, cfg.batch_size, cfg.seed, cfg.device) == (base.lr, base.batch_size,
                                                               base.seed, base.device)


def test_round_config_applies_local_overrides_with_their_types():
    cfg = round_config({"method": "fedfr", "local": {
        "lr": 1, "batch_size": 16, "epochs_start": 3, "flip": False, "amp": False,
        "max_hard_negatives": None, "hard_negative_threshold": 0, "public_rows": "mined"}})
    assert cfg.lr == 1.0 and type(cfg.lr) is float  # an int given for a float becomes one
    assert cfg.hard_negative_threshold == 0.0 and type(cfg.hard_negative_threshold) is float
    assert cfg.batch_size == 16 and type(cfg.batch_size) is int
    assert cfg.epochs_start == 3
    assert cfg.flip is False and cfg.amp is False
    assert cfg.max_hard_negatives is None
    assert cfg.public_rows == "mined"
    assert round_config({"local": {"max_hard_negatives": 8}}).max_hard_negatives == 8
    # the method's own terms stay on; a base config's other values are kept
    assert cfg.public == "images" and cfg.dfc_weight > 0
    assert round_config({"local": {"batch_size": 4}},
                        base=LocalConfig(lr=0.5)).lr == 0.5


def test_round_config_methods_switch_their_terms_and_fedprox_takes_prox_mu():
    avg = round_config({"method": "fedavg"})
    assert (avg.public, avg.dfc_weight, avg.contrastive_mu, avg.prox_mu) == (None, 0, 0, 0)
    assert round_config({"method": "fedprox", "prox_mu": 0.05}).prox_mu == 0.05
    assert round_config({"method": "fedprox", "prox_mu": 1}).prox_mu == 1.0
    assert round_config({"method": "fedprox"}).prox_mu == 0.01  # the default weight
    assert round_config({"method": "fedfr", "prox_mu": 0.05}).prox_mu == 0.0  # not FedProx
    assert round_config({"method": "fedfr_emb"}).public == "embeddings"


@pytest.mark.parametrize(("config", "names"), [
    ({"methd": "fedfr"}, "methd"),
    ({"method": "fedfr", "seed": 1}, "seed"),
    ({"local": {"device": "cuda"}}, "local.device"),
    ({"local": {"seed": 3}}, "local.seed"),
    ({"local": {"public": None}}, "local.public"),
    ({"local": {"prox_mu": 0.1}}, "local.prox_mu"),
    ({"local": {"margin": 0.4}}, "local.margin"),
    ({"local": {"no_such_field": 1}}, "local.no_such_field"),
    ({"method": "local"}, "'local'"),
    ({"method": "pretrained"}, "'pretrained'"),
    ({"method": "fedsgd"}, "fedsgd"),
    ({"method": 3}, "3"),
    ({"local": {"batch_size": True}}, "local.batch_size"),
    ({"local": {"batch_size": 16.0}}, "local.batch_size"),
    ({"local": {"batch_size": "16"}}, "local.batch_size"),
    ({"local": {"lr": "0.1"}}, "local.lr"),
    ({"local": {"lr": True}}, "local.lr"),
    ({"local": {"flip": 1}}, "local.flip"),
    ({"local": {"max_hard_negatives": 2.5}}, "local.max_hard_negatives"),
    ({"local": {"public_rows": 1}}, "local.public_rows"),
    ({"prox_mu": -0.1}, "prox_mu"),
    ({"method": "fedprox", "prox_mu": float("nan")}, "prox_mu"),
    ({"method": "fedprox", "prox_mu": True}, "prox_mu"),
    ({"method": "fedprox", "prox_mu": "0.1"}, "prox_mu"),
    ({"local": {"lr": -1}}, "lr"),
    ({"local": {"batch_size": 1}}, "batch_size"),
    ({"local": {"public_rows": "some"}}, "public_rows"),
    ({"local": {"lr_decay_at": 1.5}}, "lr_decay_at"),
    ({"local": [1, 2]}, "'local'"),
])
def test_round_config_rejects_with_a_message_naming_the_key(config, names):
    with pytest.raises(ValueError) as e:
        round_config(config)
    assert names in str(e.value)


def test_round_config_rejects_non_objects():
    for bad in ([], "fedfr", None):
        with pytest.raises(ValueError, match="JSON object"):
            round_config(bad)


@pytest.mark.parametrize(("key", "value"), [
    # each was accepted once, then failed in every device's training (or silently dropped DFC)
    ("weight_decay", -1.0), ("momentum", -1.0), ("contrastive_temperature", 0.0),
    ("max_hard_negatives", -1), ("dfc_weight", float("nan")),
    ("hard_negative_threshold", 1.5), ("epochs_step", -1), ("lr_decay_factor", 0.0),
])
def test_round_config_rejects_values_the_local_step_cannot_train_with(key, value):
    with pytest.raises(ValueError, match=key):
        round_config({"local": {key: value}})


# ========================================================================= NaN private rows
ARCH, D, PUBLIC_CLASSES = "mbf_tiny", 128, 6


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    """A random mbf_tiny global model, a 3-identity device (4 crops each), a public pack."""
    import torch

    from fedfr.backbones import build_backbone, get_backbone_spec
    from fedfr.fl import GlobalModel
    from fedfr.train.local import PublicPack

    torch.manual_seed(0)
    net = build_backbone(ARCH)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    rng = np.random.default_rng(0)
    pub = rng.standard_normal((PUBLIC_CLASSES, D)).astype(np.float32)
    pub /= np.linalg.norm(pub, axis=1, keepdims=True)
    model = GlobalModel(ARCH, D, get_backbone_spec(ARCH).contract.to_dict(), state, pub)
    labels = np.repeat(np.arange(3), 4).astype(np.int64)
    images = rng.integers(0, 256, (len(labels), 112, 112, 3), dtype=np.uint8)
    pack = PublicPack.from_images(rng.integers(0, 256, (12, 112, 112, 3), dtype=np.uint8),
                                  np.tile(np.arange(PUBLIC_CLASSES), 2))
    cfg = LocalConfig(device="cpu", batch_size=8, lr=0.01, epochs_start=1, epochs_min=1,
                      hard_negative_threshold=-1.0, max_hard_negatives=4, seed=0)
    return model, images, labels, pack, cfg


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_private_state_with_a_nan_row_continues_old_rows_and_starts_the_new_one(tiny):
    """Round 0 with identities 0-1; round 1 with a third identity, new since: its rows of the
    private state are NaN. The stored rows are the trainer's starting point (not the class
    means a fresh start would take), the NaN row starts at the class mean (bias 0), and
    everything the round produces is finite."""
    from fedfr.train.local import LocalTrainer, local_round

    model, images, labels, pack, cfg = tiny
    two = labels < 2
    r0 = local_round(model, images[two], labels[two], cfg, round_index=0, pack=pack)
    p0 = r0.private
    assert p0.identity_weights.shape == (2, D) and p0.rounds == 1
    nan_row = np.full((1, D), np.nan, np.float32)
    private = replace(p0,
                      identity_weights=np.vstack([p0.identity_weights, nan_row]),
                      binary_weights=np.vstack([p0.binary_weights, nan_row]),
                      binary_bias=np.append(p0.binary_bias, np.float32(np.nan)))

    fresh = LocalTrainer(model, images, labels, cfg, round_index=1, pack=pack).prepare()
    means = fresh.identity_weights.detach().numpy()  # what a fresh start takes: class means
    # round 0 moved its rows away from where a fresh start would put them
    assert not np.allclose(p0.identity_weights, means[:2], atol=1e-4)

    trainer = LocalTrainer(model, images, labels, cfg, round_index=1, private=private,
                           pack=pack).prepare()
    w0 = trainer.identity_weights.detach().numpy().copy()
    np.testing.assert_array_equal(w0[:2], p0.identity_weights)  # continued, bit for bit
    np.testing.assert_allclose(w0[2], means[2], atol=1e-6)  # the new one: class mean
    c0 = trainer.dfc.classifiers.detach().numpy().copy()
    np.testing.assert_array_equal(c0[:2], p0.binary_weights)
    np.testing.assert_allclose(c0[2], means[2], atol=1e-6)
    b0 = trainer.dfc.bias.detach().numpy().copy()
    np.testing.assert_array_equal(b0, [*p0.binary_bias, 0.0])
    np.testing.assert_array_equal(trainer.dfc.converter.weight.detach().numpy(), p0.converter)

    result = trainer.run()
    p1 = result.private
    for arr in (p1.identity_weights, p1.binary_weights, p1.binary_bias, p1.converter):
        assert np.isfinite(arr).all()
    assert p1.identity_weights.shape == (3, D) and p1.binary_bias.shape == (3,)
    assert p1.rounds == 2
    assert math.isfinite(result.metrics["loss"]) and "contrastive" in result.metrics
    assert all(np.isfinite(v).all() for v in result.update.arrays.values())
    # trained on from the stored rows: moved, but still close to them
    assert not np.array_equal(p1.identity_weights[:2], p0.identity_weights)
    assert (_cos(p1.identity_weights[:2], p0.identity_weights) > 0.9).all()
    assert _cos(p1.identity_weights[2], means[2]) > 0.9


# ========================================================================= private alignment
def _state(labels: list[int], offset: float = 0.0, d: int = 4):
    """A private state whose row k is ``labels[k] + offset`` everywhere (so rows name their
    label), a converter and a local backbone."""
    from fedfr.train.local_state import PrivateState

    lab = np.asarray(labels, np.float32)[:, None] + np.float32(offset)
    return PrivateState(identity_weights=np.repeat(lab, d, 1),
                        converter=np.eye(d, dtype=np.float32) * 2,
                        binary_weights=np.repeat(-lab, d, 1),
                        binary_bias=lab[:, 0] / 10,
                        local_backbone={"conv.weight": np.arange(6, dtype=np.float32)},
                        rounds=3)


def _write(home: DeviceHome, rel: str, labels: list[int], offset: float = 0.0) -> None:
    data = training._private_bytes(_state(labels, offset), np.asarray(labels),
                                   {"model_version": "7", "round_id": "4"})
    (home.path / rel).write_bytes(data)


def test_load_private_aligns_rows_to_the_requested_labels(tmp_path):
    with DeviceHome(tmp_path / "home") as home:
        assert training.load_private(home, [0, 1]) == (None, {})
        _write(home, training.PRIVATE_FILE, [0, 2, 5])
        private, meta = training.load_private(home, [2, 7, 5])
    assert meta == {"model_version": "7", "round_id": "4"}
    w = private.identity_weights
    assert w.shape == (3, 4) and w.dtype == np.float32
    np.testing.assert_array_equal(w[0], 2.0)
    assert np.isnan(w[1]).all()
    np.testing.assert_array_equal(w[2], 5.0)
    np.testing.assert_array_equal(private.binary_weights[[0, 2]], [[-2.0] * 4, [-5.0] * 4])
    assert np.isnan(private.binary_weights[1]).all()
    np.testing.assert_allclose(private.binary_bias[[0, 2]], [0.2, 0.5])
    assert np.isnan(private.binary_bias[1])
    # what is not per identity is kept as stored
    np.testing.assert_array_equal(private.converter, np.eye(4) * 2)
    np.testing.assert_array_equal(private.local_backbone["conv.weight"], np.arange(6))
    assert private.rounds == 3


def _enroll(home: Path, name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    files = []
    for j in range(2):
        f = home.parent / f"{name}-{j}.png"
        f.write_bytes(encode_png(rng.integers(0, 256, (112, 112, 3), np.uint8)))
        files.append(f)
    api.enroll(home, name, files, check_crops=False)


def _labels(home: Path) -> dict[str, int]:
    with DeviceHome(home) as h:
        return dict(h.db.execute("SELECT name, label FROM identities"))


def _read(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_forget_scrubs_the_identity_from_current_and_pending_private_state(tmp_path):
    home = tmp_path / "home"
    for k, name in enumerate(("ann", "ben", "cat")):
        _enroll(home, name, k)
    labels = _labels(home)
    assert sorted(labels.values()) == [0, 1, 2]
    order = [labels["cat"], labels["ann"], labels["ben"]]  # stored order is the file's own
    with DeviceHome(home) as h:
        _write(h, training.PRIVATE_FILE, order)
        _write(h, training.PENDING_PRIVATE_FILE, order, offset=100.0)
    _enroll(home, "dan", 3)  # enrolled after the round: no row yet
    before = {rel: (home / rel).read_bytes()
              for rel in (training.PRIVATE_FILE, training.PENDING_PRIVATE_FILE)}

    assert api.forget(home, "dan")["removed_images"] == 2
    for rel, data in before.items():  # no row of dan's: the files are not rewritten
        assert (home / rel).read_bytes() == data

    api.forget(home, "ben")
    keep = [labels["cat"], labels["ann"]]
    for rel, offset in ((training.PRIVATE_FILE, 0.0), (training.PENDING_PRIVATE_FILE, 100.0)):
        arrays = _read(home / rel)
        assert arrays[training.LABELS_KEY].tolist() == keep, rel
        want = np.asarray(keep, np.float32)[:, None] + offset
        np.testing.assert_array_equal(arrays["local.identity_weights"], np.repeat(want, 4, 1))
        np.testing.assert_array_equal(arrays["dfc.binary_weights"], np.repeat(-want, 4, 1))
        np.testing.assert_allclose(arrays["dfc.binary_bias"], want[:, 0] / 10)
        np.testing.assert_array_equal(arrays["dfc.converter"], np.eye(4) * 2)  # untouched
        assert int(arrays["local.rounds"]) == 3
        assert training._private_meta(home / rel) == {"model_version": "7", "round_id": "4"}
    assert "ben" not in _labels(home)

    # a later identity never inherits ben's label: its row is NaN (new), the others stay
    _enroll(home, "eve", 4)
    eve = _labels(home)["eve"]
    assert eve not in labels.values()
    with DeviceHome(home) as h:
        private, _ = training.load_private(h, [labels["ann"], eve, labels["cat"]])
    w = private.identity_weights
    np.testing.assert_array_equal(w[[0, 2], 0], [labels["ann"], labels["cat"]])
    assert np.isnan(w[1]).all()


# ========================================================================= DeviceClient
BLOB = np.random.default_rng(5).integers(0, 256, 300_000, np.uint8).tobytes()
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
TASK = {"round_id": 3, "model_version": 2, "upload_url": "/v1/rounds/3/updates",
        "model": {"url": "/v1/models/2", "sha256": BLOB_SHA, "size": len(BLOB)}}


class _Handler(BaseHTTPRequestHandler):
    """``/blob`` honours ``Range``; ``/blob-norange`` ignores it (200, whole blob);
    ``/blob-corrupt`` serves a flipped byte; ``/blob-503`` is 503 + ``Retry-After: 3`` the
    first time; ``/missing`` is a 404 problem. ``POST /v1/checkin`` answers the next of
    ``server.checkins`` (status, headers, body), else 204."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.body_bytes += len(body)

    def do_GET(self) -> None:
        srv = self.server
        srv.log.append(("GET", self.path, dict(self.headers)))
        if self.path == "/missing":
            return self._reply(404, json.dumps({"reason": "unknown_model",
                                                "detail": "no such version"}).encode(),
                               {"Content-Type": "application/problem+json"})
        if self.path == "/blob-503" and not srv.failed:
            srv.failed = True
            return self._reply(503, b"busy", {"Retry-After": "3"})
        data = BLOB
        if self.path == "/blob-corrupt":
            data = BLOB[:1000] + bytes([BLOB[1000] ^ 1]) + BLOB[1001:]
        rng = self.headers.get("Range")
        if rng and self.path != "/blob-norange":
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            return self._reply(206, data[start:], {
                "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        return self._reply(200, data)

    def do_POST(self) -> None:
        srv = self.server
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        srv.log.append(("POST", self.path, dict(self.headers)))
        status, headers, body = srv.checkins.pop(0) if srv.checkins else (204, {}, b"")
        self._reply(status, body, headers)


@pytest.fixture(scope="module")
def http_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(5)


@pytest.fixture
def dc(http_server):
    """A DeviceClient with a recording sleep; the server's log and queues reset."""
    http_server.log, http_server.checkins = [], []
    http_server.body_bytes, http_server.failed = 0, False
    sleeps: list[float] = []
    c = client.DeviceClient(f"http://127.0.0.1:{http_server.server_address[1]}", "tok-123",
                            retry=client.Retry(attempts=3, sleep=sleeps.append))
    c.sleeps = sleeps
    c.server_state = http_server
    yield c
    c.close()


def _gets(dc) -> list[dict]:
    return [h for m, _, h in dc.server_state.log if m == "GET"]


def test_download_resumes_from_the_part_file(dc, tmp_path):
    dest = tmp_path / "m.bin"
    part = tmp_path / "m.bin.part"
    part.write_bytes(BLOB[:100_000])
    seen = []
    out = dc.download("/blob", dest, sha256=BLOB_SHA, size=len(BLOB),
                      progress=lambda done, total: seen.append((done, total)))
    assert out == dest and dest.read_bytes() == BLOB and not part.exists()
    (h,) = _gets(dc)
    assert h["Range"] == "bytes=100000-" and h["If-Range"] == f'"{BLOB_SHA}"'
    assert h["Authorization"] == "Bearer tok-123"
    assert dc.server_state.body_bytes == len(BLOB) - 100_000  # only the rest was sent
    assert seen[-1] == (len(BLOB), len(BLOB))
    assert dc.sleeps == []


def test_download_restarts_when_the_server_ignores_range(dc, tmp_path):
    dest = tmp_path / "m.bin"
    (tmp_path / "m.bin.part").write_bytes(BLOB[:100_000])
    dc.download("/blob-norange", dest, sha256=BLOB_SHA, size=len(BLOB))
    assert dest.read_bytes() == BLOB  # the 200's body replaced the prefix, not appended
    assert len(_gets(dc)) == 1 and "Range" in _gets(dc)[0]


def test_download_with_a_wrong_prefix_or_oversized_part_starts_over(dc, tmp_path):
    dest = tmp_path / "m.bin"
    part = tmp_path / "m.bin.part"
    part.write_bytes(b"\0" * 100_000)  # not the blob's bytes: the hash check catches it
    dc.download("/blob", dest, sha256=BLOB_SHA, size=len(BLOB))
    assert dest.read_bytes() == BLOB and not part.exists()
    first, second = _gets(dc)
    assert "Range" in first and "Range" not in second

    dest.unlink()
    dc.server_state.log.clear()
    part.write_bytes(BLOB + b"extra")  # longer than the blob: dropped
    dc.download("/blob", dest, sha256=BLOB_SHA, size=len(BLOB))
    assert dest.read_bytes() == BLOB
    assert ["Range" in h for h in _gets(dc)] == [False]


def test_download_hash_mismatch_twice_raises_and_keeps_nothing(dc, tmp_path):
    dest = tmp_path / "m.bin"
    with pytest.raises(client.DownloadError) as e:
        dc.download("/blob-corrupt", dest, sha256=BLOB_SHA, size=len(BLOB))
    assert isinstance(e.value, ServerError) and e.value.reason == "download_corrupt"
    assert BLOB_SHA in str(e.value)
    assert not dest.exists() and not (tmp_path / "m.bin.part").exists()
    assert list(tmp_path.iterdir()) == []
    assert len(_gets(dc)) == 2


def test_download_honours_retry_after_on_503(dc, tmp_path):
    dest = tmp_path / "m.bin"
    dc.download("/blob-503", dest, sha256=BLOB_SHA, size=len(BLOB))
    assert dest.read_bytes() == BLOB
    assert dc.sleeps == [3.0]
    assert len(_gets(dc)) == 2


def test_download_4xx_raises_server_error_without_retry(dc, tmp_path):
    with pytest.raises(ServerError) as e:
        dc.download("/missing", tmp_path / "m.bin", sha256=BLOB_SHA, size=len(BLOB))
    assert not isinstance(e.value, client.DownloadError)
    assert (e.value.status, e.value.reason, e.value.detail) == (404, "unknown_model",
                                                                "no such version")
    assert len(_gets(dc)) == 1 and dc.sleeps == []
    assert not (tmp_path / "m.bin").exists()


def test_checkin_without_work_returns_retry_after(dc):
    st = dc.server_state
    st.checkins = [(204, {"Retry-After": "7"}, b""), (204, {}, b""),
                   (204, {"Retry-After": "soon"}, b"")]
    assert dc.checkin() == (None, 7.0)
    assert dc.checkin() == (None, None)
    assert dc.checkin() == (None, None)
    assert [(m, p) for m, p, _ in st.log] == [("POST", "/v1/checkin")] * 3
    assert all(h["Authorization"] == "Bearer tok-123" for _, _, h in st.log)


def test_checkin_returns_the_task(dc):
    dc.server_state.checkins = [(200, {"Content-Type": "application/json"},
                                 json.dumps(TASK).encode())]
    assert dc.checkin() == (TASK, None)


@pytest.mark.parametrize(("body", "missing"), [
    (json.dumps({"hello": 1}).encode(), "round_id"),
    (json.dumps({k: v for k, v in TASK.items() if k != "upload_url"}).encode(), "upload_url"),
    (json.dumps({**TASK, "model": {"url": "/m", "size": 1}}).encode(), "model.sha256"),
    (json.dumps(None).encode(), ""),
    (json.dumps(5).encode(), ""),
    (b"not json", ""),
    (json.dumps([1, 2]).encode(), "not an object"),
    (json.dumps(" ".join(TASK)).encode(), "not an object"),
])
def test_checkin_answer_that_is_not_a_task_is_invalid_response(dc, body, missing):
    dc.server_state.checkins = [(200, {"Content-Type": "application/json"}, body)]
    with pytest.raises(ServerError) as e:
        dc.checkin()
    assert (e.value.status, e.value.reason) == (200, "invalid_response")
    assert missing in e.value.detail
    assert dc.sleeps == [] and len(dc.server_state.log) == 1


def test_checkin_honours_retry_after_on_503_and_does_not_retry_4xx(dc):
    st = dc.server_state
    st.checkins = [(503, {"Retry-After": "2"}, b""), (503, {"Retry-After": "100"}, b""),
                   (204, {"Retry-After": "1"}, b"")]
    assert dc.checkin() == (None, 1.0)
    assert dc.sleeps == [2.0, 8.0]  # the server's delay, capped at max_backoff
    st.log.clear()
    st.checkins = [(401, {"Content-Type": "application/json"},
                    json.dumps({"reason": "invalid_device_token", "detail": "no"}).encode())]
    with pytest.raises(ServerError) as e:
        dc.checkin()
    assert (e.value.status, e.value.reason) == (401, "invalid_device_token")
    assert len(st.log) == 1 and dc.sleeps == [2.0, 8.0]
