import math

import pytest
import torch
import torch.nn.functional as F

from fedfr.errors import UnknownNameError
from fedfr.heads import (
    MARGIN_PRESETS,
    MarginConfig,
    NormalizedClassHead,
    arcface_logits,
    cosface_logits,
    margin_cross_entropy,
    margin_logits,
)


def _cos(n=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, generator=g) * 2 - 1


def test_cosface_subtracts_margin_on_target_only_and_scales():
    cos = _cos()
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    out = cosface_logits(cos, labels, s=30.0, m=0.4)
    expected = cos.clone() * 30.0
    expected[torch.arange(6), labels] = (cos[torch.arange(6), labels] - 0.4) * 30.0
    torch.testing.assert_close(out, expected)


def test_arcface_adds_angle_on_target():
    cos = torch.tensor([[0.8, 0.1], [0.2, 0.9]])
    labels = torch.tensor([0, 1])
    out = arcface_logits(cos, labels, s=10.0, m=0.5)
    assert out[0, 0] == pytest.approx(10 * math.cos(math.acos(0.8) + 0.5), abs=1e-5)
    assert out[1, 1] == pytest.approx(10 * math.cos(math.acos(0.9) + 0.5), abs=1e-5)
    assert out[0, 1] == pytest.approx(1.0, abs=1e-6)


def test_arcface_target_logit_decreases_monotonically_past_pi():
    # theta + m > pi uses the linear fallback; the target logit must keep decreasing in theta.
    cos = torch.linspace(0.999, -0.999, 400)[:, None]
    out = margin_logits(cos, torch.zeros(400, dtype=torch.long), MarginConfig(s=1, m2=0.5, m3=0))
    assert torch.all(out[1:, 0] < out[:-1, 0])


def test_combined_margin_formula():
    cfg = MarginConfig(s=2.0, m1=1.0, m2=0.3, m3=0.2)
    cos = torch.tensor([[0.5, 0.0]])
    out = margin_logits(cos, torch.tensor([0]), cfg)
    assert out[0, 0] == pytest.approx(2 * (math.cos(math.acos(0.5) + 0.3) - 0.2), abs=1e-5)
    assert cfg.kind == "combined"
    assert MARGIN_PRESETS["cosface"].kind == "cosface"
    assert MARGIN_PRESETS["arcface"].kind == "arcface"


def test_margin_is_pure_and_ignores_minus_one():
    cos = _cos()
    before = cos.clone()
    labels = torch.tensor([-1, 1, -1, 3, 4, -1])
    out = margin_logits(cos, labels, MarginConfig(s=5.0, m3=0.3))
    torch.testing.assert_close(cos, before)  # input untouched
    for row in (0, 2, 5):
        torch.testing.assert_close(out[row], cos[row] * 5.0)


def test_cross_entropy_skips_ignored_rows():
    cos = _cos()
    labels = torch.tensor([-1, 1, -1, 3, 4, 0])
    cfg = MarginConfig(s=16.0, m3=0.35)
    loss = margin_cross_entropy(cos, labels, cfg)
    keep = labels != -1
    manual = F.cross_entropy(margin_logits(cos[keep], labels[keep], cfg), labels[keep])
    torch.testing.assert_close(loss, manual)
    all_ignored = margin_cross_entropy(cos, torch.full((6,), -1), cfg)
    assert float(all_ignored) == 0.0


def test_gradient_flows_through_margin():
    cos = _cos().requires_grad_(True)
    loss = margin_cross_entropy(cos, torch.tensor([0, 1, 2, 3, 4, 0]), MARGIN_PRESETS["arcface"])
    loss.backward()
    assert cos.grad is not None and torch.isfinite(cos.grad).all()


@pytest.mark.parametrize(
    "cos, labels, msg",
    [
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), r"\(N, C\)"),
        (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), r"\(3,\)"),
        (torch.zeros(3, 4), torch.zeros(3), "integer"),
        (torch.zeros(3, 4), torch.tensor([0, 1, 4]), "out of range"),
    ],
)
def test_shape_errors_name_the_shapes(cos, labels, msg):
    with pytest.raises(ValueError, match=msg):
        margin_logits(cos, labels, MarginConfig())


def test_invalid_config_and_unknown_preset():
    with pytest.raises(ValueError):
        MarginConfig(s=0)
    with pytest.raises(ValueError):
        MarginConfig(m3=-0.1)
    with pytest.raises(UnknownNameError, match="cosface"):
        MarginConfig.preset("sphereface++")


def test_normalized_head_outputs_cosines():
    head = NormalizedClassHead(8, 3)
    emb = torch.randn(4, 8) * 10
    cos = head(emb)
    assert cos.shape == (4, 3)
    assert torch.all(cos.abs() <= 1 + 1e-6)
    w = F.normalize(head.weight, dim=1)
    torch.testing.assert_close(cos, F.normalize(emb, dim=1) @ w.T)
    with pytest.raises(ValueError, match="share D"):
        head(torch.randn(4, 7))
    with pytest.raises(ValueError, match=r"\(3, 8\)"):
        NormalizedClassHead(8, 3, weight=torch.zeros(3, 7))
