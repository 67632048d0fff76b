#!/usr/bin/env bash
cd "$(dirname "$0")/../../../.."  # the repository root
uptime
OUT=runs/full-sl-augment-idle-2026-12-02
OMP_NUM_THREADS=2 /usr/bin/time -v python -m mixfast train --pipeline sl --dataset fashion-mnist \
    --sl-epochs 40 --warmup-epochs 4 --augment --augment-scale 0.8 \
    --batch-size 64 --blr 1e-2 --patch-size 7 --depth 3 --embed-dim 64 --num-heads 2 \
    --device cpu --no-progress --out "$OUT" > /tmp/rerun.out 2> /tmp/rerun.err
echo "rc=$?"; uptime
