"""Tests of the FedFR local step (fedfr.train.local) and the terms of its objective.

The loss terms (DFC binary margin loss, contrastive regularizer, proximal term) are checked
against small cases whose values are computed independently here with math/numpy; the DFC
head, hard-negative mining and the local configuration against hand-made inputs;
:func:`local_round` on a toy device (the tiny ``mbf_tiny`` backbone on CPU, a dozen random
crops) for what it uploads and what it keeps private, which terms are on, that the frozen
models run once per round, determinism and input validation; the personalized recognizer for
consistency with the generic one; and the method registry for the terms each method switches.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import fedfr.train.local as local_mod
from fedfr.backbones import build_backbone, get_backbone_spec
from fedfr.errors import UnknownNameError
from fedfr.fl import (
    BACKBONE_PREFIX,
    PRIVATE_PREFIXES,
    PUBLIC_INDEX_KEY,
    PUBLIC_ROWS_KEY,
    GlobalModel,
    is_shared,
    split_state,
)
from fedfr.heads.dfc import BinaryMarginConfig, DFCHead, binary_margin_loss
from fedfr.train.local import (
    LocalConfig,
    PrivateState,
    PublicPack,
    generic_embedder,
    local_round,
    mine_hard_negatives,
    personalized_embedder,
)
from fedfr.train.losses import contrastive_regularizer, proximal_term
from fedfr.train.methods import METHODS, get_method

ARCH = "mbf_tiny"
D = 128
NUM_IDENTITIES = 3
PER_IDENTITY = 4
NUM_PUBLIC_CLASSES = 6
MAX_HARD_NEGATIVES = 4


def _softplus(x: float) -> float:
    """log(1 + e^x), computed independently of torch."""
    return math.log1p(math.exp(x))


# --------------------------------------------------------------------------- fixtures


# Every test here runs toy rounds on one thread (conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> GlobalModel:
    torch.manual_seed(0)
    net = build_backbone(ARCH)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    rng = np.random.default_rng(0)
    pub = rng.standard_normal((NUM_PUBLIC_CLASSES, D)).astype(np.float32)
    pub /= np.linalg.norm(pub, axis=1, keepdims=True)
    return GlobalModel(ARCH, D, get_backbone_spec(ARCH).contract.to_dict(), state, pub)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(NUM_IDENTITIES), PER_IDENTITY).astype(np.int64)
    images = rng.integers(0, 256, (len(labels), 112, 112, 3), dtype=np.uint8)
    return images, labels


@pytest.fixture(scope="module")
def pack() -> PublicPack:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (12, 112, 112, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5], np.int64)
    return PublicPack.from_images(images, labels)


@pytest.fixture(scope="module")
def cfg() -> LocalConfig:
    """The paper's objective (public images + DFC + contrastive) at toy size."""
    return LocalConfig(device="cpu", batch_size=8, epochs_start=2, epochs_step=1, epochs_min=1,
                       hard_negative_threshold=-1.0, max_hard_negatives=MAX_HARD_NEGATIVES,
                       seed=0)


@pytest.fixture(scope="module")
def round0(model, data, pack, cfg):
    """Round 0 of the full objective, recording the indices hard-negative mining returned."""
    mined: list[torch.Tensor] = []
    orig = local_mod.mine_hard_negatives

    def spy(*args, **kwargs):
        out = orig(*args, **kwargs)
        mined.append(out.clone())
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(local_mod, "mine_hard_negatives", spy)
        result = local_round(model, *data, cfg, round_index=0, pack=pack)
    assert len(mined) == 1
    return result, mined[0].numpy()


@pytest.fixture(scope="module")
def round1(model, data, pack, cfg, round0):
    return local_round(model, *data, cfg, round_index=1, private=round0[0].private, pack=pack)


# --------------------------------------------------------------------------- loss terms


def _g(c: float, t: float = 3.0) -> float:
    """SphereFace2's similarity adjustment, written out."""
    return 2 * ((c + 1) / 2) ** t - 1


