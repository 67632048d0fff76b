"""MAE + classification on a timm VisionTransformer, and the packed mixed step of MixTraining.

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

`forward_mixed` packs the SSL sequences (cls + visible patches) and the SL sequences (cls + all
patches) into one token buffer [T, D] with `cu_seqlens`, runs every encoder block once over it
(each Linear sees both sub-batches; attention is `mixfast.ops.varlen_attention`, block-diagonal
per sequence), then splits the rows into the MAE decoder and the classification head(s). With
`packed=False` it runs the same modules on each sub-batch separately: the reference that the
packed path must equal.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from mixfast import ops
from mixfast._attention import varlen_attention_qkvpacked
from mixfast.masking import MaskingResult, random_masking
from mixfast.reference import patchify_images

SL_VIEWS = ("full", "masked")
PACKED_ATTENTION = ("auto", "varlen", "sdpa")
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


def _check_vit(vit: nn.Module) -> None:
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


class MixMAE(nn.Module):
    """A timm ViT encoder with an MAE decoder and K classification heads.

    Build it with `create_model`. `model.encoder` is the timm VisionTransformer (head 0 is its
    `head`); `model.extra_heads[k - 1]` is the head of task k >= 1.
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
        _check_vit(vit)
        if decoder_dim < 1 or decoder_depth < 1 or decoder_heads < 1:
            raise ValueError(
                f"decoder_dim, decoder_depth and decoder_heads must be >= 1, got "
                f"{decoder_dim}, {decoder_depth}, {decoder_heads}"
            )
        if decoder_dim % decoder_heads:
            raise ValueError(
                f"decoder_dim ({decoder_dim}) must be divisible by decoder_heads ({decoder_heads})"
            )
        self.encoder = vit
        self.task_classes = [int(c) for c in task_classes]
        self.norm_pix_loss = norm_pix_loss
        self.packed_attention = packed_attention
        self._use_varlen(vit.cls_token)  # validates packed_attention
        self.patch_size = vit.patch_embed.patch_size[0]
        self.grid_size = tuple(vit.patch_embed.grid_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = vit.patch_embed.proj.in_channels
        dim = vit.embed_dim
        self.extra_heads = nn.ModuleList(nn.Linear(dim, c) for c in self.task_classes[1:])

        # MAE decoder
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer(
            "decoder_pos_embed",
            sincos_pos_embed(*self.grid_size, decoder_dim).unsqueeze(0),
            persistent=False,
        )
        self.decoder_blocks = nn.Sequential(
            *(
                Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                for _ in range(decoder_depth)
            )
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        pixels = self.patch_size**2 * self.in_chans
        self.decoder_pred = nn.Linear(decoder_dim, pixels)
        self._init_new_weights()

    def _init_new_weights(self) -> None:
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

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Full images -> normed tokens [B, 1 + N, D]; equals timm's `forward_features`."""
        self._check_images(images, "images")
        x = self.encoder.blocks(self.prepend_cls(self.embed_patches(images)))
        return self.encoder.norm(x)

    def encode_packed(self, seqs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run sequence groups [B_i, L_i, D] through every block as one packed buffer [T, D].

        Returns the block outputs (before the final norm) split back into [B_i, L_i, D].
        """
        if len(seqs) == 1:  # uniform lengths: timm's batched path is the fast one
            return [self.encoder.blocks(seqs[0])]
        shapes = [(s.shape[0], s.shape[1]) for s in seqs]
        x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seqs])
        return self._blocks_packed(x, shapes, _cu_seqlens(shapes, x.device))

    def _blocks_packed(
        self, x: torch.Tensor, shapes: list[tuple[int, int]], cu_seqlens: torch.Tensor
    ) -> list[torch.Tensor]:
        """Packed buffer [T, D] of groups of `b` sequences of `length` -> [b, length, D] each."""
        layout = PackedLayout(
            shapes, cu_seqlens, max(length for _, length in shapes), self._use_varlen(x)
        )
        for block in self.encoder.blocks:
            x = _block_packed(block, x, layout)
        chunks = x.split([b * length for b, length in shapes])
        return [c.view(b, length, -1) for c, (b, length) in zip(chunks, shapes)]

    def _use_varlen(self, x: torch.Tensor) -> bool:
        """Packed attention: "varlen" (one ops.varlen_attention launch: the Triton kernel on
        CUDA) or "sdpa" (one SDPA per group of equal-length sequences: faster on CPU, where
        varlen_attention is the reference); "auto" picks varlen for CUDA tensors."""
        if self.packed_attention not in PACKED_ATTENTION:
            raise ValueError(
                f"packed_attention must be one of {PACKED_ATTENTION}, got {self.packed_attention!r}"
            )
        if self.packed_attention == "auto":
            return x.is_cuda
        return self.packed_attention == "varlen"

    def _encode_shared_packed(
        self, images: torch.Tensor, ids_keep: torch.Tensor
    ) -> list[torch.Tensor]:
        """Full view (SL) then kept view (SSL) of the same images, one packed pass.

        `ops.packed_patch_embed` embeds each patch once and writes both views into the token
        buffer; the cls rows (the first row of every sequence) are filled in here.
        """
        batch, kept = ids_keep.shape
        shapes = [(batch, self.num_patches + 1), (batch, kept + 1)]
        cu_seqlens = _cu_seqlens(shapes, images.device)
        starts = _packed_index(tuple(shapes), images.device, torch.int64)[:-1]  # cls rows
        patch_rows = _packed_index(tuple(shapes), images.device, torch.int64, shift=1)[:-1]
        vit = self.encoder
        proj = vit.patch_embed.proj
        x = ops.packed_patch_embed(
            images,
            proj.weight,
            proj.bias,
            vit.pos_embed[0, 1:],
            sum(b * length for b, length in shapes),
            ids_keep=ids_keep,
            full_offsets=patch_rows[:batch],
            keep_offsets=patch_rows[batch:],
        )
        cls = (vit.cls_token + vit.pos_embed[:, :1]).reshape(1, -1)
        x = x.to(cls.dtype).index_copy(0, starts, cls.expand(starts.shape[0], -1))
        x = vit.norm_pre(vit.pos_drop(x))
        return self._blocks_packed(x, shapes, cu_seqlens)

    def encode_separate(self, seqs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Reference for `encode_packed`: each group through timm's blocks on its own."""
        return [self.encoder.blocks(s) for s in seqs]

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
        x = self.encoder.blocks(self.prepend_cls(self.embed_patches(images)))
        return self.head(self.encoder.norm(x[:, 0]), task)

    # ----------------------------------------------------------------------------- MAE

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

    def forward_mae(
        self,
        images: torch.Tensor,
        mask_ratio: float = 0.75,
        *,
        seed: int | None = None,
        offset: int = 0,
        masking: MaskingResult | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAE forward as in models_mae.py: -> (loss, pred [B, N, p*p*C], mask [B, N])."""
        self._check_images(images, "images")
        self._check_mask_ratio(mask_ratio)
        spec = _MaskSpec(mask_ratio, seed, offset, masking)
        masking = self._masking(images.shape[0], spec, images.device)
        tokens = self.prepend_cls(self.embed_patches(images, masking.ids_keep))
        latent = self.encoder.norm(self.encoder.blocks(tokens))
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
        """Images [B, C, H, W] -> MAE loss.

        Masks from `mixfast.random_masking(B, N, mask_ratio, seed=seed, offset=offset)`, or the
        precomputed `masking` (see `forward_mixed` for when that helps under torch.compile).
        """
        return self.forward_mae(images, mask_ratio, seed=seed, offset=offset, masking=masking)[0]

    # ----------------------------------------------------------------------------- mixed step

    def forward_mixed(
        self,
        ssl_images: torch.Tensor | None,
        sl_images: Images,
        labels: Labels | None,
        *,
        alpha: float | torch.Tensor,
        mask_ratio: float = 0.75,
        seed: int | None = None,
        offset: int = 0,
        masking: MaskingResult | None = None,
        sl_view: str = "full",
        task_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        packed: bool = True,
        validate: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One MixTraining step's loss: `alpha * L_mae + (1 - alpha) * sum_k w_k * L_ce_k`.

        Args:
            ssl_images: [Bm, C, H, W] for the MAE loss, or None / empty (no SSL sub-batch).
            sl_images: [Bs, C, H, W] labelled by every tensor in `labels`, or a list with one
                image tensor per task; None / empty for no SL sub-batch. Passing the same tensor
                object as `ssl_images` embeds the patches once (SSL tokens are a gather).
            labels: int64 [Bs] for task 0 alone, or a list of K tensors (one per head, in task
                order). Not range-checked here unless `validate=True` (a host sync; see
                `check_labels`).
            alpha: weight of the MAE loss; pass a 0-dim tensor under torch.compile so a new
                value does not recompile.
            mask_ratio, seed, offset: the MAE masking (`mixfast.random_masking`). Rows
                [0, Bm) mask `ssl_images`, as `forward_ssl(ssl_images, ...)` would.
            masking: precomputed `random_masking(...)` output instead of seed/offset (rows as
                above). Under torch.compile an int `offset` that changes every step can force a
                recompile; masks computed outside the compiled function never do.
            sl_view: "full" (SL heads read full images) or "masked" (SL heads read the cls token
                of the masked view, SupMAE-style: when `sl_images is ssl_images` one encoder
                pass over the visible patches serves both losses; other SL images are masked
                with rows Bm.. of the same masking call and feed the heads only).
            task_weights: w_k per task; default 1/K for a list of K label tensors, 1 for a
                single label tensor.
            label_smoothing: of every cross-entropy (as F.cross_entropy).
            packed: False runs the sub-batches separately through the same modules (reference).
            validate: check label ranges on the host before any work (eager only).

        Returns:
            (loss, parts): parts["ssl"] = L_mae, parts["sl"] = sum_k w_k * L_ce_k, and
            parts[f"sl_{k}"] = L_ce_k; an empty sub-batch contributes a 0 loss.
        """
        groups = self._sl_groups(sl_images, labels)
        weights = self._task_weights(task_weights, labels)
        has_ssl = ssl_images is not None and ssl_images.shape[0] > 0
        ssl_images = ssl_images if has_ssl else None
        self._check_mixed(ssl_images, groups, sl_view, mask_ratio, validate)
        spec = _MaskSpec(mask_ratio, seed, offset, masking)
        encode = self._encode_full_view if sl_view == "full" else self._encode_masked_view
        ssl_out, ssl_masking, sl_cls = encode(ssl_images, groups, spec, packed)

        zero = self.encoder.cls_token.new_zeros(())
        parts = {"ssl": zero}
        if ssl_out is not None:
            pred = self.forward_decoder(ssl_out, ssl_masking.ids_restore)
            parts["ssl"] = self.forward_loss(ssl_images, pred, ssl_masking.mask)
        task_losses = [zero] * self.num_tasks
        for group, cls in zip(groups, sl_cls):
            for task, target in zip(group.tasks, group.labels):
                logits = self.head(cls, task).float()
                task_losses[task] = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        parts["sl"] = sum((w * task_losses[k] for k, w in weights.items()), zero)
        parts.update({f"sl_{k}": task_losses[k] for k in range(self.num_tasks)})
        loss = alpha * parts["ssl"] + (1 - alpha) * parts["sl"]
        return loss, parts

    def _encode(self, seqs: list[torch.Tensor], packed: bool) -> list[torch.Tensor]:
        return self.encode_packed(seqs) if packed else self.encode_separate(seqs)

    def _encode_full_view(self, ssl_images, groups, spec, packed):
        """SL groups as full sequences, SSL as cls + visible patches, all in one pass."""
        seqs, ssl_tokens, masking = [], None, None
        if ssl_images is not None:
            masking = self._masking(ssl_images.shape[0], spec, ssl_images.device)
        if (
            packed
            and ssl_images is not None
            and len(groups) == 1
            and groups[0].images is ssl_images
        ):
            sl_out, ssl_out = self._encode_shared_packed(ssl_images, masking.ids_keep)
            return self.encoder.norm(ssl_out), masking, [self.encoder.norm(sl_out[:, 0])]
        for group in groups:
            tokens = self.embed_patches(group.images)  # [Bs, N, D]
            if ssl_images is not None and group.images is ssl_images:
                index = masking.ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
                ssl_tokens = torch.gather(tokens, 1, index)  # shared patch embedding
            seqs.append(self.prepend_cls(tokens))
        if ssl_images is not None:
            if ssl_tokens is None:
                ssl_tokens = self.embed_patches(ssl_images, masking.ids_keep)
            seqs.append(self.prepend_cls(ssl_tokens))
        outs = self._encode(seqs, packed)
        sl_cls = [self.encoder.norm(out[:, 0]) for out in outs[: len(groups)]]
        ssl_out = self.encoder.norm(outs[-1]) if ssl_images is not None else None
        return ssl_out, masking, sl_cls

    def _encode_masked_view(self, ssl_images, groups, spec, packed):
        """Every sequence is cls + visible patches; SL heads read the masked view's cls."""
        first = ssl_images if ssl_images is not None else groups[0].images
        own = [g for g in groups if g.images is not ssl_images]  # SL images needing own masks
        rows = [0 if ssl_images is None else ssl_images.shape[0]] + [g.images.shape[0] for g in own]
        masking = self._masking(sum(rows), spec, first.device)
        ids_keep = masking.ids_keep.split(rows)
        seqs = [
            self.prepend_cls(self.embed_patches(g.images, ids)) for g, ids in zip(own, ids_keep[1:])
        ]
        if ssl_images is not None:
            seqs.append(self.prepend_cls(self.embed_patches(ssl_images, ids_keep[0])))
        outs = self._encode(seqs, packed)
        ssl_out = self.encoder.norm(outs[-1]) if ssl_images is not None else None
        own_cls = iter(self.encoder.norm(out[:, 0]) for out in outs[: len(own)])
        sl_cls = [ssl_out[:, 0] if g.images is ssl_images else next(own_cls) for g in groups]
        ssl_masking = None
        if ssl_images is not None:
            ssl_masking = _slice_masking(masking, rows[0])
        return ssl_out, ssl_masking, sl_cls

    def _sl_groups(self, sl_images: Images, labels: Labels | None) -> list[_SLGroup]:
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
            if len(labels) != self.num_tasks:
                raise ValueError(
                    f"labels must hold one tensor per task ({self.num_tasks}), got {len(labels)}"
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

    def _task_weights(
        self, task_weights: Sequence[float] | None, labels: Labels | None
    ) -> dict[int, float]:
        if labels is None:  # no SL sub-batch: weights do not matter
            return {}
        tasks = 1 if isinstance(labels, torch.Tensor) else self.num_tasks
        if task_weights is None:
            return {k: 1.0 / tasks for k in range(tasks)}
        if len(task_weights) != tasks:
            raise ValueError(f"task_weights must have {tasks} entries, got {len(task_weights)}")
        return dict(enumerate(task_weights))

    def _check_mixed(self, ssl_images, groups, sl_view, mask_ratio, validate) -> None:
        if sl_view not in SL_VIEWS:
            raise ValueError(f"sl_view must be one of {SL_VIEWS}, got {sl_view!r}")
        if ssl_images is None and not groups:
            raise ValueError("forward_mixed needs a non-empty SSL or SL sub-batch")
        self._check_mask_ratio(mask_ratio)
        if ssl_images is not None:
            self._check_images(ssl_images, "ssl_images")
        for group in groups:
            self._check_images(group.images, "sl_images")
            for task, target in zip(group.tasks, group.labels):
                if target.shape != group.images.shape[:1] or target.is_floating_point():
                    raise ValueError(
                        f"labels of task {task} must be integer class ids of shape "
                        f"[{group.images.shape[0]}], got {target.dtype} {list(target.shape)}"
                    )
                if validate:
                    self.check_labels(target, task)

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
        out = varlen_attention_qkvpacked(qkv, layout.cu_seqlens, layout.max_seqlen, attn.scale)
    else:
        q, k, v = qkv.unbind(1)  # [T, H, Dh] each
        q, k = attn.q_norm(q).to(v.dtype), attn.k_norm(k).to(v.dtype)
        if layout.varlen:
            out = ops.varlen_attention(q, k, v, layout.cu_seqlens, layout.max_seqlen, attn.scale)
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


def create_model(
    name_or_vit: str | VisionTransformer,
    *,
    img_size: int | tuple[int, int] | None = None,
    patch_size: int | None = None,
    in_chans: int | None = None,
    num_classes: int | None = None,
    decoder_dim: int = 128,
    decoder_depth: int = 2,
    decoder_heads: int = 4,
    norm_pix_loss: bool = False,
    task_classes: Sequence[int] | None = None,
    packed_attention: str = "auto",
    **vit_overrides,
) -> MixMAE:
    """Build a MixMAE from a timm ViT name (random init) or an existing VisionTransformer.

    Args:
        name_or_vit: e.g. "vit_tiny_patch16_224", or a timm VisionTransformer (used as is).
        img_size, patch_size, in_chans: timm overrides (a name only); the image size must be
            divisible by the patch size.
        num_classes: classes of head 0 (default: timm's, 1000 for a name).
        decoder_dim, decoder_depth, decoder_heads: the MAE decoder (small defaults for small
            ViTs; MAE's ViT-B uses 512, 8, 16).
        norm_pix_loss: MAE's per-patch normalised pixel target.
        task_classes: classes per task for K heads (head 0 first); overrides num_classes.
        packed_attention: "auto" | "varlen" | "sdpa", attention of the packed mixed step
            (see MixMAE._use_varlen); also settable later as `model.packed_attention`.
        **vit_overrides: other timm kwargs (depth, embed_dim, num_heads, drop_path_rate, ...).
    """
    if task_classes is not None:
        if len(task_classes) < 1 or any(int(c) < 1 for c in task_classes):
            raise ValueError(
                f"task_classes must be a non-empty list of ints >= 1, got {task_classes}"
            )
        if num_classes is not None and num_classes != task_classes[0]:
            raise ValueError(
                f"num_classes ({num_classes}) disagrees with task_classes[0] ({task_classes[0]})"
            )
        num_classes = int(task_classes[0])
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if isinstance(name_or_vit, str):
        vit = _create_vit(name_or_vit, img_size, patch_size, in_chans, num_classes, vit_overrides)
    else:
        vit = _adopt_vit(name_or_vit, img_size, patch_size, in_chans, num_classes, vit_overrides)
    return MixMAE(
        vit,
        task_classes=task_classes or [vit.num_classes],
        decoder_dim=decoder_dim,
        decoder_depth=decoder_depth,
        decoder_heads=decoder_heads,
        norm_pix_loss=norm_pix_loss,
        packed_attention=packed_attention,
    )


def _create_vit(name, img_size, patch_size, in_chans, num_classes, overrides) -> VisionTransformer:
    if name not in timm.list_models("vit_*"):
        raise ValueError(f"name_or_vit {name!r} is not a timm ViT name (timm.list_models('vit_*'))")
    kwargs = dict(dynamic_img_size=False, class_token=True, global_pool="token")
    given = dict(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes
    )
    kwargs.update({k: v for k, v in given.items() if v is not None}, **overrides)
    return timm.create_model(name, pretrained=False, **kwargs)


def _adopt_vit(vit, img_size, patch_size, in_chans, num_classes, overrides) -> VisionTransformer:
    _check_vit(vit)
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


__all__ = ["MixMAE", "create_model", "sincos_pos_embed"]
