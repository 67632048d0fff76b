"""`Checkpointer`: DIR/last.pt composed from the state of each component of a run.

Each component owns its state and names the checkpoint keys it fills (layout in
mixfast/checkpoint.py):

    component                      keys                        what
    the model                      model                       weights (strict load)
    OptimizerStages                stage, optimizer            current stage, AdamW state
    Position (meters.py)           position                    epoch, steps, micro-batches
    PhaseBatches (objectives.py)   streams, augment_rng        data order, augmentation RNG
    ModelEma (ema.py)              model_ema                   EMA weights (model_ema)
    Meters (meters.py)             epoch_state                 sums of the epoch in progress
    RunLog (run_log.py)            totals, rows                totals, metrics rows so far
    the process                    rng                         torch / CUDA / Python / numpy
    the model's heads              head_labels                 their class names, per task
    the run                        config, resolved            TrainConfig, RunPlan

The resume check lives here, once: the checkpoint's TrainConfig against the run's (the
settings RESUMABLE may change; the number of processes may change when accum_steps keeps
processes x accum_steps) and its steps per epoch against the data's. Under `--fsdp` the model
and optimizer state are sharded files beside last.pt (sharded_checkpoint.py). The data and model
settings recorded in DIR/data.json are the caller's to check (mixfast/experiment.py), before
the data is read.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from mixfast import checkpoint as ckpt
from mixfast.checks import SettingError
from mixfast.train.config import TrainConfig
from mixfast.train.meters import LOSSES
from mixfast.train.plan import RunPlan
from mixfast.train.sharded_checkpoint import load_sharded, save_sharded


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Checkpointer:
    """Saves and restores `model` and `components` as one checkpoint in `folder` (None:
    nothing is written); only the main process writes, except under FSDP (`sharded`), where
    every rank saves its shards (sharded_checkpoint.py) and the main rank the rest."""

    def __init__(
        self,
        model: nn.Module,
        components: list[Stateful],
        config: TrainConfig,
        plan: RunPlan,
        folder: ckpt.RunFolder | None,
        main: bool,
    ) -> None:
        self.model, self.components = model, components
        self.config, self.plan, self.folder, self.main = config, plan, folder, main
        self.sharded = config.fsdp

    def state_dict(self) -> dict[str, Any]:
        model = None if self.sharded else self.model.state_dict()  # sharded: its own files
        state = {"model": model, "rng": ckpt.rng_state(), "head_labels": self._head_labels()}
        for component in self.components:
            state.update(component.state_dict())
        if self.sharded:
            state["optimizer"] = None
        return {**state, "config": self.config.to_dict(), "resolved": self.plan.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resumable(self.config, self.plan, state)
        state = at_world_size(state, self.plan.world_size)
        if not self.sharded:
            ckpt.load_model_state(self.model, state["model"])
        for component in self.components:
            component.load_state_dict(state)
        if self.sharded:
            load_sharded(self.folder.path / state["shards"], self.model, self._optimizer())
        ckpt.set_rng_state(state["rng"])

    def save(self) -> None:
        if self.folder is None:
            return
        if self.sharded:
            save_sharded(self.folder.path, self.model, self._optimizer(), self.state_dict())
        elif self.main:
            ckpt.save_checkpoint(self.state_dict(), self.folder.path / "last.pt")

    def resume(self) -> None:
        """Continue from the folder's checkpoint when the run resumes."""
        if self.folder is not None and self.folder.resume:
            self.load_state_dict(self.folder.checkpoint())
            self.folder.forget_checkpoint()

    def _head_labels(self) -> list[list[str]] | None:
        """What the heads' classes mean (model.head_labels): a run started from this
        checkpoint loads a head only for the same classes (mixfast/model/weights.py)."""
        return getattr(self.model, "head_labels", None)

    def _optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer of the current stage (OptimizerStages among the components)."""
        stages = [c for c in self.components if hasattr(c, "optimizer")]
        return stages[0].optimizer if stages else None


def check_resumable(config: TrainConfig, plan: RunPlan, state: dict[str, Any]) -> None:
    """A checkpoint's run may continue under `config` on data that makes `plan`: the same
    settings but RESUMABLE ones, except that the number of processes may change when
    accum_steps keeps processes x accum_steps (with the per-device batch, the effective batch)."""
    changed = config.changed_on_resume(state["config"])
    check_world_size(config, plan, state)
    changed = [k for k in changed if k != "accum_steps"]  # check_world_size judged it
    if changed:
        diff = "; ".join(
            f"{{{k}}}: {state['config'][k]!r} -> {getattr(config, k)!r}" for k in changed
        )
        raise SettingError(
            f"{{resume}}: {config.out} was made with other settings ({diff}); resume with the "
            "run's settings or start a new run"
        )
    saved_steps = state["resolved"].get("steps_per_epoch")
    if saved_steps != plan.steps_per_epoch:
        raise SettingError(
            f"{{resume}}: the data differ from the run's: steps per epoch {saved_steps} in the "
            f"checkpoint, {plan.steps_per_epoch} now (another dataset, label fraction, "
            "validation split, SSL pool or batch size, or a checkpoint of an older mixfast); "
            "resume with the run's settings or start a new run"
        )


def _copies(state: dict[str, Any]) -> tuple[int, int]:
    """(processes, accum_steps) of the run that saved `state`."""
    return int(state["resolved"].get("world_size", 1)), int(state["config"]["accum_steps"])


def check_world_size(config: TrainConfig, plan: RunPlan, state: dict[str, Any]) -> None:
    """Processes x accum_steps as when saved (micro-batches per optimizer step, all ranks):
    then the data order, the masks and the schedule continue as they would have."""
    world, accum = _copies(state)
    if world * accum == plan.world_size * config.accum_steps:
        return
    raise SettingError(
        f"{{resume}}: {config.out} was made by {world} process(es) x {{accum_steps}} {accum} "
        f"(effective batch {state['resolved'].get('effective_batch')}); now {plan.world_size} x "
        f"{config.accum_steps}: resume with processes x {{accum_steps}} = {world * accum} "
        "(the per-device {batch_size} kept) or start a new run"
    )


def at_world_size(state: dict[str, Any], world: int) -> dict[str, Any]:
    """`state` as `world` processes would have saved it (check_world_size holds): each rank's
    micro-batch counts (position, stream positions, the epoch's meter counts) scale by
    saved processes / `world`. The loss sums of an epoch in progress are all ranks' in a
    sharded checkpoint; in another, the main rank's (as for a DDP resume), scaled alike."""
    saved_world, _ = _copies(state)
    if saved_world == world:
        return state
    scale = saved_world / world

    def rescaled(count: int) -> int:
        value = count * scale
        if value != int(value):
            raise SettingError(
                f"{{resume}}: a micro-batch count {count} of {saved_world} "
                f"process(es) does not split into {world}"
            )
        return int(value)

    state = {**state, "position": dict(state["position"])}
    state["position"]["micro_step"] = rescaled(state["position"]["micro_step"])
    state["streams"] = {
        name: {**s, "pos": rescaled(s["pos"])} for name, s in state["streams"].items()
    }
    epoch = state.get("epoch_state")
    if epoch is not None:
        # the sums of all ranks when "ranks" (sharded), else the main rank's; bad_loss: a value
        sums = {} if "ranks" in epoch else {k: epoch[k] * scale for k in LOSSES}
        state["epoch_state"] = {**epoch, **sums, "micro": rescaled(epoch["micro"])}
    return state
