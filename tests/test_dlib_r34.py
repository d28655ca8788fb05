"""dlib_r34: dlib's pretrained face-recognition network rebuilt in torch (issue 13).

Parity against dlib itself (``dlib-bin``'s ``face_recognition_model_v1``, the reference
implementation, on the same 150x150 chips), the weight reader's refusals, the reframing of
ArcFace crops into dlib's chip (training path == exported ONNX graph), and fine-tuning through
the same local step as every other backbone.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fedfr.backbones import get_backbone_spec
from fedfr.backbones.dlib_weights import (
    DLIB_R34_SHA256,
    dlib_r34_backbone,
    dlib_r34_state_dict,
    dlib_weights_path,
    read_dlib_layers,
)
from fedfr.data.align import reframe_matrices, template_for
from fedfr.data.contract import DLIB_CONTRACT, InputContract
from fedfr.errors import DataFormatError
from fedfr.fl import GlobalModel
from fedfr.train.embedding import preprocess

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights():
    try:
        return dlib_weights_path()
    except Exception as e:  # the package is part of the README's set-up
        pytest.fail(f"{e}")


@pytest.fixture(scope="module")
def net(weights):
    return dlib_r34_backbone(weights)


def _dlib():
    dlib = pytest.importorskip("dlib", reason="dlib-bin (dev extra): bash scripts/setup.sh")
    return dlib


def _need_photos() -> None:
    """Set-up caches the real photos: skipped without them, a failure under CI."""
    from fedfr.data import realphotos

    if realphotos.missing():
        msg = f"real photos not cached ({realphotos.missing()}): bash scripts/setup.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def _ours(net, chips: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(DLIB_CONTRACT.normalize(chips))).numpy()


def _chips() -> np.ndarray:
    """Chips a face network has to get right beyond faces: noise, a gradient, flat grey, and
    synthetic faces (rendered at 112, resized to 150 by PIL)."""
    from PIL import Image

    from fedfr.data.synthetic import SyntheticFaces

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2, 150, 150, 3), np.uint8)
    grad = np.broadcast_to(np.linspace(0, 255, 150, dtype=np.float32)[None, :, None],
                           (150, 150, 3)).astype(np.uint8)[None]
    flat = np.full((1, 150, 150, 3), 128, np.uint8)
    faces = SyntheticFaces(5).render(np.arange(3), np.zeros(3, np.int64))
    faces = np.stack([np.asarray(Image.fromarray(f).resize((150, 150), Image.BILINEAR))
                      for f in faces])
    return np.concatenate([noise, grad, flat, faces])


def test_parity_with_dlib_on_the_same_chips(net, weights):
    """Our torch network == dlib's compute_face_descriptor, float32 round-off only."""
    dlib = _dlib()
    ref_model = dlib.face_recognition_model_v1(str(weights))
    chips = _chips()
    ref = np.stack([np.array(ref_model.compute_face_descriptor(np.ascontiguousarray(c)))
                    for c in chips]).astype(np.float32)
    ours = _ours(net, chips)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert np.abs(ours - ref).max() < 1e-5, np.abs(ours - ref).max()
    assert cos.min() > 1 - 1e-6, cos
    # and the descriptors are not all alike (a broken network can agree with itself)
    n = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert (n @ n.T)[np.triu_indices(len(n), 1)].min() < 0.95


def test_parity_with_dlib_on_real_photos(net, weights):
    """dlib's own pipeline (HOG detector, 5-point predictor, get_face_chip 150/0.25) on real
    photos from packages; the chip goes through dlib's network and ours."""
    dlib = _dlib()
    from fedfr.data import realphotos

    _need_photos()
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(weights.parent / "shape_predictor_5_face_landmarks.dat"))
    ref_model = dlib.face_recognition_model_v1(str(weights))
    chips = []
    for name in ("obama", "obama2", "biden", "tom_hanks", "t1"):
        img = np.ascontiguousarray(realphotos.real_photo_rgb(name))
        for d in det(img, 1):
            chips.append(dlib.get_face_chip(img, sp(img, d), size=150, padding=0.25))
    assert len(chips) >= 10  # t1.jpg alone has 6 faces
    chips = np.stack(chips)
    ref = np.stack([np.array(ref_model.compute_face_descriptor(c)) for c in chips])
    ours = _ours(net, chips)
    assert np.abs(ours - ref).max() < 1e-5


