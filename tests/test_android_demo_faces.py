"""android_demo/: face detection (MTCNN) and 5-point alignment in the page, against Python.

Real photos (fedfr/data/realphotos.py: scikit-image's astronaut and chelsea, the insightface
and face_recognition sdists' sample images, cached by ``bash scripts/setup.sh``) go through the
page's JS cascade (onnxruntime-web) and through device_sdk.faces.MTCNNDetector (OpenCV DNN):
same faces, boxes, scores and landmarks up to float rounding; the aligned crops equal
fedfr.data.align.align_face's; the page and ``python -m export verify`` give the same score on
a photo. A cat, noise and a blank image are refused as "no face" in both; a 6-person photo
asks the user to pick a face, and the picked face is enrolled. Screenshots of the three states
are written to runs/screenshots/ (to docs/img/ with ``FEDFR_DOC_SCREENSHOTS=1``: how the
documentation's images are made).

Uses the fixtures of tests/test_android_demo.py (chromium, the test bundle, the server); skipped
like them without chromium or node_modules, and without the real-photo cache (failing when CI
is set).
"""

# ruff: noqa: F811  (the fixtures imported from test_android_demo are redefined as arguments)
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from test_android_demo import (  # noqa: F401  (pytest fixtures, used by name)
    ROOT,
    _need,
    browser,
    prereqs,
    server,
    tab,
    world,
)

# docs/img only on request: a test run does not rewrite the documentation's images
DOCS_IMG = ROOT / ("docs/img" if os.environ.get("FEDFR_DOC_SCREENSHOTS") else "runs/screenshots")
# photos for the detection parity (tom_hanks is a 112x112 crop: detected here, but taken as
# an aligned crop as is when scored, like Python's prepare_face)
PARITY = ("astronaut", "obama", "obama2", "obama3", "biden", "t1", "tom_hanks")


@pytest.fixture(scope="module")
def photos(world):
    """Real photos (original files and lossless PNG copies of their decoded pixels), a noise
    and a blank image, in the server's /img/ folder; Python's detections of each."""
    try:
        from fedfr.data import realphotos
    except ImportError as e:  # pragma: no cover
        _need(False, f"fedfr.data.realphotos: {e}")
    miss = realphotos.missing()
    _need(not miss, f"real photos not cached ({', '.join(miss)} missing in "
                    f"{realphotos.cache_dir()})")
    from device_sdk.faces import MTCNNDetector

    det = MTCNNDetector()
    out = {"rgb": {}, "faces": {}, "file": {}}
    for name in (*PARITY, "chelsea"):
        src = realphotos.real_photo(name)
        shutil.copyfile(src, world.img / f"real_{name}{src.suffix}")
        out["file"][name] = world.img / f"real_{name}{src.suffix}"
        rgb = realphotos.real_photo_rgb(name)
        Image.fromarray(rgb).save(world.img / f"real_{name}_px.png")
        out["rgb"][name] = rgb
        out["faces"][name] = det.detect(rgb)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(
        world.img / "noise.png")
    Image.fromarray(np.full((300, 400, 3), 255, np.uint8)).save(world.img / "blank.png")
    # crop-sized (112x112) non-faces: taken as aligned crops only if ONet scores them a face
    Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(
        world.img / "noise112.png")
    Image.fromarray(np.asarray(Image.fromarray(out["rgb"]["chelsea"]).resize((112, 112)))).save(
        world.img / "cat112.png")
    return out


def _shot(page, name: str) -> None:
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_IMG / name))


def _match(py_faces, js_faces):
    """Pairs (python face, page face) by nearest landmark centroid."""
    pairs = []
    for f in py_faces:
        c = f.landmarks.mean(0)
        j = min(js_faces, key=lambda g: np.linalg.norm(np.asarray(g["landmarks"]).mean(0) - c))
        pairs.append((f, j))
    return pairs


