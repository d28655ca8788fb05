#!/usr/bin/env bash
# The main job on its embedded default: install into .venv/, then run the whole product end to
# end (python -m device_sdk.demo): synthesize the tiny data set, pretrain the generic model,
# start the aggregator, run the device processes for the federated rounds over HTTP, export and
# verify every device's recognizer, print the table. Extra arguments go to the demo
# (e.g. --devices 2 --rounds 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m device_sdk.demo --workdir "${FEDFR_WORKDIR:-runs/demo}" "$@"
