"""One packed mixed step against one SSL step + one SL step on the same samples.

Every step is forward + backward + AdamW step of a ViT-Tiny MixMAE. Variants:
  ssl+sl      forward_ssl step, then a cross-entropy(forward_sl) step (two optimizer steps)
  mix         forward_mixed(x, x, y, sl_view="full"): both sub-batches in one packed pass
  mix-masked  forward_mixed(..., sl_view="masked"): the SL head reads the masked view's cls
The variants run round-robin inside one loop (A, B, C, A, B, C, ...) so that drift hits them all
alike; the table gives medians and the speedup of each mix variant over ssl+sl. Masks are
computed outside the loss functions and passed as `masking=`, so the compiled runs
(torch.compile fullgraph) never recompile for a new offset. CUDA runs use bf16 autocast.

Script:  python benchmarks/bench_mixed_step.py --device cuda --json OUT.json
         (add --modes eager compiled cudagraphs for CUDA-graph replays of the compiled steps)
         (CPU default: 28x28/4, batch 32 + 32; CUDA default: 64x64/8 and 28x28/4, 256 + 256)
pytest:  pytest benchmarks/bench_mixed_step.py   (tiny CPU shapes, pytest-benchmark, eager)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mixfast import random_masking
from mixfast.models import MixMAE, create_model

CONFIGS = {
    "64x64/8": dict(img_size=64, patch_size=8, in_chans=3, classes=200),
    "28x28/4": dict(img_size=28, patch_size=4, in_chans=1, classes=10),
}
VARIANTS = ("ssl+sl", "mix", "mix-masked")
MODES = ("eager", "compiled", "cudagraphs")
SEED, ALPHA, MASK_RATIO = 0, 0.5, 0.75


def build(config: str, batch: int, device: str, **overrides: Any) -> dict[str, Any]:
    cfg = CONFIGS[config]
    model = create_model(
        "vit_tiny_patch16_224",
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=cfg["in_chans"],
        num_classes=cfg["classes"],
        **overrides,
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    size = cfg["img_size"]
    x = torch.randn(batch, cfg["in_chans"], size, size, device=device)
    y = torch.randint(0, cfg["classes"], (batch,), device=device)
    return dict(model=model, opt=opt, x=x, y=y)


def make_steps(setup: dict[str, Any], mode: str) -> dict[str, Callable[[int], None]]:
    """variant -> step(i): forward + backward + optimizer step(s) on the same samples."""
    model: MixMAE = setup["model"]
    opt, x, y = setup["opt"], setup["x"], setup["y"]
    device = x.device
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    alpha = torch.tensor(ALPHA, device=device)

    def ssl_loss(images, masking):
        return model.forward_ssl(images, MASK_RATIO, masking=masking)

    def sl_loss(images, labels):
        return F.cross_entropy(model.forward_sl(images).float(), labels)

    def mix_loss(images, labels, masking, sl_view):
        return model.forward_mixed(
            images, images, labels, alpha=alpha, masking=masking, sl_view=sl_view
        )[0]

    if mode != "eager":
        options = dict(fullgraph=True, mode="reduce-overhead" if mode == "cudagraphs" else None)
        ssl_loss, sl_loss, mix_loss = (
            torch.compile(f, **options) for f in (ssl_loss, sl_loss, mix_loss)
        )

    def masks(i: int):
        return random_masking(
            x.shape[0], model.num_patches, MASK_RATIO, seed=SEED, offset=i, device=device
        )

    def update(loss_fn: Callable[[], torch.Tensor]) -> None:
        if mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def separate(i: int) -> None:
        update(lambda: ssl_loss(x, masks(i)))
        update(lambda: sl_loss(x, y))

    return {
        "ssl+sl": separate,
        "mix": lambda i: update(lambda: mix_loss(x, y, masks(i), "full")),
        "mix-masked": lambda i: update(lambda: mix_loss(x, y, masks(i), "masked")),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_alternating(
    steps: dict[str, Callable[[int], None]], device: torch.device, warmup: int, iters: int
) -> dict[str, Any]:
    """Round-robin timing; returns per-variant median/min ms and first-call (compile) seconds."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    first_s: dict[str, float] = {}
    names = list(steps)
    for i in range(warmup + iters):
        order = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            sync(device)
            start = time.perf_counter()
            steps[name](i)
            sync(device)
            elapsed = time.perf_counter() - start
            if i == 0:
                first_s[name] = elapsed
            if i >= warmup:
                times[name].append(elapsed * 1e3)
    return {
        name: {
            "median_ms": statistics.median(t),
            "min_ms": min(t),
            "reps": len(t),
            "first_call_s": first_s[name],
        }
        for name, t in times.items()
    }


