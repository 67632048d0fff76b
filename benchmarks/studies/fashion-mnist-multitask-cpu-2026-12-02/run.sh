#!/usr/bin/env bash
# Multi-task MixTraining (issue 17) on Fashion-MNIST, CPU (2 cores), validation-read, 5 seeds.
# Setting "coarse": two label sets over the same images: the 10 classes and a coarse grouping
# (coarse.json: tops = T-shirt, pullover, dress, coat, shirt; bottoms = trouser; footwear =
# sandal, sneaker, ankle boot; bags = bag), both at the cell's label fraction (0.1 and 1.0).
# Setting "halves": two tasks on disjoint halves of the classes (0-4 and 5-9) with different
# label fractions (0.1 and 0.5; --fractions 1.0 is then only the run-name label).
# Pool: the 3,000-image stratified subset of the lever study (300 validation, 2,700 training),
# same model and recipe, 6 SSL + 6 SL epochs, data-limited regime.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=benchmarks/results/fashion-mnist-multitask-cpu-2026-12-02
OUT=${OUT:-runs/multitask-2026-12-02}
COMMON=(--dataset fashion-mnist --train-limit 3000 --test-limit 10000 --seeds 0 1 2 3 4
    --ssl-epochs 6 --sl-epochs 6 --batch-size 64 --blr 1e-2 --ssl-blr 1e-2
    --model vit_tiny_patch16_224 --patch-size 7 --depth 3 --embed-dim 64 --num-heads 2
    --decoder-dim 64 --decoder-depth 1 --device cpu --no-progress --resume)
OMP_NUM_THREADS=2 python -m mixfast compare "${COMMON[@]}" --fractions 0.1 1.0 \
    --task name=fine --task "name=coarse,groups=$HERE/coarse.json" --out "$OUT/coarse"
OMP_NUM_THREADS=2 python -m mixfast compare "${COMMON[@]}" --fractions 1.0 \
    --task name=low,classes=0-4,fraction=0.1 --task name=high,classes=5-9,fraction=0.5 \
    --out "$OUT/halves"
for setting in coarse halves; do
    mkdir -p "$HERE/$setting"
    cp "$OUT/$setting/compare.json" "$OUT/$setting/compare.png" "$HERE/$setting/"
done
