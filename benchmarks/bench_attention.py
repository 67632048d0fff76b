"""Shared varlen attention vs its peers on the ViT-Tiny mix layout (H=3, Dh=64, bf16).

Layouts: 256 SL sequences of 65 tokens + 256 SSL sequences of 17 (TinyImageNet 64/8, mask 0.75)
and 256 of 197 + 256 of 50 (ImageNet 224/16), packed back to back as in a mix step.
mixfast: one launch for all sequences (tile of the longest), and `mixfast_groups`: one launch
per group of lengths (`seq_groups`, each group its own tile).
Peers: torch `varlen_attn` (flash, CUDA only), SDPA per sub-batch (each sub-batch has one length,
so it is a dense [n, H, L, Dh] batch: SDPA padded to the group's max length with no padding
left), FlexAttention with a document mask (compiled; the block mask is built once, outside the
timing, since a mix step's layout is the same every step).

    python benchmarks/bench_attention.py --json OUT.json     # table + JSON, < 2 min on a GPU
    pytest benchmarks/bench_attention.py --benchmark-json=OUT.json   # pytest-benchmark

Timing (benchmarks/harness.py): triton.testing.do_bench on CUDA (L2 flushed, warm-up and
compilation excluded), medians with 20/80 % quantiles, of the eager call and of its CUDA-graph
replay (GPU time alone: eager fwd+bwd is host-bound for every implementation at these sizes);
perf_counter on CPU (ratios only mean something there). FLOPs count the useful work (4 L^2 Dh
per head and sequence forward, 2.5x that backward); bytes the minimal HBM traffic (q, k, v, o
forward; + dO, lse read and dq, dk, dv written backward), so GB/s is an effective figure,
comparable across implementations.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from functools import partial

import harness
import pytest
import torch
import torch.nn.functional as F
from harness import Column

from mixfast import ops
from mixfast.ops.reference import varlen_attn_bwd_reference, varlen_attn_fwd_reference

HEADS, HEAD_DIM = 3, 64
CASES = {  # name -> sub-batches (number of sequences, length), packed in this order
    "tin64_65+17": [(256, 65), (256, 17)],
    "in224_197+50": [(256, 197), (256, 50)],
}
MODES = ("fwd", "fwd+bwd")


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


def impl_mixfast_groups(x: dict) -> Callable:
    """One launch per group of lengths (the host-known layout), each with its own tile."""
    cu, m, groups = x["cu_seqlens"], x["max_seqlen"], x["groups"]
    return lambda q, k, v: ops.varlen_attention(q, k, v, cu, m, seq_groups=groups)


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
    "mixfast_groups": impl_mixfast_groups,
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
    out, lse = varlen_attn_fwd_reference(q.float(), k.float(), v.float(), cu, scale)
    if mode == "fwd":
        return [out]
    return list(
        varlen_attn_bwd_reference(
            x["grad"].float(), q.float(), k.float(), v.float(), out, lse, cu, scale
        )
    )


def _reference_or_none(x: dict, mode: str) -> list[torch.Tensor] | None:
    try:
        return reference(x, mode)
    except Exception as exc:  # no max-abs-diff then, but still the timings
        print(f"warning: reference failed: {harness.error_text(exc)}", file=sys.stderr)
        return None


def _backend_name(device: torch.device) -> str:
    from mixfast.ops._backend import use_triton

    return "triton" if use_triton(torch.empty(0, device=device)) else "reference"


def _tuned_configs() -> dict:
    """Launch configs the kernels' autotuner picked in this run (empty off the GPU)."""
    try:
        from mixfast.kernels.attention_configs import tuned_configs
    except ImportError:
        return {}
    return tuned_configs()


