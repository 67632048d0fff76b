"""GroupedAdamW: one update for every layer-decay group (or torch's fused kernel per group),
equal to torch's per-group AdamW."""

from __future__ import annotations

import copy

import pytest
import torch
from _tiny import tiny_model

from mixfast.optim import GroupedAdamW, make_adamw, param_groups, set_lr


def torch_adamw(model, layer_decay):
    groups = param_groups(model, 0.05, layer_decay)
    for group in groups:
        group.pop("names")
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.95), foreach=False)


def run(model, optimizer, lrs, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for lr in lrs:
        set_lr(optimizer, lr)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("layer_decay", [1.0, 0.75])
def test_equals_torch_adamw_per_group(layer_decay, fused):
    ours, reference = tiny_model(seed=3), tiny_model(seed=3)
    grouped = make_adamw(
        ours, weight_decay=0.05, layer_decay=layer_decay, betas=(0.9, 0.95), fused=fused
    )
    assert isinstance(grouped, GroupedAdamW) and grouped.fused is fused
    lrs = [1e-3, 3e-3, 2e-3, 5e-4, 1e-4]
    run(ours, grouped, lrs)
    run(reference, torch_adamw(reference, layer_decay), lrs)
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_loads_a_torch_adamw_state():
    """A checkpoint of the per-group AdamW (older runs) resumes into GroupedAdamW."""
    first, second = tiny_model(seed=1), tiny_model(seed=1)
    old = torch_adamw(first, 0.75)
    run(first, old, [1e-3, 1e-3])
    second.load_state_dict(first.state_dict())
    grouped = make_adamw(second, weight_decay=0.05, layer_decay=0.75, betas=(0.9, 0.95))
    grouped.load_state_dict(copy.deepcopy(old.state_dict()))  # as from a file: no sharing
    run(first, old, [2e-3, 1e-3], seed=5)
    run(second, grouped, [2e-3, 1e-3], seed=5)
    for a, b in zip(first.parameters(), second.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_learning_rate_is_a_device_tensor():
    model = tiny_model()
    optimizer = make_adamw(model, weight_decay=0.0, layer_decay=1.0, betas=(0.9, 0.999))
    lr = optimizer.lr
    set_lr(optimizer, 0.25)
    assert optimizer.lr is lr and float(lr) == 0.25  # written in place
