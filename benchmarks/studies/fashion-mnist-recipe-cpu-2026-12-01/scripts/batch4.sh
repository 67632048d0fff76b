#!/bin/bash
cd /work/study
export OMP_NUM_THREADS=1 MIXFAST_DISABLE_EXTENSION=1 PYTHONPATH=/work/study
while pgrep -f "study/batch3.sh" >/dev/null; do sleep 3; done
R="python study/study_recipe.py --results study/runs.jsonl --case demo --epochs 10 --batch 64 --blr 1e-2"
$R --tag P1-sslsl-f0.1-sslblr1e-2 --pipeline ssl+sl --fraction 0.1 --ssl-epochs 8 --ssl-blr 1e-2
$R --tag P2-sslsl-f0.1-sslblr3e-3 --pipeline ssl+sl --fraction 0.1 --ssl-epochs 8 --ssl-blr 3e-3
$R --tag P3-sl-f0.1 --pipeline sl --fraction 0.1
$R --tag P4-mix-f0.1-sslblr1e-2 --pipeline mix --fraction 0.1 --ssl-epochs 8 --ssl-blr 1e-2
$R --tag P7-sslsl-f0.1-sslblr1e-2-ld1 --pipeline ssl+sl --fraction 0.1 --ssl-epochs 8 --ssl-blr 1e-2 --layer-decay 1.0
$R --tag P5-sslsl-f1-sslblr1e-2 --pipeline ssl+sl --fraction 1.0 --ssl-epochs 8 --ssl-blr 1e-2
$R --tag P6-mix-f1-sslblr1e-2 --pipeline mix --fraction 1.0 --ssl-epochs 8 --ssl-blr 1e-2
