"""`mixfast profile` on a tiny synthetic run (structural: nothing here is timed), and the trace
accounting of mixfast/profile.py on a hand-made trace."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from mixfast import cli
from mixfast.profile import DATA, FAMILIES, STEP, analyze_trace, base_name, name_family

# tests/test_reliability.py's TINY run, with a plan of all three phases (SSL -> MIX -> SL)
TINY = (
    "--dataset synthetic --img-size 16 --train-limit 80 --test-limit 20 --depth 1 "
    "--embed-dim 32 --num-heads 2 --decoder-dim 32 --decoder-depth 1 --ssl-epochs 2 "
    "--sl-epochs 2 --mix-ratio 0.5 --pipeline mix --batch-size 16 --device cpu --no-compile "
    "--no-progress"
).split()
STEPS = 2


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("profile") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(
            ["profile", *TINY, "--steps", str(STEPS), "--warmup", "1", "--out", str(out)]
        )
    assert code == 0
    return out, json.loads((out / "profile.json").read_text()), printed.getvalue()


def plan_phases(report: dict) -> list[str]:
    plan = report["plan"]
    phases = [p for p, n in zip(plan["epoch_phases"], plan["epoch_steps"]) if n]
    return list(dict.fromkeys(phases))


def test_the_profile_covers_every_phase_of_the_plan(profiled):
    out, report, printed = profiled
    assert plan_phases(report) == ["ssl", "mix", "sl"] == list(report["phases"])
    for phase in report["phases"]:
        assert f"phase {phase}: {STEPS} profiled steps" in printed
    assert printed.count("host gaps") == 3 and printed.count("  other ") == 3
    assert report["commit"] is None or len(report["commit"]) >= 40
    assert report["command"]


def test_every_op_lands_in_exactly_one_family(profiled):
    _, report, _ = profiled
    for result in report["phases"].values():
        assert list(result["host_s"]) == list(FAMILIES)
        assert all(v >= 0 for v in result["host_s"].values())
        total = sum(result["host_s"].values()) + result["host_gaps_s"]
        assert math.isclose(total, result["profiled_s"], rel_tol=1e-9, abs_tol=1e-12)
        assert result["host_gaps_s"] >= 0


def self_times(events: list[dict]) -> dict[int, float]:
    """Each event's duration less its children's (one thread), by index in `events`."""
    order = sorted(range(len(events)), key=lambda i: (events[i]["ts"], -events[i]["dur"]))
    own = {i: events[i]["dur"] for i in order}
    stack: list[int] = []
    for i in order:
        while stack and events[stack[-1]]["ts"] + events[stack[-1]]["dur"] <= events[i]["ts"]:
            stack.pop()
        if stack:
            own[stack[-1]] -= events[i]["dur"]
        stack.append(i)
    return own


def test_the_trace_loads_and_its_self_times_are_the_families(profiled):
    out, report, _ = profiled
    for result in report["phases"].values():
        trace = json.loads((out / result["trace"]).read_text())
        events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
        host = [e for e in events if e.get("cat") in ("cpu_op", "user_annotation")]
        assert len([e for e in host if e["name"] == STEP]) == STEPS
        assert len({e["tid"] for e in host}) == 1  # CPU: the autograd engine runs on the caller
        own = self_times(host)
        ops = sum(own[i] for i, e in enumerate(host) if e["name"] != STEP) * 1e-6
        gaps = sum(own[i] for i, e in enumerate(host) if e["name"] == STEP) * 1e-6
        # trace times are microseconds to 3 decimals: the tool clips a child at its parent's
        # (rounded) end where this sum subtracts durations, up to ~1 ns apart per event
        resolution = 2e-9 * len(host)
        assert math.isclose(ops, sum(result["host_s"].values()), rel_tol=1e-6, abs_tol=resolution)
        # the gaps are the window less the ops: the window's error and the ops' rounding
        slack = 1e-6 * result["profiled_s"] + resolution
        assert math.isclose(gaps, result["host_gaps_s"], rel_tol=1e-6, abs_tol=slack)
        assert analyze_trace(trace)["host_s"] == result["host_s"]
        names = {e["name"] for e in host}
        assert DATA in names and any(name_family(n) == "optimizer" for n in names)
        assert result["host_s"]["GEMM"] > 0 and result["host_s"]["data loading"] > 0


def test_the_flops_are_the_runs(profiled, tmp_path):
    _, report, _ = profiled
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["train", *TINY, "--out", str(tmp_path / "train")]) == 0
    result = json.loads((tmp_path / "train" / "result.json").read_text())
    step_flops = {p: r["flops_per_step"] for p, r in report["phases"].items()}
    assert step_flops == result["step_flops"]
    for r in report["phases"].values():
        assert r["achieved_flops"] > 0 and 0 < r["mfu"]
        assert math.isclose(r["achieved_flops"], r["flops_per_step"] / r["step_s"])
        assert r["launches_per_step"]["aten_compute_ops"] > 0 and r["peak_memory_bytes"] > 0


@pytest.mark.parametrize(
    "change, named", [(["--steps", "0"], "--steps"), (["--warmup", "-1"], "--warmup")]
)
def test_bad_counts_exit_2(tmp_path, capsys, change, named):
    out = tmp_path / "run"
    assert cli.main(["profile", *TINY, "--out", str(out), *change]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "name, family",
    [
        ("aten::mm", "GEMM"),
        ("aten::linear", "GEMM"),
        ("autograd::engine::evaluate_function: AddmmBackward0", "GEMM"),
        ("aten::baddbmm", "GEMM"),
        ("mixfast::varlen_attn_qkvpacked_fwd", "attention"),
        ("aten::scaled_dot_product_attention", "attention"),
        ("ScaledDotProductFlashAttentionForCpuBackward0", "attention"),
        ("aten::flex_attention", "attention"),
        ("mixfast::masked_patch_embed", "patch embedding"),
        ("GeneratedBackwardFor_mixfast_packed_patch_embed_default", "patch embedding"),
        ("aten::convolution_backward", "patch embedding"),
        ("mixfast::random_masking", "masking"),
        ("aten::native_layer_norm_backward", "norm + elementwise"),
        ("aten::gelu", "norm + elementwise"),
        ("aten::add_", "norm + elementwise"),
        ("aten::_log_softmax_backward_data", "norm + elementwise"),
        ("aten::_to_copy", "copies + views"),
        ("aten::_fused_adamw_", "optimizer"),
        ("aten::_foreach_mul_", "optimizer"),
        ("Optimizer.step#GroupedAdamW.step", "optimizer"),
        (DATA, "data loading"),
        ("torch::autograd::AccumulateGrad", "autograd engine"),
        ("autograd::engine::evaluate_function: ViewBackward0", "autograd engine"),
        ("cudaStreamSynchronize", "device wait"),
        ("aten::view", None),  # a view is its caller's
        ("cudaLaunchKernel", None),
    ],
)
def test_op_names_and_their_families(name, family):
    assert name_family(name) == family


def test_base_names():
    assert base_name("autograd::engine::evaluate_function: NativeLayerNormBackward0") == (
        "native_layer_norm"
    )
    assert base_name("aten::_unsafe_view") == "unsafe_view"


def x(name, ts, dur, tid=1, cat="cpu_op", **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "args": args}


def test_gaps_and_families_of_a_made_trace():
    """A 100 us step: mm 10-40 (a view and a launch inside), the data region 50-70 (an add
    inside: data loading's), a second thread's mm 30-45 (only 40-45 counts: the main thread
    covers the rest) and gelu 80-95; the launched kernel runs 20-30 on the device."""
    events = [
        x(STEP, 0.0, 100.0, cat="user_annotation"),
        x("aten::mm", 10.0, 30.0),
        x("aten::t", 15.0, 5.0),
        x("cudaLaunchKernel", 21.0, 1.0, cat="cuda_runtime", correlation=7),
        x(DATA, 50.0, 20.0, cat="user_annotation"),
        x("aten::add", 55.0, 5.0),
        x("aten::mm", 30.0, 15.0, tid=2),
        x("aten::gelu", 80.0, 15.0, tid=2),
        x("void gemm_kernel", 20.0, 10.0, tid=9, cat="kernel", correlation=7),
        x("unlaunched", 200.0, 10.0, tid=9, cat="kernel", correlation=8),
    ]
    found = analyze_trace({"traceEvents": events})
    host = {k: round(v * 1e6, 6) for k, v in found["host_s"].items() if v}
    assert host == {"GEMM": 35.0, "data loading": 20.0, "norm + elementwise": 15.0}
    assert math.isclose(found["host_gaps_s"] * 1e6, 30.0)
    assert math.isclose(found["profiled_s"] * 1e6, 100.0)
    assert found["kernels"] == 1 and found["launch_calls"] == 1
    assert math.isclose(found["device_s"]["GEMM"] * 1e6, 10.0)
    assert math.isclose(found["device_idle_s"] * 1e6, 90.0)
