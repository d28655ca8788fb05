"""Unit tests of the aggregator's building blocks, without a server: the wire formats
(fedfr.fl.wire), the blob store, the settings, update validation and the Range parser."""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save
from safetensors.numpy import save_file as st_save_file

from aggregator import blobs as blobs_mod
from aggregator.app import _parse_range
from aggregator.blobs import FileBlobStore, check_sha
from aggregator.problems import Problem
from aggregator.settings import Settings
from aggregator.validation import check_against_spec, check_norm, shared_spec, update_norm_ratio
from fedfr.errors import DataFormatError
from fedfr.fl import GlobalModel, SharedUpdate
from fedfr.fl.wire import (
    MAX_METADATA_BYTES,
    UpdateEnvelope,
    decode_update,
    encode_update,
    load_public_pack,
    parse_update_metadata,
    save_public_pack,
)


# ============================================================================ fedfr.fl.wire
def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "backbone.conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "backbone.bn.running_mean": rng.standard_normal(4).astype(np.float32),
        "backbone.bn.num_batches_tracked": np.array(17, np.int64),  # 0-d
        "public_embeddings.rows": rng.standard_normal((2, 8)).astype(np.float32),
        "public_embeddings.index": np.array([3, 0], np.int64),
    }


def _meta(**changes: object) -> dict[str, str]:
    meta = {"format": "fedfr-update", "format_version": "1", "base_version": "4",
            "round_id": "9", "num_samples": "12", "metrics": json.dumps({"loss": 0.5})}
    for k, v in changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    return meta


def _file(arrays: dict | None = None, **meta: object) -> bytes:
    return st_save(arrays if arrays is not None else _arrays(), metadata=_meta(**meta))


def test_update_round_trip_bytes_and_file(tmp_path):
    arrays = _arrays()
    upd = SharedUpdate(arrays, 12, {"loss": 0.25, "acc": 1})
    data = encode_update(upd, base_version=4, round_id=9)
    path = tmp_path / "u.safetensors"
    path.write_bytes(data)
    for src in (data, path, str(path), bytearray(data), memoryview(data)):
        env = decode_update(src)
        assert isinstance(env, UpdateEnvelope)
        assert (env.base_version, env.round_id) == (4, 9)
        assert env.update.num_samples == 12
        assert env.update.metrics == {"loss": 0.25, "acc": 1.0}
        assert set(env.update.arrays) == set(arrays)
        for k, v in arrays.items():
            got = env.update.arrays[k]
            assert got.dtype == v.dtype and got.shape == v.shape, k
            np.testing.assert_array_equal(got, v)
    counter = decode_update(data).update.arrays["backbone.bn.num_batches_tracked"]
    assert counter.shape == () and int(counter) == 17


def test_encode_writes_the_documented_metadata():
    data = encode_update(SharedUpdate(_arrays(), 3), base_version=0, round_id=1)
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8:8 + n])["__metadata__"]
    assert meta == {"format": "fedfr-update", "format_version": "1", "base_version": "0",
                    "round_id": "1", "num_samples": "3", "metrics": "{}"}


