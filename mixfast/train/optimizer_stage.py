"""`OptimizerStages`: the optimizer of the stage a run is in, and its learning rate.

MAE trains with two optimizers: pre-training (blr 1.5e-4, betas 0.9/0.95) and a fresh one for
fine-tuning (blr 1e-3, betas 0.9/0.999, layer-wise lr decay). The SSL phase is the "pretrain"
stage; the mix phase opens the "finetune" stage, which runs through the SL phase with one AdamW
and one warmup + cosine schedule (`finetune_from="sl"`: the mix phase stays on the pre-train
optimizer). So rho = 0 is MAE's recipe unchanged. The plan (RunPlan.stages) holds each stage's
lr, warmup, length, betas and layer decay; this component holds the optimizer and its state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mixfast.optim import make_adamw, set_lr, warmup_cosine
from mixfast.train.config import TrainConfig
from mixfast.train.plan import RunPlan


class OptimizerStages:
    """AdamW + warmup-cosine + layer decay of the current stage over `model`'s trainable
    parameters. Checkpoint keys: "stage" (its name) and "optimizer" (AdamW's state)."""

    def __init__(self, model: nn.Module, config: TrainConfig, plan: RunPlan) -> None:
        self.model, self.config, self.plan = model, config, plan
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.name: str | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr: float | None = None
        # --tensorboard's gradient norm: summed on the device every step, read (a host sync)
        # only where the trainer syncs anyway (every log_every steps); not checkpointed
        self.track_norm = config.tensorboard
        self._norm_sum: torch.Tensor | float = 0.0
        self._norm_steps = 0

    def enter(self, phase: str) -> bool:
        """Open `phase`'s stage unless it is the current one; True when a new one opened."""
        stage = self.plan.stage_of(phase)
        if stage == self.name:
            return False
        self._open(stage)
        return True

    def _open(self, stage: str) -> None:
        spec = self.plan.stages[stage]
        for p in self.trainable:  # DDP froze the previous phase's unused ones
            p.requires_grad_(True)
        self.optimizer = make_adamw(
            self.model,
            weight_decay=self.config.weight_decay,
            layer_decay=spec.layer_decay,
            betas=spec.betas,
        )
        self.name = stage

    def set_lr(self, stage_step: int) -> None:
        """The lr of the stage's step `stage_step` (0-based), written into the optimizer."""
        spec = self.plan.stages[self.name]
        lr = warmup_cosine(
            stage_step, spec.total_steps, spec.warmup_steps, spec.lr, self.config.min_lr
        )
        set_lr(self.optimizer, lr)
        self.lr = lr

    def step(self) -> bool:
        """Clip (clip_grad), update and zero the gradients; with nonfinite="skip" a step whose
        gradient norm is not finite is dropped (a host sync): returns False then."""
        cfg, norm = self.config, None
        params = [p for p in self.trainable if p.grad is not None]
        if cfg.clip_grad or cfg.nonfinite == "skip":
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad or math.inf, foreach=True)
            if cfg.nonfinite == "skip" and not torch.isfinite(norm).item():
                self.optimizer.zero_grad(set_to_none=True)
                return False
        elif self.track_norm:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if self.track_norm:
            self._norm_sum = self._norm_sum + norm.detach()
            self._norm_steps += 1
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def take_mean_norm(self) -> float | None:
        """Mean gradient norm (before clipping) of the steps since the last call; a host sync.
        None when not tracked or no step was taken (CUDA-graphed steps are not tracked)."""
        if not self.track_norm or not self._norm_steps:
            return None
        mean = float(self._norm_sum) / self._norm_steps
        self._norm_sum, self._norm_steps = 0.0, 0
        return mean

    def state_dict(self) -> dict[str, Any]:
        state = self.optimizer.state_dict() if self.optimizer else None
        return {"stage": self.name, "optimizer": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] is not None:
            self._open(state["stage"])
            if state["optimizer"] is not None:  # None: sharded, loaded by the Checkpointer
                self.optimizer.load_state_dict(state["optimizer"])
