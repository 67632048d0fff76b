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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from mixfast import ops
from mixfast.model.packed import (
    Images,
    Labels,
    PackedLayout,
    _block_packed,
    _cu_seqlens,
    _MaskSpec,
    _packed_index,
    _slice_masking,
    sl_groups,
    task_weights_of,
)
from mixfast.model.vit import check_vit, sincos_pos_embed
from mixfast.ops import MaskingResult, random_masking
from mixfast.ops.reference import patchify_images

SL_VIEWS = ("full", "masked")  # the SL loss of a mix step: on full images or the masked view
PACKED_ATTENTION = ("auto", "varlen", "sdpa")


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
        check_vit(vit)
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
        groups = sl_groups(self.num_tasks, sl_images, labels)
        weights = task_weights_of(self.num_tasks, task_weights, labels)
        has_ssl = ssl_images is not None and ssl_images.shape[0] > 0
        ssl_images = ssl_images if has_ssl else None
        self._check_mixed(ssl_images, groups, sl_view, mask_ratio, validate)
        _check_alpha(alpha)
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


def _check_alpha(alpha: float | torch.Tensor) -> None:
    """a(t) in [0, 1], checked when it is a number: a tensor's value would cost a host read
    every step (the trainer's come from the schedule, in range by construction)."""
    if isinstance(alpha, torch.Tensor):
        return
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the SSL weight a(t)), got {alpha!r}")