def test_binary_margin_loss_positive_row_matches_hand_computation():
    cos = torch.tensor([[0.5, -0.2]])
    got = binary_margin_loss(cos, torch.tensor([0]))
    expected = (0.7 / 30 * _softplus(-30 * (_g(0.5) - 0.4))
                + 0.3 / 30 * _softplus(30 * (_g(-0.2) + 0.4)))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_binary_margin_loss_public_negative_row_is_all_negatives():
    cos = torch.tensor([[0.1, 0.3]])
    got = binary_margin_loss(cos, torch.tensor([-1]))
    expected = 0.3 / 30 * (_softplus(30 * (_g(0.1) + 0.4)) + _softplus(30 * (_g(0.3) + 0.4)))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_binary_margin_loss_bias_shifts_the_logits():
    cos = torch.tensor([[0.5, -0.2]])
    bias = torch.tensor([1.0, -2.0])
    got = binary_margin_loss(cos, torch.tensor([0]), bias=bias)
    expected = (0.7 / 30 * _softplus(-(30 * (_g(0.5) - 0.4) + 1.0))
                + 0.3 / 30 * _softplus(30 * (_g(-0.2) + 0.4) - 2.0))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="bias"):
        binary_margin_loss(cos, torch.tensor([0]), bias=torch.zeros(3))


def test_binary_margin_loss_averages_rows_and_honours_custom_config():
    cos = torch.tensor([[0.5, -0.2], [0.1, 0.3], [-0.3, 0.9]])
    labels = torch.tensor([0, -1, 1])
    lam, r, m = 0.6, 10.0, 0.2  # t=1: no similarity adjustment
    rows = [
        lam * _softplus(-r * (0.5 - m)) + (1 - lam) * _softplus(r * (-0.2 + m)),
        (1 - lam) * (_softplus(r * (0.1 + m)) + _softplus(r * (0.3 + m))),
        (1 - lam) * _softplus(r * (-0.3 + m)) + lam * _softplus(-r * (0.9 - m)),
    ]
    cfg = BinaryMarginConfig(pos_weight=lam, scale=r, margin=m, t=1.0)
    got = binary_margin_loss(cos, labels, cfg)
    assert got.item() == pytest.approx(sum(rows) / 3 / r, rel=1e-5)


def test_dfc_loss_of_a_mid_cosine_negative_is_small():
    """The regression that wrecked the first small run: a negative at cosine 0.3 must cost
    ~0.002 per identity, not ~6 (no 1/r and no similarity adjustment)."""
    got = binary_margin_loss(torch.tensor([[0.3]]), torch.tensor([-1])).item()
    assert 0.001 < got < 0.003


@pytest.mark.parametrize("cos, labels", [
    (torch.zeros(2, 3), torch.tensor([0])),          # N mismatch
    (torch.zeros(3), torch.tensor([0, 0, 0])),       # cos not 2-D
    (torch.zeros(2, 3), torch.tensor([[0], [1]])),   # labels not 1-D
    (torch.zeros(2, 3), torch.tensor([0, 3])),       # label out of range
])
def test_binary_margin_loss_rejects_bad_shapes_and_labels(cos, labels):
    with pytest.raises(ValueError):
        binary_margin_loss(cos, labels)


def test_binary_margin_config_rejects_bad_values():
    for bad in ({"pos_weight": 1.5}, {"scale": 0.0}, {"margin": -0.1}, {"t": 0.5}):
        with pytest.raises(ValueError):
            BinaryMarginConfig(**bad)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_contrastive_regularizer_matches_hand_computation():
    z = np.array([[1.0, 0.0], [3.0, 4.0]])
    zg = np.array([[1.0, 1.0], [0.0, 2.0]])
    zp = np.array([[0.0, 1.0], [-1.0, 0.0]])
    t = 0.5
    per_row = []
    for a, g, p in zip(z, zg, zp, strict=True):
        s1, s2 = _cos(a, g), _cos(a, p)
        per_row.append(-math.log(math.exp(s1 / t) / (math.exp(s1 / t) + math.exp(s2 / t))))
    got = contrastive_regularizer(*(torch.tensor(x, dtype=torch.float32) for x in (z, zg, zp)),
                                  temperature=t)
    assert got.item() == pytest.approx(np.mean(per_row), rel=1e-5)


