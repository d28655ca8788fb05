#!/usr/bin/env bash
# The fair protocol on 2 CPU cores (docs/RESULTS.md): every method and both controls on the
# `fair` profile, lr and BatchNorm policy chosen per method on the validation data set (seed
# 1000), test seeds 0 and 1, paired statistics. Two single-thread processes share the work:
#   A: the selection from the first method on, then seed 0;
#   B: seed 1's data and pretraining, then the selection from the last method backwards and
#      seed 1 for those methods, then seed 1's other methods once A's selection is done.
# Every finished (seed, method) and (method, grid point) run is kept in OUT and reused, so a
# rerun resumes (a point both processes reach at once is computed twice, never corrupted).
#
#   bash scripts/fair_protocol.sh [OUT] [extra fedfr simulate args, e.g. --domain-strength 1]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fair}
shift || true
extra=("$@")
FEDFR=${FEDFR:-.venv/bin/fedfr}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
sim() { "$FEDFR" simulate --profile fair --out "$OUT" --device cpu "$@"; }
BACK=centralized,public_more,fedfr_emb,fedfr,fedprox,fedavg_public

sim --methods all --select --seeds 0 "${extra[@]}" >"$OUT/log-a.txt" 2>&1 &
a=$!
{
  sim --methods pretrained --seeds 1 "${extra[@]}"
  # the validation data set's model comes from A: wait for it rather than train it twice
  until ls "$OUT"/pretrained/*seed1000* >/dev/null 2>&1 || ! kill -0 "$a" 2>/dev/null; do
    sleep 15; done
  sim --methods "$BACK" --select --seeds 1 "${extra[@]}"
  # the rest of seed 1 needs A's part of the selection (done when seed 0 has started)
  until [ -f "$OUT/seeds/seed-0/pretrained.json" ] || ! kill -0 "$a" 2>/dev/null; do
    sleep 15; done
  sim --methods all --select --seeds 1 "${extra[@]}"
} >"$OUT/log-b.txt" 2>&1
wait "$a"
sim --methods all --select --seeds 0,1 "${extra[@]}" >"$OUT/table.txt" 2>&1
echo "wrote $OUT/results.json, results.md ($(date -u +%FT%TZ))"
