"""Plain-PyTorch references of every mixfast op: the CPU path and the oracle of every test."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Block-diagonal attention over packed sequences: q, k, v [T, H, Dh] -> [T, H, Dh]."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        # [L, H, Dh] -> [H, L, Dh] for SDPA
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=softmax_scale)
        out[start:end] = o.transpose(0, 1)
    return out


def patchify_images(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, C*p*p], patches in row-major order, pixels in (C, p, p) order."""
    batch, channels, height, width = images.shape
    grid_h, grid_w = height // patch, width // patch
    x = images.reshape(batch, channels, grid_h, patch, grid_w, patch)
    x = x.permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, p, p]
    return x.reshape(batch, grid_h * grid_w, channels * patch * patch)


def masked_patch_embed_reference(
    images: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pos_embed: torch.Tensor,
    ids_keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """timm PatchEmbed (stride-p conv) + gather of kept patches + pos-embed add -> [B, K, D]."""
    tokens = F.conv2d(images, weight, bias, stride=weight.shape[-1])  # [B, D, gh, gw]
    tokens = tokens.flatten(2).transpose(1, 2) + pos_embed  # [B, N, D]
    if ids_keep is None:
        return tokens
    index = ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
    return torch.gather(tokens, 1, index)
