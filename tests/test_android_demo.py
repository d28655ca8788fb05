"""android_demo/: the phone web app, tested in a real browser (Debian's chromium via Playwright).

Embeddings in the page equal Python ONNX Runtime's on the same images; the page's preprocessing
equals the Python reference below pixel for pixel; verify/identify/enroll decide right; bad
bundles and bad images give clear errors; the page requests nothing but its own origin's files
and sends nothing; it works offline after the first load (service worker); a phone-viewport
screenshot is left at runs/screenshots/android_demo_phone.png.

Needs Debian's chromium and android_demo/node_modules (``bash scripts/setup.sh`` installs both):
without them these tests are skipped, or fail when ``CI`` is set.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "android_demo"
VENDOR = DEMO / "node_modules" / "onnxruntime-web" / "dist"
SCREENSHOT = ROOT / "runs" / "screenshots" / "android_demo_phone.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SIZE = 112
MEAN = STD = 127.5
EMB = 128


def _need(ok: bool, what: str) -> None:
    if ok:
        return
    msg = f"{what}: run `bash scripts/setup.sh`"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def prereqs() -> None:
    _need(Path(CHROMIUM).is_file(), "Debian's chromium is not installed")
    _need((VENDOR / "ort.wasm.min.mjs").is_file(),
          "android_demo/node_modules is missing (npm ci in android_demo/)")
    for mod in ("playwright.sync_api", "onnxruntime", "onnx", "torch"):
        try:
            __import__(mod)
        except ImportError:
            _need(False, f"the Python package {mod.split('.')[0]} is missing")


# ---------------------------------------------------------------------------------------------
# Python reference of the page's preprocessing (the algorithm of export/preprocess.py)


def ref_crop_resize(rgb: np.ndarray) -> np.ndarray:
    """The Python side the page must equal: :func:`export.preprocess.to_crop`."""
    from export.preprocess import to_crop

    return to_crop(np.ascontiguousarray(rgb)).copy()


def ref_input(path: Path) -> np.ndarray:
    """An image file -> float32 (1, 3, 112, 112) model input."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    x = ref_crop_resize(rgb).astype(np.float32)
    return ((x - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1)[None].copy()


def test_reference_resize_basics() -> None:
    # constant images stay constant; 112x112 passes through; a 2x-downscale averages pairs
    assert (ref_crop_resize(np.full((130, 150, 3), 77, np.uint8)) == 77).all()
    img = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert np.array_equal(ref_crop_resize(img), img)
    big = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)
    assert np.array_equal(ref_crop_resize(big), img)
    wide = np.zeros((112, 140, 3), np.uint8)
    wide[:, 14:126] = img
    assert np.array_equal(ref_crop_resize(wide), img)  # center crop, offsets floor((w-s)/2)


# ---------------------------------------------------------------------------------------------
# A hand-written bundle writer for the BAD bundles (another format version, a foreign model
# without fedfr metadata...): format v1 as specified, with overrides. The good bundle is
# written by the real builder, export.bundle.write_bundle.