def test_detection_and_alignment_match_python(tab, world, photos) -> None:
    from fedfr.data.align import align_face

    tab.open()
    tab.load()
    worst = {"landmark": 0.0, "box": 0.0, "score": 0.0}
    pure = []  # page alignment with Python's landmarks vs align_face
    e2e = []  # page detection + alignment vs Python detection + align_face
    t0 = time.perf_counter()
    for name in PARITY:
        url = f"/img/real_{name}_px.png"
        got = tab.js("u => window.fedfrDemo.detect(u)", url)
        py = photos["faces"][name]
        rgb = photos["rgb"][name]
        assert (got["width"], got["height"]) == (rgb.shape[1], rgb.shape[0])
        assert len(got["faces"]) == len(py), (name, len(got["faces"]), len(py))
        for f, g in _match(py, got["faces"]):
            worst["landmark"] = max(worst["landmark"], float(np.abs(
                np.asarray(g["landmarks"]) - f.landmarks).max()))
            worst["box"] = max(worst["box"], float(np.abs(np.asarray(g["box"]) -
                                                          np.asarray(f.box)).max()))
            worst["score"] = max(worst["score"], abs(g["score"] - f.score))
            want = align_face(rgb, f.landmarks, size=112)
            mine = np.asarray(tab.js("([u, lm]) => window.fedfrDemo.align(u, lm)"
                                     ".then(a => Array.from(a))", [url, f.landmarks.tolist()]),
                              np.uint8).reshape(want.shape)
            pure.append(np.abs(mine.astype(int) - want).ravel())
            mine = np.asarray(tab.js("([u, lm]) => window.fedfrDemo.align(u, lm)"
                                     ".then(a => Array.from(a))", [url, g["landmarks"]]),
                              np.uint8).reshape(want.shape)
            e2e.append(np.abs(mine.astype(int) - want).ravel())
    pure, e2e = np.concatenate(pure), np.concatenate(e2e)
    print(f"\n{len(PARITY)} photos, {sum(len(photos['faces'][n]) for n in PARITY)} faces in "
          f"{time.perf_counter() - t0:.1f} s; page vs Python: landmarks max "
          f"{worst['landmark']:.2e} px, boxes max {worst['box']:.2e} px, scores max "
          f"{worst['score']:.2e}; aligned crops with Python's landmarks: max "
          f"{pure.max()}, identical {np.mean(pure == 0):.5f}; with the page's own: max "
          f"{e2e.max()}, identical {np.mean(e2e == 0):.5f}")
    assert worst["landmark"] <= 0.05, worst
    assert worst["box"] <= 0.05 and worst["score"] <= 1e-4, worst
    # the same landmarks give the same crop, bit for bit (cv2.warpAffine's fixed point)
    assert pure.max() == 0, pure.max()
    # the page's own landmarks differ from Python's by float rounding only
    # (measured: max 3 grey levels on a few edge pixels, 99.98% identical)
    assert e2e.max() <= 4 and np.mean(e2e == 0) >= 0.999, (e2e.max(), np.mean(e2e == 0))
    # what the model is fed: a one-face photo is aligned, a crop-sized image taken as is
    p = tab.js("u => window.fedfrDemo.preprocess(u).then(r => ({method: r.method, "
               "pixels: Array.from(r.pixels)}))", "/img/real_astronaut_px.png")
    assert p["method"] == "aligned"
    want = align_face(photos["rgb"]["astronaut"], photos["faces"]["astronaut"][0].landmarks)
    d = np.abs(np.asarray(p["pixels"], np.uint8).reshape(want.shape).astype(int) - want)
    assert d.max() <= 2 and np.mean(d == 0) >= 0.99
    p = tab.js("u => window.fedfrDemo.preprocess(u).then(r => r.method)",
               "/img/real_tom_hanks_px.png")
    assert p == "crop"


