"""Peak resident memory per rank of MixTraining steps of an MAE ViT at 224 under DDP, FSDP2
and FSDP2 + activation checkpointing: one rank of
`torchrun --nproc_per_node 2 measure.py MODEL MODE BATCH OUT.json` (gloo, CPU).

The model is built and wrapped (DDP) or sharded (FSDP2, mixfast.train.sharding.shard_model)
first; then the kernel's high-water mark of this process's resident set (VmHWM) is reset
(`/proc/self/clear_refs` 5) and STEPS mix steps run (forward_mixed on the full and the masked
view of BATCH images, backward, GroupedAdamW: the weights, gradients and both AdamW moments
exist by the end). The record: VmHWM after the steps (the peak of the steps, building not
included), VmRSS before them, the parameter count. Memory that glibc keeps after a free is
still resident, as a process's memory is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STEPS = 2
MODELS = {  # MAE's decoders: 512 wide, 8 blocks, 16 heads
    "vit_base_patch16_224": dict(decoder_dim=512, decoder_depth=8, decoder_heads=16),
    "vit_large_patch16_224": dict(decoder_dim=512, decoder_depth=8, decoder_heads=16),
}


def status_kib(field: str) -> int:
    """VmHWM / VmRSS of this process in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main(model_name: str, mode: str, batch: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from mixfast import create_model
    from mixfast.ops import random_masking
    from mixfast.optim import make_adamw, set_lr
    from mixfast.provenance import git_commit
    from mixfast.train.objectives import Objectives
    from mixfast.train.sharding import shard_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=1000, **MODELS[model_name])
    params = sum(p.numel() for p in model.parameters())
    model.set_grad_checkpointing(mode == "fsdp+ac")
    if mode == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(Objectives(model))
    else:
        net = Objectives(shard_model(model, torch.device("cpu"), amp=False))
    optimizer = make_adamw(model, weight_decay=0.05, layer_decay=0.75, betas=(0.9, 0.999))
    set_lr(optimizer, 1e-4)
    images = torch.randn(batch, 3, 224, 224)
    labels = torch.randint(0, 1000, (batch,))
    dist.barrier()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status_kib("VmRSS")
    for step in range(STEPS):
        masking = random_masking(batch, model.num_patches, 0.75, seed=0, offset=step)
        loss, _ = net("mixed", images, images, labels, alpha=torch.tensor(0.5), masking=masking)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = status_kib("VmHWM")
    record = dict(
        model=model_name, mode=mode, batch=batch, steps=STEPS, world=dist.get_world_size(),
        rank=dist.get_rank(), params=params, rss_before_mib=before / 1024,
        peak_rss_mib=peak / 1024, loss=float(loss.detach()), commit=git_commit(),
    )  # fmt: skip
    path = Path(out).with_suffix(f".rank{dist.get_rank()}.json")
    path.write_text(json.dumps(record, indent=2) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
