"""Loading arcface_torch .pth files and fedfr safetensors checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fedfr.backbones import build_backbone
from fedfr.checkpoint import Checkpoint, load_backbone, read_checkpoint, save_checkpoint
from fedfr.data.contract import InputContract
from fedfr.errors import CheckpointError, UnknownNameError

TINY = InputContract(height=64, width=64)


class NotATensor:
    """A custom class: a weights-only torch.load must refuse to unpickle it."""

    def __init__(self) -> None:
        self.value = 42


def _trained(arch: str, **kw: object) -> torch.nn.Module:
    """A model with non-default weights and BN statistics."""
    torch.manual_seed(0)
    model = build_backbone(arch, **kw)
    size = model.input_size
    model.train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model(torch.randn(4, 3, *size))
    return model.eval()


def _embed(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, *model.input_size))


@pytest.mark.parametrize("prefix", ["", "module."])
def test_pth_round_trip(tmp_path: Path, prefix: str) -> None:
    model = _trained("r18")
    path = tmp_path / "backbone.pth"
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    loaded = load_backbone(path, "r18")
    assert torch.equal(_embed(loaded), _embed(model))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_pth_wrong_arch_suggests_matching_one(tmp_path: Path) -> None:
    path = tmp_path / "backbone.pth"
    torch.save(build_backbone("mbf").state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_backbone(path, "r18")
    msg = str(info.value)
    assert str(path) in msg and "'r18'" in msg and "missing keys" in msg
    assert "unexpected keys" in msg and "load_backbone(path, 'mbf')" in msg


def test_pth_missing_key(tmp_path: Path) -> None:
    state = build_backbone("mbf").state_dict()
    del state["conv_sep.layers.0.weight"]
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys .*conv_sep\.layers\.0\.weight"):
        load_backbone(path, "mbf")
    model = load_backbone(path, "mbf", strict=False)  # tolerated when not strict
    assert torch.equal(model.features.layers[2].weight, state["features.layers.2.weight"])


def test_shape_mismatch_reported_even_when_not_strict(tmp_path: Path) -> None:
    state = build_backbone("mbf_tiny", embedding_size=64).state_dict()
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    for strict in (True, False):
        with pytest.raises(CheckpointError, match="shape mismatches"):
            load_backbone(path, "mbf_tiny", strict=strict)


def test_pth_with_pickled_object_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "obj": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_backbone(path, "r18")


def test_pth_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="state dict"):
        load_backbone(path, "r18")


def test_safetensors_round_trip(tmp_path: Path) -> None:
    model = _trained("mbf_tiny", embedding_size=64)
    path = tmp_path / "ckpt.bin"  # detection is by content, not extension
    protos = torch.randn(10, 64)
    save_checkpoint(
        path, model, arch="mbf_tiny", embedding_size=64, contract=TINY,
        extra_tensors={"head.public_class_embeddings": protos},
        metadata={"round": 3, "client": "c1", "lr": 0.1},
    )
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]  # no temp files left

    ckpt = read_checkpoint(path)
    assert isinstance(ckpt, Checkpoint)
    assert (ckpt.arch, ckpt.embedding_size, ckpt.contract) == ("mbf_tiny", 64, TINY)
    assert ckpt.metadata == {"round": 3, "client": "c1", "lr": 0.1}
    assert list(ckpt.extra) == ["head.public_class_embeddings"]
    assert torch.equal(ckpt.extra["head.public_class_embeddings"], protos)
    assert list(ckpt.backbone_state) == list(model.state_dict())
    nbt = ckpt.backbone_state["conv_sep.layers.1.num_batches_tracked"]
    assert nbt.dtype == torch.int64 and nbt.item() == 1

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "fedfr-checkpoint" and meta["format_version"] == "1"
    assert json.loads(meta["input_contract"]) == TINY.to_dict()

    loaded = load_backbone(path, "mbf_tiny")  # embedding size 64 taken from the metadata
    assert loaded.embedding_size == 64
    assert torch.equal(_embed(loaded), _embed(model))


def test_save_state_dict_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    state = build_backbone("ir_tiny").state_dict()
    save_checkpoint(path, state, arch="ir_tiny", embedding_size=128, contract=TINY)
    save_checkpoint(path, state, arch="ir_tiny", embedding_size=128, contract=TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]
    assert read_checkpoint(path).metadata == {}


def test_save_rejects_bad_input(tmp_path: Path) -> None:
    state = build_backbone("mbf_tiny").state_dict()
    with pytest.raises(UnknownNameError):
        save_checkpoint(tmp_path / "a", state, arch="nope", embedding_size=128)
    with pytest.raises(CheckpointError, match="backbone"):
        save_checkpoint(tmp_path / "b", state, arch="mbf_tiny", embedding_size=128,
                        extra_tensors={"backbone.x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "c", state, arch="mbf_tiny", embedding_size=128,
                        metadata={"x": object()})  # type: ignore[dict-item]
    with pytest.raises(CheckpointError, match=r"not saving .*shape mismatches"):
        save_checkpoint(tmp_path / "d", state, arch="mbf_tiny", embedding_size=256)
    with pytest.raises(CheckpointError, match=r"not saving .*missing keys"):
        save_checkpoint(tmp_path / "e", state, arch="ir_tiny", embedding_size=128)
    assert list(tmp_path.iterdir()) == []


def test_default_contract_is_the_archs(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, build_backbone("ir_tiny"), arch="ir_tiny", embedding_size=128)
    assert read_checkpoint(path).contract == TINY
    assert load_backbone(path, "ir_tiny").input_size == (64, 64)


def test_safetensors_wrong_arch(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, build_backbone("r18", input_size=(64, 64)), arch="r18",
                    embedding_size=512, contract=TINY)
    with pytest.raises(CheckpointError, match=re.escape("checkpoint is for 'r18', not 'r50'")):
        load_backbone(path, "r50")
    assert load_backbone(path, "r18").fc.in_features == 512 * 4 * 4  # input size from contract


@pytest.mark.parametrize("kind", ["truncated_st", "truncated_pth", "garbage", "empty"])
def test_corrupt_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "ckpt"
    if kind.startswith("truncated"):
        if kind == "truncated_st":
            save_checkpoint(path, build_backbone("mbf_tiny"), arch="mbf_tiny",
                            embedding_size=128, contract=TINY)
        else:
            torch.save(build_backbone("mbf_tiny").state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"" if kind == "empty" else b"hello, this is not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_backbone(path, "mbf_tiny")
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read"):
        load_backbone(tmp_path / "nope.pth", "r18")


def test_read_checkpoint_refuses_pth(tmp_path: Path) -> None:
    path = tmp_path / "backbone.pth"
    torch.save(build_backbone("mbf_tiny").state_dict(), path)
    with pytest.raises(CheckpointError, match="load_backbone"):
        read_checkpoint(path)


def test_foreign_safetensors_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="fedfr metadata"):
        read_checkpoint(path)


def test_single_torch_load_in_code_base() -> None:
    root = Path(__file__).resolve().parents[1]
    hits = [
        (p, line)
        for package in ("fedfr", "aggregator", "device_sdk", "export")
        for p in sorted((root / package).rglob("*.py"))
        for line in p.read_text().splitlines()
        if "torch.load(" in line and "``torch.load(" not in line  # skip docstring mentions
    ]
    assert len(hits) == 1 and "weights_only=True" in hits[0][1], hits
