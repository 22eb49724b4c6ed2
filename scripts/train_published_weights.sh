#!/usr/bin/env bash
# The published weights: the paper's configuration (20 epochs, batch 64, seed 0) on the CPU, the reference path and
# the fast path, each run's record written where the scorecard reads it and its weights beside it under
# results/weights/ (the record names the file and its SHA-256). Then each file is evaluated against its record.
# Run it in a quiet window (no other process): the records hold training times. About 2 x 20 epochs on the CPU.
#
#   bash scripts/train_published_weights.sh            # results/cpu-{reference,fast}-e20-b64-seed0.json + .pt
#   MAX_STEPS=50 OUT_DIR=/tmp/w bash scripts/train_published_weights.sh   # a quick check of the whole script
#
# DEVICE (cpu), SEED (0), PATHS ("reference fast"), OUT_DIR (results), MAX_STEPS (unset) override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cpu}"
SEED="${SEED:-0}"
PATHS="${PATHS:-reference fast}"
OUT_DIR="${OUT_DIR:-results}"
export HDR_SESSION="${HDR_SESSION:-published-weights $(date -u +%Y-%m-%dT%H:%M:%SZ)}"
steps=()
[[ -n "${MAX_STEPS:-}" ]] && steps=(--max-steps "$MAX_STEPS")
mkdir -p "$OUT_DIR/weights"
for path in $PATHS; do
    stem="$DEVICE-$path-e20-b64-seed$SEED"
    python -m hdr_lib train --device "$DEVICE" --path "$path" --seed "$SEED" --epochs 20 --batch-size 64 --quiet \
        "${steps[@]}" --out "$OUT_DIR/$stem.json" --weights-out "$OUT_DIR/weights/$stem.pt"
done
for path in $PATHS; do
    python -m hdr_lib evaluate --weights "$OUT_DIR/weights/$DEVICE-$path-e20-b64-seed$SEED.pt" --results "$OUT_DIR"
done
