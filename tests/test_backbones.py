"""Backbone registry and arcface_torch state-dict compatibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fedfr.backbones import (
    BackboneSpec,
    IResNet,
    MobileFaceNet,
    available_backbones,
    build_backbone,
    get_backbone_spec,
    register_backbone,
)
from fedfr.data.contract import ARCFACE_CONTRACT, InputContract
from fedfr.errors import FedFRError, UnknownNameError

GOLDEN_PATH = Path(__file__).parent / "data" / "arcface_torch_state_dicts.json"
ARCFACE_ARCHS = ["mbf", "mbf_large", "r18", "r34", "r50", "r100"]


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN_PATH.read_text())


@pytest.mark.parametrize("arch", ARCFACE_ARCHS)
def test_state_dict_matches_arcface_torch(arch: str, golden: dict) -> None:
    model = build_backbone(arch)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    ref = [(k, list(shape)) for k, shape in golden[arch]["state_dict"]]
    assert [k for k, _ in ours] == [k for k, _ in ref]  # keys and order
    assert ours == ref  # shapes
    # arcface counts every parameter, including the frozen ``features.weight`` of IResNet.
    assert sum(p.numel() for p in model.parameters()) == golden[arch]["num_params"]
    assert get_backbone_spec(arch).arcface_compatible


def test_registered_names() -> None:
    names = available_backbones()
    assert set(ARCFACE_ARCHS) | {"ir_tiny", "mbf_tiny"} <= set(names)
    assert names == sorted(names)
    for name in names:
        spec = get_backbone_spec(name)
        assert isinstance(spec, BackboneSpec) and spec.name == name
        assert isinstance(spec.contract, InputContract) and spec.description


@pytest.mark.parametrize(
    ("arch", "size", "dim"),
    [("mbf", 112, 512), ("r18", 112, 512), ("ir_tiny", 64, 128), ("mbf_tiny", 64, 128)],
)
def test_forward_shape(arch: str, size: int, dim: int) -> None:
    spec = get_backbone_spec(arch)
    assert spec.contract.size == (size, size) and spec.embedding_size == dim
    model = build_backbone(arch).eval()
    assert model.arch == arch and model.embedding_size == dim and model.input_size == (size, size)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_tiny_contracts_keep_arcface_normalization() -> None:
    for name in ("ir_tiny", "mbf_tiny"):
        c = get_backbone_spec(name).contract
        assert (c.mean, c.std, c.channel_order, c.layout) == (
            ARCFACE_CONTRACT.mean, ARCFACE_CONTRACT.std, "RGB", "NCHW")
        assert not get_backbone_spec(name).arcface_compatible


def test_kwargs_forwarded_and_input_size_dependent() -> None:
    model = build_backbone("r18", embedding_size=256, input_size=(64, 64), dropout=0.2)
    assert isinstance(model, IResNet)
    assert model.fc.in_features == 512 * 4 * 4 and model.fc.out_features == 256
    assert model.dropout.p == 0.2
    mbf = build_backbone("mbf_tiny", embedding_size=64, dropout=0.1)
    assert isinstance(mbf, MobileFaceNet)
    assert mbf.features.layers[0].layers[0].kernel_size == (4, 4)
    with torch.no_grad():
        assert mbf.eval()(torch.randn(3, 3, 64, 64)).shape == (3, 64)


def test_train_mode_backward() -> None:
    model = build_backbone("mbf_tiny").train()
    model(torch.randn(4, 3, 64, 64)).pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_backbone("r1000")
    msg = str(info.value)
    assert "r1000" in msg
    assert all(name in msg for name in available_backbones())
    assert isinstance(info.value, KeyError) and isinstance(info.value, FedFRError)


def test_duplicate_registration_rejected() -> None:
    spec = get_backbone_spec("r18")
    with pytest.raises(FedFRError, match="already registered"):
        register_backbone(spec)


def test_spec_is_frozen() -> None:
    spec = get_backbone_spec("mbf")
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    assert isinstance(spec.factory(embedding_size=8, input_size=(112, 112)), nn.Module)
