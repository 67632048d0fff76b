#!/bin/bash
cd /work/study
export OMP_NUM_THREADS=1 MIXFAST_DISABLE_EXTENSION=1 PYTHONPATH=/work/study
R="python study/study_recipe.py --results study/runs.jsonl"
$R --case full --tag F1-p7w64d3-b64-blr1e-2-ep20 --epochs 20 --batch 64 --blr 1e-2
