"""The MixTraining trainer: SL, SSL+SL and MixTraining through one code path.

    from mixfast import create_model
    from mixfast.trainer import MixTrainer, TrainConfig

    model = create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1,
                         num_classes=10)
    config = TrainConfig(pipeline="mix", ssl_epochs=20, sl_epochs=20, mix_ratio=0.5, out="runs/a")
    result = MixTrainer(model, config).fit(ssl_data=None, sl_data=train_set, val_data=test_set)
    print(result.top1, result.wall_s)

The plan comes from `MixSchedule` (SSL x (E_ssl - M) -> MIX x M -> SL x (E_sl - M)); one step
function serves every phase: SSL steps call `forward_ssl`, SL steps `forward_sl` + cross-entropy,
mix steps `forward_mixed` with the SSL weight a(t) passed as a 0-dim tensor. With `compile`
(default "auto": on for CUDA, off on CPU where it measured 0.96x) each phase's loss function is
torch.compiled once: the MAE masks are computed outside it (`random_masking` keyed by seed and
micro-batch index, passed as `masking=`) and a(t) is a tensor, so no step and no epoch
recompiles (a test runs with error_on_recompile). Label smoothing applies to the SL-phase
cross-entropy (and to the mix step if the model's forward_mixed takes `label_smoothing`).

Optimizer stages. MAE trains with two optimizers: pre-training (blr 1.5e-4, betas 0.9/0.95) and
a fresh one for fine-tuning (blr 1e-3, betas 0.9/0.999, layer-wise lr decay). We keep exactly
that: the SSL phase is the "pretrain" stage, and the mix phase opens the "finetune" stage, which
runs through the SL phase with one AdamW and one warmup + cosine schedule over all its steps.
So rho = 0 is MAE's recipe unchanged, and a(t) hands the encoder over from the MAE loss to the
labels while the fine-tune lr warms up. Each stage warms up for `warmup_epochs` (at most the
whole stage) and then decays with a half cosine to `min_lr`. Base lrs scale by effective batch
/ 256 (per device x devices x accumulation); `DIR/config.json` holds the resolved values.
`layer_decay=None` means 0.75 in the fine-tune stage after pre-training and 1.0 (off) for the
"sl" pipeline, which trains from scratch.

Host syncs. The hot path has none: losses accumulate in device tensors and the step counter
lives on the device. Every `log_every` steps (and at each epoch end) the trainer reads them
once: progress bar, non-finite check, stop requests. `nonfinite="stop"` (default) therefore
notices a NaN/inf loss up to `log_every` steps late but names the exact first step, its phase
and its loss; the weights are then damaged, so no checkpoint is written and DIR/last.pt stays
the last good one. `nonfinite="skip"` must decide before each optimizer step, which costs one
sync per step: the step is skipped when the gradient norm is not finite (the norm is the same
on every DDP rank, so all ranks skip together).

Data order. A Dataset is read in a seeded order: pass `c` of stream `s` is
randperm(len, seed=(seed, s, c)), cut into micro-batches of `batch_size`; rank r of W takes
micro-batches r, r + W, ... So W processes see exactly the micro-batches that one process with
W x accumulation sees, and the masking offset of a micro-batch (its index in that global
order) is the same too: DDP reproduces single-process training. Incomplete trailing batches are
dropped (fixed shapes: compiled steps never recompile). In-memory datasets (TensorDataset or
one with uint8 `images` + `labels` + `mean`/`std`, like mixfast.data.ImageDataset) skip the
DataLoader: batches are gathered by index on the device. A DataLoader given instead is used as
it is (its own order; resuming mid-epoch replays it up to the saved position).

Distributed: run under `torchrun --nproc_per_node N`; WORLD_SIZE/RANK/LOCAL_RANK come from the
environment, NCCL on CUDA, gloo on CPU. Each phase wraps the model in DistributedDataParallel
with the parameters that phase leaves unused frozen (found by one tiny forward/backward), so
find_unused_parameters stays off. Rank 0 writes every file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    TensorDataset,
    default_collate,
)

from mixfast import checkpoint as ckpt
from mixfast.masking import random_masking
from mixfast.optim import make_adamw, set_lr, warmup_cosine
from mixfast.schedule import PHASES, PIPELINES, TRANSITIONS, MixSchedule

SL_VIEWS = ("full", "masked")
NONFINITE = ("stop", "skip")
COMPILE = ("auto", True, False)
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
# Settings that may change between a run and its resumption.
_RESUMABLE = {"out", "resume", "progress", "log_every", "num_workers", "stop_after", "device"}
_RESUMABLE |= {"compile", "compile_backend", "augment"}
# In-memory datasets up to this size are copied to the device once.
_ON_DEVICE_BYTES = 2 << 30


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Every setting of a run; `dataclasses.asdict` of it is DIR/config.json["config"]."""

    pipeline: str = "mix"  # "sl" | "ssl+sl" | "mix"
    ssl_epochs: int = 10
    sl_epochs: int = 10
    mix_ratio: float = 0.5  # rho; the mix phase has round(rho * min(E_ssl, E_sl)) epochs
    transition: str = "linear"  # a(t): "linear" | "cosine" | "constant"
    alpha_constant: float = 0.5  # a for transition="constant"
    sl_view: str = "full"  # SL loss in a mix step on "full" images or the "masked" view
    mask_ratio: float = 0.75
    batch_size: int = 64  # per device, per objective
    accum_steps: int = 1
    blr: float = 1e-3  # fine-tune base lr (x effective batch / 256)
    ssl_blr: float = 1.5e-4  # pre-train base lr (x effective batch / 256)
    min_lr: float = 0.0
    warmup_epochs: float = 1.0  # per optimizer stage
    weight_decay: float = 0.05
    layer_decay: float | None = None  # None: 0.75 after pre-training, 1.0 for "sl"
    label_smoothing: float = 0.1  # SL-phase cross-entropy
    clip_grad: float | None = None  # max grad norm; None or 0 = off
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    compile: bool | str = "auto"  # "auto": torch.compile the step on CUDA only
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager" to debug)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    out: str | None = None  # run folder; None writes nothing
    resume: bool = False
    nonfinite: str = "stop"  # "stop" | "skip"
    num_workers: int = 0
    log_every: int = 50
    progress: bool = True
    task_weights: list[float] | None = None
    stop_after: int = 0  # stop (with a checkpoint) after this many optimizer steps; 0 = never
    augment: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    def validate(self) -> None:
        """Raise ValueError naming the first bad argument and what it allows."""
        _choice("pipeline", self.pipeline, PIPELINES)
        _choice("transition", self.transition, TRANSITIONS)
        _choice("sl_view", self.sl_view, SL_VIEWS)
        _choice("nonfinite", self.nonfinite, NONFINITE)
        _choice("compile", self.compile, COMPILE)
        _integer("ssl_epochs", self.ssl_epochs, 0)
        _integer("sl_epochs", self.sl_epochs, 1)
        if self.pipeline != "sl" and self.ssl_epochs < 1:
            raise ValueError(f"ssl_epochs must be >= 1 for pipeline {self.pipeline!r}")
        _integer("batch_size", self.batch_size, 1)
        _integer("accum_steps", self.accum_steps, 1)
        _integer("seed", self.seed, 0)
        _integer("num_workers", self.num_workers, 0)
        _integer("log_every", self.log_every, 1)
        _integer("stop_after", self.stop_after, 0)
        _interval("mix_ratio", self.mix_ratio, 0.0, 1.0)
        _interval("alpha_constant", self.alpha_constant, 0.0, 1.0)
        _interval("mask_ratio", self.mask_ratio, 0.0, 1.0, high_open=True, low_open=True)
        _interval("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        _interval("blr", self.blr, 0.0, math.inf, low_open=True)
        _interval("ssl_blr", self.ssl_blr, 0.0, math.inf, low_open=True)
        _interval("min_lr", self.min_lr, 0.0, math.inf)
        _interval("warmup_epochs", self.warmup_epochs, 0.0, math.inf)
        _interval("weight_decay", self.weight_decay, 0.0, math.inf)
        if self.layer_decay is not None:
            _interval("layer_decay", self.layer_decay, 0.0, 1.0, low_open=True)
        if self.clip_grad is not None:
            _interval("clip_grad", self.clip_grad, 0.0, math.inf)
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}"
            )
        if self.task_weights is not None and (
            len(self.task_weights) == 0 or any(float(w) < 0 for w in self.task_weights)
        ):
            raise ValueError(
                f"task_weights must be a non-empty list of weights >= 0, got {self.task_weights}"
            )
        if self.resume and not self.out:
            raise ValueError("resume=True needs out (the run folder holding last.pt)")
        if self.augment is not None and not callable(self.augment):
            raise ValueError(f"augment must be callable(images) -> images, got {self.augment!r}")

    def schedule(self) -> MixSchedule:
        return MixSchedule.for_pipeline(
            self.pipeline,
            self.ssl_epochs,
            self.sl_epochs,
            self.mix_ratio,
            self.transition,
            self.alpha_constant,
        )

    def to_dict(self) -> dict[str, Any]:
        """asdict, with the augment callable written as its class name."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if data["augment"] is not None:
            data["augment"] = type(data["augment"]).__name__
        return data


def _choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if isinstance(value, bool) and not any(a is value for a in allowed):
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def _integer(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _interval(name, value, low, high, *, low_open=False, high_open=False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the trainer's flags; defaults come from TrainConfig (so --config files can set them)."""
    d = TrainConfig()
    g = parser.add_argument_group("training")
    g.add_argument("--pipeline", choices=PIPELINES, default=d.pipeline)
    g.add_argument("--ssl-epochs", type=int, default=d.ssl_epochs)
    g.add_argument("--sl-epochs", type=int, default=d.sl_epochs)
    g.add_argument("--mix-ratio", type=float, default=d.mix_ratio, help="rho in [0, 1]")
    g.add_argument("--transition", choices=TRANSITIONS, default=d.transition)
    g.add_argument("--alpha-constant", type=float, default=d.alpha_constant)
    g.add_argument("--sl-view", choices=SL_VIEWS, default=d.sl_view)
    g.add_argument("--mask-ratio", type=float, default=d.mask_ratio)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per device")
    g.add_argument("--accum-steps", type=int, default=d.accum_steps)
    g.add_argument("--blr", type=float, default=d.blr, help="fine-tune base lr per 256")
    g.add_argument("--ssl-blr", type=float, default=d.ssl_blr, help="pre-train base lr per 256")
    g.add_argument("--min-lr", type=float, default=d.min_lr)
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--layer-decay", type=float, default=d.layer_decay)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--clip-grad", type=float, default=d.clip_grad)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device)
    g.add_argument("--no-compile", dest="compile", action="store_const", const=False)
    g.add_argument("--no-amp", dest="amp", action="store_false")
    g.add_argument("--out", default=d.out, help="run folder (config, metrics, checkpoint)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--nonfinite", choices=NONFINITE, default=d.nonfinite)
    g.add_argument("--num-workers", type=int, default=d.num_workers)
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--no-progress", dest="progress", action="store_false")
    g.add_argument("--task-weights", type=float, nargs="+", default=d.task_weights)
    g.add_argument("--stop-after", type=int, default=d.stop_after, help=argparse.SUPPRESS)
    parser.set_defaults(compile=d.compile, amp=d.amp, progress=d.progress)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed flags (fields absent from `args` keep their defaults)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"augment"}
    config = TrainConfig(**{n: getattr(args, n) for n in names if hasattr(args, n)})
    config.validate()
    return config


