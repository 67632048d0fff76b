"""Activation memory per sample of one MixTraining step (forward_mixed on the full and the
masked view of the same images), counted with torch's own accounting of what the backward
keeps: every tensor the forward saves for backward passes `saved_tensors_hooks`, and the
distinct storages (parameters excluded) are summed. One process, batch 1, fp32 on CPU.

With activation checkpointing the hooks see what the encoder blocks' checkpoints do not hold;
each checkpointed block also keeps its input ([tokens, width] fp32 per sample), added here.
Usage: python activations.py OUT.json (ViT-B/16, ViT-L/16, ViT-H/14 at 224, MAE decoders).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = ("vit_base_patch16_224", "vit_large_patch16_224", "vit_huge_patch14_224")
DECODER = dict(decoder_dim=512, decoder_depth=8, decoder_heads=16)  # MAE's


def saved_bytes(model, checkpointing: bool) -> int:
    """Bytes the backward of one sample's mix step keeps (see the module docstring)."""
    import torch

    from mixfast.ops import random_masking

    model.set_grad_checkpointing(checkpointing)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    images = torch.randn(1, 3, *model.encoder.patch_embed.img_size)
    labels = torch.zeros(1, dtype=torch.long)
    masking = random_masking(1, model.num_patches, 0.75, seed=0, offset=0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = model.forward_mixed(images, images, labels, alpha=0.5, masking=masking)
    total = sum(storages.values())
    if checkpointing:  # each block's input: full view + kept view tokens
        tokens = (model.num_patches + 1) + (masking.ids_keep.shape[1] + 1)
        total += len(model.encoder.blocks) * tokens * model.encoder.embed_dim * 4
    del loss
    return total


def main(out: str) -> None:
    import torch

    from mixfast import create_model
    from mixfast.provenance import git_commit

    torch.set_num_threads(1)
    rows = []
    for name in MODELS:
        model = create_model(name, num_classes=1000, **DECODER)
        row = dict(model=name, params=sum(p.numel() for p in model.parameters()))
        row["activations_mib"] = saved_bytes(model, False) / 2**20
        row["activations_ac_mib"] = saved_bytes(model, True) / 2**20
        rows.append(row)
        print(row, flush=True)
        del model
    record = dict(batch=1, dtype="float32", device="cpu", rows=rows, commit=git_commit())
    Path(out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