def test_contrastive_regularizer_is_log2_with_zero_gradient_when_global_equals_previous():
    z = torch.tensor([[0.3, -1.2, 0.5], [2.0, 0.1, 0.0]], requires_grad=True)
    zg = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.7, -0.4]])
    loss = contrastive_regularizer(z, zg, zg.clone())
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    assert torch.allclose(z.grad, torch.zeros_like(z), atol=1e-7)


def test_contrastive_regularizer_decreases_as_z_moves_toward_global():
    zg = torch.tensor([[0.0, 1.0]])
    zp = torch.tensor([[1.0, -1.0]])
    z = torch.tensor([[1.0, 0.0]])
    losses = [contrastive_regularizer(z + a * (zg - z), zg, zp).item()
              for a in (0.0, 0.25, 0.5, 0.75)]
    assert all(b < a for a, b in itertools.pairwise(losses))


def test_contrastive_regularizer_rejects_bad_temperature_and_shapes():
    z = torch.ones(2, 3)
    for t in (0.0, -1.0):
        with pytest.raises(ValueError):
            contrastive_regularizer(z, z, z, temperature=t)
    with pytest.raises(ValueError):
        contrastive_regularizer(z, torch.ones(2, 4), z)
    with pytest.raises(ValueError):
        contrastive_regularizer(z, z, torch.ones(3, 3))
    with pytest.raises(ValueError):
        contrastive_regularizer(torch.ones(3), torch.ones(3), torch.ones(3))


def test_proximal_term_matches_hand_computation_and_gradient():
    p_np = [np.array([1.0, 2.0]), np.array([[0.5, -1.0], [0.0, 3.0]])]
    a_np = [np.array([0.0, 0.5]), np.array([[1.5, -1.0], [2.0, 1.0]])]
    mu = 0.1
    expected = mu / 2 * sum(float(((p - a) ** 2).sum()) for p, a in zip(p_np, a_np, strict=True))
    params = [torch.tensor(p, dtype=torch.float32, requires_grad=True) for p in p_np]
    anchors = [torch.tensor(a, dtype=torch.float32) for a in a_np]
    got = proximal_term(params, anchors, mu)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    got.backward()
    for p, pn, an in zip(params, p_np, a_np, strict=True):
        np.testing.assert_allclose(p.grad.numpy(), mu * (pn - an), rtol=1e-6, atol=1e-7)


def test_proximal_term_is_zero_at_the_anchor_and_validates():
    params = [torch.randn(3, 2), torch.randn(4)]
    assert proximal_term(params, [p.clone() for p in params], 5.0).item() == 0.0
    with pytest.raises(ValueError):
        proximal_term([torch.zeros(2)], [torch.zeros(3)], 1.0)
    with pytest.raises(ValueError):
        proximal_term([], [], 1.0)


# --------------------------------------------------------------------------- DFC head


def test_dfc_head_converter_starts_as_identity():
    torch.manual_seed(0)
    head = DFCHead(16, 5)
    x = torch.randn(7, 16)
    assert torch.equal(head.converter.weight, torch.eye(16))
    assert torch.allclose(head.convert(x), x, atol=1e-6)


def test_dfc_head_forward_returns_cosines_in_range():
    torch.manual_seed(0)
    cls = torch.randn(5, 16)
    head = DFCHead(16, 5, classifiers=cls)
    x = torch.randn(7, 16) * 10
    cos = head(x)
    assert cos.shape == (7, 5)
    assert cos.min() >= -1 - 1e-6 and cos.max() <= 1 + 1e-6
    xn, cn = x.numpy(), cls.numpy()
    expected = (xn / np.linalg.norm(xn, axis=1, keepdims=True)) @ (
        cn / np.linalg.norm(cn, axis=1, keepdims=True)).T
    np.testing.assert_allclose(cos.detach().numpy(), expected, atol=1e-5)


