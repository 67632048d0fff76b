"""timm VisionTransformer helpers: build one from a name, adopt a given one, check that the
packed encoder supports it, and MAE's fixed sin-cos position embedding."""

from __future__ import annotations

import timm
import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn


def sincos_pos_embed(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding [1 + gh*gw, dim] with a zero cls row (as in MAE)."""
    if dim % 4:
        raise ValueError(
            f"decoder_dim must be a multiple of 4 for the sin-cos embedding, got {dim}"
        )
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    # MAE order: first half encodes the column (w), second half the row (h)
    angles = [pos.reshape(-1, 1) * omega for pos in (xs, ys)]
    emb = torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)
    return torch.cat([emb.new_zeros(1, dim), emb]).float()


def check_vit(vit: nn.Module) -> None:
    """The packed encoder path supports plain timm ViTs: cls token, learned pos embed, Blocks."""
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"name_or_vit must be a timm VisionTransformer, got {type(vit).__name__}")
    blocks = list(vit.blocks)
    unsupported = {
        "class_token=True": vit.cls_token is None,
        "reg_tokens=0": vit.reg_token is not None,
        "no_embed_class=False": vit.no_embed_class,
        "dynamic_img_size=False": vit.dynamic_img_size,
        "pos_embed='learn'": vit.pos_embed is None,
        "global_pool='token'": vit.global_pool != "token"
        or getattr(vit, "attn_pool", None) is not None,
        "patch_drop_rate=0": not isinstance(vit.patch_drop, nn.Identity),
        "no embed_norm_layer": not isinstance(vit.patch_embed.norm, nn.Identity),
        "num_classes >= 1": not isinstance(vit.head, nn.Linear),
        "block_fn=Block": any(type(block) is not Block for block in blocks),
        # the packed varlen attention has no dropout
        "attn_drop_rate=0": any(
            block.attn.attn_drop.p > 0 for block in blocks if type(block) is Block
        ),
    }
    bad = [name for name, failed in unsupported.items() if failed]
    if bad:
        raise ValueError(f"the mixfast encoder needs a timm ViT with {', '.join(bad)}")
    patch, img = vit.patch_embed.patch_size, vit.patch_embed.img_size
    if patch[0] != patch[1]:
        raise ValueError(f"patch_size must be square, got {patch}")
    if img[0] % patch[0] or img[1] % patch[1]:
        raise ValueError(f"img_size {tuple(img)} must be divisible by patch_size {patch[0]}")


def create_vit(name, img_size, patch_size, in_chans, num_classes, overrides) -> VisionTransformer:
    if name not in timm.list_models("vit_*"):
        raise ValueError(f"name_or_vit {name!r} is not a timm ViT name (timm.list_models('vit_*'))")
    kwargs = dict(dynamic_img_size=False, class_token=True, global_pool="token")
    given = dict(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes
    )
    kwargs.update({k: v for k, v in given.items() if v is not None}, **overrides)
    return timm.create_model(name, pretrained=False, **kwargs)


def adopt_vit(vit, img_size, patch_size, in_chans, num_classes, overrides) -> VisionTransformer:
    check_vit(vit)
    embed = vit.patch_embed
    have = dict(
        img_size=tuple(embed.img_size),
        patch_size=embed.patch_size[0],
        in_chans=embed.proj.in_channels,
    )
    wanted = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans)
    for key, value in wanted.items():
        if value is None:
            continue
        value = tuple(value) if key == "img_size" and not isinstance(value, int) else value
        value = (value, value) if key == "img_size" and isinstance(value, int) else value
        if value != have[key]:
            raise ValueError(
                f"{key}={value} differs from the given ViT's {have[key]}; pass a timm name to "
                f"build a new one"
            )
    if overrides:
        raise ValueError(f"timm overrides {sorted(overrides)} need a timm name, not an instance")
    if num_classes is not None and num_classes != vit.num_classes:
        vit.reset_classifier(num_classes)
    return vit
