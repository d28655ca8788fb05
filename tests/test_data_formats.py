"""Readers/writers of the field's data formats: images, image folders, RecordIO, eval .bin."""

from __future__ import annotations

import io
import logging
import os
import pickle
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedfr.data.folder import ImageFolder
from fedfr.data.images import (
    decode_image,
    encode_jpeg,
    encode_png,
    load_images,
    read_image,
    write_image_atomic,
)
from fedfr.data.recordio import (
    IR_SIZE,
    MAGIC,
    RecordIODataset,
    RecordIOReader,
    encode_record,
    pack,
    unpack,
    write_recordio,
)
from fedfr.data.verification_bin import (
    VerificationSet,
    load_verification_bin,
    pairs_from_issame,
    write_verification_bin,
)
from fedfr.errors import DataFormatError

MAGIC_BYTES = struct.pack("<I", MAGIC)


def _img(seed: int, h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    """A smooth image (JPEG reproduces it closely)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [
        127 + 100 * np.sin(xx / (3 + c + rng.random()) + yy / (5 + rng.random())) for c in range(3)
    ]
    return np.clip(np.stack(chans, axis=-1), 0, 255).astype(np.uint8)


def _pil_bytes(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


def test_png_round_trip_is_exact():
    img = _img(0, 9, 13)
    out = decode_image(encode_png(img), source="mem")
    assert out.dtype == np.uint8 and out.shape == (9, 13, 3)
    np.testing.assert_array_equal(out, img)


def test_jpeg_round_trip_is_close():
    img = _smooth(1)
    out = decode_image(encode_jpeg(img, quality=95), source="mem")
    assert out.shape == img.shape
    assert np.abs(out.astype(int) - img).mean() < 3


@pytest.mark.parametrize(
    "mode,fmt",
    [("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"), ("LA", "PNG"), ("I;16", "PNG")],
)
def test_decode_converts_modes_to_rgb(mode, fmt):
    base = Image.fromarray(_img(2, 8, 10), mode="RGB")
    if mode == "I;16":
        src = Image.fromarray(np.full((8, 10), 65535, np.uint16))
    else:
        src = base.convert(mode)
    out = decode_image(_pil_bytes(src, fmt), source="mem")
    assert out.dtype == np.uint8 and out.shape == (8, 10, 3)
    if mode == "L":
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    if mode == "RGBA":
        np.testing.assert_array_equal(out, np.asarray(base))
    if mode == "I;16":
        assert (out == 255).all()


@pytest.mark.parametrize("data", [b"", b"not an image", encode_png(_img(3))[:40]])
def test_decode_garbage_names_source(data):
    with pytest.raises(DataFormatError, match="my-source-name"):
        decode_image(data, source="my-source-name")


def test_read_image_errors_name_path(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(DataFormatError, match=r"missing\.png"):
        read_image(missing)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataFormatError, match=r"bad\.jpg"):
        read_image(bad)
    with pytest.raises(DataFormatError, match=str(tmp_path.name)):
        read_image(tmp_path)  # a directory


def test_write_image_atomic(tmp_path):
    img = _img(4)
    p = tmp_path / "a.png"
    write_image_atomic(p, img)
    np.testing.assert_array_equal(read_image(p), img)
    write_image_atomic(tmp_path / "b.JPG", _smooth(5))
    assert read_image(tmp_path / "b.JPG").shape == (32, 32, 3)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.png", "b.JPG"]  # no temp left
    with pytest.raises(ValueError, match="suffix"):
        write_image_atomic(tmp_path / "c.gif", img)
    with pytest.raises(ValueError):
        write_image_atomic(tmp_path / "d.png", img.astype(np.float32))
    assert not (tmp_path / "d.png").exists()


def test_load_images_same_shape_and_resize(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        write_image_atomic(p, _img(i, 12, 10))
        paths.append(p)
    batch = load_images(paths, workers=3)
    assert batch.shape == (5, 12, 10, 3) and batch.dtype == np.uint8
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(batch[i], read_image(p))

    odd = tmp_path / "odd.png"
    write_image_atomic(odd, _img(9, 20, 20))
    with pytest.raises(DataFormatError, match=r"odd\.png.*\(20, 20, 3\)"):
        load_images([*paths, odd])
    resized = load_images([*paths, odd], size=(12, 10))
    assert resized.shape == (6, 12, 10, 3)
    np.testing.assert_array_equal(resized[0], batch[0])  # same-size images are left alone
    assert load_images([], size=(4, 5)).shape == (0, 4, 5, 3)

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(DataFormatError, match=r"bad\.png"):
        load_images([paths[0], bad, paths[1]], workers=2)


# --------------------------------------------------------------------------------------------
# image folder
# --------------------------------------------------------------------------------------------


def _make_folder(root: Path) -> None:
    (root / "bob").mkdir(parents=True)
    (root / "alice").mkdir()
    (root / "carol").mkdir()
    (root / ".hidden_identity").mkdir()
    write_image_atomic(root / "bob" / "2.png", _img(1))
    write_image_atomic(root / "bob" / "1.JPG", _smooth(2, 16, 16))
    write_image_atomic(root / "alice" / "x.jpeg", _smooth(3, 16, 16))
    write_image_atomic(root / "alice" / "a.PNG", _img(4))
    write_image_atomic(root / ".hidden_identity" / "z.png", _img(5))
    (root / "alice" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "alice" / "._a.png").write_bytes(b"appledouble junk")
    (root / "alice" / "notes.txt").write_text("not an image")
    (root / "alice" / "nested").mkdir()
    write_image_atomic(root / "alice" / "nested" / "deep.png", _img(6))
    write_image_atomic(root / "carol" / "c.png", _img(7))
    write_image_atomic(root / "stray.png", _img(8))  # in root itself: ignored, warned


def test_image_folder_layout(tmp_path, caplog):
    root = tmp_path / "faces"
    _make_folder(root)
    with caplog.at_level(logging.WARNING, logger="fedfr.data.folder"):
        ds = ImageFolder(root)
    assert "stray.png" in caplog.text
    assert ds.classes == ["alice", "bob", "carol"]
    assert [p.relative_to(root).as_posix() for p in ds.paths] == [
        "alice/a.PNG",
        "alice/x.jpeg",
        "bob/1.JPG",
        "bob/2.png",
        "carol/c.png",
    ]
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [0, 0, 1, 1, 2]
    assert len(ds) == 5 and ds.num_classes == 3
    images, labels = ds.load()
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], _img(4))
    np.testing.assert_array_equal(labels, ds.labels)
    images, _ = ds.load(size=(8, 8))
    assert images.shape == (5, 8, 8, 3)


def test_image_folder_drops_empty_identity(tmp_path, caplog):
    root = tmp_path / "faces"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    write_image_atomic(root / "b" / "1.png", _img(0))
    with caplog.at_level(logging.WARNING, logger="fedfr.data.folder"):
        ds = ImageFolder(root)
    assert ds.classes == ["b"] and ds.labels.tolist() == [0]
    assert "without images" in caplog.text


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataFormatError, match="nowhere"):
        ImageFolder(tmp_path / "nowhere")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataFormatError, match=r"file\.txt"):
        ImageFolder(f)
    no_ids = tmp_path / "no_ids"
    no_ids.mkdir()
    write_image_atomic(no_ids / "loose.png", _img(0))
    with pytest.raises(DataFormatError, match=r"no_ids.*no identity"):
        ImageFolder(no_ids)
    empty = tmp_path / "empty"
    (empty / "someone").mkdir(parents=True)
    (empty / "someone" / "readme.txt").write_text("x")
    with pytest.raises(DataFormatError, match=r"empty.*empty dataset"):
        ImageFolder(empty)


def test_image_folder_unreadable_image_names_file(tmp_path):
    root = tmp_path / "faces"
    (root / "a").mkdir(parents=True)
    write_image_atomic(root / "a" / "good.png", _img(0))
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    ds = ImageFolder(root)
    with pytest.raises(DataFormatError, match=r"broken\.jpg"):
        ds.load()


# --------------------------------------------------------------------------------------------
# RecordIO
# --------------------------------------------------------------------------------------------


def _parse_rec_raw(rec: Path) -> list[tuple[int, int, bytes]]:
    """Independent walk of the .rec: (offset, lrecord, payload) of every part."""
    data = rec.read_bytes()
    pos, parts = 0, []
    while pos < len(data):
        magic, lrec = struct.unpack_from("<II", data, pos)
        assert magic == MAGIC
        length = lrec & ((1 << 29) - 1)
        parts.append((pos, lrec, data[pos + 8 : pos + 8 + length]))
        pad = (-length) % 4
        assert data[pos + 8 + length : pos + 8 + length + pad] == b"\x00" * pad
        pos += 8 + length + pad
    assert pos == len(data)
    return parts


def test_recordio_insightface_layout_with_multi_float_labels(tmp_path):
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    images = [_img(i) for i in range(7)]
    classes = [0, 0, 0, 1, 1, 2, 2]
    # multi-float labels (as insightface's face2rec2: [class, aligned]) for some items
    labels = [[float(c), 1.0] if i % 2 else c for i, c in enumerate(classes)]
    n = write_recordio(rec, idx, zip(images, labels, strict=True), image_format="png")
    assert n == 7

    # the raw layout, checked without the reader
    lines = idx.read_text().splitlines()
    assert len(lines) == 1 + 7 + 3
    entries = [(int(k), int(o)) for k, o in (ln.split("\t") for ln in lines)]
    assert [k for k, _ in entries] == list(range(11))
    parts = _parse_rec_raw(rec)
    assert [p[0] for p in parts] == [o for _, o in entries]
    assert all(p[1] >> 29 == 0 for p in parts)
    flag, _label, id_, id2 = struct.unpack_from("<IfQQ", parts[0][2])
    assert (flag, id_, id2) == (2, 0, 0)
    assert np.frombuffer(parts[0][2], "<f4", 2, IR_SIZE).tolist() == [8.0, 11.0]
    assert len(parts[0][2]) == IR_SIZE + 8  # no image in the header record
    ranges = [np.frombuffer(p[2], "<f4", 2, IR_SIZE).tolist() for p in parts[8:]]
    assert ranges == [[1.0, 4.0], [4.0, 6.0], [6.0, 8.0]]
    flag1, _, id1, _ = struct.unpack_from("<IfQQ", parts[2][2])  # key 2 = item 1, multi-float
    assert (flag1, id1) == (2, 2)

    ds = RecordIODataset(rec)  # idx defaults to train.idx
    assert len(ds) == 7
    assert ds.header0 == (8, 11)
    assert ds.num_classes == 3
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == classes
    for i in range(7):
        img, lab = ds[i]
        assert isinstance(lab, int) and lab == classes[i]
        np.testing.assert_array_equal(img, images[i])
    np.testing.assert_array_equal(ds[-1][0], images[-1])
    with pytest.raises(IndexError):
        ds[7]

    r = ds.reader
    assert r.keys == list(range(11))
    header, img_bytes = r.unpack(r.read_record(2))
    assert header.flag == 2 and header.label.tolist() == [0.0, 1.0] and header.id == 2
    np.testing.assert_array_equal(decode_image(img_bytes, source="x"), images[1])
    assert r.read_header(2).label.tolist() == [0.0, 1.0]
    assert r.read_header(1).label == 0.0 and r.read_header(1).flag == 0
    with pytest.raises(KeyError):
        r.read_record(99)


def test_recordio_plain_jpeg(tmp_path):
    rec, idx = tmp_path / "plain.rec", tmp_path / "custom_name.idx"
    images = [_smooth(i) for i in range(5)]
    classes = [3, 1, 4, 1, 5]
    write_recordio(rec, idx, zip(images, classes, strict=True), insightface_header=False)
    assert [int(ln.split("\t")[0]) for ln in idx.read_text().splitlines()] == [0, 1, 2, 3, 4]
    ds = RecordIODataset(rec, idx)
    assert ds.header0 is None
    assert len(ds) == 5 and ds.labels.tolist() == classes and ds.num_classes == 6
    for i in range(5):
        img, lab = ds[i]
        assert lab == classes[i] and img.shape == (32, 32, 3)
        assert np.abs(img.astype(int) - images[i]).mean() < 3
    assert len(RecordIODataset(rec, idx).labels) == 5


def test_recordio_empty_and_bad_inputs(tmp_path):
    rec = tmp_path / "e.rec"
    assert write_recordio(rec, None, []) == 0
    ds = RecordIODataset(rec)
    assert len(ds) == 0 and ds.num_classes == 0
    with pytest.raises(ValueError, match="format"):
        write_recordio(tmp_path / "f.rec", None, [(_img(0), 0)], image_format="gif")
    with pytest.raises(ValueError, match="integer"):
        write_recordio(tmp_path / "g.rec", None, [(_img(0), 1.5)])
    with pytest.raises(ValueError, match="negative"):
        write_recordio(tmp_path / "h.rec", None, [(_img(0), -1)])
    leftovers = {p.name for p in tmp_path.iterdir()}
    assert leftovers == {"e.rec", "e.idx"}  # failed writes leave nothing behind


def test_encode_record_escapes_magic_like_dmlc(tmp_path):
    payloads = [
        b"",
        b"abc",
        MAGIC_BYTES,
        MAGIC_BYTES + b"12345",
        b"0123" + MAGIC_BYTES + b"4567" + MAGIC_BYTES + b"xy",
        b"0123" + MAGIC_BYTES + MAGIC_BYTES,
        b"0" + MAGIC_BYTES + b"unaligned-magic-is-kept",
        b"01234567" + MAGIC_BYTES[:3],
    ]
    framed = [encode_record(p) for p in payloads]
    # structure of one escaped record: parts with cflag 1, 2, 3
    parts = []
    data, pos = framed[4], 0
    while pos < len(data):
        magic, lrec = struct.unpack_from("<II", data, pos)
        assert magic == MAGIC
        parts.append((lrec >> 29, lrec & ((1 << 29) - 1)))
        pos += 8 + (lrec & ((1 << 29) - 1)) + (-(lrec & ((1 << 29) - 1)) % 4)
    assert parts == [(1, 4), (2, 4), (3, 2)]
    assert len(framed[6]) == 8 + 28  # unaligned magic: one part, padded
    assert all(len(f) % 4 == 0 for f in framed)

    rec, idx = tmp_path / "raw.rec", tmp_path / "raw.idx"
    offsets, blob = [], b""
    for f in framed:
        offsets.append(len(blob))
        blob += f
    rec.write_bytes(blob)
    idx.write_text("".join(f"{k * 10}\t{o}\n" for k, o in enumerate(offsets)))
    r = RecordIOReader(rec, idx)
    for k, p in enumerate(payloads):
        assert r.read_record(k * 10) == p


def test_pack_unpack():
    h, img = unpack(pack(7, b"IMG", id=3, id2=4))
    assert h.flag == 0 and h.label == 7.0 and (h.id, h.id2) == (3, 4) and img == b"IMG"
    h, img = unpack(pack([1.5, 2.0, 3.0], b"xyz"))
    assert h.flag == 3 and h.label.dtype == np.float32 and h.label.tolist() == [1.5, 2.0, 3.0]
    assert img == b"xyz"
    with pytest.raises(DataFormatError, match="rec-src"):
        unpack(b"short", source="rec-src")
    with pytest.raises(DataFormatError, match="announces 5"):
        unpack(struct.pack("<IfQQ", 5, 0.0, 0, 0) + b"\x00" * 8)


@pytest.fixture
def small_rec(tmp_path):
    rec, idx = tmp_path / "s.rec", tmp_path / "s.idx"
    write_recordio(
        rec, idx, [(_img(i), i % 2) for i in range(4)], image_format="png", insightface_header=False
    )  # keys 0..3
    return rec, idx


def _offsets(idx: Path) -> dict[int, int]:
    return {int(k): int(o) for k, o in (ln.split("\t") for ln in idx.read_text().splitlines())}


def test_recordio_bad_magic(small_rec):
    rec, idx = small_rec
    off = _offsets(idx)[2]
    data = bytearray(rec.read_bytes())
    data[off] ^= 0xFF
    rec.write_bytes(bytes(data))
    ds = RecordIODataset(rec, idx)
    ds[1]  # key 1 is intact
    with pytest.raises(DataFormatError, match=rf"s\.rec.*key 2.*magic.*offset {off}"):
        ds[2]
    with pytest.raises(DataFormatError, match=r"s\.rec"):
        ds.labels  # noqa: B018


def test_recordio_truncated(small_rec):
    rec, idx = small_rec
    last = _offsets(idx)[3]
    data = rec.read_bytes()
    rec.write_bytes(data[: last + 40])
    ds = RecordIODataset(rec, idx)
    ds[2]
    with pytest.raises(DataFormatError, match=r"s\.rec.*key 3.*truncated"):
        ds[3]
    rec.write_bytes(data[: last + 4])  # cut inside the part header
    with pytest.raises(DataFormatError, match=r"s\.rec.*key 3.*truncated"):
        RecordIODataset(rec, idx)[3]


def test_recordio_offset_past_eof(small_rec):
    rec, idx = small_rec
    size = rec.stat().st_size
    idx.write_text(idx.read_text() + f"99\t{size + 100}\n")
    with pytest.raises(DataFormatError, match=rf"s\.idx.*key 99.*offset {size + 100}.*s\.rec"):
        RecordIOReader(rec, idx)


@pytest.mark.parametrize("line", ["garbage", "1\t2\t3", "x\t0", "5\t-8", "5"])
def test_recordio_garbage_idx_line(small_rec, line):
    rec, idx = small_rec
    lines = idx.read_text().splitlines()
    lines.insert(2, line)
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"s\.idx.*line 3"):
        RecordIOReader(rec, idx)


def test_recordio_missing_files(small_rec, tmp_path):
    rec, idx = small_rec
    with pytest.raises(DataFormatError, match=r"other\.idx"):
        RecordIOReader(rec, tmp_path / "other.idx")
    with pytest.raises(DataFormatError, match=r"nope\.rec"):
        RecordIODataset(tmp_path / "nope.rec", idx)
    idx.unlink()
    with pytest.raises(DataFormatError, match=r"s\.idx.*not found"):
        RecordIODataset(rec)


def test_recordio_undecodable_image(tmp_path):
    rec, idx = tmp_path / "u.rec", tmp_path / "u.idx"
    payload = pack(0, b"\xff\xd8\xff\xe0 this is not a jpeg")
    rec.write_bytes(encode_record(payload))
    idx.write_text("0\t0\n")
    ds = RecordIODataset(rec, idx)
    assert ds.labels.tolist() == [0]
    with pytest.raises(DataFormatError, match=r"u\.rec.*key 0"):
        ds[0]


def test_recordio_header_pointing_at_missing_keys(tmp_path):
    rec, idx = tmp_path / "m.rec", tmp_path / "m.idx"
    a = encode_record(pack([5.0, 6.0], b""))
    b = encode_record(pack(0, encode_png(_img(0)), id=1))
    rec.write_bytes(a + b)
    idx.write_text(f"0\t0\n1\t{len(a)}\n")
    with pytest.raises(DataFormatError, match=r"m\.idx.*key 2"):
        RecordIODataset(rec, idx)


def test_recordio_pickles_and_threads(small_rec):
    rec, idx = small_rec
    ds = RecordIODataset(rec, idx)
    expected = [ds[i][0] for i in range(len(ds))]
    clone = pickle.loads(pickle.dumps(ds))  # as sent to DataLoader worker processes
    for i in range(len(ds)):
        np.testing.assert_array_equal(clone[i][0], expected[i])
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for i in rng.integers(0, len(ds), 50):
                np.testing.assert_array_equal(ds[int(i)][0], expected[int(i)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ds.reader.close()
    assert ds[0][1] == 0  # reopened on demand


# --------------------------------------------------------------------------------------------
# verification .bin
# --------------------------------------------------------------------------------------------


def test_verification_bin_round_trip(tmp_path):
    images = np.stack([_img(i, 112, 112) for i in range(6)])
    issame = np.array([True, False, True])
    path = tmp_path / "lfw.bin"
    write_verification_bin(path, images, issame, image_format="png")
    vs = load_verification_bin(path)
    assert isinstance(vs, VerificationSet)
    assert vs.name == "lfw" and len(vs) == 3
    assert vs.images.dtype == np.uint8 and vs.images.shape == (6, 112, 112, 3)
    np.testing.assert_array_equal(vs.images, images)
    assert vs.issame.dtype == np.bool_ and vs.issame.tolist() == [True, False, True]
    np.testing.assert_array_equal(vs.pairs, [[0, 1], [2, 3], [4, 5]])
    with pytest.raises(AttributeError):
        vs.name = "x"  # frozen
    # it is a plain pickle of (list of bytes, list of bool), as insightface's loader expects
    bins, flags = pickle.loads(path.read_bytes(), encoding="bytes")
    assert len(bins) == 6 and all(isinstance(b, bytes) for b in bins)
    assert flags == [True, False, True]


def test_verification_bin_jpeg_and_resize(tmp_path):
    images = np.stack([_smooth(i, 56, 56) for i in range(4)])
    path = tmp_path / "cfp_fp.bin"
    write_verification_bin(path, images, [False, True])
    vs = load_verification_bin(path, image_size=(112, 112), workers=2)
    assert vs.images.shape == (4, 112, 112, 3) and vs.issame.tolist() == [False, True]
    vs_small = load_verification_bin(path, image_size=(56, 56))
    assert np.abs(vs_small.images.astype(int) - images).mean() < 3
    with pytest.raises(ValueError, match="pairs"):
        write_verification_bin(path, images, [True])


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_verification_bin_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Evil(marker), b"x"], [True]), protocol=2))
    with pytest.raises(DataFormatError, match=r"evil\.bin.*refuses to unpickle global (posix|nt)"):
        load_verification_bin(path)
    assert not marker.exists()
    # sanity: the payload is live (a plain pickle.load would run it)
    path2 = tmp_path / "evil2.bin"
    path2.write_bytes(pickle.dumps(eval, protocol=4))
    with pytest.raises(DataFormatError, match=r"refuses to unpickle global builtins\.eval"):
        load_verification_bin(path2)


def test_verification_bin_refuses_codecs_abuse(tmp_path):
    # _codecs.encode is allowed only for Python 3's latin1-encoded bytes
    p = tmp_path / "c.bin"
    p.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R.")
    with pytest.raises(DataFormatError, match=r"c\.bin"):
        load_verification_bin(p)


def _py2_bool(value: bool) -> bytes:
    """numpy bool_ as pickled by Python 2 + numpy 1 (protocol 2, str = SHORT_BINSTRING)."""
    return (
        b"cnumpy.core.multiarray\nscalar\n"
        + b"cnumpy\ndtype\n"
        + b"U\x02b1K\x00K\x01\x87R"
        + b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"U\x01"
        + (b"\x01" if value else b"\x00")
        + b"\x86R"
    )


def test_verification_bin_python2_pickle(tmp_path):
    images = [_smooth(i, 112, 112) for i in range(4)]
    bins = [encode_jpeg(im) for im in images]
    issame = [True, False]
    # Python 2's cPickle.dump((bins, issame_list), f, protocol=2), with numpy bool_ flags
    data = b"\x80\x02]q\x00(" + b"".join(b"T" + struct.pack("<i", len(b)) + b for b in bins)
    data += b"e]q\x01(" + b"".join(_py2_bool(v) for v in issame) + b"e\x86q\x02."
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(data)
    vs = load_verification_bin(path)
    assert vs.issame.tolist() == issame and vs.name == "agedb_30"
    assert np.abs(vs.images.astype(int) - np.stack(images)).mean() < 3


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_verification_bin_python3_protocols_numpy_bools(tmp_path, protocol):
    images = [_img(i, 112, 112) for i in range(4)]
    bins = [encode_png(im) for im in images]
    path = tmp_path / "x.bin"
    for issame in ([np.bool_(True), np.bool_(False)], np.array([True, False])):
        path.write_bytes(pickle.dumps((bins, issame), protocol=protocol))
        vs = load_verification_bin(path)
        assert vs.issame.tolist() == [True, False]
        np.testing.assert_array_equal(vs.images, np.stack(images))


@pytest.mark.parametrize(
    "obj,match",
    [
        ([b"a"], "pair"),
        (("not a list", [True]), "bins must be a list"),
        (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
        (([b"a", 3], [True]), "image 1"),
        (([b"a", b"b"], ["yes"]), "issame"),
        (([b"not", b"images"], [True]), "image 0"),
    ],
)
def test_verification_bin_structure_errors(tmp_path, obj, match):
    path = tmp_path / "broken.bin"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(DataFormatError, match=rf"broken\.bin.*{match}"):
        load_verification_bin(path)


def test_verification_bin_not_a_pickle(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"\x00\x01 definitely not a pickle")
    with pytest.raises(DataFormatError, match=r"junk\.bin"):
        load_verification_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b"], [True]), protocol=4)[:-10])
    with pytest.raises(DataFormatError, match=r"junk\.bin"):
        load_verification_bin(path)
    with pytest.raises(DataFormatError, match=r"absent\.bin"):
        load_verification_bin(tmp_path / "absent.bin")


def test_pairs_from_issame():
    np.testing.assert_array_equal(pairs_from_issame(3), [[0, 1], [2, 3], [4, 5]])
    assert pairs_from_issame(0).shape == (0, 2)
    with pytest.raises(ValueError):
        pairs_from_issame(-1)
