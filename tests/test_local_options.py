"""The local step's fidelity options (issue 12): round-0 contrastive negative, BatchNorm
policy, FedAvg sample weight, converter bias, lr decay point — each against a hand-checked
small case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedfr.backbones import build_backbone, get_backbone_spec
from fedfr.data.contract import InputContract
from fedfr.fl import BACKBONE_PREFIX, GlobalModel
from fedfr.train.embedding import preprocess
from fedfr.train.local import (
    LocalConfig,
    LocalTrainer,
    PublicPack,
    local_round,
    personalized_recognizer,
    random_backbone,
)
from fedfr.train.losses import contrastive_regularizer

ARCH = "mbf_tiny"
D = 128


# Every test here runs toy rounds on one thread (conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> GlobalModel:
    torch.manual_seed(0)
    net = build_backbone(ARCH)
    # non-trivial running statistics, so "unchanged" is a real check
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    pub = np.random.default_rng(0).standard_normal((6, D)).astype(np.float32)
    pub /= np.linalg.norm(pub, axis=1, keepdims=True)
    return GlobalModel(ARCH, D, get_backbone_spec(ARCH).contract.to_dict(), state, pub)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 4).astype(np.int64)
    return rng.integers(0, 256, (len(labels), 112, 112, 3), dtype=np.uint8), labels


@pytest.fixture(scope="module")
def pack() -> PublicPack:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (12, 112, 112, 3), dtype=np.uint8)
    return PublicPack.from_images(images, np.tile(np.arange(6), 2))


@pytest.fixture(scope="module")
def cfg() -> LocalConfig:
    return LocalConfig(device="cpu", batch_size=8, epochs_start=1, epochs_step=0,
                       epochs_min=1, hard_negative_threshold=-1.0, max_hard_negatives=5,
                       seed=3, amp=False)


def _bn_buffers(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


# --------------------------------------------------------------------------- round-0 negative


def test_round0_negative_is_a_seeded_random_backbone(model, data, pack, cfg):
    tr = LocalTrainer(model, *data, cfg, pack=pack).prepare()
    assert tr.z_prev is not None
    # the same features, computed by hand from an independently built random backbone
    net = random_backbone(model, seed=cfg.seed, device=torch.device("cpu"))
    x = preprocess(tr.x_u8, InputContract.from_dict(model.contract))
    with torch.no_grad():
        by_hand = F.normalize(net(x).float(), dim=1)
    assert torch.allclose(tr.z_prev[:, 0], by_hand, atol=1e-4)
    # a random negative, not the global model (that would make the term log 2, no gradient)
    cos = (tr.z_prev[:, 0] * tr.z_global[:, 0]).sum(1)
    assert cos.abs().max() < 0.9
    # the seed decides it; the global RNG is untouched
    state = torch.random.get_rng_state()
    other = random_backbone(model, seed=cfg.seed + 1, device=torch.device("cpu"))
    assert torch.equal(state, torch.random.get_rng_state())
    w0 = next(net.parameters())
    assert not torch.equal(w0, next(other.parameters()))


def test_round0_contrastive_loss_matches_hand_computation(model, data, pack, cfg):
    tr = LocalTrainer(model, *data, cfg.with_(flip=False), pack=pack).prepare()
    idx = torch.arange(tr.num_train_images)
    before = [p.detach().clone() for p in tr.backbone.parameters()]
    x = torch.from_numpy(tr.x_u8.numpy())
    with torch.no_grad():
        feats = tr.backbone(preprocess(x, InputContract.from_dict(model.contract))).float()
    expected = contrastive_regularizer(feats, tr.z_global[:, 0], tr.z_prev[:, 0], 0.5)
    out = tr.step(idx)
    assert out["contrastive"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert out["contrastive"].item() > np.log(2) * 0.5  # not the degenerate log 2 case
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.backbone.parameters(), strict=True))


def test_round0_negative_none_skips_the_term(model, data, pack, cfg):
    tr = LocalTrainer(model, *data, cfg.with_(round0_negative="none"), pack=pack).prepare()
    assert tr.z_prev is None


# --------------------------------------------------------------------------- BatchNorm


def test_bn_frozen_returns_the_global_running_statistics_unchanged(model, data, pack, cfg):
    res = local_round(model, *data, cfg.with_(bn_policy="frozen"), pack=pack)
    up = {k[len(BACKBONE_PREFIX):]: v for k, v in res.update.arrays.items()
          if k.startswith(BACKBONE_PREFIX)}
    stats = _bn_buffers(up)
    assert stats
    for k, v in stats.items():
        np.testing.assert_array_equal(v, model.backbone[k], err_msg=k)
    # ... while the affine parameters and convolutions did train
    assert any(not np.array_equal(up[k], model.backbone[k]) for k in up
               if k.endswith(".weight") and k not in stats)


def test_bn_train_moves_the_running_statistics(model, data, pack, cfg):
    res = local_round(model, *data, cfg.with_(bn_policy="train"), pack=pack)
    up = {k[len(BACKBONE_PREFIX):]: v for k, v in res.update.arrays.items()
          if k.startswith(BACKBONE_PREFIX)}
    moved = [k for k, v in _bn_buffers(up).items() if not np.allclose(v, model.backbone[k])]
    assert len(moved) == len(_bn_buffers(up))


def test_bn_frozen_normalizes_with_running_statistics_in_training(model, data, pack, cfg):
    """In frozen mode a batch's features equal the eval-mode forward (no batch statistics)."""
    tr = LocalTrainer(model, *data, cfg.with_(bn_policy="frozen"), pack=pack).prepare()
    assert tr.backbone.training
    bns = [m for m in tr.backbone.modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)


