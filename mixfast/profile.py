"""Where a training step's time goes: the library part of `mixfast profile`
(mixfast/cli/profile.py runs the steps and writes the trace of each phase; this reads it).

From a trace's events inside its step windows (`STEP` record_function regions):

  families   every host event's self time (its time minus its children's) lands in exactly one
             family: the outermost "sticky" family among it and its ancestors (data loading,
             optimizer, attention, patch embedding, masking, device wait: everything they run
             is theirs), else its own name's family, else the nearest ancestor's, else "copies +
             views" (a view or other metadata op) or "other". The profile's own regions around
             PhaseBatches.next (data loading) and OptimizerStages.step (clipping, the AdamW
             update, zero_grad) count whole, Python time inside them included.
  host gaps  time inside the step windows that no event on any profiled CPU thread covers
             (the interpreter between ops); the main thread's events count first, another
             thread's (CUDA's autograd thread) only where the main thread has none, so the
             families plus the gaps are the step time exactly.
  device     on CUDA: each kernel's time goes to the family of the host event that launched it
             (by correlation id); "device idle" = step time that no kernel covers.
  MFU        achieved FLOP/s (StepRunner.count_flops x steps / the timed steps' wall time)
             over the device's peak: on CPU a 1024x1024 fp32 matmul timed on the spot; on a
             GPU the dense bf16 peak of a known device (KNOWN_PEAKS) with a matmul beside it.
"""

from __future__ import annotations

import bisect
import re
import resource
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

STEP, DATA, OPTIMIZER, WAIT = (
    f"mixfast.profile::{n}" for n in ("step", "data", "optimizer", "wait")
)
FAMILIES = (
    "GEMM", "attention", "patch embedding", "masking", "norm + elementwise", "copies + views",
    "optimizer", "data loading", "autograd engine", "compiled code", "device wait", "other",
)  # fmt: skip
STICKY = {"attention", "patch embedding", "masking", "optimizer", "data loading", "device wait"}
REGIONS = {DATA: "data loading", OPTIMIZER: "optimizer", WAIT: "device wait"}
GEMM = {
    "mm", "addmm", "bmm", "matmul", "linear", "baddbmm", "addbmm", "addmm_activation", "addmv",
    "mv", "dot", "vdot", "einsum", "scaled_mm", "int_mm", "mkldnn_linear", "tensordot", "outer",
}  # fmt: skip
ELEMENTWISE = {
    "add", "sub", "rsub", "mul", "div", "pow", "sqrt", "rsqrt", "exp", "log", "neg", "abs",
    "clamp", "clamp_min", "clamp_max", "where", "lerp", "addcmul", "addcdiv", "sum", "mean",
    "var", "std", "var_mean", "max", "min", "amax", "amin", "argmax", "argmin", "eq", "ne", "lt",
    "le", "gt", "ge", "and", "or", "xor", "ior", "iand", "ixor", "invert", "isfinite", "isnan",
    "isinf", "fill", "zero", "zeros", "ones", "full", "new_zeros", "new_ones", "new_full",
    "gelu", "relu", "silu", "tanh", "sigmoid", "erf", "erfinv", "reciprocal", "sign", "floor",
    "ceil", "round", "square", "cumsum", "sort", "topk", "rand", "randn", "randint", "randperm",
    "arange", "uniform", "normal", "bernoulli", "masked_fill", "nan_to_num", "all", "any",
    "prod", "trunc", "frac", "remainder", "fmod", "maximum", "minimum", "threshold",
    "logsumexp", "exponential",
}  # fmt: skip
ELEMENTWISE_PARTS = re.compile(r"norm|loss|softmax|dropout|^bitwise_|^logical_|_like$")
COPIES = {
    "to", "to_copy", "copy", "clone", "contiguous", "cat", "stack", "index", "index_select",
    "index_add", "index_put", "index_copy", "gather", "scatter", "scatter_add", "scatter_reduce",
    "masked_select", "masked_scatter", "take", "put", "pad", "constant_pad_nd", "repeat",
    "repeat_interleave", "flip", "roll", "item", "local_scalar_dense", "resize", "tril", "triu",
    "embedding", "one_hot", "nonzero", "unique", "cast_once",
}  # fmt: skip
METADATA = {
    "view", "unsafe_view", "reshape", "expand", "permute", "transpose", "t", "unsqueeze",
    "squeeze", "slice", "select", "split", "split_with_sizes", "unbind", "as_strided", "alias",
    "detach", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "unfold",
    "reshape_alias", "lift_fresh", "numpy_t", "chunk", "narrow", "diagonal", "resolve_conj",
    "resolve_neg", "flatten", "unflatten", "view_as", "expand_as", "movedim", "result_type",
    "set", "record_stream",
}  # fmt: skip
# aten ops with no kernel of their own, left out of the CPU launch count (also
# benchmarks/bench_launches.py's, which imports them from here)
METADATA_OPS = {
    "view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "t", "unsqueeze",
    "squeeze", "slice", "select", "split", "split_with_sizes", "unbind", "as_strided", "alias",
    "detach", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "unfold",
    "_reshape_alias", "lift_fresh", "numpy_T", "chunk", "narrow", "diagonal",
}  # fmt: skip
SYNCS = {"cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize",
         "cuStreamSynchronize", "cuCtxSynchronize"}  # fmt: skip
LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cudaLaunchKernelExC")
HOST_CATS = {"cpu_op", "user_annotation", "cuda_runtime", "cuda_driver", "python_function"}
DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
# Dense bf16 tensor-core peaks (FLOP/s) by device name, first match wins.
KNOWN_PEAKS = (
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
    ("L40S", 362e12), ("L4", 121e12),
)  # fmt: skip
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NODE = re.compile(r"Backward\d*$")
_PATCH = re.compile(r"patch_embed|convolution|^conv\dd$|conv_depthwise")
EPS_US = 1e-3  # trace times are microseconds, to the nanosecond


# ------------------------------------------------------------------------------ op families


def base_name(name: str) -> str:
    """An event's name as an op's base name: namespace, autograd wrapper, Backward suffix,
    underscores and CamelCase gone (autograd::engine::evaluate_function: AddmmBackward0 ->
    addmm, aten::_to_copy -> to_copy, mixfast::varlen_attn_fwd -> varlen_attn_fwd)."""
    name = name.removeprefix("autograd::engine::evaluate_function: ")
    name = name.removeprefix("GeneratedBackwardFor_").split("::")[-1]
    name = _CAMEL.sub("_", _NODE.sub("", name)).lower().strip("_")
    return re.sub(r"_(backward|default)$", "", name).strip("_")


def name_family(name: str) -> str | None:
    """The family an op's name says, or None when the name says none (a view, an unknown op,
    a runtime call): such an op is its caller's."""
    if name in REGIONS:
        return REGIONS[name]
    if name in SYNCS:
        return "device wait"
    if name.startswith("Optimizer."):
        return "optimizer"
    base = base_name(name)
    if "attn" in base or "attention" in base:
        return "attention"
    if _PATCH.search(base):
        return "patch embedding"
    if "masking" in base:
        return "masking"
    if base.startswith(("foreach_", "fused_adam")) or "clip_grad" in base:
        return "optimizer"
    if base in GEMM:
        return "GEMM"
    if base in COPIES:
        return "copies + views"
    if base in ELEMENTWISE or ELEMENTWISE_PARTS.search(base):
        return "norm + elementwise"
    if re.search(r"compiled|triton|inductor", base):
        return "compiled code"
    autograd = name.startswith("autograd::") or bool(_NODE.search(name))
    if autograd or base == "accumulate_grad":
        return "autograd engine"  # the engine's own work, and nodes of views
    return None


def _fallback(name: str) -> str:
    return "copies + views" if base_name(name) in METADATA else "other"


# ------------------------------------------------------------------------------ the timeline


def _thread_segments(events: list[dict]) -> tuple[list[tuple[float, float, str]], dict]:
    """Self-time segments (start, end, family) of one thread's events, sorted, disjoint, and
    {correlation id: family} of its runtime calls (the launches of kernels)."""
    segments, launched = [], {}
    stack: list[list] = []  # [end, family, sticky, named, cursor]

    def pop() -> None:
        end, family, _, _, cursor = stack.pop()
        if end > cursor:
            segments.append((cursor, end, family))
        if stack:
            stack[-1][4] = max(stack[-1][4], end)

    for e in sorted(events, key=lambda e: (e["ts"], -e.get("dur", 0.0))):
        start, end = float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))
        while stack and stack[-1][0] <= start + EPS_US:
            pop()
        sticky = named = None
        if stack:
            parent = stack[-1]
            end, start = min(end, parent[0]), max(start, parent[4])
            if start > parent[4]:
                segments.append((parent[4], start, parent[1]))
            parent[4] = start
            sticky, named = parent[2], parent[3]
        own = name_family(e["name"])
        sticky = sticky or (own if own in STICKY else None)
        named = own or named
        family = sticky or named or _fallback(e["name"])
        corr = (e.get("args") or {}).get("correlation")
        if corr is not None and e.get("cat") in ("cuda_runtime", "cuda_driver"):
            launched[corr] = family
        stack.append([max(end, start), family, sticky, named, start])
    while stack:
        pop()
    segments.sort()
    return segments, launched


