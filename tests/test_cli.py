"""The `fedfr` command end to end on the tiny synthetic benchmark, and its error paths."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedfr.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "fedfr", *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["data", "synth", "--profile", "tiny", "--out", str(out), "--json"]) == 0
    return out


def test_synth_pretrain_eval_round_trip(tiny, tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    code = main(["pretrain", "--data", str(tiny), "--arch", "mbf_tiny", "--epochs", "2",
                 "--batch-size", "64", "--device", "cpu", "--out", str(ckpt), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint"] == str(ckpt) and ckpt.exists()
    assert summary["data"].startswith("synthetic:tiny")

    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(tiny), "--out", str(out),
                 "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for split in ("generic", "generic_device_domains"):
        ver = report[split]["verification"]
        assert ver["num_genuine"] > 0 and ver["num_impostor"] > 0
        assert 0.0 <= ver["tar_at_far"]["1e-01"] <= 1.0
        assert "rank1" in report[split]["identification"]
    assert len(report["devices"]["per_device"]) >= 2
    assert set(report["devices"]["mean"]) >= {"tar@far=1e-01", "rank1", "eer"}
    assert (out / "eval.json").exists() and (out / "eval.md").exists()
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "eval.json").read_text())["arch"] == "mbf_tiny"


def test_data_info_describes_the_data_set(tiny, capsys):
    assert main(["data", "info", str(tiny), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["profile"] == "tiny" and info["public"]["identities"] > 0


def test_unknown_profile_lists_the_choices(tmp_path):
    proc = _run("data", "synth", "--profile", "huge", "--out", str(tmp_path / "x"))
    assert proc.returncode == 1
    assert "huge" in proc.stderr and "tiny" in proc.stderr and "small" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_pretrain_on_missing_data_names_the_path(tmp_path):
    proc = _run("pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m"))
    assert proc.returncode == 1 and "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_arch_and_corrupt_checkpoint_are_clear_errors(tiny, tmp_path):
    proc = _run("pretrain", "--data", str(tiny), "--arch", "r9000", "--out", str(tmp_path / "m"))
    assert proc.returncode == 1 and "r9000" in proc.stderr and "mbf" in proc.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    proc = _run("eval", "--checkpoint", str(bad), "--arch", "mbf_tiny", "--data", str(tiny),
                "--out", str(tmp_path / "e"))
    assert proc.returncode == 1 and "bad.safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_errors_exit_2():
    assert _run("pretrain").returncode == 2
    assert _run("--version").stdout.startswith("fedfr ")


def test_eval_on_a_verification_bin(tiny, tmp_path, capsys):
    """An arcface_torch-style .pth evaluated on an LFW-style .bin pair file."""
    import numpy as np
    import torch

    from fedfr.backbones import build_backbone
    from fedfr.data.manifest import SyntheticDataset
    from fedfr.data.verification_bin import write_verification_bin

    ds = SyntheticDataset.load(tiny)
    images = ds.eval.images.load()
    pairs = ds.eval.pairs[:40]
    bin_path = tmp_path / "synth_lfw.bin"
    write_verification_bin(bin_path, images[pairs.reshape(-1)], ds.eval.issame[:40])
    pth = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in build_backbone("mbf").state_dict().items()}, pth)

    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(pth), "--arch", "mbf", "--data", str(bin_path),
                 "--out", str(out), "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ver = report["synth_lfw"]["verification"]
    assert ver["num_genuine"] + ver["num_impostor"] == 40
    assert ver["num_genuine"] == int(np.sum(ds.eval.issame[:40]))
    assert (out / "roc.png").exists()


def test_public_pack_from_the_public_split(tiny, tmp_path, capsys):
    from fedfr.data.manifest import SyntheticDataset
    from fedfr.train.local_state import PublicPack

    out = tmp_path / "pack.safetensors"
    assert main(["public-pack", "--data", str(tiny), "--per-class", "2", "--out", str(out),
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    ds = SyntheticDataset.load(tiny)
    n_cls = len(set(np.asarray(ds.public.labels).tolist()))
    assert info["classes"] == n_cls and info["images"] == 2 * n_cls
    pack = PublicPack.load(out)
    assert pack.kind == "images" and pack.images.shape[0] == 2 * n_cls
    # the images are the public split's own crops, labelled with their classes
    pub = ds.public.load()
    labels = np.asarray(ds.public.labels)
    for img, lab in zip(pack.images[:5], pack.labels[:5], strict=True):
        hits = np.flatnonzero((pub == img).all(axis=(1, 2, 3)))
        assert hits.size and labels[hits[0]] == lab
    emb = tmp_path / "emb.safetensors"
    assert main(["public-pack", "--kind", "embeddings", "--out", str(emb)]) == 0
    assert PublicPack.load(emb).kind == "embeddings"
    assert main(["public-pack", "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "--data" in capsys.readouterr().err


@pytest.mark.parametrize("package", ["aggregator", "device_sdk"])
def test_other_entry_points_answer_version(package):
    proc = subprocess.run([sys.executable, "-m", package, "--version"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith(f"{package} ")
