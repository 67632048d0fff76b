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
    the run                        config, resolved            TrainConfig, RunPlan

The resume check lives here, once: the checkpoint's TrainConfig against the run's (the
settings RESUMABLE may change) and its steps per epoch against the data's. The data and model
settings recorded in DIR/data.json are the caller's to check (mixfast/experiment.py), before
the data is read.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from mixfast import checkpoint as ckpt
from mixfast.checks import SettingError
from mixfast.train.config import TrainConfig
from mixfast.train.plan import RunPlan


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Checkpointer:
    """Saves and restores `model` and `components` as one checkpoint in `folder` (None:
    nothing is written); only the main process writes."""

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

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "rng": ckpt.rng_state()}
        for component in self.components:
            state.update(component.state_dict())
        return {**state, "config": self.config.to_dict(), "resolved": self.plan.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resumable(self.config, self.plan, state)
        ckpt.load_model_state(self.model, state["model"])
        for component in self.components:
            component.load_state_dict(state)
        ckpt.set_rng_state(state["rng"])

    def save(self) -> None:
        if self.folder is not None and self.main:
            ckpt.save_checkpoint(self.state_dict(), self.folder.path / "last.pt")

    def resume(self) -> None:
        """Continue from the folder's checkpoint when the run resumes."""
        if self.folder is not None and self.folder.resume:
            self.load_state_dict(self.folder.checkpoint())
            self.folder.forget_checkpoint()


def check_resumable(config: TrainConfig, plan: RunPlan, state: dict[str, Any]) -> None:
    """A checkpoint's run may continue under `config` on data that makes `plan`."""
    changed = config.changed_on_resume(state["config"])
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
