"""Launches per training step, for each phase (ssl, mix, sl) and mode (eager, compiled,
graphed: whole-step CUDA graphs, and compiled+graphed).

The trainer's own step (StepRunner.step: forward, backward, the one GroupedAdamW call,
the loss and metric sums) on synthetic data, counted on the third step of each phase (the
sixth with graphs: 3 warm-up steps and the capture come first):

  cuda  kernels the GPU ran in the step (torch.profiler device events) and the host's launch
        calls (cudaLaunchKernel / cuLaunchKernel / cudaGraphLaunch runtime events)
  cpu   aten ops dispatched in the step that would each launch a kernel on CUDA in eager mode
        (views and other metadata ops excluded; TorchDispatchMode); for compiled steps this
        counts what runs outside inductor's generated code

Script:  python benchmarks/bench_launches.py [--device cuda] [--modes eager compiled graphed]
         [--depth 12] [--json OUT.json]
pytest:  pytest benchmarks/bench_launches.py   (tiny model, eager, CPU)
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterator
from functools import partial

import harness
import torch
from harness import Column
from torch.utils.data import TensorDataset

from mixfast.model import create_model
from mixfast.profile import LAUNCH_CALLS, ComputeOps  # bench_cast_once, bench_optimizer use it
from mixfast.train import MixTrainer, TrainConfig
from mixfast.train.step_runner import StepRunner

PHASES = ("ssl", "mix", "sl")
MODES = ("eager", "compiled", "graphed", "compiled+graphed")


def cuda_counts(step) -> dict[str, int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = prof.events()
    kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    launches = sum(1 for e in events if e.name in LAUNCH_CALLS)
    return {"kernels": kernels, "launch_calls": launches}


def count_steps(device: str, mode: str, depth: int, batch: int) -> dict[str, dict[str, int]]:
    """Counts of one step of each phase of a 3-epoch mix plan (SSL -> MIX -> SL)."""
    counts: dict[str, list[dict[str, int]]] = defaultdict(list)
    graphed = mode.endswith("graphed")
    counted_step = 5 if graphed else 2
    train_step = StepRunner.step

    def counted(self, phase, stage_step):
        step = partial(train_step, self, phase, stage_step)
        if len(counts[phase]) != counted_step:  # optimizer state, compilation, capture
            counts[phase].append({})
            return step()
        if device.startswith("cuda"):
            counts[phase].append(cuda_counts(step))
            return None
        ops = ComputeOps()
        with ops:
            step()
        counts[phase].append({"aten_ops": ops.count})
        return None

    torch.manual_seed(0)
    images = torch.randn(8 * batch, 3, 64, 64)
    labels = torch.randint(0, 10, (8 * batch,))
    model = create_model(
        "vit_tiny_patch16_224", img_size=64, patch_size=8, num_classes=10, depth=depth
    )
    config = TrainConfig(
        pipeline="mix", ssl_epochs=2, sl_epochs=2, mix_ratio=0.5, batch_size=batch,
        device=device, compile=mode.startswith("compiled"), cuda_graph=graphed, progress=False,
        log_every=1000,
    )  # fmt: skip
    StepRunner.step = counted
    try:
        MixTrainer(model, config).fit(None, TensorDataset(images, labels))
    finally:
        StepRunner.step = train_step
    return {phase: counts[phase][counted_step] for phase in PHASES}


def points(device: str, modes, depth: int, batch: int) -> Iterator[harness.Point]:
    for mode in modes:
        labels = dict(mode=mode, depth=depth, batch=batch)
        yield labels, partial(count_steps, device, mode, depth, batch)


def _columns(device: str) -> tuple[Column, ...]:
    keys = ("kernels", "launch_calls") if device.startswith("cuda") else ("aten_ops",)
    columns = [Column("mode", "mode", 9)]
    for phase in PHASES:
        columns += [Column(f"{phase} {key}", (phase, key), 14, "d") for key in keys]
    return tuple(columns)


def main(argv: list[str] | None = None) -> int:
    parser = harness.BenchParser(__doc__, __file__)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=None)
    parser.add_argument("--depth", type=int, default=12, help="encoder blocks (ViT-Tiny: 12)")
    parser.add_argument("--batch", type=int, default=None, help="default 256 on CUDA, 8 on CPU")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    modes = args.modes or (list(MODES) if cuda else ["eager"])
    batch = args.batch or (256 if cuda else 8)
    title = f"per training step, ViT-Tiny 64x64/8 depth {args.depth}, {batch} + {batch} images"
    harness.run(args, points(args.device, modes, args.depth, batch), _columns(args.device),
                title=title)  # fmt: skip
    return 0


# ------------------------------------------------------------------------------ pytest-benchmark


def test_launches_per_step(benchmark, bench_device):
    counts = benchmark.pedantic(
        count_steps, args=(bench_device, "eager", 2, 4), rounds=1, iterations=1
    )
    benchmark.extra_info.update({f"{p}_{k}": v for p, c in counts.items() for k, v in c.items()})
    assert all(counts[phase] for phase in PHASES)


if __name__ == "__main__":
    sys.exit(main())
