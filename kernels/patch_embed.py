"""Fused masked-patch embedding: Triton kernels and their launchers.

Forward (`_patch_embed_fwd_kernel`): one program owns BLOCK_T tokens x BLOCK_D features. A token
is (image b, slot j) of a [B, L] token grid; its patch is j (all N patches, L = N) or ids[b, j]
(kept patches, L = K). The program reads the token's pixels straight from images [B, C, H, W]
(im2col on the fly, the C*p*p reduction axis tiled by BLOCK_K and masked, since C*p*p is rarely a
power of two), multiplies them by W^T [C*p*p, D] with tl.dot (fp32 accumulation), adds bias and
pos_embed[patch], and stores the row. Where the token goes:
  - dense: row b*L + j of a [B*L, D] output (masked_patch_embed);
  - packed: row off_a[b] + j and, if the patch is also kept (slot[b, j] >= 0), row
    off_b[b] + slot[b, j] as well, so a patch shared by the full and the kept view is embedded once
    and stored twice (packed_patch_embed). Offsets < 0 mean "this image has no such view".

Backward, given the per-token gradients G [B, L, D]:
  - dW = X_sel^T @ G in Triton (`_patch_embed_bwd_dw_kernel`): the pixels are again read from the
    images (no X_sel in memory); the token axis is split over programs, each writing an fp32
    partial [D, C*p*p] that torch sums (deterministic, no atomics).
  - dpos = scatter-add of G rows by patch index (a batch sum when every image holds all N
    patches) and db = dpos summed over patches: plain torch (`index_add_` / `sum`), an honest
    composition: one bandwidth-bound pass over G that torch already runs at memory speed.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _token_patch(ids_ptr, tok, tok_mask, length, PATCH_FROM_IDS: tl.constexpr):
    if PATCH_FROM_IDS:
        patch = tl.load(ids_ptr + tok, mask=tok_mask, other=0).to(tl.int64)
    else:
        patch = tok % length
    return patch


@triton.jit
def _patch_pixel_offsets(img, patch, grid_w, stride_b, stride_h, stride_w, PATCH: tl.constexpr):
    """Offset of each token's top-left pixel (channel 0) in the image tensor."""
    gy = patch // grid_w
    gx = patch % grid_w
    return img * stride_b + gy * (PATCH * stride_h) + gx * (PATCH * stride_w)