def measure(impl: str, x: dict, mode: str, ref, peak_gbps: float | None) -> dict:
    """Max-abs-diff to `ref`, eager timing and (CUDA) CUDA-graph replay timing, with rates."""
    run = step_fn(IMPLS[impl](x), x, mode)
    row = {"max_abs_diff": harness.max_abs_diff(run(), ref)}
    flops, nbytes = work(x, mode, x["q"].element_size())
    device = x["q"].device
    times = harness.quantiles_ms(run, device, budget_ms=150.0, warmup_ms=25.0, max_samples=50)
    row.update(harness.timing(times, flops, nbytes, peak_gbps))
    if device.type == "cuda":
        try:
            times = harness.graph_quantiles_ms(run)
        except Exception as exc:
            row["graph_error"] = harness.error_text(exc)
        else:
            row.update(harness.timing(times, flops, nbytes, peak_gbps, prefix="graph_"))
    return row


def points(device, dtype, scale_batch: float, impls, peak_gbps) -> Iterator[harness.Point]:
    for case, groups in CASES.items():
        x = make_inputs(groups, device, dtype, scale_batch)
        shapes = dict(groups=x["groups"], total_tokens=x["q"].shape[0])
        for mode in MODES:
            ref = _reference_or_none(x, mode)
            for impl in impls:
                labels = dict(case=case, mode=mode, impl=impl, shapes=shapes)
                yield labels, partial(measure, impl, x, mode, ref, peak_gbps)


def summarize(rows: list[dict]) -> dict:
    """mixfast's speedup over the fastest peer per case and mode (eager and CUDA-graph), and the
    launch configs its autotuner picked."""
    speedup: dict[str, dict] = {}
    for label, timing in (("eager", "median_ms"), ("graph", "graph_median_ms")):
        for key, record in harness.speedups(rows, ("case", "mode"), timing).items():
            speedup.setdefault(key, {})[label] = record
    return {"speedup_vs_fastest_peer": speedup, "mixfast_tuned_configs": _tuned_configs()}


def _rate(name: str) -> Callable[[dict], float | None]:
    """The CUDA-graph figure where there is one, else the eager one."""
    return lambda row: row.get(f"graph_{name}", row.get(name))


COLUMNS = (
    Column("case", "case", 13),
    Column("mode", "mode", 7),
    Column("impl", "impl", 13),
    Column("ms", "median_ms", 7, ".4f"),
    Column("graph ms", "graph_median_ms", 8, ".4f"),
    Column("TFLOP/s", _rate("tflops"), 7, ".2f"),
    Column("GB/s", _rate("gbps"), 6, ".0f"),
    Column("%peak", _rate("pct_peak_bw"), 5, ".1f"),
    Column("maxdiff", "max_abs_diff", 7, ".1e"),
)


def main(argv: list[str] | None = None) -> int:
    parser = harness.BenchParser(__doc__, __file__, dtype="bf16", impls=IMPLS, time_budget=100.0)
    parser.add_argument(
        "--scale-batch", type=float, default=None,
        help="multiply the 256-sequence sub-batches (default 1 on CUDA, 1/16 on CPU)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    scale = args.scale_batch or (1.0 if device.type == "cuda" else 1 / 16)
    env = harness.environment(device, attention_backend=_backend_name(device))
    harness.run(
        args,
        points(device, args.dtype, scale, args.impls, env["peak_bw_GBps"]),
        COLUMNS,
        title=f"{args.dtype} H={HEADS} Dh={HEAD_DIM} | mixfast attention: "
        f"{env['attention_backend']} | ms: eager, host overhead included; graph ms: CUDA-graph "
        "replay, GPU time (rates use it)",
        env=env,
        fields=dict(dtype=str(args.dtype), heads=HEADS, head_dim=HEAD_DIM, scale_batch=scale),
        summarize=summarize,
    )
    return 0


# ----------------------------------------------------------------------------------------------
# pytest-benchmark
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
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
        bytes=nbytes, max_abs_diff=harness.max_abs_diff(result, reference(x, mode)),
    )  # fmt: skip
    benchmark.pedantic(synced(run), rounds=20, warmup_rounds=3)
    median_s = benchmark.stats.stats.median
    benchmark.extra_info.update(tflops=flops / median_s / 1e12, gbps=nbytes / median_s / 1e9)


if __name__ == "__main__":
    sys.exit(main())
