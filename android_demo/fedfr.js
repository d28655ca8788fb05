// FedFR on-device recognition in the browser: bundle loading and checking, preprocessing
// identical to Python's, embedding with onnxruntime-web (plain WASM, files served locally),
// verification and identification. No DOM here (app.js is the page); nothing is ever sent
// anywhere: the only requests are GETs of the bundle's files and of images the caller names.

import * as ort from "./vendor/ort.wasm.min.mjs";
import { sha256Hex } from "./sha256.js";
import {
  CROP_FACE_SCORE, FaceError, alignFace, foregroundFaces, rgbaToRGB, templateFor,
} from "./faces.js";

export { FaceError };

export const FORMAT = "fedfr-bundle";
export const FORMAT_VERSION = 1;
export const SIZE = 112; // the default crop (old bundles): (N, 3, 112, 112); bundle.json says

// onnxruntime-web: the .mjs/.wasm next to ort.wasm.min.mjs under /vendor/ (never a CDN), one
// thread (no SharedArrayBuffer, so no cross-origin isolation is needed), no proxy worker.
ort.env.wasm.wasmPaths = new URL("./vendor/", import.meta.url).href;
ort.env.wasm.numThreads = 1;
ort.env.wasm.proxy = false;
ort.env.logLevel = "error";

/** A bundle that cannot be used: wrong format or version, missing file, hash mismatch, ... */
export class BundleError extends Error {
  constructor(message) {
    super(message);
    this.name = "BundleError";
  }
}

/** An input that is not a usable image. */
export class ImageError extends Error {
  constructor(message) {
    super(message);
    this.name = "ImageError";
  }
}

const f32 = Math.fround;

// ---------------------------------------------------------------------------------------------
// Images

/**
 * Decode an image to raw RGBA at its natural size, without color management.
 *
 * @param {Blob} blob encoded image (PNG, JPEG, WebP, ...)
 * @param {string} label what to call it in an error message
 * @returns {Promise<{data: Uint8ClampedArray, width: number, height: number}>}
 */
