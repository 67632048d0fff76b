"""`cast_once(params, dtype)`: many weights cast to one dtype in one kernel, with its autograd.

Under autocast every Linear casts its weight and its bias to bf16 in a kernel of its own, and
the backward casts each of their gradients back to fp32 in another: four launches per Linear
and step (about 200 for a 12-block ViT with its decoder). `cast_once` writes every weight into
one low-precision buffer with a single `cat` (its `out` converts the dtype) and hands out views
of it; the backward gathers the gradients that arrived into one buffer the same way and casts
it with one more kernel. The values are the per-Linear casts' bit for bit: a cast is
element-wise, and autocast passes a tensor that already has its dtype through untouched.

`Objectives(model, cast_dtype=torch.bfloat16)` (mixfast/train/objectives.py) runs each forward
on these views (torch.func.functional_call), so autocast finds nothing left to cast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class _CastOnce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dtype: torch.dtype, *params: Tensor) -> tuple[Tensor, ...]:
        ctx.set_materialize_grads(False)  # an unused view's gradient stays None
        ctx.shapes = [p.shape for p in params]
        ctx.master_dtype = params[0].dtype
        numels = [p.numel() for p in params]
        flat = params[0].new_empty(sum(numels), dtype=dtype)
        torch.cat([p.reshape(-1) for p in params], out=flat)
        return tuple(v.view(s) for v, s in zip(flat.split(numels), ctx.shapes, strict=True))

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        arrived = [i for i, g in enumerate(grads) if g is not None and ctx.needs_input_grad[i + 1]]
        out: list[Tensor | None] = [None] * len(grads)
        if arrived:
            numels = [grads[i].numel() for i in arrived]
            flat = grads[arrived[0]].new_empty(sum(numels), dtype=ctx.master_dtype)
            torch.cat([grads[i].reshape(-1) for i in arrived], out=flat)
            for i, g in zip(arrived, flat.split(numels), strict=True):
                out[i] = g.view(ctx.shapes[i])
        return (None, *out)


def cast_once(params: Sequence[Tensor], dtype: torch.dtype) -> tuple[Tensor, ...]:
    """`params` (same dtype and device, any shapes) cast to `dtype`: views of one buffer.

    Args:
        params: N tensors, e.g. the weights and biases of every nn.Linear of a model.
        dtype: the floating dtype of the copies (torch.bfloat16 under bf16 autocast).
    Returns:
        N tensors, `out[i]` equal to `params[i].to(dtype)`; gradients flow back to each
        `params[i]` in its own dtype, None where none arrived.
    """
    if not params:
        raise ValueError("cast_once needs at least one tensor")
    if not dtype.is_floating_point:
        raise ValueError(f"cast_once: dtype must be a floating dtype, got {dtype}")
    first = params[0]
    for i, p in enumerate(params):
        if p.dtype != first.dtype or p.device != first.device:
            raise ValueError(
                f"cast_once: params[{i}] is {p.dtype} on {p.device}, params[0] is "
                f"{first.dtype} on {first.device}; all must match"
            )
    return _CastOnce.apply(dtype, *params)
