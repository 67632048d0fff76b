"""`mixfast profile`: where the steps of a run's phases spend their time.

Takes `train`'s flags and builds the same run (data, model, settings), writes no run files,
and profiles each phase of its plan that has steps: --warmup steps, then --steps timed steps
and --steps steps under torch.profiler. OUT gets a Chrome / Perfetto trace per phase
(trace-<phase>.json, open it at ui.perfetto.dev) and profile.json (the tables' numbers, the
commit and the command); a table per phase is printed (mixfast/profile.py says how it counts).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from mixfast import experiment
from mixfast.cli.args import UsageError, add_run_arguments, spec_from_args
from mixfast.profile import (
    DATA,
    OPTIMIZER,
    STEP,
    WAIT,
    ComputeOps,
    analyze_trace,
    device_peak,
    peak_memory,
    report_text,
    sync,
)
from mixfast.provenance import provenance
from mixfast.train import MixTrainer, distributed


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "profile",
        help="profile the steps of each phase of a run",
        description="Profile the training steps of each phase of a run (train's flags).",
    )
    add_run_arguments(parser)
    for action in parser._actions:
        if action.dest == "out":
            action.help = "folder for the traces and profile.json (default: runs/profile-<time>)"
    parser.add_argument(
        "--warmup", type=int, default=3, metavar="N", help="warm-up steps per phase (default: 3)"
    )
    parser.add_argument(
        "--steps", type=int, default=5, metavar="K", help="profiled steps per phase (default: 5)"
    )
    parser.set_defaults(handler=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> Callable[[], int]:
    """Set up (bad flags exit 2 before any work), then return the profile to run."""
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.resume:
        raise UsageError("--resume: a profile continues no run (it writes no checkpoint)")
    if distributed.env_world() > 1:
        raise UsageError("mixfast profile runs in one process, not under torchrun")
    if args.out is None:
        args.out = f"runs/profile-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = spec_from_args(args)
    out = Path(spec.train.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: not a folder")
    config = dataclasses.replace(spec.train, out=None, save_every=0, stop_after=0)
    data = experiment.load_data(spec)
    experiment.check_data_fits(spec, data)
    model = experiment.build_model(spec, data)
    config = experiment.with_augment(config, data, spec.data)
    trainer = MixTrainer(model, config)
    trainer.prepare(*data.fit_inputs())  # no folder: the trainer writes nothing
    name = spec.data.dataset
    print(f"mixfast profile: {config.pipeline} on {name}: {data.summary()}", file=sys.stderr)

    def work() -> int:
        try:
            out.mkdir(parents=True, exist_ok=True)
            report = profile_run(trainer, out, args.warmup, args.steps)
        finally:
            trainer.dist.close()
        report = {**provenance(), "plan": trainer.plan.to_dict(), **report}
        (out / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
        print(report_text(report))
        print(f"-> {out}")
        return 0

    return work


# ------------------------------------------------------------------------------ the profile


@contextlib.contextmanager
def regions(trainer: MixTrainer):
    """The data loading and optimizer regions of the trace: wrappers on the trainer's
    PhaseBatches.next and OptimizerStages.step (instance attributes, removed after)."""
    batches, stages = trainer.batches, trainer.stages
    fetch, update = batches.next, stages.step

    def next_batch(*args, **kwargs):
        with record_function(DATA):
            return fetch(*args, **kwargs)

    def step(*args, **kwargs):
        with record_function(OPTIMIZER):
            return update(*args, **kwargs)

    batches.next, stages.step = next_batch, step
    try:
        yield
    finally:
        del batches.next, stages.step


def phases_with_steps(plan) -> list[tuple[str, int]]:
    """(phase, its first epoch's index) of each phase of the plan that has steps, in order."""
    first: dict[str, int] = {}
    for index, (phase, steps) in enumerate(zip(plan.epoch_phases, plan.epoch_steps)):
        if steps and phase not in first:
            first[phase] = index
    return list(first.items())


def profile_run(trainer: MixTrainer, out: Path, warmup: int, steps: int) -> dict[str, Any]:
    """Profile each phase of a prepared trainer's plan, its traces written to `out`; returns
    what profile.json holds (less the provenance and the plan)."""
    device = trainer.runner.device
    peak = device_peak(device)
    phases = {}
    with regions(trainer):
        for phase, epoch in phases_with_steps(trainer.plan):
            print(f"mixfast profile: {phase}: {warmup} + {steps} + {steps} steps", file=sys.stderr)
            phases[phase] = profile_phase(trainer, phase, epoch, out, warmup, steps, peak)
    return {"device": peak["name"], "torch": torch.__version__, "peak": peak, "phases": phases}


def profile_phase(
    trainer: MixTrainer, phase: str, epoch: int, out: Path, warmup: int, steps: int, peak
) -> dict[str, Any]:
    """Enter `phase` as the trainer does at its first epoch (optimizer stage, network, streams,
    meters), count its step FLOPs, then: `warmup` steps, `steps` timed steps, `steps` steps
    under the profiler (each a STEP region ending in a device sync), one counted step (CPU)."""
    runner, pos, device = trainer.runner, trainer.position, trainer.runner.device
    pos.epoch, pos.step_in_epoch = epoch, 0
    if trainer.stages.enter(phase):
        runner.new_stage()
    runner.net(phase)
    for stream in trainer.batches.of_phase(phase):
        stream.new_pass()
    trainer.meters.start_epoch(pos.global_step)
    trainer.model.train()
    flops = runner.count_flops(phase)  # as the trainer counts it: once per phase, untimed
    in_epoch, stage_start = trainer.plan.epoch_steps[epoch], trainer.plan.stage_steps_before(epoch)
    first_step, cuda = pos.global_step, device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:  # the epoch's steps come round again when the profile wants more
        pos.step_in_epoch = (pos.global_step - first_step) % in_epoch
        runner.step(phase, stage_start + pos.step_in_epoch)
        pos.global_step += 1

    for _ in range(warmup):
        step()
    sync(device)
    clock = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    step_s = (time.perf_counter() - clock) / steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            with record_function(STEP):
                step()
                with record_function(WAIT):
                    sync(device)
    trace = out / f"trace-{phase}.json"
    prof.export_chrome_trace(str(trace))
    found = analyze_trace(json.loads(trace.read_text()))
    if cuda:
        launches = {k: found[k] / steps for k in ("kernels", "launch_calls")}
    else:
        ops = ComputeOps()
        with ops:
            step()
        launches = {"aten_compute_ops": sum(ops.counts.values())}
    memory, memory_kind = peak_memory(device)
    achieved = flops / step_s / trainer.dist.world
    return {
        "warmup": warmup, "steps": steps, "step_s": step_s, "trace": trace.name, **found,
        "launches_per_step": launches, "flops_per_step": flops, "achieved_flops": achieved,
        "mfu": achieved / peak["flops"], "peak_memory_bytes": memory, "peak_memory": memory_kind,
    }  # fmt: skip


__all__ = ["add_parser", "cmd_profile", "phases_with_steps", "profile_phase", "profile_run"]
