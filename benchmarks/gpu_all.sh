#!/usr/bin/env bash
# Every GPU check and benchmark of mixfast in one command, for a rare lent GPU machine.
#   bash benchmarks/gpu_all.sh [STAGES]      STAGES: any of build,test,micro,step,e2e (default all)
# Writes logs and JSON to $OUT (or benchmarks/results/gpu-run when OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-run}
mkdir -p "$OUT"
STAGES=${1:-build,test,micro,step,e2e}
has() { [[ ",$STAGES," == *",$1,"* ]]; }
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.log"; }

python3 - <<'PY' | tee -a "$OUT/summary.log"
import sys, torch, triton
p = torch.cuda.get_device_properties(0)
print(f"device {p.name} sm_{p.major}{p.minor} {p.multi_processor_count} SMs; torch {torch.__version__} "
      f"cuda {torch.version.cuda} triton {triton.__version__} python {sys.version.split()[0]}")
PY

if has build; then
  log "build the extension against this machine's torch"
  MAX_JOBS=16 python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . \
    >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; log "BUILD FAILED"; }
  python3 -c "import mixfast, json; print(json.dumps(mixfast.build_info(), default=str))" \
    2>&1 | tee -a "$OUT/summary.log"
fi

if has test; then
  log "whole test suite on the GPU (Triton compiled for real, CUDA masking, compile)"
  timeout ${TEST_TIMEOUT:-360} python3 -m pytest -q --no-header -p no:cacheprovider \
    ${TEST_ARGS:-tests} >"$OUT/tests_gpu.log" 2>&1
  tail -15 "$OUT/tests_gpu.log" | tee -a "$OUT/summary.log"
fi

run_bench() {  # name, command...
  local name=$1; shift
  log "bench $name"
  timeout 240 "$@" --json "$OUT/$name.json" 2>&1 | tail -25 | tee -a "$OUT/summary.log"
}
if has micro; then
  run_bench attention python3 benchmarks/bench_attention.py
  run_bench patch_embed python3 benchmarks/bench_patch_embed.py
  run_bench masking python3 benchmarks/bench_masking.py --device cuda
fi
if has step; then
  # mix vs mixfast's SSL step + SL step vs the eager MAE (models_mae.py) + timm SL peer, eager
  # and compiled (and CUDA-graph replays of the compiled steps), round-robin in one run
  run_bench mixed_step python3 benchmarks/bench_mixed_step.py --device cuda \
    --configs 64x64/8 --modes eager compiled cudagraphs
  run_bench launches python3 benchmarks/bench_launches.py --device cuda
  run_bench cast_once python3 benchmarks/bench_cast_once.py --device cuda
fi
if has e2e; then
  # Same epoch budgets for SSL+SL and MixTraining at rho 0.5 and 1 (issue 8 item 4).
  E2E_ARGS=${E2E_ARGS:---train-limit 60000 --test-limit 10000 --batch-size 256 --blr 1e-3 \
    --ssl-blr 1.5e-4 --ssl-epochs 16 --sl-epochs 16 --fractions 0.1 1.0 --seeds 0}
  log "end to end: SSL+SL vs MixTraining (rho 0.5) on Fashion-MNIST: $E2E_ARGS"
  timeout 300 python3 -m mixfast compare --dataset fashion-mnist --device cuda --mix-ratio 0.5 \
    --out "$OUT/e2e-rho0.5" $E2E_ARGS 2>&1 | tail -12 | tee -a "$OUT/summary.log"
  log "end to end: MixTraining rho 1"
  timeout 200 python3 -m mixfast compare --dataset fashion-mnist --device cuda --mix-ratio 1.0 \
    --pipelines mix --out "$OUT/e2e-rho1" $E2E_ARGS 2>&1 | tail -8 | tee -a "$OUT/summary.log"
  log "end to end: MixTraining rho 0.5 with whole-step CUDA graphs (--cuda-graph)"
  timeout 200 python3 -m mixfast compare --dataset fashion-mnist --device cuda --mix-ratio 0.5 \
    --pipelines mix --cuda-graph --out "$OUT/e2e-graphed" $E2E_ARGS 2>&1 | tail -8 \
    | tee -a "$OUT/summary.log"
  cp "$OUT/e2e-graphed/compare.json" "$OUT/e2e-graphed.json" 2>/dev/null || true
  cp "$OUT/e2e-rho0.5/compare.json" "$OUT/e2e-rho0.5.json" 2>/dev/null || true
  cp "$OUT/e2e-rho1/compare.json" "$OUT/e2e-rho1.json" 2>/dev/null || true
fi
log "done"
