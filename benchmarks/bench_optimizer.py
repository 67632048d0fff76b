"""GroupedAdamW's two updates: the multi-tensor one (`_foreach_*`, for CUDA and its graphs) and
torch's fused AdamW kernel per group (the CPU default).

On a CPU a `_foreach_*` op is a loop of one small op per tensor, so the multi-tensor update costs
about 14 ops per parameter; the fused kernel makes one pass per group. Per row:

  ops        aten ops of one optimizer step that would each launch a kernel on CUDA
  opt ms     optimizer.step() alone (gradients fixed), median of alternating rounds
  step ms    a whole SL training step (forward, backward, optimizer), batch --batch, same rounds
  x          foreach / fused (the speedup of the fused update)

Models: `demo` is compare's default ViT (3 blocks x 64, patch 7, 28x28x1), `tiny` ViT-Tiny
(12 x 192, patch 8, 64x64x3). Layer decay 0.75 makes 2 x (depth + 2) parameter groups, 1.0 two.
The implementations are timed in turn (round robin), so load drift hits them alike.

    python benchmarks/bench_optimizer.py --json OUT.json     # about 1 min on 2 CPU cores
    pytest benchmarks/bench_optimizer.py                     # pytest-benchmark, the demo model
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from functools import partial

import harness
import torch
import torch.nn.functional as F
from bench_launches import ComputeOps
from harness import Column

from mixfast.model import create_model
from mixfast.optim import make_adamw

IMPLS = {"foreach": False, "fused": True}
MODELS = {
    "demo": dict(img_size=28, patch_size=7, in_chans=1, depth=3, embed_dim=64, num_heads=2),
    "tiny": dict(img_size=64, patch_size=8, in_chans=3, depth=12),
}


def make_steps(model_name: str, layer_decay: float, batch: int, device: str, fused: bool):
    """(optimizer step, whole SL step) of a fresh model and its GroupedAdamW."""
    torch.manual_seed(0)
    spec = MODELS[model_name]
    model = create_model("vit_tiny_patch16_224", num_classes=10, **spec).to(device)
    optimizer = make_adamw(
        model, weight_decay=0.05, layer_decay=layer_decay, betas=(0.9, 0.999), fused=fused
    )
    optimizer.lr.fill_(1e-4)
    size, chans = spec["img_size"], spec["in_chans"]
    images = torch.randn(batch, chans, size, size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)

    def train_step(_: int = 0) -> None:
        loss = F.cross_entropy(model.forward_sl(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def optimizer_step(_: int = 0) -> None:
        optimizer.step()

    train_step()  # creates the optimizer state
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    return optimizer_step, train_step


def measure(model_name: str, layer_decay: float, batch: int, device: str, iters: int) -> dict:
    """One row: each implementation's ops and times (timed in turn), as `<impl>_<figure>`."""
    pairs = {
        impl: make_steps(model_name, layer_decay, batch, device, f) for impl, f in IMPLS.items()
    }
    row = {}
    for impl, (opt_step, _) in pairs.items():
        with ComputeOps() as trace:
            opt_step()
        row[f"{impl}_ops"] = trace.count
    opt = harness.round_robin_ms({i: p[0] for i, p in pairs.items()}, device, 5, iters)
    step = harness.round_robin_ms({i: p[1] for i, p in pairs.items()}, device, 3, iters)
    for impl in IMPLS:
        row.update(
            {f"{impl}_opt_ms": opt[impl]["median_ms"], f"{impl}_step_ms": step[impl]["median_ms"]}
        )
    row["opt_speedup"] = row["foreach_opt_ms"] / row["fused_opt_ms"]
    row["step_speedup"] = row["foreach_step_ms"] / row["fused_step_ms"]
    return row


def points(device: str, batch: int, iters: int) -> Iterator[harness.Point]:
    for model_name in MODELS:
        for layer_decay in (1.0, 0.75):
            labels = dict(model=model_name, layer_decay=layer_decay, batch=batch)
            yield labels, partial(measure, model_name, layer_decay, batch, device, iters)


COLUMNS = (
    Column("model", "model", 6),
    Column("ld", "layer_decay", 5, ".2f"),
    *(Column(f"{impl} ops", f"{impl}_ops", 12, "d") for impl in IMPLS),
    *(Column(f"{impl} opt ms", f"{impl}_opt_ms", 15, ".2f") for impl in IMPLS),
    Column("opt x", "opt_speedup", 6, ".2f"),
    *(Column(f"{impl} step ms", f"{impl}_step_ms", 16, ".2f") for impl in IMPLS),
    Column("step x", "step_speedup", 7, ".3f"),
)


def main(argv: list[str] | None = None) -> int:
    parser = harness.BenchParser(__doc__, __file__)
    parser.add_argument("--batch", type=int, default=128, help="default %(default)s")
    parser.add_argument("--iters", type=int, default=20, help="timed rounds (default 20)")
    args = parser.parse_args(argv)
    harness.run(
        args,
        points(args.device, args.batch, args.iters),
        COLUMNS,
        title=f"GroupedAdamW: foreach vs fused per group, SL step at batch {args.batch}",
        fields=dict(batch=args.batch, iters=args.iters),
    )
    return 0


# ------------------------------------------------------------------------------ pytest-benchmark


def test_bench_optimizer(benchmark, bench_device):
    row = measure("demo", 1.0, 8, bench_device, iters=3)
    benchmark.extra_info.update(row)
    assert row["fused_ops"] < row["foreach_ops"]
    opt_step, _ = make_steps("demo", 0.75, 8, bench_device, fused=True)
    benchmark.pedantic(opt_step, rounds=5)


if __name__ == "__main__":
    sys.exit(main())
