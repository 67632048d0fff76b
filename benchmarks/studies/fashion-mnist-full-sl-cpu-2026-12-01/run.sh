#!/usr/bin/env bash
# SL on the full Fashion-MNIST training set with the recipe of
# ../fashion-mnist-recipe-cpu-2026-12-01/ (which reached 90.1 % val / 89.2 % test at 20 epochs,
# val still rising): 40 epochs, warmup 10 %. 5,000 validation images (500 per class) carved from
# the 60,000; 55,000 train; the 10,000 test images read once at the end.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-runs/full-sl-2026-12-01}
python -m mixfast train --pipeline sl --dataset fashion-mnist --sl-epochs 40 --warmup-epochs 4 \
    --batch-size 64 --blr 1e-2 --patch-size 7 --depth 3 --embed-dim 64 --num-heads 2 \
    --device cpu --no-progress --out "$OUT" "$@"
mkdir -p benchmarks/results/fashion-mnist-full-sl-cpu-2026-12-01
cp "$OUT/result.json" "$OUT/config.json" "$OUT/metrics.jsonl" "$OUT/data.json" \
    benchmarks/results/fashion-mnist-full-sl-cpu-2026-12-01/
