"""Fused masked-patch embedding vs timm PatchEmbed (stride-p conv) + gather + pos-embed add.

ViT-Tiny shapes (D=192, bf16, B=256): TinyImageNet 64x64 / patch 8 (N=64, K=16 kept) and
ImageNet 224 / patch 16 (N=196, K=49 kept). Views:
  ssl    the kept patches [B, K, D]            mixfast.ops.masked_patch_embed(..., ids_keep)
  sl     all patches [B, N, D]                 mixfast.ops.masked_patch_embed(...)
  mix    both views packed in one buffer       mixfast.ops.packed_patch_embed(...)
         ([cls, N patches] x B then [cls, K kept] x B; the peer scatters its tokens there)
Modes: fwd, and fwd+bwd (grads of weight, bias and pos_embed).

    python benchmarks/bench_patch_embed.py --json OUT.json     # table + JSON, < 1 min on a GPU
    pytest benchmarks/bench_patch_embed.py --benchmark-json=OUT.json   # pytest-benchmark

Timing (benchmarks/harness.py): triton.testing.do_bench on CUDA (warm-up and compilation
excluded), median with 20/80 % quantiles; perf_counter on CPU, where both sides run PyTorch code
and only the script's plumbing is exercised. FLOPs are the useful GEMM work (2 x tokens x C*p*p x
D per pass; the backward does one GEMM for dW); bytes the minimal traffic: the pixels of the
embedded patches, the weights, the pos rows, the tokens written (backward: the token gradients
read, the gradients written), so GB/s is an effective figure comparable across implementations.
max_abs_diff is against fp32 math on the same bf16 inputs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from functools import partial

import harness
import pytest
import torch
from harness import Column

from mixfast import ops
from mixfast.ops.reference import masked_patch_embed_reference

DIM, CHANNELS = 192, 3
CASES = {  # name -> (image size, patch, kept patches)
    "tin64_p8_k16": (64, 8, 16),
    "in224_p16_k49": (224, 16, 49),
}
VIEWS = ("ssl", "sl", "mix")
MODES = ("fwd", "fwd+bwd")


# ----------------------------------------------------------------------------------------------
# Inputs and implementations
# ----------------------------------------------------------------------------------------------


def make_inputs(case: str, batch: int, device, dtype, seed: int = 0) -> dict:
    size, patch, keep = CASES[case]
    num_patches = (size // patch) ** 2
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape, scale=1.0: (torch.randn(*shape, generator=gen) * scale).to(device, dtype)
    ids_keep = torch.rand(batch, num_patches, generator=gen).argsort(1)[:, :keep].to(device)
    full = torch.arange(batch, device=device) * (num_patches + 1) + 1
    kept = batch * (num_patches + 1) + torch.arange(batch, device=device) * (keep + 1) + 1
    return dict(
        images=randn(batch, CHANNELS, size, size),
        weight=randn(DIM, CHANNELS, patch, patch, scale=(CHANNELS * patch * patch) ** -0.5),
        bias=randn(DIM, scale=0.02),
        pos_embed=randn(num_patches, DIM, scale=0.02),
        ids_keep=ids_keep,
        full_offsets=full,
        keep_offsets=kept,
        total_rows=batch * (num_patches + keep + 2),
        batch=batch, size=size, patch=patch, keep=keep, num_patches=num_patches,
    )  # fmt: skip


def _rows(offsets: torch.Tensor, length: int) -> torch.Tensor:
    return (offsets[:, None] + torch.arange(length, device=offsets.device)).reshape(-1)


def impl_mixfast(x: dict, view: str) -> Callable:
    images, ids = x["images"], x["ids_keep"]
    if view == "ssl":
        return lambda w, b, pos: ops.masked_patch_embed(images, w, b, pos, ids)
    if view == "sl":
        return lambda w, b, pos: ops.masked_patch_embed(images, w, b, pos)
    full, kept, rows = x["full_offsets"], x["keep_offsets"], x["total_rows"]
    return lambda w, b, pos: ops.packed_patch_embed(
        images, w, b, pos, rows, ids_keep=ids, full_offsets=full, keep_offsets=kept
    )


def impl_timm(x: dict, view: str) -> Callable:
    """timm PatchEmbed (run with the benchmark's weight and bias) + pos add + gather/scatter."""
    from timm.layers import PatchEmbed

    embed = PatchEmbed(x["size"], x["patch"], CHANNELS, DIM).to(x["images"].device)
    images, ids = x["images"], x["ids_keep"]
    gather_index = ids[..., None].expand(-1, -1, DIM)
    full_rows = _rows(x["full_offsets"], x["num_patches"])
    keep_rows = _rows(x["keep_offsets"], x["keep"])

    def run(w, b, pos):
        params = {"proj.weight": w, "proj.bias": b}
        tokens = torch.func.functional_call(embed, params, (images,)) + pos  # [B, N, D]
        if view == "sl":
            return tokens
        kept = torch.gather(tokens, 1, gather_index)
        if view == "ssl":
            return kept
        out = tokens.new_zeros(x["total_rows"], DIM)
        out = out.index_copy(0, full_rows, tokens.reshape(-1, DIM))
        return out.index_copy(0, keep_rows, kept.reshape(-1, DIM))

    return run


def impl_timm_compiled(x: dict, view: str) -> Callable:
    return torch.compile(impl_timm(x, view), dynamic=False)


IMPLS = {"mixfast": impl_mixfast, "timm_conv": impl_timm, "timm_conv_compiled": impl_timm_compiled}
DEFAULT_IMPLS = ("mixfast", "timm_conv")


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def output_grad(x: dict, view: str, mode: str) -> torch.Tensor | None:
    """The gradient fed to the backward (None for "fwd"), shaped as the view's output."""
    if mode == "fwd":
        return None
    shape = impl_mixfast(x, view)(x["weight"], x["bias"], x["pos_embed"]).shape
    gen = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=gen).to(x["images"].device, x["images"].dtype)


