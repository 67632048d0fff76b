"""FLOP formulas of the mixfast custom ops for torch.utils.flop_counter.FlopCounterMode, so a
step's model FLOPs are counted whatever backend runs it (opaque custom ops are otherwise
invisible to the counter). Conventions as torch's: a multiply-add is 2 FLOPs.

    patch embedding:   2 * tokens * D * (C * p * p) forward; the same for the weight grad
                       (images need no grad)
    varlen attention:  4 * H * Dh * sum_i L_i^2 forward (QK^T and PV), 2.5x that backward
    SDPA on CPU:       torch's own SDPA formulas (registered here for the CPU flash kernel)
"""

from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import (
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

# importing the op modules registers the ops these formulas attach to
from mixfast.ops import attention, patch_embed  # noqa: F401


def _kdim(weight_shape) -> int:
    out_dim, channels, patch, _ = weight_shape
    return channels * patch * patch


def _embed_flops(tokens: int, weight_shape) -> int:
    return 2 * tokens * weight_shape[0] * _kdim(weight_shape)


def _attention_flops(qkv_like: torch.Tensor, cu_seqlens: torch.Tensor, heads_dim: int) -> int:
    """4 * H * Dh * sum L^2 for one forward (one host read of cu_seqlens)."""
    cu = cu_seqlens.tolist()
    squares = sum((end - start) ** 2 for start, end in zip(cu, cu[1:]))
    return 4 * heads_dim * squares


@functools.cache
def register() -> None:
    """Register once per process (a second registration would be an error), plus torch's own
    SDPA formulas for the CPU flash kernel, which torch leaves uncounted."""
    ops = torch.ops.mixfast
    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu not in flop_registry:

        @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
        def _sdpa_cpu(query, key, value, *args, out_shape=None, **kwargs):
            return sdpa_flop_count(query, key, value)

        @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
        def _sdpa_cpu_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
            return sdpa_backward_flop_count(grad_out, query, key, value)

    @register_flop_formula(ops.masked_patch_embed)
    def _masked(images, weight, bias, pos_embed, ids_keep, out_shape=None, **kwargs):
        return _embed_flops(out_shape[0] * out_shape[1], weight)

    @register_flop_formula(ops.patch_embed_backward)
    def _embed_bwd(grad_tokens, images, weight, patch_ids, out_shape=None, **kwargs):
        return _embed_flops(grad_tokens[0] * grad_tokens[1], weight)

    @register_flop_formula(ops.packed_patch_embed)
    def _packed(images, weight, bias, pos_embed, ids_keep, full_offsets, keep_offsets, *rest,
                out_shape=None, **kwargs):  # fmt: skip
        per_image = pos_embed[0] if full_offsets is not None else ids_keep[1]
        return _embed_flops(images[0] * per_image, weight)

    @register_flop_formula(ops.varlen_attn_fwd, get_raw=True)
    def _fwd(q, k, v, cu_seqlens, *args, out_val=None, **kwargs):
        return _attention_flops(q, cu_seqlens, q.shape[1] * q.shape[2])

    @register_flop_formula(ops.varlen_attn_bwd, get_raw=True)
    def _bwd(grad_out, q, k, v, out, lse, cu_seqlens, *args, out_val=None, **kwargs):
        return 5 * _attention_flops(q, cu_seqlens, q.shape[1] * q.shape[2]) // 2

    @register_flop_formula(ops.varlen_attn_qkvpacked_fwd, get_raw=True)
    def _packed_fwd(qkv, cu_seqlens, *args, out_val=None, **kwargs):
        return _attention_flops(qkv, cu_seqlens, qkv.shape[2] * qkv.shape[3])

    @register_flop_formula(ops.varlen_attn_qkvpacked_bwd, get_raw=True)
    def _packed_bwd(grad_out, qkv, out, lse, cu_seqlens, *args, out_val=None, **kwargs):
        return 5 * _attention_flops(qkv, cu_seqlens, qkv.shape[2] * qkv.shape[3]) // 2
