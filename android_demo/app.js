// The FedFR demo page: UI wiring and the automation API `window.fedfrDemo`.
//
// Everything runs on this device: images (files, camera frames, URLs of this site) are decoded,
// preprocessed and embedded in the page; templates enrolled here are kept in localStorage.
// The page's only requests are GETs of its own files, the bundle's files and image URLs the
// caller names.

import { Bundle, FaceError, bitmapToRGBA, imageToRGBA, normalizeNCHW } from "./fedfr.js";
import { MTCNN, alignFace, rgbaToRGB } from "./faces.js";

const $ = (id) => document.getElementById(id);
const STORE_PREFIX = "fedfr-demo:templates:";
const BUNDLE_CACHE = "fedfr-demo-bundle-v1"; // read by sw.js when offline

const state = {
  bundle: null,
  probe: null, // {source, label}
  pending: [], // camera frames waiting to be enrolled: raw RGBA
  stream: null,
  detector: null, // Promise<MTCNN>, loaded on first use (a photo that is not a crop)
  // crop-sized images must look like a face (ONet), as device_sdk checks them; the page
  // opened with ?crops=unchecked takes them as they are (aligned crops of a data set)
  checkCrops: new URLSearchParams(location.search).get("crops") !== "unchecked",
};

/** The face detector (fetched, sha256-checked and loaded once, on first use). */
function getDetector() {
  if (!state.detector) {
    setStatus("loading the face detector (MTCNN)…");
    state.detector = MTCNN.load();
    state.detector.then(() => setStatus("face detector ready"),
                        () => { state.detector = null; });
  }
  return state.detector;
}

// ---------------------------------------------------------------------------------------------
// Messages

function setStatus(text) {
  $("status").textContent = text;
}

function showError(e) {
  const msg = e && e.message ? e.message : String(e);
  api.lastError = msg;
  const box = $("error");
  box.textContent = msg;
  box.hidden = false;
}

function clearError() {
  api.lastError = null;
  $("error").hidden = true;
  $("error").textContent = "";
}

/** Run an action: clear the error area, show (and rethrow) its error. Several faces in a
 * photo is no error: the face panel asks which one (see showFaces). */
async function guarded(fn) {
  clearError();
  try {
    return await fn();
  } catch (e) {
    if (e instanceof FaceError && e.count > 1) api.lastError = e.message;
    else showError(e);
    throw e;
  }
}

const fmt = (x, d = 4) => (typeof x === "number" ? x.toFixed(d) : String(x));

// ---------------------------------------------------------------------------------------------
// Bundle

let loading = Promise.resolve();

function storeKey(bundle) {
  return STORE_PREFIX + bundle.models.fp32.sha256;
}

function restoreEnrolled(bundle) {
  let saved = [];
  try {
    saved = JSON.parse(localStorage.getItem(storeKey(bundle)) || "[]");
  } catch {
    saved = [];
  }
  for (const t of saved) {
    if (Array.isArray(t.template) && t.template.length === bundle.meta.embedding_size) {
      bundle.addTemplate(t.name, [Float32Array.from(t.template)], "page");
      bundle.find(t.name).num_images = t.num_images;
    }
  }
}

function saveEnrolled(bundle) {
  const mine = bundle.templates.filter((t) => t.source === "page")
    .map((t) => ({ name: t.name, num_images: t.num_images, template: Array.from(t.template) }));
  try {
    localStorage.setItem(storeKey(bundle), JSON.stringify(mine));
  } catch {
    // storage full or disabled: the templates stay in memory for this visit
  }
}

/** Keep the verified bundle bytes in the Cache API so the page also works offline. */
async function keepForOffline(bundle) {
  if (!("caches" in globalThis)) return; // insecure context: no Cache API, no service worker
  try {
    const cache = await caches.open(BUNDLE_CACHE);
    const files = { "bundle.json": bundle.metaBytes, ...bundle.fileBytes };
    await Promise.all(Object.entries(files).map(([name, bytes]) =>
      cache.put(new URL(name, bundle.base).href, new Response(bytes, {
        headers: { "Content-Type": name.endsWith(".json") ? "application/json"
          : "application/octet-stream" },
      }))));
  } catch {
    // best effort: the page works online either way
  }
}

