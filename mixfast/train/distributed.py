"""torchrun/DDP: the process group, rank-aware reductions and the device of this rank.

WORLD_SIZE/RANK/LOCAL_RANK come from the environment; NCCL on CUDA, gloo on CPU. Rank 0 writes
every file and prints every summary line. `--fsdp` outside torchrun runs in a group of one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    created: bool = False  # this process created the group (and destroys it)
    sharded: bool = False  # FSDP: every forward is collective, so ranks forward in lockstep

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def all_max(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def close(self) -> None:
        if self.created:
            dist.destroy_process_group()


def env_world() -> int:
    """Processes of this torchrun job (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """This process's rank from torchrun's environment (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def init_distributed(device: str, fsdp: bool = False) -> Dist:
    """The process group for `device` ("auto", "cpu", "cuda", ...) under torchrun, else none;
    with `fsdp` outside torchrun a group of one process (FSDP2 shards over a device mesh)."""
    world = env_world()
    if world <= 1 and not fsdp:
        return Dist()
    created = False
    if not dist.is_initialized():
        rank = env_rank()
        store = attempt_store(rank, world) if world > 1 else dist.HashStore()
        dist.init_process_group(
            "nccl" if wants_cuda(device) else "gloo", store=store, rank=rank, world_size=world
        )
        created = True
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Dist(dist.get_world_size(), dist.get_rank(), local, created, fsdp)


def attempt_store(rank: int, world: int) -> dist.Store:
    """torchrun's store under a prefix of this attempt. torchrun --max-restarts keeps one store
    for every attempt; without the prefix a restarted worker can read a dead worker's address
    from the attempt before and fail to connect (seen with gloo: "connectFullMesh failed")."""
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"mixfast/attempt-{attempt}", store)


def resolve_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device='cpu'")
    if name == "cuda":
        return torch.device("cuda", d.local_rank if d.enabled else torch.cuda.current_device())
    return torch.device(name)


def wrap_ddp(
    net: nn.Module, trainable: list[nn.Parameter], probe: Callable[[], torch.Tensor], device
) -> nn.Module:
    """DistributedDataParallel over `net` with the parameters that `probe()` (one tiny
    forward of the phase) leaves without a gradient frozen, so find_unused_parameters stays off.
    """
    for p in trainable:
        p.requires_grad_(True)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        grads = torch.autograd.grad(probe(), trainable, allow_unused=True)
    for p, g in zip(trainable, grads):
        if g is None:
            p.requires_grad_(False)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)
