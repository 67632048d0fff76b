"""Fused masked-patch embedding vs timm PatchEmbed (stride-p conv) + gather + pos-embed add.

ViT-Tiny shapes (D=192, bf16, B=256): TinyImageNet 64x64 / patch 8 (N=64, K=16 kept) and
ImageNet 224 / patch 16 (N=196, K=49 kept). Views:
  ssl    the kept patches [B, K, D]            mixfast.ops.masked_patch_embed(..., ids_keep)
  sl     all patches [B, N, D]                 mixfast.ops.masked_patch_embed(...)
  mix    both views packed in one buffer       mixfast.ops.packed_patch_embed(...)
         ([cls, N patches] x B then [cls, K kept] x B; the peer scatters its tokens there)
Modes: fwd, and fwd+bwd (grads of weight, bias and pos_embed).

    python benchmarks/bench_patch_embed.py --json OUT.json     # table + JSON, < 1 min on a GPU
    pytest benchmarks/bench_patch_embed.py                      # pytest-benchmark

Timing: triton.testing.do_bench on CUDA (warm-up and compilation excluded), median with 20/80 %
quantiles; perf_counter on CPU, where both sides run PyTorch code and only the script's plumbing
is exercised. FLOPs are the useful GEMM work (2 x tokens x C*p*p x D per pass; the backward does
one GEMM for dW); bytes the minimal traffic: the pixels of the embedded patches, the weights, the
pos rows, the tokens written (backward: the token gradients read, the gradients written), so
GB/s is an effective figure comparable across implementations. max_abs_diff is against fp32
math on the same bf16 inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import environment, quantiles_ms  # noqa: E402

from mixfast import ops  # noqa: E402
from mixfast.reference import masked_patch_embed_reference  # noqa: E402

DIM, CHANNELS = 192, 3
CASES = {  # name -> (image size, patch, kept patches)
    "tin64_p8_k16": (64, 8, 16),
    "in224_p16_k49": (224, 16, 49),
}
VIEWS = ("ssl", "sl", "mix")
MODES = ("fwd", "fwd+bwd")
PEAK_BW = [  # (name substring, bytes/s); first match wins
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100", 2.0e12),
]
RESULTS = Path(__file__).resolve().parent / "results"


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


def max_abs_diff(results, ref: list[torch.Tensor]) -> float:
    results = [results] if isinstance(results, torch.Tensor) else list(results)
    return max((r.float() - w).abs().max().item() for r, w in zip(results, ref))


def time_ms(run: Callable, device: torch.device) -> list[float]:
    return quantiles_ms(run, device, budget_ms=100.0, warmup_ms=10.0, max_samples=30)


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


def bench_one(impl: str, x: dict, view: str, mode: str, device, peak_bw) -> dict:
    row = dict(impl=impl, view=view, mode=mode)
    try:
        out_shape = impl_mixfast(x, view)(x["weight"], x["bias"], x["pos_embed"]).shape
        gen = torch.Generator().manual_seed(1)
        grad = None if mode == "fwd" else torch.randn(out_shape, generator=gen).to(device)
        grad = grad.to(x["images"].dtype) if grad is not None else None
        run = step_fn(IMPLS[impl](x, view), x, mode, grad)
        row["max_abs_diff"] = max_abs_diff(run(), reference(x, view, mode, grad))
        med, q20, q80 = time_ms(run, device)
    except Exception as exc:  # a peer that fails here: record it and go on
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        return row
    flops, nbytes = work(x, view, mode)
    row.update(median_ms=med, q20_ms=q20, q80_ms=q80)
    row.update(tflops=flops / med / 1e9, gbps=nbytes / med / 1e6)
    if peak_bw:
        row["pct_peak_bw"] = 100 * row["gbps"] / peak_bw
    return row


# ----------------------------------------------------------------------------------------------
# Script
# ----------------------------------------------------------------------------------------------


def run_all(device, dtype, batch: int, impls, views, time_budget_s: float) -> dict:
    t_start = time.perf_counter()
    env = environment(device)
    peak = next((bw for key, bw in PEAK_BW if key in env["device"]), None)
    out = dict(environment=env, dtype=str(dtype), batch=batch, dim=DIM, results=[])
    out["peak_bw_GBps"] = peak / 1e9 if peak else None
    inputs = {case: make_inputs(case, batch, device, dtype) for case in CASES}
    # the headline (ssl fwd) first, so a short time budget still measures it
    for view in views:
        for mode in MODES:
            for case, x in inputs.items():
                for impl in impls:
                    if time.perf_counter() - t_start > time_budget_s:
                        row = dict(impl=impl, view=view, mode=mode, error="skipped: time budget")
                    else:
                        row = bench_one(impl, x, view, mode, device, peak)
                    row.update(case=case, shapes=_shapes(x))
                    out["results"].append(row)
    out["speedup_vs_timm"] = speedups(out["results"])
    return out


def _shapes(x: dict) -> dict:
    keys = ("batch", "size", "patch", "keep", "num_patches", "total_rows")
    return dict({k: x[k] for k in keys}, channels=CHANNELS, dim=DIM)


def speedups(rows: list[dict]) -> dict:
    """Per (case, view, mode): the fastest timm peer's time over mixfast's."""
    result = {}
    for key in sorted({(r["case"], r["view"], r["mode"]) for r in rows}):
        timed = {
            r["impl"]: r["median_ms"]
            for r in rows
            if (r["case"], r["view"], r["mode"]) == key and "median_ms" in r
        }
        peers = {n: t for n, t in timed.items() if n != "mixfast"}
        if "mixfast" in timed and peers:
            best = min(peers, key=peers.get)
            result[" ".join(key)] = dict(peer=best, speedup=peers[best] / timed["mixfast"])
    return result


def print_table(out: dict) -> None:
    env = out["environment"]
    print(
        f"# {env['device']} | torch {env['torch']} triton {env['triton']} | {out['dtype']} "
        f"B={out['batch']} D={DIM}"
    )
    print(
        f"{'case':14} {'view':4} {'mode':8} {'impl':19} {'ms':>8} {'TFLOP/s':>8} {'GB/s':>7} "
        f"{'%peak':>6} {'maxdiff':>8}"
    )
    for r in out["results"]:
        head = f"{r['case']:14} {r['view']:4} {r['mode']:8} {r['impl']:19}"
        if "error" in r:
            print(f"{head} {r['error'][:70]}")
            continue
        pct = f"{r['pct_peak_bw']:6.1f}" if "pct_peak_bw" in r else f"{'-':>6}"
        print(
            f"{head} {r['median_ms']:8.4f} {r['tflops']:8.2f} {r['gbps']:7.0f} {pct} "
            f"{r['max_abs_diff']:8.1e}"
        )
    for key, s in out["speedup_vs_timm"].items():
        print(f"speedup {key}: {s['speedup']:.2f}x vs {s['peer']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--batch", type=int, help="default 256 on CUDA, 16 on CPU")
    parser.add_argument(
        "--impls", default=",".join(DEFAULT_IMPLS), help=f"comma-separated, of {list(IMPLS)}"
    )
    parser.add_argument("--views", default=",".join(VIEWS), help=f"comma-separated, of {VIEWS}")
    parser.add_argument("--time-budget", type=float, default=50.0, help="seconds; rest skipped")
    args = parser.parse_args(argv)
    impls = [n for n in args.impls.split(",") if n in IMPLS]
    views = [v for v in args.views.split(",") if v in VIEWS]
    if not impls or not views:
        parser.error(f"--impls must name some of {list(IMPLS)} and --views some of {VIEWS}")
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    batch = args.batch or (256 if device.type == "cuda" else 16)
    out = run_all(device, dtype, batch, impls, views, args.time_budget)
    out["command"] = " ".join(sys.argv)
    print_table(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))
        print(f"wrote {args.json}")


# ----------------------------------------------------------------------------------------------
# pytest-benchmark
# ----------------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the script needs no pytest
    pytest = None

if pytest is not None:
    _DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _BATCH = 256 if _DEVICE.type == "cuda" else 4
    _ROUNDS = 20 if _DEVICE.type == "cuda" else 3

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("view", VIEWS)
    @pytest.mark.parametrize("impl", DEFAULT_IMPLS)
    @pytest.mark.parametrize("case", list(CASES))
    def test_bench_patch_embed(benchmark, case, impl, view, mode):
        x = make_inputs(case, _BATCH, _DEVICE, torch.bfloat16)
        out_shape = impl_mixfast(x, view)(x["weight"], x["bias"], x["pos_embed"]).shape
        grad = None if mode == "fwd" else torch.randn(out_shape).to(_DEVICE, torch.bfloat16)
        run = step_fn(IMPLS[impl](x, view), x, mode, grad)
        result = run()
        sync = torch.cuda.synchronize if _DEVICE.type == "cuda" else (lambda: None)

        def timed():
            run()
            sync()

        flops, nbytes = work(x, view, mode)
        benchmark.extra_info.update(
            device=environment(_DEVICE)["device"], dtype="bf16", shapes=_shapes(x),
            max_abs_diff=max_abs_diff(result, reference(x, view, mode, grad)),
            flops=flops, bytes=nbytes,
        )  # fmt: skip
        benchmark.pedantic(timed, rounds=_ROUNDS, warmup_rounds=1)
        median_s = benchmark.stats.stats.median
        benchmark.extra_info.update(tflops=flops / median_s / 1e12, gbps=nbytes / median_s / 1e9)
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"bench_patch_embed_{_DEVICE.type}.json"
        rows = json.loads(path.read_text()) if path.exists() else {}
        rows[f"{case} {view} {mode} {impl}"] = dict(
            median_ms=median_s * 1e3, **benchmark.extra_info
        )
        path.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
