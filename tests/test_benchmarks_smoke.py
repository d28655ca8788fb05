"""The benchmark commands still run (tiny settings; the numbers are not checked here)."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_throughput_runs(tmp_path):
    out = tmp_path / "t.json"
    assert _load("train_throughput").main(
        ["--archs", "mbf_tiny", "--batch-size", "4", "--steps", "1", "--warmup", "0",
         "--repeats", "1", "--device", "cpu", "--num-classes", "10", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["results"][0]["arch"] == "mbf_tiny"
    assert report["results"][0]["img_per_s_median"] > 0


def test_synth_throughput_runs(tmp_path):
    out = tmp_path / "s.json"
    assert _load("synth_throughput").main(
        ["--images", "8", "--batch", "4", "--repeats", "1", "--devices", "1",
         "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())) == {"public", "devices"}


def test_local_step_benchmark_runs(tmp_path):
    out = tmp_path / "l.json"
    assert _load("local_step").main(
        ["--arch", "mbf_tiny", "--batch-size", "4", "--local-images", "8", "--pack", "8",
         "--steps", "1", "--warmup", "0", "--repeats", "1", "--device", "cpu",
         "--json", str(out)]) == 0
    r = json.loads(out.read_text())["result"]
    assert r["plain_img_per_s"] > 0 and r["fedfr_img_per_s"] > 0
    assert r["step_ratio_fedfr_over_plain"] > 0 and r["train_images"] == 16


def test_aggregator_benchmark_runs(tmp_path):
    out = tmp_path / "a.json"
    assert _load("aggregator").main(["--quick", "--workdir", str(tmp_path),
                                     "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    ing = report["ingest"]
    assert ing["devices"] == 2 and ing["update_bytes"] > 0
    for path in ("server", "http_discard", "http_durable", "disk"):
        assert ing[path]["mb_per_s"] > 0 and ing[path]["latency_samples"] == 2
        assert 0 < ing[path]["latency_p50_s"] <= ing[path]["latency_p99_s"]
    assert ing["floor_mb_per_s"] > 0 and ing["server_time_over_floor"] > 0
    assert ing["validate_one_update_s"] > 0 and ing["server_aggregation_s"] > 0
    agg = report["aggregation"]
    assert [r["updates"] for r in agg["results"]] == [2, 4] and agg["accept_update_s"] > 0
    for r in agg["results"]:
        assert min(r["stream_s"], r["floor_s"], r["naive_s"], r["service_s"]) > 0
        assert min(r["stream_peak_mb"], r["naive_peak_mb"], r["service_peak_mb"]) >= 0
        assert r["stream_and_floor_agree"]
