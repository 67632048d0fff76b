"""The resolved plan of a run: what it derives from its TrainConfig and its data, frozen.

`RunPlan` is read by attribute (the trainer's components never look a fact up by string key);
`to_dict()` is DIR/config.json["resolved"] and TrainResult.resolved, the layout of earlier
versions. Base lrs scale by effective batch / 256 (per device x devices x accumulation); each
optimizer stage warms up for `warmup_epochs` (at most the whole stage).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from mixfast.schedule import PHASES, MixSchedule
from mixfast.train.config import TrainConfig, optimizer_stages, stage_of

PRETRAIN_BETAS = (0.9, 0.95)  # MAE's pre-training AdamW
FINETUNE_BETAS = (0.9, 0.999)  # MAE's fine-tuning AdamW


@dataclass(frozen=True)
class StagePlan:
    """One optimizer stage: its AdamW and its warmup + cosine schedule."""

    lr: float  # peak lr (base lr x effective batch / 256)
    warmup_steps: int
    total_steps: int
    betas: tuple[float, float]
    layer_decay: float

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "betas": list(self.betas)}


@dataclass(frozen=True)
class RunPlan:
    """Every fact a run derives before its first step; nothing here changes while it runs."""

    world_size: int
    effective_batch: int  # samples per objective per optimizer step, all ranks
    device: str
    compile: bool  # torch.compile in effect
    amp: bool  # bf16 autocast in effect
    cuda_graph: bool  # whole-step CUDA graphs in effect
    storage: str  # "in-memory" | "streamed"
    tasks: int
    mode: str  # "two-stream" (own SSL data) | "same-images"
    steps_per_epoch: dict[str, int]  # optimizer steps of the first epoch of each phase
    epoch_phases: tuple[str, ...]  # the phase of every epoch of the plan
    epoch_steps: tuple[int, ...]  # optimizer steps of every epoch of the plan
    stages: dict[str, StagePlan]
    finetune_from: str
    schedule: dict[str, Any]  # MixSchedule.to_dict()
    budget: dict[str, Any]  # MixSchedule.budget()

    def stage_of(self, phase: str) -> str:
        return stage_of(phase, self.finetune_from)

    def stage_steps_before(self, epoch: int) -> int:
        """Optimizer steps of the epochs before `epoch` that belong to `epoch`'s stage."""
        stage = self.stage_of(self.epoch_phases[epoch])
        before = zip(self.epoch_phases[:epoch], self.epoch_steps)
        return sum(n for phase, n in before if self.stage_of(phase) == stage)

    def to_dict(self) -> dict[str, Any]:
        """DIR/config.json["resolved"]."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["stages"] = {name: stage.to_dict() for name, stage in self.stages.items()}
        data["epoch_phases"], data["epoch_steps"] = list(self.epoch_phases), list(self.epoch_steps)
        return data


def resolve_plan(
    config: TrainConfig,
    schedule: MixSchedule,
    *,
    ssl_steps: int,
    sl_steps: int,
    world: int,
    device: torch.device,
    tasks: int,
    two_stream: bool,
    cuda_graph: bool,
    storage: str,
) -> RunPlan:
    """The plan of `config` on data of `ssl_steps` / `sl_steps` optimizer steps per pass."""
    effective = config.batch_size * world * config.accum_steps
    epoch_steps = tuple(schedule.epoch_steps(ssl_steps, sl_steps))
    return RunPlan(
        world_size=world,
        effective_batch=effective,
        device=str(device),
        compile=config.compile is True or (config.compile == "auto" and device.type == "cuda"),
        amp=bool(config.amp and device.type == "cuda"),
        cuda_graph=cuda_graph,
        storage=storage,
        tasks=tasks,
        mode="two-stream" if two_stream else "same-images",
        steps_per_epoch={p: schedule.steps_per_epoch(p, ssl_steps, sl_steps) for p in PHASES},
        epoch_phases=tuple(spec.phase for spec in schedule.epochs()),
        epoch_steps=epoch_steps,
        stages=_stage_plans(config, schedule, epoch_steps, effective),
        finetune_from=config.finetune_from,
        schedule=schedule.to_dict(),
        budget=schedule.budget(
            ssl_steps=ssl_steps, sl_steps=sl_steps, batch_size=effective, tasks=tasks
        ),
    )


def _stage_plans(
    config: TrainConfig, schedule: MixSchedule, epoch_steps: tuple[int, ...], effective: int
) -> dict[str, StagePlan]:
    """The optimizer stages that have steps; layer decay 0.75 after pre-training or from
    pretrained weights, else 1.0."""
    layer_decay = config.layer_decay
    if layer_decay is None:
        layer_decay = 0.75 if schedule.ssl_epochs > 0 or config.pretrained_weights else 1.0
    stages = {}
    for stage, phases in optimizer_stages(config.finetune_from).items():
        epochs = sum(p.epochs for p in schedule.phases if p.name in phases)
        total = sum(n for e, n in zip(schedule.epochs(), epoch_steps) if e.phase in phases)
        if total == 0:
            continue
        pretrain = stage == "pretrain"
        stages[stage] = StagePlan(
            lr=(config.ssl_blr if pretrain else config.blr) * effective / 256,
            warmup_steps=min(round(config.warmup_epochs * total / epochs), total),
            total_steps=total,
            betas=PRETRAIN_BETAS if pretrain else FINETUNE_BETAS,
            layer_decay=1.0 if pretrain else layer_decay,
        )
    return stages
