"""The MAE decoder and its pixel loss, as in facebookresearch/mae `models_mae.py`.

    forward_decoder(latent [B, 1 + K, D], ids_restore [B, N])        -> pred [B, N, p*p*C]
    forward_loss(images [B, C, H, W], pred [B, N, p*p*C], mask [B, N]) -> MSE on masked patches

`MAEDecoder` is a mixin of `MixMAE`, not a submodule: its layers are attributes of the model
(`decoder_embed`, `mask_token`, `decoder_blocks`, `decoder_norm`, `decoder_pred`), so the
state_dict keys are MAE's own and MAE-format checkpoints map onto them name for name.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from mixfast.model.vit import sincos_pos_embed
from mixfast.ops.reference import patchify_images


def check_decoder(dim: int, depth: int, heads: int) -> None:
    if dim < 1 or depth < 1 or heads < 1:
        raise ValueError(
            f"decoder_dim, decoder_depth and decoder_heads must be >= 1, got {dim}, {depth}, {heads}"
        )
    if dim % heads:
        raise ValueError(f"decoder_dim ({dim}) must be divisible by decoder_heads ({heads})")


class MAEDecoder:
    """Mixin: the MAE decoder layers on the model itself, and the reconstruction loss.

    The model provides `num_patches`, `grid_size` (gh, gw), `patch_size` (p), `in_chans` (C)
    and `norm_pix_loss`. Dd below is `decoder_dim`.
    """

    decoder_embed: nn.Linear  # D -> Dd
    mask_token: nn.Parameter  # [1, 1, Dd]
    decoder_pos_embed: torch.Tensor  # [1, 1 + N, Dd], fixed sin-cos, not in the state_dict
    decoder_blocks: nn.Sequential  # timm Blocks of width Dd
    decoder_norm: nn.LayerNorm
    decoder_pred: nn.Linear  # Dd -> p*p*C

    def _build_decoder(self, dim: int, decoder_dim: int, depth: int, heads: int) -> None:
        """Registers the decoder layers (in MAE's order, which is the state_dict's order)."""
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer(
            "decoder_pos_embed",
            sincos_pos_embed(*self.grid_size, decoder_dim).unsqueeze(0),
            persistent=False,
        )
        self.decoder_blocks = nn.Sequential(
            *(Block(decoder_dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth))
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * self.in_chans)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Normed encoder output [B, 1 + K, D] -> pixel predictions [B, N, p*p*C]."""
        x = self.decoder_embed(latent)
        batch, kept, dim = x.shape
        masked = self.mask_token.to(x.dtype).expand(batch, self.num_patches + 1 - kept, -1)
        x_ = torch.cat([x[:, 1:], masked], dim=1)  # [B, N, Dd], kept first then masked
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # unshuffle
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:]

    def forward_loss(
        self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared pixel error over the masked patches (1 in `mask`) only."""
        target = patchify_images(images, self.patch_size).float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = (pred.float() - target).pow(2).mean(dim=-1)  # [B, N], per-patch loss
        # clamp: mask_ratio=0 (or an empty batch) masks nothing and gives 0, not 0/0
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)
