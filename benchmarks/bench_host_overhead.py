"""Host (CPU-side) cost of the mixfast ops and of the packed mixed step.

With tiny tensors and one thread the compute is ~0, so a call's time is its host overhead: the
Python wrappers, input checks, the torch.library custom-op dispatch, autograd bookkeeping and every
small aten op a wrapper runs. Two devices:

  cpu   the reference path (what runs on CPU): wrapper + dispatch + the reference's small ops.
  meta  shapes only: the custom ops run their fake impls, so this is the CUDA path's host cost
        *above* the Triton launcher (wrapper, checks, dispatch, autograd, glue aten ops), with no
        kernel and no launcher. A CUDA launch adds ~5 us (aten) to ~20-40 us (Triton) per kernel.

For the mixed step (ViT-Tiny depth 12 but embed_dim 16, batch 2 + 2) it reports the host time of
forward + backward per step and the number of aten ops dispatched in it (TorchDispatchMode
counter): `compute` ops are those that would launch a kernel on CUDA (views and other metadata ops
excluded), `syncs` are .item()-style reads (a GPU stall each on CUDA).

What the numbers do not say: the GPU time, the Triton launcher's cost (not run here), the
optimizer (fused AdamW on CUDA is a few launches; not timed), or how much of the host time a GPU
hides behind its own work (only where the GPU outruns the host, as at ViT-Tiny sizes on an H100,
does host time become step time).

Script:  python benchmarks/bench_host_overhead.py [--device cpu meta] [--json OUT.json]
         python benchmarks/bench_host_overhead.py --against REV   (REV vs working tree,
         alternating child processes, ratio of medians per row)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
METADATA_OPS = {
    "view",
    "_unsafe_view",
    "t",
    "transpose",
    "permute",
    "expand",
    "unsqueeze",
    "squeeze",
    "slice",
    "select",
    "unbind",
    "split",
    "split_with_sizes",
    "detach",
    "alias",
    "as_strided",
    "reshape",
    "_reshape_alias",
    "empty",
    "empty_strided",
    "empty_like",
    "new_empty",
    "lift_fresh",
    "_local_scalar_dense",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "is_same_size",
}


# ----------------------------------------------------------------------------------------------
# Timing and counting
# ----------------------------------------------------------------------------------------------


def per_call_us(fn: Callable[[], object], calls: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e3)
    return {"min_us": min(times), "median_us": statistics.median(times)}


class OpCounter(TorchDispatchMode):
    """Counts every aten/custom op dispatched below autograd (what would reach a device)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[f"{func.namespace}::{func._opname}"] += 1
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict[str, int]:
        total = sum(self.ops.values())
        meta = sum(n for op, n in self.ops.items() if op.split("::")[1] in METADATA_OPS)
        return {
            "ops": total,
            "compute_ops": total - meta,
            "syncs": self.ops["aten::_local_scalar_dense"],
            "mixfast_ops": sum(n for op, n in self.ops.items() if op.startswith("mixfast::")),
        }


def count_ops(fn: Callable[[], object]) -> tuple[dict[str, int], Counter[str]]:
    with OpCounter() as counter:
        fn()
    return counter.summary(), counter.ops


# ----------------------------------------------------------------------------------------------
# Ops: mixfast vs plain torch, tiny shapes
# ----------------------------------------------------------------------------------------------