def speedups(result: dict[str, Any]) -> dict[str, float]:
    base = result["ssl+sl"]["median_ms"]
    return {name: base / result[name]["median_ms"] for name in VARIANTS if name != "ssl+sl"}


def print_row(row: dict[str, Any]) -> None:
    res, up = row["times"], row["speedup"]
    print(
        f"| {row['config']:8} | {row['batch']:>3}+{row['batch']:<3} | {row['mode']:10} "
        f"| {res['ssl+sl']['median_ms']:9.2f} | {res['mix']['median_ms']:9.2f} "
        f"| {up['mix']:5.2f}x | {res['mix-masked']['median_ms']:9.2f} "
        f"| {up['mix-masked']:5.2f}x |",
        flush=True,
    )


HEADER = (
    "| config   | batch   | mode       | ssl+sl ms |    mix ms | speedup | masked ms | speedup |\n"
    "|----------|---------|------------|-----------|-----------|---------|-----------|---------|"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--batch", type=int, default=None, help="images per sub-batch")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=None,
        help="default: eager compiled (cudagraphs = compile mode='reduce-overhead', CUDA only)",
    )
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--budget-s", type=float, default=130.0, help="skip runs that would start later"
    )
    parser.add_argument("--json", default=None, help="write results here (after every run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    if not cuda and "cudagraphs" in (args.modes or []):
        parser.error("--modes cudagraphs needs --device cuda")
    configs = args.configs or (["64x64/8", "28x28/4"] if cuda else ["28x28/4"])
    batch = args.batch or (256 if cuda else 32)
    modes = args.modes or ["eager", "compiled"]
    iters = args.iters or (20 if cuda else 10)

    began, rows = time.perf_counter(), []
    print(f"device {args.device}, ViT-Tiny, fwd+bwd+AdamW, medians of {iters} round-robin reps")
    print(HEADER)
    for config in configs:
        for mode in modes:
            if time.perf_counter() - began > args.budget_s:
                print(f"| {config} | {mode}: skipped, past --budget-s {args.budget_s}")
                continue
            torch.manual_seed(0)
            setup = build(config, batch, args.device)
            steps = make_steps(setup, mode)
            times = run_alternating(steps, setup["x"].device, args.warmup, iters)
            row = dict(config=config, batch=batch, mode=mode, times=times)
            row["speedup"] = speedups(times)
            rows.append(row)
            print_row(row)
            if args.json:
                _write(args.json, rows, args.device, argv)
    return 0


def _write(path: str, rows: list[dict[str, Any]], device: str, argv: list[str] | None) -> None:
    from conftest import write_json  # benchmarks/conftest.py; the script's folder is on sys.path

    command = "python benchmarks/bench_mixed_step.py " + " ".join(argv or sys.argv[1:])
    write_json(path, [dict(row, command=command) for row in rows], device)


# ------------------------------------------------------------------------------ pytest-benchmark


@pytest.mark.parametrize("variant", VARIANTS)
def test_mixed_step(benchmark, bench_device, synced, variant):
    batch = 64 if bench_device == "cuda" else 8
    setup = build("28x28/4", batch, bench_device, depth=2)
    step = synced(make_steps(setup, "eager")[variant])
    benchmark.extra_info.update(config="28x28/4", batch=batch, depth=2, variant=variant)
    benchmark.pedantic(step, args=(0,), rounds=5, warmup_rounds=1)


if __name__ == "__main__":
    sys.exit(main())
