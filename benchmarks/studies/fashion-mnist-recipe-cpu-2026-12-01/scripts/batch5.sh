#!/bin/bash
cd /work/study
export OMP_NUM_THREADS=1 MIXFAST_DISABLE_EXTENSION=1 PYTHONPATH=/work/study
while pgrep -f "study/batch4.sh" >/dev/null; do sleep 3; done
R="python study/study_recipe.py --results study/runs.jsonl"
$R --case demo --tag D7-p7w64-b64-blr1e-2-ep15 --epochs 15 --batch 64 --blr 1e-2
