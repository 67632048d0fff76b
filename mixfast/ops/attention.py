"""Shared varlen attention as torch.library custom ops (namespace `mixfast`).

`varlen_attention(q, k, v, cu_seqlens, max_seqlen)` is non-causal multi-head attention over
packed sequences (flash-attention's varlen convention): q, k, v [T, H, Dh], `cu_seqlens` int32
[S+1] marking where each sequence starts, `max_seqlen` the longest length as a Python int. Each
sequence attends only to itself.

Two opaque custom ops carry it: `mixfast::varlen_attn_fwd` -> (out [T, H, Dh], lse [H, T] fp32)
and `mixfast::varlen_attn_bwd` -> (dq, dk, dv). Their bodies pick the Triton kernels
(kernels/attention.py) or the plain-PyTorch path (mixfast/ops/reference.py; the switch is
mixfast/ops/_backend.py). They are opaque
on purpose: torch.compile traces around them (fake impls below), never into Triton, so the same
graph compiles on CPU, under the interpreter and on CUDA.
"""

from __future__ import annotations

import math

import torch

from mixfast.ops._backend import use_triton
from mixfast.ops.reference import varlen_attn_bwd_reference, varlen_attn_fwd_reference

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256


# ----------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------


def _varlen_attn_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float,
    seq_groups: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """out [T, H, Dh] (q's dtype, contiguous) and lse [H, T] fp32 (natural log)."""
    if not q.is_cuda:
        _check_cu_seqlens_values(cu_seqlens, q.shape[0], max_seqlen, seq_groups)
    if use_triton(q):
        from mixfast.kernels.attention import varlen_attn_fwd as triton_fwd

        return triton_fwd(q, k, v, cu_seqlens, max_seqlen, softmax_scale, seq_groups)
    return varlen_attn_fwd_reference(q, k, v, cu_seqlens, softmax_scale)


# The op is the plain function registered: the qkvpacked op below runs the same body.
varlen_attn_fwd = torch.library.custom_op("mixfast::varlen_attn_fwd", mutates_args=())(
    _varlen_attn_fwd
)


@varlen_attn_fwd.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, softmax_scale, seq_groups):
    out = q.new_empty(q.shape)
    lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("mixfast::varlen_attn_bwd", mutates_args=())
def varlen_attn_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float,
    seq_groups: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv (contiguous, the dtypes of q, k, v) by recomputation from lse."""
    if use_triton(q):
        from mixfast.kernels.attention import varlen_attn_bwd as triton_bwd

        return triton_bwd(
            grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, softmax_scale,
            seq_groups=seq_groups,
        )  # fmt: skip
    return varlen_attn_bwd_reference(grad_out, q, k, v, out, lse, cu_seqlens, softmax_scale)


@varlen_attn_bwd.register_fake
def _(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, softmax_scale, seq_groups):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, softmax_scale, seq_groups = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.max_seqlen, ctx.seq_groups = max_seqlen, seq_groups
    ctx.softmax_scale = softmax_scale
    # lse never gets a gradient: without this, autograd would fill a zero [H, T] tensor for it
    # (one more kernel per block and step)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_lse):
    # lse is an auxiliary output for the backward; its gradient is ignored.
    if grad_out is None:  # out did not reach the loss
        return None, None, None, None, None, None, None
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = varlen_attn_bwd(
        grad_out, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, ctx.softmax_scale,
        ctx.seq_groups,
    )  # fmt: skip
    return dq, dk, dv, None, None, None, None


varlen_attn_fwd.register_autograd(_backward, setup_context=_setup_context)


# The same attention on one packed projection qkv [T, 3, H, Dh] (q, k, v = qkv.unbind(1)). Its
# backward writes dq, dk, dv straight into one [T, 3, H, Dh] gradient: with three separate
# inputs, autograd would torch.stack them into it (one more copy of the projection per block).


@torch.library.custom_op("mixfast::varlen_attn_qkvpacked_fwd", mutates_args=())
def varlen_attn_qkvpacked_fwd(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float,
    seq_groups: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """out [T, H, Dh] (contiguous) and lse [H, T] fp32, as varlen_attn_fwd on qkv.unbind(1)."""
    return _varlen_attn_fwd(*qkv.unbind(1), cu_seqlens, max_seqlen, softmax_scale, seq_groups)


@varlen_attn_qkvpacked_fwd.register_fake
def _(qkv, cu_seqlens, max_seqlen, softmax_scale, seq_groups):
    total, _, heads, head_dim = qkv.shape
    out = qkv.new_empty((total, heads, head_dim))
    return out, qkv.new_empty((heads, total), dtype=torch.float32)


@torch.library.custom_op("mixfast::varlen_attn_qkvpacked_bwd", mutates_args=())
def varlen_attn_qkvpacked_bwd(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float,
    seq_groups: list[int],
) -> torch.Tensor:
    """dqkv [T, 3, H, Dh] (contiguous, qkv's dtype)."""
    q, k, v = qkv.unbind(1)
    if use_triton(q):
        from mixfast.kernels.attention import varlen_attn_bwd as triton_bwd

        dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
        triton_bwd(
            grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, softmax_scale, dqkv.unbind(1),
            seq_groups,
        )  # fmt: skip
        return dqkv
    grads = varlen_attn_bwd_reference(grad_out, q, k, v, out, lse, cu_seqlens, softmax_scale)
    return torch.stack(grads, dim=1)


@varlen_attn_qkvpacked_bwd.register_fake
def _(grad_out, qkv, out, lse, cu_seqlens, max_seqlen, softmax_scale, seq_groups):
    return qkv.new_empty(qkv.shape)


def _qkvpacked_setup_context(ctx, inputs, output):
    qkv, cu_seqlens, max_seqlen, softmax_scale, seq_groups = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse, cu_seqlens)
    ctx.max_seqlen, ctx.seq_groups = max_seqlen, seq_groups
    ctx.softmax_scale = softmax_scale
    ctx.set_materialize_grads(False)  # as above: no zero gradient for lse


