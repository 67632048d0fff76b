"""The tiny ViT and learnable synthetic data of the trainer and DDP tests (16x16, patch 4)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from mixfast import create_model

CLASSES = 4


# the tiny ViT's create_model arguments (16x16 grey images, patch 4, depth 2, width 32)
TINY_KWARGS = dict(
    img_size=16,
    patch_size=4,
    in_chans=1,
    num_classes=CLASSES,
    depth=2,
    embed_dim=32,
    num_heads=2,
    decoder_dim=16,
    decoder_depth=1,
    decoder_heads=2,
)


def tiny_model(seed: int = 0, drop_path: float = 0.1) -> torch.nn.Module:
    torch.manual_seed(seed)
    # drop path is random: resume must restore the RNG to match
    return create_model("vit_tiny_patch16_224", **TINY_KWARGS, drop_path_rate=drop_path)


def tiny_data(n: int = 64, seed: int = 1) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    images = torch.randn(n, 1, 16, 16, generator=gen) + labels.view(-1, 1, 1, 1).float()
    return TensorDataset(images, labels)
