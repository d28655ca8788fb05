#!/usr/bin/env bash
# The main job on its embedded default: install into .venv/, then synthesize the tiny data set,
# pretrain a small model briefly, evaluate it and print the table. Extra arguments go to
# `fedfr demo` (e.g. --profile small --epochs 30).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fedfr demo --workdir "${FEDFR_WORKDIR:-runs/demo}" "$@"