def _file_entry(path: Path) -> dict[str, object]:
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def write_test_bundle(out: Path, model: Path, templates: dict[str, np.ndarray], *,
                      threshold: float, int8: Path | None = None,
                      embedding_size: int = EMB, **meta_overrides: object) -> Path:
    """A bundle directory at ``out``: the models copied in, ``templates`` {name: (D,)}."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, out / "model.onnx")
    models = {"fp32": "model.onnx"}
    if int8 is not None:
        shutil.copyfile(int8, out / "model.int8.onnx")
        models["int8"] = "model.int8.onnx"
    idents = []
    for name, t in templates.items():
        t = np.asarray(t, np.float64)
        idents.append({"name": name, "template": (t / np.linalg.norm(t)).tolist(),
                       "num_images": 1})
    (out / "templates.json").write_text(json.dumps(
        {"embedding_size": embedding_size, "identities": idents}))
    meta = {
        "format": "fedfr-bundle", "format_version": 1,
        "created_at": "2026-11-25T14:00:00+00:00", "model_version": "test",
        "arch": "mbf", "embedding_size": embedding_size, "personalized": False,
        "input": {"name": "data", "shape": [None, 3, SIZE, SIZE], "dtype": "float32",
                  "layout": "NCHW", "color": "RGB", "mean": MEAN, "std": STD},
        "output": {"name": "embedding", "normalized": True},
        # a TEST threshold: set between the genuine and impostor scores of the random-weight
        # test model (computed with Python onnxruntime), not a calibrated one
        "threshold": float(threshold), "far_target": 0.001,
        "models": models,
        "files": {name: _file_entry(out / name) for name in [*models.values(), "templates.json"]},
    }
    meta.update(meta_overrides)
    (out / "bundle.json").write_text(json.dumps(meta, indent=1))
    return out


# ---------------------------------------------------------------------------------------------
# The model, images and bundles (built once for the module: the export takes ~10 s)


class World:
    """Everything the browser tests share."""

    def __init__(self, root: Path) -> None:
        import onnxruntime as ort
        import torch
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        from export.onnx_export import RecognizerGraph, export_onnx
        from fedfr.backbones import build_backbone, get_backbone_spec
        from fedfr.data.synthetic import SyntheticFaces

        self.root = root
        models = root / "models"
        models.mkdir()
        torch.manual_seed(0)
        net = build_backbone("mbf", embedding_size=EMB).eval()
        self.model = export_onnx(RecognizerGraph(net, (SIZE, SIZE)), models / "model.onnx",
                                 arch="mbf", embedding_size=EMB,
                                 backbone_contract=get_backbone_spec("mbf").contract)

        # faces: (identity, image) of the synthetic generator, 112x112 PNGs without ICC profile.
        # The model has random weights, so different images of one identity are not closer than
        # other identities; "genuine" probes are the enrolled image and near copies of it
        # (+-3 levels of noise), impostors are other identities (picked to be apart).
        self.img = root / "img"
        self.img.mkdir()
        gen = SyntheticFaces(seed=0)
        self.faces = {"alice0": (0, 0), "bob0": (8, 0), "carol0": (14, 0), "stranger0": (5, 0)}
        rendered = dict(zip(self.faces, gen.render([v[0] for v in self.faces.values()],
                                                   [v[1] for v in self.faces.values()]),
                            strict=True))
        rng = np.random.default_rng(0)
        for name in ("alice", "carol"):
            noise = rng.integers(-3, 4, rendered[f"{name}0"].shape)
            rendered[f"{name}_near"] = np.clip(rendered[f"{name}0"] + noise, 0, 255).astype(
                np.uint8)
        for name, arr in rendered.items():
            Image.fromarray(arr).save(self.img / f"{name}.png")
        self.faces = list(rendered)
        # other sizes: exercise the page's crop + resize (down, odd offsets, up)
        self.odd = {}
        for name, (h, w) in {"wide": (130, 150), "tall": (257, 199), "small": (90, 101)}.items():
            arr = gen.render([0], [2], size=(h, w))[0]
            Image.fromarray(arr).save(self.img / f"{name}.png")
            self.odd[name] = (h, w)
        (self.img / "not_an_image.png").write_text("this is text, not a PNG\n")

        self.sess = ort.InferenceSession(str(self.model), providers=["CPUExecutionProvider"])
        self.emb = {n: self.embed_py(self.img / f"{n}.png") for n in [*self.faces, *self.odd]}

        # int8 (QDQ), calibrated on the test faces
        calib = [{"data": ref_input(self.img / f"{n}.png")} for n in self.faces]

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(calib)

            def get_next(self):
                return next(self.it, None)

        self.int8 = models / "model.int8.onnx"
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(str(self.model), str(self.int8), Reader(),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8)
        self.sess8 = ort.InferenceSession(str(self.int8), providers=["CPUExecutionProvider"])

        # enrolled: alice and bob (one image each); the test threshold sits between the
        # genuine scores (alice0 vs alice, bob0 vs bob) and every impostor score
        self.templates = {"alice": self.emb["alice0"], "bob": self.emb["bob0"]}
        genuine = min(self.score("alice0", "alice"), self.score("bob0", "bob"),
                      self.score("alice_near", "alice"))
        impostor = max(self.score(p, t) for p in ("stranger0", "carol0", "carol_near", "bob0")
                       for t in ("alice", "bob") if p[:3] != t[:3])
        assert genuine - impostor > 0.02, (genuine, impostor)
        self.threshold = round((genuine + impostor) / 2, 4)

        self.bundles = root / "bundles"
        # the real builder (export.bundle.write_bundle), with the test threshold above
        from export.bundle import write_bundle

        self.good = write_bundle(self.bundles / "good", model=self.model,
                                 templates={n: t / np.linalg.norm(t)
                                            for n, t in self.templates.items()},
                                 num_images={"alice": 1, "bob": 1}, threshold=self.threshold,
                                 far_target=0.001, int8_model=self.int8,
                                 calibration={"source": "test threshold between the genuine "
                                              "and impostor scores of a random-weight model",
                                              # what export/bundle.py records (shown by the
                                              # page; these values are the fixture's own)
                                              "threshold": self.threshold, "far_target": 0.001,
                                              "far_measured": 0.0, "impostor_pairs": 6,
                                              "genuine_pairs": 0, "tar": None,
                                              "genuine_estimate": {"tar": 1.0, "pairs": 12}})
        self._bad_bundles()

    def embed_py(self, path: Path, sess=None) -> np.ndarray:
        return (sess or self.sess).run(["embedding"], {"data": ref_input(path)})[0][0]

    def score(self, probe: str, name: str) -> float:
        return float(self.emb[probe] @ (self.templates[name] / np.linalg.norm(
            self.templates[name])))

    def _bad_bundles(self) -> None:
        b = self.bundles
        tpl = {"alice": self.templates["alice"]}
        write_test_bundle(b / "v2", self.model, tpl, threshold=0.5, format_version=2)
        write_test_bundle(b / "notfedfr", self.model, tpl, threshold=0.5, format="other")
        (write_test_bundle(b / "missing", self.model, tpl, threshold=0.5) / "model.onnx").unlink()
        tampered = write_test_bundle(b / "tampered", self.model, tpl, threshold=0.5)
        data = bytearray((tampered / "model.onnx").read_bytes())
        data[-100] ^= 0xFF  # same size, other bytes
        (tampered / "model.onnx").write_bytes(bytes(data))
        write_test_bundle(b / "shape_meta", self.model, tpl, threshold=0.5,
                          input={"name": "data", "shape": [None, 3, 96, 96],
                                 "dtype": "float32", "layout": "NCHW", "color": "RGB",
                                 "mean": MEAN, "std": STD})
        # a model that takes (N, 3, 64, 64) behind a bundle.json that claims 112x112
        write_test_bundle(b / "shape_model", self._model_64(), {"x": np.ones(3)},
                          threshold=0.5, embedding_size=3)

    def _model_64(self) -> Path:
        import onnx
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 64, 64])
        y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3])
        graph = helper.make_graph(
            [helper.make_node("GlobalAveragePool", ["data"], ["p"]),
             helper.make_node("Flatten", ["p"], ["embedding"])], "g", [x], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        path = self.root / "models" / "model64.onnx"
        onnx.save_model(model, str(path))
        return path


@pytest.fixture(scope="module")
def world(prereqs, tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("android_demo"))


class Server:
    """``python android_demo/serve.py`` on a free loopback port, in a subprocess."""

    def __init__(self, world: World) -> None:
        cmd = [sys.executable, str(DEMO / "serve.py"), "--host", "127.0.0.1", "--port", "0",
               "--quiet", "--bundle", str(world.good), "--mount", f"/bundles/={world.bundles}",
               "--mount", f"/img/={world.img}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("serving"):
            self.proc.kill()
            raise RuntimeError(f"serve.py did not start: {line}{self.proc.stderr.read()}")
        self.url = line.split(" on ", 1)[1].strip()
        self.origin = self.url.rstrip("/")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(world):
    s = Server(world)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser(prereqs):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        b.devices = p.devices
        yield b
        b.close()


class Tab:
    """A fresh browser context (a new profile) in a phone viewport, one page, every request
    recorded."""

    def __init__(self, browser, origin: str) -> None:
        phone = dict(browser.devices["Pixel 7"])
        phone.pop("default_browser_type", None)
        self.viewport = phone["viewport"]
        self.scale = phone["device_scale_factor"]
        self.context = browser.new_context(**phone)
        self.origin = origin
        self.requests: list[tuple[str, str, bytes | None]] = []
        self.context.on("request", lambda r: self.requests.append(
            (r.method, r.url, r.post_data_buffer)))
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def open(self, query: str = "?autoload=0&crops=unchecked") -> None:
        # crops=unchecked: the synthetic test crops are taken as they are (the page checks
        # crop-sized images with ONet by default, like device_sdk; the cartoon faces fail it
        # about a third of the time)
        self.page.goto(f"{self.origin}/{query}")
        self.page.wait_for_function("() => window.fedfrDemo && window.fedfrDemo.ready",
                                    timeout=30_000)

    def js(self, expr: str, *args):
        return self.page.evaluate(expr, *args)

    def load(self, url: str = "./bundle/") -> dict:
        return self.js("u => window.fedfrDemo.loadBundle(u)", url)

    def embed(self, url: str) -> np.ndarray:
        return np.asarray(self.js("async u => Array.from(await window.fedfrDemo.embed(u))", url),
                          np.float32)

    def error(self, expr: str, *args) -> str:
        """The message of the Error the promise ``expr`` rejects with."""
        return self.js(f"async (a) => {{ try {{ await ({expr})(a); return 'NO ERROR'; }} "
                       "catch (e) { return String(e && e.message || e); } }", *args)

    def check_requests(self) -> None:
        """Every request went to the page's own origin, as a GET/HEAD with no body."""
        origin = urlsplit(self.origin)
        assert self.requests
        for method, url, body in self.requests:
            u = urlsplit(url)
            if u.scheme == "data":
                continue
            assert (u.scheme, u.netloc) == (origin.scheme, origin.netloc), url
            assert method in ("GET", "HEAD"), (method, url)
            assert not body, (method, url)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser, server):
    t = Tab(browser, server.origin)
    yield t
    try:
        t.check_requests()
    finally:
        t.close()