def test_dfc_head_rejects_classifiers_of_wrong_shape():
    with pytest.raises(ValueError):
        DFCHead(16, 5, classifiers=torch.zeros(4, 16))


# --------------------------------------------------------------------------- mining


def _unit(*rows: list[float]) -> torch.Tensor:
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


LOCAL = _unit([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
# best cosine to a local feature: 0.5, 0.8, 0.0, 1.0, 0.3 (unnormalized on purpose)
CANDIDATES = torch.tensor([[0.0, 0.5, math.sqrt(0.75)], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0],
                           [1.0, 0.0, 0.0], [0.3, 0.0, math.sqrt(0.91)]]) * 3.0


def test_mine_hard_negatives_selects_candidates_above_threshold():
    sel = mine_hard_negatives(LOCAL, CANDIDATES, 0.4)
    assert sel.dtype == torch.int64
    assert sel.tolist() == [0, 1, 3]


def test_mine_hard_negatives_max_count_keeps_most_similar_sorted():
    sel = mine_hard_negatives(LOCAL, CANDIDATES, 0.4, max_count=2)
    assert sel.tolist() == [1, 3]  # cosines 0.8 and 1.0; topk order would be [3, 1]
    assert mine_hard_negatives(LOCAL, CANDIDATES, 0.4, max_count=1).tolist() == [3]
    assert mine_hard_negatives(LOCAL, CANDIDATES, 0.4, max_count=10).tolist() == [0, 1, 3]


def test_mine_hard_negatives_empty_when_none_qualify():
    sel = mine_hard_negatives(LOCAL, CANDIDATES[[0, 2, 4]], 0.6)
    assert sel.numel() == 0 and sel.dtype == torch.int64


# --------------------------------------------------------------------------- LocalConfig


def test_local_config_adaptive_epochs():
    cfg = LocalConfig()
    assert [cfg.epochs_for_round(r) for r in range(5)] == [10, 8, 6, 4, 4]
    assert cfg.epochs_for_round(20) == 4


def test_local_config_paper_defaults():
    cfg = LocalConfig()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (0.001, 0.9, 5e-4, 256)
    assert cfg.hard_negative_threshold == 0.4
    assert cfg.dfc_weight == 10.0
    assert cfg.contrastive_mu == 5.0
    assert cfg.contrastive_temperature == 0.5
    assert (cfg.margin.s, cfg.margin.m3) == (30.0, 0.4)
    assert (cfg.margin.m1, cfg.margin.m2) == (1.0, 0.0)
    assert cfg.public == "images"
    assert cfg.prox_mu == 0.0
    assert (cfg.dfc.pos_weight, cfg.dfc.scale, cfg.dfc.margin) == (0.7, 30.0, 0.4)


@pytest.mark.parametrize("bad", [
    {"public": "bogus"}, {"dfc_weight": -1.0}, {"contrastive_mu": -0.5}, {"prox_mu": -0.01},
    {"batch_size": 1}, {"lr": 0.0}, {"epochs_min": 0}, {"lr_decay_at": 1.5},
])
def test_local_config_rejects_invalid_values(bad):
    with pytest.raises(ValueError):
        LocalConfig(**bad)


# --------------------------------------------------------------------------- local_round


def test_local_round_update_holds_only_shared_names(model, round0):
    result, _ = round0
    arrays = result.update.arrays
    assert all(is_shared(n) for n in arrays)
    assert not any(n.startswith(p) for n in arrays for p in PRIVATE_PREFIXES)
    backbone_names = {n for n in arrays if n.startswith(BACKBONE_PREFIX)}
    assert backbone_names == {BACKBONE_PREFIX + k for k in model.backbone}
    assert set(arrays) - backbone_names == {PUBLIC_ROWS_KEY, PUBLIC_INDEX_KEY}
    assert result.update.num_samples == NUM_IDENTITIES * PER_IDENTITY


def test_local_round_uploads_every_public_row_by_default(model, pack, round0):
    """public_rows="all" (the reference code's choice): every public class is in the CosFace
    head, so every row is trained and uploaded."""
    result, mined = round0
    arrays = result.update.arrays
    assert len(mined) == MAX_HARD_NEGATIVES  # threshold -1: all qualify, capped
    num_public = len(model.public_embeddings)
    np.testing.assert_array_equal(arrays[PUBLIC_INDEX_KEY], np.arange(num_public))
    assert arrays[PUBLIC_INDEX_KEY].dtype == np.int64
    assert arrays[PUBLIC_ROWS_KEY].shape == (num_public, D)
    assert not np.array_equal(arrays[PUBLIC_ROWS_KEY], model.public_embeddings)  # trained
    assert result.metrics["hard_negatives"] == MAX_HARD_NEGATIVES
    assert result.metrics["public_rows"] == num_public


def test_local_round_mined_rows_uploads_only_the_mined_classes(model, data, pack, cfg,
                                                               monkeypatch):
    import fedfr.train.local as local_mod

    mined: list[torch.Tensor] = []
    real = local_mod.mine_hard_negatives

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        mined.append(out)
        return out

    monkeypatch.setattr(local_mod, "mine_hard_negatives", spy)
    result = local_round(model, *data, cfg.with_(public_rows="mined", epochs_start=1),
                         pack=pack)
    expected_index = np.unique(pack.labels[mined[0].numpy()])
    arrays = result.update.arrays
    np.testing.assert_array_equal(arrays[PUBLIC_INDEX_KEY], expected_index)
    assert arrays[PUBLIC_ROWS_KEY].shape == (len(expected_index), D)
    assert result.metrics["public_rows"] == len(expected_index)


def test_local_round_private_state_shapes_and_nothing_private_uploaded(model, round0):
    result, _ = round0
    priv = result.private
    assert priv.identity_weights.shape == (NUM_IDENTITIES, D)
    assert priv.converter.shape == (D, D)
    assert priv.binary_weights.shape == (NUM_IDENTITIES, D)
    assert set(priv.local_backbone) == set(model.backbone)
    assert priv.rounds == 1
    for name, arr in result.update.arrays.items():
        for secret in (priv.converter, priv.identity_weights, priv.binary_weights,
                       priv.binary_bias):
            assert not (arr.shape == secret.shape and np.array_equal(arr, secret)), name
    # the trained backbone is uploaded (shared) and also kept as the personalized backbone
    for k, v in priv.local_backbone.items():
        np.testing.assert_array_equal(result.update.arrays[BACKBONE_PREFIX + k], v)


def test_local_round_trains_backbone_with_finite_loss(model, round0):
    result, _ = round0
    arrays = result.update.arrays
    changed = [k for k, v in model.backbone.items()
               if v.dtype.kind == "f" and not np.array_equal(arrays[BACKBONE_PREFIX + k], v)]
    assert changed
    for key in ("loss", "cosface", "dfc"):
        assert math.isfinite(result.metrics[key])
    assert result.metrics["epochs"] == 2  # epochs_start=2 at round 0
    assert math.isfinite(result.update.metrics["loss"])


def test_contrastive_term_in_round0_and_with_previous_state(model, data, pack, cfg, round0,
                                                            round1):
    assert math.isfinite(round0[0].metrics["contrastive"])  # random round-0 negative
    off = local_round(model, *data, cfg.with_(round0_negative="none", epochs_start=1), pack=pack)
    assert "contrastive" not in off.metrics
    assert "contrastive" in round1.metrics
    assert math.isfinite(round1.metrics["contrastive"])
    assert round1.metrics["epochs"] == 1
    assert round1.private.rounds == 2


def test_fedavg_like_config_uploads_no_public_rows(model, data, cfg):
    fedavg_cfg = cfg.with_(public=None, dfc_weight=0.0, contrastive_mu=0.0)
    result = local_round(model, *data, fedavg_cfg)
    assert PUBLIC_ROWS_KEY not in result.update.arrays
    assert PUBLIC_INDEX_KEY not in result.update.arrays
    assert result.private.converter is None and result.private.binary_weights is None
    assert "dfc" not in result.metrics and "contrastive" not in result.metrics
    assert result.metrics["public_rows"] == 0


def test_embeddings_public_kind_needs_no_pack_and_uploads_no_rows(model, data, cfg):
    emb_cfg = cfg.with_(public="embeddings", contrastive_mu=0.0, epochs_start=1)
    result = local_round(model, *data, emb_cfg)
    assert PUBLIC_ROWS_KEY not in result.update.arrays
    assert PUBLIC_INDEX_KEY not in result.update.arrays
    assert result.metrics["public_rows"] == MAX_HARD_NEGATIVES


def test_images_public_kind_without_pack_raises(model, data, cfg):
    with pytest.raises(ValueError, match="PublicPack"):
        local_round(model, *data, cfg)


def test_prox_mu_adds_prox_metric(model, data, cfg):
    prox_cfg = cfg.with_(public=None, dfc_weight=0.0, contrastive_mu=0.0, prox_mu=0.01,
                         epochs_start=1)
    result = local_round(model, *data, prox_cfg)
    assert "prox" in result.metrics
    assert result.metrics["prox"] >= 0.0 and math.isfinite(result.metrics["prox"])


def test_frozen_models_run_once_per_round_not_per_step(model, data, pack, cfg, round0,
                                                       monkeypatch):
    orig = local_mod._features
    calls: list[int] = []

    def counting(*args, **kwargs):
        calls.append(1)
        return orig(*args, **kwargs)

    monkeypatch.setattr(local_mod, "_features", counting)
    counts, steps = [], []
    for epochs in (1, 3):
        calls.clear()
        c = cfg.with_(epochs_start=epochs, epochs_min=epochs)
        result = local_round(model, *data, c, round_index=1, private=round0[0].private,
                             pack=pack)
        assert "contrastive" in result.metrics
        counts.append(len(calls))
        steps.append(result.metrics["steps"])
    assert steps[1] == 3 * steps[0] and steps[0] >= 2
    assert counts[0] == counts[1]
    # global features of the local images, of the pack, flipped selected, previous model
    assert counts[0] <= 4


def test_same_seed_gives_identical_update(model, data, pack, cfg, round0):
    again = local_round(model, *data, cfg, round_index=0, pack=pack)
    first = round0[0].update.arrays
    assert set(again.update.arrays) == set(first)
    for k, v in first.items():
        np.testing.assert_array_equal(again.update.arrays[k], v, err_msg=k)


@pytest.mark.parametrize("case", ["missing_identity", "length_mismatch", "float_images",
                                  "negative_label", "single_image"])
def test_local_round_rejects_bad_input(model, data, pack, cfg, case):
    images, labels = data
    if case == "missing_identity":
        labels = np.array([0, 0, 2, 2], np.int64)
        images = images[:4]
    elif case == "length_mismatch":
        labels = labels[:-1]
    elif case == "float_images":
        images = images.astype(np.float32)
    elif case == "negative_label":
        labels = labels.copy()
        labels[0] = -1
    elif case == "single_image":
        images, labels = images[:1], labels[:1]
    with pytest.raises(ValueError):
        local_round(model, images, labels, cfg, pack=pack)


def test_local_round_rejects_private_state_with_wrong_identity_count(model, data, pack, cfg):
    private = PrivateState(identity_weights=np.zeros((NUM_IDENTITIES + 2, D), np.float32))
    with pytest.raises(ValueError, match="identities"):
        local_round(model, *data, cfg, round_index=1, private=private, pack=pack)


# --------------------------------------------------------------------------- recognizers


def test_identity_converter_personalized_equals_generic(model, data):
    images = data[0][:4]
    private = PrivateState(identity_weights=np.zeros((NUM_IDENTITIES, D), np.float32),
                           converter=np.eye(D, dtype=np.float32),
                           local_backbone=dict(model.backbone))
    pers = personalized_embedder(model, private)(images)
    gen = generic_embedder(model)(images)
    assert pers.shape == gen.shape == (4, D)
    np.testing.assert_allclose(pers, gen, atol=1e-5)


def test_orthogonal_converter_changes_embeddings_but_keeps_them_normalized(model, data):
    images = data[0][:4]
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((D, D)))
    q = q.astype(np.float32)
    private = PrivateState(identity_weights=np.zeros((NUM_IDENTITIES, D), np.float32),
                           converter=q, local_backbone=dict(model.backbone))
    pers = personalized_embedder(model, private)(images)
    gen = generic_embedder(model)(images)
    assert not np.allclose(pers, gen, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(pers, axis=1), 1.0, atol=1e-5)
    # the converter is a linear map W: embeddings are normalize(f @ W.T) = gen @ Q.T here
    np.testing.assert_allclose(pers, gen @ q.T, atol=1e-4)


