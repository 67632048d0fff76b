#!/usr/bin/env bash
# What the head rule changes on real data: a head trained on other classes of the same count,
# loaded (the count rule: --pretrained-head keep, --pretrained-path's only rule before
# 2026-12-03) or left fresh (--pretrained-head auto: last.pt names classes 0-4, the run 5-9).
#  1. SL on Fashion-MNIST classes 0-4 (--train-limit 10000: 4,500 training images, 500
#     validation), compare's tiny model and recipe, the automatic budget: a trained 5-class head.
#  2. compare --pipelines sl on classes 5-9, 10 % labels (450 images), from that last.pt, once
#     with --pretrained-head keep and once with auto, the same seeds: the encoder and the budget
#     are the same, only head 0's start differs (loaded vs the seed's fresh init).
# table.py pairs them by seed: validation and test top-1 at the end and after the first epoch.
# Resumable (a finished step is skipped); one thread per run. About 5 min on the 2-core CPU.
#   bash benchmarks/studies/head-rule-fashion-mnist-cpu-2026-12-03/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
NAME=head-rule-fashion-mnist-cpu-2026-12-03
STUDY=benchmarks/studies/$NAME
HERE=${HERE:-benchmarks/results/$NAME}
OUT=${OUT:-runs/head-rule}
SEEDS=${SEEDS:-0 1 2 3 4}
export OMP_NUM_THREADS=1
mkdir -p "$OUT" "$HERE"
model=(--depth 3 --embed-dim 64 --num-heads 2 --decoder-dim 64 --decoder-depth 1)
data=(--dataset fashion-mnist --train-limit 10000)

if [ ! -f "$OUT/first/result.json" ]; then
    python -m mixfast train "${data[@]}" --task name=classes0-4,classes=0-4 --fraction 1.0 \
        --pipeline sl --blr 1e-2 "${model[@]}" --seed 0 --no-progress --resume auto \
        --out "$OUT/first" > "$OUT/first.log" 2>&1
fi
read -ra seeds <<< "$SEEDS"
for rule in keep auto; do
    [ -f "$OUT/$rule/compare.json" ] && continue
    resume=()
    [ -d "$OUT/$rule" ] && resume=(--resume)
    python -m mixfast compare "${resume[@]}" "${data[@]}" --task name=classes5-9,classes=5-9 \
        --fractions 0.1 --pipelines sl --seeds "${seeds[@]}" "${model[@]}" --recon-every 0 \
        --no-progress --pretrained-path "$OUT/first/last.pt" --pretrained-head "$rule" \
        --out "$OUT/$rule" > "$OUT/$rule.log" 2>&1
done

# kept: never last.pt
for run in "$OUT/first" "$OUT"/keep/*/ "$OUT"/auto/*/; do
    dest="$HERE/${run#"$OUT"/}"
    mkdir -p "$dest"
    for f in result.json metrics.jsonl config.json data.json; do
        [ -f "$run/$f" ] && cp "$run/$f" "$dest/"
    done
done
for rule in keep auto; do cp "$OUT/$rule/compare.json" "$OUT/$rule.log" "$HERE/$rule/"; done
cp "$OUT/first.log" "$HERE/"
python "$STUDY/table.py" "$HERE" > "$HERE/table.md"
