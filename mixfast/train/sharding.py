"""`--fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) over a MixMAE model.

Units (each all-gathers its parameters before its forward and frees them after; gradients are
reduce-scattered per unit in the backward):

    every encoder block (timm Block)   forward, and `forward_packed` (the packed mix step)
    every decoder block                forward
    the heads (timm's head + extra)    forward, one unit
    the model itself (the root)        the rest (patch embedding, tokens, norms, decoder
                                       embedding / prediction) around forward_sl / forward_mae
                                       / forward_mixed / forward_features

The root is the model, not the `Objectives` router of the step: evaluation and the pictures
call the model's forwards directly, and `Objectives` is rebuilt per phase while the sharding
happens once, before the optimizer is made (the optimizer must hold the sharded parameters).
The packed path calls no `Block.forward`, so each encoder block gets a `forward_packed` method
registered with `register_fsdp_forward_method` (mixfast/model/packed.py `packed_forward` calls
it): its hooks all-gather the block's parameters around the packed call as around `forward`.

Mixed precision (CUDA with bf16 autocast only): bf16 parameters in the forward and backward,
fp32 gradient reduction, fp32 sharded parameters and AdamW state. The mesh is one dimension over
every process of the group (gloo on CPU, NCCL on CUDA); a process outside torchrun shards over
a group of one (mixfast/train/distributed.py).
"""

from __future__ import annotations

import contextlib
import types
import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.distributed.tensor import DTensor

from mixfast.checks import SettingError
from mixfast.model.packed import _block_packed
from mixfast.train.config import TrainConfig
from mixfast.train.plan import RunPlan

ROOT_FORWARDS = ("forward_sl", "forward_mae", "forward_mixed", "forward_features")
# forward_ssl is not registered: it calls forward_mae, and nested hooks would reshard early.


def shard_model(
    model: nn.Module, device: torch.device, *, amp: bool, compile_backend: str | None = None
) -> nn.Module:
    """Shard `model` (a MixMAE: `encoder.blocks`, `decoder_blocks`, heads) in place over every
    process of the default group; returns it. `amp`: bf16 parameters with fp32 reduction (CUDA
    only). `compile_backend`: torch.compile each block (forward and packed forward) with it."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy()
    if amp and device.type == "cuda":
        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False
        )
    shard = dict(mesh=mesh, mp_policy=policy)
    for block in model.encoder.blocks:
        packed = types.MethodType(_block_packed, block)
        if compile_backend is not None:
            block.compile(backend=compile_backend)
            packed = torch.compile(packed, backend=compile_backend)
        fully_shard(block, **shard)
        block.forward_packed = packed
        register_fsdp_forward_method(block, "forward_packed")
    for block in model.decoder_blocks:
        if compile_backend is not None:
            block.compile(backend=compile_backend)
        fully_shard(block, **shard)
    heads = [
        h
        for h in (model.encoder.head, *model.extra_heads)
        if next(h.parameters(), None) is not None
    ]
    if heads:
        fully_shard(heads, **shard)
    fully_shard(model, **shard)
    for name in ROOT_FORWARDS:
        register_fsdp_forward_method(model, name)
    # forward_mae returns a view (pred[:, 1:]); the step never writes into it in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    return model


def place_model(model: nn.Module, config: TrainConfig, plan: RunPlan) -> None:
    """What the run's settings do to the built model before its optimizer is made: gradient
    checkpointing, and under `fsdp` the FSDP2 units (per-block torch.compile when the plan
    compiles: the step's loss is then not compiled whole)."""
    model.set_grad_checkpointing(config.grad_checkpointing)
    if not config.fsdp:
        return
    if not all(hasattr(model, name) for name in ("encoder", "decoder_blocks", "extra_heads")):
        raise SettingError(
            f"{{fsdp}} shards a mixfast MixMAE (encoder blocks, decoder blocks, heads); "
            f"got {type(model).__name__}"
        )
    backend = config.compile_backend if plan.compile else None
    shard_model(model, torch.device(plan.device), amp=plan.amp, compile_backend=backend)


@contextlib.contextmanager
def gradient_sync_off(model: nn.Module) -> Iterator[None]:
    """The micro-batches of an accumulated step before its last: gradients accumulate unsharded
    and are reduce-scattered once, in the last micro-batch's backward (DDP's no_sync)."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def has_dtensors(params: list[nn.Parameter]) -> bool:
    return any(isinstance(p, DTensor) for p in params)


__all__ = ["gradient_sync_off", "has_dtensors", "place_model", "shard_model"]
