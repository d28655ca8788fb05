"""`fedfr simulate` end to end on the tiny profile (the CI smoke run), its outputs and errors."""

import json
import os
import subprocess
import sys
import time

import pytest

from fedfr.cli import main
from fedfr.sim import SimConfig

METRIC_KEYS = {"tar@far=1e-01", "tar@far=1e-02", "eer", "rank1", "dir@fpir=1e-01"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedfr", "simulate", "--profile", "tiny", "--methods",
         "fedavg,fedfr", "--rounds", "1", "--seeds", "0", "--pretrain-epochs", "1",
         "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, seconds


def test_results_json_has_every_method_with_history_and_final_metrics(tiny_run):
    out, _, _ = tiny_run
    res = json.loads((out / "results.json").read_text())
    assert res["format"] == "fedfr-simulation" and res["profile"] == "tiny"
    assert list(res["methods"]) == ["fedavg", "fedfr"]
    for name, m in res["methods"].items():
        assert [h["round"] for h in m["history"]] == [0, 1], name
        for split in ("generic", "personalized", "generic_device_domains"):
            assert set(m[split]) >= METRIC_KEYS, (name, split)
            assert all(v is None or 0.0 <= v <= 1.0 for v in m[split].values())
        # round 0 is the pretrained model: the same for every method
        assert m["history"][0]["generic"] == res["methods"]["fedavg"]["history"][0]["generic"]
        assert m["history"][1]["train"]["loss"] > 0
        b = m["bytes"]
        assert b["upload_per_device_round"] > 0 and b["download_per_device_round"] > 0
    fedfr, fedavg = res["methods"]["fedfr"], res["methods"]["fedavg"]
    # fedfr trains public rows (uploads more) and needs the public pack; fedavg neither
    assert fedfr["bytes"]["upload_per_device_round"] > fedavg["bytes"]["upload_per_device_round"]
    assert fedfr["bytes"]["public_pack"] > 0 and fedavg["bytes"]["public_pack"] == 0
    assert fedfr["history"][1]["train"]["hard_negatives"] > 0
    assert "dfc" in fedfr["history"][1]["train"] and "dfc" not in fedavg["history"][1]["train"]
    # training changed the models: the metrics moved from round 0
    for m in (fedfr, fedavg):
        assert m["history"][1]["personalized"] != m["history"][0]["personalized"]


def test_markdown_table_plots_and_progress(tiny_run):
    out, proc, _ = tiny_run
    md = (out / "results.md").read_text()
    assert "| fedavg |" in md and "| fedfr |" in md and "TAR@1e-3" in md
    for png in ("rounds.png", "roc_generic.png", "roc_personalized.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    assert "round 1/1" in proc.stderr  # progress while it runs
    assert "| fedfr |" in proc.stdout


def test_tiny_smoke_run_is_fast(tiny_run):
    _, _, seconds = tiny_run
    # Synthesis + 1 pretraining epoch + two methods for one round: well under a minute on
    # 2 idle cores; the bound leaves room for a loaded CI machine.
    assert seconds < 150


def test_rerun_reuses_finished_methods(tiny_run, capsys):
    out, _, _ = tiny_run
    before = (out / "seeds" / "seed-0" / "fedfr.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert main(["simulate", "--profile", "tiny", "--methods", "fedavg,fedfr", "--rounds", "1",
                 "--seeds", "0", "--pretrain-epochs", "1", "--device", "cpu", "--out",
                 str(out), "--json"]) == 0
    assert time.perf_counter() - start < 30
    assert (out / "seeds" / "seed-0" / "fedfr.json").stat().st_mtime_ns == before
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["methods"]) == {"fedavg", "fedfr"}


@pytest.mark.parametrize("args, message", [
    (["--methods", "fedavg,nope"], "unknown method 'nope'"),
    (["--profile", "huge"], "unknown profile 'huge'"),
    (["--rounds", "0"], "rounds must be >= 1"),
    (["--seeds", "1,1"], "seeds must be distinct"),
])
def test_bad_arguments_are_clear_errors(tmp_path, capsys, args, message):
    code = main(["simulate", "--out", str(tmp_path / "x"), *args])
    assert code == 1
    assert message in capsys.readouterr().err


def test_sim_config_settings_change_with_hyperparameters(tmp_path):
    a = SimConfig("tiny", ("fedfr",), tmp_path)
    b = SimConfig("tiny", ("fedfr",), tmp_path, local={"lr": 0.5})
    assert a.settings() != b.settings()
    assert a.settings()["local"]["lr"] == 0.01 and b.settings()["local"]["lr"] == 0.5
    assert a.num_rounds == 2