def _header_file(header: bytes, extra: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + extra


BAD_UPDATES = {
    "empty": (b"", "shorter than its 8-byte header"),
    "seven_bytes": (b"\x01" * 7, "shorter than its 8-byte header"),
    "header_past_end": (struct.pack("<Q", 10_000) + b"{}", "header length exceeds the file"),
    "header_not_json": (_header_file(b"{nope"), "header is not JSON"),
    "header_not_object": (_header_file(b"[1, 2]"), "not a JSON object"),
    "bad_tensor_offsets": (_header_file(json.dumps({
        "__metadata__": _meta(),
        "backbone.w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode(),
        b"\0" * 4), "not a valid safetensors file"),
    "no_metadata": (st_save(_arrays()), "not a fedfr update"),
    "wrong_format": (_file(format="fedfr-checkpoint"), "not a fedfr update"),
    "wrong_version": (_file(format_version="2"), "unsupported update format version"),
    "missing_base": (_file(base_version=None), "'base_version' must be an integer"),
    "bad_round": (_file(round_id="nine"), "'round_id' must be an integer"),
    "negative_round": (_file(round_id="-1"), "'round_id' must be >= 0"),
    "zero_samples": (_file(num_samples="0"), "'num_samples' must be >= 1"),
    "float_samples": (_file(num_samples="1.5"), "'num_samples' must be an integer"),
    "metrics_not_json": (_file(metrics="{loss"), "metrics are not JSON"),
    "metrics_not_object": (_file(metrics="[1]"), "JSON object of numbers"),
    "metric_string": (_file(metrics='{"loss": "low"}'), "'loss' must be a finite number"),
    "metric_bool": (_file(metrics='{"ok": true}'), "'ok' must be a finite number"),
    "metric_nan": (_file(metrics='{"loss": NaN}'), "'loss' must be a finite number"),
    "metric_inf": (_file(metrics='{"loss": Infinity}'), "'loss' must be a finite number"),
    "metadata_too_large": (_file(note="x" * (MAX_METADATA_BYTES + 1)), "metadata larger"),
    "private_tensor": (_file({**_arrays(), "local.identity_weights": np.zeros((2, 8),
                                                                            np.float32)}),
                       "local.identity_weights"),
    "unknown_tensor": (_file({**_arrays(), "head.weight": np.zeros(2, np.float32)}),
                       "head.weight"),
    "rows_without_index": (_file({k: v for k, v in _arrays().items()
                                  if k != "public_embeddings.index"}), "sent together"),
    "float_index": (_file({**_arrays(), "public_embeddings.index": np.array([0., 1.])}),
                    "must be integers"),
    "duplicate_index": (_file({**_arrays(), "public_embeddings.index": np.array([1, 1])}),
                        "distinct row numbers"),
    "negative_index": (_file({**_arrays(), "public_embeddings.index": np.array([-1, 1])}),
                       "distinct row numbers >= 0"),
    "index_shape": (_file({**_arrays(), "public_embeddings.index": np.array([1, 2, 3])}),
                    "must be (K, D)"),
}


@pytest.mark.parametrize("case", list(BAD_UPDATES))
def test_decode_update_failures(case, tmp_path):
    data, words = BAD_UPDATES[case]
    with pytest.raises(DataFormatError) as e:
        decode_update(data)
    assert words in str(e.value), str(e.value)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(DataFormatError) as e2:  # the file path (memory-mapped) route too
        decode_update(path)
    if case not in ("empty", "seven_bytes", "header_past_end", "header_not_json",
                    "header_not_object"):  # safetensors' own wording for unreadable files
        assert words in str(e2.value), str(e2.value)


def test_decode_missing_file_is_a_data_format_error(tmp_path):
    with pytest.raises(DataFormatError, match="not a valid safetensors file"):
        decode_update(tmp_path / "nope.safetensors")


def test_parse_update_metadata_values():
    assert parse_update_metadata(_meta(metrics='{"a": 1, "b": 2.5}')) == (
        4, 9, 12, {"a": 1.0, "b": 2.5})
    assert parse_update_metadata(_meta(metrics=None))[3] == {}
    with pytest.raises(DataFormatError, match="not a fedfr update"):
        parse_update_metadata(None)


def test_public_pack_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 16, 16, 3), np.uint8)
    labels = np.array([0, 0, 1, 4, 4, 2], np.int32)
    p = save_public_pack(tmp_path / "sub" / "pack.safetensors", "images", images, labels,
                         metadata={"source": "unit"})
    kind, imgs, labs, meta = load_public_pack(p)
    assert kind == "images" and meta == {"source": "unit"}
    np.testing.assert_array_equal(imgs, images)
    assert labs.dtype == np.int64
    np.testing.assert_array_equal(labs, labels)
    e = save_public_pack(tmp_path / "emb.safetensors", "embeddings")
    assert load_public_pack(e) == ("embeddings", None, None, {})
    assert not list(tmp_path.glob("**/*.tmp"))  # written atomically


def test_save_public_pack_refuses_bad_input(tmp_path):
    imgs = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="kind must be one of"):
        save_public_pack(tmp_path / "a", "faces", imgs, np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="needs images and labels"):
        save_public_pack(tmp_path / "a", "images", imgs)
    with pytest.raises(DataFormatError, match="uint8"):
        save_public_pack(tmp_path / "a", "images", imgs.astype(np.float32), np.zeros(2))
    with pytest.raises(DataFormatError, match="labels must be"):
        save_public_pack(tmp_path / "a", "images", imgs, np.zeros(3, np.int64))
    with pytest.raises(DataFormatError, match=">= 0"):
        save_public_pack(tmp_path / "a", "images", imgs, np.array([0, -1]))
    assert not (tmp_path / "a").exists()


