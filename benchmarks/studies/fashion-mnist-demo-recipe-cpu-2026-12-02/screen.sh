#!/bin/bash
# Screen of SL at 100 % labels on the demo's data (compare's defaults: an 11,000-image subset,
# 1,100 validation, 8 SL epochs), seeds 0 and 1, one setting changed at a time.
# Run from the repository root: bash benchmarks/studies/fashion-mnist-demo-recipe-cpu-2026-12-02/screen.sh
OUT=${OUT:-runs/demo-recipe}
run() {  # name, then the flags that differ from compare's defaults
  name=$1; shift
  [ -f $OUT/$name/compare.json ] && return
  python -m mixfast compare --dataset fashion-mnist --pipelines sl --fractions 1.0 --seeds 0 1 \
    --no-warmup --no-progress --out $OUT/$name "$@" > $OUT/$name.log 2>&1
}
mkdir -p $OUT
run base
run depth4 --depth 4
run w96h3 --embed-dim 96 --num-heads 3
run b32-blr2e-2 --batch-size 32 --blr 2e-2
run blr2e-2 --blr 2e-2
run ep12 --sl-epochs 12
run p4 --patch-size 4
run w128h4 --embed-dim 128 --num-heads 4
# Same sample passes over more distinct images (the SL passes of 8 epochs of 9,900 images)
run n22k-ep4 --train-limit 22000 --sl-epochs 4 --warmup-epochs 0.5
run n44k-ep2 --train-limit 44000 --sl-epochs 2 --warmup-epochs 0.25
# Larger batches: bigger matmuls run faster per image on the CPU; more epochs in the same time
# (their second seeds ran alone on the machine: compare with demo/'s SL runs, 45-47 s)
run b128-ep12 --batch-size 128 --sl-epochs 12
run b256-ep16 --batch-size 256 --sl-epochs 16
