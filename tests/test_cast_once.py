"""ops.cast_once and Objectives(cast_dtype=...): the per-Linear autocast casts, bit for bit, in
one kernel each way (CPU autocast in bf16 stands in for CUDA's)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from _tiny import tiny_model
from torch.utils._python_dispatch import TorchDispatchMode

from mixfast.ops import random_masking
from mixfast.ops.cast_once import cast_once
from mixfast.train.objectives import Objectives, weight_cast


class OpCounts(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_cast_once_values_and_gradients_equal_per_tensor_casts():
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    frozen = torch.randn(2, 2)  # no gradient asked
    unused = torch.randn(4, requires_grad=True)  # its view takes no part in the loss
    casts = cast_once([*params, frozen, unused], torch.bfloat16)
    for cast, p in zip(casts, [*params, frozen, unused], strict=True):
        assert cast.dtype == torch.bfloat16 and torch.equal(cast, p.to(torch.bfloat16))
    loss = (casts[0].float() ** 2).sum() + (casts[1].float() * 3).sum() + casts[2].float().sum()
    loss.backward()
    expected = [2 * p.detach().to(torch.bfloat16).float() for p in params[:1]] + [
        torch.full((7,), 3.0)
    ]
    for p, grad in zip(params, expected, strict=True):
        assert p.grad.dtype == torch.float32 and torch.equal(p.grad, grad)
    assert unused.grad is None


@pytest.mark.parametrize(
    "params, match",
    [
        ([], "at least one"),
        ([torch.zeros(2), torch.zeros(2, dtype=torch.float64)], r"params\[1\]"),
    ],
)
def test_cast_once_refuses_bad_input(params, match):
    with pytest.raises(ValueError, match=match):
        cast_once(params, torch.bfloat16)
    with pytest.raises(ValueError, match="floating"):
        cast_once([torch.zeros(2)], torch.int32)


def _step(model, cast: bool, kind: str) -> tuple[torch.Tensor, dict, Counter]:
    """Loss, gradients and aten op counts of one forward + backward under bf16 autocast."""
    torch.manual_seed(3)
    images, labels = torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,))
    mask = random_masking(8, 16, 0.75, seed=0)
    net = Objectives(model, cast_dtype=torch.bfloat16 if cast else None)
    model.zero_grad(set_to_none=True)
    with OpCounts() as trace:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if kind == "ssl":
                loss = net("ssl", images, mask_ratio=0.75, masking=mask)
            elif kind == "sl":
                loss = F.cross_entropy(net("sl", images).float(), labels)
            else:
                alpha = torch.tensor(0.3)
                loss, _ = net("mixed", images, images, labels, alpha=alpha, masking=mask)
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return loss.detach(), grads, trace.counts


@pytest.mark.parametrize("kind", ["ssl", "sl", "mixed"])
def test_objectives_cast_once_equals_autocast_and_launches_fewer_casts(kind):
    model = tiny_model(drop_path=0.0)
    linear = [p for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()]
    _step(model, False, kind)  # the first mixed forward also builds what it caches
    loss, grads, counts = _step(model, False, kind)
    loss_once, grads_once, counts_once = _step(model, True, kind)
    assert torch.equal(loss, loss_once)
    for name, grad in grads.items():  # same values, and None where autocast left None
        once = grads_once[name]
        assert (grad is None) == (once is None), name
        assert grad is None or torch.equal(grad, once), name
    # autocast casts each Linear parameter the step uses forward and its gradient backward;
    # cast_once makes one cat each way instead (the activations' casts are the same in both)
    ids = {id(p) for p in linear}
    used = sum(p.grad is not None for p in model.parameters() if id(p) in ids)
    assert used >= 6
    assert counts["_to_copy"] - counts_once["_to_copy"] == 2 * used
    assert counts_once["cat"] - counts["cat"] == 2


def test_objectives_cast_once_is_off_without_autocast_or_under_another_dtype():
    model = tiny_model(drop_path=0.0)
    net = Objectives(model, cast_dtype=torch.bfloat16)
    with OpCounts() as trace:
        net("sl", torch.randn(2, 1, 16, 16))
    assert trace.counts["_to_copy"] == 0 and "new_empty" not in trace.counts
    with OpCounts() as trace, torch.autocast("cpu", dtype=torch.float16):
        net("sl", torch.randn(2, 1, 16, 16))
    assert "new_empty" not in trace.counts  # fp16 autocast: its own casts, not bf16 ones


def test_weight_cast_is_bf16_under_amp_except_under_ddp():
    assert weight_cast(amp=True, distributed=False) is torch.bfloat16
    assert weight_cast(amp=True, distributed=True) is None  # keeps DDP's backward overlap
    assert weight_cast(amp=False, distributed=False) is None