# --------------------------------------------------------------------------------------------
# Results and errors


class NonFiniteLossError(RuntimeError):
    """A loss was NaN or inf and nonfinite="stop"."""


@dataclass
class TrainResult:
    top1: float | None  # validation top-1 of task 0 in [0, 1] after the last epoch
    top1_tasks: list[float | None]
    wall_s: float  # total, evaluation included
    phase_wall_s: dict[str, float]  # training seconds per phase
    eval_wall_s: float
    sample_passes: dict[str, int]  # {"ssl": .., "sl": ..}: samples each objective saw
    budget: dict[str, Any]  # MixSchedule.budget of the whole plan
    epochs: list[dict[str, Any]]  # the rows of metrics.jsonl
    global_step: int
    skipped_steps: int
    completed: bool  # False when stopped early (stop_after, a signal)
    resolved: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Data streams


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, list | tuple) and batch:
        return batch[0], batch[1] if len(batch) > 1 else None
    raise ValueError(f"a batch must be images or (images, labels, ...), got {type(batch)}")


def _pass_seed(seed: int, stream: int, cycle: int) -> int:
    return (seed * 1_000_003 + stream * 10_007 + cycle) % (2**63)


class _InMemory:
    """Index-gather batches from a TensorDataset or an ImageDataset-like uint8 store."""

    def __init__(self, dataset: Dataset, device: torch.device) -> None:
        if isinstance(dataset, TensorDataset):
            images, labels = dataset.tensors[0], (dataset.tensors + (None,))[1]
            self.mean = self.std = None
        else:
            images, labels = dataset.images, dataset.labels
            self.mean, self.std = dataset.mean, dataset.std
        nbytes = images.numel() * images.element_size()
        where = device if nbytes <= _ON_DEVICE_BYTES else torch.device("cpu")
        self.images = images.to(where)
        self.labels = None if labels is None else labels.to(where)

    @staticmethod
    def supports(dataset: Any) -> bool:
        if isinstance(dataset, TensorDataset):
            return True
        images = getattr(dataset, "images", None)
        return (
            isinstance(images, torch.Tensor)
            and images.dtype == torch.uint8
            and isinstance(getattr(dataset, "labels", None), torch.Tensor)
            and hasattr(dataset, "mean")
            and hasattr(dataset, "std")
        )

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        index = index.to(self.images.device)
        labels = None if self.labels is None else self.labels[index]
        return self.images[index], labels


