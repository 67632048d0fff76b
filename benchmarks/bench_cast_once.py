"""Weights cast once a step (ops.cast_once) vs autocast's cast per Linear, in training steps.

ViT-Tiny MixMAE (64x64 / patch 8, depth 12, decoder 128 x 2), bf16 autocast on the device (CUDA,
or CPU autocast standing in for it), forward + backward of each objective's step through
`Objectives`: cast_dtype=None (autocast casts every Linear's weight and bias, and every gradient
back, one kernel each) against cast_dtype=bf16 (one cat each way). Per step:

  ops      aten ops that launch a kernel on CUDA in eager mode (metadata ops excluded)
  casts    of those, `_to_copy` (the casts)
  ms       median wall time by CUDA events (CUDA only: CPU autocast's bf16 matmuls are
           emulated on CPUs without bf16 units, seconds a step); eager mode, so it carries the
           host time of every launch: that is what the saved launches buy

    python benchmarks/bench_cast_once.py --json OUT.json     # < 1 min on a GPU, ~2 min on CPU
    pytest benchmarks/bench_cast_once.py                     # pytest-benchmark, a tiny model
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from functools import partial

import harness
import torch
import torch.nn.functional as F
from bench_launches import ComputeOps
from harness import Column

from mixfast.model import create_model
from mixfast.ops import random_masking
from mixfast.train.objectives import Objectives

KINDS = ("ssl", "sl", "mixed")
IMPLS = {"autocast": None, "cast_once": torch.bfloat16}


def make_step(impl: str, kind: str, device: str, batch: int, depth: int) -> Callable[[], None]:
    """One forward + backward of `kind` under bf16 autocast; gradients cleared before each."""
    torch.manual_seed(0)
    model = create_model(
        "vit_tiny_patch16_224", img_size=64, patch_size=8, num_classes=10, depth=depth
    ).to(device)
    net = Objectives(model, cast_dtype=IMPLS[impl])
    images = torch.randn(batch, 3, 64, 64, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    mask = random_masking(batch, 64, 0.75, seed=0, device=device)
    alpha = torch.tensor(0.5, device=device)
    device_type = torch.device(device).type

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            if kind == "ssl":
                loss = net("ssl", images, mask_ratio=0.75, masking=mask)
            elif kind == "sl":
                loss = F.cross_entropy(net("sl", images).float(), labels)
            else:
                loss, _ = net("mixed", images, images, labels, alpha=alpha, masking=mask)
        loss.backward()

    return step


def measure(impl: str, kind: str, device: str, batch: int, depth: int) -> dict:
    step = make_step(impl, kind, device, batch, depth)
    step()  # the first mixed forward builds what it caches
    with ComputeOps() as trace:
        step()
    row = {"ops": trace.count, "casts": trace.counts["_to_copy"]}
    if torch.device(device).type != "cuda":  # CPU bf16 matmuls are emulated: seconds a step
        return row
    median, low, high = harness.quantiles_ms(step, device, budget_ms=2000.0)
    return dict(row, median_ms=median, q20_ms=low, q80_ms=high)


def points(device: str, impls, batch: int, depth: int) -> Iterator[harness.Point]:
    for kind in KINDS:
        for impl in impls:
            labels = dict(kind=kind, impl=impl, batch=batch, depth=depth)
            yield labels, partial(measure, impl, kind, device, batch, depth)


def summarize(rows: list[dict]) -> dict:
    """Per kind: launches and time saved by cast_once."""
    by = {(r["kind"], r["impl"]): r for r in rows if "error" not in r}
    out = {}
    for kind in KINDS:
        base, once = by.get((kind, "autocast")), by.get((kind, "cast_once"))
        if base and once:
            out[kind] = {"ops_saved": base["ops"] - once["ops"]}
            if "median_ms" in once:
                out[kind]["speedup"] = base["median_ms"] / once["median_ms"]
    return {"cast_once_vs_autocast": out}


COLUMNS = (
    Column("kind", "kind", 6),
    Column("impl", "impl", 10),
    Column("ops", "ops", 6, "d"),
    Column("casts", "casts", 6, "d"),
    Column("ms", "median_ms", 9, ".2f"),
    Column("q20", "q20_ms", 9, ".2f"),
    Column("q80", "q80_ms", 9, ".2f"),
)


def main(argv: list[str] | None = None) -> int:
    parser = harness.BenchParser(__doc__, __file__, impls=IMPLS)
    parser.add_argument("--batch", type=int, help="default 256 on CUDA, 8 on CPU")
    parser.add_argument("--depth", type=int, default=12, help="encoder blocks (ViT-Tiny: 12)")
    args = parser.parse_args(argv)
    batch = args.batch or (256 if args.device.startswith("cuda") else 8)
    title = f"bf16 autocast, ViT-Tiny 64x64/8 depth {args.depth}, batch {batch}, fwd+bwd"
    harness.run(
        args,
        points(args.device, args.impls, batch, args.depth),
        COLUMNS,
        title=title,
        fields=dict(batch=batch, depth=args.depth),
        summarize=summarize,
    )
    return 0


# ------------------------------------------------------------------------------ pytest-benchmark


def test_bench_cast_once(benchmark, bench_device):
    rows = {impl: measure(impl, "mixed", bench_device, 4, 2) for impl in IMPLS}
    benchmark.extra_info.update({f"{i}_{k}": v for i, r in rows.items() for k, v in r.items()})
    assert rows["cast_once"]["casts"] < rows["autocast"]["casts"]
    benchmark.pedantic(make_step("cast_once", "mixed", bench_device, 4, 2), rounds=3)


if __name__ == "__main__":
    sys.exit(main())
