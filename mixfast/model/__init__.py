"""The model: an MAE on a timm VisionTransformer with K classification heads, and the packed
mixed step (mae.py); the packed layout and packed timm Block (packed.py); timm helpers and
sin-cos embedding (vit.py); `create_model` (factory.py)."""

from mixfast.model.factory import create_model
from mixfast.model.mae import MixMAE
from mixfast.model.packed import PackedLayout
from mixfast.model.vit import sincos_pos_embed

__all__ = ["MixMAE", "PackedLayout", "create_model", "sincos_pos_embed"]