def _qkvpacked_backward(ctx, grad_out, grad_lse):
    if grad_out is None:
        return None, None, None, None, None
    qkv, out, lse, cu_seqlens = ctx.saved_tensors
    dqkv = varlen_attn_qkvpacked_bwd(
        grad_out, qkv, out, lse, cu_seqlens, ctx.max_seqlen, ctx.softmax_scale, ctx.seq_groups
    )
    return dqkv, None, None, None, None


varlen_attn_qkvpacked_fwd.register_autograd(
    _qkvpacked_backward, setup_context=_qkvpacked_setup_context
)


# ----------------------------------------------------------------------------------------------
# Public function and input checks
# ----------------------------------------------------------------------------------------------


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float | None = None,
    *,
    seq_groups: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Block-diagonal (per-sequence) attention over packed sequences.

    q, k, v [T, H, Dh] (fp32, bf16 or fp16, the same dtype and shape; the last dim contiguous,
    other strides free, e.g. views of one packed qkv projection); cu_seqlens int32 [S+1] on the
    same device, 0 = cu_seqlens[0] <= ... <= cu_seqlens[S] = T; max_seqlen >= every length
    (a Python int). Returns [T, H, Dh], default scale 1/sqrt(Dh).
    `seq_groups` [(count, longest length), ...]: consecutive groups of the S sequences, as the
    host knows them (e.g. a packed step's SSL and SL sequences); the Triton kernels launch once
    per group with a tile sized to it. The result does not depend on them.
    Like flash-attention, the cu_seqlens values are checked only where reading them costs no
    device sync (CPU tensors); shapes, dtypes and devices are always checked.
    """
    scale, groups = _checked_args((q, k, v), cu_seqlens, max_seqlen, softmax_scale, seq_groups)
    out, _ = varlen_attn_fwd(q, k, v, cu_seqlens, max_seqlen, scale, groups)
    return out


def varlen_attention_qkvpacked(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float | None = None,
    *,
    seq_groups: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """`varlen_attention(*qkv.unbind(1), cu_seqlens, max_seqlen, softmax_scale)` for one packed
    projection qkv [T, 3, H, Dh] (e.g. `qkv_linear(x).view(T, 3, H, Dh)`), with a backward
    that returns dqkv in one buffer (no stack of dq, dk, dv). Same numbers as varlen_attention.
    """
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 4 or qkv.shape[1] != 3:
        shape = list(qkv.shape) if isinstance(qkv, torch.Tensor) else type(qkv).__name__
        raise ValueError(f"varlen_attention_qkvpacked: qkv must be [T, 3, H, Dh]; got {shape}")
    scale, groups = _checked_args(qkv.unbind(1), cu_seqlens, max_seqlen, softmax_scale, seq_groups)
    out, _ = varlen_attn_qkvpacked_fwd(qkv, cu_seqlens, max_seqlen, scale, groups)
    return out


def _checked_args(
    qkv: tuple[torch.Tensor, ...],
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float | None,
    seq_groups: list[tuple[int, int]] | None,
) -> tuple[float, list[int]]:
    """Both public functions' arguments checked (no device sync), qkv = (q, k, v) [T, H, Dh]
    -> (the softmax scale, by default 1/sqrt(Dh); seq_groups in the ops' flat form)."""
    _check_inputs(*qkv, cu_seqlens, max_seqlen)
    groups = _flat_groups(seq_groups, cu_seqlens, max_seqlen)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(qkv[0].shape[-1])
    return float(softmax_scale), groups


def _check_inputs(q, k, v, cu_seqlens, max_seqlen) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"varlen_attention: {name} must be a 3-D tensor [T, H, Dh]")
        if t.dtype not in DTYPES:
            raise ValueError(f"varlen_attention: {name}.dtype is {t.dtype}; allowed: {DTYPES}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"varlen_attention: q, k, v must have the same shape [T, H, Dh]; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"varlen_attention: q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"varlen_attention: head dim {q.shape[-1]} > {MAX_HEAD_DIM}")
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1:
        raise ValueError("varlen_attention: cu_seqlens must be a 1-D int32 tensor [S+1]")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.shape[0] < 1:
        raise ValueError(
            f"varlen_attention: cu_seqlens must be int32 with S+1 >= 1 entries; got "
            f"{cu_seqlens.dtype} with {cu_seqlens.shape[0]} entries"
        )
    devices = {t.device for t in (q, k, v, cu_seqlens)}
    if len(devices) != 1:
        raise ValueError(
            f"varlen_attention: q, k, v, cu_seqlens must share one device; got {devices}"
        )
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (int, torch.SymInt)):
        raise ValueError(f"varlen_attention: max_seqlen must be an int; got {max_seqlen!r}")


def _flat_groups(
    seq_groups: list[tuple[int, int]] | None, cu_seqlens: torch.Tensor, max_seqlen: int
) -> list[int]:
    """The ops' flat [count, longest, ...] form; checks what needs no device read."""
    if seq_groups is None:
        return []
    flat = []
    for group in seq_groups:
        count, longest = group
        ints = all(isinstance(n, int | torch.SymInt) and not isinstance(n, bool) for n in group)
        if not ints or count < 0 or not 0 <= longest <= max_seqlen:
            raise ValueError(
                f"varlen_attention: seq_groups entries must be (count >= 0, 0 <= longest <= "
                f"max_seqlen={max_seqlen}); got {group!r}"
            )
        flat += [count, longest]
    if sum(flat[::2]) != cu_seqlens.shape[0] - 1:
        raise ValueError(
            f"varlen_attention: seq_groups count {sum(flat[::2])} sequences, cu_seqlens "
            f"{cu_seqlens.shape[0] - 1}"
        )
    return flat


def _check_cu_seqlens_values(
    cu_seqlens: torch.Tensor, total: int, max_seqlen: int, seq_groups: list[int] = ()
) -> None:
    """Value checks (they read cu_seqlens, so only on paths that read it anyway)."""
    cu = cu_seqlens.tolist()
    lengths = [end - start for start, end in zip(cu, cu[1:])]
    if cu[0] != 0 or cu[-1] != total:
        raise ValueError(
            f"varlen_attention: cu_seqlens must start at 0 and end at T={total}; got "
            f"{cu[0]} .. {cu[-1]}"
        )
    if lengths and min(lengths) < 0:
        raise ValueError("varlen_attention: cu_seqlens must be non-decreasing")
    if lengths and max(lengths) > max_seqlen:
        raise ValueError(
            f"varlen_attention: max_seqlen={max_seqlen} is smaller than the longest sequence "
            f"({max(lengths)})"
        )
    first = 0
    for count, longest in zip(seq_groups[::2], seq_groups[1::2]):
        group = lengths[first : first + count]
        if group and max(group) > longest:
            raise ValueError(
                f"varlen_attention: seq_groups says {longest} tokens at most for sequences "
                f"{first}..{first + count - 1}, one has {max(group)}"
            )
        first += count
