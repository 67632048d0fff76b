"""The op API of mixfast: every kernel is reached through one of these functions.

Each is a torch.library custom op (namespace `mixfast`) with a fake implementation and a
registered autograd; its body picks the Triton kernel (mixfast.kernels), the compiled extension
(mixfast._C) or the plain-PyTorch path (mixfast.ops.reference). `MIXFAST_BACKEND` overrides the
choice (mixfast/ops/_backend.py).

    varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None)   -> [T, H, Dh]
    varlen_attention_qkvpacked(qkv, cu_seqlens, max_seqlen, softmax_scale=None) -> [T, H, Dh]
    masked_patch_embed(images, weight, bias, pos_embed, ids_keep=None)        -> [B, K, D]
    packed_patch_embed(images, weight, bias, pos_embed, ids_keep, ...)        -> [rows, D]
    random_masking(batch_size, num_patches, mask_ratio, *, seed, offset=0, device="cpu")
                                                                              -> MaskingResult
    cast_once(params, dtype)         -> the params cast by one kernel, views of one buffer
                                        (an autograd.Function: a custom op may not return views,
                                        and a view no loss used must leave its gradient None)
"""

from mixfast.ops.attention import varlen_attention, varlen_attention_qkvpacked
from mixfast.ops.cast_once import cast_once
from mixfast.ops.masking import random_masking
from mixfast.ops.patch_embed import masked_patch_embed, packed_patch_embed
from mixfast.ops.reference import MaskingResult

__all__ = [
    "MaskingResult",
    "cast_once",
    "masked_patch_embed",
    "packed_patch_embed",
    "random_masking",
    "varlen_attention",
    "varlen_attention_qkvpacked",
]
