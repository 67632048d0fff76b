"""`create_model`: a MixMAE from a timm ViT name or an existing timm VisionTransformer."""

from __future__ import annotations

from collections.abc import Sequence

from timm.models.vision_transformer import VisionTransformer

from mixfast.model.mae import MixMAE
from mixfast.model.vit import adopt_vit, create_vit


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
    for name, value in (("in_chans", in_chans), ("patch_size", patch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if isinstance(name_or_vit, str):
        vit = create_vit(name_or_vit, img_size, patch_size, in_chans, num_classes, vit_overrides)
    else:
        vit = adopt_vit(name_or_vit, img_size, patch_size, in_chans, num_classes, vit_overrides)
    return MixMAE(
        vit,
        task_classes=task_classes or [vit.num_classes],
        decoder_dim=decoder_dim,
        decoder_depth=decoder_depth,
        decoder_heads=decoder_heads,
        norm_pix_loss=norm_pix_loss,
        packed_attention=packed_attention,
    )
