"""`ModelEma`: the `model_ema` moving average of the weights (timm's ModelEmaV3), its checkpoint
key "model_ema", and evaluation on both the EMA and the raw weights.

The average starts as a copy of the weights at the first step of the first phase that trains a
head (mix or SL: what it averages is the fine-tuning) and follows every optimizer step from
there: ema = decay * ema + (1 - decay) * weights. Skipped steps (nonfinite="skip") are not
averaged. With it on, validation and test read both weights; the EMA's top-1 is the run's
(val_top1, test_top1, the verdicts of `compare`) and the raw weights' is val_top1_raw /
test_top1_raw.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from mixfast.train.streams import EvalBatches, evaluate

Top1 = list[float | None]


class ModelEma:
    """The EMA of `model`'s weights (parameters and buffers) with `decay`; None: off."""

    def __init__(self, model: nn.Module, decay: float | None) -> None:
        from timm.utils import ModelEmaV3

        self.ema = None if decay is None else ModelEmaV3(model, decay=decay)
        self.started = False

    @classmethod
    def of(cls, model: nn.Module, config) -> ModelEma:
        """The EMA a TrainConfig asks for (model_ema, model_ema_decay)."""
        return cls(model, config.model_ema_decay if config.model_ema else None)

    @property
    def module(self) -> nn.Module | None:
        """The averaged model (None while off or not started)."""
        return self.ema.module if self.ema is not None and self.started else None

    def before_step(self, phase: str, model: nn.Module) -> None:
        """Start the average as the weights of `model` at the first mix or SL step."""
        if self.ema is not None and not self.started and phase != "ssl":
            self.ema.set(model)
            self.started = True

    def after_step(self, model: nn.Module) -> None:
        """Average in the weights of an optimizer step that was taken."""
        if self.module is not None:
            self.ema.update(model)

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint key "model_ema": None when off, else {"started", "weights"}."""
        if self.ema is None:
            return {"model_ema": None}
        return {"model_ema": {"started": self.started, "weights": self.ema.module.state_dict()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("model_ema")
        if self.ema is None or saved is None:
            return
        self.ema.module.load_state_dict(saved["weights"])
        self.started = bool(saved["started"])

    def evaluate(
        self, model: nn.Module, sets: list[EvalBatches], dist, autocast: Callable
    ) -> tuple[Top1, Top1 | None]:
        """(top-1 per set of the run's reported weights, the raw weights' top-1 or None):
        the EMA's and the raw's while the average runs, else the raw's and None."""
        raw = evaluate(model, sets, dist, autocast)
        if self.module is None:
            return raw, None
        return evaluate(self.module, sets, dist, autocast), raw


__all__ = ["ModelEma"]
