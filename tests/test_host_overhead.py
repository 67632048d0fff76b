"""Host-overhead changes keep the numbers: the qkv-packed attention op equals varlen_attention
(reference path, opcheck, and the Triton kernels with `-m triton`), the cached packed-layout
index tensors equal their definition, and the backward launches no avoidable op (no zero
gradient for lse, no stack of dq, dk, dv)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mixfast import ops
from mixfast.model import create_model
from mixfast.model.packed import _cu_seqlens
from mixfast.ops.attention import (
    varlen_attention_qkvpacked,
    varlen_attn_qkvpacked_bwd,
    varlen_attn_qkvpacked_fwd,
)


def cu_seqlens_of(lengths: list[int], device="cpu") -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32).to(
        device
    )


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func._opname] += 1
        return func(*args, **(kwargs or {}))


def _packed_vs_unpacked(lengths, device, heads=2, head_dim=16, scale=None):
    qkv = torch.randn(sum(lengths), 3, heads, head_dim, device=device, requires_grad=True)
    cu = cu_seqlens_of(lengths, device)
    grad = torch.randn(sum(lengths), heads, head_dim, device=device).expand_as(qkv[:, 0])
    out = varlen_attention_qkvpacked(qkv, cu, max(lengths), scale)
    (dqkv,) = torch.autograd.grad(out, qkv, grad)
    qkv2 = qkv.detach().clone().requires_grad_(True)
    ref = ops.varlen_attention(*qkv2.unbind(1), cu, max(lengths), scale)
    (ref_grad,) = torch.autograd.grad(ref, qkv2, grad)
    return (out, dqkv), (ref, ref_grad)


@pytest.mark.parametrize("lengths", [[5], [3, 1, 7], [4, 0, 6, 0], [17, 17, 5, 5, 5]])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_qkvpacked_equals_varlen_attention(lengths, scale):
    got, want = _packed_vs_unpacked(lengths, "cpu", scale=scale)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=0, rtol=0)


def test_qkvpacked_opcheck():
    lengths = [3, 1, 6]
    qkv = torch.randn(sum(lengths), 3, 2, 8, requires_grad=True)
    cu = cu_seqlens_of(lengths)
    torch.library.opcheck(varlen_attn_qkvpacked_fwd, (qkv, cu, 6, 0.25, []))
    out, lse = varlen_attn_qkvpacked_fwd(qkv.detach(), cu, 6, 0.25, [])
    grad = torch.randn_like(out)
    torch.library.opcheck(
        varlen_attn_qkvpacked_bwd, (grad, qkv.detach(), out, lse, cu, 6, 0.25, [])
    )


@pytest.mark.parametrize(
    "qkv, message",
    [
        (torch.zeros(4, 2, 8), r"qkv must be \[T, 3, H, Dh\]"),
        (torch.zeros(4, 2, 1, 8), r"qkv must be \[T, 3, H, Dh\]"),
        (torch.zeros(4, 3, 1, 8, dtype=torch.int32), "dtype"),
    ],
)
def test_qkvpacked_bad_input(qkv, message):
    with pytest.raises(ValueError, match=message):
        varlen_attention_qkvpacked(qkv, cu_seqlens_of([4]), 4)


def test_backward_has_no_lse_zero_fill_and_no_stack():
    lengths = [5, 5, 3]
    qkv = torch.randn(sum(lengths), 3, 2, 8, requires_grad=True)
    cu = cu_seqlens_of(lengths)
    counts = {}
    for name, attention in (
        ("packed", lambda: varlen_attention_qkvpacked(qkv, cu, 5)),
        ("unpacked", lambda: ops.varlen_attention(*qkv.unbind(1), cu, 5)),
    ):
        out = attention()
        with OpCounter() as counter:
            out.sum().backward()
        counts[name] = counter.ops
    for ops_run in counts.values():
        assert ops_run["zeros"] == ops_run["zeros_like"] == ops_run["fill_"] == 0, ops_run
    # autograd stacks the unpacked op's dq, dk, dv into qkv's gradient; the packed op does not
    assert counts["unpacked"]["stack"] == 1 and counts["packed"]["stack"] == 0


@pytest.mark.parametrize(
    "shapes", [[(1, 1)], [(3, 17), (3, 5)], [(2, 65), (0, 9), (4, 17)], [(5, 1), (1, 7)]]
)
def test_cu_seqlens_cached_and_correct(shapes):
    lengths = [length for b, length in shapes for _ in range(b)]
    want = cu_seqlens_of(lengths)
    first = _cu_seqlens(shapes, torch.device("cpu"))
    assert first.dtype == torch.int32
    assert torch.equal(first, want)
    assert _cu_seqlens(list(shapes), torch.device("cpu")) is first  # eager: cached
    with torch.inference_mode():  # a fresh tensor, not the cached one
        inner = _cu_seqlens(shapes, torch.device("cpu"))
    assert inner is not first and torch.equal(inner, want)
    assert not first.is_inference()


def test_packed_step_after_inference_mode_call():
    """A layout first built under inference_mode must not break a later training step."""
    model = create_model(
        "vit_tiny_patch16_224",
        img_size=16,
        patch_size=4,
        in_chans=1,
        num_classes=3,
        embed_dim=16,
        depth=2,
        num_heads=2,
        decoder_dim=16,
        decoder_depth=1,
        decoder_heads=2,
        packed_attention="varlen",
    )
    x, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 2, 1])
    with torch.inference_mode():
        model.forward_mixed(x, x, y, alpha=0.5, seed=0)
    loss, _ = model.forward_mixed(x, x, y, alpha=0.5, seed=0)
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.blocks.parameters())


@pytest.mark.triton
@pytest.mark.parametrize("lengths", [[7, 1, 12], [17, 17, 65, 0, 5]])
def test_qkvpacked_kernels_match_reference_path(lengths, triton_device, monkeypatch):
    """Triton qkv-packed op (dqkv written through strided views) vs the reference op."""
    qkv = torch.randn(sum(lengths), 3, 2, 32, device=triton_device, requires_grad=True)
    cu = cu_seqlens_of(lengths, triton_device)
    grad = torch.randn(sum(lengths), 2, 32, device=triton_device)
    results = []
    for backend in ("triton", "reference"):
        monkeypatch.setenv("MIXFAST_BACKEND", backend)
        out = varlen_attention_qkvpacked(qkv, cu, max(lengths))
        results.append((out, *torch.autograd.grad(out, qkv, grad)))
    for g, w in zip(*results):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-5)
