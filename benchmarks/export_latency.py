"""Exported recognizer: model size, per-face latency and accuracy, fp32 against int8.

One trained backbone, exported with ``export/`` (three models) plus one candidate:

* **fp32** — :func:`export.onnx_export.export_checkpoint` (``data`` float32 (N, 3, 112, 112)
  normalized → L2-normalized ``embedding``);
* **static int8** (plain) — :func:`export.quantize.quantize_static_int8` with
  ``reduce_range=False, keep_float=False``: QDQ, weights int8 per channel, activations uint8
  calibrated (MinMax) on ``--calibration`` of the device's *own* training images (normalized
  with :func:`export.preprocess.normalize`), every node quantized. For the accuracy, every
  evaluated device gets its own calibration; sizes and latency use device 0's model;
* **dynamic int8** — :func:`export.quantize.quantize_dynamic_int8` (no calibration);
* **static int8, tuned** — ``export/``'s default (``quantize_static_int8`` with its defaults;
  it was a candidate when first measured): the same call plus ``reduce_range=True``
  (7-bit weights: ONNX Runtime's u8s8 kernels on x86 without VNNI saturate their int16
  intermediate sums), with the L2-normalization tail (every node after the last
  Gemm/MatMul) and the grouped, non-depthwise convolutions (``group > 1``, more than one
  input channel per group) left in float. Measured
  side by side with the plain setting.

Measured:

1. **sizes** of the four ``.onnx`` files;
2. **latency per face** (batch 1, one real normalized face), p50/p99 over all timed runs:
   PyTorch eager (the same :class:`~export.onnx_export.RecognizerGraph` the export traces,
   ``torch.inference_mode``, ``torch.set_num_threads``) as the reference, and ONNX Runtime
   (``CPUExecutionProvider``, default graph optimizations) for each model — each at 1 thread
   and at all threads (``os.cpu_count()``; ``intra_op_num_threads``).
   ``--blocks`` repeat blocks; in each, every variant (order rotated from block to block) runs
   ``--warmup`` untimed then ``--runs`` timed runs, so load from other jobs hits all variants
   alike. Speed-up = the median over blocks of (fp32 block p50 / int8 block p50), same
   runtime and thread count;
3. **onnxruntime-web in Chromium**: the vendored ``android_demo/node_modules/onnxruntime-web``
   (``ort.wasm.min.mjs``, plain WASM, 1 thread, no proxy worker — what ``android_demo`` runs),
   a minimal page of its own served from a temporary folder on loopback, Debian's
   ``chromium`` driven by Playwright; ``session.run`` on a [1, 3, 112, 112] tensor timed with
   ``performance.now()``, blocks interleaved the same way. Skipped with a message when
   ``chromium``, Playwright or the node_modules are missing;
4. **accuracy** on the held-out images of ``--eval-devices`` devices: per device, all pairs of
   its test images (registered users) and its strangers' images; genuine = same identity.
   Scores of all devices are pooled; TAR@FAR=1e-3 and 1e-2 (``fedfr.metrics.tar_at_far``) for
   every model (static ones: that device's calibration), the number of genuine and
   impostor pairs, and the cosine between each image's int8 and fp32 embeddings. Scores are
   cosines (embeddings re-normalized, as ``export.bundle`` does for its TAR); the models'
   output norms and the TAR of raw dot products (what a consumer that trusts the output
   contract "L2-normalized" computes, e.g. ``android_demo``'s template scores) are reported
   too. Embeddings are computed with 1 ONNX Runtime thread, batches of 32.

The model: ``--checkpoint FILE``, or a ``mbf`` trained here with
:func:`fedfr.train.pretrain.pretrain` (what ``fedfr pretrain`` runs) on the first
``--train-ids`` identities x ``--train-images`` images of the public split of a synthetic data
set (``--profile``, written with :func:`fedfr.data.synthetic.synthesize` as ``fedfr data
synth`` does). The data set and the checkpoint are cached in ``--workdir``; a rerun reuses
them. The public split's identities are disjoint from the devices' users and strangers.

    python benchmarks/export_latency.py --json export.json          # the recorded run
    python benchmarks/export_latency.py --checkpoint CK.safetensors # skip training
    python benchmarks/export_latency.py --quick --json q.json       # seconds; the smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/export_latency.py` from anywhere
    sys.path.insert(0, str(ROOT))

ORT_WEB = ROOT / "android_demo" / "node_modules" / "onnxruntime-web"
MODELS = ("fp32", "static_int8", "dynamic_int8", "static_int8_tuned")
FARS = (1e-3, 1e-2)


# --------------------------------------------------------------------------- model


def prepare_data(workdir: Path, profile: str, seed: int) -> Path:
    """The synthetic data set in ``workdir`` (written once, reused)."""
    from fedfr.data.manifest import MANIFEST
    from fedfr.data.synthetic import synthesize

    out = workdir / f"data-{profile}-s{seed}"
    if not (out / MANIFEST).is_file():
        print(f"[export_latency] writing the synthetic '{profile}' data set to {out}", flush=True)
        synthesize(profile, out, seed=seed, progress=False)
    return out


def train_checkpoint(ds, workdir: Path, *, arch: str, ids: int, per_id: int, epochs: int,
                     batch: int, lr: float, seed: int, threads: int) -> tuple[Path, dict]:
    """A checkpoint of ``arch`` pretrained on a public subset (cached by its settings)."""
    import torch

    from fedfr.data.images import load_images
    from fedfr.train.pretrain import PretrainConfig, pretrain

    name = f"{arch}-{ds.profile}-s{ds.seed}-ids{ids}x{per_id}-e{epochs}-b{batch}-lr{lr:g}"
    path = workdir / f"{name}.safetensors"
    info_path = workdir / f"{name}.json"
    if path.is_file() and info_path.is_file():
        print(f"[export_latency] reusing {path}", flush=True)
        return path, {**json.loads(info_path.read_text()), "cached": True}
    labels = np.asarray(ds.public.labels)
    keep = []
    for c in range(min(ids, int(labels.max()) + 1)):
        keep.extend(np.flatnonzero(labels == c)[:per_id].tolist())
    keep = np.asarray(keep)
    files = ds.public.files  # a property: builds the whole list on each access
    images = load_images([files[i] for i in keep])
    y = labels[keep].astype(np.int64)
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    print(f"[export_latency] pretraining {arch} on {len(y)} images ({len(np.unique(y))} "
          f"identities), {epochs} epochs, batch {batch}, {torch.get_num_threads()} thread(s)",
          flush=True)
    cfg = PretrainConfig(arch=arch, epochs=epochs, batch_size=batch, lr=lr, seed=seed,
                         device="cpu", amp=False)
    try:
        res = pretrain(images, y, cfg, path, progress=False,
                       metadata={"data": f"synthetic:{ds.profile}:seed={ds.seed}:public "
                                         f"first {ids} ids x {per_id} images"})
    finally:
        torch.set_num_threads(prev)
    info = {"images": len(y), "identities": len(np.unique(y)), "epochs": epochs,
            "batch_size": batch, "lr": lr, "threads": threads or prev,
            "seconds": res.seconds, "images_per_second": res.images_per_second,
            "final": res.history[-1]}
    info_path.write_text(json.dumps(info, indent=2))
    return path, {**info, "cached": False}


def random_checkpoint(workdir: Path, arch: str, seed: int) -> Path:
    import torch

    from fedfr.backbones import build_backbone, get_backbone_spec
    from fedfr.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    path = workdir / f"{arch}-random-s{seed}.safetensors"
    save_checkpoint(path, build_backbone(arch).eval(), arch=arch,
                    embedding_size=get_backbone_spec(arch).embedding_size)
    return path


def export_models(checkpoint: Path, arch: str, out: Path, calib: dict[int, np.ndarray]
                  ) -> dict[str, Path]:
    """fp32, a static int8 per calibration set (``static_int8@<device>``, and the tuned
    candidate ``static_int8_tuned@<device>``), dynamic int8."""
    from export.onnx_export import export_checkpoint
    from export.quantize import quantize_dynamic_int8, quantize_static_int8

    out.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": export_checkpoint(checkpoint, out / "fp32.onnx", arch=arch)}
    for dev, x in calib.items():
        paths[f"static_int8@{dev}"] = quantize_static_int8(  # plain: nothing kept float
            paths["fp32"], out / f"static_int8_dev{dev}.onnx", x, reduce_range=False,
            keep_float=False)
        paths[f"static_int8_tuned@{dev}"] = quantize_static_int8(  # export/'s defaults
            paths["fp32"], out / f"static_int8_tuned_dev{dev}.onnx", x)
    paths["dynamic_int8"] = quantize_dynamic_int8(paths["fp32"], out / "dynamic_int8.onnx")
    return paths


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def torch_graph(checkpoint: Path, arch: str):
    """The :class:`RecognizerGraph` ``export_checkpoint`` exports, in eval mode."""
    from export.onnx_export import RecognizerGraph
    from fedfr.checkpoint import load_backbone, read_checkpoint

    ck = read_checkpoint(checkpoint)
    net = load_backbone(checkpoint, arch).eval()
    return RecognizerGraph(net, ck.contract.size, contract=ck.contract).eval()


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- latency


def _stats(times_s: list[float], blocks: list[list[float]]) -> dict:
    ms = np.asarray(times_s) * 1e3
    block_p50 = [float(np.median(b)) * 1e3 for b in blocks]
    return {"p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "runs": int(ms.size), "block_p50_ms": block_p50}


def _speedups(results: list[dict], key=lambda r: (r["runtime"], r["threads"])) -> None:
    """Adds ``speedup_vs_fp32`` (median over blocks of fp32 p50 / this p50) to every row."""
    base = {key(r): r for r in results if r["model"] == "fp32"}
    for r in results:
        b = base.get(key(r))
        if b is None:
            continue
        ratios = [f / t for f, t in zip(b["block_p50_ms"], r["block_p50_ms"], strict=True)]
        r["speedup_vs_fp32"] = float(statistics.median(ratios))
        r["speedup_vs_fp32_per_block"] = ratios


def measure_latency(checkpoint: Path, arch: str, paths: dict[str, Path], x: np.ndarray, *,
                    thread_counts: list[int], blocks: int, runs: int, warmup: int) -> dict:
    import torch

    graph = torch_graph(checkpoint, arch)
    xt = torch.from_numpy(x)
    variants: list[tuple[dict, object]] = []
    prev = torch.get_num_threads()
    for n in thread_counts:
        def run_torch(n=n):
            torch.set_num_threads(n)
            with torch.inference_mode():
                return graph(xt).numpy()
        variants.append(({"runtime": "pytorch", "model": "fp32", "threads": n}, run_torch))
    for name in MODELS:
        for n in thread_counts:
            sess = ort_session(paths[name], n)
            variants.append(({"runtime": "onnxruntime", "model": name, "threads": n},
                             functools.partial(sess.run, None, {"data": x})))
    # the same face through each variant: the exported models must agree with PyTorch
    torch.set_num_threads(prev)
    ref = _unit(variants[0][1]())
    agree, norms = {}, {}
    for meta, fn in variants:
        out = fn()
        out = out[0] if isinstance(out, list) else out
        agree[f"{meta['runtime']}/{meta['model']}"] = float(np.sum(_unit(out) * ref))
        norms[f"{meta['runtime']}/{meta['model']}"] = float(np.linalg.norm(out))
    times: dict[int, list[list[float]]] = {i: [] for i in range(len(variants))}
    order = list(range(len(variants)))
    for b in range(blocks):
        rot = order[b % len(order):] + order[:b % len(order)]
        for i in rot:
            fn = variants[i][1]
            for _ in range(warmup):
                fn()
            block = []
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                block.append(time.perf_counter() - t0)
            times[i].append(block)
    torch.set_num_threads(prev)
    results = []
    for i, (meta, _) in enumerate(variants):
        flat = [t for blk in times[i] for t in blk]
        results.append({**meta, **_stats(flat, times[i])})
    _speedups(results)
    return {"blocks": blocks, "runs_per_block": runs, "warmup_per_block": warmup,
            "thread_counts": thread_counts, "results": results,
            "cosine_to_pytorch_same_face": agree, "output_norm_same_face": norms}


# --------------------------------------------------------------------------- browser

_PAGE = """<!doctype html>
<meta charset="utf-8"><link rel="icon" href="data:,"><title>onnxruntime-web latency</title>
<script type="module">
import * as ort from "./vendor/ort.wasm.min.mjs";
// as android_demo/fedfr.js: plain WASM, one thread, no proxy worker, files served locally
ort.env.wasm.wasmPaths = new URL("./vendor/", import.meta.url).href;
ort.env.wasm.numThreads = 1;
ort.env.wasm.proxy = false;
ort.env.logLevel = "error";

