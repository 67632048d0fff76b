"""mixfast.random_masking against MAE's argsort-of-noise masking (B=256, N=64 and 196, ratio 0.75).

    pytest benchmarks/bench_masking.py                       # pytest-benchmark, this machine
    python benchmarks/bench_masking.py --device cuda --json out.json

Both time the whole call (allocation of the three outputs included) and, on CUDA, wait for the
GPU after each call (the script: harness.time_ms, medians and minimums of --reps calls). The
script prints one row per shape with the ratio MAE / mixfast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from functools import partial

import harness
import pytest
from harness import Column

from mixfast.ops.masking import implementation, random_masking
from mixfast.ops.reference import mae_random_masking

BATCH, RATIO = 256, 0.75
SHAPES = (64, 196)


def _mixfast(num_patches: int, device: str, sorted_keep: bool = False) -> Callable:
    return lambda: random_masking(
        BATCH, num_patches, RATIO, seed=0, offset=1, device=device, sorted_keep=sorted_keep
    )


def _mae(num_patches: int, device: str) -> Callable:
    return lambda: mae_random_masking(BATCH, num_patches, RATIO, device=device)


IMPLS = {  # name -> (num_patches, device) -> the call to time
    "mixfast": _mixfast,
    "mixfast_sorted": partial(_mixfast, sorted_keep=True),
    "mae": _mae,
}


def measure(num_patches: int, device: str, reps: int) -> dict:
    row = {
        name: harness.time_ms(make(num_patches, device), device, reps=reps)
        for name, make in IMPLS.items()
    }
    row["speedup_vs_mae"] = row["mae"]["median_ms"] / row["mixfast"]["median_ms"]
    return row


def points(device: str, reps: int) -> Iterator[harness.Point]:
    for num_patches in SHAPES:
        labels = dict(batch=BATCH, num_patches=num_patches, mask_ratio=RATIO)
        labels["implementation"] = implementation(device)
        yield labels, partial(measure, num_patches, device, reps)


COLUMNS = (
    Column("N", "num_patches", 4, "d"),
    Column("implementation", "implementation", 24),
    Column("mixfast ms", ("mixfast", "median_ms"), 10, ".3f"),
    Column("sorted ms", ("mixfast_sorted", "median_ms"), 10, ".3f"),
    Column("MAE ms", ("mae", "median_ms"), 10, ".3f"),
    Column("MAE/mixfast", "speedup_vs_mae", 11, ".2f", "x"),
)


def main(argv: list[str] | None = None) -> int:
    parser = harness.BenchParser(__doc__, __file__)
    parser.add_argument("--reps", type=int, default=100, help="timed calls (default: 100)")
    args = parser.parse_args(argv)
    title = f"B={BATCH} ratio={RATIO} {args.device}, median ms per call"
    harness.run(args, points(args.device, args.reps), COLUMNS, title=title)
    return 0


# ------------------------------------------------------------------------------ pytest-benchmark


@pytest.mark.parametrize("num_patches", SHAPES)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_masking(benchmark, synced, bench_device, impl, num_patches):
    benchmark.group = f"masking B={BATCH} N={num_patches} ratio={RATIO} {bench_device}"
    benchmark.extra_info["implementation"] = (
        implementation(bench_device) if impl != "mae" else "torch argsort"
    )
    benchmark(synced(IMPLS[impl](num_patches, bench_device)))


if __name__ == "__main__":
    sys.exit(main())
