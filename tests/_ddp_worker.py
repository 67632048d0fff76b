"""One rank of the DDP test: `torchrun --nproc_per_node 2 tests/_ddp_worker.py OUT`.

Also the home of the tiny model and data both sides of the comparison use.
"""

from __future__ import annotations

import sys

import torch
from torch.utils.data import TensorDataset

from mixfast import create_model
from mixfast.trainer import TrainConfig, train

CLASSES = 4


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(
        "vit_tiny_patch16_224",
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


def tiny_data(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    images = torch.randn(n, 1, 16, 16, generator=gen) + labels.view(-1, 1, 1, 1).float()
    return TensorDataset(images, labels)


def config(out: str | None, *, batch_size: int, accum_steps: int) -> TrainConfig:
    # SSL x 1 -> MIX x 1 -> SL x 1: every phase, and the unused parameters of SSL and SL
    return TrainConfig(
        pipeline="mix",
        ssl_epochs=2,
        sl_epochs=2,
        mix_ratio=0.5,
        batch_size=batch_size,
        accum_steps=accum_steps,
        blr=5e-3,
        ssl_blr=5e-3,
        warmup_epochs=0.5,
        clip_grad=1.0,
        device="cpu",
        out=out,
        progress=False,
        log_every=1,
    )


def main(out: str) -> None:
    torch.set_num_threads(1)
    result = train(
        config(out, batch_size=8, accum_steps=1),
        tiny_model(),
        None,
        tiny_data(64, seed=1),
        tiny_data(20, seed=2),
    )
    assert result.resolved["world_size"] == 2 and result.resolved["effective_batch"] == 16


if __name__ == "__main__":
    main(sys.argv[1])
