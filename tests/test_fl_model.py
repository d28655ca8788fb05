"""GlobalModel (numpy) reads and writes the same checkpoints as fedfr.checkpoint (torch)."""

import numpy as np
import pytest
import torch

from fedfr import checkpoint
from fedfr.backbones import build_backbone, get_backbone_spec
from fedfr.errors import CheckpointError
from fedfr.fl import GlobalModel
from fedfr.fl import model as fl_model


def test_format_constants_match_the_torch_side():
    assert fl_model.CHECKPOINT_FORMAT == checkpoint.FORMAT
    assert fl_model.CHECKPOINT_FORMAT_VERSION == checkpoint.FORMAT_VERSION
    from fedfr.train.pretrain import PUBLIC_EMBEDDINGS_KEY

    assert fl_model.PUBLIC_EMBEDDINGS_KEY == PUBLIC_EMBEDDINGS_KEY


def test_checkpoint_round_trip_both_ways(tmp_path):
    torch.manual_seed(0)
    net = build_backbone("mbf_tiny")
    spec = get_backbone_spec("mbf_tiny")
    pub = torch.randn(7, 128)
    path = tmp_path / "a.safetensors"
    checkpoint.save_checkpoint(path, net, arch="mbf_tiny", embedding_size=128,
                               extra_tensors={"head.public_class_embeddings": pub})
    m = GlobalModel.load(path)
    assert m.arch == "mbf_tiny" and m.embedding_size == 128
    assert m.contract == spec.contract.to_dict()
    np.testing.assert_array_equal(m.public_embeddings, pub.numpy())
    state = net.state_dict()
    assert set(m.backbone) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(m.backbone[k], v.numpy())
        assert m.backbone[k].dtype == v.numpy().dtype  # int64 counters stay integers

    out = m.with_(version="r3").save(tmp_path / "b.safetensors")
    again = checkpoint.load_backbone(out, "mbf_tiny")
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert GlobalModel.load(out).version == "r3"
    assert m.nbytes == m.backbone_nbytes + pub.numpy().nbytes


def test_load_refuses_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="cannot read"):
        GlobalModel.load(bad)
    from safetensors.numpy import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(other))
    with pytest.raises(CheckpointError, match="not a fedfr checkpoint"):
        GlobalModel.load(other)
