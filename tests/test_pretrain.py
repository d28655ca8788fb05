"""Pretraining on a small, learnable problem, and the checkpoint it writes."""

import numpy as np
import pytest
import torch

from fedfr.checkpoint import load_backbone, read_checkpoint
from fedfr.heads import MarginConfig
from fedfr.train.embedding import embed_images, preprocess
from fedfr.train.pretrain import PUBLIC_EMBEDDINGS_KEY, PretrainConfig, pretrain


def _toy_faces(num_classes=6, per_class=16, seed=0):
    """Each class: a fixed random 8x8 pattern upsampled to 112x112, plus per-image noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, (num_classes, 8, 8, 3))
    base = np.repeat(np.repeat(patterns, 14, axis=1), 14, axis=2)
    images, labels = [], []
    for c in range(num_classes):
        noise = rng.normal(0, 25, (per_class, 112, 112, 3))
        images.append(np.clip(base[c][None] + noise, 0, 255).astype(np.uint8))
        labels += [c] * per_class
    return np.concatenate(images), np.asarray(labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    images, labels = _toy_faces()
    out = tmp_path_factory.mktemp("pre") / "model.safetensors"
    cfg = PretrainConfig(arch="mbf_tiny", epochs=15, batch_size=16, lr=0.1, device="cpu",
                         margin=MarginConfig(s=16.0, m3=0.2), warmup_epochs=0.5)
    result = pretrain(images, labels, cfg, out, metadata={"data": "toy"}, progress=False)
    return images, labels, result


def test_pretraining_learns_and_loss_decreases(trained):
    _, _, result = trained
    hist = result.history
    assert len(hist) == 15
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert hist[-1]["train_accuracy"] > 0.9
    assert hist[-1]["lr"] == pytest.approx(0.0, abs=1e-6)  # polynomial decay ends at zero


def test_checkpoint_holds_backbone_public_embeddings_and_metadata(trained):
    images, labels, result = trained
    ck = read_checkpoint(result.checkpoint)
    assert ck.arch == "mbf_tiny"
    assert ck.embedding_size == 128
    assert ck.contract.size == (64, 64)
    assert tuple(ck.extra[PUBLIC_EMBEDDINGS_KEY].shape) == (6, 128)
    assert ck.metadata["data"] == "toy"
    assert int(ck.metadata["num_classes"]) == 6

    # The saved class embeddings classify the training images: the head is usable as the
    # public class embedding matrix of the FedFR method.
    model = load_backbone(result.checkpoint, "mbf_tiny").eval()
    emb = embed_images(model, images, contract=ck.contract)
    w = torch.nn.functional.normalize(ck.extra[PUBLIC_EMBEDDINGS_KEY], dim=1).numpy()
    assert np.mean((emb @ w.T).argmax(1) == labels) > 0.9


def test_embeddings_are_normalized_and_batch_independent(trained):
    images, _, result = trained
    model = load_backbone(result.checkpoint, "mbf_tiny").eval()
    ck = read_checkpoint(result.checkpoint)
    a = embed_images(model, images[:10], contract=ck.contract, batch_size=3)
    b = embed_images(model, images[:10], contract=ck.contract, batch_size=10)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_preprocess_follows_the_input_contract():
    from fedfr.data.contract import ARCFACE_CONTRACT, InputContract

    x = torch.full((2, 112, 112, 3), 255, dtype=torch.uint8)
    x[:, :, :, 1] = 0
    out = preprocess(x, ARCFACE_CONTRACT)
    assert out.shape == (2, 3, 112, 112) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0], torch.ones(1)) and torch.allclose(out[:, 1], -torch.ones(1))
    small = preprocess(x, InputContract(height=64, width=64))
    assert small.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(x.float(), ARCFACE_CONTRACT)


def test_bad_inputs_are_rejected(tmp_path):
    images, labels = _toy_faces(2, 2)
    cfg = PretrainConfig(arch="mbf_tiny", epochs=1, device="cpu")
    with pytest.raises(ValueError, match="labels"):
        pretrain(images, labels[:-1], cfg, tmp_path / "x.safetensors", progress=False)
    with pytest.raises(ValueError, match="uint8"):
        pretrain(images.astype(np.float32), labels, cfg, tmp_path / "x.safetensors",
                 progress=False)
    with pytest.raises(ValueError):
        PretrainConfig(epochs=0)
    assert not (tmp_path / "x.safetensors").exists()


def test_checkpoint_and_its_onnx_carry_thresholds_calibrated_where_it_was_trained(
        trained, tmp_path):
    import json

    from export.onnx_export import export_checkpoint, read_metadata
    from fedfr.evaluation import far_thresholds, validation_pairs

    images, labels, result = trained
    th = read_checkpoint(result.checkpoint).metadata["fedfr.thresholds"]
    assert th["source"].startswith("training set: 96 of its images, 6 identities")
    pairs, same = validation_pairs(labels)
    assert th["pairs"] == int((~same).sum()) and th["genuine_pairs"] == int(same.sum())
    ck = read_checkpoint(result.checkpoint)  # recomputed from the saved backbone's embeddings
    emb = embed_images(load_backbone(result.checkpoint, "mbf_tiny").eval(), images,
                       contract=ck.contract)
    imp = np.einsum("ij,ij->i", emb[pairs[~same, 0]], emb[pairs[~same, 1]])
    want = far_thresholds(imp)
    assert set(th["far"]) == {"1e-01", "1e-02", "1e-03"}
    for k, t in th["far"].items():
        assert t == pytest.approx(want[k], abs=1e-4)
    meta = read_metadata(export_checkpoint(result.checkpoint, tmp_path / "g.onnx",
                                           arch="mbf_tiny"))
    assert json.loads(meta["fedfr.thresholds"]) == th
