"""Shared varlen attention: the op (reference path, compile, opcheck, checks) and the Triton
kernels against the plain-PyTorch reference (`-m triton`: CUDA, or CPU under TRITON_INTERPRET=1)."""

from __future__ import annotations

import os
import re

import pytest
import torch

from mixfast import ops
from mixfast.ops.attention import varlen_attention, varlen_attn_bwd, varlen_attn_fwd
from mixfast.ops.reference import varlen_attention_reference


def make_cu_seqlens(lengths: list[int], device="cpu") -> torch.Tensor:
    return torch.tensor(
        [0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device
    )


def make_qkv(lengths, heads=2, head_dim=32, dtype=torch.float32, device="cpu", grad=False):
    total = sum(lengths)
    qkv = [torch.randn(total, heads, head_dim, dtype=dtype, device=device) for _ in range(3)]
    if grad:
        for t in qkv:
            t.requires_grad_(True)
    return qkv


def sdpa_per_sequence(q, k, v, lengths, scale=None):
    """Independent oracle: SDPA sequence by sequence (the reference module's implementation)."""
    return varlen_attention_reference(
        q, k, v, make_cu_seqlens(lengths, q.device), max(lengths), scale
    )


# ---------------------------------------------------------------------------------------------
# The op on the reference path (CPU)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [[5], [3, 1, 7], [4, 0, 6, 0], [17, 65, 17]])
def test_reference_path_matches_sdpa_fwd_bwd(lengths):
    q, k, v = make_qkv(lengths, grad=True)
    out = ops.varlen_attention(q, k, v, make_cu_seqlens(lengths), max(lengths))
    grad = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)

    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    ref = sdpa_per_sequence(q2, k2, v2, lengths)
    rq, rk, rv = torch.autograd.grad(ref, (q2, k2, v2), grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, want in ((dq, rq), (dk, rk), (dv, rv)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_lse_is_logsumexp_of_scaled_scores():
    lengths = [3, 6]
    q, k, v = make_qkv(lengths, heads=1, head_dim=8)
    _, lse = varlen_attn_fwd(q, k, v, make_cu_seqlens(lengths), 6, 0.5, [])
    s = (q[3:, 0] @ k[3:, 0].T) * 0.5
    torch.testing.assert_close(lse[0, 3:], torch.logsumexp(s, -1))


def test_custom_scale_and_strided_views():
    lengths = [9, 4]
    qkv = torch.randn(sum(lengths), 3, 2, 16)  # one packed projection, as a ViT block makes it
    q, k, v = qkv.unbind(1)
    out = ops.varlen_attention(q, k, v, make_cu_seqlens(lengths), 9, softmax_scale=0.3)
    ref = sdpa_per_sequence(q, k, v, lengths, scale=0.3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_expanded_grad_out():
    lengths = [5, 3]
    q, k, v = make_qkv(lengths, grad=True)
    ops.varlen_attention(q, k, v, make_cu_seqlens(lengths), 5).sum().backward()
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    sdpa_per_sequence(q2, k2, v2, lengths).sum().backward()
    for got, want in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=1e-5)


def test_opcheck():
    lengths = [5, 0, 3]
    cu = make_cu_seqlens(lengths)
    q, k, v = make_qkv(lengths, grad=True)
    torch.library.opcheck(varlen_attn_fwd, (q, k, v, cu, 5, 0.25, [3, 5]))
    out, lse = varlen_attn_fwd(q, k, v, cu, 5, 0.25, [])
    grad = torch.randn_like(out)
    args = (grad, q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), cu, 5, 0.25, [])
    torch.library.opcheck(varlen_attn_bwd, args)


def _attention_step(q, k, v, cu_seqlens, max_seqlen: int):
    return ops.varlen_attention(q, k, v, cu_seqlens, max_seqlen).square().sum()


def test_compile_fullgraph_matches_eager():
    lengths = [7, 2, 5]
    q, k, v = make_qkv(lengths, grad=True)
    cu = make_cu_seqlens(lengths)
    compiled = torch.compile(_attention_step, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v, cu, 7)
    grads = torch.autograd.grad(loss, (q, k, v))
    loss_ref = _attention_step(q, k, v, cu, 7)
    grads_ref = torch.autograd.grad(loss_ref, (q, k, v))
    torch.testing.assert_close(loss, loss_ref)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want)


