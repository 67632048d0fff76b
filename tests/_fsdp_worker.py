"""One rank of the FSDP tests: `torchrun --nproc_per_node 2 tests/_fsdp_worker.py OUT`.

In one process group (made here once, so the runs reuse it): a DDP run (OUT/ddp) and the same
stopped at step STOP (OUT/ddp-stopped), the same run
under FSDP (OUT/fsdp) and under FSDP with gradient checkpointing (OUT/fsdp-gc), the FSDP run stopped at step STOP (OUT/stopped, copied to
OUT/stopped-copy for the one-process resume) and resumed (OUT/stopped), the same stopped in the
SSL phase and resumed (OUT/stopped-ssl), an FSDP run whose rank 1 cannot read its picture
images (OUT/pictures-rank1), and the packed-forward
check (OUT/packed-rank<R>.json): the parameters of an encoder block are whole while its packed
forward runs and sharded after it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from _ddp_worker import config
from _tiny import tiny_data, tiny_model

from mixfast.checkpoint import RunFolder
from mixfast.ops import random_masking
from mixfast.train import pictures, train
from mixfast.train.sharding import shard_model

STOP = 6  # mid-epoch 2 (4 steps an epoch)
STOP_SSL = 2  # mid-epoch 1, the SSL phase


def run(out: Path, **overrides) -> None:
    """One run in the shared group. The folder is checked on every rank before any rank
    claims it (as `mixfast train` does before its rendezvous): with the group made once, a
    rank's check could otherwise meet the other rank's half-claimed folder."""
    cfg = dataclasses.replace(config(str(out), batch_size=8, accum_steps=1), **overrides)
    folder = RunFolder(cfg.out, cfg.resume)
    dist.barrier()
    if dist.get_rank() == 0:
        folder.claim()
    try:
        model = tiny_model(drop_path=0.0)
        train(cfg, model, None, tiny_data(64, seed=1), tiny_data(20, seed=2), folder=folder)
    finally:
        folder.release()


def pictures_failing_on_rank_1(out: Path) -> None:
    """An FSDP run whose rank 1 cannot read its picture images: the ranks agree to draw none
    (without that, rank 0 would wait in the reconstruction forward's all-gather for ever)."""
    real = pictures.picture_images

    def unreadable_on_rank_1(data):
        if dist.get_rank() == 1:
            raise OSError("rank 1 cannot read its picture images")
        return real(data)

    pictures.picture_images = unreadable_on_rank_1
    try:
        run(out, fsdp=True)
    finally:
        pictures.picture_images = real


def packed_check(out: Path) -> None:
    """Record each encoder block's qkv weight as the packed mix step's forward sees it (a hook
    on the Linear inside the block) and after the step's backward."""
    model = shard_model(tiny_model(drop_path=0.0), torch.device("cpu"), amp=False)
    seen = []
    for block in model.encoder.blocks:
        qkv = block.attn.qkv
        qkv.register_forward_pre_hook(lambda module, args: seen.append(_describe(module.weight)))
    images, labels = tiny_data(8, seed=3).tensors
    masking = random_masking(8, model.num_patches, 0.75, seed=0, offset=0)
    loss, _ = model.forward_mixed(images, images, labels, alpha=0.5, masking=masking)
    loss.backward()
    after = [_describe(block.attn.qkv.weight) for block in model.encoder.blocks]
    rank = dist.get_rank()
    (out / f"packed-rank{rank}.json").write_text(json.dumps({"during": seen, "after": after}))


def _describe(weight: torch.Tensor) -> dict:
    local = weight.to_local() if hasattr(weight, "to_local") else weight
    return {"type": type(weight).__name__, "shape": list(weight.shape), "local": list(local.shape)}


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    run(root / "ddp")
    run(root / "ddp-stopped", stop_after=STOP)  # resumed by 1 process in the test
    run(root / "fsdp", fsdp=True)
    run(root / "fsdp-gc", fsdp=True, grad_checkpointing=True)
    run(root / "stopped", fsdp=True, stop_after=STOP)
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.copytree(root / "stopped", root / "stopped-copy")
    dist.barrier()
    run(root / "stopped", fsdp=True, resume=True)
    run(root / "stopped-ssl", fsdp=True, stop_after=STOP_SSL)  # the heads have no AdamW state
    run(root / "stopped-ssl", fsdp=True, resume=True)
    pictures_failing_on_rank_1(root / "pictures-rank1")
    packed_check(root)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