def _backward(make: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        make().sum().backward()

    return run


def attention_cases(device: str) -> dict[str, Callable[[], object]]:
    from mixfast import ops

    lengths, heads, head_dim = (5, 5, 3, 3), 2, 16  # two groups, like a mix step
    total = sum(lengths)
    cu = torch.tensor([0, 5, 10, 13, 16], dtype=torch.int32, device=device)
    q, k, v = (torch.randn(total, heads, head_dim, device=device) for _ in range(3))
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

    def sdpa(q, k, v):  # the plain-torch way: one SDPA per group of equal lengths
        outs = []
        for rows, length in ((slice(0, 10), 5), (slice(10, 16), 3)):
            qs, ks, vs = (
                t[rows].view(-1, length, heads, head_dim).transpose(1, 2) for t in (q, k, v)
            )
            out = F.scaled_dot_product_attention(qs, ks, vs)
            outs.append(out.transpose(1, 2).reshape(-1, heads, head_dim))
        return torch.cat(outs)

    cases = {
        "attention fwd mixfast": lambda: ops.varlen_attention(q, k, v, cu, 5),
        "attention fwd torch sdpa": lambda: sdpa(q, k, v),
        "attention fwd+bwd mixfast": _backward(lambda: ops.varlen_attention(qg, kg, vg, cu, 5)),
        "attention fwd+bwd torch sdpa": _backward(lambda: sdpa(qg, kg, vg)),
    }
    try:  # the model's packed path (newer revisions only)
        from mixfast._attention import varlen_attention_qkvpacked
    except ImportError:
        return cases
    qkv = torch.stack((q, k, v), dim=1).requires_grad_()
    cases["attention fwd+bwd mixfast qkvpacked"] = _backward(
        lambda: varlen_attention_qkvpacked(qkv, cu, 5)
    )
    cases["attention fwd+bwd torch sdpa on qkv.unbind"] = _backward(lambda: sdpa(*qkv.unbind(1)))
    return cases


def patch_embed_cases(device: str) -> dict[str, Callable[[], object]]:
    from mixfast import ops

    batch, chans, size, patch, dim, keep = 2, 3, 16, 4, 16, 4
    num = (size // patch) ** 2
    images = torch.randn(batch, chans, size, size, device=device)
    weight = torch.randn(dim, chans, patch, patch, device=device, requires_grad=True)
    bias = torch.randn(dim, device=device, requires_grad=True)
    pos = torch.randn(num, dim, device=device, requires_grad=True)
    ids_keep = torch.stack([torch.randperm(num, device=device)[:keep] for _ in range(batch)])
    full_off = torch.tensor([1, 2 + num], device=device)
    keep_off = torch.tensor([3 + 2 * num, 4 + 2 * num + keep], device=device)
    rows = 2 * (num + 1) + 2 * (keep + 1)
    w0, b0, p0 = (t.detach() for t in (weight, bias, pos))

    def conv_gather(w, b, p):  # timm PatchEmbed + gather of the kept patches + pos add
        tokens = F.conv2d(images, w, b, stride=patch).flatten(2).transpose(1, 2) + p
        return torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, dim))

    def packed(w, b, p):
        return ops.packed_patch_embed(
            images, w, b, p, rows, ids_keep=ids_keep, full_offsets=full_off, keep_offsets=keep_off
        )

    return {
        "masked_patch_embed fwd mixfast": lambda: ops.masked_patch_embed(
            images, w0, b0, p0, ids_keep
        ),
        "masked_patch_embed fwd torch conv+gather": lambda: conv_gather(w0, b0, p0),
        "masked_patch_embed fwd+bwd mixfast": _backward(
            lambda: ops.masked_patch_embed(images, weight, bias, pos, ids_keep)
        ),
        "masked_patch_embed fwd+bwd torch conv+gather": _backward(
            lambda: conv_gather(weight, bias, pos)
        ),
        "packed_patch_embed fwd mixfast": lambda: packed(w0, b0, p0),
        "packed_patch_embed fwd+bwd mixfast": _backward(lambda: packed(weight, bias, pos)),
    }


def masking_cases(device: str) -> dict[str, Callable[[], object]]:
    from mixfast.masking import mae_random_masking, random_masking

    return {
        "random_masking mixfast": lambda: random_masking(
            2, 16, 0.75, seed=0, offset=3, device=device
        ),
        "random_masking torch MAE argsort": lambda: mae_random_masking(2, 16, 0.75, device=device),
    }


# ----------------------------------------------------------------------------------------------
# The mixed step (tiny dims, ViT-Tiny depth)
# ----------------------------------------------------------------------------------------------


def step_cases(device: str, attention: str) -> dict[str, Callable[[], object]]:
    from mixfast import random_masking
    from mixfast.models import create_model

    torch.manual_seed(0)
    model = create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        in_chans=3,
        num_classes=10,
        embed_dim=16,
        num_heads=2,
        decoder_dim=16,
        decoder_heads=2,
        packed_attention=attention,
    ).to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (2,), device=device)
    alpha = torch.tensor(0.5, device=device)
    masking = random_masking(2, model.num_patches, 0.75, seed=0, device=device)

    def mix() -> None:
        model.forward_mixed(x, x, y, alpha=alpha, masking=masking)[0].backward()
        model.zero_grad(set_to_none=True)

    def separate() -> None:
        model.forward_ssl(x, 0.75, masking=masking).backward()
        F.cross_entropy(model.forward_sl(x), y).backward()
        model.zero_grad(set_to_none=True)

    return {f"step mix ({attention})": mix, "step ssl+sl": separate}


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


