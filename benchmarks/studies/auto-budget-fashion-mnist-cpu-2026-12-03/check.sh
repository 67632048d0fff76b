#!/bin/bash
# The acceptance command with compare's defaults (the automatic budget): every run at
# >= 60 % test top-1, and "inconclusive" instead of a verdict from two seeds. Then the rule once
# on the full training set (60,000 images, one seed). One thread per run (a shared machine).
# Run from the repository root:
#   bash benchmarks/studies/auto-budget-fashion-mnist-cpu-2026-12-03/check.sh
OUT=${OUT:-runs/auto-budget-check}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
[ -f "$OUT/n1500/compare.json" ] || /usr/bin/time -f "%e s" python -m mixfast compare \
  --dataset fashion-mnist --train-limit 1500 --fractions 1.0 --seeds 0 1 --no-progress \
  --out "$OUT/n1500" > "$OUT/n1500.log" 2>&1
[ -f "$OUT/full/compare.json" ] || /usr/bin/time -f "%e s" python -m mixfast compare \
  --dataset fashion-mnist --train-limit 60000 --fractions 1.0 --seeds 0 --no-progress \
  --out "$OUT/full" > "$OUT/full.log" 2>&1
