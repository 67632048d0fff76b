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
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import harness
import torch
import torch.nn.functional as F
from harness import Column
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
    """Host microseconds per call (harness.time_ms: each call timed; no GPU to wait for)."""
    times = harness.time_ms(fn, "cpu", warmup=warmup, reps=calls)
    return {"min_us": times["min_ms"] * 1e3, "median_us": times["median_ms"] * 1e3}


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
    try:  # the model's packed path (newer revisions only; mixfast/_attention.py before the
        from mixfast.ops.attention import varlen_attention_qkvpacked  # package's reorganisation)
    except ImportError:
        try:
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
    from mixfast import random_masking

    try:
        from mixfast.ops.reference import mae_random_masking
    except ImportError:  # a revision before the package's reorganisation (--against)
        from mixfast.masking import mae_random_masking

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
    from mixfast import create_model, random_masking  # names every revision has

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


def points(devices: list[str], calls: int, step_calls: int) -> Iterator[harness.Point]:
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
                yield {"device": device, "case": name}, partial(_measure_case, fn, n)


def _measure_case(fn: Callable[[], object], calls: int) -> dict:
    return {**per_call_us(fn, calls), **count_ops(fn)[0]}


def measure(devices: list[str], calls: int, step_calls: int) -> list[dict]:
    torch.set_num_threads(1)
    return list(harness.sweep(points(devices, calls, step_calls)))


COLUMNS = (
    Column("device", "device", 6),
    Column("case", "case", 45),
    Column("min us", "min_us", 9, ".1f"),
    Column("median us", "median_us", 10, ".1f"),
    Column("ops", "ops", 5, "d"),
    Column("compute", "compute_ops", 7, "d"),
    Column("syncs", "syncs", 5, "d"),
)
COMPARE_COLUMNS = (
    Column("device", "device", 6),
    Column("case", "case", 45),
    Column("before us", "before_median_us", 10, ".1f"),
    Column("after us", "after_median_us", 9, ".1f"),
    Column("speedup", "speedup", 7, ".2f", "x"),
    Column("ops before", "before_compute_ops", 10, "d"),
    Column("ops after", "after_compute_ops", 9, "d"),
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
        label: [{(r["device"], r["case"]): r for r in run if "error" not in r} for run in rounds]
        for label, rounds in runs.items()
    }
    merged = []
    for row in runs["after"][0]:
        key = (row["device"], row["case"])
        out = {"device": row["device"], "case": row["case"]}
        for label, rounds in keyed.items():
            if key not in rounds[0]:  # a case the old revision cannot run (or one that failed)
                out.update({f"{label}_{m}": None for m in ("median_us", "min_us", "compute_ops")})
                continue
            out[f"{label}_median_us"] = statistics.median(r[key]["median_us"] for r in rounds)
            out[f"{label}_min_us"] = min(r[key]["min_us"] for r in rounds)
            out[f"{label}_compute_ops"] = rounds[0][key]["compute_ops"]
        before, after = out["before_median_us"], out["after_median_us"]
        out["speedup"] = before / after if before and after else None
        merged.append(out)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = harness.BenchParser(__doc__, __file__, device=False, threads=False)
    parser.add_argument("--device", nargs="+", choices=("cpu", "meta"), default=["cpu", "meta"])
    parser.add_argument("--calls", type=int, default=400, help="timed calls per op case")
    parser.add_argument("--step-calls", type=int, default=30, help="timed mixed steps per case")
    parser.add_argument("--against", default=None, help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (--against)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one measurement for compare(): the rows as JSON on stdout
        print(json.dumps(measure(args.device, args.calls, args.step_calls)))
        return 0
    torch.set_num_threads(1)
    env = harness.environment("cpu", threads=1, against=args.against)
    if not args.against:
        points_ = points(args.device, args.calls, args.step_calls)
        harness.run(args, points_, COLUMNS, title="host us per call, 1 thread", env=env)
        return 0
    rows = compare(args)  # measured in child processes, then printed and written here
    title = f"before = {args.against}, after = working tree; medians of per-round median us"
    report = harness.Report(args, COMPARE_COLUMNS, env=env, title=title)
    for row in rows:
        report.add(row)
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
