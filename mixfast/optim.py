"""AdamW parameter groups (no decay on norms/biases/tokens, layer-wise lr decay) and the
per-stage warmup + cosine learning rate, as MAE uses them."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

# Parameters that MAE / timm keep out of weight decay besides every 1-D tensor.
NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "reg_token", "dist_token")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = ("patch_embed", "pos_embed", "cls_token", "reg_token", "dist_token")


def encoder_depth(model: nn.Module) -> int:
    """Number of encoder blocks: `model.encoder.blocks` (or `model.blocks`)."""
    encoder = getattr(model, "encoder", model)
    blocks = getattr(encoder, "blocks", None)
    return len(blocks) if blocks is not None else 0


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for encoder block i, depth + 1 for the rest (norm, heads,
    decoder): the BEiT / MAE assignment. Decoder blocks (`decoder_blocks.N`) are not encoder
    blocks, so they land in the last group."""
    if name.startswith("decoder") or ".decoder" in name:
        return depth + 1
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    leaf = name.split(".")
    if any(part in _EMBED for part in leaf):
        return 0
    return depth + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups; each carries `lr_scale` = layer_decay ** (depth + 1 - layer_id)."""
    depth = encoder_depth(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or any(part in NO_DECAY_NAMES for part in name.split("."))
        layer = layer_id(name, depth) if layer_decay != 1.0 else depth + 1
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (depth + 1 - layer),
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def make_adamw(
    model: nn.Module,
    *,
    weight_decay: float,
    layer_decay: float,
    betas: tuple[float, float],
    fused: bool,
) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, layer_decay)
    for group in groups:
        group.pop("names")
    # lr is set before every step by set_lr; fused AdamW needs every param on one CUDA device.
    return torch.optim.AdamW(groups, lr=0.0, betas=betas, fused=fused or None)


def warmup_cosine(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Linear warmup to `peak` over `warmup` steps, then half-cosine down to `floor`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(total - warmup, 1)
    t = min((step - warmup) / span, 1.0)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