export async function decodeImage(blob, label = "image") {
  let bitmap;
  try {
    // no color-space conversion and no premultiplication: the file's own RGB values, as PIL
    // reads them (an embedded ICC profile is ignored, like Python's side ignores it)
    bitmap = await createImageBitmap(blob, {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  } catch (e) {
    const type = blob.type ? `${blob.type}, ` : "";
    throw new ImageError(`${label} is not a decodable image (${type}${blob.size} bytes)`);
  }
  try {
    return bitmapToRGBA(bitmap);
  } finally {
    bitmap.close();
  }
}

/** Raw RGBA pixels of an ImageBitmap / video frame / canvas at its natural size. */
export function bitmapToRGBA(source, width = source.width, height = source.height) {
  if (!width || !height) throw new ImageError("the image is empty (0 pixels)");
  const canvas = typeof OffscreenCanvas !== "undefined"
    ? new OffscreenCanvas(width, height)
    : Object.assign(document.createElement("canvas"), { width, height });
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  // drawn 1:1 (never scaled by the canvas: its resampling differs from Python's)
  ctx.drawImage(source, 0, 0, width, height);
  const img = ctx.getImageData(0, 0, width, height);
  return { data: img.data, width, height };
}

/**
 * The 112x112 RGB uint8 centre crop, exactly as export/preprocess.py to_crop makes it (what
 * bundles are built from). The page no longer feeds it to the model: photos go through face
 * detection and alignment (Bundle.prepare); it stays as the JS twin of to_crop.
 *
 * 112x112 input is used as is. Anything else is center-cropped to a square (side = min(h, w),
 * offsets floor((h - side) / 2), floor((w - side) / 2)) and resized to 112x112 with bilinear
 * interpolation, align_corners=False (src = (dst + 0.5) * scale - 0.5 clamped to [0, side - 1],
 * scale = side / 112), no antialiasing, every operation in float32 (rows first, then columns:
 * a * (1 - w) + b * w), then floor(v + 0.5) clamped to 0..255. Alpha is dropped.
 *
 * @param {{data: ArrayLike<number>, width: number, height: number}} rgba
 * @returns {Uint8Array} (112, 112, 3) HWC RGB
 */
export function cropResizeRGB(rgba) {
  const { data, width: w, height: h } = rgba;
  const out = new Uint8Array(SIZE * SIZE * 3);
  if (w === SIZE && h === SIZE) {
    for (let i = 0, j = 0; i < SIZE * SIZE; i++, j += 4) {
      out[3 * i] = data[j];
      out[3 * i + 1] = data[j + 1];
      out[3 * i + 2] = data[j + 2];
    }
    return out;
  }
  const side = Math.min(w, h);
  const top = Math.floor((h - side) / 2);
  const left = Math.floor((w - side) / 2);
  const scale = f32(side / SIZE);
  // source index pairs and weights along one axis (the same for both: the crop is square)
  const i0 = new Int32Array(SIZE), i1 = new Int32Array(SIZE);
  const wt = new Float32Array(SIZE), omw = new Float32Array(SIZE);
  for (let d = 0; d < SIZE; d++) {
    let s = f32(f32(f32(d + 0.5) * scale) - 0.5);
    s = Math.min(Math.max(s, 0), side - 1);
    const a = Math.floor(s);
    i0[d] = a;
    i1[d] = Math.min(a + 1, side - 1);
    wt[d] = f32(s - a);
    omw[d] = f32(1 - wt[d]);
  }
  // vertical pass: (112, side, 3) float32 rows of the crop
  const rows = new Float32Array(SIZE * side * 3);
  for (let y = 0; y < SIZE; y++) {
    const ra = ((top + i0[y]) * w + left) * 4, rb = ((top + i1[y]) * w + left) * 4;
    const p = omw[y], q = wt[y];
    for (let x = 0; x < side; x++) {
      for (let c = 0; c < 3; c++) {
        rows[(y * side + x) * 3 + c] = f32(f32(data[ra + 4 * x + c] * p) +
                                           f32(data[rb + 4 * x + c] * q));
      }
    }
  }
  // horizontal pass, then round half up and clamp
  for (let y = 0; y < SIZE; y++) {
    for (let x = 0; x < SIZE; x++) {
      const ia = (y * side + i0[x]) * 3, ib = (y * side + i1[x]) * 3;
      const p = omw[x], q = wt[x];
      for (let c = 0; c < 3; c++) {
        const v = f32(f32(rows[ia + c] * p) + f32(rows[ib + c] * q));
        out[(y * SIZE + x) * 3 + c] = Math.min(255, Math.max(0, Math.floor(f32(v + 0.5))));
      }
    }
  }
  return out;
}

/**
 * (x - mean) / std of an (h, w, 3) uint8 crop, as float32 (1, 3, h, w) NCHW; mean and std are
 * numbers or one per channel [r, g, b] (float32, like numpy's).
 */
export function normalizeNCHW(rgb, mean, std, h = SIZE, w = SIZE) {
  const plane = h * w;
  const out = new Float32Array(3 * plane);
  const per = (v) => (Array.isArray(v) ? v.map(f32) : [f32(v), f32(v), f32(v)]);
  const m = per(mean), s = per(std);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) out[c * plane + i] = f32(f32(rgb[3 * i + c] - m[c]) / s[c]);
  }
  return out;
}

/**
 * Anything the page treats as an image, to raw RGBA: a URL (fetched with GET), a Blob/File,
 * raw {data, width, height} (a camera frame), an ImageBitmap, canvas or video element.
 */
export async function imageToRGBA(source) {
  if (typeof source === "string" || source instanceof URL) {
    const url = String(source);
    let resp;
    try {
      resp = await fetch(url);
    } catch (e) {
      throw new ImageError(`could not fetch image ${url}: ${e.message}`);
    }
    if (!resp.ok) throw new ImageError(`could not fetch image ${url}: HTTP ${resp.status}`);
    return decodeImage(await resp.blob(), url);
  }
  if (source instanceof Blob) return decodeImage(source, source.name || "the file");
  if (source && source.data && source.width && source.height) return source;
  if (typeof HTMLVideoElement !== "undefined" && source instanceof HTMLVideoElement) {
    return bitmapToRGBA(source, source.videoWidth, source.videoHeight);
  }
  if (source && typeof source.width === "number") return bitmapToRGBA(source);
  throw new ImageError("not an image: pass a URL, a File/Blob or raw RGBA pixels");
}

/** What to call an image in a message: its URL, file name, or "the camera frame". */
export function sourceLabel(source) {
  if (typeof source === "string" || source instanceof URL) {
    const u = String(source);
    return u.startsWith("data:") ? "the image" : u;
  }
  if (typeof Blob !== "undefined" && source instanceof Blob) return source.name || "the file";
  return (source && source.label) || "the camera frame";
}

// ---------------------------------------------------------------------------------------------
// Bundles

