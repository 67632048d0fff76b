#!/usr/bin/env bash
# The lever screen's winner (rho 1: the whole budget a mix phase) at the protocol's scale:
# the protocol of ../fashion-mnist-protocol-cpu-2026-12-01/ (10,000-image pool, 1,000 of it
# validation, ViT 3 x 64 patch 7, 10 + 10 epochs, batch 64, blr 1e-2, 5 seeds, 4 fractions), mix
# only, paired by seed with that protocol's ssl+sl and mix (rho 0.5) runs by summarize.py.
# data-limited: rho 1 (10 mix epochs). semi-supervised: rho 0.9 (9 mix epochs), the most mix
# that leaves the SSL-only epoch the larger SSL pool's extra passes need (rho 1 is refused
# there since 2026-12-02); fraction 1 is the data-limited run again, left out.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=benchmarks/results/fashion-mnist-rho-cpu-2026-12-02
OUT=${OUT:-runs/rho-2026-12-02}
common=(--dataset fashion-mnist --train-limit 10000 --test-limit 10000 --seeds 0 1 2 3 4
    --ssl-epochs 10 --sl-epochs 10 --batch-size 64 --blr 1e-2 --ssl-blr 1e-2
    --model vit_tiny_patch16_224 --patch-size 7 --depth 3 --embed-dim 64 --num-heads 2
    --decoder-dim 64 --decoder-depth 1 --device cpu --no-progress --pipelines mix)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python -m mixfast compare "${common[@]}" --regimes data-limited --fractions 0.05 0.1 0.25 1.0 \
    --mix-ratio 1.0 --out "$OUT/rho1-data-limited" "$@"
python -m mixfast compare "${common[@]}" --regimes semi-supervised --fractions 0.05 0.1 0.25 \
    --mix-ratio 0.9 --out "$OUT/rho0.9-semi-supervised" "$@"
for arm in rho1-data-limited rho0.9-semi-supervised; do
    mkdir -p "$HERE/$arm" && cp "$OUT/$arm/compare.json" "$OUT/$arm/compare.png" "$HERE/$arm/"
done
python benchmarks/studies/fashion-mnist-rho-cpu-2026-12-02/summarize.py "$HERE" > "$HERE/rho.md"
