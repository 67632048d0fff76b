#!/usr/bin/env bash
# Peak resident memory per rank of MixTraining steps (MAE ViT-B/16 and ViT-L/16 at 224) under
# DDP, FSDP2 and FSDP2 + activation checkpointing, 2 gloo processes on CPU (measure.py), the
# activations per sample (activations.py, one process), then the results page's table (table.py). ViT-L at batch 1: the machine has 24 GiB in all.
# Run from the repository root.
set -euo pipefail
here=benchmarks/studies/memory-cpu-2026-12-03
results=benchmarks/results/memory-cpu-2026-12-03
export OMP_NUM_THREADS=1
mkdir -p "$results"
for spec in vit_base_patch16_224:2 vit_large_patch16_224:1; do
  model=${spec%%:*}
  batch=${spec##*:}
  for mode in ddp fsdp fsdp+ac; do
    python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 \
      --master_port "${PORT:-29673}" "$here/measure.py" "$model" "$mode" "$batch" \
      "$results/$model-$mode-b$batch.json"
  done
done
python "$here/activations.py" "$results/activations.json"
python "$here/table.py" "$results" | tee "$results/table.md"
