"""The training step seen as an op trace (TorchDispatchMode): three consecutive steps of each
phase, with different masks, learning rates and a(t), run the same ops on the same shapes,
make no host sync, read lr and a(t) from device tensors, and call the optimizer once."""

from __future__ import annotations

from collections import defaultdict

import torch
from _tiny import tiny_data, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mixfast.optim import GroupedAdamW
from mixfast.train import MixTrainer, TrainConfig
from mixfast.train.step_runner import StepRunner

SYNC_OPS = ("_local_scalar_dense", "nonzero", "is_nonzero", "item")


class OpTrace(TorchDispatchMode):
    """(op name, shapes of its tensor arguments) of every aten call."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat, _ = tree_flatten((args, kwargs or {}))
        shapes = tuple(tuple(a.shape) for a in flat if isinstance(a, torch.Tensor))
        self.ops.append((str(func.overloadpacket), shapes))
        return func(*args, **(kwargs or {}))


def test_three_steps_of_each_phase_trace_alike(monkeypatch):
    traces: dict[str, list[OpTrace]] = defaultdict(list)
    optimizer_calls: list[int] = []
    train_step = StepRunner.step

    def traced_step(self, phase, stage_step):
        calls_before = len(optimizer_calls)
        trace = OpTrace()
        with trace:
            train_step(self, phase, stage_step)
        traces[phase].append(trace)
        assert len(optimizer_calls) - calls_before == 1, "one optimizer call per step"

    step = GroupedAdamW.step

    def counted_step(self, *args, **kwargs):
        optimizer_calls.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(StepRunner, "step", traced_step)
    monkeypatch.setattr(GroupedAdamW, "step", counted_step)
    # SSL x 1 -> MIX x 1 -> SL x 1, 4 steps each; lr warms up and decays, a(t) moves
    config = TrainConfig(
        pipeline="mix", ssl_epochs=2, sl_epochs=2, mix_ratio=0.5, batch_size=16, blr=5e-3,
        ssl_blr=5e-3, warmup_epochs=0.5, progress=False, log_every=100, device="cpu",
        compile=False,
    )  # fmt: skip
    trainer = MixTrainer(tiny_model(drop_path=0.0), config)
    trainer.fit(None, tiny_data(64), None)
    assert set(traces) == {"ssl", "mix", "sl"}
    for phase, phase_traces in traces.items():
        # the first step of a stage creates the optimizer state; compare steps 2, 3 and 4
        second, third, fourth = (t.ops for t in phase_traces[1:4])
        assert second == third == fourth, f"{phase}: the op sequence changes between steps"
        synced = [op for op, _ in second if op.split(".")[-1] in SYNC_OPS]
        assert not synced, f"{phase}: host syncs {synced}"
        assert any(op.endswith("fill_") for op, _ in second), "lr written into its tensor"
    mix_ops = [op for op, _ in traces["mix"][1].ops]
    assert "aten.select" in mix_ops  # a(t): a slice of the device table, not a new tensor
