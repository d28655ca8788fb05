"""The README's main command, shortened: ``python -m device_sdk.demo`` with 2 device processes
and 1 round (aggregator subprocess, device_sdk subprocesses, HTTP, export, ONNX Runtime)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_shortened_demo_end_to_end(tmp_path):
    from export.bundle import Bundle
    from fedfr.fl import GlobalModel

    work = tmp_path / "demo"
    cmd = [sys.executable, "-m", "device_sdk.demo", "--workdir", str(work), "--profile", "tiny",
           "--devices", "2", "--rounds", "1", "--base", "pretrain", "--pretrain-epochs", "3",
           "--quiet"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 0, p.stderr[-4000:]
    assert "FedFR end to end" in p.stdout and "after FL (v2)" in p.stdout

    report = json.loads((work / "report.json").read_text())
    # the rounds ran the product's default, as the fair protocol chose it
    from fedfr.train.methods import PRODUCT_ROUND

    assert report["round_config"]["method"] == PRODUCT_ROUND["method"]
    for k, v in PRODUCT_ROUND["local"].items():
        assert report["round_config"]["local"][k] == v
    # one round of 2 devices: the pretrained version 1, then the aggregated version 2
    assert [m["version"] for m in report["model_versions"]] == [1, 2]
    assert report["model_versions"][1]["round_id"] == report["rounds_run"][0]["id"]
    (run,) = report["rounds_run"]
    assert run["status"] == "completed" and run["stats"]["devices"] == 2
    assert run["base_version"] == 1 and run["result_version"] == 2

    # the aggregated model is a new model, not the pretrained one
    v1 = GlobalModel.load(work / "generic-v1.safetensors")
    v2 = GlobalModel.load(work / "generic-v2.safetensors")
    diff = max(float(np.abs(v2.backbone[k] - v1.backbone[k]).max())
               for k in v1.backbone if v1.backbone[k].dtype.kind == "f")
    assert diff > 0

    assert len(report["per_device"]) == 2
    for name, d in report["per_device"].items():
        assert d["rounds"] == 1
        # what a device sent: its update plus the HTTP around it, not more than 10% over
        assert d["update_bytes"] < d["bytes_sent"] < 1.1 * d["update_bytes"] + 100_000, name
        b = Bundle.load(d["bundle"])  # the bundle checks its own hashes and model
        assert len(b.names) == d["identities"] > 0
        # personalized from the model the device trained on: version 1 (round 1's base)
        assert str(b.manifest["model_version"]) == "1"
        assert b.manifest["far_target"] == pytest.approx(1e-2)
        assert math.isfinite(d["verify_genuine"]["score"])
        assert d["verify_genuine"]["name"].startswith("person-")
        assert d["identify_stranger"]["best"] in b.names

    for when in ("pretrained", "after_fl"):
        m = report["metrics"][when]
        for part in ("generic", "personalized"):
            v = m[part]["tar@far=1e-02"]
            assert v is not None and 0.0 <= v <= 1.0
        assert len(m["per_device"]) == 2
    # the personalized "after" numbers are the bundles' (ORT), not the generic model's
    assert report["metrics"]["after_fl"]["per_device"] != \
        report["metrics"]["pretrained"]["per_device"]