def test_personalized_embedder_needs_a_trained_backbone(model):
    private = PrivateState(identity_weights=np.zeros((NUM_IDENTITIES, D), np.float32))
    with pytest.raises(ValueError):
        personalized_embedder(model, private)


def test_private_state_round_trips_and_is_entirely_private(round1):
    priv = round1.private
    arrays = priv.to_arrays()
    back = PrivateState.from_arrays(arrays)
    np.testing.assert_array_equal(back.identity_weights, priv.identity_weights)
    np.testing.assert_array_equal(back.converter, priv.converter)
    np.testing.assert_array_equal(back.binary_weights, priv.binary_weights)
    assert back.rounds == priv.rounds == 2
    assert set(back.local_backbone) == set(priv.local_backbone)
    for k, v in priv.local_backbone.items():
        np.testing.assert_array_equal(back.local_backbone[k], v)
    shared, private = split_state(arrays)
    assert shared == {}
    assert set(private) == set(arrays)


def test_private_state_without_dfc_round_trips():
    priv = PrivateState(identity_weights=np.ones((2, 4), np.float32))
    back = PrivateState.from_arrays(priv.to_arrays())
    assert back.converter is None and back.binary_weights is None
    assert back.local_backbone is None and back.rounds == 0
    np.testing.assert_array_equal(back.identity_weights, priv.identity_weights)


