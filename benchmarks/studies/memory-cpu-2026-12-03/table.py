"""The memory table of benchmarks/results/memory-cpu-2026-12-03/: the measured peaks per rank
(measure.py's records), the measured activations per sample (activations.py) and, derived from
them with the bytes-per-parameter accounting, per-GPU figures for 8 GPUs and the largest batch
that fits an 80 GB GPU.

Accounting (per GPU, N = 8 processes, P parameters; AdamW state in fp32):
    DDP        20 B x P: fp32 weights 4, gradients 4, two AdamW moments 8, DDP's gradient
               buckets 4
    FSDP2      16 B x P / N, plus the units being all-gathered (two encoder blocks: the one
               running and the one prefetched) at 6 B per parameter (bf16 weights, fp32
               gradients before their reduce-scatter)
    activations  activations.py's fp32 count per sample, halved for bf16 autocast (an
               estimate: autocast keeps norms, softmax statistics and the losses in fp32)
    fits       (80 GB - 3 GiB for the CUDA context and allocator slack - states) / activations
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GIB = 1024**3
MODES = ("ddp", "fsdp", "fsdp+ac")
GPUS, GPU_GIB, RESERVE_GIB = 8, 80 * 1e9 / GIB, 3.0  # CUDA context, allocator slack
# encoder depth, width and tokens (1 + patches at 224) of the models
SHAPES = {
    "vit_base_patch16_224": (12, 768, 197),
    "vit_large_patch16_224": (24, 1024, 197),
    "vit_huge_patch14_224": (32, 1280, 257),
}


def records(folder: Path) -> dict[tuple[str, str], dict]:
    """(model, mode) -> the record of the rank with the higher peak."""
    out: dict[tuple[str, str], dict] = {}
    for path in sorted(folder.glob("*.rank*.json")):
        rec = json.loads(path.read_text())
        key = (rec["model"], rec["mode"])
        if key not in out or rec["peak_rss_mib"] > out[key]["peak_rss_mib"]:
            out[key] = rec
    return out


def block_params(model: str) -> float:
    depth, width, _ = SHAPES[model]
    return 12 * width * width  # qkv 3 + proj 1 + MLP 8 (x width^2), biases and norms aside


def gpu_row(model: str, params: int, act_fp32: dict[str, float]) -> list[str]:
    """Derived per-GPU GiB at 8 GPUs (states) and the largest batch on 80 GB per mode."""
    cells = []
    for mode in MODES:
        if mode == "ddp":
            states = 20 * params / GIB
        else:
            states = (16 * params / GPUS + 2 * 6 * block_params(model)) / GIB
        act = act_fp32[mode] / 2  # bf16 autocast
        free = GPU_GIB - RESERVE_GIB - states
        fits = int(free / act) if act > 0 and free > 0 else 0
        cells.append(f"{states:.1f} GiB, ~{act * 1024:.0f} MiB/sample -> batch ~{fits}")
    return cells


def main(folder: str) -> None:
    found = records(Path(folder))
    print("Measured: peak resident set per rank (VmHWM of the steps; the higher of the 2 ranks;")
    print("in brackets the resident set before the steps), 2 gloo processes on CPU, fp32\n")
    print("| model | params | batch per rank | " + " | ".join(MODES) + " |")
    print("|---|---:|---:|" + "---:|" * len(MODES))
    for model in SHAPES:
        recs = [found.get((model, mode)) for mode in MODES]
        if not any(recs):
            continue
        first = next(r for r in recs if r)
        cells = [
            f"{r['peak_rss_mib'] / 1024:.2f} GiB ({r['rss_before_mib'] / 1024:.2f})" if r else "-"
            for r in recs
        ]
        row = f"| {model} | {first['params'] / 1e6:.0f} M | {first['batch']} | "
        print(row + " | ".join(cells) + " |")
    acts = json.loads((Path(folder) / "activations.json").read_text())["rows"]
    print("\nMeasured: activations per sample of a mix step (saved for backward, fp32, CPU)\n")
    print("| model | params | without checkpointing | with activation checkpointing |")
    print("|---|---:|---:|---:|")
    for row in acts:
        print(
            f"| {row['model']} | {row['params'] / 1e6:.0f} M | {row['activations_mib']:.0f} MiB "
            f"| {row['activations_ac_mib']:.0f} MiB |"
        )
    print(
        f"\nDerived (not measured): per GPU of {GPUS}: states (GiB), activations per sample "
        f"(bf16 estimate) and the largest batch per GPU on 80 GB\n"
    )
    print("| model | " + " | ".join(MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for row in acts:
        act = {"ddp": row["activations_mib"], "fsdp": row["activations_mib"]}
        act["fsdp+ac"] = row["activations_ac_mib"]
        cells = gpu_row(row["model"], row["params"], {k: v / 1024 for k, v in act.items()})
        print(f"| {row['model']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    here = Path(__file__).resolve()
    default = here.parents[2] / "results" / here.parent.name
    main(sys.argv[1] if len(sys.argv) > 1 else str(default))