def maxdiff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ---------------------------------------------------------------------------------------------
# The static server


def _get(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), b""


def test_serve_py_types_and_paths(server, world) -> None:
    o = server.origin
    cases = {
        "/": "text/html", "/app.js": "text/javascript", "/sw.js": "text/javascript",
        "/manifest.webmanifest": "application/manifest+json",
        "/vendor/ort.wasm.min.mjs": "text/javascript",
        "/vendor/ort-wasm-simd-threaded.wasm": "application/wasm",
        "/bundle/bundle.json": "application/json",
        "/bundle/model.onnx": "application/octet-stream",
        "/bundles/tampered/model.onnx": "application/octet-stream",
        "/icons/icon-192.png": "image/png",
    }
    for path, ctype in cases.items():
        status, got, _ = _get(o + path)
        assert status == 200 and got.startswith(ctype), (path, status, got)
    assert _get(o + "/bundle/model.onnx")[2] == (world.good / "model.onnx").read_bytes()
    for path in ("/node_modules/onnxruntime-web/package.json", "/bundle/", "/bundles/",
                 "/bundle/nothing.json", "/../pyproject.toml", "/%2e%2e/pyproject.toml",
                 "/vendor/../../../pyproject.toml", "/img/../../models/model.onnx"):
        assert _get(o + path)[0] == 404, path
    assert _get(o + "/bundle/bundle.json", "POST")[0] == 405


