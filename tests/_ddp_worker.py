"""One rank of the DDP test: `torchrun --nproc_per_node 2 tests/_ddp_worker.py OUT`.

The tiny model and data both sides of the comparison use come from tests/_tiny.py.
"""

from __future__ import annotations

import sys

import torch
from _tiny import tiny_data, tiny_model

from mixfast.train import TrainConfig, train


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
        tiny_model(drop_path=0.0),  # DDP equals 1 process only without random drop_path
        None,
        tiny_data(64, seed=1),
        tiny_data(20, seed=2),
    )
    assert result.resolved["world_size"] == 2 and result.resolved["effective_batch"] == 16


if __name__ == "__main__":
    main(sys.argv[1])