class Stream:
    """One training data source read in a seeded, resumable, rank-sharded order."""

    def __init__(
        self,
        source: Dataset | DataLoader,
        key: int,
        *,
        batch_size: int,
        world: int,
        rank: int,
        accum: int,
        seed: int,
        device: torch.device,
        num_workers: int = 0,
        name: str = "data",
    ) -> None:
        self.source, self.key, self.name = source, key, name
        self.batch, self.world, self.rank, self.accum = batch_size, world, rank, accum
        self.seed, self.device, self.num_workers = seed, device, num_workers
        self.cycle, self.pos = 0, 0
        self._iter: Iterator | None = None
        self.memory = None
        if isinstance(source, DataLoader):
            self.micro = len(source) // accum * accum
            if self.micro == 0:
                raise ValueError(f"{name}: the DataLoader has fewer than accum_steps batches")
            if world > 1 and not isinstance(source.sampler, DistributedSampler):
                warnings.warn(
                    f"{name}: a DataLoader without a DistributedSampler gives every rank the "
                    "same batches; pass the Dataset instead (the trainer shards it)",
                    stacklevel=3,
                )
            return
        size, group = len(source), batch_size * world * accum
        if size < group:
            raise ValueError(
                f"{name} has {size} samples, fewer than batch_size x devices x accum_steps = "
                f"{batch_size} x {world} x {accum}; lower batch_size"
            )
        self.micro = size // group * accum  # micro-batches per pass on this rank
        if _InMemory.supports(source):
            self.memory = _InMemory(source, device)

    @property
    def steps(self) -> int:
        return self.micro // self.accum

    def state(self) -> dict[str, int]:
        return {"cycle": self.cycle, "pos": self.pos}

    def load_state(self, state: dict[str, int]) -> None:
        self.cycle, self.pos, self._iter = int(state["cycle"]), int(state["pos"]), None

    def new_pass(self) -> None:
        self.cycle, self.pos, self._iter = self.cycle + 1, 0, None

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pos >= self.micro:  # the shorter stream of a mix epoch cycles
            self.new_pass()
        if self._iter is None:
            self._iter = self._open()
        batch = next(self._iter)
        self.pos += 1
        return batch

    def _blocks(self) -> torch.Tensor:
        """[micro, batch] sample indices of this rank for the current pass."""
        gen = torch.Generator().manual_seed(_pass_seed(self.seed, self.key, self.cycle))
        perm = torch.randperm(len(self.source), generator=gen)
        blocks = perm[: self.micro * self.world * self.batch].view(-1, self.batch)
        return blocks[self.rank :: self.world]

    def _open(self) -> Iterator:
        if isinstance(self.source, DataLoader):
            sampler = getattr(self.source, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.cycle)
            batches = islice(self.source, self.pos, self.micro)
            return (self._to_device(*_split_batch(b)) for b in batches)
        blocks = self._blocks()[self.pos :]
        if self.memory is not None:  # one copy of the pass's indices, then device gathers
            blocks = blocks.to(self.memory.images.device, non_blocking=True)
            return (self._to_device(*self.memory.gather(index)) for index in blocks)
        gen = torch.Generator().manual_seed(_pass_seed(self.seed, self.key, self.cycle) + 1)
        loader = DataLoader(
            self.source,
            batch_sampler=blocks.tolist(),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=gen,  # worker seeds from here, never from the global RNG
        )
        return (self._to_device(*_split_batch(b)) for b in loader)

    def _to_device(self, images, labels):
        images = images.to(self.device, non_blocking=True)
        if labels is not None:
            labels = labels.to(self.device, non_blocking=True)
        return images, labels

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batches of an ImageDataset-like store -> normalised float."""
        if images.dtype != torch.uint8 or self.memory is None or self.memory.mean is None:
            return images
        return _normalize(images, self.memory.mean, self.memory.std)

    def sample(self, count: int = 2) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A few samples, without moving the stream (for the DDP unused-parameter probe)."""
        if isinstance(self.source, DataLoader):
            return self._to_device(*_split_batch(next(iter(self.source))))
        index = torch.arange(min(count, len(self.source)))
        if self.memory is not None:
            return self._to_device(*self.memory.gather(index))
        return self._to_device(*_split_batch(default_collate([self.source[int(i)] for i in index])))


def _normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