def test_bn_policy_is_validated():
    with pytest.raises(ValueError, match="bn_policy"):
        LocalConfig(bn_policy="fedbn-ish")
    with pytest.raises(ValueError, match="round0_negative"):
        LocalConfig(round0_negative="global")
    with pytest.raises(ValueError, match="sample_weight"):
        LocalConfig(sample_weight="images")


# --------------------------------------------------------------------------- FedAvg weight


def test_sample_weight_counts_hard_negatives_when_asked(model, data, pack, cfg):
    local = local_round(model, *data, cfg.with_(contrastive_mu=0.0), pack=pack)
    both = local_round(model, *data, cfg.with_(contrastive_mu=0.0,
                                               sample_weight="local+negatives"), pack=pack)
    assert local.update.num_samples == 12
    assert both.metrics["hard_negatives"] == 5  # the cap; threshold -1 mines everything
    assert both.update.num_samples == 12 + 5
    # without public images there are no negatives to count
    plain = local_round(model, *data, cfg.with_(public=None, dfc_weight=0.0, contrastive_mu=0.0,
                                                sample_weight="local+negatives"))
    assert plain.update.num_samples == 12


# --------------------------------------------------------------------------- converter bias


def test_converter_bias_is_trained_kept_private_and_used(model, data, pack, cfg):
    res = local_round(model, *data, cfg.with_(converter_bias=True), pack=pack)
    b = res.private.converter_bias
    assert b is not None and b.shape == (D,) and np.abs(b).max() > 0
    assert "dfc.converter_bias" in res.private.to_arrays()
    assert not any("converter" in k for k in res.update.arrays)
    rec = personalized_recognizer(model, res.private)
    x = torch.zeros(2, 3, 64, 64)
    with torch.no_grad():
        f = rec.backbone(x).float()
        expected = f @ torch.from_numpy(res.private.converter).T + torch.from_numpy(b)
        assert torch.allclose(rec(x), expected, atol=1e-5)
        # the ONNX export graph applies the same bias
        from export.onnx_export import RecognizerGraph

        graph = RecognizerGraph(rec.backbone, (64, 64), res.private.converter,
                                converter_bias=b).eval()
        got = graph(torch.zeros(2, 3, 112, 112))
        want = F.normalize(rec(F.interpolate(torch.zeros(2, 3, 112, 112), size=(64, 64))), dim=1)
        assert torch.allclose(got, want, atol=1e-4)
    # default: no bias anywhere
    assert local_round(model, *data, cfg, pack=pack).private.converter_bias is None


def test_lr_decays_at_three_quarters_by_default(model, data, pack, cfg):
    assert LocalConfig().lr_decay_at == 0.75
    tr = LocalTrainer(model, *data, cfg.with_(batch_size=2, epochs_start=2, public=None,
                                              dfc_weight=0.0, contrastive_mu=0.0), pack=pack)
    lrs = []
    orig = tr.step

    def spy(idx):
        lrs.append(tr.optimizer.param_groups[0]["lr"])
        return orig(idx)

    tr.step = spy
    tr.run()
    assert len(lrs) == 12  # 6 steps per epoch x 2 epochs
    assert lrs[:9] == [cfg.lr] * 9 and lrs[9:] == [pytest.approx(cfg.lr * 0.1)] * 3


# --------------------------------------------------------------------------- public replay


def test_uncapped_mining_keeps_every_public_image_above_the_threshold():
    from fedfr.train.local import mine_hard_negatives

    local = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), dim=1)
    # best cosine to a local feature: 0.9, 0.41, 0.39, 0.6 (second local), 0.0 (second local)
    cand = torch.tensor([[0.9, 0.0, math.sqrt(1 - 0.81)],
                         [0.41, 0.0, math.sqrt(1 - 0.41 ** 2)],
                         [0.39, 0.0, math.sqrt(1 - 0.39 ** 2)],
                         [0.0, 0.6, 0.8],
                         [-1.0, 0.0, 0.0]])
    assert mine_hard_negatives(local, cand, 0.4).tolist() == [0, 1, 3]
    assert mine_hard_negatives(local, cand, 0.4, max_count=2).tolist() == [0, 3]  # the hardest
    assert mine_hard_negatives(local, cand, 0.0).tolist() == [0, 1, 2, 3]  # > 0, not >=


def test_pack_of_every_public_image():
    images = np.zeros((10, 4, 4, 3), np.uint8)
    labels = np.repeat(np.arange(5), 2)
    assert len(PublicPack.from_images(images, labels, per_class=None).labels) == 10
    assert len(PublicPack.from_images(images, labels, per_class=1).labels) == 5