def measure(devices: list[str], calls: int, step_calls: int) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for device in devices:
        groups = [
            (attention_cases(device), calls),
            (patch_embed_cases(device), calls),
            (masking_cases(device), calls),
            (step_cases(device, "varlen"), step_calls if device == "cpu" else 3),
        ]
        if device == "cpu":
            groups.append(
                ({"step mix (sdpa)": step_cases(device, "sdpa")["step mix (sdpa)"]}, step_calls)
            )
        for cases, n in groups:
            for name, fn in cases.items():
                row = {"device": device, "case": name, **per_call_us(fn, n)}
                row.update(count_ops(fn)[0])
                rows.append(row)
    return rows


def print_rows(rows: list[dict]) -> None:
    print(
        f"{'device':6} {'case':45} {'min us':>9} {'median us':>10} {'ops':>5} {'compute':>7} {'syncs':>5}"
    )
    for r in rows:
        print(
            f"{r['device']:6} {r['case']:45} {r['min_us']:9.1f} {r['median_us']:10.1f} "
            f"{r['ops']:5d} {r['compute_ops']:7d} {r['syncs']:5d}"
        )


def export_revision(rev: str, into: Path) -> Path:
    """The package at `rev` (mixfast/ + kernels/ as mixfast/kernels) with this tree's built
    extension, importable by putting `into` first on PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "mixfast", "kernels"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    shutil.rmtree(into / "mixfast" / "kernels", ignore_errors=True)
    (into / "kernels").rename(into / "mixfast" / "kernels")
    for built in (ROOT / "mixfast").glob("_C*"):
        shutil.copy2(built, into / "mixfast" / built.name)
    return into


def child_rows(args: argparse.Namespace, pythonpath: str | None) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, __file__, "--child", "--calls", str(args.calls)]
    command += ["--step-calls", str(args.step_calls), "--device", *args.device]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd="/")
    return json.loads(out.stdout)


def compare(args: argparse.Namespace) -> list[dict]:
    """Alternate child runs of REV (before) and the working tree (after), who goes first
    swapping every round; medians per row."""
    runs: dict[str, list[list[dict]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        before_path = str(export_revision(args.against, Path(tmp)))
        paths = {"before": before_path, "after": str(ROOT)}
        for i in range(args.rounds):
            for label in ("before", "after") if i % 2 == 0 else ("after", "before"):
                runs[label].append(child_rows(args, paths[label]))
    keyed = {
        label: [{(r["device"], r["case"]): r for r in run} for run in rounds]
        for label, rounds in runs.items()
    }
    merged = []
    for row in runs["after"][0]:
        key = (row["device"], row["case"])
        out = {"device": row["device"], "case": row["case"]}
        for label, rounds in keyed.items():
            if key not in rounds[0]:  # a case the old revision cannot run
                out.update({f"{label}_{m}": None for m in ("median_us", "min_us", "compute_ops")})
                continue
            out[f"{label}_median_us"] = statistics.median(r[key]["median_us"] for r in rounds)
            out[f"{label}_min_us"] = min(r[key]["min_us"] for r in rounds)
            out[f"{label}_compute_ops"] = rounds[0][key]["compute_ops"]
        before, after = out["before_median_us"], out["after_median_us"]
        out["speedup"] = before / after if before else None
        merged.append(out)
    return merged


def print_compare(rows: list[dict], rev: str) -> None:
    print(f"before = {rev}, after = working tree; medians of per-round median us")
    print(
        f"{'device':6} {'case':45} {'before us':>10} {'after us':>9} {'speedup':>7} "
        f"{'ops before':>10} {'ops after':>9}"
    )

    def show(value, spec):
        return format(value, spec) if value is not None else format("-", spec.rstrip("df."))

    for r in rows:
        print(
            f"{r['device']:6} {r['case']:45} {show(r['before_median_us'], '10.1f')} "
            f"{show(r['after_median_us'], '9.1f')} {show(r['speedup'], '6.2f')}x "
            f"{show(r['before_compute_ops'], '10d')} {show(r['after_compute_ops'], '9d')}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", nargs="+", choices=("cpu", "meta"), default=["cpu", "meta"])
    parser.add_argument("--calls", type=int, default=400, help="timed calls per op case")
    parser.add_argument("--step-calls", type=int, default=30, help="timed mixed steps per case")
    parser.add_argument("--against", default=None, help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (--against)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.device, args.calls, args.step_calls)))
        return 0
    if args.against:
        rows = compare(args)
        print_compare(rows, args.against)
    else:
        rows = measure(args.device, args.calls, args.step_calls)
        print_rows(rows)
    if args.json:
        meta = {"torch": torch.__version__, "threads": 1, "against": args.against}
        Path(args.json).write_text(json.dumps({"environment": meta, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