# --------------------------------------------------------------------------------------------
# Distributed


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    created: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def _init_distributed(device_type: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        created = True
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return _Dist(dist.get_world_size(), dist.get_rank(), local, created)


def _all_max(value: torch.Tensor, d: _Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def _all_sum(value: torch.Tensor, d: _Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def _resolve_device(name: str, d: _Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device='cpu'")
    if name == "cuda":
        return torch.device("cuda", d.local_rank if d.enabled else torch.cuda.current_device())
    return torch.device(name)


class _Objectives(nn.Module):
    """Routes forward(kind, ...) to model.forward_<kind>, so DDP sees one forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, kind: str, *args, **kwargs):
        return getattr(self.model, f"forward_{kind}")(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# The trainer


class MixTrainer:
    """Runs the phase plan of a TrainConfig on a MixMAE-style model.

    `model`: an nn.Module with forward_ssl / forward_sl / forward_mixed (mixfast.create_model),
    or a timm ViT name / VisionTransformer (built with `create_model(model, **model_kwargs)`,
    num_classes read from the labels when not given). `config`: a TrainConfig, or a
    MixSchedule (a "mix" config with its epochs); keyword overrides replace config fields.
    """

    def __init__(
        self,
        model: nn.Module | str,
        config: TrainConfig | MixSchedule | None = None,
        *,
        model_kwargs: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        if isinstance(config, MixSchedule):
            config = TrainConfig(
                pipeline="mix",
                ssl_epochs=config.ssl_epochs,
                sl_epochs=config.sl_epochs,
                mix_ratio=config.mix_ratio,
                transition=config.transition,
                alpha_constant=config.alpha_constant,
            )
        config = dataclasses.replace(config or TrainConfig(), **overrides)
        config.validate()
        self.config = config
        self.model = model
        self.model_kwargs = dict(model_kwargs or {})
        self._signal: int | None = None

    # ------------------------------------------------------------------ setup

    def fit(
        self,
        ssl_data: Dataset | DataLoader | None,
        sl_data: Dataset | DataLoader | Sequence[Dataset | DataLoader],
        val_data: Dataset | DataLoader | Sequence[Dataset | DataLoader] | None = None,
    ) -> TrainResult:
        """Train the whole plan (or resume it); returns the result also written to result.json."""
        cfg = self.config
        out = Path(cfg.out) if cfg.out else None
        self._check_out(out)
        self._signal = None
        sl_list = list(sl_data) if isinstance(sl_data, list | tuple) else [sl_data]
        val_list = list(val_data) if isinstance(val_data, list | tuple) else [val_data]
        if cfg.task_weights is not None and len(cfg.task_weights) != len(sl_list):
            raise ValueError(
                f"task_weights has {len(cfg.task_weights)} entries for {len(sl_list)} tasks"
            )
        if cfg.pipeline == "sl":
            ssl_data = None
        self.dist = _init_distributed("cuda" if _wants_cuda(cfg.device) else "cpu")
        try:
            self.device = _resolve_device(cfg.device, self.dist)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            self._setup(ssl_data, sl_list, val_list, out)
            with self._signals():
                return self._run(out)
        finally:
            if self.dist.created:
                dist.destroy_process_group()

    def _check_out(self, out: Path | None) -> None:
        if out is None:
            return
        last, result = out / "last.pt", out / "result.json"
        if self.config.resume and not last.is_file():
            raise ValueError(f"resume=True but {last} does not exist (nothing to resume)")
        if not self.config.resume and (last.exists() or result.exists()):
            raise ValueError(
                f"out={str(out)!r} already holds a run ({last.name} / {result.name}); "
                "pass resume=True (--resume) to continue it or choose another out"
            )

    def _setup(self, ssl_data, sl_list, val_list, out) -> None:
        cfg, d = self.config, self.dist
        torch.manual_seed(cfg.seed)
        self.model = self._build_model(self.model, sl_list[0]).to(self.device)
        stream = dict(
            batch_size=cfg.batch_size,
            world=d.world,
            rank=d.rank,
            accum=cfg.accum_steps,
            seed=cfg.seed,
            device=self.device,
            num_workers=cfg.num_workers,
        )
        self.sl_streams = [
            Stream(s, 1 + k, name=f"sl_data[{k}]" if len(sl_list) > 1 else "sl_data", **stream)
            for k, s in enumerate(sl_list)
        ]
        self.ssl_stream = (
            None if ssl_data is None else Stream(ssl_data, 0, name="ssl_data", **stream)
        )
        self.val_list = [v for v in val_list if v is not None]
        self.schedule = cfg.schedule()
        ssl_steps = (self.ssl_stream or self.sl_streams[0]).steps
        sl_steps = max(s.steps for s in self.sl_streams)
        self.steps = {p: self.schedule.steps_per_epoch(p, ssl_steps, sl_steps) for p in PHASES}
        self.mix_steps = self.schedule.mix_epochs * self.steps["mix"]
        self.resolved = self._resolve(ssl_steps, sl_steps, len(sl_list))
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._compiled: dict[tuple[str, int], Callable] = {}
        alphas = [self.schedule.alpha(i, self.mix_steps) for i in range(self.mix_steps)]
        self._alphas = torch.tensor(alphas, dtype=torch.float32).to(self.device)
        self._val_memory: dict[int, _InMemory] = {}
        self._mixed_kwargs = self._mixed_extra_kwargs()
        self._precompute_masks = hasattr(self.model, "num_patches") and all(
            "masking" in inspect.signature(f).parameters
            for f in (self.model.forward_ssl, self.model.forward_mixed)
        )

    def _build_model(self, model, sl_data) -> nn.Module:
        if isinstance(model, nn.Module) and hasattr(model, "forward_mixed"):
            return model
        from mixfast.models import create_model

        kwargs = dict(self.model_kwargs)
        if "num_classes" not in kwargs and "task_classes" not in kwargs:
            kwargs["num_classes"] = _num_classes(sl_data)
        return create_model(model, **kwargs)

    def _resolve(self, ssl_steps: int, sl_steps: int, tasks: int) -> dict[str, Any]:
        cfg, d = self.config, self.dist
        eff = cfg.batch_size * d.world * cfg.accum_steps
        pretrained = self.schedule.ssl_epochs > 0
        layer_decay = (
            cfg.layer_decay if cfg.layer_decay is not None else (0.75 if pretrained else 1.0)
        )
        stages = {}
        for stage, phases in (("pretrain", ("ssl",)), ("finetune", ("mix", "sl"))):
            epochs = [p for p in self.schedule.phases if p.name in phases]
            total = sum(p.epochs * self.steps[p.name] for p in epochs)
            n_epochs = sum(p.epochs for p in epochs)
            if total == 0:
                continue
            warmup = min(round(cfg.warmup_epochs * total / n_epochs), total)
            blr = cfg.ssl_blr if stage == "pretrain" else cfg.blr
            stages[stage] = {
                "lr": blr * eff / 256,
                "warmup_steps": warmup,
                "total_steps": total,
                "betas": [0.9, 0.95] if stage == "pretrain" else [0.9, 0.999],
                "layer_decay": 1.0 if stage == "pretrain" else layer_decay,
            }
        compile_on = cfg.compile is True or (cfg.compile == "auto" and self.device.type == "cuda")
        return {
            "world_size": d.world,
            "effective_batch": eff,
            "device": str(self.device),
            "compile": compile_on,
            "amp": bool(cfg.amp and self.device.type == "cuda"),
            "tasks": tasks,
            "mode": "same-images" if self.ssl_stream is None else "two-stream",
            "steps_per_epoch": dict(self.steps),
            "stages": stages,
            "schedule": self.schedule.to_dict(),
            "budget": self.schedule.budget(
                ssl_steps=ssl_steps, sl_steps=sl_steps, batch_size=eff, tasks=tasks
            ),
        }

    def _mask(self, phase: str, batch: dict[str, Any]) -> Any:
        """The MAE masks of this micro-batch, keyed by its index in the global batch order.

        Micro-batch m of this rank is global micro-batch m * W + r, the same one a single
        process meets at index m * W + r, so DDP and one process mask every sample alike.
        """
        offset = self.micro_step * self.dist.world + self.dist.rank
        if phase == "sl" or not self._precompute_masks:
            return offset
        ssl = batch["ssl"]
        rows = ssl.shape[0]
        if phase == "mix" and self.config.sl_view == "masked":  # SL images with their own masks
            own = {id(x): x.shape[0] for x, _ in batch["sl"] if x is not ssl}
            rows += sum(own.values())
        return random_masking(
            rows,
            self.model.num_patches,
            self.config.mask_ratio,
            seed=self.config.seed,
            offset=offset,
            device=ssl.device,
        )

    def _mixed_extra_kwargs(self) -> dict[str, Any]:
        params = inspect.signature(self.model.forward_mixed).parameters
        extra = {}
        if "label_smoothing" in params:
            extra["label_smoothing"] = self.config.label_smoothing
        return extra

    # ------------------------------------------------------------------ state

    def _fresh_state(self) -> None:
        self.epoch, self.step_in_epoch, self.global_step, self.micro_step = 0, 0, 0, 0
        self.stage: str | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.totals = {
            "phase_wall_s": {p.name: 0.0 for p in self.schedule.phases},
            "eval_wall_s": 0.0,
            "wall_s": 0.0,
            "sample_passes": {"ssl": 0, "sl": 0},
            "skipped_steps": 0,
        }
        self.rows: list[dict[str, Any]] = []
        self.finished = False
        self._lr: float | None = None

    def _state_dict(self) -> dict[str, Any]:
        streams = {s.name: s.state() for s in self._all_streams()}
        aug = getattr(self.config.augment, "generator", None)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "stage": self.stage,
            "position": {
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step,
                "micro_step": self.micro_step,
                "finished": self.finished,
            },
            "streams": streams,
            "rng": ckpt.rng_state(),
            "augment_rng": aug.get_state() if isinstance(aug, torch.Generator) else None,
            "epoch_state": self._epoch_sums_cpu(),
            "totals": self.totals,
            "rows": self.rows,
            "config": self.config.to_dict(),
            "resolved": self.resolved,
        }

    def _load(self, out: Path) -> None:
        state = ckpt.load_checkpoint(out / "last.pt")
        self._check_resumable(state["config"])
        ckpt.load_model_state(self.model, state["model"])
        pos = state["position"]
        self.epoch, self.step_in_epoch = pos["epoch"], pos["step_in_epoch"]
        self.global_step, self.micro_step = pos["global_step"], pos["micro_step"]
        self.finished = pos["finished"]
        self.totals, self.rows = state["totals"], state["rows"]
        if state["stage"] is not None:
            self._new_stage(state["stage"])
            self.optimizer.load_state_dict(state["optimizer"])
        for s in self._all_streams():
            s.load_state(state["streams"][s.name])
        ckpt.set_rng_state(state["rng"])
        aug = getattr(self.config.augment, "generator", None)
        if isinstance(aug, torch.Generator) and state["augment_rng"] is not None:
            aug.set_state(state["augment_rng"])
        self._pending_sums = state["epoch_state"]

    def _check_resumable(self, saved: dict[str, Any]) -> None:
        now = self.config.to_dict()
        changed = sorted(
            k for k in now if k not in _RESUMABLE and k in saved and saved[k] != now[k]
        )
        if changed:
            diff = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
            raise ValueError(f"resume: the run was started with other settings ({diff})")

    def _all_streams(self) -> list[Stream]:
        return [s for s in (self.ssl_stream, *self.sl_streams) if s is not None]

    def _save(self, out: Path | None) -> None:
        if out is not None and self.dist.main:
            ckpt.save_checkpoint(self._state_dict(), out / "last.pt")

    # ------------------------------------------------------------------ the loop

    def _run(self, out: Path | None) -> TrainResult:
        self._fresh_state()
        self._pending_sums = None
        if out is not None and self.config.resume:
            self._load(out)
        if out is not None and self.dist.main:
            out.mkdir(parents=True, exist_ok=True)
            _write_json(out / "config.json", {**self.config.to_dict(), "resolved": self.resolved})
            # from the checkpoint's rows: a crash between a metrics line and its checkpoint
            # never leaves a row the resumed run would write again
            _write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows))
        specs = self.schedule.epochs()
        while not self.finished and self.epoch < len(specs):
            spec = specs[self.epoch]
            stopped = self._train_epoch(spec, out)
            if stopped:
                return self._result(completed=False)
            self._end_epoch(spec, out)
        self.finished = True
        result = self._result(completed=True)
        if out is not None and self.dist.main:
            self._save(out)
            _write_json(out / "result.json", result.to_dict())
        return result

    def _train_epoch(self, spec, out: Path | None) -> bool:
        """Train one epoch from the saved position; True when asked to stop early."""
        cfg, phase = self.config, spec.phase
        stage = "pretrain" if phase == "ssl" else "finetune"
        if self.stage != stage:
            self._new_stage(stage)
        net = self._phase_net(phase)
        streams = self._phase_streams(phase)
        if self.step_in_epoch == 0:
            for s in streams:
                s.new_pass()
        self._init_sums()
        fn = self._loss_fn(phase, net)
        steps = self.steps[phase]
        bar = _progress(cfg.progress and self.dist.main, steps, f"{phase} {spec.index + 1}")
        bar.update(self.step_in_epoch)
        self.model.train()
        clock = time.perf_counter()
        for _ in range(self.step_in_epoch, steps):
            self._train_step(phase, net, fn, streams)
            self.step_in_epoch += 1
            self.global_step += 1
            bar.update(1)
            last = self.step_in_epoch == steps
            if self.global_step % cfg.log_every == 0 or last:
                self._check_point(phase, bar, clock)
            if self._should_stop(last):
                self._sums["train_s"] += time.perf_counter() - clock
                bar.close()
                self._stop(out)
                return True
        bar.close()
        self._sync()
        self._sums["train_s"] += time.perf_counter() - clock
        return False

    def _train_step(self, phase: str, net, fn, streams) -> None:
        cfg = self.config
        for micro in range(cfg.accum_steps):
            batch = self._next_batch(phase, streams)
            mask = self._mask(phase, batch)
            sync = micro == cfg.accum_steps - 1 or not self.dist.enabled
            with contextlib.nullcontext() if sync else net.no_sync(), self._autocast():
                loss, parts = fn(net, batch, self._alpha(phase), mask)
            (loss / cfg.accum_steps).backward()
            self.micro_step += 1
            self._accumulate(loss, parts)
        self._optimizer_step()

    def _optimizer_step(self) -> None:
        cfg, stage = self.config, self.resolved["stages"][self.stage]
        step = self._stage_step()
        lr = warmup_cosine(
            step, stage["total_steps"], stage["warmup_steps"], stage["lr"], cfg.min_lr
        )
        set_lr(self.optimizer, lr)
        self._lr = lr
        params = [p for p in self._trainable if p.grad is not None]
        if cfg.clip_grad or cfg.nonfinite == "skip":
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad or math.inf, foreach=True)
            if cfg.nonfinite == "skip" and not torch.isfinite(norm).item():
                self.totals["skipped_steps"] += 1
                self.optimizer.zero_grad(set_to_none=True)
                return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _stage_step(self) -> int:
        """Optimizer steps already done in the current stage."""
        done = 0
        for spec in self.schedule.epochs()[: self.epoch]:
            if ("pretrain" if spec.phase == "ssl" else "finetune") == self.stage:
                done += self.steps[spec.phase]
        return done + self.step_in_epoch

    def _alpha(self, phase: str) -> torch.Tensor | None:
        """a(t) of this mix step as a 0-dim device tensor (no host-to-device copy per step)."""
        if phase != "mix":
            return None
        mix_first = next(p.first_epoch for p in self.schedule.phases if p.name == "mix")
        step = (self.epoch - mix_first) * self.steps["mix"] + self.step_in_epoch
        return self._alphas[step].clone()

    def _next_batch(self, phase: str, streams: list[Stream]) -> dict[str, Any]:
        """{"ssl": images} and/or {"sl": [(images, labels)] per task}, augmented on device."""
        augment = self.config.augment
        batch: dict[str, Any] = {}
        same = self.ssl_stream is None
        if phase != "sl":
            src = self.ssl_stream or self.sl_streams[0]
            images, labels = src.next()
            images = augment(images) if augment else src.normalize(images)
            batch["ssl"] = images
            if same and phase == "mix":
                batch["sl"] = [(images, labels)]
        if phase != "ssl":
            first = 1 if "sl" in batch else 0
            tasks = batch.setdefault("sl", [])
            for s in self.sl_streams[first:]:
                images, labels = s.next()
                tasks.append((augment(images) if augment else s.normalize(images), labels))
            for k, (_, labels) in enumerate(tasks):
                if labels is None:
                    raise ValueError(f"sl_data task {k} yields no labels")
        return batch

    def _phase_streams(self, phase: str) -> list[Stream]:
        if phase == "ssl":
            return [self.ssl_stream or self.sl_streams[0]]
        streams = list(self.sl_streams)
        if phase == "mix" and self.ssl_stream is not None:
            streams.insert(0, self.ssl_stream)
        return streams

    # ------------------------------------------------------------------ losses

    def _loss_fn(self, phase: str, net) -> Callable:
        key = (phase, id(net))
        if key not in self._compiled:
            fn = _make_loss(phase, self.config, len(self.sl_streams), self._mixed_kwargs)
            if self.resolved["compile"]:
                fn = torch.compile(fn, backend=self.config.compile_backend)
            self._compiled[key] = fn
        return self._compiled[key]

    def _autocast(self):
        if self.resolved["amp"]:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ optimizer / DDP

    def _new_stage(self, stage: str) -> None:
        spec = self.resolved["stages"][stage]
        for p in self._trainable:
            p.requires_grad_(True)
        self.optimizer = make_adamw(
            self.model,
            weight_decay=self.config.weight_decay,
            layer_decay=spec["layer_decay"],
            betas=tuple(spec["betas"]),
            fused=self.device.type == "cuda",
        )
        self.stage = stage
        self._net_phase = None

    def _phase_net(self, phase: str):
        if getattr(self, "_net_phase", None) == phase:
            return self._net
        net = _Objectives(self.model)
        if self.dist.enabled:
            for p in self._trainable:
                p.requires_grad_(True)
            for p in self._unused_params(phase, net):
                p.requires_grad_(False)
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        self._net, self._net_phase = net, phase
        return net

    def _unused_params(self, phase: str, net: nn.Module) -> list[nn.Parameter]:
        """Parameters `phase` gives no gradient, from one tiny forward/backward (DDP only)."""
        fn = _make_loss(phase, self.config, len(self.sl_streams), self._mixed_kwargs)
        batch = {}
        if phase != "sl":
            src = self.ssl_stream or self.sl_streams[0]
            batch["ssl"] = src.normalize(src.sample()[0])
        if phase != "ssl":
            batch["sl"] = []
            for s in self.sl_streams:
                images, labels = s.sample()
                batch["sl"].append((s.normalize(images), labels))
        alpha = torch.tensor(0.5, device=self.device) if phase == "mix" else None
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            loss, _ = fn(net, batch, alpha, self._mask(phase, batch))
            grads = torch.autograd.grad(loss, self._trainable, allow_unused=True)
        return [p for p, g in zip(self._trainable, grads) if g is None]

    # ------------------------------------------------------------------ bookkeeping

    def _init_sums(self) -> None:
        zero = lambda: torch.zeros((), dtype=torch.float64, device=self.device)
        self._sums = {
            "loss": zero(),
            "ssl": zero(),
            "sl": zero(),
            "micro": 0,
            "train_s": 0.0,
            "bad": torch.zeros((), dtype=torch.bool, device=self.device),
            "bad_step": torch.full((), -1, dtype=torch.int64, device=self.device),
            "bad_loss": zero(),
            "step": torch.full((), self.global_step, dtype=torch.int64, device=self.device),
        }
        pending = self._pending_sums
        if pending is not None:
            for k in ("loss", "ssl", "sl", "bad_loss"):
                self._sums[k] += pending[k]
            self._sums["micro"], self._sums["train_s"] = pending["micro"], pending["train_s"]
            self._pending_sums = None

    def _accumulate(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        s = self._sums
        loss = loss.detach()
        s["loss"] += loss
        s["ssl"] += parts.get("ssl", loss.new_zeros(())).detach()
        s["sl"] += parts.get("sl", loss.new_zeros(())).detach()
        s["micro"] += 1
        bad = ~torch.isfinite(loss)
        first = bad & ~s["bad"]
        s["bad_step"] = torch.where(first, s["step"], s["bad_step"])
        s["bad_loss"] = torch.where(first, loss.double(), s["bad_loss"])
        s["bad"] |= bad
        if self.micro_step % self.config.accum_steps == 0:  # the step's last micro-batch
            s["step"] += 1

    def _epoch_sums_cpu(self) -> dict[str, Any] | None:
        s = getattr(self, "_sums", None)
        if s is None or self.step_in_epoch == 0:
            return None
        return {
            "loss": s["loss"].cpu(),
            "ssl": s["ssl"].cpu(),
            "sl": s["sl"].cpu(),
            "bad_loss": s["bad_loss"].cpu(),
            "micro": s["micro"],
            "train_s": s["train_s"],
        }

    def _check_point(self, phase: str, bar=None, clock: float = 0.0) -> None:
        """The periodic host sync: non-finite check and the progress bar."""
        s = self._sums
        if self.config.nonfinite == "stop":
            flag = _all_max(s["bad"].to(torch.int32), self.dist)
            if flag.item():
                step, value = int(s["bad_step"]), float(s["bad_loss"])
                where = f"step {step + 1}" if step >= 0 else "a step on another rank"
                last = Path(self.config.out or ".") / "last.pt"
                kept = f"; {last} holds the last good checkpoint" if self.config.out else ""
                raise NonFiniteLossError(
                    f"non-finite loss at {where} (phase {phase}, epoch {self.epoch + 1}): "
                    f"loss={value}; training stopped{kept if last.is_file() else ''}"
                )
        if bar is not None and not bar.disable:
            micro = max(s["micro"], 1)
            seconds = s["train_s"] + time.perf_counter() - clock
            bar.set_postfix(
                loss=f"{float(s['loss']) / micro:.4f}",
                ssl=f"{float(s['ssl']) / micro:.4f}",
                sl=f"{float(s['sl']) / micro:.4f}",
                img_s=f"{self._images(phase, s['micro']) / max(seconds, 1e-9):.0f}",
            )

    def _images(self, phase: str, micro: int) -> int:
        """Samples fed through the encoder on all ranks in `micro` micro-batches."""
        per = self.config.batch_size * self.dist.world
        ssl = per if phase != "sl" else 0
        sl = per * len(self.sl_streams) if phase != "ssl" else 0
        return micro * (ssl + sl)

    def _end_epoch(self, spec, out: Path | None) -> None:
        s, phase = self._sums, spec.phase
        self._check_point(phase)
        start = time.perf_counter()
        top1 = self.evaluate() if phase != "ssl" and self.val_list else [None] * len(self.val_list)
        eval_s = time.perf_counter() - start
        losses = _all_sum(torch.stack([s["loss"], s["ssl"], s["sl"]]), self.dist)
        loss, loss_ssl, loss_sl = (losses / max(s["micro"] * self.dist.world, 1)).tolist()
        per = self.config.batch_size * self.dist.world
        ssl_n = s["micro"] * per if phase != "sl" else 0
        sl_n = s["micro"] * per * len(self.sl_streams) if phase != "ssl" else 0
        t = self.totals
        t["phase_wall_s"][phase] += s["train_s"]
        t["eval_wall_s"] += eval_s
        t["wall_s"] += s["train_s"] + eval_s
        t["sample_passes"]["ssl"] += ssl_n
        t["sample_passes"]["sl"] += sl_n
        row = {
            "phase": phase,
            "epoch": spec.index + 1,
            "phase_epoch": spec.phase_epoch + 1,
            "steps": self.steps[phase],
            "global_step": self.global_step,
            "loss": loss,  # mean over the epoch's micro-batches on all ranks
            "loss_ssl": loss_ssl if phase != "sl" else None,
            "loss_sl": loss_sl if phase != "ssl" else None,
            "alpha": self._alpha_range(spec),
            "lr": self._lr,
            "val_top1": top1[0] if top1 else None,
            "val_top1_tasks": top1,
            "train_s": s["train_s"],
            "eval_s": eval_s,
            "wall_s": t["wall_s"],
            "images_per_s": (ssl_n + sl_n) / max(s["train_s"], 1e-9),
        }
        self.rows.append(row)
        self.epoch += 1
        self.step_in_epoch = 0
        if out is not None and self.dist.main:
            with open(out / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
        self._save(out)

    def _alpha_range(self, spec) -> list[float] | None:
        if spec.phase != "mix":
            return None
        first = (spec.phase_epoch) * self.steps["mix"]
        last = first + self.steps["mix"] - 1
        return [
            self.schedule.alpha(first, self.mix_steps),
            self.schedule.alpha(last, self.mix_steps),
        ]

    @torch.inference_mode()
    def evaluate(self) -> list[float]:
        """Top-1 in [0, 1] on each validation set (task k uses head k), summed over ranks."""
        self.model.eval()
        results = []
        try:
            for task, data in enumerate(self.val_list):
                counts = torch.zeros(2, dtype=torch.float64, device=self.device)
                for images, labels in self._val_batches(data):
                    with self._autocast():
                        logits = self.model.forward_sl(images, task=task)
                    counts[0] += (logits.argmax(-1) == labels).sum()
                    counts[1] += labels.numel()
                correct, total = _all_sum(counts, self.dist).tolist()
                results.append(correct / total if total else None)
        finally:
            self.model.train()
        return results

    def _val_batches(self, data) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(data, DataLoader):
            for batch in data:
                images, labels = _split_batch(batch)
                yield images.to(self.device), labels.to(self.device)
            return
        size, rank, world = len(data), self.dist.rank, self.dist.world
        index = torch.arange(rank, size, world)  # this rank's share, no padding
        chunk = 2 * self.config.batch_size
        memory = None
        if _InMemory.supports(data):
            if id(data) not in self._val_memory:
                self._val_memory[id(data)] = _InMemory(data, self.device)
            memory = self._val_memory[id(data)]
        for part in index.split(chunk):
            if memory is not None:
                images, labels = memory.gather(part)
                if memory.mean is not None:
                    images = _normalize(images, memory.mean, memory.std)
            else:
                images, labels = _split_batch(default_collate([data[int(i)] for i in part]))
            yield images.to(self.device), labels.to(self.device)

    # ------------------------------------------------------------------ stopping

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT / SIGTERM ask the loop to save a checkpoint and exit at a step boundary."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self._signal is not None:  # a second signal: give up at once
                raise KeyboardInterrupt
            self._signal = signum

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _should_stop(self, last_in_epoch: bool) -> bool:
        cfg = self.config
        if cfg.stop_after and self.global_step >= cfg.stop_after:
            return True
        if self.dist.enabled:
            if self.global_step % cfg.log_every and not last_in_epoch:
                return False
            flag = torch.tensor(int(self._signal is not None), device=self.device)
            return bool(_all_max(flag, self.dist).item())
        return self._signal is not None

    def _stop(self, out: Path | None) -> None:
        self._sync()
        self._check_point(self.schedule.epochs()[self.epoch].phase)
        self._save(out)
        if self._signal is None:
            return
        where = f"; resume with --resume --out {out}" if out else ""
        print(
            f"mixfast: stopped at step {self.global_step}, checkpoint saved{where}", file=sys.stderr
        )
        if self._signal == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + self._signal)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _result(self, completed: bool) -> TrainResult:
        t = self.totals
        last = next((r for r in reversed(self.rows) if r["val_top1"] is not None), None)
        tasks = last["val_top1_tasks"] if last else [None] * len(self.val_list)
        return TrainResult(
            top1=tasks[0] if tasks else None,
            top1_tasks=tasks,
            wall_s=t["wall_s"],
            phase_wall_s=dict(t["phase_wall_s"]),
            eval_wall_s=t["eval_wall_s"],
            sample_passes=dict(t["sample_passes"]),
            budget=self.resolved["budget"],
            epochs=list(self.rows),
            global_step=self.global_step,
            skipped_steps=t["skipped_steps"],
            completed=completed,
            resolved=self.resolved,
        )


def _make_loss(phase: str, cfg: TrainConfig, tasks: int, mixed_kwargs: dict) -> Callable:
    """The loss of one micro-batch: fn(net, batch, alpha, mask) -> (loss, parts).

    `mask` is the precomputed MaskingResult (computed outside any compiled region, so a new
    step never recompiles) or, for models without `masking=`, the int masking offset.
    """
    weights = cfg.task_weights or [1.0 / tasks] * tasks

    def masking(mask) -> dict[str, Any]:
        if isinstance(mask, int):
            return {"mask_ratio": cfg.mask_ratio, "seed": cfg.seed, "offset": mask}
        return {"mask_ratio": cfg.mask_ratio, "masking": mask}

    def ssl_loss(net, batch, alpha, mask):
        loss = net("ssl", batch["ssl"], **masking(mask))
        return loss, {"ssl": loss}

    def sl_loss(net, batch, alpha, mask):
        loss = 0.0
        for k, (images, labels) in enumerate(batch["sl"]):
            logits = net("sl", images, task=k) if tasks > 1 else net("sl", images)
            ce = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
            loss = loss + weights[k] * ce
        return loss, {"sl": loss}

    def mix_loss(net, batch, alpha, mask):
        sl = batch["sl"]
        images = sl[0][0] if tasks == 1 else [x for x, _ in sl]
        labels = sl[0][1] if tasks == 1 else [y for _, y in sl]
        return net(
            "mixed",
            batch["ssl"],
            images,
            labels,
            alpha=alpha,
            sl_view=cfg.sl_view,
            task_weights=cfg.task_weights,
            **masking(mask),
            **mixed_kwargs,
        )

    return {"ssl": ssl_loss, "sl": sl_loss, "mix": mix_loss}[phase]


def _progress(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), leave=False)


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _num_classes(data) -> int:
    dataset = getattr(data, "dataset", data)
    labels = getattr(dataset, "labels", None)
    if labels is None and isinstance(dataset, TensorDataset) and len(dataset.tensors) > 1:
        labels = dataset.tensors[1]
    if labels is None:
        labels = torch.as_tensor([int(_split_batch(dataset[i])[1]) for i in range(len(dataset))])
    return int(torch.as_tensor(labels).max()) + 1


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def train(
    config: TrainConfig,
    model: nn.Module | str,
    ssl_data: Dataset | DataLoader | None,
    sl_data: Dataset | DataLoader | Sequence[Dataset | DataLoader],
    val_data: Dataset | DataLoader | Sequence[Dataset | DataLoader] | None = None,
    **trainer_kwargs: Any,
) -> TrainResult:
    """Train `model` as `config` says; what `mixfast train` and `mixfast compare` call."""
    return MixTrainer(model, config, **trainer_kwargs).fit(ssl_data, sl_data, val_data)