# --------------------------------------------------------------------------- methods


def test_methods_switch_terms_as_named():
    base = LocalConfig()
    cfgs = {name: spec.local_config(base) for name, spec in METHODS.items()}
    fedavg = cfgs["fedavg"]
    assert (fedavg.public, fedavg.dfc_weight, fedavg.contrastive_mu, fedavg.prox_mu) == (
        None, 0.0, 0.0, 0.0)
    fedfr = cfgs["fedfr"]
    assert (fedfr.public, fedfr.dfc_weight, fedfr.contrastive_mu, fedfr.prox_mu) == (
        "images", 10.0, 5.0, 0.0)
    emb = cfgs["fedfr_emb"]
    assert (emb.public, emb.dfc_weight, emb.contrastive_mu) == ("embeddings", 10.0, 5.0)
    assert cfgs["fedprox"].prox_mu > 0
    assert cfgs["fedprox"].public is None and cfgs["fedprox"].dfc_weight == 0.0
    assert cfgs["fedavg_public"].public == "images"
    assert cfgs["fedavg_public"].dfc_weight == 0.0
    assert cfgs["fedavg_public"].contrastive_mu == 0.0
    assert METHODS["pretrained"].trains is False
    assert METHODS["local"].federated is False
    assert all(METHODS[n].trains for n in METHODS if n != "pretrained")
    assert METHODS["fedprox"].local_config(base, prox_mu=0.2).prox_mu == 0.2
    # weights of terms a method uses come from the base config
    custom = base.with_(dfc_weight=3.0, contrastive_mu=1.5)
    assert METHODS["fedfr"].local_config(custom).dfc_weight == 3.0
    assert METHODS["fedfr"].local_config(custom).contrastive_mu == 1.5


def test_get_method_unknown_name_lists_choices():
    assert get_method("fedfr") is METHODS["fedfr"]
    with pytest.raises(UnknownNameError) as info:
        get_method("nope")
    message = str(info.value)
    assert "nope" in message
    for name in METHODS:
        assert name in message