def test_reader_refuses_damaged_files(tmp_path, weights):
    data = weights.read_bytes()
    # a truncated file: the last layers are missing
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"parameter layers|past the end"):
        dlib_r34_state_dict(cut)
    # one convolution's stride changed: named with both shapes
    layers = read_dlib_layers(weights)
    assert [x["kind"] for x in layers].count("con") == 29
    assert layers[0]["weight"].shape == (32, 3, 7, 7) and layers[0]["stride"] == (2, 2)
    assert layers[-1]["kind"] == "fc" and layers[-1]["weight"].shape == (128, 256)
    i = data.index(b"\x01\x05con_4")
    j = data.index(b"\x01\x05con_4", i + 1)  # the first block conv: 3x3 stride 1 padding 1
    bad = bytearray(data)
    # past the string: the tensor (filters + biases), then num_filters, nr, nc, stride_y
    from fedfr.backbones.dlib_weights import _Reader

    rd = _Reader(data, j + 7, "x")
    assert rd.tensor().size == 32 * 32 * 3 * 3 + 32
    rd.int(), rd.int(), rd.int()  # num_filters, nr, nc
    stride_at = rd.pos
    assert bad[stride_at:stride_at + 2] == b"\x01\x01"
    bad[stride_at + 1] = 2
    (tmp_path / "stride.dat").write_bytes(bytes(bad))
    with pytest.raises(DataFormatError, match=r"blocks\.0\.conv1 .* stride \(2, 1\)"):
        dlib_r34_state_dict(tmp_path / "stride.dat")


def test_weights_file_is_pinned(weights):
    import hashlib

    assert hashlib.sha256(weights.read_bytes()).hexdigest() == DLIB_R34_SHA256


def test_contract_and_templates():
    spec = get_backbone_spec("dlib_r34")
    assert spec.contract == DLIB_CONTRACT and spec.embedding_size == 128
    c = InputContract.from_dict(DLIB_CONTRACT.to_dict())
    assert c == DLIB_CONTRACT and c.mean == (122.782, 117.001, 104.298)
    x = np.zeros((1, 150, 150, 3), np.uint8)
    x[..., 0] = 255
    out = DLIB_CONTRACT.normalize(x)
    assert out[0, 0, 0, 0] == pytest.approx((255 - 122.782) / 256)
    assert out[0, 2, 0, 0] == pytest.approx(-104.298 / 256)
    np.testing.assert_array_equal(DLIB_CONTRACT.denormalize(out), x)
    # an old contract dict (no alignment) is the ArcFace one
    d = InputContract().to_dict()
    del d["alignment"]
    assert InputContract.from_dict(d).alignment == "arcface"
    with pytest.raises(ValueError, match="alignment"):
        InputContract(alignment="eyes")
    with pytest.raises(ValueError, match="3 numbers"):
        InputContract(mean=(1.0, 2.0))
    # dlib's template: symmetric, about ArcFace's scale, but the face sits higher in the chip
    # (more chin and neck below, less forehead above)
    t, arc = template_for("dlib", 150), template_for("arcface", 150)
    assert t[0, 1] == t[1, 1] and t[0, 0] + t[1, 0] == pytest.approx(148.0253)
    assert 1.0 < np.diff(t[:2, 0])[0] / np.diff(arc[:2, 0])[0] < 1.2
    assert t[:, 1].mean() < arc[:, 1].mean() - 15


def test_reframe_matches_cv2_on_a_smooth_image():
    """The separable reframe == cv2.warpAffine with the same scale/translation (cv2 rounds its
    bilinear weights to 1/32: within 2 grey levels on a smooth image)."""
    import cv2

    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32)
    img = np.stack([xx * 2, yy * 2, (xx + yy)], -1).clip(0, 255).astype(np.uint8)
    a_h, a_w = reframe_matrices(("arcface", 112), ("dlib", 150))
    ours = np.einsum("ij,jkc,lk->ilc", a_h, img.astype(np.float32), a_w)
    s, d = template_for("arcface", 112), template_for("dlib", 150)
    sc, dc = s - s.mean(0), d - d.mean(0)
    k = (sc * dc).sum() / (sc * sc).sum()
    t = d.mean(0) - k * s.mean(0)
    ref = cv2.warpAffine(img, np.array([[k, 0, t[0]], [0, k, t[1]]]), (150, 150),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    diff = np.abs(ours - ref).max(-1)
    # equal up to cv2's 1/32 weights, except on the rows straddling the crop's lower edge
    # (cv2 blends the outside black in there at its own weights)
    assert diff.max() <= 3.0 and diff[:130].max() <= 1.0 and (diff > 1).sum() <= 2 * 150
    # the chip reaches below the ArcFace crop: black rows at the bottom, none at the top
    assert ours[-5:].max() == 0 and ours[:5].min() > 0


def test_export_graph_equals_training_path(net, tmp_path):
    """The ONNX graph takes the product's 112x112 crop and reframes inside: ORT == torch's
    preprocess + backbone."""
    ort = pytest.importorskip("onnxruntime")
    from export.onnx_export import RecognizerGraph, export_onnx, read_metadata

    crops = np.random.default_rng(3).integers(0, 256, (3, 112, 112, 3), np.uint8)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(
            net(preprocess(torch.from_numpy(crops), DLIB_CONTRACT)), dim=1).numpy()
    path = export_onnx(RecognizerGraph(net, (150, 150), contract=DLIB_CONTRACT),
                       tmp_path / "m.onnx", arch="dlib_r34", embedding_size=128,
                       backbone_contract=DLIB_CONTRACT)
    meta = read_metadata(path)
    inp = InputContract.from_dict(__import__("json").loads(meta["fedfr.input_contract"]))
    assert inp.size == (112, 112) and inp.mean == 127.5 and inp.alignment == "arcface"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"data": inp.normalize(crops)})[0]
    assert np.abs(got - ref).max() < 1e-5


