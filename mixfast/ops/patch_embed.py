"""Masked patch embedding as torch.library custom ops (namespace `mixfast`).

`masked_patch_embed(images, weight, bias, pos_embed, ids_keep=None) -> [B, K, D]` is timm's
`PatchEmbed` (a stride-p conv), then the gather of the kept patches `ids_keep` [B, K], then the
position-embedding add, in one op.

`packed_patch_embed(...) -> [total_rows, D]` writes the patch tokens of one batch of images into
a packed token buffer, the layout of a mix step: the full view (all N patches) and/or the kept
view (the K patches of `ids_keep`) of every image, each at its own row offset. Each patch is
embedded once even when it lands in both views (the kernel writes the row twice). Rows it does
not write (the cls rows) are zero; the model fills them.

Both ops are opaque `custom_op`s with fake impls and registered autograd (grads for weight, bias
and pos_embed; images get none), so `torch.compile(fullgraph=True)` traces around them on CPU,
under the Triton interpreter and on CUDA. Their bodies pick the Triton kernels
(kernels/patch_embed.py) or the plain-PyTorch path (mixfast/ops/reference.py; see mixfast/ops/_backend.py). Under autocast the
floating inputs are cast to the autocast dtype (weights stay fp32 for the optimizer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixfast.ops._backend import use_triton
from mixfast.ops.reference import masked_patch_embed_reference, patch_embed_bwd_reference

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int32, torch.int64)


# ----------------------------------------------------------------------------------------------
# Input checks: shapes and dtypes only (no device sync); index values are checked on CPU.
# ----------------------------------------------------------------------------------------------


def _check_index(name: str, index: Tensor, shape: tuple, device: torch.device) -> None:
    if index.dtype not in INDEX_DTYPES:
        raise ValueError(f"{name} must be int32 or int64, got {index.dtype}")
    if tuple(index.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(index.shape)}")
    if index.device != device:
        raise ValueError(f"{name} is on {index.device}, images on {device}")


def _check_index_values(name: str, index: Tensor | None, low: int, high: int) -> None:
    """Values in [low, high): checked on CPU only, where it costs no device sync."""
    if index is None or index.device.type != "cpu" or index.numel() == 0:
        return
    found_low, found_high = int(index.min()), int(index.max())
    if found_low < low or found_high >= high:
        raise ValueError(
            f"{name} values must be in [{low}, {high}), got [{found_low}, {found_high}]"
        )


def _check_patch_inputs(
    images: Tensor, weight: Tensor, bias: Tensor, pos_embed: Tensor, ids_keep: Tensor | None
) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {list(images.shape)}")
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(
            f"weight must be [D, C, p, p] (timm conv layout), got {list(weight.shape)}"
        )
    batch, channels, height, width = images.shape
    dim, patch = weight.shape[0], weight.shape[-1]
    if weight.shape[1] != channels:
        raise ValueError(f"weight has {weight.shape[1]} input channels, images have {channels}")
    if height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} is not divisible by the patch size {patch}")
    num_patches = (height // patch) * (width // patch)
    if tuple(bias.shape) != (dim,):
        raise ValueError(f"bias must have shape [{dim}], got {list(bias.shape)}")
    if tuple(pos_embed.shape) != (num_patches, dim):
        raise ValueError(
            f"pos_embed must be [N, D] = [{num_patches}, {dim}] (no cls row), "
            f"got {list(pos_embed.shape)}"
        )
    for name, tensor in (
        ("images", images),
        ("weight", weight),
        ("bias", bias),
        ("pos_embed", pos_embed),
    ):
        if tensor.dtype not in DTYPES:
            raise ValueError(f"{name} dtype must be one of {DTYPES}, got {tensor.dtype}")
        if tensor.dtype != images.dtype:
            raise ValueError(
                f"{name} dtype {tensor.dtype} differs from images dtype {images.dtype}; "
                "cast them to one dtype (autocast does this for you)"
            )
        if tensor.device != images.device:
            raise ValueError(f"{name} is on {tensor.device}, images on {images.device}")
    if ids_keep is not None:
        if ids_keep.dim() != 2 or ids_keep.shape[0] != batch:
            raise ValueError(f"ids_keep must be [B, K] with B={batch}, got {list(ids_keep.shape)}")
        _check_index("ids_keep", ids_keep, tuple(ids_keep.shape), images.device)


# ----------------------------------------------------------------------------------------------
# The ops
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("mixfast::masked_patch_embed", mutates_args=())
def _masked_patch_embed_op(
    images: Tensor, weight: Tensor, bias: Tensor, pos_embed: Tensor, ids_keep: Tensor | None
) -> Tensor:
    _check_patch_inputs(images, weight, bias, pos_embed, ids_keep)
    _check_index_values("ids_keep", ids_keep, 0, pos_embed.shape[0])
    if use_triton(images):
        from mixfast.kernels import patch_embed as kernels

        return kernels.masked_patch_embed_fwd(images, weight, bias, pos_embed, ids_keep)
    return masked_patch_embed_reference(images, weight, bias, pos_embed, ids_keep).contiguous()


@_masked_patch_embed_op.register_fake
def _(images, weight, bias, pos_embed, ids_keep):
    _check_patch_inputs(images, weight, bias, pos_embed, ids_keep)
    length = pos_embed.shape[0] if ids_keep is None else ids_keep.shape[1]
    return images.new_empty(images.shape[0], length, weight.shape[0])


@torch.library.custom_op("mixfast::patch_embed_backward", mutates_args=())
def _patch_embed_backward_op(
    grad_tokens: Tensor, images: Tensor, weight: Tensor, patch_ids: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """grad_tokens [B, L, D] of tokens whose patches are `patch_ids` [B, L] (None: all N in
    order) -> (grad_weight [D, C, p, p], grad_bias [D], grad_pos_embed [N, D])."""
    grad_tokens = grad_tokens.contiguous()  # may arrive as an expanded view (stride 0)
    if use_triton(images):
        from mixfast.kernels import patch_embed as kernels

        return kernels.patch_embed_bwd(grad_tokens, images, weight, patch_ids)
    return patch_embed_bwd_reference(grad_tokens, images, weight, patch_ids)


@_patch_embed_backward_op.register_fake
def _(grad_tokens, images, weight, patch_ids):
    patch = weight.shape[-1]
    num_patches = (images.shape[2] // patch) * (images.shape[3] // patch)
    dim = weight.shape[0]
    return (
        weight.new_empty(weight.shape),
        weight.new_empty(dim),
        weight.new_empty(num_patches, dim),
    )


def _masked_setup_context(ctx, inputs, output) -> None:
    images, weight, _, _, ids_keep = inputs
    ctx.save_for_backward(images, weight, ids_keep)


def _masked_backward(ctx, grad_out):
    images, weight, ids_keep = ctx.saved_tensors
    grad_weight, grad_bias, grad_pos = _patch_embed_backward_op(grad_out, images, weight, ids_keep)
    return None, grad_weight, grad_bias, grad_pos, None


_masked_patch_embed_op.register_autograd(_masked_backward, setup_context=_masked_setup_context)


def masked_patch_embed(
    images: Tensor,
    weight: Tensor,
    bias: Tensor,
    pos_embed: Tensor,
    ids_keep: Tensor | None = None,
) -> Tensor:
    """Patch tokens of the kept patches: images [B, C, H, W], weight [D, C, p, p], bias [D],
    pos_embed [N, D] (no cls row), ids_keep [B, K] int (None: all N patches) -> [B, K, D].

    Same numbers as timm `PatchEmbed` + `torch.gather(tokens, 1, ids_keep)` + pos_embed add.
    """
    images, weight, bias, pos_embed = _autocast(images, weight, bias, pos_embed)
    return torch.ops.mixfast.masked_patch_embed(images, weight, bias, pos_embed, ids_keep)


# ----------------------------------------------------------------------------------------------
# Packed variant: both views of one batch of images in one token buffer
# ----------------------------------------------------------------------------------------------


def _check_packed_inputs(
    images: Tensor,
    pos_embed: Tensor,
    ids_keep: Tensor | None,
    full_offsets: Tensor | None,
    keep_offsets: Tensor | None,
    total_rows: int,
    *,
    values: bool,
) -> None:
    """The packed op's view arguments; with `values`, their index values too (the op's body
    reads them on CPU; the fake impl, whose tensors hold no data, must not)."""
    batch = images.shape[0]
    if full_offsets is None and keep_offsets is None:
        raise ValueError("give full_offsets, keep_offsets or both (the views to write)")
    if keep_offsets is not None and ids_keep is None:
        raise ValueError("keep_offsets needs ids_keep (the kept patches of each image)")
    if total_rows < 0:
        raise ValueError(f"total_rows must be >= 0, got {total_rows}")
    for name, offsets in (("full_offsets", full_offsets), ("keep_offsets", keep_offsets)):
        if offsets is not None:
            _check_index(name, offsets, (batch,), images.device)
    if not values:
        return
    _check_index_values("ids_keep", ids_keep, 0, pos_embed.shape[0])
    if full_offsets is not None:
        _check_index_values("full_offsets", full_offsets, -1, total_rows - pos_embed.shape[0] + 1)
    if keep_offsets is not None:
        _check_index_values("keep_offsets", keep_offsets, -1, total_rows - ids_keep.shape[1] + 1)


def _view_rows(offsets: Tensor, length: int) -> Tensor:
    """[B, length] row of each token of a view: offsets[b] + j, or -1 where offsets[b] < 0."""
    offsets = offsets.long()[:, None]
    rows = offsets + torch.arange(length, device=offsets.device)
    return torch.where(offsets >= 0, rows, -1)


def _keep_slots(ids_keep: Tensor, num_patches: int) -> Tensor:
    """[B, N] position of each patch in ids_keep, -1 for the masked ones."""
    batch, keep = ids_keep.shape
    slots = torch.full((batch, num_patches), -1, dtype=torch.long, device=ids_keep.device)
    position = torch.arange(keep, device=ids_keep.device).expand(batch, keep)
    return slots.scatter(1, ids_keep.long(), position)


def _packed_reference(
    images, weight, bias, pos_embed, ids_keep, full_offsets, keep_offsets, total_rows
):
    tokens = masked_patch_embed_reference(images, weight, bias, pos_embed)  # [B, N, D]
    out = tokens.new_zeros(total_rows, tokens.shape[-1])
    views = []
    if full_offsets is not None:
        views.append((tokens, full_offsets))
    if keep_offsets is not None:
        kept = torch.gather(tokens, 1, ids_keep.long()[..., None].expand(-1, -1, tokens.shape[-1]))
        views.append((kept, keep_offsets))
    for view, offsets in views:
        rows = _view_rows(offsets, view.shape[1])
        written = rows >= 0
        out[rows[written]] = view[written]
    return out


def _packed_triton(
    images, weight, bias, pos_embed, ids_keep, full_offsets, keep_offsets, total_rows
):
    from mixfast.kernels import patch_embed as kernels

    out = images.new_zeros(total_rows, weight.shape[0])
    if full_offsets is None:  # kept view only: embed just the K kept patches
        length, views = ids_keep.shape[1], {"ids": ids_keep, "off_a": keep_offsets}
    else:  # all N patches, each embedded once; a kept one is also stored at its kept-view row
        length = pos_embed.shape[0]
        slot = None if keep_offsets is None else _keep_slots(ids_keep, length)
        views = {"off_a": full_offsets, "slot": slot, "off_b": keep_offsets}
    return kernels.patch_embed_fwd(images, weight, bias, pos_embed, out, length, **views)


@torch.library.custom_op("mixfast::packed_patch_embed", mutates_args=())
def _packed_patch_embed_op(
    images: Tensor,
    weight: Tensor,
    bias: Tensor,
    pos_embed: Tensor,
    ids_keep: Tensor | None,
    full_offsets: Tensor | None,
    keep_offsets: Tensor | None,
    total_rows: int,
) -> Tensor:
    args = (images, weight, bias, pos_embed, ids_keep, full_offsets, keep_offsets, total_rows)
    _check_patch_inputs(images, weight, bias, pos_embed, ids_keep)
    _check_packed_inputs(
        images, pos_embed, ids_keep, full_offsets, keep_offsets, total_rows, values=True
    )
    if use_triton(images):
        return _packed_triton(*args)
    return _packed_reference(*args)


@_packed_patch_embed_op.register_fake
def _(images, weight, bias, pos_embed, ids_keep, full_offsets, keep_offsets, total_rows):
    _check_patch_inputs(images, weight, bias, pos_embed, ids_keep)
    _check_packed_inputs(
        images, pos_embed, ids_keep, full_offsets, keep_offsets, total_rows, values=False
    )
    return images.new_empty(total_rows, weight.shape[0])


def _packed_setup_context(ctx, inputs, output) -> None:
    images, weight, _, pos_embed, ids_keep, full_offsets, keep_offsets, _ = inputs
    ctx.num_patches = pos_embed.shape[0]
    ctx.save_for_backward(images, weight, ids_keep, full_offsets, keep_offsets)


def _pad_row(grad: Tensor) -> Tensor:
    """grad [R, D] with a zero row appended: indexing it with -1 reads zeros."""
    return torch.cat([grad, grad.new_zeros(1, grad.shape[1])])


def _packed_backward(ctx, grad_out):
    images, weight, ids_keep, full_offsets, keep_offsets = ctx.saved_tensors
    padded = _pad_row(grad_out)  # once for both views
    if full_offsets is None:  # tokens are the kept patches, as in the forward
        patch_ids = ids_keep
        grad_tokens = padded[_view_rows(keep_offsets, ids_keep.shape[1])]
    else:  # tokens are all N patches; a kept patch also collects its kept-view row
        patch_ids = None
        grad_tokens = padded[_view_rows(full_offsets, ctx.num_patches)]
        if keep_offsets is not None:  # plus the grads of its kept-view rows
            kept = padded[_view_rows(keep_offsets, ids_keep.shape[1])]  # [B, K, D]
            index = ids_keep.long()[..., None].expand_as(kept)
            grad_tokens = grad_tokens.scatter_add(1, index, kept)
    grad_weight, grad_bias, grad_pos = _patch_embed_backward_op(
        grad_tokens, images, weight, patch_ids
    )
    return None, grad_weight, grad_bias, grad_pos, None, None, None, None


_packed_patch_embed_op.register_autograd(_packed_backward, setup_context=_packed_setup_context)


def packed_patch_embed(
    images: Tensor,
    weight: Tensor,
    bias: Tensor,
    pos_embed: Tensor,
    total_rows: int,
    *,
    ids_keep: Tensor | None = None,
    full_offsets: Tensor | None = None,
    keep_offsets: Tensor | None = None,
) -> Tensor:
    """Patch tokens of one image batch written into a packed token buffer [total_rows, D].

    images [B, C, H, W], weight [D, C, p, p], bias [D], pos_embed [N, D] (no cls row) as in
    `masked_patch_embed`. Views, each optional (at least one):
      - full view: patch n of image b goes to row `full_offsets[b] + n` (full_offsets [B] int);
      - kept view: kept patch j (= ids_keep[b, j]) goes to row `keep_offsets[b] + j`
        (keep_offsets [B] int, ids_keep [B, K] int).
    An offset of -1 skips that view for that image. Rows nobody writes (the cls rows, padding)
    are zero: the model writes its cls tokens there (e.g. `x.index_copy(0, cls_rows, cls)`).
    Overlapping views are not allowed (not checked on CUDA).

    A mix step with SL = full view and SSL = kept view of the same B images, packed as
    [cls, N patches] x B then [cls, K kept] x B:
        full_offsets = arange(B) * (N + 1) + 1
        keep_offsets = B * (N + 1) + arange(B) * (K + 1) + 1
        total_rows   = B * (N + 1) + B * (K + 1)
    With both views the kernel embeds each patch once (one GEMM over the N patches) and stores a
    kept patch's row twice; with the kept view only it embeds just the K kept patches. When the
    SL and SSL images differ, call it once per image batch (full_offsets only, keep_offsets
    only), each with the row offsets of its own part, and torch.cat the two buffers.
    """
    images, weight, bias, pos_embed = _autocast(images, weight, bias, pos_embed)
    return torch.ops.mixfast.packed_patch_embed(
        images, weight, bias, pos_embed, ids_keep, full_offsets, keep_offsets, total_rows
    )


def _autocast(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Under autocast, cast the floating inputs to its dtype, as F.conv2d would be."""
    device_type = tensors[0].device.type
    # meta tensors (shape-only runs) have no autocast state
    if not torch.amp.is_autocast_available(device_type):
        return tensors
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) for t in tensors)
