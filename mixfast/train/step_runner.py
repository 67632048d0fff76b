"""`StepRunner`: one optimizer step of a phase, eager (with gradient accumulation), compiled or
replayed from a CUDA graph, and the model FLOPs of such a step.

It owns what a step needs besides the data and the optimizer: the phase's network (the model
behind `Objectives`, under DDP with the phase's unused parameters frozen), its loss function
(built once per phase, torch.compiled once when the plan says so), the MAE masks of each
micro-batch (keyed by the micro-batch's global index, so DDP masks as one process does), a(t)
and the SSL rows of a mix step (MixSteps), and the whole-step CUDA graphs (graphs.py).

Host syncs: none in the hot path, except `nonfinite="skip"`, which reads the gradient norm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mixfast.model import MixModel
from mixfast.schedule import PHASES
from mixfast.train.config import TrainConfig
from mixfast.train.distributed import Dist, wrap_ddp
from mixfast.train.ema import ModelEma
from mixfast.train.flops import micro_batch_flops
from mixfast.train.graphs import StepGraphs, whole_step
from mixfast.train.meters import Meters, Position
from mixfast.train.mix_steps import MixSteps
from mixfast.train.objectives import (
    LossFn,
    Objectives,
    PhaseBatches,
    make_loss,
    phase_masks,
    weight_cast,
)
from mixfast.train.optimizer_stage import OptimizerStages
from mixfast.train.plan import RunPlan
from mixfast.train.sharding import gradient_sync_off

PROBE_ROWS = 2  # samples per objective of the DDP unused-parameter probe


class StepRunner:
    """Steps of `model` on `batches`, optimized by `stages`, counted by `meters` at
    `position` (its micro_step keys the masks; the trainer moves the rest)."""

    def __init__(
        self,
        model: MixModel,
        config: TrainConfig,
        plan: RunPlan,
        batches: PhaseBatches,
        stages: OptimizerStages,
        meters: Meters,
        position: Position,
        mix: MixSteps,
        dist: Dist,
        graphs: StepGraphs | None,
        on_skip: Callable[[], None],
    ) -> None:
        self.model, self.config, self.plan = model, config, plan
        self.batches, self.stages, self.meters = batches, stages, meters
        self.position, self.mix, self.dist, self.graphs = position, mix, dist, graphs
        self.on_skip = on_skip  # nonfinite="skip" dropped a step
        self.tasks = len(batches.sl_streams)
        self._losses = {phase: make_loss(phase, config, self.tasks) for phase in PHASES}
        self._compiled: dict[str, LossFn] = {}
        self._net: nn.Module | None = None
        self._net_phase: str | None = None
        self.ema = ModelEma.of(model, config)  # model_ema: the EMA weights (ema.py)

    # ------------------------------------------------------------------ what a step reads

    def new_stage(self) -> None:
        """A new optimizer: DDP wraps again (its frozen set may differ) and the previous
        stage's graphs, which step the old optimizer, go."""
        self._net_phase = None
        if self.graphs is not None:
            stage = self.stages.name
            self.graphs.forget(lambda key: key[1] == stage)

    def net(self, phase: str) -> nn.Module:
        """The model as `phase` calls it: under DDP with the phase's unused parameters frozen
        (under FSDP the model is sharded already: sharding.py)."""
        if self._net_phase != phase:
            # ops/cast_once.py; not under FSDP, whose units hold bf16 weights on CUDA already
            cast = weight_cast(self.plan.amp, self.dist.enabled or self.config.fsdp)
            net = Objectives(self.model, cast_dtype=cast)
            if self.dist.enabled and not self.config.fsdp:
                inputs = self.probe_inputs(phase, PROBE_ROWS)
                probe = lambda: self._losses[phase](net, *inputs)[0]  # noqa: E731
                net = wrap_ddp(net, self.stages.trainable, probe, self.device)
            self._net, self._net_phase = net, phase
        return self._net

    def loss_fn(self, phase: str) -> LossFn:
        """The phase's loss, torch.compiled once when the plan compiles."""
        if not self.plan.compile or self.config.fsdp:  # FSDP: compiled per block (sharding.py)
            return self._losses[phase]
        if phase not in self._compiled:
            backend = self.config.compile_backend
            self._compiled[phase] = torch.compile(self._losses[phase], backend=backend)
        return self._compiled[phase]

    def probe_inputs(self, phase: str, rows: int, ssl_rows: int | None = None) -> tuple:
        """(batch, a(t), masks) of `rows` samples per objective, taken without moving any
        stream: the DDP probe's and the FLOP count's inputs."""
        batch = self.batches.sample(phase, rows, ssl_rows)
        alpha = torch.tensor(0.5, device=self.device) if phase == "mix" else None
        return batch, alpha, self.masks(phase, batch)

    def masks(self, phase: str, batch: dict[str, Any]):
        """Masks keyed by the micro-batch's global index: micro-batch m of rank r is global
        micro-batch m * W + r, the one a single process meets there, so DDP masks alike."""
        return phase_masks(self.model, self.config, phase, batch, self._offset())

    def _offset(self) -> int:
        return self.position.micro_step * self.dist.world + self.dist.rank

    @property
    def device(self) -> torch.device:
        return torch.device(self.plan.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.plan.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _alpha(self, phase: str) -> torch.Tensor | None:
        return self.mix.alpha(self.position) if phase == "mix" else None

    def ssl_rows(self, phase: str) -> int | None:
        return self.mix.ssl_rows(self.position) if phase == "mix" else None

    # ------------------------------------------------------------------ the step

    def step(self, phase: str, stage_step: int) -> None:
        """One optimizer step of `phase`, the stage's step `stage_step`."""
        self.stages.set_lr(stage_step)
        self.ema.before_step(phase, self.model)
        if self.graphs is not None:
            return self._graphed_step(phase)
        net, loss_fn, accum = self.net(phase), self.loss_fn(phase), self.config.accum_steps
        for micro in range(accum):
            batch = self.batches.next(phase, self.ssl_rows(phase), self._offset())
            masking = self.masks(phase, batch)
            sync = micro == accum - 1 or not self.dist.enabled
            with self._no_sync(net, sync), self.autocast():
                loss, parts = loss_fn(net, batch, self._alpha(phase), masking)
            (loss / accum).backward()
            self.position.micro_step += 1
            self.meters.add(loss, parts, step_done=micro == accum - 1)
        if self.stages.step():
            self.ema.after_step(self.model)
        else:
            self.on_skip()

    def _no_sync(self, net: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """No gradient reduction in an accumulated step's micro-batches before its last."""
        if sync:
            return contextlib.nullcontext()
        return gradient_sync_off(self.model) if self.config.fsdp else net.no_sync()

    def _graphed_step(self, phase: str) -> None:
        """One step as a replay of the phase's CUDA graph (batch, masks, a(t), lr copied in);
        a mix phase with two SSL sub-batch sizes (ssl_share) has a graph for each."""
        rows = self.ssl_rows(phase)
        batch = self.batches.next(phase, rows, self._offset())
        masking = self.masks(phase, batch)
        net, params = self.net(phase), self.stages.trainable
        run = whole_step(
            self.loss_fn(phase),
            net,
            self.stages.optimizer,
            params,
            self.config.clip_grad,
            self.autocast,
        )
        inputs = (batch, self._alpha(phase), masking)
        loss, parts = self.graphs.step((phase, self.stages.name, rows), run, inputs, params)
        self.position.micro_step += 1
        self.meters.add(loss, parts, step_done=True)
        self.ema.after_step(self.model)

    # ------------------------------------------------------------------ cost

    def count_flops(self, phase: str) -> float:
        """Model FLOPs of one optimizer step of `phase` on all ranks (forward + backward); mix
        steps of two SSL sub-batch sizes count at their mean (FLOPs are linear in the rows)."""
        mean = self.mix.mean_rows() if phase == "mix" else None
        if mean is None or mean == int(mean):
            return self._flops_at(phase, None if mean is None else int(mean))
        low, high = (self._flops_at(phase, int(mean) + i) for i in (0, 1))
        return low + (mean - int(mean)) * (high - low)  # a fraction: the phase's sum is whole

    def _flops_at(self, phase: str, ssl_rows: int | None) -> int:
        inputs = self.probe_inputs(phase, self.config.batch_size, ssl_rows)
        with self.autocast():
            flops = micro_batch_flops(
                self.model, self._losses[phase], *inputs, self.stages.trainable
            )
        return flops * self.config.accum_steps * self.dist.world