def test_compile_does_not_recompile_when_batch_or_lengths_change():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(_attention_step, fullgraph=True, backend=counter, dynamic=True)
    for lengths in ([7, 2, 5], [3, 3, 3, 3, 9], [1, 1], [4, 11]):
        q, k, v = make_qkv(lengths, grad=True)
        loss = compiled(q, k, v, make_cu_seqlens(lengths), max(lengths))
        loss.backward()
        torch.testing.assert_close(
            loss, _attention_step(q, k, v, make_cu_seqlens(lengths), max(lengths))
        )
    assert counter.frame_count == 1


def test_compile_marked_dynamic_batch_does_not_recompile():
    """The mix-step case: fixed lengths (so a fixed max_seqlen), a batch size that changes."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(_attention_step, fullgraph=True, backend=counter)
    for batch in (2, 5, 3):
        lengths = [9, 3] * batch
        q, k, v = make_qkv(lengths, grad=True)
        cu = make_cu_seqlens(lengths)
        for t in (q, k, v, cu):
            torch._dynamo.mark_dynamic(t, 0)
        compiled(q, k, v, cu, 9).backward()
    assert counter.frame_count == 1


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "q": a["q"][..., :8]}, "same shape"),
        (lambda a: {**a, "k": a["k"].half()}, "one dtype"),
        (lambda a: {**a, "q": a["q"].double()}, "q.dtype"),
        (lambda a: {**a, "v": a["v"][0]}, "v must be a 3-D"),
        (lambda a: {**a, "cu_seqlens": a["cu_seqlens"].long()}, "int32"),
        (lambda a: {**a, "cu_seqlens": a["cu_seqlens"][None]}, "1-D"),
        (lambda a: {**a, "max_seqlen": 2.5}, "max_seqlen must be an int"),
        (lambda a: {**a, "max_seqlen": 3}, "max_seqlen=3 is smaller"),
        (lambda a: {**a, "cu_seqlens": make_cu_seqlens([4, 5])}, "end at T=12"),
        (
            lambda a: {**a, "cu_seqlens": torch.tensor([0, 8, 5, 12], dtype=torch.int32)},
            "non-decreasing",
        ),
    ],
)
def test_bad_input_raises_value_error(change, match):
    q, k, v = make_qkv([5, 7])
    args = dict(q=q, k=k, v=v, cu_seqlens=make_cu_seqlens([5, 7]), max_seqlen=7)
    with pytest.raises(ValueError, match=match):
        ops.varlen_attention(**change(args))


# ---------------------------------------------------------------------------------------------
# Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1) against the reference
# ---------------------------------------------------------------------------------------------


def _kernel_and_reference(lengths, heads, head_dim, device, dtype=torch.float32):
    from mixfast.kernels.attention import varlen_attn_bwd as kernel_bwd
    from mixfast.kernels.attention import varlen_attn_fwd as kernel_fwd

    from mixfast.ops.reference import varlen_attn_bwd_reference, varlen_attn_fwd_reference

    q, k, v = make_qkv(lengths, heads, head_dim, dtype, device)
    cu = make_cu_seqlens(lengths, device)
    scale = head_dim**-0.5
    out, lse = kernel_fwd(q, k, v, cu, max(lengths), scale)
    grad = torch.randn_like(out)
    grads = kernel_bwd(grad, q, k, v, out, lse, cu, max(lengths), scale)
    ref_out, ref_lse = varlen_attn_fwd_reference(q, k, v, cu, scale)
    ref_grads = varlen_attn_bwd_reference(grad, q, k, v, ref_out, ref_lse, cu, scale)
    return (out, lse, *grads), (ref_out, ref_lse, *ref_grads)


@pytest.mark.triton
@pytest.mark.parametrize(
    "lengths, heads, head_dim",
    [
        ([5, 17, 1], 2, 32),  # T not a multiple of any tile, a length-1 sequence
        ([3, 0, 40, 0, 2, 0], 2, 64),  # empty sequences, also the last one
        ([20, 33], 1, 128),
        ([9, 30], 2, 40),  # head dim that is not a power of two
        ([300, 129, 128, 1], 1, 32),  # longer than the tile: tiled fallback, tile boundaries
        ([65, 17, 65, 17], 3, 64),  # the TinyImageNet mix layout
    ],
)
def test_kernel_matches_reference_fp32(lengths, heads, head_dim, triton_device):
    got, want = _kernel_and_reference(lengths, heads, head_dim, triton_device)
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.triton
@pytest.mark.parametrize(
    "head_dim, candidate", [(32, 0), (32, 1), (32, 2), (32, 3), (128, 0), (128, 1), (128, 2)]
)
def test_every_tuning_candidate_is_correct(head_dim, candidate, triton_device, monkeypatch):
    """The GPU autotuner may pick any bf16/fp16 candidate config: each must be exact (run here
    in fp32), on the one-pass path (70, 40, 1 tokens) and the tiled fallback (150 tokens)."""
    from mixfast.kernels import attention

    def pick(key, candidates, launch, on_gpu):
        kind, tile, head_dim = key[:3]
        make = attention._fwd_candidates if kind == "fwd" else attention._bwd_candidates
        candidates = make(tile, head_dim, torch.bfloat16)
        return candidates[min(candidate, len(candidates) - 1)]

    monkeypatch.setattr(attention, "_pick_config", pick)
    got, want = _kernel_and_reference([150, 40, 1, 70], 1, head_dim, triton_device)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-5)


@pytest.mark.triton
@pytest.mark.parametrize("lengths, heads", [([17, 1, 30, 0, 9], 3), ([50, 64, 2], 2)])
def test_programs_taking_all_heads_of_a_sequence_are_correct(
    lengths, heads, triton_device, monkeypatch
):
    """The short-sequence candidate whose program loops over every head of its sequence
    (HEADS = heads), forward and backward, against the reference (run here in fp32)."""
    from mixfast.kernels import attention

    picked = []

    def pick(key, candidates, launch, on_gpu):
        kind, tile, head_dim = key[:3]
        make = attention._fwd_candidates if kind == "fwd" else attention._bwd_candidates
        config = make(tile, head_dim, torch.bfloat16, heads)[-1]
        picked.append(config["HEADS"])
        return config

    monkeypatch.setattr(attention, "_pick_config", pick)
    got, want = _kernel_and_reference(lengths, heads, 64, triton_device)
    assert picked == [heads, heads]
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_all_heads_candidates_only_for_short_sequences():
    from mixfast.kernels import attention

    for make in (attention._fwd_candidates, attention._bwd_candidates):
        assert make(32, 64, torch.bfloat16, 3)[-1]["HEADS"] == 3
        assert all(c["HEADS"] == 1 for c in make(128, 64, torch.bfloat16, 3))  # long: one head
        assert all(c["HEADS"] == 1 for c in make(32, 64, torch.bfloat16, 8))  # many heads
        assert make(32, 64, torch.bfloat16, 3)[0]["HEADS"] == 1  # the default stays one head


@pytest.mark.triton
def test_a_launch_per_group_of_lengths_gives_the_same_numbers(triton_device, monkeypatch):
    """The packed mix layout launched per host-known group (SSL 17 tokens: tile 32; SL 65:
    tile 128) against one launch for all (tile 128) and the reference, forward and backward."""
    from mixfast.kernels import attention

    lengths = [17, 17, 17, 65, 65]  # 3 SSL sequences of 17 tokens, 2 SL sequences of 65
    q, k, v = make_qkv(lengths, 3, 64, device=triton_device)
    cu = make_cu_seqlens(lengths, triton_device)
    grad = torch.randn_like(q)
    tiles = []
    pick = attention._pick_config
    monkeypatch.setattr(
        attention, "_pick_config", lambda key, *a: tiles.append(key[1]) or pick(key, *a)
    )
    outputs = {}
    for groups in (None, [3, 17, 2, 65]):
        out, lse = attention.varlen_attn_fwd(q, k, v, cu, 65, 0.125, groups)
        grads = attention.varlen_attn_bwd(grad, q, k, v, out, lse, cu, 65, 0.125, None, groups)
        outputs[groups is None] = (out, lse, *grads)
    assert tiles == [128, 128, 32, 128, 32, 128]  # one launch each way, then one per group
    from mixfast.ops.reference import varlen_attn_bwd_reference, varlen_attn_fwd_reference

    ref_out, ref_lse = varlen_attn_fwd_reference(q, k, v, cu, 0.125)
    want = (
        ref_out,
        ref_lse,
        *varlen_attn_bwd_reference(grad, q, k, v, ref_out, ref_lse, cu, 0.125),
    )
    for g, u, w in zip(outputs[False], outputs[True], want):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(u, w, atol=2e-5, rtol=1e-5)


def test_seq_groups_are_checked():
    lengths = [3, 3, 5]
    q, k, v = make_qkv(lengths)
    cu = make_cu_seqlens(lengths)
    plain = varlen_attention(q, k, v, cu, 5)
    assert torch.equal(varlen_attention(q, k, v, cu, 5, seq_groups=[(2, 3), (1, 5)]), plain)
    cases = [
        ([(2, 3)], "seq_groups count 2 sequences, cu_seqlens 3"),
        ([(2, 3), (1, 6)], "longest <= max_seqlen=5"),
        ([(-1, 3), (4, 5)], "count >= 0"),
        ([(1, 3), (2, 3)], "seq_groups says 3 tokens at most for sequences 1..2, one has 5"),
    ]
    for groups, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            varlen_attention(q, k, v, cu, 5, seq_groups=groups)


@pytest.mark.triton
def test_kernel_300_sequences_in_one_call(triton_device):
    lengths = torch.randint(0, 24, (300,), generator=torch.Generator().manual_seed(1)).tolist()
    lengths[7] = 1
    got, want = _kernel_and_reference(lengths, 1, 32, triton_device)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-5)


@pytest.mark.triton
def test_op_runs_kernels_through_autograd(triton_device, monkeypatch):
    """The op on the Triton path: strided q/k/v views of one qkv tensor, an expanded grad_out."""
    monkeypatch.setenv("MIXFAST_BACKEND", "triton")
    lengths = [7, 1, 12]
    qkv = torch.randn(sum(lengths), 3, 2, 32, device=triton_device, requires_grad=True)
    out = ops.varlen_attention(*qkv.unbind(1), make_cu_seqlens(lengths, triton_device), 12)
    (grad,) = torch.autograd.grad(out.sum(), qkv)

    monkeypatch.setenv("MIXFAST_BACKEND", "reference")
    qkv_ref = qkv.detach().clone().requires_grad_(True)
    ref = sdpa_per_sequence(*qkv_ref.unbind(1), lengths)
    (grad_ref,) = torch.autograd.grad(ref.sum(), qkv_ref)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(grad, grad_ref, atol=2e-5, rtol=1e-5)


@pytest.mark.triton
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("lengths", [[65, 17] * 16, [197, 50] * 8, [1024, 1, 300]])
def test_kernel_low_precision_error_relative(dtype, head_dim, lengths, monkeypatch):
    """bf16/fp16 kernel error vs an fp32 reference <= 2x that of SDPA in the same precision."""
    if not torch.cuda.is_available():
        pytest.skip("error-relative low-precision check runs on CUDA")
    if head_dim != 64:  # autotuning (ViT-Tiny's head dim) once is enough; keep the run short
        monkeypatch.setenv("MIXFAST_AUTOTUNE", "0")
    q, k, v = make_qkv(lengths, 3, head_dim, dtype, "cuda", grad=True)
    cu = make_cu_seqlens(lengths, "cuda")
    grad = torch.randn_like(q)

    def run(fn, *tensors):
        leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
        out = fn(*leaves)
        return [out, *torch.autograd.grad(out, leaves, grad.to(out.dtype))]

    kernel = run(lambda a, b, c: ops.varlen_attention(a, b, c, cu, max(lengths)), q, k, v)
    same = run(lambda a, b, c: sdpa_per_sequence(a, b, c, lengths), q, k, v)
    exact = run(
        lambda a, b, c: sdpa_per_sequence(a, b, c, lengths), q.float(), k.float(), v.float()
    )
    for name, got, torch_same, want in zip(("out", "dq", "dk", "dv"), kernel, same, exact):
        kernel_err = (got.float() - want).abs().max().item()
        torch_err = (torch_same.float() - want).abs().max().item()
        # eps: one unit in the last place of the largest output, the rounding every kernel's
        # result takes when it is written in `dtype` (torch's may happen to round better).
        eps = torch.finfo(dtype).eps * want.abs().max().item()
        assert kernel_err <= 2 * torch_err + eps, f"{name}: {kernel_err} vs torch {torch_err}"


# ---------------------------------------------------------------------------------------------
# The kernels compiled offline for sm_90 (no GPU needed): what the interpreter cannot check
# ---------------------------------------------------------------------------------------------


def _compile_for_sm90(kernel, dtype: str, constexprs: dict, num_warps: int):
    """`kernel` compiled for sm_90, its args specialised as a real launch specialises them
    (pointers and strides divisible by 16: vectorised, pipelined loads)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    scalars = {"num_heads": "i32", "seq_base": "i32", "qk_scale": "fp32", "softmax_scale": "fp32"}
    pointers = {"CU_SEQLENS": "*i32", "LSE": "*fp32"}

    def arg_type(name):
        if name in constexprs:
            return "constexpr"
        if name.startswith("stride"):
            return "i32"
        return scalars.get(name) or pointers.get(name, f"*{dtype}")

    aligned = [n for n in names if n not in constexprs and n not in scalars]
    source = ASTSource(
        fn=kernel,
        signature={n: arg_type(n) for n in names},
        constexprs={(names.index(n),): v for n, v in constexprs.items()},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned},
    )
    options = dict(num_warps=num_warps, num_stages=3)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def _ptxas_spill_bytes(ptx: str, tmp_path) -> int:
    """Bytes of spill stores ptxas reports for `ptx` on sm_90a; skips the calling test, with
    its reason, where triton ships no ptxas (the checks before this call have then run)."""
    import re
    import subprocess

    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
    if not os.path.exists(ptxas):
        pytest.skip(f"no ptxas at {ptxas}: the register-spill check did not run")
    (tmp_path / "k.ptx").write_text(ptx)
    args = [
        ptxas,
        "-v",
        "--gpu-name",
        "sm_90a",
        str(tmp_path / "k.ptx"),
        "-o",
        str(tmp_path / "k.o"),
    ]
    log = subprocess.run(args, capture_output=True, text=True, check=True).stderr
    return sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", log))