function resolveBase(url) {
  let u = String(url || "./bundle/");
  if (/bundle\.json(\?.*)?$/.test(u)) u = u.replace(/bundle\.json(\?.*)?$/, "");
  if (!u.endsWith("/")) u += "/";
  return new URL(u, globalThis.location ? globalThis.location.href : undefined);
}

async function fetchBytes(base, name) {
  const url = new URL(name, base);
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new BundleError(`missing file ${name}: could not fetch ${url} (${e.message})`);
  }
  if (!resp.ok) {
    throw new BundleError(`missing file ${name}: ${url} answered HTTP ${resp.status}`);
  }
  return new Uint8Array(await resp.arrayBuffer());
}

const isNum = (x) => typeof x === "number" && Number.isFinite(x);
const shapeStr = (s) => `[${(s || []).map((d) => (d === null ? "null" : d)).join(", ")}]`;

/** Check bundle.json against format version 1; throws BundleError naming the problem. */
function checkMeta(meta) {
  if (meta === null || typeof meta !== "object" || Array.isArray(meta)) {
    throw new BundleError("bundle.json is not a JSON object");
  }
  if (meta.format !== FORMAT) {
    throw new BundleError(
      `not a FedFR bundle: bundle.json format is ${JSON.stringify(meta.format)}, ` +
      `expected "${FORMAT}"`);
  }
  if (meta.format_version !== FORMAT_VERSION) {
    throw new BundleError(
      `unsupported bundle format version ${JSON.stringify(meta.format_version)}: ` +
      `this page reads version ${FORMAT_VERSION}`);
  }
  const inp = meta.input;
  if (!inp || typeof inp !== "object") throw new BundleError("bundle.json has no input section");
  const shape = inp.shape;
  const okShape = Array.isArray(shape) && shape.length === 4 &&
    (shape[0] === null || (Number.isInteger(shape[0]) && shape[0] > 0)) &&
    shape[1] === 3 && Number.isInteger(shape[2]) && shape[2] >= 16 && shape[2] <= 1024 &&
    Number.isInteger(shape[3]) && shape[3] >= 16 && shape[3] <= 1024;
  if (!okShape) {
    throw new BundleError(
      `wrong input shape ${shapeStr(shape)} in bundle.json: this page feeds ` +
      "[N, 3, H, W] (float32 NCHW RGB, H and W 16..1024)");
  }
  const want = { dtype: "float32", layout: "NCHW", color: "RGB" };
  for (const [k, v] of Object.entries(want)) {
    if (inp[k] !== v) {
      throw new BundleError(`unsupported input ${k} ${JSON.stringify(inp[k])} in bundle.json: ` +
                            `this page feeds ${v}`);
    }
  }
  if (typeof inp.name !== "string" || !inp.name) {
    throw new BundleError("bundle.json input.name is missing");
  }
  const okNorm = (v, pos) => (isNum(v) && (!pos || v > 0)) ||
    (Array.isArray(v) && v.length === 3 && v.every((x) => isNum(x) && (!pos || x > 0)));
  if (!okNorm(inp.mean, false) || !okNorm(inp.std, true)) {
    throw new BundleError("bundle.json input.mean/input.std must be numbers or [r, g, b] " +
                          "(std > 0)");
  }
  if (inp.alignment !== undefined) {
    const a = inp.alignment;
    const ok = a && typeof a === "object" && typeof a.name === "string" &&
      Array.isArray(a.landmarks) && a.landmarks.length === 5 &&
      a.landmarks.every((p) => Array.isArray(p) && p.length === 2 && p.every(isNum));
    if (!ok) {
      throw new BundleError("bundle.json input.alignment needs a name and 5 landmarks " +
                            "[[x, y] x5] (eyes, nose, mouth corners) in the crop's pixels");
    }
  }
  if (!meta.output || typeof meta.output.name !== "string") {
    throw new BundleError("bundle.json output.name is missing");
  }
  if (!isNum(meta.threshold)) throw new BundleError("bundle.json threshold is not a number");
  if (!Number.isInteger(meta.embedding_size) || meta.embedding_size <= 0) {
    throw new BundleError("bundle.json embedding_size is not a positive integer");
  }
  const files = meta.files;
  if (!files || typeof files !== "object") throw new BundleError("bundle.json has no files list");
  for (const [name, entry] of Object.entries(files)) {
    if (!name || name.includes("/") || name.includes("\\") || name.startsWith(".")) {
      throw new BundleError(`bundle.json lists an invalid file name ${JSON.stringify(name)}`);
    }
    if (!entry || typeof entry.sha256 !== "string" || !/^[0-9a-f]{64}$/i.test(entry.sha256) ||
        !Number.isInteger(entry.size) || entry.size < 0) {
      throw new BundleError(`bundle.json: files.${name} needs sha256 (hex) and size`);
    }
  }
  const models = meta.models || {};
  if (typeof models.fp32 !== "string") throw new BundleError("bundle.json has no models.fp32");
  for (const [kind, name] of Object.entries(models)) {
    if (!(name in files)) {
      throw new BundleError(`bundle.json: models.${kind} ${name} is not in its files list`);
    }
  }
  if (!("templates.json" in files)) {
    throw new BundleError("bundle.json: templates.json is not in its files list");
  }
}

