"""`create_model`: a MixMAE from a timm ViT name or an existing timm VisionTransformer, optionally
started from pretrained weights (mixfast/model/weights.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from timm.models import split_model_name_tag
from timm.models.vision_transformer import VisionTransformer

from mixfast.model.mae import MixMAE
from mixfast.model.vit import adopt_vit, create_vit
from mixfast.model.weights import load_timm_pretrained, load_weights


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
    pretrained: bool = False,
    pretrained_path: str | os.PathLike | None = None,
    pretrained_cfg_overlay: Mapping | None = None,
    head_labels: Sequence[Sequence[str]] | None = None,
    pretrained_head: str = "auto",
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
        pretrained: start from the pretrained weights of `name_or_vit` (a timm name, a tag
            allowed: "vit_base_patch16_224.mae") through timm's loader and cache;
            `pretrained_cfg_overlay` goes to timm with it (e.g. dict(file=PATH)).
        pretrained_path: start from a weights file (MAE checkpoint or encoder, timm state_dict,
            mixfast last.pt or export; see mixfast.model.weights).
            With either, the fresh layers are drawn first (seed before calling), the weights are
            adapted to the model (position and patch embedding, channels, heads) and
            `model.pretrained_notes` lists what was done; weights that do not fit raise
            SettingError. Without: `model.pretrained_notes` is [].
        head_labels: what each head's classes mean, per task (e.g. [("cat", "dog")]): kept as
            `model.head_labels` and written into mixfast checkpoints with the weights.
        pretrained_head: which heads of the weights load: "auto" those whose file records the
            same `head_labels`; "keep" every head whose class count matches (timm's and MAE's
            rule); "reset" none (mixfast.model.weights.HEAD_RULES).
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
    if pretrained and pretrained_path is not None:
        raise ValueError("give pretrained=True or pretrained_path, not both")
    if pretrained_cfg_overlay is not None and not pretrained:
        raise ValueError("pretrained_cfg_overlay needs pretrained=True")
    weights_name = None
    if pretrained:
        if not isinstance(name_or_vit, str):
            raise ValueError("pretrained=True needs a timm name; for a ViT instance load it first")
        weights_name = name_or_vit
        name_or_vit = split_model_name_tag(name_or_vit)[0]  # the architecture builds the model
    if isinstance(name_or_vit, str):
        vit = create_vit(name_or_vit, img_size, patch_size, in_chans, num_classes, vit_overrides)
    else:
        vit = adopt_vit(name_or_vit, img_size, patch_size, in_chans, num_classes, vit_overrides)
    model = MixMAE(
        vit,
        task_classes=task_classes or [vit.num_classes],
        decoder_dim=decoder_dim,
        decoder_depth=decoder_depth,
        decoder_heads=decoder_heads,
        norm_pix_loss=norm_pix_loss,
        packed_attention=packed_attention,
    )
    if head_labels is not None:
        model.head_labels = _checked_labels(head_labels, model.task_classes)
    notes: list[str] = []
    if weights_name is not None:
        notes = load_timm_pretrained(
            model, weights_name, pretrained_cfg_overlay=pretrained_cfg_overlay, head=pretrained_head
        )
    elif pretrained_path is not None:
        notes = load_weights(model, pretrained_path, head=pretrained_head)
    model.pretrained_notes = notes
    return model


def _checked_labels(labels: Sequence[Sequence[str]], classes: Sequence[int]) -> list[list[str]]:
    """head_labels as lists, one label per class of each head (ValueError otherwise)."""
    labels = [[str(label) for label in task] for task in labels]
    if [len(task) for task in labels] != list(classes):
        raise ValueError(
            f"head_labels must give one label per class of each head {list(classes)}, got "
            f"{[len(task) for task in labels]} labels"
        )
    return labels