def _pack_file(path: Path, tensors: dict, **meta: str) -> Path:
    base = {"format": "fedfr-public-pack", "format_version": "1", "kind": "images",
            "metadata": "{}"}
    st_save_file(tensors, str(path), metadata={**base, **meta})
    return path


BAD_PACKS = {
    "not_safetensors": (None, {}, "not a valid safetensors file"),
    "update_file": ("update", {}, "not a fedfr public pack"),
    "wrong_version": ("pack", {"format_version": "7"}, "unsupported public pack version"),
    "unknown_kind": ("pack", {"kind": "videos"}, "unknown public pack kind"),
    "metadata_not_json": ("pack", {"metadata": "{"}, "metadata is not JSON"),
    "embeddings_with_tensors": ("pack", {"kind": "embeddings"}, "carries no tensor"),
    "extra_tensor": ("extra", {}, "exactly 'images' and 'labels'"),
    "float_images": ("float", {}, "uint8"),
}


@pytest.mark.parametrize("case", list(BAD_PACKS))
def test_load_public_pack_failures(case, tmp_path):
    kind, meta, words = BAD_PACKS[case]
    path = tmp_path / "p.safetensors"
    imgs = np.zeros((2, 4, 4, 3), np.uint8)
    labels = np.zeros(2, np.int64)
    if kind is None:
        path.write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00garbage")
    elif kind == "update":
        path.write_bytes(_file())
    elif kind == "pack":
        _pack_file(path, {"images": imgs, "labels": labels}, **meta)
    elif kind == "extra":
        _pack_file(path, {"images": imgs, "labels": labels, "x": labels})
    elif kind == "float":
        _pack_file(path, {"images": imgs.astype(np.float32), "labels": labels})
    with pytest.raises(DataFormatError) as e:
        load_public_pack(path)
    assert words in str(e.value), str(e.value)
    if kind != "float":  # the tensor checks (shared with save_public_pack) do not name it
        assert str(path) in str(e.value), str(e.value)


# ============================================================================ blob store
def test_blob_store_content_addressing(tmp_path):
    store = FileBlobStore(tmp_path / "blobs")
    data = b"hello blobs" * 1000
    sha, size = store.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest() and size == len(data)
    p = store.path(sha)
    assert p == tmp_path / "blobs" / sha[:2] / sha[2:4] / sha
    assert p.read_bytes() == data and store.exists(sha) and store.size(sha) == len(data)
    # the same content again: a no-op, the staged copy is consumed
    staged = store.staging()
    staged.write_bytes(data)
    assert store.put_file(staged) == (sha, size)
    assert not staged.exists()
    assert [q for q in (tmp_path / "blobs").rglob("*") if q.is_file()] == [p]
    # other content, other name
    sha2, _ = store.put_bytes(b"other")
    assert sha2 != sha and store.path(sha2).read_bytes() == b"other"
    store.delete(sha2)
    assert not store.exists(sha2)
    store.delete(sha2)  # twice: fine
    with pytest.raises(FileNotFoundError):
        store.path(sha2)
    for bad in ("../../etc/passwd", sha.upper(), sha[:-1], ""):
        with pytest.raises(ValueError, match="not a sha256"):
            store.exists(bad)
    assert check_sha(sha) == sha