/** L2-normalize in place (float32); returns the vector. */
export function l2normalize(v) {
  let ss = 0;
  for (let i = 0; i < v.length; i++) ss += v[i] * v[i];
  const inv = 1 / Math.sqrt(Math.max(ss, 1e-24));
  for (let i = 0; i < v.length; i++) v[i] *= inv;
  return v;
}

export function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function parseTemplates(bytes, dim) {
  let doc;
  try {
    doc = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new BundleError(`templates.json is not valid JSON (${e.message})`);
  }
  if (!doc || !Array.isArray(doc.identities)) {
    throw new BundleError("templates.json has no identities list");
  }
  if (doc.embedding_size !== dim) {
    throw new BundleError(`templates.json embedding_size ${doc.embedding_size} does not match ` +
                          `bundle.json embedding_size ${dim}`);
  }
  const seen = new Set();
  return doc.identities.map((it, i) => {
    if (!it || typeof it.name !== "string" || !it.name) {
      throw new BundleError(`templates.json identity #${i} has no name`);
    }
    if (seen.has(it.name)) throw new BundleError(`templates.json repeats identity ${it.name}`);
    seen.add(it.name);
    if (!Array.isArray(it.template) || it.template.length !== dim || !it.template.every(isNum)) {
      throw new BundleError(`templates.json: the template of ${it.name} is not ${dim} numbers`);
    }
    return {
      name: it.name,
      template: l2normalize(Float32Array.from(it.template)),
      num_images: Number.isInteger(it.num_images) ? it.num_images : null,
      source: "bundle",
    };
  });
}

/** Check that an onnxruntime session takes [N, 3, H, W] float32 (bundle.json's) and gives
 * [N, D]. */
function checkSession(session, meta, file) {
  const inName = meta.input.name, outName = meta.output.name;
  if (!session.inputNames.includes(inName)) {
    throw new BundleError(`${file} has no input "${inName}" (it has ` +
                          `${session.inputNames.join(", ")})`);
  }
  if (!session.outputNames.includes(outName)) {
    throw new BundleError(`${file} has no output "${outName}" (it has ` +
                          `${session.outputNames.join(", ")})`);
  }
  const md = (session.inputMetadata || []).find((m) => m.name === inName);
  if (md && md.isTensor) {
    const dims = md.shape || [];
    const fixed = (d, want) => typeof d !== "number" || d < 0 || d === want;
    const [, , H, W] = meta.input.shape;
    const ok = dims.length === 4 && fixed(dims[1], 3) && fixed(dims[2], H) && fixed(dims[3], W);
    if (!ok || (md.type && md.type !== "float32")) {
      throw new BundleError(
        `wrong input shape: ${file} expects "${inName}" ${md.type || ""} ` +
        `${shapeStr(dims.map((d) => (typeof d === "number" && d >= 0 ? d : "N")))}, ` +
        `but bundle.json says ${shapeStr(meta.input.shape)} (float32 [N, 3, ${H}, ${W}])`);
    }
  }
}

/**
 * A loaded, checked bundle: its metadata, templates and onnxruntime sessions.
 */
export class Bundle {
  constructor(base, meta, models, templates) {
    this.base = base;
    this.meta = meta;
    this.models = models; // kind -> {file, bytes, sha256, session|null}
    this.templates = templates; // [{name, template, num_images, source}]
    this.kind = "fp32";
  }

  get threshold() {
    return this.meta.threshold;
  }

  get kinds() {
    return Object.keys(this.models);
  }

