"""mixfast.random_masking against MAE's argsort-of-noise masking (B=256, N=64 and 196, ratio 0.75).

    pytest benchmarks/bench_masking.py                       # pytest-benchmark, this machine
    python benchmarks/bench_masking.py --device cuda --json out.json

Both time the whole call (allocation of the three outputs included) and, on CUDA, wait for the
GPU after each call. The script prints one line per shape with the ratio MAE / mixfast.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import environment, time_ms, write_json

from mixfast.masking import implementation, mae_random_masking, random_masking

BATCH, RATIO = 256, 0.75
SHAPES = (64, 196)


def _mixfast(num_patches: int, device: str, sorted_keep: bool = False):
    return lambda: random_masking(
        BATCH, num_patches, RATIO, seed=0, offset=1, device=device, sorted_keep=sorted_keep
    )


def _mae(num_patches: int, device: str):
    return lambda: mae_random_masking(BATCH, num_patches, RATIO, device=device)


@pytest.mark.parametrize("num_patches", SHAPES)
@pytest.mark.parametrize("impl", ["mixfast", "mixfast_sorted", "mae"])
def test_masking(benchmark, synced, bench_device, impl, num_patches):
    fn = {
        "mixfast": _mixfast(num_patches, bench_device),
        "mixfast_sorted": _mixfast(num_patches, bench_device, sorted_keep=True),
        "mae": _mae(num_patches, bench_device),
    }[impl]
    benchmark.group = f"masking B={BATCH} N={num_patches} ratio={RATIO} {bench_device}"
    benchmark.extra_info["implementation"] = (
        implementation(bench_device) if impl != "mae" else "torch argsort"
    )
    benchmark(synced(fn))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--reps", type=int, default=100)
    args = parser.parse_args()
    rows = []
    for num_patches in SHAPES:
        row = {"batch": BATCH, "num_patches": num_patches, "mask_ratio": RATIO}
        row["implementation"] = implementation(args.device)
        row["mixfast"] = time_ms(_mixfast(num_patches, args.device), args.device, reps=args.reps)
        row["mixfast_sorted"] = time_ms(
            _mixfast(num_patches, args.device, True), args.device, reps=args.reps
        )
        row["mae"] = time_ms(_mae(num_patches, args.device), args.device, reps=args.reps)
        row["speedup_vs_mae"] = row["mae"]["median_ms"] / row["mixfast"]["median_ms"]
        rows.append(row)
        print(
            f"B={BATCH} N={num_patches} {args.device}: mixfast {row['mixfast']['median_ms']:.3f} ms"
            f" (sorted {row['mixfast_sorted']['median_ms']:.3f}), MAE {row['mae']['median_ms']:.3f}"
            f" ms, MAE/mixfast {row['speedup_vs_mae']:.2f}x [{row['implementation']}]"
        )
    print(environment(args.device)["device"])
    if args.json:
        write_json(args.json, rows, args.device)


if __name__ == "__main__":
    main()