def test_serve_py_refuses_a_missing_bundle(tmp_path) -> None:
    r = subprocess.run([sys.executable, str(DEMO / "serve.py"), "--port", "0", "--bundle",
                        str(tmp_path / "nope")], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "not a directory" in r.stderr or "node_modules" in r.stderr, r.stderr


def test_manifest_and_icons() -> None:
    m = json.loads((DEMO / "manifest.webmanifest").read_text())
    assert m["display"] == "standalone" and m["start_url"] and m["name"]
    sizes = {i["sizes"] for i in m["icons"]}
    assert {"192x192", "512x512"} <= sizes
    for icon in m["icons"]:
        with Image.open(DEMO / icon["src"]) as im:
            assert im.format == "PNG" and f"{im.width}x{im.height}" == icon["sizes"]
    pkg = json.loads((DEMO / "package.json").read_text())
    version = pkg["dependencies"]["onnxruntime-web"]
    assert version[0].isdigit(), "onnxruntime-web must be pinned to an exact version"
    lock = json.loads((DEMO / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == version


# ---------------------------------------------------------------------------------------------
# In the browser


def test_embeddings_match_python_onnxruntime(tab, world) -> None:
    tab.open()
    info = tab.load()
    assert info["format_version"] == 1 and info["embedding_size"] == EMB
    assert info["models"] == ["fp32", "int8"] and info["model"] == "fp32"
    assert sorted(info["identities"]) == ["alice", "bob"]
    worst = 0.0
    for name in world.faces:
        got = tab.embed(f"/img/{name}.png")
        assert got.shape == (EMB,)
        worst = max(worst, maxdiff(got, world.emb[name]))
    assert worst <= 1e-4, worst
    print(f"fp32 parity over {len(world.faces)} 112x112 images: max abs diff {worst:.2e}")
    # the pure-JS SHA-256 (used where crypto.subtle is missing: plain http on a LAN address)
    digest = tab.js("""async () => {
        const { sha256HexJS } = await import('./sha256.js');
        const r = await fetch('./bundle/model.onnx');
        return sha256HexJS(new Uint8Array(await r.arrayBuffer()));
    }""")
    assert digest == hashlib.sha256((world.good / "model.onnx").read_bytes()).hexdigest()


def test_preprocessing_matches_python_on_other_sizes(tab, world) -> None:
    # fedfr.js cropResizeRGB, the JS twin of export.preprocess.to_crop (the centre crop bundles
    # are built from; photos given to the page go through face detection instead:
    # tests/test_android_demo_faces.py)
    tab.open()
    tab.load()
    for name, (h, w) in world.odd.items():
        res = tab.js("""async u => {
            const f = await import('./fedfr.js');
            const rgba = await f.imageToRGBA(u);
            const pixels = f.cropResizeRGB(rgba);
            const tensor = f.normalizeNCHW(pixels, 127.5, 127.5);
            return { pixels: Array.from(pixels), tensor: Array.from(tensor) };
        }""", f"/img/{name}.png")
        with Image.open(world.img / f"{name}.png") as im:
            assert im.size == (w, h)
            want = ref_crop_resize(np.asarray(im.convert("RGB")))
        got = np.asarray(res["pixels"], np.uint8).reshape(SIZE, SIZE, 3)
        assert np.array_equal(got, want), (name, int(np.abs(got.astype(int) - want).max()))
        tensor = np.asarray(res["tensor"], np.float32).reshape(1, 3, SIZE, SIZE)
        assert np.array_equal(tensor, ref_input(world.img / f"{name}.png")), name


def test_int8_model_matches_python(tab, world) -> None:
    import onnxruntime as ort

    tab.open()
    tab.load()
    assert tab.js("() => window.fedfrDemo.setModel('int8')") == "int8"
    assert tab.js("() => window.fedfrDemo.info().model") == "int8"
    # onnxruntime-web runs the QDQ graph as quantize/dequantize around float ops; Python's
    # full optimization fuses it into integer kernels (QLinearConv), which round differently
    # (up to ~0.035 here). Compare with the same graph at basic optimization: the difference
    # is then a rare flip of one quantization step (~0.008 on the output).
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(world.int8), opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    for name in world.faces:
        got = tab.embed(f"/img/{name}.png")
        worst = max(worst, maxdiff(got, world.embed_py(world.img / f"{name}.png", sess)))
        assert float(got @ world.emb[name]) > 0.97, name  # close to the fp32 embedding
    assert worst <= 2.5e-2, worst
    print(f"int8 parity: max abs diff {worst:.2e}")
    tab.js("() => window.fedfrDemo.setModel('fp32')")
    assert maxdiff(tab.embed("/img/alice0.png"), world.emb["alice0"]) <= 1e-4


def test_verify_identify_enroll(tab, world) -> None:
    tab.open()
    tab.load()
    v = tab.js("() => window.fedfrDemo.verify('/img/alice0.png', 'alice')")
    assert v["accepted"] is True and v["threshold"] == pytest.approx(world.threshold)
    assert v["score"] == pytest.approx(world.score("alice0", "alice"), abs=1e-4)
    assert v["ms"] > 0
    v = tab.js("() => window.fedfrDemo.verify('/img/alice_near.png', 'alice')")
    assert v["accepted"] is True
    v = tab.js("() => window.fedfrDemo.verify('/img/stranger0.png', 'alice')")
    assert v["accepted"] is False
    assert v["score"] == pytest.approx(world.score("stranger0", "alice"), abs=1e-4)
    assert tab.js("() => window.fedfrDemo.verify('/img/bob0.png', 'alice')")["accepted"] is False
    assert tab.js("() => window.fedfrDemo.identify('/img/bob0.png')")["name"] == "bob"
    r = tab.js("() => window.fedfrDemo.identify('/img/stranger0.png')")
    assert r["name"] == "unknown" and r["score"] < r["threshold"]
    assert "no enrolled person" in tab.error("() => window.fedfrDemo.verify("
                                             "'/img/alice0.png', 'zed')")
    # the Python reader of the same bundle (export.bundle.Bundle) gives the same answers
    from export.bundle import Bundle

    py = Bundle.load(world.good)
    for probe, name in (("alice0", "alice"), ("stranger0", "alice"), ("bob0", "bob")):
        page = tab.js(f"() => window.fedfrDemo.verify('/img/{probe}.png', '{name}')")
        mine = py.verify(world.img / f"{probe}.png", name)
        assert mine["accepted"] == page["accepted"]
        assert mine["score"] == pytest.approx(page["score"], abs=1e-4)

    # enroll in the page: the template is the re-normalized mean of normalized embeddings
    e = tab.js("""async () => {
        const r = await window.fedfrDemo.enroll('carol', ['/img/carol0.png',
                                                         '/img/carol_near.png']);
        return { name: r.name, n: r.num_images, template: Array.from(r.template) };
    }""")
    want = world.emb["carol0"] + world.emb["carol_near"]
    assert e["name"] == "carol" and e["n"] == 2
    assert maxdiff(e["template"], want / np.linalg.norm(want)) <= 1e-4
    assert tab.js("() => window.fedfrDemo.verify('/img/carol0.png', 'carol')")["accepted"]
    assert tab.js("() => window.fedfrDemo.identify('/img/carol_near.png')")["name"] == "carol"
    assert "carol" in tab.page.locator("#people").inner_text()
    # kept on the device (localStorage), restored with the bundle on the next load
    tab.page.reload()
    tab.page.wait_for_function("() => window.fedfrDemo && window.fedfrDemo.ready")
    assert "carol" in tab.load()["identities"]


def test_bad_bundles_and_images(tab, world) -> None:
    tab.open()
    cases = {
        "/bundles/v2/": "unsupported bundle format version 2",
        "/bundles/notfedfr/": "not a FedFR bundle",
        "/bundles/missing/": "missing file model.onnx",
        "/bundles/tampered/": "hash mismatch for model.onnx",
        "/bundles/shape_meta/": "but bundle.json says [null, 3, 96, 96]",
        "/bundles/shape_model/": "wrong input shape: model.onnx expects",
        "/bundles/nothing/": "missing file bundle.json",
    }
    for url, msg in cases.items():
        got = tab.error("u => window.fedfrDemo.loadBundle(u)", url)
        assert msg in got, (url, got)
        # shown in the page too, and kept in lastError
        assert msg in tab.page.locator("#error").inner_text(), url
        assert msg in tab.js("() => window.fedfrDemo.lastError")
    assert "no bundle loaded" in tab.error("u => window.fedfrDemo.embed(u)", "/img/alice0.png")

    tab.load()
    assert tab.js("() => window.fedfrDemo.lastError") is None
    assert tab.page.locator("#error").is_hidden()
    got = tab.error("u => window.fedfrDemo.embed(u)", "/img/not_an_image.png")
    assert "/img/not_an_image.png is not a decodable image" in got, got
    assert "not a decodable image" in tab.page.locator("#error").inner_text()
    got = tab.error("u => window.fedfrDemo.embed(u)", "/img/nope.png")
    assert "could not fetch image /img/nope.png: HTTP 404" in got, got
    # the page's Content-Security-Policy allows its own origin only: another address is
    # refused before any request leaves (check_requests sees none)
    got = tab.error("u => window.fedfrDemo.loadBundle(u)", "http://127.0.0.2:9/bundle/")
    assert "missing file bundle.json: could not fetch http://127.0.0.2:9/" in got, got
    assert any("Content Security Policy" in m for m in tab.console), tab.console
    # a failed load leaves the loaded bundle in place
    tab.error("u => window.fedfrDemo.loadBundle(u)", "/bundles/tampered/")
    assert tab.js("() => window.fedfrDemo.verify('/img/alice0.png', 'alice')")["accepted"]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_phone_ui_verify_and_screenshot(tab, world, tmp_path) -> None:
    tab.open("?crops=unchecked")  # autoload: the page loads ./bundle/ by itself
    page = tab.page
    page.wait_for_function("() => window.fedfrDemo.info() !== null", timeout=30_000)
    assert page.locator("#people li").count() == 2
    # the calibration behind the threshold, as bundle.json records it
    info = page.locator("#bundle-info").inner_text()
    assert "0.0000 measured on 6 impostor pairs" in info, info
    assert "unknown (no genuine pair); estimate 1.0000 from 12 augmented views" in info, info
    page.set_input_files("#probe-file", str(world.img / "alice_near.png"))
    page.select_option("#verify-name", "alice")
    page.click("#verify-btn")
    page.wait_for_selector("#result:not([hidden])")
    assert "accepted as alice" in page.locator("#result-decision").inner_text()
    assert page.locator("#result-threshold").inner_text() == f"{world.threshold:.4f}"
    assert "ms" in page.locator("#result-ms").inner_text()
    page.locator("#result").scroll_into_view_if_needed()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    shutil.copyfile(SCREENSHOT, tmp_path / SCREENSHOT.name)
    want = (round(tab.viewport["width"] * tab.scale), round(tab.viewport["height"] * tab.scale))
    assert _png_size(SCREENSHOT) == want
    assert _png_size(tmp_path / SCREENSHOT.name) == want

    page.set_input_files("#probe-file", str(world.img / "stranger0.png"))
    page.click("#identify-btn")
    page.wait_for_function(
        "() => document.querySelector('#result-decision').textContent.includes('unknown')")
    # faces stay on the device: every request went to the page's origin, GETs without a body
    tab.check_requests()
    assert any(u.endswith("/bundle/model.onnx") for _, u, _ in tab.requests)


def test_works_offline_after_first_load(browser, world) -> None:
    srv = Server(world)  # its own server: this test stops it
    tab = Tab(browser, srv.origin)
    try:
        tab.open("?crops=unchecked")
        page = tab.page
        page.wait_for_function("() => window.fedfrDemo.info() !== null", timeout=30_000)
        # the service worker has installed (shell + onnxruntime-web cached), controls the page,
        # and the page has kept the verified bundle in the Cache API
        page.wait_for_function("""async () => {
            await navigator.serviceWorker.ready;
            if (!navigator.serviceWorker.controller) return false;
            const c = await caches.open('fedfr-demo-bundle-v1');
            return (await c.keys()).length === 4;
        }""", timeout=30_000)
        tab.check_requests()
    finally:
        srv.stop()
    try:
        tab.context.set_offline(True)
        alice = "data:image/png;base64," + base64.b64encode(
            (world.img / "alice0.png").read_bytes()).decode()
        resp = tab.page.reload()
        assert resp is not None and resp.from_service_worker
        tab.page.wait_for_function("() => window.fedfrDemo && window.fedfrDemo.ready")
        tab.page.wait_for_function("() => window.fedfrDemo.info() !== null", timeout=30_000)
        v = tab.js("u => window.fedfrDemo.verify(u, 'alice')", alice)
        assert v["accepted"] is True, tab.console
        assert abs(v["score"] - world.score("alice0", "alice")) <= 1e-4
        assert tab.js("() => window.fedfrDemo.lastError") is None
    finally:
        tab.close()
