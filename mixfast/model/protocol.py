"""What the trainer needs from a model: `MixModel`, a typing.Protocol (`MixMAE` satisfies it).

The trainer reads the contract, never a signature: it makes every MAE mask itself (a
`mixfast.ops.MaskingResult` from `random_masking`, outside any compiled region) and passes it as
`masking=`, and it always passes `label_smoothing`. Shapes below: B images [B, C, H, W] cut into
N = `num_patches` patches, K = patches kept per image; task k has `task_classes[k]` classes.
`isinstance(model, MixModel)` checks that the members exist, not their signatures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from mixfast.ops import MaskingResult


@runtime_checkable
class MixModel(Protocol):
    """A model that the MixTrainer can run through SSL, SL and mix steps."""

    num_patches: int  # N: the masks the trainer makes are [B, N]
    task_classes: list[int]  # classes of head k, k = 0 .. K-1 (labels are checked against them)

    def forward_ssl(
        self, images: torch.Tensor, mask_ratio: float, *, masking: MaskingResult
    ) -> torch.Tensor:
        """MAE loss (0-dim) of images [B, C, H, W] masked by `masking` (ids_keep [B, K],
        ids_restore [B, N], mask [B, N]); `mask_ratio` is the ratio that made it."""
        ...

    def forward_sl(self, images: torch.Tensor, task: int = 0) -> torch.Tensor:
        """Full images [B, C, H, W] -> logits [B, task_classes[task]] of head `task`."""
        ...

    def forward_mixed(
        self,
        ssl_images: torch.Tensor,
        sl_images: torch.Tensor | Sequence[torch.Tensor],
        labels: torch.Tensor | Sequence[torch.Tensor],
        *,
        alpha: float | torch.Tensor,
        mask_ratio: float,
        masking: MaskingResult,
        sl_view: str,
        task_weights: Sequence[float] | None,
        label_smoothing: float,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One mix step's loss `alpha * L_mae + (1 - alpha) * sum_k w_k * L_ce_k`.

        ssl_images [Bm, C, H, W]; sl_images [Bs, C, H, W] (or one tensor per task) with labels
        int64 [Bs] (or one tensor per task); alpha a float or a 0-dim tensor in [0, 1];
        masking rows [0, Bm) mask ssl_images, and with sl_view "masked" rows Bm.. mask the SL
        images that are not `ssl_images`; task_weights w_k (None: 1/K); label_smoothing of every
        cross-entropy. Returns (loss 0-dim, parts): parts["ssl"], parts["sl"] and
        parts[f"sl_{k}"], each 0-dim.
        """
        ...

    def check_labels(self, labels: torch.Tensor, task: int = 0) -> None:
        """Raise ValueError if a label in int64 [B] is outside [0, task_classes[task])."""
        ...

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: recompute the encoder blocks' activations in the backward."""
        ...

    def export_timm(self) -> nn.Module:
        """A standalone timm model (for MixMAE a VisionTransformer): the encoder and head 0."""
        ...
