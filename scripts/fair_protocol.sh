#!/usr/bin/env bash
# The fair protocol on 2 CPU cores (docs/RESULTS.md): every method and both controls on the
# `fair` profile, hyperparameters chosen per method on the validation data set (seed 1000),
# test seeds 0 and 1, paired statistics. Two single-thread processes share the work:
#   A: the selection on the validation data set, then seed 0;
#   B: seed 1's data and pretraining meanwhile, then seed 1 once the selection is done.
# Finished (seed, method) and selection runs are kept in OUT and reused by a rerun.
#
#   bash scripts/fair_protocol.sh [OUT] [extra fedfr simulate args, e.g. --domain-strength 1]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fair}
shift || true
FEDFR=${FEDFR:-.venv/bin/fedfr}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
common=(--profile fair --methods all --out "$OUT" --device cpu "$@")

"$FEDFR" simulate "${common[@]}" --select --seeds 0 >"$OUT/log-a.txt" 2>&1 &
a=$!
# B: prepares seed 1 (data, pretraining, the pretrained model's evaluation) ...
"$FEDFR" simulate "${common[@]}" --methods pretrained --seeds 1 >"$OUT/log-b.txt" 2>&1
# ... then waits for A's selection (seed 0 starts after it) ...
while kill -0 "$a" 2>/dev/null && [ ! -f "$OUT/seeds/seed-0/pretrained.json" ]; do sleep 20; done
"$FEDFR" simulate "${common[@]}" --select --seeds 1 >>"$OUT/log-b.txt" 2>&1
wait "$a"
# The table over both seeds (reuses every finished run).
"$FEDFR" simulate "${common[@]}" --select --seeds 0,1 >"$OUT/table.txt" 2>&1
echo "wrote $OUT/results.json, results.md ($(date -u +%FT%TZ))"
