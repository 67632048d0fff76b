"""The packed mixed step of MixTraining: one encoder pass over the SSL and SL sub-batches.

    forward_mixed(ssl_images, sl_images, labels, *, alpha, mask_ratio, seed, offset, masking,
                  sl_view="full", task_weights=None, label_smoothing=0.0)  -> (loss, parts)
    encode_packed(seqs [B_i, L_i, D])    -> block outputs [B_i, L_i, D]   one packed buffer
    encode_separate(seqs [B_i, L_i, D])  -> the same, each group on its own (the reference)

`forward_mixed` packs the SSL sequences (cls + visible patches) and the SL sequences (cls + all
patches) into one token buffer [T, D] with `cu_seqlens`, runs every encoder block once over it
(each Linear sees both sub-batches; attention is `mixfast.ops.varlen_attention`, block-diagonal
per sequence), then splits the rows into the MAE decoder and the classification head(s). With
`packed=False` it runs the same modules on each sub-batch separately: the reference that the
packed path must equal.

`MixedStep` is a mixin of `MixMAE` (it owns no parameters): it uses the model's `encoder`,
`embed_patches`, `prepend_cls`, `head`, `forward_decoder`, `forward_loss`, `_masking` and checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.checkpoint import checkpoint

from mixfast import ops
from mixfast.model.packed import (
    Images,
    Labels,
    PackedLayout,
    _cu_seqlens,
    _MaskSpec,
    _packed_index,
    _slice_masking,
    cross_entropy,
    packed_forward,
    sl_groups,
    task_weights_of,
)
from mixfast.ops import MaskingResult

SL_VIEWS = ("full", "masked")  # the SL loss of a mix step: on full images or the masked view
PACKED_ATTENTION = ("auto", "varlen", "sdpa")

# what an encoding of the sub-batches returns: normed SSL tokens [Bm, 1 + K, D] (None without an
# SSL sub-batch), the SSL rows' masks, and the normed cls token [Bs, D] of every SL group
Encoded = tuple[torch.Tensor | None, MaskingResult | None, list[torch.Tensor]]


class MixedStep:
    """Mixin: `forward_mixed` and the packed encoding of its sub-batches (the blocks run through
    MixMAE's `run_blocks` / `checkpointing`, so gradient checkpointing covers them too)."""

    encoder: VisionTransformer
    num_patches: int
    num_tasks: int
    packed_attention: str  # "auto" | "varlen" | "sdpa", see _use_varlen

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
                order); a float tensor [Bs, classes] is a soft target (Mixup's). Not
                range-checked here unless `validate=True` (a host sync; see `check_labels`).
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
                logits = self.head(cls, task)
                task_losses[task] = cross_entropy(logits, target, label_smoothing)
        parts["sl"] = sum((w * task_losses[k] for k, w in weights.items()), zero)
        parts.update({f"sl_{k}": task_losses[k] for k in range(self.num_tasks)})
        loss = alpha * parts["ssl"] + (1 - alpha) * parts["sl"]
        return loss, parts

    # ----------------------------------------------------------------------------- encodings

    def encode_packed(self, seqs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run sequence groups [B_i, L_i, D] through every block as one packed buffer [T, D].

        Returns the block outputs (before the final norm) split back into [B_i, L_i, D].
        """
        if len(seqs) == 1:  # uniform lengths: timm's batched path is the fast one
            return [self.run_blocks(seqs[0])]
        shapes = [(s.shape[0], s.shape[1]) for s in seqs]
        x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seqs])
        return self._blocks_packed(x, shapes, _cu_seqlens(shapes, x.device))

    def encode_separate(self, seqs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Reference for `encode_packed`: each group through timm's blocks on its own."""
        return [self.run_blocks(s) for s in seqs]

    def _encode(self, seqs: list[torch.Tensor], packed: bool) -> list[torch.Tensor]:
        return self.encode_packed(seqs) if packed else self.encode_separate(seqs)

    def _blocks_packed(
        self, x: torch.Tensor, shapes: list[tuple[int, int]], cu_seqlens: torch.Tensor
    ) -> list[torch.Tensor]:
        """Packed buffer [T, D] of groups of `b` sequences of `length` -> [b, length, D] each."""
        layout = PackedLayout(
            shapes, cu_seqlens, max(length for _, length in shapes), self._use_varlen(x)
        )
        checkpointed = self.checkpointing()
        for block in self.encoder.blocks:
            run = packed_forward(block)
            if checkpointed:
                x = checkpoint(run, x, layout, use_reentrant=False)
            else:
                x = run(x, layout)
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

    def _encode_full_view(self, ssl_images, groups, spec, packed) -> Encoded:
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

    def _encode_masked_view(self, ssl_images, groups, spec, packed) -> Encoded:
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

    # ----------------------------------------------------------------------------- checks

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
                soft = target.is_floating_point()
                if target.shape[:1] != group.images.shape[:1] or target.dim() != 1 + soft:
                    raise ValueError(
                        f"labels of task {task} must be integer class ids of shape "
                        f"[{group.images.shape[0]}] or soft targets [{group.images.shape[0]}, "
                        f"classes], got {target.dtype} {list(target.shape)}"
                    )
                if validate and not soft:
                    self.check_labels(target, task)


def _check_alpha(alpha: float | torch.Tensor) -> None:
    """a(t) in [0, 1], checked when it is a number: a tensor's value would cost a host read
    every step (the trainer's come from the schedule, in range by construction)."""
    if isinstance(alpha, torch.Tensor):
        return
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the SSL weight a(t)), got {alpha!r}")
