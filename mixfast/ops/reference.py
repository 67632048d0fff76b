"""Plain-PyTorch paths of every mixfast op: the CPU path where no faster one exists, and the
oracle of every test.

- varlen attention: `varlen_attention_reference` (one SDPA per sequence, the test oracle) and
  `varlen_attn_fwd_reference` / `varlen_attn_bwd_reference` (sequences of equal length batched,
  so a mix step costs two batched matmuls; the CPU path of the custom ops);
- patch embedding: `masked_patch_embed_reference` (timm's conv + gather + pos add) and
  `patch_embed_bwd_reference` (fp32 accumulation);
- masking: Philox4x32-10 on int64 tensors holding 32-bit words, then a Fisher-Yates shuffle
  run for all samples at once (`random_masking_reference`, bit-identical to mixfast._C), and
  `mae_random_masking` (MAE's argsort of torch noise: the benchmark baseline).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


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


def _length_groups(cu_seqlens: torch.Tensor) -> list[tuple[slice | torch.Tensor, int, int]]:
    """(rows, n, L) for every group of n non-empty sequences sharing one length L: rows is a
    slice when they lie back to back (a mix step's layout: views, no gather), else the row
    indices [n, L]. One host read of cu_seqlens."""
    cu = cu_seqlens.tolist()
    starts_by_length: dict[int, list[int]] = {}
    for start, end in zip(cu, cu[1:]):
        if end > start:
            starts_by_length.setdefault(end - start, []).append(start)
    groups = []
    for length, starts in sorted(starts_by_length.items()):
        n = len(starts)
        if starts[-1] - starts[0] == (n - 1) * length:  # every gap is one length: contiguous
            groups.append((slice(starts[0], starts[0] + n * length), n, length))
        else:
            groups.append((torch.tensor(starts)[:, None] + torch.arange(length), n, length))
    return groups


def _take(t: torch.Tensor, rows: slice | torch.Tensor, n: int, length: int) -> torch.Tensor:
    """Rows of one group of t [T, ...] as [n, L, ...]."""
    if isinstance(rows, slice):
        return t[rows].view(n, length, *t.shape[1:])
    return t[rows.to(t.device)]


def _put(dst: torch.Tensor, rows: slice | torch.Tensor, value: torch.Tensor) -> None:
    """dst[rows] = value [n, L, ...] (the inverse of _take)."""
    if isinstance(rows, slice):
        dst[rows] = value.flatten(0, 1)
    else:
        dst[rows.to(dst.device)] = value


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    # [n, L, H, Dh] x [n, L, H, Dh] -> [n, H, L, L], fp32
    return torch.einsum("nihd,njhd->nhij", q.float(), k.float()) * scale


def varlen_attn_fwd_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    total, heads, _ = q.shape
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.zeros(total, heads, dtype=torch.float32, device=q.device)  # [H, T] at the end
    for rows, n, length in _length_groups(cu_seqlens):
        s = _scores(_take(q, rows, n, length), _take(k, rows, n, length), scale)
        lse_g = torch.logsumexp(s, dim=-1)  # [n, H, L]
        p = torch.exp(s - lse_g[..., None])
        vg = _take(v, rows, n, length).float()
        _put(out, rows, torch.einsum("nhij,njhd->nihd", p, vg).to(q.dtype))
        _put(lse, rows, lse_g.transpose(1, 2))
    return out, lse.t().contiguous()


def varlen_attn_bwd_reference(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = (torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    lse_t = lse.t()  # [T, H]
    for rows, n, length in _length_groups(cu_seqlens):
        qg, kg, vg = (_take(t, rows, n, length).float() for t in (q, k, v))
        do, o = (_take(t, rows, n, length).float() for t in (grad_out, out))
        lse_g = _take(lse_t, rows, n, length).transpose(1, 2)  # [n, H, L]
        p = torch.exp(_scores(qg, kg, scale) - lse_g[..., None])
        delta = (do * o).sum(-1).transpose(1, 2)  # [n, H, L]
        dp = torch.einsum("nihd,njhd->nhij", do, vg)
        ds = p * (dp - delta[..., None])
        _put(dv, rows, torch.einsum("nhij,nihd->njhd", p, do).to(v.dtype))
        _put(dq, rows, (torch.einsum("nhij,njhd->nihd", ds, kg) * scale).to(q.dtype))
        _put(dk, rows, (torch.einsum("nhij,nihd->njhd", ds, qg) * scale).to(k.dtype))
    return dq, dk, dv


def patch_embed_bwd_reference(
    grad_tokens: Tensor, images: Tensor, weight: Tensor, patch_ids: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    batch, length, dim = grad_tokens.shape
    patch = weight.shape[-1]
    pixels = patchify_images(images, patch)  # [B, N, C*p*p]
    num_patches = pixels.shape[1]
    if patch_ids is not None:
        index = patch_ids.long().unsqueeze(-1).expand(-1, -1, pixels.shape[-1])
        pixels = torch.gather(pixels, 1, index)  # [B, L, C*p*p]
    grad = grad_tokens.reshape(batch * length, dim).float()
    pixels = pixels.reshape(batch * length, pixels.shape[-1]).float()
    grad_weight = grad.t() @ pixels  # [D, C*p*p]
    grad_bias = grad.sum(0)
    if patch_ids is None:
        grad_pos = grad.view(batch, length, dim).sum(0)
    else:
        grad_pos = grad.new_zeros(num_patches, dim)
        grad_pos.index_add_(0, patch_ids.reshape(-1).long(), grad)
    dtype = weight.dtype
    return grad_weight.to(dtype).view(weight.shape), grad_bias.to(dtype), grad_pos.to(dtype)


_M32 = 0xFFFFFFFF


_PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # key increments per round


_PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers


class MaskingResult(NamedTuple):
    ids_keep: Tensor  # [B, K] int64
    ids_restore: Tensor  # [B, N] int64
    mask: Tensor  # [B, N] float32, 1 = masked


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """K, computed exactly as MAE does (and as the C++ op does, in double precision)."""
    return int(num_patches * (1 - mask_ratio))


def _mulhilo(multiplier: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of multiplier * x. Splitting the multiplier into 16-bit halves keeps
    every intermediate below 2^49, so int64 never overflows."""
    low_part = x * (multiplier & 0xFFFF)
    high_part = x * (multiplier >> 16)
    total = low_part + ((high_part & 0xFFFF) << 16)
    return (total >> 32) + (high_part >> 16), total & _M32


def philox4x32_10(counter: tuple[Tensor, ...], key: tuple[int, int]) -> tuple[Tensor, ...]:
    """Philox4x32-10 of 4 counter words (int64 tensors of 32-bit values) under a 2-word key."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_ in range(10):
        if round_:
            k0, k1 = (k0 + _PHILOX_W[0]) & _M32, (k1 + _PHILOX_W[1]) & _M32
        hi0, lo0 = _mulhilo(_PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo(_PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def masking_draws(sample_ids: Tensor, num_patches: int, seed: int, offset: int) -> Tensor:
    """[B, N - 1] int64 holding the 32-bit draws of csrc/masking.h (block m: draws 4m..4m+3)."""
    device = sample_ids.device
    seed &= 2**64 - 1
    count = max(num_patches - 1, 0)
    blocks = torch.arange((count + 3) // 4, device=device)
    shape = (sample_ids.shape[0], blocks.shape[0])
    counter = (
        blocks.expand(shape),
        (sample_ids & _M32)[:, None].expand(shape),
        torch.full(shape, offset & _M32, dtype=torch.int64, device=device),
        torch.full(shape, offset >> 32, dtype=torch.int64, device=device),
    )
    words = philox4x32_10(counter, (seed & _M32, seed >> 32))
    return torch.stack(words, dim=-1).flatten(1)[:, :count]


def random_masking_reference(
    sample_ids: Tensor,
    num_patches: int,
    mask_ratio: float,
    seed: int,
    offset: int,
    sorted_keep: bool,
) -> MaskingResult:
    """The masking of mixfast._C in plain PyTorch: the same Fisher-Yates swaps, made for every
    sample at once; ids_restore by argsort (so the kernel's single pass has an oracle)."""
    num_keep = num_kept(num_patches, mask_ratio)
    draws = masking_draws(sample_ids, num_patches, seed, offset)
    batch = sample_ids.shape[0]
    rows = torch.arange(batch, device=sample_ids.device)
    ids_shuffle = torch.arange(num_patches, device=sample_ids.device).repeat(batch, 1)
    for i in range(num_patches - 1):
        pick = i + ((draws[:, i] * (num_patches - i)) >> 32)
        chosen = ids_shuffle[rows, pick]
        ids_shuffle[rows, pick] = ids_shuffle[:, i]
        ids_shuffle[:, i] = chosen
    if sorted_keep:
        masked = torch.ones_like(ids_shuffle, dtype=torch.uint8)
        masked.scatter_(1, ids_shuffle[:, :num_keep], 0)
        ids_shuffle = torch.argsort(masked, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(ids_shuffle.shape, dtype=torch.float32, device=sample_ids.device)
    mask[:, :num_keep] = 0
    ids_keep = ids_shuffle[:, :num_keep].contiguous()
    return MaskingResult(ids_keep, ids_restore, mask.gather(1, ids_restore))


def mae_random_masking(
    batch_size: int, num_patches: int, mask_ratio: float, *, device: torch.device | str = "cpu"
) -> MaskingResult:
    """MAE's own masking (argsort of uniform noise from torch's generator): the benchmark
    baseline, and what the statistical tests compare against."""
    num_keep = num_kept(num_patches, mask_ratio)
    noise = torch.rand(batch_size, num_patches, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :num_keep] = 0
    return MaskingResult(ids_shuffle[:, :num_keep], ids_restore, torch.gather(mask, 1, ids_restore))
