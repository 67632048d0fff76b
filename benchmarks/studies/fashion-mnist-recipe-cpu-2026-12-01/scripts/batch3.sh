#!/bin/bash
cd /work/study
export OMP_NUM_THREADS=1 MIXFAST_DISABLE_EXTENSION=1 PYTHONPATH=/work/study
while pgrep -f "study/batch2.sh" >/dev/null; do sleep 5; done
R="python study/study_recipe.py --results study/runs.jsonl"
$R --case demo --tag D5-p7w64-b32-blr1e-2 --epochs 10 --batch 32 --blr 1e-2
$R --case demo --tag D6-p7w64-b64-blr1e-2-ls0 --epochs 10 --batch 64 --blr 1e-2 --ls 0
$R --case small --tag S1-p7w64-b32-blr1e-2-ep40 --epochs 40 --batch 32 --blr 1e-2
$R --case small --tag S2-p7w64-b32-blr1e-2-ep40-aug0.7 --epochs 40 --batch 32 --blr 1e-2 --aug 0.7
