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


def test_export_latency_benchmark_runs(tmp_path):
    out = tmp_path / "e.json"
    mod = _load("export_latency")
    assert mod.main(["--quick", "--workdir", str(tmp_path), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    models = ["fp32", "static_int8", "dynamic_int8", "static_int8_tuned"]
    sizes = report["sizes"]
    assert min(sizes[m] for m in models) > 0
    assert min(sizes[f"fp32_over_{m}"] for m in models[1:]) > 1
    rows = report["latency"]["results"]
    assert {(r["runtime"], r["model"]) for r in rows} == {
        ("pytorch", "fp32"), *(("onnxruntime", m) for m in models)}
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["runs"] == 6 and r["speedup_vs_fp32"] > 0
    # the exported fp32 model computes what PyTorch does; int8 stays close
    cos = report["latency"]["cosine_to_pytorch_same_face"]
    assert cos["onnxruntime/fp32"] > 0.9999 and min(cos.values()) > 0.9
    browser = report["browser"]
    if browser["measured"]:
        assert [r["model"] for r in browser["results"]] == models
        for r in browser["results"]:
            assert 0 < r["p50_ms"] <= r["p99_ms"] and r["cosine_to_ort_python"] > 0.9
        assert browser["results"][0]["cosine_to_ort_python"] > 0.9999  # fp32: the same model
    else:
        assert browser["reason"] == mod.browser_unavailable()
    acc = report["accuracy"]
    assert acc["genuine_pairs"] > 0 and acc["impostor_pairs"] > 0
    for m in models:
        a = acc["models"][m]
        assert 0 <= a["tar@0.001"] <= a["tar@0.01"] <= 1 and a["output_norm_min"] > 0
        assert a["cosine_to_fp32_mean"] > 0.5 and "delta_points@0.001" in a
    assert acc["models"]["fp32"]["output_norm_max"] < 1.0001  # the contract: L2-normalized


def test_device_round_benchmark_runs(tmp_path):
    out = tmp_path / "d.json"
    assert _load("device_round").main(["--quick", "--workdir", str(tmp_path),
                                       "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert len(r["per_round"]) == 2 and r["local_images"] == 6
    for phases in (r["first_round"], r["median_later_rounds"]):
        assert set(phases) == {"download_s", "mining_s", "prepare_s", "train_s", "upload_s"}
        assert all(v > 0 for v in phases.values())
        assert phases["mining_s"] <= phases["prepare_s"]
    assert r["train_images_per_second"] > 0 and r["update_bytes"] > 0