  /** Fetch `base/bundle.json`, check the format, every listed file's size and sha256. */
  static async load(url, { onProgress = () => {} } = {}) {
    const base = resolveBase(url);
    onProgress(`fetching ${new URL("bundle.json", base)}`);
    const metaBytes = await fetchBytes(base, "bundle.json");
    let meta;
    try {
      meta = JSON.parse(new TextDecoder().decode(metaBytes));
    } catch (e) {
      throw new BundleError(`bundle.json is not valid JSON (${e.message})`);
    }
    checkMeta(meta);
    const bytes = {};
    const hashes = {};
    for (const [name, entry] of Object.entries(meta.files)) {
      onProgress(`fetching and checking ${name}`);
      const b = await fetchBytes(base, name);
      const digest = await sha256Hex(b);
      if (digest !== entry.sha256.toLowerCase()) {
        const sizes = b.length === entry.size ? ""
          : `; ${b.length} bytes, bundle.json says ${entry.size}`;
        throw new BundleError(
          `hash mismatch for ${name}: the file is damaged or was changed (sha256 ` +
          `${digest.slice(0, 12)}…, bundle.json says ${entry.sha256.slice(0, 12)}…${sizes})`);
      }
      if (b.length !== entry.size) {
        throw new BundleError(`size mismatch for ${name}: ${b.length} bytes, bundle.json says ` +
                              `${entry.size}`);
      }
      bytes[name] = b;
      hashes[name] = digest;
    }
    const templates = parseTemplates(bytes["templates.json"], meta.embedding_size);
    const models = {};
    for (const [kind, file] of Object.entries(meta.models)) {
      models[kind] = { file, bytes: bytes[file], sha256: hashes[file], session: null };
    }
    const bundle = new Bundle(base, meta, models, templates);
    bundle.metaBytes = metaBytes; // the verified bytes (app.js keeps them for offline use)
    bundle.fileBytes = bytes;
    onProgress(`loading ${meta.models.fp32} in onnxruntime-web`);
    await bundle.session("fp32");
    return bundle;
  }

  /** The onnxruntime session of model `kind` ("fp32" or "int8"), created on first use. */
  async session(kind = this.kind) {
    const m = this.models[kind];
    if (!m) {
      throw new BundleError(`this bundle has no ${kind} model (it has ${this.kinds.join(", ")})`);
    }
    if (!m.session) {
      let session;
      try {
        session = await ort.InferenceSession.create(m.bytes, {
          executionProviders: ["wasm"],
          graphOptimizationLevel: "all",
        });
      } catch (e) {
        throw new BundleError(`${m.file} is not a model onnxruntime-web can load: ` +
                              `${e.message || e}`);
      }
      try {
        checkSession(session, this.meta, m.file);
      } catch (e) {
        await session.release();
        throw e;
      }
      m.session = session;
    }
    return m.session;
  }

  async setKind(kind) {
    await this.session(kind);
    this.kind = kind;
  }

  /** The crop the model takes: {height, width}. */
  get cropSize() {
    const [, , height, width] = this.meta.input.shape;
    return { height, width };
  }

  /** The five landmarks' places in the crop (bundle.json input.alignment, else ArcFace's). */
  get template() {
    const { height, width } = this.cropSize;
    return templateFor(this.meta.input, height, width);
  }

