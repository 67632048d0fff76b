"""MAE + classification on a timm VisionTransformer: the model of MixTraining.

The encoder *is* a timm `VisionTransformer` (`model.encoder`): its state_dict matches timm key
for key, head 0 is timm's own `head`, and extra task heads live in `model.extra_heads`. The MAE
decoder follows facebookresearch/mae `models_mae.py`.

Forwards (no host syncs inside any of them):

    forward_sl(images, task=0)                              -> logits [B, classes]
    forward_ssl(images, mask_ratio, *, seed, offset)        -> MAE loss (scalar)
    forward_mae(images, mask_ratio, *, seed, offset)        -> (loss, pred, mask), as MAE
    forward_mixed(ssl_images, sl_images, labels, *, alpha, mask_ratio, seed, offset,
                  sl_view="full", task_weights=None)        -> (loss, parts)

Every masked forward also takes `masking=` (a precomputed `mixfast.random_masking` result)
instead of seed/offset: under torch.compile that keeps a new step from recompiling. Label ranges
are checked by `check_labels` (a host sync; call it outside the compiled step) or by
`forward_mixed(..., validate=True)`; shapes, dtypes and arguments are always checked.

One job per file, one class: `MixMAE` (here: construction, checks, embedding, encoder, heads,
the MAE forward, timm I/O) takes the MAE decoder and its loss from `MAEDecoder` (decoder.py)
and the packed mixed step from `MixedStep` (mixed.py). Both are mixins, not submodules, so every
parameter stays an attribute of the model and the state_dict keys stay `encoder.*`,
`extra_heads.*`, `decoder_*`, `mask_token`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from mixfast import ops
from mixfast.model.decoder import MAEDecoder, check_decoder
from mixfast.model.mixed import PACKED_ATTENTION, SL_VIEWS, MixedStep
from mixfast.model.packed import _MaskSpec
from mixfast.model.vit import check_vit
from mixfast.ops import MaskingResult, random_masking

__all__ = ["PACKED_ATTENTION", "SL_VIEWS", "MixMAE"]  # SL_VIEWS: also the trainer's choices


class MixMAE(MixedStep, MAEDecoder, nn.Module):
    """A timm ViT encoder with an MAE decoder and K classification heads.

    Build it with `create_model`. `model.encoder` is the timm VisionTransformer (head 0 is its
    `head`); `model.extra_heads[k - 1]` is the head of task k >= 1. The decoder layers
    (`decoder_*`, `mask_token`) come from `MAEDecoder`, `forward_mixed` from `MixedStep`.
    """

    def __init__(
        self,
        vit: VisionTransformer,
        *,
        task_classes: Sequence[int],
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = False,
        packed_attention: str = "auto",
    ) -> None:
        super().__init__()
        check_vit(vit)
        check_decoder(decoder_dim, decoder_depth, decoder_heads)
        self.encoder = vit
        self.task_classes = [int(c) for c in task_classes]
        self.head_labels: list[list[str]] | None = None  # each head's class names (create_model)
        self.norm_pix_loss = norm_pix_loss
        self.packed_attention = packed_attention
        self._use_varlen(vit.cls_token)  # validates packed_attention
        self.patch_size = vit.patch_embed.patch_size[0]
        self.grid_size = tuple(vit.patch_embed.grid_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = vit.patch_embed.proj.in_channels
        self.extra_heads = nn.ModuleList(nn.Linear(vit.embed_dim, c) for c in self.task_classes[1:])
        self._build_decoder(vit.embed_dim, decoder_dim, decoder_depth, decoder_heads)
        self._init_new_weights()

    def _init_new_weights(self) -> None:
        """MAE's init of the layers timm does not make (draw order kept: a seed, one model)."""
        nn.init.normal_(self.mask_token, std=0.02)
        for module in [*self.extra_heads, self.decoder_embed, self.decoder_pred]:
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        for module in self.decoder_blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def num_tasks(self) -> int:
        return len(self.task_classes)

    # ----------------------------------------------------------------------------- checks

    def _check_images(self, images: torch.Tensor, name: str) -> None:
        expected = (self.in_chans, *self.encoder.patch_embed.img_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"{name} must be [B, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(in_chans, img_size of the model), got {list(images.shape)}"
            )

    def _check_mask_ratio(self, mask_ratio: float) -> None:
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if int(self.num_patches * (1 - mask_ratio)) < 1:
            raise ValueError(
                f"mask_ratio={mask_ratio} keeps no patch of {self.num_patches}; "
                f"use mask_ratio <= {1 - 1 / self.num_patches:.4f}"
            )

    def check_labels(self, labels: torch.Tensor, task: int = 0) -> None:
        """Raise ValueError if a label is outside [0, classes of `task`).

        Reads the labels on the host (a sync): call it once per batch outside a compiled step,
        or pass `validate=True` to `forward_mixed` in eager mode.
        """
        self._check_task(task)
        classes = self.task_classes[task]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise ValueError(
                f"labels of task {task} must be in [0, {classes}), got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )

    def _check_task(self, task: int) -> None:
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task must be in [0, {self.num_tasks}), got {task}")

    # ----------------------------------------------------------------------------- embedding

    def _masking(self, batch: int, spec: _MaskSpec, device: torch.device) -> MaskingResult:
        """The masks of `batch` samples: `spec.masking` if given, else random_masking(seed)."""
        if spec.masking is not None:
            ids_keep, ids_restore, mask = spec.masking
            if ids_restore.shape != (batch, self.num_patches) or ids_keep.shape[0] != batch:
                raise ValueError(
                    f"masking must cover {batch} samples of {self.num_patches} patches, got "
                    f"ids_keep {list(ids_keep.shape)}, ids_restore {list(ids_restore.shape)}"
                )
            return MaskingResult(ids_keep, ids_restore, mask)
        if spec.seed is None:
            raise ValueError("pass seed= (and offset=) or a precomputed masking=")
        return random_masking(
            batch,
            self.num_patches,
            spec.mask_ratio,
            seed=spec.seed,
            offset=spec.offset,
            device=device,
        )

    def embed_patches(
        self, images: torch.Tensor, ids_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, C, H, W] -> patch tokens + pos embed [B, K, D] (K = N when ids_keep is None)."""
        proj = self.encoder.patch_embed.proj
        pos_embed = self.encoder.pos_embed[0, 1:]  # [N, D]; row 0 is the cls position
        return ops.masked_patch_embed(images, proj.weight, proj.bias, pos_embed, ids_keep)

    def prepend_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, K, D] -> [B, 1 + K, D], then timm's pos_drop and norm_pre."""
        vit = self.encoder
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens.to(cls.dtype)], dim=1)  # fp32 residual stream, as in timm
        return vit.norm_pre(vit.pos_drop(x))

    # ----------------------------------------------------------------------------- encoder

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: the encoder blocks keep no activations for the backward and recompute
        them there (non-reentrant torch.utils.checkpoint per block, in the packed path too)."""
        self.encoder.set_grad_checkpointing(enable)

    def checkpointing(self) -> bool:
        """Whether this forward recomputes block activations in the backward."""
        return bool(self.encoder.grad_checkpointing) and self.training and torch.is_grad_enabled()

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, L, D] through every encoder block (before the final norm)."""
        if not self.checkpointing():
            return self.encoder.blocks(x)
        for block in self.encoder.blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Full images -> normed tokens [B, 1 + N, D]; equals timm's `forward_features`."""
        self._check_images(images, "images")
        x = self.run_blocks(self.prepend_cls(self.embed_patches(images)))
        return self.encoder.norm(x)

    # ----------------------------------------------------------------------------- heads

    def head(self, cls_tokens: torch.Tensor, task: int = 0) -> torch.Tensor:
        """Normed cls tokens [B, D] -> logits [B, classes of `task`] (timm's forward_head)."""
        vit = self.encoder
        x = vit.head_drop(vit.fc_norm(cls_tokens))
        return vit.head(x) if task == 0 else self.extra_heads[task - 1](x)

    def forward_sl(self, images: torch.Tensor, task: int = 0) -> torch.Tensor:
        """Full images [B, C, H, W] -> logits of head `task` [B, classes]."""
        self._check_task(task)
        self._check_images(images, "images")
        x = self.run_blocks(self.prepend_cls(self.embed_patches(images)))
        return self.head(self.encoder.norm(x[:, 0]), task)

    # ----------------------------------------------------------------------------- MAE

    def forward_mae(
        self,
        images: torch.Tensor,
        mask_ratio: float = 0.75,
        *,
        seed: int | None = None,
        offset: int = 0,
        masking: MaskingResult | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAE forward as in models_mae.py: -> (loss, pred [B, N, p*p*C], mask [B, N]).

        Masks from `mixfast.random_masking(B, N, mask_ratio, seed=seed, offset=offset)`, or the
        precomputed `masking` (see `forward_mixed` for when that helps under torch.compile).
        """
        self._check_images(images, "images")
        self._check_mask_ratio(mask_ratio)
        spec = _MaskSpec(mask_ratio, seed, offset, masking)
        masking = self._masking(images.shape[0], spec, images.device)
        tokens = self.prepend_cls(self.embed_patches(images, masking.ids_keep))
        latent = self.encoder.norm(self.run_blocks(tokens))
        pred = self.forward_decoder(latent, masking.ids_restore)
        return self.forward_loss(images, pred, masking.mask), pred, masking.mask

    def forward_ssl(
        self,
        images: torch.Tensor,
        mask_ratio: float = 0.75,
        *,
        seed: int | None = None,
        offset: int = 0,
        masking: MaskingResult | None = None,
    ) -> torch.Tensor:
        """Images [B, C, H, W] -> MAE loss (scalar): forward_mae's loss, same arguments."""
        return self.forward_mae(images, mask_ratio, seed=seed, offset=offset, masking=masking)[0]

    # ----------------------------------------------------------------------------- timm I/O

    def export_timm(self) -> VisionTransformer:
        """A standalone timm VisionTransformer holding a copy of the encoder and head 0."""
        return copy.deepcopy(self.encoder)

    def load_timm(self, vit: VisionTransformer | dict[str, torch.Tensor]) -> None:
        """Load a timm ViT (or its state_dict) of the same config into the encoder and head 0."""
        state = vit.state_dict() if isinstance(vit, nn.Module) else vit
        own = self.encoder.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(
                f"load_timm: the ViT does not match the encoder config: missing keys {missing}, "
                f"unexpected keys {unexpected}, shape mismatch {wrong}"
            )
        self.encoder.load_state_dict(state)
