"""Weights files as their makers lay them out, built in the tests (nothing is downloaded): an MAE
main_pretrain.py checkpoint (facebookresearch/mae util/misc.py save_model, models_mae.py keys),
a timm ViT with random weights, and the tiny model and `mixfast train` flags of the CLI tests."""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch

# the model of tests/test_reliability.py's TINY runs (synthetic data: 10 classes, 1x16x16)
TINY_MODEL = dict(
    img_size=16,
    patch_size=4,
    in_chans=1,
    num_classes=10,
    depth=1,
    embed_dim=32,
    num_heads=2,
    decoder_dim=32,
    decoder_depth=1,
)
TINY = (
    "--dataset synthetic --img-size 16 --train-limit 80 --test-limit 20 --depth 1 "
    "--embed-dim 32 --num-heads 2 --decoder-dim 32 --decoder-depth 1 --ssl-epochs 1 "
    "--sl-epochs 1 --batch-size 16 --device cpu --no-compile --no-progress"
).split()
MAE_ARGS = dict(
    model="mae_vit_base_patch16",
    input_size=224,
    mask_ratio=0.75,
    blr=1.5e-4,
    epochs=400,
    output_dir="./output_dir",
    device="cuda",
    resume="",
)


def mae_state(model: torch.nn.Module, decoder: bool = True) -> dict[str, torch.Tensor]:
    """models_mae.py's keys: the encoder's without `encoder.` and without a head, the decoder's
    (with its fixed decoder_pos_embed, a parameter in MAE) when `decoder`."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.head."):
            continue
        if key.startswith("encoder."):
            state[key[len("encoder.") :]] = value.clone()
        elif decoder:
            state[key] = value.clone()
    if decoder:
        state["decoder_pos_embed"] = model.decoder_pos_embed.clone()
    return state


def save_mae_checkpoint(model, path: Path, norm_pix_loss: bool = True) -> Path:
    """What facebookresearch/mae util/misc.py save_model writes (no loss scaler: AMP off)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.save(
        {
            "model": mae_state(model),
            "optimizer": optimizer.state_dict(),
            "epoch": 399,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
            "args": argparse.Namespace(norm_pix_loss=norm_pix_loss, **MAE_ARGS),
        },
        path,
    )
    return path


def random_vit(**kwargs) -> torch.nn.Module:
    """timm's vit_tiny_patch16_224 (224 px, RGB, 1000 classes) with random weights, quickly."""
    vit = timm.create_model("vit_tiny_patch16_224", weight_init="skip", **kwargs)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in vit.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return vit