def step_fn(fn: Callable, x: dict, mode: str, grad: torch.Tensor | None) -> Callable:
    if mode == "fwd":
        params = (x["weight"], x["bias"], x["pos_embed"])
        return lambda: fn(*params)
    params = [x[n].detach().clone().requires_grad_(True) for n in ("weight", "bias", "pos_embed")]
    return lambda: torch.autograd.grad(fn(*params), params, grad)


def reference(x: dict, view: str, mode: str, grad: torch.Tensor | None) -> list[torch.Tensor]:
    """fp32 math on the same low-precision inputs: the output, or the three gradients."""
    params = [x[n].float().requires_grad_(mode != "fwd") for n in ("weight", "bias", "pos_embed")]
    images, ids = x["images"].float(), x["ids_keep"]
    if view == "mix":
        tokens = masked_patch_embed_reference(images, *params)
        out = tokens.new_zeros(x["total_rows"], DIM)
        out = out.index_copy(0, _rows(x["full_offsets"], x["num_patches"]), tokens.flatten(0, 1))
        kept = masked_patch_embed_reference(images, *params, ids)
        out = out.index_copy(0, _rows(x["keep_offsets"], x["keep"]), kept.flatten(0, 1))
    else:
        out = masked_patch_embed_reference(images, *params, ids if view == "ssl" else None)
    if mode == "fwd":
        return [out.detach()]
    return list(torch.autograd.grad(out, params, grad.float()))


def work(x: dict, view: str, mode: str) -> tuple[float, float]:
    """(useful FLOPs, minimal bytes) of one call; see the module docstring."""
    batch, keep, num_patches = x["batch"], x["keep"], x["num_patches"]
    kdim = CHANNELS * x["patch"] ** 2
    elem = x["images"].element_size()
    embedded = batch * (keep if view == "ssl" else num_patches)
    written = {"ssl": batch * keep, "sl": batch * num_patches, "mix": x["total_rows"]}[view]
    params = (DIM * kdim + DIM + num_patches * DIM) * elem
    flops = 2.0 * embedded * kdim * DIM
    fwd_bytes = embedded * kdim * elem + params + written * DIM * elem
    if mode == "fwd":
        return flops, fwd_bytes
    bwd_bytes = embedded * kdim * elem + written * DIM * elem + params
    return 2 * flops, fwd_bytes + bwd_bytes


