#!/usr/bin/env bash
# The comparison protocol on Fashion-MNIST, CPU (2 cores): both regimes, 4 label fractions,
# 5 seeds, 3 pipelines (semi-supervised at fraction 1 is the data-limited run, left out).
# Pool: a fixed stratified 10,000-image training subset; 1,000 of it (10 %) is the validation
# split, the other 9,000 the training pool; the full 10,000-image test split is read once per
# run. Model: ViT 3 blocks x width 64, 2 heads, patch 7 on 28x28 (16 patches), MAE decoder
# 64 x 1; 10 SSL + 10 SL epochs, mix ratio 0.5 (5 mix epochs), batch 64, base lr 1e-2 for both
# stages (the recipe of ../fashion-mnist-recipe-cpu-2026-12-01/), no augmentation.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-runs/protocol-2026-12-01}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} python -m mixfast compare --dataset fashion-mnist \
    --train-limit 10000 --test-limit 10000 \
    --regimes data-limited semi-supervised --fractions 0.05 0.1 0.25 1.0 --seeds 0 1 2 3 4 \
    --ssl-epochs 10 --sl-epochs 10 --mix-ratio 0.5 --batch-size 64 --blr 1e-2 --ssl-blr 1e-2 \
    --model vit_tiny_patch16_224 --patch-size 7 --depth 3 --embed-dim 64 --num-heads 2 \
    --decoder-dim 64 --decoder-depth 1 --device cpu --no-progress --out "$OUT" "$@"
cp "$OUT/compare.json" "$OUT/compare.png" benchmarks/results/fashion-mnist-protocol-cpu-2026-12-01/