function bundleInfo(bundle = state.bundle) {
  if (!bundle) return null;
  const m = bundle.meta;
  return {
    url: bundle.base.href,
    format: m.format,
    format_version: m.format_version,
    created_at: m.created_at,
    model_version: m.model_version,
    arch: m.arch,
    embedding_size: m.embedding_size,
    personalized: m.personalized,
    threshold: m.threshold,
    far_target: m.far_target,
    models: bundle.kinds,
    model: bundle.kind,
    identities: bundle.templates.map((t) => t.name),
  };
}

async function doLoadBundle(url) {
  setStatus(`loading bundle ${url}…`);
  let bundle;
  try {
    bundle = await Bundle.load(url, { onProgress: setStatus });
  } catch (e) {
    setStatus(state.bundle ? `bundle not loaded; still using ${state.bundle.base.href}`
      : "no bundle loaded");
    throw e;
  }
  restoreEnrolled(bundle);
  state.bundle = bundle;
  keepForOffline(bundle);
  renderBundle();
  setStatus(`ready: ${bundle.meta.arch} ${versionLabel(bundle.meta)}, ` +
            `${bundle.templates.length} enrolled, ${bundle.kind} on WASM`);
  return bundleInfo(bundle);
}

function loadBundle(url) {
  const p = loading.then(() => guarded(() => doLoadBundle(url)));
  loading = p.catch(() => {});
  return p;
}

async function requireBundle() {
  await loading;
  if (!state.bundle) throw new Error("no bundle loaded: load one first");
  return state.bundle;
}

// ---------------------------------------------------------------------------------------------
// Rendering

/**
 * What the bundle's threshold was calibrated on (bundle.json "calibration", written by
 * export/bundle.py): measured FAR on how many impostor pairs, the TAR — or that it is unknown,
 * and the estimate from augmented views, named as such — and any warning a forced export kept.
 */
function calibrationRows(cal) {
  if (!cal || typeof cal !== "object" || !isFinite(cal.threshold)) {
    return [["calibration", "not recorded"]];
  }
  const rows = [];
  if (isFinite(cal.far_measured)) {
    rows.push(["FAR", `${fmt(cal.far_measured)} measured on ${cal.impostor_pairs ?? "?"} ` +
                      "impostor pairs"]);
  }
  if (cal.tar !== null && cal.tar !== undefined && isFinite(cal.tar)) {
    rows.push(["TAR", `${fmt(cal.tar)} on ${cal.genuine_pairs} genuine pairs`]);
  } else {
    const g = cal.genuine_estimate;
    rows.push(["TAR", "unknown (no genuine pair)" +
               (g && isFinite(g.tar) ? `; estimate ${fmt(g.tar)} from ${g.pairs} augmented views`
                                     : "")]);
  }
  for (const w of Array.isArray(cal.warnings) ? cal.warnings : []) {
    rows.push(["warning", String(w)]);
  }
  return rows;
}

function renderBundle() {
  const b = state.bundle;
  const info = $("bundle-info");
  info.replaceChildren();
  const rows = [
    ["model", `${b.meta.arch} · ${versionLabel(b.meta)}` +
              (b.meta.personalized ? " · personalized" : "")],
    ["embedding", `${b.meta.embedding_size}-d`],
    ["threshold", `${fmt(b.threshold)}` +
                  (b.meta.far_target ? ` (FAR ${b.meta.far_target})` : "")],
    ...calibrationRows(b.meta.calibration),
    ["created", b.meta.created_at || "?"],
  ];
  for (const [k, v] of rows) {
    info.append(Object.assign(document.createElement("dt"), { textContent: k }),
                Object.assign(document.createElement("dd"), { textContent: v }));
  }
  info.hidden = false;
  const sel = $("model-kind");
  sel.replaceChildren(...b.kinds.map((k) => new Option(k === "int8" ? "int8 (quantized)" : k, k)));
  sel.value = b.kind;
  $("model-switch-row").hidden = b.kinds.length < 2;
  renderPeople();
}

function renderPeople() {
  const b = state.bundle;
  const list = $("people");
  list.replaceChildren();
  $("people-count").textContent = b ? `(${b.templates.length})` : "";
  if (!b || !b.templates.length) {
    list.append(Object.assign(document.createElement("li"), {
      className: "muted", textContent: b ? "nobody yet: enroll someone below" : "load a bundle first",
    }));
  }
  for (const t of b ? b.templates : []) {
    const li = document.createElement("li");
    const name = Object.assign(document.createElement("span"), { className: "name",
                                                                  textContent: t.name });
    const meta = Object.assign(document.createElement("span"), { className: "muted",
      textContent: `${t.num_images ?? "?"} image${t.num_images === 1 ? "" : "s"} · ` +
                   (t.source === "page" ? "enrolled here" : "bundle") });
    li.append(name, meta);
    if (t.source === "page") {
      const rm = Object.assign(document.createElement("button"), {
        type: "button", className: "small", textContent: "remove",
        title: `forget ${t.name} (this device only)` });
      rm.addEventListener("click", () => {
        b.removeTemplate(t.name);
        saveEnrolled(b);
        renderPeople();
      });
      li.append(rm);
    }
    list.append(li);
  }
  const sel = $("verify-name");
  const keep = sel.value;
  sel.replaceChildren(...(b ? b.templates : []).map((t) => new Option(t.name, t.name)));
  if (b && b.find(keep)) sel.value = keep;
  updateButtons();
}