  /**
   * The crop the model sees, as Python's device_sdk.faces.prepare_face makes it: an image of
   * exactly the crop's size is taken as an aligned crop as is ("crop") — with `checkCrops`,
   * only if ONet scores it as a face (>= CROP_FACE_SCORE; else FaceError "no face found"); any
   * other is searched
   * for faces with `detector` (an MTCNN or a function returning one): exactly one, or the one
   * numbered `face` (0-based, best score first) → aligned onto the template ("aligned"); none →
   * FaceError "no face found in LABEL"; several and no `face` → FaceError "N faces found…"
   * (its `faces` and `image` let the user pick).
   * @returns {Promise<{pixels: Uint8Array, method: string, faces: Array, face: number|null,
   *                    image: object, label: string}>}
   */
  async prepare(source, { detector = null, face = null, label = null, checkCrops = false } = {}) {
    const rgba = await imageToRGBA(source);
    const name = label || sourceLabel(source);
    const { height: H, width: W } = this.cropSize;
    const n = rgba.width * rgba.height;
    if (rgba.width === W && rgba.height === H) {
      const pixels = rgbaToRGB(rgba.data, n);
      if (checkCrops) {
        const det = typeof detector === "function" ? await detector() : detector;
        const score = await det.cropFaceScore(pixels, H, W);
        if (!(score >= CROP_FACE_SCORE)) {
          throw new FaceError(
            `no face found in ${name}: a ${W}x${H} image is taken as an aligned face crop, ` +
            `and this one does not look like one (face score ${score.toFixed(3)} < ` +
            `${CROP_FACE_SCORE}): nothing was enrolled or scored`,
            { count: 0, image: rgba, label: name });
        }
      }
      return { pixels, method: "crop", faces: [], face: null, image: rgba, label: name };
    }
    const det = typeof detector === "function" ? await detector() : detector;
    if (!det) throw new FaceError(`no face detector: ${name} is not a ${W}x${H} crop`);
    const rgb = rgbaToRGB(rgba.data, n);
    const faces = foregroundFaces(await det.detect({ rgb, width: rgba.width,
                                                      height: rgba.height }));
    if (!faces.length) {
      throw new FaceError(`no face found in ${name}: nothing was enrolled or scored`,
                          { count: 0, image: rgba, label: name });
    }
    let k = 0;
    if (face !== null && face !== undefined) {
      if (!Number.isInteger(face) || face < 0 || face >= faces.length) {
        throw new FaceError(`${name} has ${faces.length} face${faces.length === 1 ? "" : "s"}: ` +
                            `no face #${face + 1}`, { count: faces.length, faces, image: rgba,
                                                       label: name });
      }
      k = face;
    } else if (faces.length > 1) {
      throw new FaceError(`${faces.length} faces found in ${name}: tap one (or pass its ` +
                          "number)", { count: faces.length, faces, image: rgba, label: name });
    }
    const pixels = alignFace(rgb, rgba.height, rgba.width, faces[k].landmarks, this.template,
                             W, H);
    return { pixels, method: "aligned", faces, face: k, image: rgba, label: name };
  }

  /**
   * Embed one image: find and align the face (see prepare), run the model, check the output.
   * @returns {Promise<{embedding: Float32Array, pixels: Uint8Array, ms: number, preMs: number,
   *                    method: string, faces: Array, face: number|null}>}
   */
  async embed(source, options = {}) {
    const t0 = performance.now();
    const prep = await this.prepare(source, options);
    const { height, width } = this.cropSize;
    const input = normalizeNCHW(prep.pixels, this.meta.input.mean, this.meta.input.std,
                                height, width);
    const session = await this.session();
    const t1 = performance.now();
    const embedding = await this.run(session, input);
    const ms = performance.now() - t1;
    return { ...prep, embedding, ms, preMs: t1 - t0, kind: this.kind };
  }

  async run(session, input) {
    const inName = this.meta.input.name, outName = this.meta.output.name;
    const { height: H, width: W } = this.cropSize;
    const tensor = new ort.Tensor("float32", input, [1, 3, H, W]);
    let out;
    try {
      out = await session.run({ [inName]: tensor });
    } catch (e) {
      throw new BundleError(`the model failed on a [1, 3, ${H}, ${W}] float32 input ` +
                            `(wrong input shape?): ${e.message || e}`);
    }
    const y = out[outName];
    const dim = this.meta.embedding_size;
    if (!y || y.dims.length !== 2 || y.dims[0] !== 1 || y.dims[1] !== dim) {
      throw new BundleError(`the model's output "${outName}" has shape ` +
                            `${shapeStr(y && y.dims)}, expected [1, ${dim}]`);
    }
    return new Float32Array(y.data);
  }

  /** Cosine score of an embedding against every template, best first. */
  scores(embedding) {
    return this.templates
      .map((t) => ({ name: t.name, score: dot(embedding, t.template) }))
      .sort((a, b) => b.score - a.score);
  }

  find(name) {
    return this.templates.find((t) => t.name === name);
  }

  /** Add or replace a template (mean of L2-normalized embeddings, re-normalized). */
  addTemplate(name, embeddings, source = "page") {
    if (typeof name !== "string" || !name.trim()) throw new Error("enroll needs a name");
    if (!embeddings.length) throw new Error("enroll needs at least one image");
    const dim = this.meta.embedding_size;
    const mean = new Float32Array(dim);
    for (const e of embeddings) {
      const n = l2normalize(Float32Array.from(e));
      for (let i = 0; i < dim; i++) mean[i] += n[i];
    }
    const entry = { name: name.trim(), template: l2normalize(mean),
                    num_images: embeddings.length, source };
    const i = this.templates.findIndex((t) => t.name === entry.name);
    if (i >= 0) this.templates[i] = entry;
    else this.templates.push(entry);
    return entry;
  }

  removeTemplate(name) {
    this.templates = this.templates.filter((t) => t.name !== name);
  }
}
