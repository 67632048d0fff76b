#!/usr/bin/env bash
# An independent check of the demo's SL at 100 % labels: the demo's configuration (compare's
# defaults) with seeds it was never chosen or measured on (2, 3, 4); only the SL pipeline.
# Run from the repository root.
set -euo pipefail
out=benchmarks/results/fashion-mnist-demo-check-cpu-2026-12-03
python -m mixfast compare --dataset fashion-mnist --pipelines sl --fractions 1.0 \
  --seeds 2 3 4 --no-progress --out "$out/run" 2>&1 | tee "$out/compare.log"
