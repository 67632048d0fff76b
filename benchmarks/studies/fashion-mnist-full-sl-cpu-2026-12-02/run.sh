#!/usr/bin/env bash
# SL on the full Fashion-MNIST training set with the recipe of
# ../fashion-mnist-recipe-cpu-2026-12-01/ (90.1 % val / 89.2 % test at 20 epochs, val still
# rising): EPOCHS epochs (default 44: about 27 min), warmup 10 % of them. 5,000 validation images (500 per
# class) carved from the 60,000; 55,000 train; the 10,000 test images read once at the end.
# 2 CPU threads.
set -euo pipefail
cd "$(dirname "$0")/../../.."
EPOCHS=${EPOCHS:-44}
OUT=${OUT:-runs/full-sl-2026-12-02}
OMP_NUM_THREADS=2 /usr/bin/time -v python -m mixfast train --pipeline sl --dataset fashion-mnist \
    --sl-epochs "$EPOCHS" --warmup-epochs "$((EPOCHS / 10))" \
    --batch-size 64 --blr 1e-2 --patch-size 7 --depth 3 --embed-dim 64 --num-heads 2 \
    --device cpu --no-progress --out "$OUT" "$@" 2> >(tee "$OUT.stderr" >&2)
cp "$OUT/result.json" "$OUT/config.json" "$OUT/metrics.jsonl" "$OUT/data.json" \
    benchmarks/results/fashion-mnist-full-sl-cpu-2026-12-02/
