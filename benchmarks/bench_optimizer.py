"""GroupedAdamW's two updates: the multi-tensor one (`_foreach_*`, for CUDA and its graphs) and
torch's fused AdamW kernel per group (the CPU default).

On a CPU a `_foreach_*` op is a loop of one small op per tensor, so the multi-tensor update costs
about 14 ops per parameter; the fused kernel makes one pass per group. Per row:

  ops        aten ops of one optimizer step that would each launch a kernel on CUDA
  opt ms     optimizer.step() alone (gradients fixed), median of alternating rounds
  step ms    a whole SL training step (forward, backward, optimizer), batch --batch, same rounds

Models: `demo` is compare's default ViT (3 blocks x 64, patch 7, 28x28x1), `tiny` ViT-Tiny
(12 x 192, patch 8, 64x64x3). Layer decay 0.75 makes 2 x (depth + 2) parameter groups, 1.0 two.
The implementations are timed in turn (round robin), so load drift hits them alike.

    python benchmarks/bench_optimizer.py --json OUT.json     # about 1 min on 2 CPU cores
    pytest benchmarks/bench_optimizer.py                     # pytest-benchmark, the demo model
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


def measure(model_name: str, layer_decay: float, batch: int, device: str, iters: int) -> list:
    """Rows of every implementation, timed in turn."""
    pairs = {
        impl: make_steps(model_name, layer_decay, batch, device, f) for impl, f in IMPLS.items()
    }
    rows = {}
    for impl, (opt_step, _) in pairs.items():
        with ComputeOps() as trace:
            opt_step()
        rows[impl] = dict(impl=impl, ops=trace.count)
    opt = harness.round_robin_ms({i: p[0] for i, p in pairs.items()}, device, 5, iters)
    step = harness.round_robin_ms({i: p[1] for i, p in pairs.items()}, device, 3, iters)
    for impl, row in rows.items():
        row.update(opt_ms=opt[impl]["median_ms"], step_ms=step[impl]["median_ms"])
    return list(rows.values())


def points(device: str, batch: int, iters: int) -> Iterator[harness.Point]:
    for model_name in MODELS:
        for layer_decay in (1.0, 0.75):
            labels = dict(model=model_name, layer_decay=layer_decay, batch=batch)
            yield labels, partial(measure, model_name, layer_decay, batch, device, iters)


def summarize(rows: list[dict]) -> dict:
    """Per model and layer decay: how much faster the fused update and the whole step are."""
    by = {(r["model"], r["layer_decay"], r["impl"]): r for r in rows if "error" not in r}
    out = {}
    for (model, layer_decay, impl), fused in by.items():
        base = by.get((model, layer_decay, "foreach"))
        if impl == "fused" and base:
            out[f"{model} layer_decay {layer_decay}"] = {
                "optimizer_speedup": base["opt_ms"] / fused["opt_ms"],
                "step_speedup": base["step_ms"] / fused["step_ms"],
            }
    return {"fused_vs_foreach": out}


COLUMNS = (
    Column("model", "model", 6),
    Column("ld", "layer_decay", 5, ".2f"),
    Column("impl", "impl", 8),
    Column("ops", "ops", 6, "d"),
    Column("opt ms", "opt_ms", 8, ".2f"),
    Column("step ms", "step_ms", 8, ".2f"),
)


def flat_points(device: str, batch: int, iters: int) -> Iterator[harness.Point]:
    """One table row per implementation (measure() times them together)."""
    for labels, run in points(device, batch, iters):
        cache: dict[str, list] = {}

        def row_of(impl: str, run: Callable[[], list] = run, cache: dict = cache) -> dict:
            if "rows" not in cache:
                cache["rows"] = run()
            return next(r for r in cache["rows"] if r["impl"] == impl)

        for impl in IMPLS:
            yield dict(labels, impl=impl), partial(row_of, impl)


def main(argv: list[str] | None = None) -> int:
    parser = harness.BenchParser(__doc__, __file__)
    parser.add_argument("--batch", type=int, default=128, help="default %(default)s")
    parser.add_argument("--iters", type=int, default=20, help="timed rounds (default 20)")
    args = parser.parse_args(argv)
    harness.run(
        args,
        flat_points(args.device, args.batch, args.iters),
        COLUMNS,
        title=f"GroupedAdamW: foreach vs fused per group, SL step at batch {args.batch}",
        fields=dict(batch=args.batch, iters=args.iters),
        summarize=summarize,
    )
    return 0


# ------------------------------------------------------------------------------ pytest-benchmark


def test_bench_optimizer(benchmark, bench_device):
    rows = measure("demo", 0.75, 8, bench_device, iters=3)
    benchmark.extra_info.update({f"{r['impl']}_{k}": v for r in rows for k, v in r.items()})
    by = {r["impl"]: r for r in rows}
    assert by["fused"]["ops"] < by["foreach"]["ops"]
    opt_step, _ = make_steps("demo", 0.75, 8, bench_device, fused=True)
    benchmark.pedantic(opt_step, rounds=5)


if __name__ == "__main__":
    sys.exit(main())
