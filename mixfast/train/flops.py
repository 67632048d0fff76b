"""Model FLOPs of one optimizer step per phase, counted once with FlopCounterMode (forward +
backward of one micro-batch, custom ops included through mixfast.ops.flops), so the cost of a
run does not depend on the machine's load. The optimizer update (a few FLOPs per parameter) and
evaluation are not counted. Under FSDP the forwards are the instance's (they carry the
all-gather hooks) and every rank counts at once (the all-gathers are collective)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mixfast.ops.flops import register
from mixfast.train.objectives import LossFn, Objectives
from mixfast.train.sharding import has_dtensors


def micro_batch_flops(
    model: nn.Module,
    loss_fn: LossFn,
    batch: dict[str, Any],
    alpha: torch.Tensor | None,
    mask: Any,
    params: list[nn.Parameter],
) -> int:
    """FLOPs of loss_fn's forward and the backward to `params` on `batch` (eager, no .grad
    written, RNG state restored). It calls the model class's own forwards, so a forward
    replaced on the instance (a test's hook) is not called by the count."""
    register()
    device = next(model.parameters()).device
    params = [p for p in params if p.requires_grad]  # DDP freezes a phase's unused ones
    sharded = has_dtensors(params)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with FlopCounterMode(display=False) as counter:
            net = Objectives(model, class_forwards=not sharded)
            loss, _ = loss_fn(net, batch, alpha, mask)
            if sharded:  # FSDP's hooks: the backward reduce-scatters into .grad, dropped here
                loss.backward()
            else:
                torch.autograd.grad(loss, params, allow_unused=True)
    if sharded:
        for p in params:
            p.grad = None
    return int(counter.get_total_flops())
