"""The packed layout of a mix step: sequences of several lengths back to back in one token
buffer [T, D] with `cu_seqlens` (flash-attention's varlen convention), and timm's Block run on it.

    PackedLayout(shapes=[(b_i, L_i)], cu_seqlens int32 [S + 1], max_seqlen, varlen)
    _block_packed(block, x [T, D], layout) -> [T, D]     timm Block.forward, same submodules

Each sequence attends only to itself (`mixfast.ops.varlen_attention`, or one SDPA per group of
equal lengths); DropPath draws once per sequence, as timm draws once per sample.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import Block
from torch import nn

from mixfast import ops
from mixfast.ops import MaskingResult, varlen_attention_qkvpacked

Labels = torch.Tensor | Sequence[torch.Tensor]
Images = torch.Tensor | Sequence[torch.Tensor] | None


class _MaskSpec(NamedTuple):
    mask_ratio: float
    seed: int | None
    offset: int
    masking: MaskingResult | None


class _SLGroup(NamedTuple):
    """SL images that one or more tasks label: tasks[i] is labelled by labels[i]."""

    images: torch.Tensor
    tasks: list[int]
    labels: list[torch.Tensor]


def _slice_masking(masking: MaskingResult, rows: int) -> MaskingResult:
    return MaskingResult(*(t[:rows] for t in masking))


def _cu_seqlens(shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """int32 [S + 1] start offsets of groups of `b` sequences of length `length`, back to back."""
    return _packed_index(tuple(shapes), device, torch.int32)


def _packed_index(
    shapes: tuple[tuple[int, int], ...], device: torch.device, dtype: torch.dtype, shift: int = 0
) -> torch.Tensor:
    """cu_seqlens of `shapes` plus `shift`, as `dtype` on `device`.

    The layout repeats every step, so eager calls share one cached tensor (no launch after the
    first step). Traced (torch.compile) and inference-mode calls build their own: a compiled
    graph keeps it as a constant, and an inference tensor could not be saved for backward by a
    later training step. Built on the device, never copied from the host: a pageable H2D copy
    would synchronise the stream (a new layout can appear mid-epoch, e.g. a short last batch).
    """
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
        return _build_packed_index(shapes, device, dtype, shift)
    return _cached_packed_index(shapes, device, dtype, shift)


def _build_packed_index(
    shapes: tuple[tuple[int, int], ...], device: torch.device, dtype: torch.dtype, shift: int
) -> torch.Tensor:
    pieces, total = [torch.full((1,), shift, dtype=dtype, device=device)], shift
    for b, length in shapes:
        pieces.append(torch.arange(1, b + 1, dtype=dtype, device=device) * length + total)
        total += b * length
    return torch.cat(pieces)


_cached_packed_index = functools.lru_cache(maxsize=32)(_build_packed_index)


class PackedLayout(NamedTuple):
    """Where the sequences of a packed buffer [T, D] are: groups of b sequences of one length."""

    shapes: list[tuple[int, int]]  # (b, length) per group, back to back
    cu_seqlens: torch.Tensor  # int32 [S + 1]
    max_seqlen: int
    varlen: bool  # attention by ops.varlen_attention (else SDPA per group)


def _drop_path_packed(
    branch: torch.Tensor, module: nn.Module, shapes: list[tuple[int, int]]
) -> torch.Tensor:
    """timm's DropPath (one draw per sample) on a packed [T, D] branch: one draw per sequence."""
    if not isinstance(module, DropPath) or module.drop_prob == 0.0 or not module.training:
        return branch
    keep_prob = 1.0 - module.drop_prob
    keep = [
        branch.new_empty(b, 1, 1).bernoulli_(keep_prob).expand(b, length, 1).reshape(-1, 1)
        for b, length in shapes
    ]
    keep = torch.cat(keep)
    if module.scale_by_keep:
        keep = keep / keep_prob
    return branch * keep


