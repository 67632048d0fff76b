#!/bin/bash
cd /work/study
export OMP_NUM_THREADS=1 MIXFAST_DISABLE_EXTENSION=1 PYTHONPATH=/work/study
R="python study/study_recipe.py --results study/runs.jsonl"
$R --case demo --tag D8-p7w96h3d3-b64-blr1e-2-ep8 --epochs 8 --batch 64 --blr 1e-2 --width 96 --heads 3