@pytest.mark.parametrize("kind", ["fwd", "bwd"])
@pytest.mark.parametrize("tile, heads", [(128, 1), (32, 3)])
def test_kernels_compile_for_sm90_on_tensor_cores_without_spills(kind, tile, heads, tmp_path):
    """The default bf16 config of the mix-step tiles at head dim 64: the SL sequences' (128),
    and the SSL sequences' (32) with all 3 heads of ViT-Tiny in one program."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        pytest.skip("the GPU compiler is not used under TRITON_INTERPRET=1")
    pytest.importorskip("triton.backends.nvidia")
    from mixfast.kernels import attention

    make = attention._fwd_candidates if kind == "fwd" else attention._bwd_candidates
    config = dict(make(tile, 64, torch.bfloat16, heads)[-1 if heads > 1 else 0])
    fn = attention._varlen_attn_fwd_kernel if kind == "fwd" else attention._varlen_attn_bwd_kernel
    num_warps = config.pop("num_warps")
    constexprs = dict(config, HEAD_DIM=64, BLOCK_D=64, INPUT_PRECISION="tf32")
    ptx = _compile_for_sm90(fn, "bf16", constexprs, num_warps).asm["ptx"]
    # Hopper's warpgroup MMA needs 64 rows; a 32-row tile runs on mma.sync tensor cores
    assert ("wgmma.mma_async" if tile >= 64 else "mma.sync") in ptx
    assert _ptxas_spill_bytes(ptx, tmp_path) == 0