@triton.jit
def _k_offsets(k, stride_c, stride_h, stride_w, PATCH: tl.constexpr):
    """Offset of pixel k of a patch, pixels in timm's (C, p, p) order."""
    c = k // (PATCH * PATCH)
    r = (k // PATCH) % PATCH
    s = k % PATCH
    return c * stride_c + r * stride_h + s * stride_w


@triton.jit
def _patch_embed_fwd_kernel(
    img_ptr,
    w_ptr,  # [D, KDIM] contiguous (timm conv weight, flattened)
    b_ptr,
    pos_ptr,  # [N, D] contiguous
    ids_ptr,  # [B*L] patch of each token (PATCH_FROM_IDS)
    off_a_ptr,  # [B] first row of each image's tokens (HAS_OFF_A), else row = token
    slot_ptr,  # [B*L] slot of each token in the second view, -1 if absent (HAS_SLOT)
    off_b_ptr,  # [B] first row of each image's second view (HAS_SLOT)
    out_ptr,  # [num_rows, D] contiguous
    num_tokens,
    num_rows,
    num_patches,
    length,
    grid_w,
    dim,
    kdim,
    stride_b,
    stride_c,
    stride_h,
    stride_w,
    PATCH: tl.constexpr,
    PATCH_FROM_IDS: tl.constexpr,
    HAS_OFF_A: tl.constexpr,
    HAS_SLOT: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # feature blocks of one token tile are neighbours in launch order: its pixels stay in L2
    pid_d = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1).to(tl.int64)
    tok = pid_t * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    tok_mask = tok < num_tokens
    img = tok // length
    j = tok % length
    patch = _token_patch(ids_ptr, tok, tok_mask, length, PATCH_FROM_IDS)

    if HAS_OFF_A:
        base_a = tl.load(off_a_ptr + img, mask=tok_mask, other=-1).to(tl.int64)
        row_a = tl.where(base_a >= 0, base_a + j, -1)
    else:
        row_a = tok
    # out-of-range patches or rows (possible only on CUDA, where values are not checked to
    # avoid a host sync) are skipped rather than read or written out of bounds
    valid = tok_mask & (patch >= 0) & (patch < num_patches)
    row_a = tl.where(valid & (row_a < num_rows), row_a, -1)
    active = row_a >= 0
    if HAS_SLOT:
        slot = tl.load(slot_ptr + tok, mask=tok_mask, other=-1).to(tl.int64)
        base_b = tl.load(off_b_ptr + img, mask=tok_mask, other=-1).to(tl.int64)
        row_b = tl.where((slot >= 0) & (base_b >= 0), base_b + slot, -1)
        row_b = tl.where(valid & (row_b < num_rows), row_b, -1)
        active = active | (row_b >= 0)

    pix = _patch_pixel_offsets(img, patch, grid_w, stride_b, stride_h, stride_w, PATCH)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim

    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for k0 in range(0, kdim, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < kdim
        k_off = _k_offsets(k, stride_c, stride_h, stride_w, PATCH)
        x = tl.load(
            img_ptr + pix[:, None] + k_off[None, :],
            mask=active[:, None] & k_mask[None, :],
            other=0.0,
        )
        w_t = tl.load(
            w_ptr + d[None, :] * kdim + k[:, None],
            mask=k_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        if IEEE:
            acc = tl.dot(x, w_t, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w_t, acc)

    bias = tl.load(b_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    pos = tl.load(
        pos_ptr + patch[:, None] * dim + d[None, :],
        mask=active[:, None] & d_mask[None, :],
        other=0.0,
    ).to(tl.float32)
    y = (acc + bias[None, :] + pos).to(out_ptr.dtype.element_ty)
    tl.store(
        out_ptr + row_a[:, None] * dim + d[None, :], y, mask=(row_a >= 0)[:, None] & d_mask[None, :]
    )
    if HAS_SLOT:
        tl.store(
            out_ptr + row_b[:, None] * dim + d[None, :],
            y,
            mask=(row_b >= 0)[:, None] & d_mask[None, :],
        )


@triton.jit
def _patch_embed_bwd_dw_kernel(
    img_ptr,
    ids_ptr,  # [B*L] (PATCH_FROM_IDS)
    g_ptr,  # [B*L, D] contiguous token gradients
    dw_ptr,  # [SPLIT, D, KDIM] fp32 partials
    num_tokens,
    num_patches,
    length,
    tokens_per_split,
    grid_w,
    dim,
    kdim,
    stride_b,
    stride_c,
    stride_h,
    stride_w,
    PATCH: tl.constexpr,
    PATCH_FROM_IDS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_k = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2).to(tl.int64)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = k < kdim
    k_off = _k_offsets(k, stride_c, stride_h, stride_w, PATCH)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < dim

    start = pid_s * tokens_per_split
    end = tl.minimum(start + tokens_per_split, num_tokens)
    acc = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
    for t0 in range(start, end, BLOCK_T):
        tok = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        tok_mask = tok < end
        patch = _token_patch(ids_ptr, tok, tok_mask, length, PATCH_FROM_IDS)
        tok_mask = tok_mask & (patch >= 0) & (patch < num_patches)
        pix = _patch_pixel_offsets(
            tok // length, patch, grid_w, stride_b, stride_h, stride_w, PATCH
        )
        x_t = tl.load(
            img_ptr + k_off[:, None] + pix[None, :],
            mask=k_mask[:, None] & tok_mask[None, :],
            other=0.0,
        )
        g = tl.load(
            g_ptr + tok[:, None] * dim + d[None, :],
            mask=tok_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        if IEEE:
            acc = tl.dot(x_t, g, acc, input_precision="ieee")
        else:
            acc = tl.dot(x_t, g, acc)

    out = dw_ptr + pid_s * dim * kdim + d[None, :] * kdim + k[:, None]
    tl.store(out, acc, mask=k_mask[:, None] & d_mask[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _block(size: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(size)))


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter runs programs one after another
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _fwd_config(num_tokens: int, dim: int, kdim: int, device: torch.device) -> dict:
    block_d, block_k = _block(dim, 16, 64), _block(kdim, 16, 64)
    if device.type != "cuda":  # CPU tensors run under the interpreter: small tiles
        return dict(BLOCK_T=32, BLOCK_D=block_d, BLOCK_K=block_k)
    # 64-token tiles unless that leaves the GPU with fewer than two programs per SM
    d_blocks = triton.cdiv(dim, block_d)
    block_t = 64 if triton.cdiv(num_tokens, 64) * d_blocks >= 2 * _num_sms(device) else 32
    return dict(BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_K=block_k, num_warps=4, num_stages=3)


def _geometry(images: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, int, int]:
    dim, channels, patch, _ = weight.shape
    grid_w = images.shape[3] // patch
    return dim, channels * patch * patch, patch, grid_w


def patch_embed_fwd(
    images: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pos_embed: torch.Tensor,
    out: torch.Tensor,
    length: int,
    ids: torch.Tensor | None = None,
    off_a: torch.Tensor | None = None,
    slot: torch.Tensor | None = None,
    off_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """Embed the [B, length] token grid (patch j, or ids[b, j]) into the rows of `out` [R, D]:
    row b*length + j (off_a None) or off_a[b] + j, plus off_b[b] + slot[b, j] when given."""
    dim, kdim, patch, grid_w = _geometry(images, weight)
    num_tokens = images.shape[0] * length
    if num_tokens == 0 or out.numel() == 0:
        return out
    weight = weight.reshape(dim, kdim).contiguous()
    pos_embed = pos_embed.contiguous()
    ids = ids.reshape(-1).contiguous() if ids is not None else None
    slot = slot.reshape(-1).contiguous() if slot is not None else None
    config = _fwd_config(num_tokens, dim, kdim, images.device)
    grid = (triton.cdiv(dim, config["BLOCK_D"]), triton.cdiv(num_tokens, config["BLOCK_T"]))
    dummy = out  # never read: the matching constexpr flag is off
    _patch_embed_fwd_kernel[grid](
        images,
        weight,
        bias.contiguous(),
        pos_embed,
        ids if ids is not None else dummy,
        off_a if off_a is not None else dummy,
        slot if slot is not None else dummy,
        off_b if off_b is not None else dummy,
        out,
        num_tokens,
        out.shape[0],
        pos_embed.shape[0],
        length,
        grid_w,
        dim,
        kdim,
        *images.stride(),
        PATCH=patch,
        PATCH_FROM_IDS=ids is not None,
        HAS_OFF_A=off_a is not None,
        HAS_SLOT=slot is not None,
        IEEE=images.dtype == torch.float32,
        **config,
    )
    return out


def masked_patch_embed_fwd(
    images: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pos_embed: torch.Tensor,
    ids_keep: torch.Tensor | None,
) -> torch.Tensor:
    """[B, K, D] tokens of the kept patches (all N when ids_keep is None)."""
    batch = images.shape[0]
    length = pos_embed.shape[0] if ids_keep is None else ids_keep.shape[1]
    out = images.new_empty(batch, length, weight.shape[0])
    patch_embed_fwd(images, weight, bias, pos_embed, out.view(-1, out.shape[-1]), length, ids_keep)
    return out


def _num_splits(num_tokens: int, tiles: int, block_t: int, device: torch.device) -> int:
    """Token chunks for dW: enough programs to fill the GPU, each chunk >= 4 token tiles."""
    if device.type != "cuda":  # the interpreter: a few chunks, so tests cover the split path
        return max(1, min(3, triton.cdiv(num_tokens, 2 * block_t)))
    wanted = triton.cdiv(2 * _num_sms(device), tiles)
    return max(1, min(wanted, triton.cdiv(num_tokens, 4 * block_t)))


def patch_embed_bwd_weight(
    grad_tokens: torch.Tensor, images: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor | None
) -> torch.Tensor:
    """dW [D, C, p, p] = X_sel^T @ G with X_sel read from the images, fp32 accumulation."""
    dim, kdim, patch, grid_w = _geometry(images, weight)
    batch, length, _ = grad_tokens.shape
    num_tokens = batch * length
    if num_tokens == 0:
        return weight.new_zeros(weight.shape)
    config = dict(BLOCK_T=32, BLOCK_D=_block(dim, 16, 64), BLOCK_K=_block(kdim, 16, 64))
    if images.is_cuda:
        config.update(BLOCK_T=64, num_warps=4, num_stages=3)
    tiles = triton.cdiv(kdim, config["BLOCK_K"]) * triton.cdiv(dim, config["BLOCK_D"])
    splits = _num_splits(num_tokens, tiles, config["BLOCK_T"], images.device)
    per_split = triton.cdiv(triton.cdiv(num_tokens, splits), config["BLOCK_T"]) * config["BLOCK_T"]
    splits = triton.cdiv(num_tokens, per_split)
    partial = torch.empty(splits, dim, kdim, dtype=torch.float32, device=images.device)
    grid = (triton.cdiv(kdim, config["BLOCK_K"]), triton.cdiv(dim, config["BLOCK_D"]), splits)
    _patch_embed_bwd_dw_kernel[grid](
        images,
        ids.reshape(-1).contiguous() if ids is not None else grad_tokens,
        grad_tokens,
        partial,
        num_tokens,
        (images.shape[2] // patch) * grid_w,
        length,
        per_split,
        grid_w,
        dim,
        kdim,
        *images.stride(),
        PATCH=patch,
        PATCH_FROM_IDS=ids is not None,
        IEEE=images.dtype == torch.float32,
        **config,
    )
    return partial.sum(0).to(weight.dtype).view(weight.shape)


def patch_embed_bwd(
    grad_tokens: torch.Tensor, images: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_tokens [B, L, D] (contiguous) -> (dW [D, C, p, p], db [D], dpos [N, D])."""
    dim, _, patch, grid_w = _geometry(images, weight)
    num_patches = (images.shape[2] // patch) * grid_w
    grad_weight = patch_embed_bwd_weight(grad_tokens, images, weight, ids)
    if ids is None:  # every image holds all N patches in order
        grad_pos = grad_tokens.sum(0, dtype=torch.float32)
    else:
        grad = grad_tokens.reshape(-1, dim).float()
        grad_pos = torch.zeros(num_patches, dim, dtype=torch.float32, device=grad.device)
        grad_pos.index_add_(0, ids.reshape(-1).long(), grad)
    # every token adds to exactly one pos row, so the bias gradient is their sum: no pass over G
    grad_bias = grad_pos.sum(0)
    return grad_weight, grad_bias.to(weight.dtype), grad_pos.to(weight.dtype)
