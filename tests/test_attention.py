"""Shared varlen attention: the op (reference path, compile, opcheck, checks) and the Triton
kernels against the plain-PyTorch reference (`-m triton`: CUDA, or CPU under TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest
import torch

from mixfast import ops
from mixfast._attention import varlen_attn_bwd, varlen_attn_fwd
from mixfast.reference import varlen_attention_reference


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
    _, lse = varlen_attn_fwd(q, k, v, make_cu_seqlens(lengths), 6, 0.5)
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
    torch.library.opcheck(varlen_attn_fwd, (q, k, v, cu, 5, 0.25))
    out, lse = varlen_attn_fwd(q, k, v, cu, 5, 0.25)
    grad = torch.randn_like(out)
    args = (grad, q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), cu, 5, 0.25)
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