def _clip(segments: list, ends: list[float], lo: float, hi: float) -> list:
    out = []
    for s, e, fam in segments[bisect.bisect_right(ends, lo) :]:
        if s >= hi:
            break
        out.append((max(s, lo), min(e, hi), fam))
    return out


def _minus(segments: list, covered: list[tuple[float, float]]) -> list:
    """The parts of sorted disjoint `segments` outside sorted disjoint `covered`."""
    out, j = [], 0
    for s, e, fam in segments:
        while j < len(covered) and covered[j][1] <= s:
            j += 1
        k = j
        while s < e and k < len(covered) and covered[k][0] < e:
            if covered[k][0] > s:
                out.append((s, covered[k][0], fam))
            s = max(s, covered[k][1])
            k += 1
        if s < e:
            out.append((s, e, fam))
    return out


def _union(a: list, b: list) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for s, e, *_ in sorted([*a, *b]):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def analyze_trace(trace: dict[str, Any]) -> dict[str, Any]:
    """Seconds by family (host self time, and device time on CUDA), host gaps, device idle and
    launch calls inside the trace's step windows (`STEP` events); see the module's doc."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    host = [e for e in events if e.get("cat") in HOST_CATS]
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in host if e["name"] == STEP)
    if not windows:
        raise ValueError("the trace has no step windows")
    main = next(e["tid"] for e in host if e["name"] == STEP)
    threads: dict[Any, list[dict]] = defaultdict(list)
    for e in host:
        if e["name"] != STEP:
            threads[e["tid"]].append(e)
    order = sorted(threads, key=lambda tid: (tid != main, str(tid)))
    segments, launched = {}, {}
    for tid in order:
        segments[tid], found = _thread_segments(threads[tid])
        launched.update(found)
    ends = {tid: [e for _, e, _ in segments[tid]] for tid in order}
    host_s, gaps = dict.fromkeys(FAMILIES, 0.0), 0.0
    for lo, hi in windows:
        covered: list[tuple[float, float]] = []
        for tid in order:
            parts = _minus(_clip(segments[tid], ends[tid], lo, hi), covered)
            for s, e, fam in parts:
                host_s[fam] += (e - s) * 1e-6
            covered = _union(covered, parts)
        gaps += (hi - lo - sum(e - s for s, e in covered)) * 1e-6
    starts = [lo for lo, _ in windows]

    def window_of(ts: float) -> int | None:
        i = bisect.bisect_right(starts, ts) - 1
        return i if i >= 0 and ts <= windows[i][1] else None

    runtime = [
        e for e in host
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and window_of(e["ts"]) is not None
    ]  # fmt: skip
    calls = [e for e in runtime if e["name"] in LAUNCH_CALLS]
    in_window = {(e.get("args") or {}).get("correlation") for e in runtime} - {None}
    kernels = [
        e for e in events
        if e.get("cat") in DEVICE_CATS and (e.get("args") or {}).get("correlation") in in_window
    ]  # fmt: skip
    result = {
        "profiled_s": sum(hi - lo for lo, hi in windows) * 1e-6,
        "host_s": host_s,
        "host_gaps_s": gaps,
        "launch_calls": len(calls),
        "kernels": len([e for e in kernels if e.get("cat") == "kernel"]),
        "device_s": None,
        "device_idle_s": None,
    }
    if kernels:
        device_s = dict.fromkeys(FAMILIES, 0.0)
        for e in kernels:
            device_s[launched.get(e["args"]["correlation"], "other")] += e["dur"] * 1e-6
        busy = sum(e - s for s, e in _union([(k["ts"], k["ts"] + k["dur"]) for k in kernels], []))
        result["device_s"], result["device_idle_s"] = device_s, result["profiled_s"] - busy * 1e-6
    return result


# ------------------------------------------------------------------------------ peak and MFU


def matmul_flops(device: torch.device, n: int | None = None, reps: int = 5) -> float:
    """FLOP/s of the best of `reps` n x n matmuls: fp32 1024 on CPU, bf16 8192 on a GPU."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1024)
    dtype = torch.bfloat16 if cuda else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(reps + 1):  # the first one warms up
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def device_peak(device: torch.device) -> dict[str, Any]:
    """{"flops", "source", "matmul_flops", "name"}: the peak MFU is measured against."""
    measured = matmul_flops(device)
    if device.type != "cuda":
        source = f"fp32 1024x1024 matmul measured here, {torch.get_num_threads()} threads"
        return {"name": "cpu", "flops": measured, "matmul_flops": measured, "source": source}
    name = torch.cuda.get_device_name(device)
    known = next((peak for key, peak in KNOWN_PEAKS if key in name), None)
    source = "dense bf16 peak of the " + name if known else "bf16 8192 matmul measured here"
    return {"name": name, "flops": known or measured, "matmul_flops": measured, "source": source}


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "process peak RSS (CPU, since start)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ComputeOps(TorchDispatchMode):
    """Counts the aten ops that would each launch a kernel (METADATA_OPS left out), in all
    (`count`) and by name (`counts`)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in METADATA_OPS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------------------------------ the table


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def phase_table(phase: str, r: dict[str, Any], peak: dict[str, Any]) -> str:
    """The printed table of one phase's profile."""
    k, device = r["steps"], r["device_s"] is not None
    per_step = r["profiled_s"] / k
    head = (f"phase {phase}: {k} profiled steps after {r['warmup']} warm-up; "
            f"{1e3 * r['step_s']:.2f} ms/step timed, {1e3 * per_step:.2f} ms/step under the "
            f"profiler ({r['trace']})")  # fmt: skip
    cols = "  family                host ms/step   share"
    lines = [head, cols + ("   device ms/step   share" if device else "")]
    rows = [(f, r["host_s"][f], (r["device_s"] or {}).get(f)) for f in FAMILIES]
    rows += [("host gaps", r["host_gaps_s"], None)]
    rows += [("device idle", None, r["device_idle_s"])] if device else []
    rows += [("total", r["profiled_s"], r["profiled_s"] if device else None)]
    for name, host, dev in rows:
        line = f"  {name:<20}"
        if host is not None:
            line += f"{1e3 * host / k:>13.3f} {100 * host / r['profiled_s']:>6.1f}%"
        else:
            line += " " * 21
        if dev is not None:
            line += f"{1e3 * dev / k:>17.3f} {100 * dev / r['profiled_s']:>6.1f}%"
        lines.append(line.rstrip())
    launches = r["launches_per_step"]
    if "kernels" in launches:
        lines.append(f"  launches/step: {launches['kernels']:.0f} kernels, "
                     f"{launches['launch_calls']:.0f} launch calls")  # fmt: skip
    else:
        lines.append(f"  launches/step: {launches['aten_compute_ops']} aten compute ops "
                     "(CPU; views and other metadata ops left out)")  # fmt: skip
    lines.append(
        f"  FLOPs/step {_si(r['flops_per_step'], 'FLOP')}; achieved "
        f"{_si(r['achieved_flops'], 'FLOP/s')} (timed steps); MFU {100 * r['mfu']:.2f}% of "
        f"{_si(peak['flops'], 'FLOP/s')} ({peak['source']})"
    )
    if peak["flops"] != peak["matmul_flops"]:
        lines.append(f"  measured bf16 matmul: {_si(peak['matmul_flops'], 'FLOP/s')}")
    lines.append(f"  peak memory: {r['peak_memory_bytes'] / 2**20:.0f} MiB ({r['peak_memory']})")
    return "\n".join(lines)


def report_text(report: dict[str, Any]) -> str:
    """Every phase's table."""
    peak = report["peak"]
    return "\n\n".join(phase_table(p, r, peak) for p, r in report["phases"].items())


__all__ = [
    "DATA", "FAMILIES", "OPTIMIZER", "STEP", "WAIT", "ComputeOps", "analyze_trace", "base_name",
    "device_peak", "matmul_flops", "name_family", "peak_memory", "phase_table", "report_text",
    "sync",
]  # fmt: skip