def _attention_packed(attn: nn.Module, x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """timm Attention on a packed [T, D] buffer; each sequence attends only to itself."""
    tokens = x.shape[0]
    qkv = attn.qkv(x).view(tokens, 3, attn.num_heads, attn.head_dim)
    plain_qk = isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)
    if layout.varlen and plain_qk:  # the backward fills one dqkv buffer, no stack
        out = varlen_attention_qkvpacked(
            qkv, layout.cu_seqlens, layout.max_seqlen, attn.scale, seq_groups=layout.shapes
        )
    else:
        q, k, v = qkv.unbind(1)  # [T, H, Dh] each
        q, k = attn.q_norm(q).to(v.dtype), attn.k_norm(k).to(v.dtype)
        if layout.varlen:
            out = ops.varlen_attention(
                q, k, v, layout.cu_seqlens, layout.max_seqlen, attn.scale, seq_groups=layout.shapes
            )
        else:
            out = _grouped_attention(q, k, v, layout.shapes, attn.scale)
    out = out.reshape(tokens, -1)
    norm = getattr(attn, "norm", None)  # scale_attn_norm (newer timm)
    if norm is not None:
        out = norm(out)
    gate = getattr(attn, "gate", None)  # optional sigmoid gate (recent timm)
    if gate is not None:
        out = out * gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


def _grouped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    shapes: list[tuple[int, int]],
    scale: float,
) -> torch.Tensor:
    """Block-diagonal attention as one SDPA per group of equal-length sequences: [T, H, Dh]."""
    sizes = [b * length for b, length in shapes]
    outs = []
    for (b, length), qg, kg, vg in zip(shapes, q.split(sizes), k.split(sizes), v.split(sizes)):
        # [b * L, H, Dh] -> [b, H, L, Dh]
        qg, kg, vg = (t.view(b, length, *t.shape[1:]).transpose(1, 2) for t in (qg, kg, vg))
        out = F.scaled_dot_product_attention(qg, kg, vg, scale=scale)
        outs.append(out.transpose(1, 2).reshape(b * length, *q.shape[1:]))
    return torch.cat(outs)


def _block_packed(block: Block, x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """timm Block.forward on a packed [T, D] buffer (same submodules, same math)."""
    branch = block.ls1(_attention_packed(block.attn, block.norm1(x), layout))
    x = x + _drop_path_packed(branch, block.drop_path1, layout.shapes)
    branch = block.ls2(block.mlp(block.norm2(x)))
    return x + _drop_path_packed(branch, block.drop_path2, layout.shapes)


def packed_forward(block: Block) -> Callable[[torch.Tensor, PackedLayout], torch.Tensor]:
    """How the packed path calls `block`: its own `forward_packed` when it has one (FSDP2 sets
    it so that its all-gather hooks fire: mixfast/train/sharding.py), else `_block_packed`."""
    own = getattr(block, "forward_packed", None)
    return own if own is not None else functools.partial(_block_packed, block)


def sl_groups(num_tasks: int, sl_images: Images, labels: Labels | None) -> list[_SLGroup]:
    """Normalise (images, labels) into groups of distinct image tensors with their tasks."""
    if sl_images is None or labels is None:
        if sl_images is not None or labels is not None:
            raise ValueError("sl_images and labels must both be given or both be None")
        return []
    if isinstance(labels, torch.Tensor):
        if not isinstance(sl_images, torch.Tensor):
            raise ValueError("labels is one tensor (task 0), so sl_images must be one tensor")
        pairs = [(sl_images, 0, labels)]
    else:
        if len(labels) != num_tasks:
            raise ValueError(
                f"labels must hold one tensor per task ({num_tasks}), got {len(labels)}"
            )
        images = [sl_images] * len(labels) if isinstance(sl_images, torch.Tensor) else sl_images
        if len(images) != len(labels):
            raise ValueError(
                f"sl_images must be one tensor or one per task ({len(labels)}), got {len(images)}"
            )
        pairs = [(img, k, lab) for k, (img, lab) in enumerate(zip(images, labels))]
    groups: list[_SLGroup] = []
    for img, task, lab in pairs:
        if img.shape[0] == 0:
            continue
        group = next((g for g in groups if g.images is img), None)
        if group is None:
            group = _SLGroup(img, [], [])
            groups.append(group)
        group.tasks.append(task)
        group.labels.append(lab)
    return groups


def task_weights_of(
    num_tasks: int, task_weights: Sequence[float] | None, labels: Labels | None
) -> dict[int, float]:
    if labels is None:  # no SL sub-batch: weights do not matter
        return {}
    tasks = 1 if isinstance(labels, torch.Tensor) else num_tasks
    if task_weights is None:
        return {k: 1.0 / tasks for k in range(tasks)}
    if len(task_weights) != tasks:
        raise ValueError(f"task_weights must have {tasks} entries, got {len(task_weights)}")
    return dict(enumerate(task_weights))


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of logits [B, K]: on class ids [B] (label-smoothed as
    F.cross_entropy), or on soft targets [B, K] (Mixup's, already smoothed) as timm's
    SoftTargetCrossEntropy."""
    if target.is_floating_point():
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()(logits.float(), target)
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