def _export_verify(bundle, image, name="alice") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", "verify", str(bundle), str(image),
                           "--as", name, "--json"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_no_face_is_refused_in_the_page_and_export(tab, world, photos) -> None:
    tab.open("?autoload=0")  # crop-sized images checked (the page's default)
    tab.load()
    before = tab.js("() => window.fedfrDemo.identities().length")
    assert tab.js("u => window.fedfrDemo.preprocess(u).then(r => r.method)",
                  "/img/real_tom_hanks_px.png") == "crop"  # a real aligned face passes
    for url in ("/img/real_chelsea.png", "/img/noise.png", "/img/blank.png",
                "/img/noise112.png", "/img/cat112.png"):
        msg = tab.error("u => window.fedfrDemo.verify(u, 'alice')", url)
        assert msg.startswith(f"no face found in {url}"), msg
        assert tab.js("() => window.fedfrDemo.facePanel()")["title"] == "No face found"
        msg = tab.error("u => window.fedfrDemo.enroll('cat', [u])", url)
        assert "no face found" in msg, msg
    assert tab.js("() => window.fedfrDemo.identities().length") == before
    # the phone UI: pick the cat as the probe, tap Verify
    page = tab.page
    page.set_input_files("#probe-file", str(photos["file"]["chelsea"]))
    page.select_option("#verify-name", "alice")
    page.click("#verify-btn")
    page.wait_for_selector("#faces:not([hidden])")
    assert page.locator("#faces-title").inner_text() == "No face found"
    assert "no face found" in page.locator("#error").inner_text()
    assert page.locator("#result").is_hidden()
    page.locator("#faces").scroll_into_view_if_needed()
    page.evaluate("() => window.scrollTo(0, 0)")
    _shot(page, "page_no_face.png")
    # python -m export verify: the same refusal, exit code 1, the file named
    for f in (photos["file"]["chelsea"], world.img / "noise.png", world.img / "blank.png",
              world.img / "noise112.png", world.img / "cat112.png"):
        r = _export_verify(world.good, f)
        assert r.returncode == 1, (f, r.stdout, r.stderr)
        assert f"no face found in {f}" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_group_photo_asks_to_pick_and_enrolls_the_pick(tab, world, photos) -> None:
    tab.open("")  # autoload, as a user opens it
    page = tab.page
    page.wait_for_function("() => window.fedfrDemo.info() !== null", timeout=30_000)
    n = len(photos["faces"]["t1"])
    assert n == 6
    url = "/img/real_t1.jpg"
    msg = tab.error("u => window.fedfrDemo.verify(u, 'alice')", url)
    assert msg.startswith(f"6 faces found in {url}"), msg
    assert tab.js("() => window.fedfrDemo.facePanel()") == {"title": "6 faces — tap one",
                                                            "buttons": 6}
    # the UI: enroll "group" from the file → the photo with numbered boxes; tap face 3
    page.fill("#enroll-name", "group")
    page.set_input_files("#enroll-files", str(photos["file"]["t1"]))
    page.click("#enroll-btn")
    page.wait_for_selector("#faces:not([hidden])")
    assert page.locator("#faces-title").inner_text() == "6 faces — tap one"
    assert page.locator("#faces-buttons button").count() == 6
    assert page.locator("#error").is_hidden()
    page.locator("#faces").scroll_into_view_if_needed()
    page.evaluate("() => window.scrollTo(0, 0)")
    _shot(page, "page_pick_face.png")
    # tap inside face #3's box on the photo
    det = tab.js("u => window.fedfrDemo.detect(u)", url)
    x, y, w, h = det["faces"][2]["box"]
    canvas = page.locator("#faces-photo")
    bb = canvas.bounding_box()
    page.mouse.click(bb["x"] + (x + w / 2) / det["width"] * bb["width"],
                     bb["y"] + (y + h / 2) / det["height"] * bb["height"])
    page.wait_for_function("() => window.fedfrDemo.identities().some(t => t.name === 'group')")
    assert page.locator("#faces").is_hidden()
    assert page.locator("#enroll-faces canvas").count() == 1
    # the template is face #3's embedding: it scores 1 against it, less against the others
    scores = [tab.js("([u, k]) => window.fedfrDemo.verify(u, 'group', {face: k})"
                     ".then(r => r.score)", [url, k]) for k in range(n)]
    assert scores[2] == pytest.approx(1.0, abs=1e-5), scores
    assert max(s for k, s in enumerate(scores) if k != 2) < 0.999, scores
    # the buttons pick too
    tab.error("u => window.fedfrDemo.identify(u)", url)
    page.click("#faces-buttons button:nth-child(3)")
    # (the verify calls above rendered results too: wait for this one's caption)
    page.wait_for_function("() => document.querySelector('#result-face-caption').textContent"
                           ".includes('aligned face #3 of 6')")
    assert "group" in page.locator("#result-decision").inner_text()
    # python -m export verify refuses the group photo, naming it
    r = _export_verify(world.good, photos["file"]["t1"])
    assert r.returncode == 1 and f"6 faces found in {photos['file']['t1']}" in r.stderr, r.stderr


def test_verify_score_equals_export_cli(tab, world, photos) -> None:
    tab.open("")
    page = tab.page
    page.wait_for_function("() => window.fedfrDemo.info() !== null", timeout=30_000)
    worst = 0.0
    for name in ("astronaut", "obama2", "biden"):
        f = photos["file"][name]
        page_r = tab.js("u => window.fedfrDemo.verify(u, 'alice')", f"/img/{f.name}")
        r = _export_verify(world.good, f)
        assert r.returncode in (0, 3), r.stderr
        cli = json.loads(r.stdout)
        assert page_r["method"] == "aligned" and page_r["faces"] == 1
        worst = max(worst, abs(page_r["score"] - cli["score"]))
        assert page_r["accepted"] == cli["accepted"] or abs(cli["score"] - cli["threshold"]) < 1e-3
    print(f"\nverify score, page vs python -m export verify (original files): max abs diff "
          f"{worst:.2e}")
    assert worst <= 1e-3, worst
    # the phone UI with photos: enroll one photo, verify another; the aligned crops are shown
    # (the test bundle's model has random weights: the decision means nothing here)
    page.fill("#enroll-name", "obama")
    page.set_input_files("#enroll-files", str(photos["file"]["obama3"]))
    page.click("#enroll-btn")
    page.wait_for_function("() => window.fedfrDemo.identities().some(t => t.name === 'obama')")
    assert page.locator("#enroll-faces canvas").count() == 1
    page.set_input_files("#probe-file", str(photos["file"]["obama2"]))
    page.select_option("#verify-name", "obama")
    page.click("#verify-btn")
    page.wait_for_selector("#result:not([hidden])")
    assert page.locator("#result-face-caption").inner_text() == "aligned face"
    assert "as obama" in page.locator("#result-decision").inner_text()
    page.locator("#check-section").scroll_into_view_if_needed()
    _shot(page, "page_verified.png")