@pytest.mark.slow
def test_fine_tunes_through_the_local_step(net):
    """One FedFR local round on dlib_r34 (a few steps): the shared update changes the
    backbone, keeps its keys and shapes, and the loss is finite."""
    from fedfr.train.local import LocalConfig, PublicPack, local_round

    state = {k: v.numpy() for k, v in net.state_dict().items()}
    rng = np.random.default_rng(0)
    pub = rng.standard_normal((4, 128)).astype(np.float32)
    pub /= np.linalg.norm(pub, axis=1, keepdims=True)
    model = GlobalModel("dlib_r34", 128, DLIB_CONTRACT.to_dict(), state, pub)
    images = rng.integers(0, 256, (6, 112, 112, 3), np.uint8)
    labels = np.repeat(np.arange(2), 3).astype(np.int64)
    pack = PublicPack.from_images(rng.integers(0, 256, (4, 112, 112, 3), np.uint8),
                                  np.arange(4))
    cfg = LocalConfig(device="cpu", batch_size=6, epochs_start=1, epochs_step=0, epochs_min=1,
                      hard_negative_threshold=-1.0, max_hard_negatives=2, seed=0, amp=False,
                      lr=1e-3)
    res = local_round(model, images, labels, cfg, pack=pack)
    upd = res.update.arrays
    changed = 0
    for k, v in state.items():
        new = upd["backbone." + k]
        assert new.shape == v.shape
        changed += int(not np.array_equal(new, v))
    assert changed > 10
    assert np.isfinite(res.update.metrics["loss"])
    assert res.private.converter.shape == (128, 128)


def test_real_photos_genuine_above_impostors(net):
    """The real model on the real photos' pairs, through enroll's detection and alignment and
    the product's crop (10 genuine, 81 impostor pairs: device_sdk.realfaces): every genuine
    pair scores above every impostor pair."""
    from device_sdk.realfaces import real_face_crops, real_pairs_report
    from fedfr.train.embedding import embed_images

    _need_photos()
    crops, labels, names = real_face_crops()
    assert len(crops) == 14 and len(names) == 10
    r = real_pairs_report(lambda x: embed_images(net, x, contract=DLIB_CONTRACT, amp=False),
                          crops, labels)
    assert r["genuine_pairs"] == 10 and r["impostor_pairs"] == 81
    assert r["separated"] and r["auc"] == 1.0, r


def test_checkpoint_has_public_embeddings_and_thresholds(weights, tmp_path):
    """fedfr import-dlib's checkpoint: dlib's weights, the public identities' mean embeddings
    as public class embeddings, thresholds calibrated on those images, loadable as a
    GlobalModel whose generic embedder is the network."""
    import json

    from fedfr.backbones.dlib_weights import save_dlib_checkpoint
    from fedfr.checkpoint import read_checkpoint
    from fedfr.data.synthetic import SyntheticFaces
    from fedfr.train.recognizer import generic_embedder

    ids = np.repeat(np.arange(4), 3)
    images = SyntheticFaces(2).render(ids, np.tile(np.arange(3), 4))
    out = save_dlib_checkpoint(tmp_path / "d.safetensors", images, ids, weights=weights)
    model = GlobalModel.load(out)
    assert model.arch == "dlib_r34" and model.public_embeddings.shape == (4, 128)
    emb = generic_embedder(model)(images)
    cent = np.stack([emb[ids == c].mean(0) for c in range(4)])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    np.testing.assert_allclose(model.public_embeddings, cent, atol=1e-5)
    meta = read_checkpoint(out).metadata
    th = meta["fedfr.thresholds"]
    th = json.loads(th) if isinstance(th, str) else th
    assert set(th["far"]) == {"1e-01", "1e-02", "1e-03"} and th["pairs"] == 54
    assert "import-dlib" in th["source"] and "sha256" in meta["source"]
