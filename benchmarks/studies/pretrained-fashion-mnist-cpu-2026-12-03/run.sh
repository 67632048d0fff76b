#!/usr/bin/env bash
# Issue 25, item 4: start from weights pre-trained on other images, against from scratch; and
# the fine-tune recipe (mixup + cutmix, EMA) from those weights. CPU, Fashion-MNIST, compare's
# tiny recipe (ViT 3 x 64, 2 heads, patch 7, MAE decoder 64 x 1, blr = ssl_blr = 1e-2, the
# automatic budget: >= 750 SL steps, SSL half of that).
#  1. pre-train: MAE on classes 0-4 (every training image of them: 27,500, and 2,500 for
#     validation), PRETRAIN_EPOCHS SSL epochs at batch 128. mixfast has no SSL-only pipeline
#     (sl_epochs >= 1), so the run is ssl+sl with one SL epoch at blr 1e-9 (AdamW steps of
#     ~5e-10: the SSL weights). make_weights.py writes its encoder + decoder without the head
#     (when the study ran, a head of classes 0-4 loaded into a run of classes 5-9 by its count;
#     now --pretrained-head auto leaves it fresh: last.pt names its classes).
#  2. compare on classes 5-9, data-limited, fractions 0.1 and 1.0, TRAIN_LIMIT images of the
#     whole set (half of them classes 5-9; 10 % of those validation): from scratch ("scratch")
#     and from the weights ("weights"), sl / ssl+sl / mix, the same seeds.
#  3. the SL pipeline from the weights with --mixup 0.8 --cutmix 1.0 ("weights-mixup") and with
#     --model-ema --model-ema-decay D for each D of EMA_DECAYS ("weights-ema<D>"; 0.99 and 0.995
#     average over ~100 and ~200 of the ~750 steps, docs/recipe.md). The plain recipe is the
#     "weights" compare's sl runs (same seeds, same start); table.py pairs them.
# Seeds go in passes: every compare gets the first seed, then the first two, ... (compare
# --resume reuses the finished runs), so a stopped study has the same seeds everywhere.
# Resumable: a finished compare folder is skipped, a stopped one continues (--resume), the
# pre-training continues from its last.pt (--resume auto). One thread per run (a shared CPU).
# Pilot (3 seeds; on the shared 2-core machine: pre-training 4 min, then ~11 min a seed):
#   bash benchmarks/studies/pretrained-fashion-mnist-cpu-2026-12-03/run.sh
# The issue's study (5 seeds, ~1 h from nothing; continues the pilot's runs when OUT is the same):
#   SEEDS="0 1 2 3 4" bash benchmarks/studies/pretrained-fashion-mnist-cpu-2026-12-03/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
NAME=pretrained-fashion-mnist-cpu-2026-12-03
STUDY=benchmarks/studies/$NAME
HERE=${HERE:-benchmarks/results/$NAME}
OUT=${OUT:-runs/pretrained}
SEEDS=${SEEDS:-0 1 2}
TRAIN_LIMIT=${TRAIN_LIMIT:-10000}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-30}
EMA_DECAYS=${EMA_DECAYS:-0.99 0.995}
export OMP_NUM_THREADS=1
mkdir -p "$OUT" "$HERE"
model=(--depth 3 --embed-dim 64 --num-heads 2 --decoder-dim 64 --decoder-depth 1)

# 1. pre-train on classes 0-4
if [ ! -f "$OUT/pretrain/result.json" ]; then
    /usr/bin/time -f "%e s" python -m mixfast train --dataset fashion-mnist \
        --task name=classes0-4,classes=0-4 --train-limit 60000 --fraction 1.0 \
        --pipeline ssl+sl --ssl-epochs "$PRETRAIN_EPOCHS" --sl-epochs 1 --batch-size 128 \
        --ssl-blr 1e-2 --blr 1e-9 "${model[@]}" --seed 0 --recon-every "$PRETRAIN_EPOCHS" \
        --no-progress --resume auto --out "$OUT/pretrain" >> "$OUT/pretrain.log" 2>&1
fi
WEIGHTS=$OUT/pretrain-weights.pt
[ -f "$WEIGHTS" ] || python "$STUDY/make_weights.py" "$OUT/pretrain/last.pt" "$WEIGHTS" \
    >> "$OUT/pretrain.log"

# 2-3. the compares, in seed passes
common=(--dataset fashion-mnist --task name=classes5-9,classes=5-9 --train-limit "$TRAIN_LIMIT"
    --fractions 0.1 1.0 --regimes data-limited "${model[@]}" --recon-every 0 --no-progress)
finished() {  # compare.json with its summary, made with these seeds first (or just these)
    python - "$1" "${@:2}" <<'PY'
import json, sys
try:
    report = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    sys.exit(1)
want = [int(s) for s in sys.argv[2:]]
sys.exit(0 if "summary" in report and report["seeds"][: len(want)] == want else 1)
PY
}
run_compare() {  # name, then flags
    local name=$1 resume=()
    shift
    finished "$OUT/$name/compare.json" "${now[@]}" && return 0
    [ -d "$OUT/$name" ] && resume=(--resume)
    echo "$(date -u +%H:%M:%S) $name seeds ${now[*]}" >> "$OUT/$name.log"
    /usr/bin/time -f "%e s" python -m mixfast compare "${resume[@]}" "${common[@]}" \
        --seeds "${now[@]}" --out "$OUT/$name" "$@" >> "$OUT/$name.log" 2>&1
}
read -ra seeds <<< "$SEEDS"
arms=(scratch weights weights-mixup)
for decay in $EMA_DECAYS; do arms+=("weights-ema$decay"); done
for n in $(seq 1 "${#seeds[@]}"); do
    now=("${seeds[@]:0:n}")
    run_compare scratch
    run_compare weights --pretrained-path "$WEIGHTS"
    run_compare weights-mixup --pipelines sl --pretrained-path "$WEIGHTS" --mixup 0.8 --cutmix 1.0
    for decay in $EMA_DECAYS; do
        run_compare "weights-ema$decay" --pipelines sl --pretrained-path "$WEIGHTS" --model-ema \
            --model-ema-decay "$decay"
    done
done

# what is kept: never last.pt, .dcp folders or the weights file
keep() {  # run folder -> results folder
    mkdir -p "$2"
    for f in result.json metrics.jsonl config.json data.json recon-last.png; do
        [ -f "$1/$f" ] && cp "$1/$f" "$2/"
    done
    return 0
}
keep "$OUT/pretrain" "$HERE/pretrain"
cp "$OUT/pretrain.log" "$HERE/"
for arm in "${arms[@]}"; do
    [ -f "$OUT/$arm/compare.json" ] || continue
    mkdir -p "$HERE/$arm"
    cp "$OUT/$arm/compare.json" "$OUT/$arm.log" "$HERE/$arm/"
    [ -f "$OUT/$arm/compare.png" ] && cp "$OUT/$arm/compare.png" "$HERE/$arm/"
    for run in "$OUT/$arm"/*/; do
        keep "$run" "$HERE/$arm/$(basename "$run")"
    done
done
python "$STUDY/table.py" "$HERE" > "$HERE/tables.md"
