"""What a run is asked to do: `TrainConfig` (every training setting, validated), the optimizer
stages, and the trainer's errors. Pure: no data, no model, no files. What a run derives from it
and its data is the frozen `RunPlan` (plan.py)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mixfast.checks import SettingError, check_choice, check_int, check_number
from mixfast.model.mae import SL_VIEWS
from mixfast.schedule import PIPELINES, TRANSITIONS, MixSchedule
from mixfast.train.recipe import check_aa

NONFINITE = ("stop", "skip")
RESUME = (True, False, "auto")
COMPILE = ("auto", True, False)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
# Settings that may change between a run and its resumption.
RESUMABLE = {"out", "resume", "progress", "log_every", "num_workers", "stop_after", "device"}
RESUMABLE |= {"save_every", "tensorboard", "recon_every"}
RESUMABLE |= {"compile", "compile_backend", "augment", "cuda_graph", "grad_checkpointing"}
# finetune_from (the phase that opens the fine-tune optimizer) -> optimizer stage -> its phases
STAGES = {
    "mix": {"pretrain": ("ssl",), "finetune": ("mix", "sl")},
    "sl": {"pretrain": ("ssl", "mix"), "finetune": ("sl",)},  # mix on the pre-train optimizer
}
FINETUNE_FROM = tuple(STAGES)


def optimizer_stages(finetune_from: str = "mix") -> dict[str, tuple[str, ...]]:
    """Optimizer stage -> its phases (read-only)."""
    return STAGES[finetune_from]


class NonFiniteLossError(RuntimeError):
    """A loss was NaN or inf and nonfinite="stop"."""


@dataclass
class TrainConfig:
    """Every setting of a run; `to_dict()` of it is DIR/config.json (without "resolved")."""

    pipeline: str = "mix"  # "sl" | "ssl+sl" | "mix"
    ssl_epochs: int = 10
    sl_epochs: int = 10
    mix_ratio: float = 0.5  # rho; the mix phase has round(rho * min(E_ssl, E_sl)) epochs
    transition: str = "linear"  # a(t): "linear" | "cosine" | "constant"
    alpha_constant: float = 0.5  # a for transition="constant"
    sl_view: str = "full"  # SL loss in a mix step on "full" images or the "masked" view
    ssl_share: float = 1.0  # SSL sub-batch of a mix step, a share of batch_size in (0, 1]
    mask_ratio: float = 0.75
    batch_size: int = 64  # per device, per objective
    accum_steps: int = 1
    blr: float = 1e-3  # fine-tune base lr (x effective batch / 256)
    ssl_blr: float = 1.5e-4  # pre-train base lr (x effective batch / 256)
    min_lr: float = 0.0
    warmup_epochs: float = 1.0  # per optimizer stage
    finetune_from: str = "mix"  # "mix" | "sl": the phase that opens the fine-tune optimizer
    weight_decay: float = 0.05
    layer_decay: float | None = None  # None: 0.75 after pre-training or from weights, else 1.0
    label_smoothing: float = 0.1  # SL-phase cross-entropy
    clip_grad: float | None = None  # max grad norm; None or 0 = off
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    compile: bool | str = "auto"  # "auto": torch.compile the step on CUDA only
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager" to debug)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    cuda_graph: bool = False  # capture each phase's whole step once, replay it (CUDA only)
    tensorboard: bool = False  # also TensorBoard event files in out/tensorboard/ (main rank)
    recon_every: int = 1  # a reconstruction grid every N SSL/mix epochs and at the end; 0: none
    grad_checkpointing: bool = False  # recompute encoder block activations in the backward
    fsdp: bool = False  # FSDP2: shard weights, gradients and AdamW state over the processes
    out: str | None = None  # run folder; None writes nothing
    resume: bool | str = False  # True: continue DIR/last.pt; "auto": continue it when it exists
    nonfinite: str = "stop"  # "stop" | "skip"
    num_workers: int = 0
    log_every: int = 50
    progress: bool = True
    task_weights: list[float] | None = None
    stop_after: int = 0  # stop (with a checkpoint) after this many optimizer steps; 0 = never
    save_every: int = 0  # a checkpoint every this many optimizer steps too; 0 = epoch ends only
    pretrained_weights: bool = False  # the model starts from weights (set by the run, no flag)
    # timm's fine-tune recipe on the SL images (mixfast/train/recipe.py, ema.py); off by default
    mixup: float = 0.0  # Mixup alpha; > 0: on (soft targets)
    cutmix: float = 0.0  # CutMix alpha; > 0: on (with mixup too: one of the two per batch)
    aa: str | None = None  # RandAugment spec, e.g. "rand-m9-mstd0.5-inc1"
    reprob: float = 0.0  # random erasing probability per sample
    model_ema: bool = False  # also keep an EMA of the weights; its top-1 is the run's
    model_ema_decay: float = 0.9998
    augment: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    def validate(self) -> None:
        """Raise ValueError naming the first bad argument and what it allows."""
        check_choice("pipeline", self.pipeline, PIPELINES)
        check_choice("transition", self.transition, TRANSITIONS)
        check_choice("sl_view", self.sl_view, SL_VIEWS)
        check_choice("nonfinite", self.nonfinite, NONFINITE)
        check_choice("finetune_from", self.finetune_from, FINETUNE_FROM)
        check_choice("compile", self.compile, COMPILE)
        check_choice("cuda_graph", self.cuda_graph, (True, False))
        check_choice("tensorboard", self.tensorboard, (True, False))
        check_choice("grad_checkpointing", self.grad_checkpointing, (True, False))
        check_choice("fsdp", self.fsdp, (True, False))
        if self.fsdp and self.cuda_graph:
            raise SettingError(
                "{cuda_graph} does not compose with {fsdp}: a captured step would replay FSDP's "
                "all-gathers and reduce-scatters outside the process group's control; drop one"
            )
        if self.fsdp and self.model_ema:
            raise SettingError(
                "{model_ema} does not compose with {fsdp} yet: timm's ModelEmaV3 deep-copies the "
                "model, which FSDP2's sharded modules refuse; drop one"
            )
        check_int("ssl_epochs", self.ssl_epochs, 0)
        check_int("sl_epochs", self.sl_epochs, 1)
        if self.pipeline != "sl" and self.ssl_epochs < 1:
            raise ValueError(f"ssl_epochs must be >= 1 for pipeline {self.pipeline!r}")
        for name in ("batch_size", "accum_steps", "log_every"):
            check_int(name, getattr(self, name), 1)
        check_choice("resume", self.resume, RESUME)
        for name in ("seed", "num_workers", "stop_after", "save_every", "recon_every"):
            check_int(name, getattr(self, name), 0)
        check_number("mix_ratio", self.mix_ratio, 0.0, 1.0)
        check_number("alpha_constant", self.alpha_constant, 0.0, 1.0)
        check_number("ssl_share", self.ssl_share, 0.0, 1.0, low_open=True)
        check_number("mask_ratio", self.mask_ratio, 0.0, 1.0, high_open=True, low_open=True)
        check_number("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        check_number("blr", self.blr, 0.0, math.inf, low_open=True, high_open=True)
        check_number("ssl_blr", self.ssl_blr, 0.0, math.inf, low_open=True, high_open=True)
        for name in ("min_lr", "warmup_epochs", "weight_decay"):
            check_number(name, getattr(self, name), 0.0, math.inf, high_open=True)
        if self.layer_decay is not None:
            check_number("layer_decay", self.layer_decay, 0.0, 1.0, low_open=True)
        if self.clip_grad is not None:
            check_number("clip_grad", self.clip_grad, 0.0, math.inf)
        if not isinstance(self.device, str) or not DEVICE_PATTERN.match(self.device):
            raise SettingError(
                f"{{device}} must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}"
            )
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SettingError(f"{{device}} {self.device!r}: CUDA is not available here; use cpu")
        if self.task_weights is not None and (
            len(self.task_weights) == 0 or any(float(w) < 0 for w in self.task_weights)
        ):
            raise ValueError(
                f"task_weights must be a non-empty list of weights >= 0, got {self.task_weights}"
            )
        if self.resume and not self.out:
            raise ValueError(f"resume={self.resume!r} needs out (the run folder holding last.pt)")
        self._validate_recipe()
        if self.augment is not None and not callable(self.augment):
            raise ValueError(f"augment must be callable(images) -> images, got {self.augment!r}")

    def _validate_recipe(self) -> None:
        for name in ("mixup", "cutmix"):
            check_number(name, getattr(self, name), 0.0, math.inf, high_open=True)
        check_number("reprob", self.reprob, 0.0, 1.0)
        check_aa(self.aa)
        check_choice("model_ema", self.model_ema, (True, False))
        check_number(
            "model_ema_decay", self.model_ema_decay, 0.0, 1.0, low_open=True, high_open=True
        )

    @classmethod
    def of_schedule(cls, schedule: MixSchedule) -> TrainConfig:
        """A "mix" config with the schedule's epochs, rho, a(t) and SSL share."""
        keys = ("ssl_epochs", "sl_epochs", "mix_ratio", "transition", "alpha_constant", "ssl_share")
        return cls(pipeline="mix", **{key: getattr(schedule, key) for key in keys})

    def schedule(self) -> MixSchedule:
        return MixSchedule.for_pipeline(
            self.pipeline,
            self.ssl_epochs,
            self.sl_epochs,
            self.mix_ratio,
            transition=self.transition,
            alpha_constant=self.alpha_constant,
            ssl_share=self.ssl_share,
        )

    def to_dict(self) -> dict[str, Any]:
        """asdict, with the augment callable written as its class name."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if data["augment"] is not None:
            data["augment"] = type(data["augment"]).__name__
        return data

    def changed_on_resume(self, saved: dict[str, Any]) -> list[str]:
        """Settings that differ from a checkpoint's config and may not change on resume."""
        now = self.to_dict()
        return sorted(k for k in now if k not in RESUMABLE and k in saved and saved[k] != now[k])


def stage_of(phase: str, finetune_from: str = "mix") -> str:
    return next(
        stage for stage, phases in optimizer_stages(finetune_from).items() if phase in phases
    )
