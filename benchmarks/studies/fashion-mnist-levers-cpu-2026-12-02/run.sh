#!/usr/bin/env bash
# The mix step's levers (issue 12 item 7), on validation, CPU (2 cores).
# Each arm is one `mixfast compare` over both regimes, 4 label fractions and 5 seeds; the
# ssl+sl arm is the baseline every mix arm is paired with (same seeds, data, initial weights).
# Pool: a fixed stratified 3,000-image Fashion-MNIST training subset, 300 (10 %) of it
# validation, 2,700 the training pool; model and recipe as the protocol
# (../fashion-mnist-protocol-cpu-2026-12-01/) but 6 SSL + 6 SL epochs, so that 4 arms fit in
# about 40 minutes of a shared 2-core machine. Test top-1 is recorded by every run but the
# summary reads validation.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-runs/levers-2026-12-02}
COMMON=(--dataset fashion-mnist --train-limit 3000 --test-limit 10000
    --regimes data-limited semi-supervised --fractions 0.05 0.1 0.25 1.0 --seeds 0 1 2 3 4
    --ssl-epochs 6 --sl-epochs 6 --batch-size 64 --blr 1e-2 --ssl-blr 1e-2
    --model vit_tiny_patch16_224 --patch-size 7 --depth 3 --embed-dim 64 --num-heads 2
    --decoder-dim 64 --decoder-depth 1 --device cpu --no-progress --resume)
arm() {  # arm NAME PIPELINES... -- FLAGS...
    local name=$1; shift
    local pipelines=()
    while [[ $1 != -- ]]; do pipelines+=("$1"); shift; done; shift
    echo "== $name: ${pipelines[*]} $*" >&2
    OMP_NUM_THREADS=2 python -m mixfast compare "${COMMON[@]}" --pipelines "${pipelines[@]}" \
        --out "$OUT/$name" "$@"
}
arm base ssl+sl mix --
arm masked-view mix -- --sl-view masked
arm rho-1 mix -- --mix-ratio 1.0
arm cosine mix -- --transition cosine
python benchmarks/studies/fashion-mnist-levers-cpu-2026-12-02/summarize.py "$OUT" \
    > benchmarks/results/fashion-mnist-levers-cpu-2026-12-02/levers.md
for d in "$OUT"/*/; do
    mkdir -p "benchmarks/results/fashion-mnist-levers-cpu-2026-12-02/$(basename "$d")"
    cp "$d/compare.json" "benchmarks/results/fashion-mnist-levers-cpu-2026-12-02/$(basename "$d")/"
done