function updateButtons() {
  const ready = !!state.bundle;
  const hasPeople = ready && state.bundle.templates.length > 0;
  $("verify-btn").disabled = !(hasPeople && state.probe);
  $("identify-btn").disabled = !(hasPeople && state.probe);
  const enrollImages = $("enroll-files").files.length + state.pending.length;
  $("enroll-btn").disabled = !(ready && enrollImages > 0 && $("enroll-name").value.trim());
  $("enroll-pending").textContent = state.pending.length
    ? `${state.pending.length} camera frame${state.pending.length === 1 ? "" : "s"} captured` : "";
  $("capture-enroll").disabled = !state.stream;
  $("capture-probe").disabled = !state.stream;
}

function drawFace(pixels, canvas = $("result-face")) {
  const { height, width } = state.bundle.cropSize;
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(width, height);
  for (let i = 0; i < width * height; i++) {
    img.data[4 * i] = pixels[3 * i];
    img.data[4 * i + 1] = pixels[3 * i + 1];
    img.data[4 * i + 2] = pixels[3 * i + 2];
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function faceCaption(e) {
  if (e.method === "crop") return "used as is (already a crop)";
  return e.faces.length > 1 ? `aligned face #${e.face + 1} of ${e.faces.length}`
    : "aligned face";
}

function showResult(r, e) {
  hideFaces();
  $("result").hidden = false;
  drawFace(e.pixels);
  $("result-face-caption").textContent = faceCaption(e);
  const d = $("result-decision");
  if ("accepted" in r) {
    d.textContent = `${r.accepted ? "✔ accepted" : "✘ rejected"} as ${r.name}`;
    d.className = `decision ${r.accepted ? "ok" : "no"}`;
  } else {
    d.textContent = r.name === "unknown" ? `✘ unknown (closest: ${r.best})`
      : `✔ identified: ${r.name}`;
    d.className = `decision ${r.name === "unknown" ? "no" : "ok"}`;
  }
  $("result-score").textContent = fmt(r.score);
  $("result-threshold").textContent = fmt(r.threshold);
  $("result-ms").textContent = `${e.ms.toFixed(1)} ms (${e.kind}; preprocessing ` +
                               `${e.preMs.toFixed(1)} ms)`;
}

// ---------------------------------------------------------------------------------------------
// The face panel: "no face found", or "N faces — tap one" on the photo with numbered boxes

let pickFace = null; // (k) => void while the panel offers a choice

function hideFaces() {
  $("faces").hidden = true;
  pickFace = null;
}

/** Show the photo of a FaceError; with several faces, tapping one (or its button) runs
 * `retry(k)` through guarded(). */
function showFaces(err, retry) {
  const img = err.image;
  const panel = $("faces");
  const canvas = $("faces-photo");
  const scale = Math.min(1, 1280 / Math.max(img.width, img.height));
  canvas.width = Math.max(1, Math.round(img.width * scale));
  canvas.height = Math.max(1, Math.round(img.height * scale));
  const ctx = canvas.getContext("2d");
  const full = new OffscreenCanvas(img.width, img.height);
  full.getContext("2d").putImageData(
    new ImageData(new Uint8ClampedArray(img.data), img.width, img.height), 0, 0);
  ctx.drawImage(full, 0, 0, canvas.width, canvas.height);
  const several = err.count > 1;
  panel.classList.toggle("none", !several);
  $("faces-title").textContent = several ? `${err.count} faces — tap one`
    : "No face found";
  $("faces-text").textContent = several
    ? `${err.label} shows ${err.count} faces: tap the one to use (or its number).`
    : `${err.label}: no face was found, so nothing was enrolled or scored. Use a photo ` +
      "of one face, facing the camera, not too small or dark.";
  const buttons = $("faces-buttons");
  buttons.replaceChildren();
  const lw = Math.max(2, Math.round(canvas.width / 300));
  err.faces.forEach((f, k) => {
    const [x, y, w, h] = f.box.map((v) => v * scale);
    ctx.lineWidth = lw;
    ctx.strokeStyle = "#ffd400";
    ctx.strokeRect(x, y, w, h);
    const fs = Math.max(14, Math.round(Math.min(w, h) * 0.35));
    ctx.font = `bold ${fs}px system-ui, sans-serif`;
    const label = String(k + 1);
    const tw = ctx.measureText(label).width + fs * 0.5;
    ctx.fillStyle = "#ffd400";
    ctx.fillRect(x, Math.max(0, y - fs * 1.2), tw, fs * 1.2);
    ctx.fillStyle = "#1b1f27";
    ctx.fillText(label, x + fs * 0.25, Math.max(0, y - fs * 1.2) + fs * 0.95);
    if (several) {
      buttons.append(Object.assign(document.createElement("button"), {
        type: "button", className: "face-pick", textContent: `Face ${k + 1}`,
        onclick: () => pickFace && pickFace(k) }));
    }
  });
  pickFace = several ? (k) => {
    hideFaces();
    guarded(() => retry(k)).catch(() => {});
  } : null;
  canvas.onclick = (ev) => {
    if (!pickFace) return;
    const r = canvas.getBoundingClientRect();
    const px = (ev.clientX - r.left) * (img.width / r.width);
    const py = (ev.clientY - r.top) * (img.height / r.height);
    // the smallest box under the tap
    let best = -1, area = Infinity;
    err.faces.forEach((f, k) => {
      const [x, y, w, h] = f.box;
      if (px >= x && px <= x + w && py >= y && py <= y + h && w * h < area) {
        best = k;
        area = w * h;
      }
    });
    if (best >= 0) pickFace(best);
  };
  $("result").hidden = true;
  panel.hidden = false;
  setStatus(several ? `${err.count} faces — tap one` : "no face found");
  panel.scrollIntoView({ block: "nearest" });
}

/** Thumbnails of the aligned crops an enrollment used. */
function showEnrolledFaces(name, embedded) {
  const box = $("enroll-faces");
  box.replaceChildren();
  for (const e of embedded) {
    const c = document.createElement("canvas");
    c.title = `${name}: ${faceCaption(e)} (${e.label})`;
    drawFace(e.pixels, c);
    box.append(c);
  }
  box.hidden = false;
}

function clearEnrollInputs() {
  state.pending = [];
  $("enroll-files").value = "";
  $("enroll-name").value = "";
  updateButtons();
}

// ---------------------------------------------------------------------------------------------
// Operations (shared by the UI and window.fedfrDemo)

async function embedOne(source, face = null) {
  const b = await requireBundle();
  return b.embed(source, { detector: getDetector, face, checkCrops: state.checkCrops });
}

/**
 * Embed with face detection; a photo without a face, or with several and none picked, shows
 * the face panel (several: tapping a face runs `retry(k)`) and throws the FaceError.
 */
async function embedFace(source, face, retry) {
  try {
    return await embedOne(source, face);
  } catch (e) {
    if (e instanceof FaceError && e.image) showFaces(e, retry);
    throw e;
  }
}

async function verifySource(source, name, face = null) {
  const b = await requireBundle();
  const t = b.find(name);
  if (!t) {
    throw new Error(`no enrolled person named ${JSON.stringify(name)} (enrolled: ` +
                    `${b.templates.map((x) => x.name).join(", ") || "nobody"})`);
  }
  const e = await embedFace(source, face, (k) => verifySource(source, name, k));
  const score = e.embedding.reduce((s, v, i) => s + v * t.template[i], 0);
  const r = { name, score, threshold: b.threshold, accepted: score >= b.threshold,
              ms: e.ms, model: e.kind, method: e.method, face: e.face,
              faces: e.faces.length };
  showResult(r, e);
  return r;
}

async function identifySource(source, face = null) {
  const b = await requireBundle();
  if (!b.templates.length) throw new Error("nobody is enrolled: enroll someone first");
  const e = await embedFace(source, face, (k) => identifySource(source, k));
  const [best] = b.scores(e.embedding);
  const r = { name: best.score >= b.threshold ? best.name : "unknown", best: best.name,
              score: best.score, threshold: b.threshold, ms: e.ms, model: e.kind,
              method: e.method, face: e.face, faces: e.faces.length };
  showResult(r, e);
  return r;
}

/** Enroll `name` from `sources`; `faces[i]`: the face picked in source i (several faces). */
async function enrollSources(name, sources, faces = []) {
  const b = await requireBundle();
  if (typeof name !== "string" || !name.trim()) throw new Error("enroll needs a name");
  if (!sources.length) throw new Error("enroll needs at least one image");
  const embedded = [];
  for (const [i, s] of sources.entries()) {
    const pick = faces[i] ?? null;
    embedded.push(await embedFace(s, pick, (k) => {
      const again = [...faces];
      again[i] = k;
      return enrollSources(name, sources, again).then((r) => {
        clearEnrollInputs();
        return r;
      });
    }));
  }
  hideFaces();
  const t = b.addTemplate(name, embedded.map((e) => e.embedding), "page");
  saveEnrolled(b);
  renderPeople();
  showEnrolledFaces(t.name, embedded);
  setStatus(`enrolled ${t.name} from ${t.num_images} image${t.num_images === 1 ? "" : "s"}`);
  return { name: t.name, num_images: t.num_images, template: Float32Array.from(t.template) };
}

async function setModel(kind) {
  const b = await requireBundle();
  setStatus(`loading the ${kind} model…`);
  await b.setKind(kind);
  $("model-kind").value = kind;
  setStatus(`ready: ${b.meta.arch} ${versionLabel(b.meta)}, ${kind} on WASM`);
  return kind;
}

// ---------------------------------------------------------------------------------------------
// Camera (getUserMedia; frames are processed like files: faces detected and aligned)

async function startCamera() {
  if (state.stream) {
    stopCamera();
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("no camera access here: browsers allow the camera only on https:// or " +
                    "http://localhost pages (see android_demo/README.md)");
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    video: { facingMode: "user", width: { ideal: 640 }, height: { ideal: 640 } }, audio: false,
  });
  state.stream = stream;
  const video = $("camera-video");
  video.srcObject = stream;
  $("camera-box").hidden = false;
  await video.play();
  placeGuide();
  $("camera-start").textContent = "Stop camera";
  updateButtons();
}

function stopCamera() {
  if (state.stream) for (const t of state.stream.getTracks()) t.stop();
  state.stream = null;
  $("camera-box").hidden = true;
  $("camera-start").textContent = "Start camera";
  updateButtons();
}

function placeGuide() {
  const video = $("camera-video");
  const guide = document.querySelector(".guide");
  const vw = video.videoWidth, vh = video.videoHeight;
  if (!vw || !vh) return;
  const k = video.clientWidth / vw; // the video is shown at its aspect ratio, full width
  const side = Math.min(vw, vh) * k;
  Object.assign(guide.style, { width: `${side}px`, height: `${side}px`,
                               left: `${(vw * k - side) / 2}px`, top: `${(vh * k - side) / 2}px` });
}

function captureFrame() {
  const video = $("camera-video");
  if (!video.videoWidth) throw new Error("the camera has no frame yet");
  return bitmapToRGBA(video, video.videoWidth, video.videoHeight);
}

// ---------------------------------------------------------------------------------------------
// UI events

function on(id, event, fn) {
  $(id).addEventListener(event, (ev) => {
    Promise.resolve(fn(ev)).catch(() => {}); // errors are shown by guarded()
  });
}

function wireUI() {
  on("bundle-form", "submit", (ev) => {
    ev.preventDefault();
    return loadBundle($("bundle-url").value.trim());
  });
  on("model-kind", "change", () => guarded(() => setModel($("model-kind").value)));
  on("probe-file", "change", () => {
    const f = $("probe-file").files[0];
    state.probe = f ? { source: f, label: f.name } : null;
    $("probe-status").textContent = f ? `probe: ${f.name}` : "pick an image or capture a frame";
    updateButtons();
  });
  on("verify-btn", "click", () => guarded(() =>
    verifySource(state.probe.source, $("verify-name").value)));
  on("identify-btn", "click", () => guarded(() => identifySource(state.probe.source)));
  on("enroll-name", "input", updateButtons);
  on("enroll-files", "change", updateButtons);
  on("enroll-btn", "click", () => guarded(async () => {
    const sources = [...$("enroll-files").files, ...state.pending];
    await enrollSources($("enroll-name").value, sources);
    clearEnrollInputs();
  }));
  on("camera-start", "click", () => guarded(startCamera));
  on("capture-enroll", "click", () => guarded(async () => {
    state.pending.push(captureFrame());
    updateButtons();
  }));
  on("capture-probe", "click", () => guarded(async () => {
    state.probe = { source: captureFrame(), label: "camera frame" };
    $("probe-status").textContent = "probe: camera frame";
    updateButtons();
  }));
  window.addEventListener("resize", placeGuide);
}

// ---------------------------------------------------------------------------------------------
// Automation API

const api = {
  version: 1,
  lastError: null,
  /** Load and check a bundle (directory URL, or its bundle.json); resolves to its info. */
  loadBundle,
  /** The L2-normalized embedding of an image URL with the current model ({face}: which of
   * several faces, 0-based, best score first). */
  async embed(imageUrl, { face = null } = {}) {
    return guarded(async () => (await embedFace(imageUrl, face, () => {})).embedding);
  },
  /** The face the model sees: {pixels (H·W·3 RGB uint8), tensor (float32 NCHW), method
   * ("crop" | "aligned"), faces, face, width, height}. */
  async preprocess(imageUrl, { face = null } = {}) {
    return guarded(async () => {
      const b = await requireBundle();
      const p = await b.prepare(imageUrl, { detector: getDetector, face,
                                            checkCrops: state.checkCrops });
      const { height, width } = b.cropSize;
      return { pixels: p.pixels, method: p.method, faces: p.faces, face: p.face, width, height,
               tensor: normalizeNCHW(p.pixels, b.meta.input.mean, b.meta.input.std, height,
                                     width) };
    });
  },
  /** MTCNN on an image: {width, height, faces: [{box: [x, y, w, h], score, landmarks}]}. */
  async detect(imageUrl) {
    return guarded(async () => {
      const rgba = await imageToRGBA(imageUrl);
      const det = await getDetector();
      const faces = await det.detect({ rgb: rgbaToRGB(rgba.data, rgba.width * rgba.height),
                                       width: rgba.width, height: rgba.height });
      return { width: rgba.width, height: rgba.height, faces };
    });
  },
  /** The bundle's aligned crop of an image for given landmarks (5 [x, y]): H·W·3 RGB. */
  async align(imageUrl, landmarks) {
    return guarded(async () => {
      const b = await requireBundle();
      const rgba = await imageToRGBA(imageUrl);
      const { height, width } = b.cropSize;
      return alignFace(rgbaToRGB(rgba.data, rgba.width * rgba.height), rgba.height,
                       rgba.width, landmarks, b.template, width, height);
    });
  },
  /** 1:1 against an enrolled person: {name, score, threshold, accepted, ms, model, method,
   * face, faces}. A photo with several faces needs {face}. */
  async verify(imageUrl, name, { face = null } = {}) {
    return guarded(() => verifySource(imageUrl, name, face));
  },
  /** 1:N among the enrolled: {name (or "unknown"), best, score, threshold, ms, model, …}. */
  async identify(imageUrl, { face = null } = {}) {
    return guarded(() => identifySource(imageUrl, face));
  },
  /** Enroll (or re-enroll) a person from image URLs ({faces}: the face picked per image);
   * the template stays on this device. */
  async enroll(name, imageUrls, { faces = [] } = {}) {
    return guarded(() => enrollSources(name, Array.from(imageUrls || []), faces));
  },
  /** The face panel's state: null, or {title, faces} while it is shown. */
  facePanel: () => ($("faces").hidden ? null : {
    title: $("faces-title").textContent, buttons: $("faces-buttons").children.length }),
  /** Switch between "fp32" and "int8" (when the bundle has it). */
  async setModel(kind) {
    return guarded(() => setModel(kind));
  },
  info: () => bundleInfo(),
  identities: () => (state.bundle ? state.bundle.templates.map((t) => ({
    name: t.name, num_images: t.num_images, source: t.source })) : []),
};
window.fedfrDemo = api;

// ---------------------------------------------------------------------------------------------
// Start

wireUI();
renderPeople();
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("./sw.js").catch((e) => {
    console.warn("service worker not registered:", e);
  });
}
const params = new URLSearchParams(location.search);
if (params.get("bundle")) $("bundle-url").value = params.get("bundle");
if (params.get("autoload") !== "0") {
  loadBundle($("bundle-url").value.trim()).catch(() => {});
} else {
  setStatus("no bundle loaded");
}
api.ready = Promise.resolve(true);
document.documentElement.dataset.ready = "1";

/** "v3", or "unversioned" when the bundle's model carries no version. */
function versionLabel(meta) {
  return meta.model_version ? `v${meta.model_version}` : "unversioned";
}
