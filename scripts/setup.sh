#!/usr/bin/env bash
# Installs everything the project needs into .venv/ (idempotent: re-runs only when
# pyproject.toml, android_demo/package-lock.json or this script changed).
#
# Debian packages: chromium (the browser android_demo/'s tests drive with Playwright; Debian's
# build, since Playwright's own browser download cannot reach its CDN). npm: android_demo/'s
# pinned onnxruntime-web (`npm ci` from its package-lock.json, with Debian's nodejs and npm).
#
# torch: the CPU wheel (torch==2.13.0) unless an NVIDIA GPU is present. A plain `torch`
# requirement on a CPU machine would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv/ with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

# Debian packages: chromium (android_demo/ tests), nodejs + npm (android_demo/'s npm install).
# Checked on every run: cheap when present.
apt_pkgs=()
command -v chromium >/dev/null 2>&1 || apt_pkgs+=(chromium)
command -v npm >/dev/null 2>&1 || apt_pkgs+=(nodejs npm)
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo)
  else
    echo "[setup] error: Debian packages ${apt_pkgs[*]} are needed and this is neither root" \
         "nor passwordless sudo; install them by hand: apt-get install ${apt_pkgs[*]}" >&2
    exit 1
  fi
  echo "[setup] installing Debian packages: ${apt_pkgs[*]}"
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${apt_pkgs[@]}"
fi

# android_demo/'s onnxruntime-web: `npm ci` when node_modules is missing or the lock changed.
lock_sha=$(sha256sum android_demo/package-lock.json | cut -d' ' -f1)
npm_stamp=android_demo/node_modules/.fedfr-lock-sha256
if [ "$(cat "$npm_stamp" 2>/dev/null)" != "$lock_sha" ]; then
  echo "[setup] npm ci in android_demo/ (onnxruntime-web)"
  (cd android_demo && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$lock_sha" > "$npm_stamp"
fi

stamp=.venv/.fedfr-setup
want=$(cat pyproject.toml android_demo/package-lock.json scripts/setup.sh | sha256sum \
  | cut -d' ' -f1)
# Real photos for the face-detection tests (not committed): two sdists' sample images and
# scikit-image's, extracted into .cache/real_photos/ (fedfr/data/realphotos.py; idempotent).
real_photos() {
  .venv/bin/python -m fedfr.data.realphotos fetch \
    || echo "[setup] warning: real photos not fetched; their tests will skip" >&2
}
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  real_photos
  exit 0
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[setup] NVIDIA GPU found: installing the CUDA build of torch"
  "${pip[@]}" install "torch>=2.2"
else
  echo "[setup] no GPU: installing the CPU build of torch"
  "${pip[@]}" install "torch==2.13.0"
fi
"${pip[@]}" install -e ".[all]"
echo "$want" > "$stamp"
real_photos
echo "[setup] done: $(.venv/bin/python -c 'import torch, fedfr; print("fedfr", fedfr.__version__, "torch", torch.__version__)')"
