#!/bin/bash
cd /work/study
export OMP_NUM_THREADS=1 MIXFAST_DISABLE_EXTENSION=1 PYTHONPATH=/work/study
R="python study/study_recipe.py --results study/runs.jsonl"
$R --case demo --tag D1-p7w64-b64-blr1e-2 --epochs 10 --batch 64 --blr 1e-2
$R --case demo --tag D2-p7w64-b64-blr2e-2 --epochs 10 --batch 64 --blr 2e-2
$R --case demo --tag D3-p7w64-b64-blr1e-2-aug0.7 --epochs 10 --batch 64 --blr 1e-2 --aug 0.7
$R --case demo --tag D4-p4w64-b64-blr1e-2-ep4 --epochs 4 --batch 64 --blr 1e-2 --patch 4