def test_blob_iter_range(tmp_path, monkeypatch):
    monkeypatch.setattr(blobs_mod, "CHUNK", 7)
    store = FileBlobStore(tmp_path)
    data = bytes(range(256)) * 3
    sha, _ = store.put_bytes(data)
    for start, end in [(0, len(data) - 1), (10, 99), (5, 5), (700, 767), (760, 10_000)]:
        chunks = list(store.iter_range(sha, start, end))
        assert b"".join(chunks) == data[start:end + 1], (start, end)
        assert all(len(c) <= 7 for c in chunks)
    assert list(store.iter_range(sha, 10, 9)) == []


def test_staging_cleanup_removes_only_old_files(tmp_path):
    store = FileBlobStore(tmp_path)
    old, fresh = store.staging(), store.staging()
    assert old.parent == fresh.parent == tmp_path / "tmp" and old.suffix == ".part"
    other = tmp_path / "tmp" / "keep.txt"
    other.write_text("not ours")
    past = time.time() - 7200
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert store.clean_staging(older_than=3600) == 1
    assert not old.exists() and fresh.exists() and other.exists()
    assert store.clean_staging(older_than=3600) == 0
    assert store.clean_staging(older_than=-1) == 1 and not fresh.exists()


def test_no_partial_blob_after_a_failed_write(tmp_path, monkeypatch):
    store = FileBlobStore(tmp_path)
    data = b"x" * 5000
    sha = hashlib.sha256(data).hexdigest()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(blobs_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.put_bytes(data)
    assert not store.exists(sha)
    assert not list((tmp_path / "tmp").iterdir())  # put_bytes removed its staged copy
    monkeypatch.undo()

    monkeypatch.setattr(blobs_mod.os, "fsync", boom)
    staged = store.staging()
    staged.write_bytes(data)
    with pytest.raises(OSError):
        store.put_file(staged)
    assert not store.exists(sha) and staged.exists()  # the caller's file is left to it
    monkeypatch.undo()
    assert store.put_file(staged) == (sha, len(data)) and store.path(sha).read_bytes() == data


# ============================================================================ settings
def test_settings_from_env_parses_every_type(tmp_path):
    env = {"FEDFR_DATA_DIR": str(tmp_path), "FEDFR_DATABASE_URL": "postgresql://u@h/db",
           "FEDFR_ADMIN_TOKEN": "fat_x", "FEDFR_MAX_UPLOAD_BYTES": "1234",
           "FEDFR_MAX_UPDATE_NORM_RATIO": "0.25", "FEDFR_CHECKIN_RETRY_AFTER": "7",
           "FEDFR_SWEEP_INTERVAL": "0.5", "FEDFR_AGGREGATION_LEASE": "12.5",
           "FEDFR_KEEP_UPDATES": "yes", "FEDFR_AUTO_MIGRATE": "0", "OTHER": "ignored"}
    s = Settings.from_env(env)
    assert s == Settings(data_dir=tmp_path, database_url="postgresql://u@h/db",
                         admin_token="fat_x", max_upload_bytes=1234, max_update_norm_ratio=0.25,
                         checkin_retry_after=7, sweep_interval=0.5, aggregation_lease=12.5,
                         keep_updates=True, auto_migrate=False)
    assert isinstance(s.data_dir, Path) and s.url == "postgresql://u@h/db"
    for raw, want in [("1", True), ("TRUE", True), ("on", True), ("Yes ", True), ("0", False),
                      ("false", False), ("off", False)]:
        assert Settings.from_env({"FEDFR_DATA_DIR": "d", "FEDFR_KEEP_UPDATES": raw}
                                 ).keep_updates is want, raw
    # empty values fall back to the defaults; overrides win over the environment
    s = Settings.from_env({"FEDFR_DATA_DIR": "d", "FEDFR_MAX_UPLOAD_BYTES": ""},
                          max_upload_bytes=5, data_dir=tmp_path)
    assert s.max_upload_bytes == 5 and s.data_dir == tmp_path
    assert s.sweep_interval == 2.0 and s.admin_token is None


def test_settings_defaults_and_paths(tmp_path):
    s = Settings(tmp_path / "d")
    assert s.url == f"sqlite:///{(tmp_path / 'd' / 'aggregator.db').resolve()}"
    assert s.blob_dir == tmp_path / "d" / "blobs"
    assert s.admin_token_file == tmp_path / "d" / "admin_token"
    t = s.with_(max_upload_bytes=9)
    assert t.max_upload_bytes == 9 and s.max_upload_bytes == 0


@pytest.mark.parametrize("env,words", [
    ({}, "FEDFR_DATA_DIR is not set"),
    ({"FEDFR_DATA_DIR": "d", "FEDFR_MAX_UPLOAD_BYTES": "lots"},
     "FEDFR_MAX_UPLOAD_BYTES='lots' is not a valid int"),
    ({"FEDFR_DATA_DIR": "d", "FEDFR_MAX_UPLOAD_BYTES": "1.5"}, "FEDFR_MAX_UPLOAD_BYTES"),
    ({"FEDFR_DATA_DIR": "d", "FEDFR_SWEEP_INTERVAL": "fast"}, "FEDFR_SWEEP_INTERVAL='fast'"),
    ({"FEDFR_DATA_DIR": "d", "FEDFR_MAX_UPLOAD_BYTES": "-1"}, "max_upload_bytes must be >= 0"),
    ({"FEDFR_DATA_DIR": "d", "FEDFR_MAX_UPDATE_NORM_RATIO": "0"},
     "max_update_norm_ratio must be > 0"),
    ({"FEDFR_DATA_DIR": "d", "FEDFR_MAX_UPDATE_NORM_RATIO": "nan"},
     "max_update_norm_ratio must be > 0"),
    ({"FEDFR_DATA_DIR": "d", "FEDFR_EVALUATION_BATCH_SIZE": "0"},
     "evaluation_batch_size must be >= 1"),
])
def test_settings_bad_values(env, words):
    with pytest.raises(ValueError) as e:
        Settings.from_env(env)
    assert words in str(e.value), str(e.value)


def test_settings_to_env_round_trip(tmp_path):
    for s in (Settings(tmp_path),
              Settings(tmp_path, database_url="sqlite:////x.db", admin_token="fat_t",
                       max_upload_bytes=77, max_update_norm_ratio=0.125, checkin_retry_after=3,
                       sweep_interval=0.1, aggregation_lease=1e-3, keep_updates=True,
                       auto_migrate=False)):
        env = s.to_env()
        assert all(k.startswith("FEDFR_") and isinstance(v, str) for k, v in env.items())
        assert Settings.from_env(env) == s
    env = Settings(tmp_path).to_env()
    assert "FEDFR_ADMIN_TOKEN" not in env and "FEDFR_DATABASE_URL" not in env
    assert env["FEDFR_KEEP_UPDATES"] == "0" and env["FEDFR_AUTO_MIGRATE"] == "1"


# ============================================================================ validation
def _model(pub: bool = True) -> GlobalModel:
    return GlobalModel(
        arch="tiny", embedding_size=2, contract={},
        backbone={"w": np.array([[1, 2], [3, 4]], np.float32), "n": np.array(5, np.int64)},
        public_embeddings=np.array([[1, 0], [0, 1], [1, 1]], np.float32) if pub else None)


def _env(**arrays: np.ndarray) -> UpdateEnvelope:
    base = {"backbone.w": np.array([[1, 2], [3, 4]], np.float32),
            "backbone.n": np.array(5, np.int64),
            "public_embeddings.rows": np.array([[1, 1]], np.float32),
            "public_embeddings.index": np.array([2], np.int64)}
    for k, v in arrays.items():
        key = k.replace("__", ".")
        if v is None:
            base.pop(key)
        else:
            base[key] = v
    return UpdateEnvelope(SharedUpdate(base, 1), base_version=1, round_id=1)


def test_shared_spec():
    spec = shared_spec(_model())
    assert spec == {"tensors": {"backbone.w": ["float32", [2, 2]], "backbone.n": ["int64", []]},
                    "public_rows": 3, "public_dim": 2, "public_dtype": "float32"}
    assert json.loads(json.dumps(spec)) == spec  # stored as JSON
    assert shared_spec(_model(pub=False))["public_rows"] is None


def test_check_against_spec_accepts_a_matching_update():
    spec = shared_spec(_model())
    check_against_spec(_env(), spec)
    check_against_spec(_env(public_embeddings__rows=None, public_embeddings__index=None), spec)
    empty = _env(public_embeddings__rows=np.zeros((0, 2), np.float32),
                 public_embeddings__index=np.zeros(0, np.int64))
    check_against_spec(empty, spec)


@pytest.mark.parametrize("changes,reason,words", [
    ({"backbone__w": None}, "keys_mismatch", "missing ['backbone.w']"),
    ({"backbone__x": np.zeros(1, np.float32)}, "keys_mismatch", "unexpected ['backbone.x']"),
    ({"backbone__w": np.zeros((2, 3), np.float32)}, "shape_mismatch", "[2, 3]"),
    ({"backbone__n": np.array([5], np.int64)}, "shape_mismatch", "backbone.n"),
    ({"backbone__w": np.zeros((2, 2), np.float16)}, "dtype_mismatch", "float16"),
    ({"backbone__n": np.array(5, np.int32)}, "dtype_mismatch", "int32"),
    ({"public_embeddings__rows": np.zeros((1, 3), np.float32)}, "shape_mismatch", "width 3"),
    ({"public_embeddings__rows": np.zeros((1, 2), np.float64)}, "dtype_mismatch", "float64"),
    ({"public_embeddings__index": np.array([3], np.int64)}, "shape_mismatch",
     "outside the 3 public classes"),
    ({"backbone__w": np.array([[1, np.nan], [3, 4]], np.float32)}, "non_finite", "backbone.w"),
    ({"backbone__w": np.array([[1, 2], [np.inf, 4]], np.float32)}, "non_finite", "backbone.w"),
    ({"public_embeddings__rows": np.array([[-np.inf, 0]], np.float32)}, "non_finite",
     "public_embeddings.rows"),
])
def test_check_against_spec_refusals(changes, reason, words):
    with pytest.raises(Problem) as e:
        check_against_spec(_env(**changes), shared_spec(_model()))
    assert e.value.status == 400 and e.value.reason == reason
    assert words in e.value.detail, e.value.detail


def test_public_rows_for_a_model_without_public_embeddings():
    with pytest.raises(Problem) as e:
        check_against_spec(_env(), shared_spec(_model(pub=False)))
    assert e.value.reason == "keys_mismatch" and "no public class embeddings" in e.value.detail


def test_update_norm_ratio_by_hand():
    base = _model()
    # unchanged update (the int counter is ignored even when it moves)
    assert update_norm_ratio(_env(backbone__n=np.array(99, np.int64)), base) == 0.0
    # backbone: diff 1^2 = 1, ref 1+4+9+16 = 30; public row 2: base [1, 1] (ref 2),
    # update [1, 3] (diff 2^2 = 4) -> sqrt(5 / 32)
    env = _env(backbone__w=np.array([[2, 2], [3, 4]], np.float32),
               public_embeddings__rows=np.array([[1, 3]], np.float32))
    assert update_norm_ratio(env, base) == pytest.approx(math.sqrt(5 / 32))
    # without public rows: sqrt(1 / 30)
    env = _env(backbone__w=np.array([[2, 2], [3, 4]], np.float32),
               public_embeddings__rows=None, public_embeddings__index=None)
    assert update_norm_ratio(env, base) == pytest.approx(math.sqrt(1 / 30))
    # a zero base: the absolute norm
    zero = base.with_(backbone={"w": np.zeros((2, 2), np.float32), "n": np.array(0)},
                      public_embeddings=None)
    env = _env(backbone__w=np.array([[3, 0], [0, 4]], np.float32),
               public_embeddings__rows=None, public_embeddings__index=None)
    assert update_norm_ratio(env, zero) == pytest.approx(5.0)


def test_check_norm_bound():
    base = _model()
    env = _env(backbone__w=np.array([[2, 2], [3, 4]], np.float32),
               public_embeddings__rows=np.array([[1, 3]], np.float32))
    r = math.sqrt(5 / 32)
    assert check_norm(env, base, 1.0) == pytest.approx(r)
    assert check_norm(env, base, r + 1e-9) == pytest.approx(r)
    with pytest.raises(Problem) as e:
        check_norm(env, base, 0.3)
    assert e.value.status == 400 and e.value.reason == "norm_bound"
    assert "0.3953" in e.value.detail and "0.3" in e.value.detail


# ============================================================================ Range header
@pytest.mark.parametrize("header,size,want", [
    ("bytes=0-9", 100, (0, 9)),
    ("bytes=10-99", 100, (10, 99)),
    ("bytes=90-", 100, (90, 99)),
    ("bytes=50-1000", 100, (50, 99)),
    ("bytes=-10", 100, (90, 99)),
    ("bytes=-1000", 100, (0, 99)),
    ("bytes=99-99", 100, (99, 99)),
    ("  bytes=1-2 ", 100, (1, 2)),
    ("bytes=-", 100, None),
    ("bytes=0-1,5-6", 100, None),
    ("items=0-1", 100, None),
    ("bytes=a-b", 100, None),
    ("", 100, None),
])
def test_parse_range(header, size, want):
    assert _parse_range(header, size) == want


@pytest.mark.parametrize("header,size", [
    ("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=5-4", 100),
    ("bytes=0-", 0), ("bytes=-5", 0),
])
def test_parse_range_unsatisfiable(header, size):
    with pytest.raises(Problem) as e:
        _parse_range(header, size)
    assert e.value.status == 416 and e.value.reason == "range_not_satisfiable"
    assert e.value.headers == {"Content-Range": f"bytes */{size}"}


def test_problem_body():
    p = Problem(409, "round_closed", "too late", headers={"Retry-After": "1"})
    assert p.body("/v1/x") == {"type": "urn:fedfr:problem:round_closed",
                               "title": "round closed", "status": 409, "detail": "too late",
                               "reason": "round_closed", "instance": "/v1/x"}
    assert "instance" not in p.body()


def test_garbage_collection_deletes_only_old_unreferenced_blobs(tmp_path):
    from aggregator.db import migrate
    from aggregator.service import Service

    settings = Settings(data_dir=tmp_path / "srv", admin_token="fat_x")
    migrate(settings.url)
    svc = Service(settings)
    try:
        ckpt = tmp_path / "m.safetensors"
        GlobalModel(arch="mbf_tiny", embedding_size=4, contract={},
                    backbone={"w": np.ones((2, 2), np.float32)},
                    public_embeddings=np.eye(3, 4, dtype=np.float32)).save(ckpt)
        version = svc.publish_model(ckpt)
        old_orphan, _ = svc.blobs.put_bytes(b"left by a killed upload")
        young_orphan, _ = svc.blobs.put_bytes(b"an upload between its blob and its row")
        long_ago = time.time() - 7200
        for sha in (old_orphan, version["sha256"]):
            os.utime(svc.blobs.path(sha), (long_ago, long_ago))
        assert svc.collect_garbage(min_age=3600) == 1
        assert not svc.blobs.exists(old_orphan)
        assert svc.blobs.exists(young_orphan) and svc.blobs.exists(version["sha256"])
        # storing the same content again makes an old blob young (the GC goes by age)
        os.utime(svc.blobs.path(young_orphan), (long_ago, long_ago))
        svc.blobs.put_bytes(b"an upload between its blob and its row")
        assert svc.collect_garbage(min_age=3600) == 0
    finally:
        svc.close()
