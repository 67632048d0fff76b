"""Shared varlen attention vs its peers on the ViT-Tiny mix layout (H=3, Dh=64, bf16).

Layouts: 256 SL sequences of 65 tokens + 256 SSL sequences of 17 (TinyImageNet 64/8, mask 0.75)
and 256 of 197 + 256 of 50 (ImageNet 224/16), packed back to back as in a mix step.
Peers: torch `varlen_attn` (flash, CUDA only), SDPA per sub-batch (each sub-batch has one length,
so it is a dense [n, H, L, Dh] batch: SDPA padded to the group's max length with no padding
left), FlexAttention with a document mask (compiled; the block mask is built once, outside the
timing, since a mix step's layout is the same every step).

    python benchmarks/bench_attention.py --json OUT.json     # table + JSON, < 2 min on a GPU
    pytest benchmarks/bench_attention.py --benchmark-json=OUT.json   # pytest-benchmark

Timing: triton.testing.do_bench on CUDA (L2 flushed, warm-up and compilation excluded), medians
with 20/80 % quantiles, of the eager call and of its CUDA-graph replay (GPU time alone: eager
fwd+bwd is host-bound for every implementation at these sizes); perf_counter on CPU (ratios only mean something there). FLOPs count the
useful work (4 L^2 Dh per head and sequence forward, 2.5x that backward); bytes the minimal HBM
traffic (q, k, v, o forward; + dO, lse read and dq, dk, dv written backward), so GB/s is an
effective figure, comparable across implementations.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import quantiles_ms  # noqa: E402

from mixfast import ops  # noqa: E402
from mixfast._attention import _reference_bwd, _reference_fwd  # noqa: E402

HEADS, HEAD_DIM = 3, 64
CASES = {  # name -> sub-batches (number of sequences, length), packed in this order
    "tin64_65+17": [(256, 65), (256, 17)],
    "in224_197+50": [(256, 197), (256, 50)],
}
PEAK_BW = [  # (name substring, bytes/s); first match wins
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100", 2.0e12),
]


# ----------------------------------------------------------------------------------------------
# Inputs and implementations
# ----------------------------------------------------------------------------------------------


def make_inputs(groups, device, dtype, scale_batch: float = 1.0, seed: int = 0) -> dict:
    groups = [(max(1, round(n * scale_batch)), length) for n, length in groups]
    lengths = [length for n, length in groups for _ in range(n)]
    total = sum(lengths)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v, grad = (
        torch.randn(total, HEADS, HEAD_DIM, generator=gen).to(device, dtype) for _ in range(4)
    )
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return dict(
        q=q, k=k, v=v, grad=grad, cu_seqlens=cu.to(device), lengths=lengths, groups=groups,
        max_seqlen=max(lengths),
    )  # fmt: skip


def impl_mixfast(x: dict) -> Callable:
    return lambda q, k, v: ops.varlen_attention(q, k, v, x["cu_seqlens"], x["max_seqlen"])


def impl_varlen_attn(x: dict) -> Callable:
    from torch.nn.attention.varlen import varlen_attn

    if x["q"].device.type != "cuda":
        raise RuntimeError("varlen_attn is CUDA-only")
    cu, m = x["cu_seqlens"], x["max_seqlen"]
    return lambda q, k, v: varlen_attn(q, k, v, cu, cu, m, m)


def impl_sdpa_grouped(x: dict) -> Callable:
    """One dense SDPA per sub-batch ([n, L, H, Dh] views of the packed buffer), then concat."""

    def run(q, k, v):
        outs, row = [], 0
        for n, length in x["groups"]:
            sl = slice(row, row + n * length)
            qg, kg, vg = (t[sl].view(n, length, HEADS, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
            outs.append(F.scaled_dot_product_attention(qg, kg, vg).transpose(1, 2).flatten(0, 1))
            row += n * length
        return torch.cat(outs)

    return run


def impl_flex_document(x: dict) -> Callable:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    device = x["q"].device
    lengths = torch.tensor(x["lengths"], device=device)
    doc = torch.repeat_interleave(torch.arange(len(x["lengths"]), device=device), lengths)
    total = doc.shape[0]

    def same_document(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    # compiled mask construction: the eager one materialises a T x T mask (4 GB at T = 63k)
    on_gpu = device.type == "cuda"
    block_mask = create_block_mask(same_document, None, None, total, total, device, _compile=on_gpu)
    flex = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v):
        q4, k4, v4 = (t.transpose(0, 1)[None] for t in (q, k, v))  # [1, H, T, Dh]
        return flex(q4, k4, v4, block_mask=block_mask)[0].transpose(0, 1)

    return run


IMPLS = {
    "mixfast": impl_mixfast,
    "varlen_attn": impl_varlen_attn,
    "sdpa_grouped": impl_sdpa_grouped,
    "flex_document": impl_flex_document,
}


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def step_fn(fn: Callable, x: dict, mode: str) -> Callable:
    """A no-arg callable running the forward ("fwd") or forward + backward ("fwd+bwd")."""
    if mode == "fwd":
        q, k, v = x["q"], x["k"], x["v"]
        return lambda: fn(q, k, v)
    q, k, v = (x[n].detach().clone().requires_grad_(True) for n in ("q", "k", "v"))
    grad = x["grad"]
    return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad)


def time_ms(run: Callable, device: torch.device) -> list[float]:
    return quantiles_ms(run, device, budget_ms=150.0, warmup_ms=25.0, max_samples=50)


def work(x: dict, mode: str, element_size: int) -> tuple[float, float]:
    """(useful FLOPs, minimal HBM bytes) of one call."""
    fwd_flops = sum(4 * n * length**2 * HEAD_DIM * HEADS for n, length in x["groups"])
    tensor_bytes = x["q"].numel() * element_size
    lse_bytes = x["q"].shape[0] * HEADS * 4
    if mode == "fwd":
        return fwd_flops, 4 * tensor_bytes + lse_bytes
    # forward (q, k, v, o, lse) + backward (read q, k, v, o, dO, lse; write dq, dk, dv)
    return 3.5 * fwd_flops, 12 * tensor_bytes + 2 * lse_bytes


def reference(x: dict, mode: str) -> list[torch.Tensor]:
    """Fp32 math on the same (low-precision) inputs: out, or dq, dk, dv."""
    scale = 1.0 / math.sqrt(HEAD_DIM)
    q, k, v, cu = x["q"], x["k"], x["v"], x["cu_seqlens"]
    out, lse = _reference_fwd(q.float(), k.float(), v.float(), cu, scale)
    if mode == "fwd":
        return [out]
    return list(
        _reference_bwd(x["grad"].float(), q.float(), k.float(), v.float(), out, lse, cu, scale)
    )


def _try(fn: Callable, *args):
    try:
        return fn(*args)
    except Exception as exc:
        print(f"warning: {fn.__name__} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def max_abs_diff(results, ref: list[torch.Tensor] | None) -> float:
    if ref is None:
        return float("nan")
    results = [results] if isinstance(results, torch.Tensor) else list(results)
    return max((r.float() - w).abs().max().item() for r, w in zip(results, ref))


def device_info(device: torch.device) -> dict:
    """Device, versions (benchmarks/conftest.py's shared record where present) and peak HBM BW."""
    try:
        from conftest import environment  # benchmarks/conftest.py

        info = environment(device)
    except (ImportError, TypeError):  # run from elsewhere: a minimal record of our own
        info = dict(device=str(device), torch=torch.__version__, python=platform.python_version())
        if device.type == "cuda":
            info["device"] = torch.cuda.get_device_name(device)
    info.setdefault("triton", _triton_version())
    info["attention_backend"] = _backend_name(device)
    info["peak_bw_GBps"] = next((bw / 1e9 for key, bw in PEAK_BW if key in info["device"]), None)
    return info


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _backend_name(device: torch.device) -> str:
    from mixfast._backend import use_triton

    return "triton" if use_triton(torch.empty(0, device=device)) else "reference"


def graph_time_ms(run: Callable, budget_ms: float = 100.0) -> list[float]:
    """[median, q20, q80] ms of the call captured in a CUDA graph and replayed: the GPU time
    alone. Eager fwd+bwd of every implementation here is bound by host overhead (autograd,
    Python ops: ~0.7 ms on the first H100 run), which hides the kernels' own speed."""
    from triton.testing import do_bench

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # autograd needs a warm-up on a side stream before capture
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return list(do_bench(graph.replay, warmup=25, rep=budget_ms, quantiles=[0.5, 0.2, 0.8]))


def bench_one(name: str, case: str, x: dict, mode: str, device, ref, peak_bw) -> dict:
    row = dict(impl=name, case=case, mode=mode)
    try:
        run = step_fn(IMPLS[name](x), x, mode)
        row["max_abs_diff"] = max_abs_diff(run(), ref)
        med, q20, q80 = time_ms(run, device)
    except Exception as exc:  # a peer the installed torch lacks, or one that fails: skip it
        row["error"] = _error(exc)
        return row
    flops, nbytes = work(x, mode, x["q"].element_size())
    row.update(median_ms=med, q20_ms=q20, q80_ms=q80, **_rates(med, flops, nbytes, peak_bw, ""))
    if device.type == "cuda":
        try:
            med, q20, q80 = graph_time_ms(run)
        except Exception as exc:
            row["graph_error"] = _error(exc)
        else:
            row.update(graph_median_ms=med, graph_q20_ms=q20, graph_q80_ms=q80)
            row.update(_rates(med, flops, nbytes, peak_bw, "graph_"))
    return row


def _rates(ms: float, flops: float, nbytes: float, peak_bw, prefix: str) -> dict:
    rates = {f"{prefix}tflops": flops / ms / 1e9, f"{prefix}gbps": nbytes / ms / 1e6}
    if peak_bw:
        rates[f"{prefix}pct_peak_bw"] = 100 * rates[f"{prefix}gbps"] / peak_bw
    return rates


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"


# ----------------------------------------------------------------------------------------------
# Script
# ----------------------------------------------------------------------------------------------


def run_all(device, dtype, scale_batch: float, impls: list[str], time_budget_s: float) -> dict:
    t_start = time.perf_counter()
    info = device_info(device)
    out = dict(
        environment=info, dtype=str(dtype), heads=HEADS, head_dim=HEAD_DIM, scale_batch=scale_batch,
        results=[],
    )  # fmt: skip
    for case, groups in CASES.items():
        x = make_inputs(groups, device, dtype, scale_batch)
        for mode in ("fwd", "fwd+bwd"):
            ref = _try(reference, x, mode)  # None (no max-abs-diff) if even that fails
            for name in impls:
                if time.perf_counter() - t_start > time_budget_s:
                    row = dict(impl=name, case=case, mode=mode, error="skipped: time budget")
                else:
                    row = bench_one(name, case, x, mode, device, ref, info["peak_bw_GBps"])
                row["shapes"] = dict(groups=x["groups"], total_tokens=x["q"].shape[0])
                out["results"].append(row)
    out["speedup_vs_fastest_peer"] = speedups(out["results"])
    out["mixfast_tuned_configs"] = _tuned_configs()
    return out


def _tuned_configs() -> dict:
    """Launch configs the kernels' autotuner picked in this run (empty off the GPU)."""
    try:
        from mixfast.kernels.attention import tuned_configs
    except ImportError:
        return {}
    return tuned_configs()


def speedups(rows: list[dict]) -> dict:
    """Per case and mode: mixfast's speedup over the fastest peer, eager and CUDA-graph."""
    result = {}
    for case, mode in sorted({(r["case"], r["mode"]) for r in rows}):
        same = [r for r in rows if (r["case"], r["mode"]) == (case, mode)]
        for timing in ("median_ms", "graph_median_ms"):
            timed = {r["impl"]: r[timing] for r in same if timing in r}
            peers = {n: t for n, t in timed.items() if n != "mixfast"}
            if "mixfast" in timed and peers:
                best = min(peers, key=peers.get)
                label = "graph" if timing.startswith("graph") else "eager"
                speedup = dict(peer=best, speedup=peers[best] / timed["mixfast"])
                result.setdefault(f"{case} {mode}", {})[label] = speedup
    return result


def print_table(out: dict) -> None:
    env = out["environment"]
    print(f"# {env['device']} | torch {env['torch']} triton {env['triton']} | {out['dtype']} "
          f"H={HEADS} Dh={HEAD_DIM} | mixfast attention: {env['attention_backend']} | ms: eager, "
          "host overhead included; graph ms: CUDA-graph replay, GPU time (rates use it)")  # fmt: skip
    print(f"{'case':13} {'mode':7} {'impl':13} {'ms':>7} {'graph ms':>8} {'TFLOP/s':>7} {'GB/s':>6} {'%peak':>5} {'maxdiff':>7}")  # fmt: skip
    for r in out["results"]:
        head = f"{r['case']:13} {r['mode']:7} {r['impl']:13}"
        if "error" in r:
            print(f"{head} {r['error'][:70]}")
            continue
        p = "graph_" if "graph_median_ms" in r else ""
        graph = f"{r['graph_median_ms']:8.4f}" if p else f"{'-':>8}"
        pct = f"{r[p + 'pct_peak_bw']:5.1f}" if p + "pct_peak_bw" in r else f"{'-':>5}"
        print(f"{head} {r['median_ms']:7.4f} {graph} {r[p + 'tflops']:7.2f} {r[p + 'gbps']:6.0f} {pct} {r['max_abs_diff']:7.1e}")  # fmt: skip
    for key, by_timing in out["speedup_vs_fastest_peer"].items():
        parts = [f"{t} {s['speedup']:.2f}x vs {s['peer']}" for t, s in by_timing.items()]
        print(f"speedup {key}: " + " | ".join(parts))
    for key, config in out["mixfast_tuned_configs"].items():
        print(f"tuned {key}: {config}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument(
        "--scale-batch", type=float, default=None,
        help="multiply the 256-sequence sub-batches (default 1 on CUDA, 1/16 on CPU)",
    )  # fmt: skip
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset")
    parser.add_argument(
        "--time-budget", type=float, default=100.0, help="seconds; later runs skipped"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    scale = args.scale_batch or (1.0 if device.type == "cuda" else 1 / 16)
    impls = [n for n in args.impls.split(",") if n in IMPLS]
    out = run_all(device, dtype, scale, impls, args.time_budget)
    out["command"] = " ".join(sys.argv)
    print_table(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


# ----------------------------------------------------------------------------------------------
# pytest-benchmark
# ----------------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the script needs no pytest
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
    @pytest.mark.parametrize("impl", list(IMPLS))
    @pytest.mark.parametrize("case", list(CASES))
    def test_bench_attention(benchmark, bench_device, synced, case, impl, mode):
        device = torch.device(bench_device)
        scale = 1.0 if device.type == "cuda" else 1 / 16  # CPU: ratios only, keep it short
        x = make_inputs(CASES[case], device, torch.bfloat16, scale)
        try:
            run = step_fn(IMPLS[impl](x), x, mode)
            result = run()
        except Exception as exc:
            pytest.skip(f"{impl} unavailable: {type(exc).__name__}: {exc}")
        flops, nbytes = work(x, mode, x["q"].element_size())
        benchmark.extra_info.update(
            attention_backend=_backend_name(device), groups=x["groups"], flops=flops,
            bytes=nbytes, max_abs_diff=max_abs_diff(result, reference(x, mode)),
        )  # fmt: skip
        benchmark.pedantic(synced(run), rounds=20, warmup_rounds=3)
        median_s = benchmark.stats.stats.median
        benchmark.extra_info.update(tflops=flops / median_s / 1e12, gbps=nbytes / median_s / 1e9)


if __name__ == "__main__":
    main()