async function bench({ models, blocks, runs, warmup }) {
  const input = new Float32Array(await (await fetch("./input.bin")).arrayBuffer());
  const feeds = { data: new ort.Tensor("float32", input, [1, 3, 112, 112]) };
  const out = {};
  for (const name of models) {
    const bytes = new Uint8Array(await (await fetch(`./${name}.onnx`)).arrayBuffer());
    const t0 = performance.now();
    const session = await ort.InferenceSession.create(bytes, {
      executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    const t1 = performance.now();
    const first = await session.run(feeds);
    out[name] = { session, create_ms: t1 - t0, first_run_ms: performance.now() - t1,
                  embedding: Array.from(first.embedding.data), blocks: [] };
  }
  for (let b = 0; b < blocks; b++) {
    const k = b % models.length;
    for (const name of [...models.slice(k), ...models.slice(0, k)]) {
      const s = out[name].session;
      for (let i = 0; i < warmup; i++) await s.run(feeds);
      const times = [];
      for (let i = 0; i < runs; i++) {
        const t = performance.now();
        await s.run(feeds);
        times.push(performance.now() - t);
      }
      out[name].blocks.push(times);
    }
  }
  for (const name of models) { await out[name].session.release(); delete out[name].session; }
  return { results: out };
}
window.bench = bench;
window.benchReady = true;
</script>
"""


def browser_unavailable() -> str | None:
    """Why the browser part cannot run here (``None`` when it can)."""
    if not shutil.which("chromium"):
        return "no `chromium` on PATH (Debian's chromium; scripts/setup.sh installs it)"
    if not (ORT_WEB / "dist" / "ort.wasm.min.mjs").is_file():
        return (f"{ORT_WEB / 'dist' / 'ort.wasm.min.mjs'} is missing (npm ci in android_demo/, "
                "or bash scripts/setup.sh)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        ".html": "text/html; charset=utf-8", ".mjs": "text/javascript",
        ".js": "text/javascript", ".wasm": "application/wasm",
        ".onnx": "application/octet-stream", ".bin": "application/octet-stream",
        ".map": "application/json", "": "application/octet-stream"}

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _serve(folder: Path):
    handler = functools.partial(_Handler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def measure_browser(paths: dict[str, Path], x: np.ndarray, ref: dict[str, np.ndarray], *,
                    blocks: int, runs: int, warmup: int, timeout_s: float) -> dict:
    why = browser_unavailable()
    if why:
        print(f"[export_latency] onnxruntime-web in Chromium: NOT MEASURED — {why}", flush=True)
        return {"measured": False, "reason": why}
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="fedfr-ortweb-") as tmp:
        tmp = Path(tmp)
        (tmp / "vendor").symlink_to(ORT_WEB / "dist", target_is_directory=True)
        (tmp / "index.html").write_text(_PAGE)
        np.ascontiguousarray(x, np.float32).tofile(tmp / "input.bin")
        for name in MODELS:
            (tmp / f"{name}.onnx").symlink_to(paths[name].resolve())
        errors: list[str] = []
        with _serve(tmp) as url, sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium"),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            try:
                page = browser.new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error"
                        else None)
                page.set_default_timeout(timeout_s * 1000)
                page.goto(url + "index.html")
                page.wait_for_function("window.benchReady === true")
                cfg = {"models": list(MODELS), "blocks": blocks, "runs": runs,
                       "warmup": warmup}
                out = page.evaluate("cfg => window.bench(cfg)", cfg)
                version = browser.version
            finally:
                browser.close()
    results = []
    web_fp32 = _unit(np.asarray(out["results"]["fp32"]["embedding"], np.float32))
    for name in MODELS:
        r = out["results"][name]
        flat = [t / 1e3 for blk in r["blocks"] for t in blk]
        st = _stats(flat, [[t / 1e3 for t in blk] for blk in r["blocks"]])
        raw = np.asarray(r["embedding"], np.float32)
        emb = _unit(raw)
        results.append({"runtime": "onnxruntime-web (wasm)", "model": name, "threads": 1, **st,
                        "session_create_ms": r["create_ms"], "first_run_ms": r["first_run_ms"],
                        "cosine_to_ort_python": float(np.dot(emb, _unit(ref[name][0]))),
                        "cosine_to_web_fp32": float(np.dot(emb, web_fp32)),
                        "output_norm": float(np.linalg.norm(raw))})
    _speedups(results)
    return {"measured": True, "chromium": version, "onnxruntime_web": _ort_web_version(),
            "blocks": blocks, "runs_per_block": runs, "warmup_per_block": warmup,
            "results": results, "page_errors": errors}


def _ort_web_version() -> str | None:
    try:
        return json.loads((ORT_WEB / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------- accuracy


def embed(sess, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([sess.run(None, {"data": x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def measure_accuracy(ds, devices: list[int], paths: dict[str, Path], threads: int) -> dict:
    """TAR at FAR on all pairs of each device's held-out images, pooled over devices."""
    from export.preprocess import normalize
    from fedfr.metrics import tar_at_far

    def model_path(m: str, d: int) -> Path:  # static models: the device's own calibration
        return paths.get(f"{m}@{d}", paths[m])

    scores = {m: [] for m in MODELS}
    raw = {m: [] for m in MODELS}
    cos = {m: [] for m in MODELS}
    norms = {m: [] for m in MODELS}
    labels, n_images = [], 0
    for d in devices:
        dev = ds.devices[d]
        x = normalize(np.concatenate([dev.test.load(), dev.strangers.load()]))
        ids = np.concatenate([dev.test.identity_ids, dev.strangers.identity_ids])
        i, j = np.triu_indices(len(ids), 1)
        labels.append(ids[i] == ids[j])
        n_images += len(ids)
        ref = None
        for m in MODELS:
            e = embed(ort_session(model_path(m, d), threads), x)
            u = _unit(e)
            ref = u if ref is None else ref
            scores[m].append(np.sum(u[i] * u[j], axis=1))
            raw[m].append(np.sum(e[i] * e[j], axis=1))
            cos[m].append(np.sum(u * ref, axis=1))
            norms[m].append(np.linalg.norm(e, axis=1))
    y = np.concatenate(labels)
    out = {"split": "devices' held-out images (test + strangers), all pairs within a device, "
                    "pooled", "devices": devices, "images": n_images,
           "genuine_pairs": int(y.sum()), "impostor_pairs": int((~y).sum()), "models": {}}
    for m in MODELS:
        tar = tar_at_far(np.concatenate(scores[m]), y, list(FARS))
        tar_raw = tar_at_far(np.concatenate(raw[m]), y, list(FARS))
        c, n = np.concatenate(cos[m]), np.concatenate(norms[m])
        out["models"][m] = {
            **{f"tar@{far:g}": tar[far] for far in FARS},
            **{f"tar@{far:g}_raw_dot": tar_raw[far] for far in FARS},
            "cosine_to_fp32_mean": float(c.mean()), "cosine_to_fp32_min": float(c.min()),
            "output_norm_min": float(n.min()), "output_norm_max": float(n.max())}
    base = out["models"]["fp32"]
    for m in MODELS:
        for far in FARS:
            k = f"tar@{far:g}"
            out["models"][m][f"delta_points@{far:g}"] = 100 * (out["models"][m][k] - base[k])
    return out


# --------------------------------------------------------------------------- report


def machine() -> dict:
    import onnxruntime
    import torch

    from fedfr.machine import cpu_model

    return {"python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxruntime_web": _ort_web_version(),
            "cpu": cpu_model(), "nproc": os.cpu_count(), "platform": platform.platform(),
            "loadavg_at_start": list(os.getloadavg())}


def _ms(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def markdown(r: dict) -> str:
    sz = r["sizes"]
    lines = [f"Model: `{r['model']['arch']}` ({r['model']['source']})", "",
             "| model | file size | fp32 / this |", "|---|---:|---:|"]
    for m in MODELS:
        lines.append(f"| {m} | {sz[m] / 1e6:.2f} MB | {sz['fp32'] / sz[m]:.2f}× |")
    lat = r["latency"]
    lines += ["", f"Latency per face, batch 1 ({lat['blocks']} blocks × {lat['runs_per_block']} "
              f"runs, interleaved):", "",
              "| runtime | model | threads | p50 ms | p99 ms | block p50s ms | speed-up vs fp32 |",
              "|---|---|---:|---:|---:|---:|---:|"]
    rows = list(lat["results"])
    br = r["browser"]
    if br.get("measured"):
        rows += br["results"]
    for x in rows:
        spread = f"{_ms(min(x['block_p50_ms']))}–{_ms(max(x['block_p50_ms']))}"
        sp = f"{x['speedup_vs_fp32']:.2f}×" if "speedup_vs_fp32" in x else ""
        lines.append(f"| {x['runtime']} | {x['model']} | {x['threads']} | {_ms(x['p50_ms'])} | "
                     f"{_ms(x['p99_ms'])} | {spread} | {sp} |")
    if not br.get("measured"):
        lines += ["", f"onnxruntime-web in Chromium: not measured ({br['reason']})."]
    acc = r["accuracy"]
    lines += ["", f"Accuracy: {acc['split']}; devices {acc['devices']}, {acc['images']} images, "
              f"{acc['genuine_pairs']:,} genuine / {acc['impostor_pairs']:,} impostor pairs:", "",
              "| model | TAR@FAR=1e-3 | TAR@FAR=1e-2 | Δ points @1e-3 | Δ points @1e-2 | "
              "cos to fp32 mean (min) | output norm min–max | TAR@1e-3, 1e-2 raw dot |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in MODELS:
        a = acc["models"][m]
        fp = m == "fp32"
        d3 = "" if fp else f"{a['delta_points@0.001']:+.2f}"
        d2 = "" if fp else f"{a['delta_points@0.01']:+.2f}"
        c = "" if fp else f"{a['cosine_to_fp32_mean']:.4f} ({a['cosine_to_fp32_min']:.4f})"
        lines.append(f"| {m} | {a['tar@0.001']:.4f} | {a['tar@0.01']:.4f} | {d3} | {d2} | {c} | "
                     f"{a['output_norm_min']:.3f}–{a['output_norm_max']:.3f} | "
                     f"{a['tar@0.001_raw_dot']:.4f}, {a['tar@0.01_raw_dot']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", default=str(ROOT / "runs" / "export_latency"),
                   help="data set, checkpoint and models (reused across runs)")
    p.add_argument("--checkpoint", help="use this checkpoint instead of training one")
    p.add_argument("--arch", default="mbf", help="backbone to train (or of an arcface .pth)")
    p.add_argument("--profile", default="small", help="synthetic data set profile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-ids", type=int, default=100, help="public identities trained on")
    p.add_argument("--train-images", type=int, default=8, help="images per identity")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--train-threads", type=int, default=1,
                   help="torch threads for pretraining (0: torch's default; 1 by default: on "
                        "2 shared cores, 2 OpenMP threads trained several times slower)")
    p.add_argument("--calibration", type=int, default=64,
                   help="calibration images from each device's own training images")
    p.add_argument("--eval-devices", type=int, default=4, help="devices whose held-out "
                   "images are evaluated (each with its own static int8 calibration)")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--runs", type=int, default=60, help="timed runs per variant per block")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--browser-blocks", type=int, default=3)
    p.add_argument("--browser-runs", type=int, default=20)
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="mbf_tiny with random weights, tiny profile, few runs (smoke test)")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    if args.quick:
        args.profile, args.eval_devices, args.calibration = "tiny", 1, 16
        args.blocks, args.runs, args.warmup = 2, 3, 1
        args.browser_blocks, args.browser_runs = 1, 3
    from fedfr.data.manifest import SyntheticDataset

    t_start = time.perf_counter()
    stages: dict[str, float] = {}
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine(), "command": sys.argv if argv is None else argv}

    t = time.perf_counter()
    ds = SyntheticDataset.load(prepare_data(workdir, args.profile, args.seed))
    stages["data"] = time.perf_counter() - t

    t = time.perf_counter()
    if args.checkpoint:
        from fedfr.checkpoint import read_checkpoint

        ck = Path(args.checkpoint)
        try:
            arch = read_checkpoint(ck).arch
        except Exception:  # an arcface_torch .pth: --arch names it
            arch = args.arch
        model = {"arch": arch, "source": f"checkpoint {ck}", "trained": True}
    elif args.quick:
        arch = "mbf_tiny"
        ck = random_checkpoint(workdir, arch, args.seed)
        model = {"arch": arch, "source": "random weights (--quick)", "trained": False}
    else:
        arch = args.arch
        ck, info = train_checkpoint(ds, workdir, arch=arch, ids=args.train_ids,
                                    per_id=args.train_images, epochs=args.epochs,
                                    batch=args.batch_size, lr=args.lr, seed=args.seed,
                                    threads=args.train_threads)
        model = {"arch": arch, "trained": True, "pretrain": info,
                 "source": f"pretrained here: {info['identities']} public identities × "
                           f"{args.train_images} images, {info['epochs']} epochs"}
    model["checkpoint"] = str(ck)
    report["model"] = model
    stages["model"] = time.perf_counter() - t

    from export.preprocess import normalize

    t = time.perf_counter()
    devices = list(range(min(args.eval_devices, len(ds.devices))))
    calib = {}
    for d in devices:  # the device's own training images, spread over its identities
        tr = ds.devices[d].train
        pick = np.random.default_rng(args.seed + d).permutation(len(tr))[:args.calibration]
        calib[d] = normalize(tr.load()[np.sort(pick)])
    paths = export_models(ck, arch, workdir / "models" / ("quick" if args.quick else "run"),
                          calib)
    for m in ("static_int8", "static_int8_tuned"):
        paths[m] = paths[f"{m}@{devices[0]}"]
    stages["export_and_quantize"] = time.perf_counter() - t
    sizes = {m: paths[m].stat().st_size for m in MODELS}
    report["sizes"] = {**sizes, **{f"fp32_over_{m}": sizes["fp32"] / sizes[m] for m in MODELS[1:]},
                       "calibration_images": args.calibration,
                       "static_int8_calibrated_on_device": devices[0]}

    face = normalize(ds.devices[devices[0]].test.load()[:1])  # one real held-out face
    n_all = os.cpu_count() or 1
    threads = [1] if n_all == 1 else [1, n_all]
    t = time.perf_counter()
    print(f"[export_latency] latency: {args.blocks} blocks x {args.runs} runs, threads {threads}",
          flush=True)
    report["latency"] = measure_latency(ck, arch, paths, face, thread_counts=threads,
                                        blocks=args.blocks, runs=args.runs, warmup=args.warmup)
    stages["latency"] = time.perf_counter() - t

    t = time.perf_counter()
    if args.no_browser:
        report["browser"] = {"measured": False, "reason": "--no-browser"}
    else:
        ref = {m: ort_session(paths[m], 1).run(None, {"data": face})[0] for m in MODELS}
        report["browser"] = measure_browser(paths, face, ref, blocks=args.browser_blocks,
                                            runs=args.browser_runs, warmup=args.warmup,
                                            timeout_s=120 if args.quick else 600)
    stages["browser"] = time.perf_counter() - t

    t = time.perf_counter()
    print(f"[export_latency] accuracy on the held-out images of devices {devices}", flush=True)
    report["accuracy"] = measure_accuracy(ds, devices, paths, 1)
    stages["accuracy"] = time.perf_counter() - t

    stages["total"] = time.perf_counter() - t_start
    report["wall_s"] = stages
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    report["config"] = {k: v for k, v in vars(args).items() if k != "json"}
    report["models"] = {k: str(v) for k, v in paths.items()}
    print(markdown(report), flush=True)
    print(f"\nwall time {stages['total']:.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in stages.items() if k != 'total')}); "
          f"load average {report['machine']['loadavg_at_start'][0]:.2f} at start, "
          f"{report['machine']['loadavg_at_end'][0]:.2f} at end", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
