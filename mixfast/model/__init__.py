"""The model: an MAE on a timm VisionTransformer with K classification heads (mae.py), its MAE
decoder and loss (decoder.py) and its packed mixed step (mixed.py); the packed layout and packed
timm Block (packed.py); timm helpers and sin-cos embedding (vit.py); `create_model`
(factory.py); pretrained weights read, adapted and loaded (weights.py); `MixModel`, the contract
the trainer relies on (protocol.py)."""

from mixfast.model.factory import create_model
from mixfast.model.mae import MixMAE
from mixfast.model.packed import PackedLayout
from mixfast.model.protocol import MixModel
from mixfast.model.vit import sincos_pos_embed
from mixfast.model.weights import load_timm_pretrained, load_weights, read_weights

__all__ = [
    "MixMAE",
    "MixModel",
    "PackedLayout",
    "create_model",
    "load_timm_pretrained",
    "load_weights",
    "read_weights",
    "sincos_pos_embed",
]
