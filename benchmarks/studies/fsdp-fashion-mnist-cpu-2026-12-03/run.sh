#!/usr/bin/env bash
# Issue 27's "done when" for --fsdp: 2 gloo processes on Fashion-MNIST (2,000 images, 2 blocks
# of width 64, 2 + 2 epochs) under DDP and under --fsdp --grad-checkpointing; the FSDP run
# stopped mid-run and resumed with 1 process (--accum-steps 2 keeps the effective batch).
# Run from the repository root; runs go to $OUT (default runs/fsdp-fashion-mnist-cpu-2026-12-03).
set -euo pipefail
out=${OUT:-runs/fsdp-fashion-mnist-cpu-2026-12-03}
results=benchmarks/results/fsdp-fashion-mnist-cpu-2026-12-03
export OMP_NUM_THREADS=1
run=(--dataset fashion-mnist --train-limit 2000 --depth 2 --embed-dim 64 --num-heads 4
  --ssl-epochs 2 --sl-epochs 2 --batch-size 32 --device cpu --no-progress)
torchrun2() {
  python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 \
    --master_port "${PORT:-29655}" -m mixfast train "${run[@]}" "$@"
}
mkdir -p "$out" "$results"
torchrun2 --out "$out/ddp" 2>&1 | tee "$out/ddp.log"
torchrun2 --fsdp --grad-checkpointing --out "$out/fsdp" 2>&1 | tee "$out/fsdp.log"
# the same FSDP run stopped at step 20 (of 28 in the SSL epoch), then resumed by one process
torchrun2 --fsdp --grad-checkpointing --stop-after 20 --out "$out/fsdp-resumed" 2>&1 |
  tee "$out/fsdp-stopped.log"
python -m mixfast train "${run[@]}" --fsdp --grad-checkpointing --accum-steps 2 --resume \
  --out "$out/fsdp-resumed" 2>&1 | tee "$out/fsdp-resumed.log"
for name in ddp fsdp fsdp-resumed; do
  mkdir -p "$results/$name"
  cp "$out/$name/result.json" "$out/$name/metrics.jsonl" "$out/$name/config.json" "$results/$name/"
done
cp "$out"/*.log "$results/"
