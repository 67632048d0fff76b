#!/bin/bash
# Screen for compare's automatic budget (issue 26): SL at 100 % labels on Fashion-MNIST subsets
# of 1,500, 5,000 and 15,000 images (10 % of each carved as validation), seeds 0-2, compare's
# recipe (ViT 3 x 64, 2 heads, patch 7, blr 1e-2, no augmentation), with the optimizer-step
# budget S in {375, 750, 1500} at the batch size the fitted-batch rule gives (the largest
# power of two <= 128 leaving >= 16 steps per epoch: 64 at 1,500 images, 128 above), plus batch
# 128 at 1,500 images at the passes of S = 1500. (S = 3000 and batch 32 were planned and cut:
# the machine was shared and slow.) Epochs = round(S / steps per epoch).
# Choices are read on validation; test top-1 is read once per run. One thread per run: the
# machine was shared with other work, and oversubscribed threads made steps 20x slower.
# Run from the repository root:
#   bash benchmarks/studies/auto-budget-fashion-mnist-cpu-2026-12-03/screen.sh
OUT=${OUT:-runs/auto-budget}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
run() {  # name, then compare flags; a stopped screen continues where it was (--resume)
  name=$1; shift
  grep -q '"summary"' "$OUT/$name/compare.json" 2>/dev/null && return
  resume=(); [ -d "$OUT/$name" ] && resume=(--resume)
  /usr/bin/time -f "%e s" python -m mixfast compare "${resume[@]}" --dataset fashion-mnist --pipelines sl \
    --fractions 1.0 --seeds 0 1 2 --no-warmup --no-progress --out "$OUT/$name" "$@" \
    >> "$OUT/$name.log" 2>&1
}
# n=1,500: 1,350 training images; batch 64 -> 21 steps per epoch
run n1500-b64 --train-limit 1500 --batch-size 64 --budgets 18 36 71
run n1500-b128 --train-limit 1500 --batch-size 128 --budgets 71
# n=5,000: 4,500 training images; batch 128 -> 35 steps per epoch
run n5000-b128 --train-limit 5000 --batch-size 128 --budgets 11 21 43
# n=15,000: 13,500 training images; batch 128 -> 105 steps per epoch
run n15000-b128 --train-limit 15000 --batch-size 128 --budgets 4 7 14
