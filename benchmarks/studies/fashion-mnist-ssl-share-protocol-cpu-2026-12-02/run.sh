#!/usr/bin/env bash
# The SSL:SL sub-batch ratio of the mix step (issue 12 item 7's last lever), at the protocol's
# scale: the protocol of ../fashion-mnist-protocol-cpu-2026-12-01/ (10,000-image pool, 1,000 of
# it validation, ViT 3 x 64 patch 7, 10 + 10 epochs, batch 64, blr 1e-2, rho 0.5, 5 seeds), mix
# only, paired by seed with that protocol's ssl+sl and mix runs by
# ../fashion-mnist-rho-cpu-2026-12-02/summarize.py.
#   ssl-share0.5    a mix step's SSL sub-batch is half the batch (32 of 64 images); the SSL
#                   passes it does not make go to the SSL phase (equal passes per objective)
#   ssl-share0.25   a quarter (16 of 64)
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=benchmarks/results/fashion-mnist-ssl-share-protocol-cpu-2026-12-02
OUT=${OUT:-runs/ssl-share-protocol-2026-12-02}
common=(--dataset fashion-mnist --train-limit 10000 --test-limit 10000 --seeds 0 1 2 3 4
    --ssl-epochs 10 --sl-epochs 10 --batch-size 64 --blr 1e-2 --ssl-blr 1e-2
    --model vit_tiny_patch16_224 --patch-size 7 --depth 3 --embed-dim 64 --num-heads 2
    --decoder-dim 64 --decoder-depth 1 --device cpu --no-progress --mix-ratio 0.5)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
run() {  # share, regime, folder, fractions...
  local share=$1 regime=$2 name=$3; shift 3
  local dir="$OUT/$name"
  [ -f "$dir/compare.json" ] && return
  python -m mixfast compare "${common[@]}" --ssl-share "$share" --pipelines mix \
      --regimes "$regime" --fractions "$@" --out "$dir"
  mkdir -p "$HERE/$name" && cp "$dir/compare.json" "$dir/compare.png" "$HERE/$name/"
}
run 0.5 data-limited ssl-share0.5-dl 0.05 0.1 0.25
run 0.5 semi-supervised ssl-share0.5-semi 0.05 0.1 0.25
run 0.25 data-limited ssl-share0.25-dl 0.05 0.1 0.25
run 0.5 data-limited ssl-share0.5-dl-f1 1.0
python benchmarks/studies/fashion-mnist-rho-cpu-2026-12-02/summarize.py "$HERE" \
    "the SSL share of a mix step's batch" > "$HERE/ssl-share.md"
