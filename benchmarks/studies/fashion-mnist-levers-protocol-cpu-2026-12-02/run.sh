#!/usr/bin/env bash
# Three mix-step levers the earlier studies left out (issue 12 item 7), at the protocol's scale:
# the protocol of ../fashion-mnist-protocol-cpu-2026-12-01/ (10,000-image pool, 1,000 of it
# validation, ViT 3 x 64 patch 7, 10 + 10 epochs, batch 64, blr 1e-2, 5 seeds), mix only at the
# protocol's rho 0.5, paired by seed with that protocol's ssl+sl and mix runs by
# ../fashion-mnist-rho-cpu-2026-12-02/summarize.py.
#   alpha-constant0.5   a(t) held at 0.5 through the mix phase (the protocol: linear 1 -> 0)
#   layer-decay1.0      no layer-wise lr decay in the fine-tune stage (mix + SL phases; the
#                       protocol: 0.75 after pre-training, MAE's fine-tune default)
#   finetune-from-sl    the mix phase continues the pre-train optimizer (ssl blr, betas 0.95, no
#                       layer decay, one warmup + cosine over SSL + mix steps); a fresh fine-tune
#                       AdamW opens the SL phase (the protocol: it opens the mix phase)
# Then, because layer decay 1.0 looked best: the same change for ssl+sl (the control: does it
# help mix more than the baseline?) and layer decay 1.0 in the semi-supervised regime.
# Left out for time (each about 20 min here): the data-limited fraction 1.0 cells of the other
# arms and of the control, and the other arms' semi-supervised cells (finetune-from-sl lost
# clearly in the data-limited regime).
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=benchmarks/results/fashion-mnist-levers-protocol-cpu-2026-12-02
OUT=${OUT:-runs/levers-protocol-2026-12-02}
common=(--dataset fashion-mnist --train-limit 10000 --test-limit 10000 --seeds 0 1 2 3 4
    --ssl-epochs 10 --sl-epochs 10 --batch-size 64 --blr 1e-2 --ssl-blr 1e-2
    --model vit_tiny_patch16_224 --patch-size 7 --depth 3 --embed-dim 64 --num-heads 2
    --decoder-dim 64 --decoder-depth 1 --device cpu --no-progress --mix-ratio 0.5)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
declare -A ARMS=([alpha-constant0.5]="--transition constant --alpha-constant 0.5"
                 [layer-decay1.0]="--layer-decay 1.0"
                 [finetune-from-sl]="--finetune-from sl")
run() {  # arm, pipeline, regime, folder, fractions...
  local arm=$1 pipeline=$2 regime=$3 name=$4; shift 4
  local dir="$OUT/$name"
  [ -f "$dir/compare.json" ] && return
  # shellcheck disable=SC2086
  python -m mixfast compare "${common[@]}" ${ARMS[$arm]} --pipelines "$pipeline" \
      --regimes "$regime" --fractions "$@" --out "$dir"
  mkdir -p "$HERE/$name" && cp "$dir/compare.json" "$dir/compare.png" "$HERE/$name/"
}
for arm in alpha-constant0.5 layer-decay1.0 finetune-from-sl; do
  run $arm mix data-limited $arm-dl 0.05 0.1 0.25
done
run layer-decay1.0 ssl+sl data-limited control-sslsl-layer-decay1.0-dl 0.05 0.1 0.25
run layer-decay1.0 mix semi-supervised layer-decay1.0-semi 0.05 0.1 0.25
run layer-decay1.0 mix data-limited layer-decay1.0-dl-f1 1.0  # the best arm's fourth fraction
python benchmarks/studies/fashion-mnist-rho-cpu-2026-12-02/summarize.py "$HERE" \
    "a(t) constant, layer decay 1.0, fine-tune optimizer from the SL phase" > "$HERE/levers.md"
