#!/usr/bin/env bash
# Installs everything the project needs into .venv/ (idempotent: re-runs only when
# pyproject.toml or this script changed). Debian packages: none needed yet.
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
stamp=.venv/.fedfr-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
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
echo "[setup] done: $(.venv/bin/python -c 'import torch, fedfr; print("fedfr", fedfr.__version__, "torch", torch.__version__)')"