def _shapes(x: dict) -> dict:
    keys = ("batch", "size", "patch", "keep", "num_patches", "total_rows")
    return dict({k: x[k] for k in keys}, channels=CHANNELS, dim=DIM)


def measure(impl: str, x: dict, view: str, mode: str, peak_gbps: float | None) -> dict:
    grad = output_grad(x, view, mode)
    run = step_fn(IMPLS[impl](x, view), x, mode, grad)
    row = {"max_abs_diff": harness.max_abs_diff(run(), reference(x, view, mode, grad))}
    times = harness.quantiles_ms(run, x["images"].device, budget_ms=100.0, warmup_ms=10.0)
    return dict(row, **harness.timing(times, *work(x, view, mode), peak_gbps))


def points(device, dtype, batch: int, impls, views, peak_gbps) -> Iterator[harness.Point]:
    inputs = {case: make_inputs(case, batch, device, dtype) for case in CASES}
    # the headline (ssl fwd) first, so a short time budget still measures it
    for view in views:
        for mode in MODES:
            for case, x in inputs.items():
                for impl in impls:
                    labels = dict(case=case, view=view, mode=mode, impl=impl, shapes=_shapes(x))
                    yield labels, partial(measure, impl, x, view, mode, peak_gbps)


def summarize(rows: list[dict]) -> dict:
    """Per (case, view, mode): the fastest timm peer's time over mixfast's."""
    return {"speedup_vs_timm": harness.speedups(rows, ("case", "view", "mode"))}


COLUMNS = (
    Column("case", "case", 14),
    Column("view", "view", 4),
    Column("mode", "mode", 8),
    Column("impl", "impl", 19),
    Column("ms", "median_ms", 8, ".4f"),
    Column("TFLOP/s", "tflops", 8, ".2f"),
    Column("GB/s", "gbps", 7, ".0f"),
    Column("%peak", "pct_peak_bw", 6, ".1f"),
    Column("maxdiff", "max_abs_diff", 8, ".1e"),
)


def main(argv: list[str] | None = None) -> int:
    parser = harness.BenchParser(
        __doc__, __file__, dtype="bf16", impls=IMPLS, default_impls=DEFAULT_IMPLS, time_budget=50.0
    )
    parser.add_argument("--batch", type=int, help="default 256 on CUDA, 16 on CPU")
    parser.add_argument(
        "--views", type=harness.comma_list(VIEWS), default=list(VIEWS),
        help=f"comma-separated, of {','.join(VIEWS)} (default: all)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch or (256 if device.type == "cuda" else 16)
    env = harness.environment(device)
    peak = env["peak_bw_GBps"]
    harness.run(
        args,
        points(device, args.dtype, batch, args.impls, args.views, peak),
        COLUMNS,
        title=f"{args.dtype} B={batch} D={DIM}",
        env=env,
        fields=dict(dtype=str(args.dtype), batch=batch, dim=DIM, peak_bw_GBps=peak),
        summarize=summarize,
    )
    return 0


# ----------------------------------------------------------------------------------------------
# pytest-benchmark
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("impl", DEFAULT_IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_bench_patch_embed(benchmark, bench_device, synced, case, impl, view, mode):
    cuda = bench_device == "cuda"
    x = make_inputs(case, 256 if cuda else 4, torch.device(bench_device), torch.bfloat16)
    grad = output_grad(x, view, mode)
    run = step_fn(IMPLS[impl](x, view), x, mode, grad)
    result = run()
    flops, nbytes = work(x, view, mode)
    benchmark.extra_info.update(
        device=harness.device_name(bench_device), dtype="bf16", shapes=_shapes(x),
        max_abs_diff=harness.max_abs_diff(result, reference(x, view, mode, grad)),
        flops=flops, bytes=nbytes,
    )  # fmt: skip
    benchmark.pedantic(synced(run), rounds=20 if cuda else 3, warmup_rounds=1)
    median_s = benchmark.stats.stats.median
    benchmark.extra_info.update(tflops=flops / median_s / 1e12, gbps=nbytes / median_s / 1e9)


if __name__ == "__main__":
    sys.exit(main())
