"""`MixTrainer`: SL, SSL+SL and MixTraining through one code path.

The plan comes from `MixSchedule` (SSL x (E_ssl - M) -> MIX x M -> SL x (E_sl - M)); one step
function serves every phase (mixfast/train/objectives.py). With `compile` (default "auto": on
for CUDA, off on CPU where it measured 0.96x) each phase's loss function is torch.compiled once.

Optimizer stages. MAE trains with two optimizers: pre-training (blr 1.5e-4, betas 0.9/0.95) and
a fresh one for fine-tuning (blr 1e-3, betas 0.9/0.999, layer-wise lr decay). The SSL phase is
the "pretrain" stage and the mix phase opens the "finetune" stage, which runs through the SL
phase with one AdamW and one warmup + cosine schedule. So rho = 0 is MAE's recipe unchanged.

CUDA graphs (`cuda_graph`): each phase's whole step captured once and replayed (graphs.py).

Host syncs: none in the hot path (meters.py). `nonfinite="stop"` notices a NaN/inf loss up to
`log_every` steps late, names its first step, and keeps DIR/last.pt the last good checkpoint;
`nonfinite="skip"` syncs once per step to skip steps whose gradient norm is not finite.

Distributed (torchrun): DDP per phase with its unused parameters frozen (distributed.py);
masks follow the global micro-batch order, so DDP reproduces one process. Rank 0 writes files.

State. Each component saves its own state (streams, meters, optimizer, position); `state_dict`
composes them into DIR/last.pt (layout in mixfast/checkpoint.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mixfast import checkpoint as ckpt
from mixfast.optim import make_adamw, set_lr, warmup_cosine
from mixfast.schedule import PHASES, EpochSpec, MixSchedule
from mixfast.train.config import (
    TrainConfig,
    TrainResult,
    check_resumable,
    resolve_plan,
    stage_of,
)
from mixfast.train.distributed import Dist, init_distributed, resolve_device, wrap_ddp
from mixfast.train.flops import micro_batch_flops
from mixfast.train.graphs import StepGraphs, make_step_graphs, whole_step
from mixfast.train.meters import Meters, Position, fresh_totals, progress_bar
from mixfast.train.mix_steps import MixSteps
from mixfast.train.objectives import (
    LossFn,
    Objectives,
    PhaseBatches,
    make_loss,
    mixed_extra_kwargs,
    phase_masks,
    takes_precomputed_masks,
    weight_cast,
)
from mixfast.train.stopping import StopRequests
from mixfast.train.streams import EvalBatches, Stream, check_labels, evaluate, num_classes

Data = Dataset | DataLoader
MAX_SKIPPED_SHARE = 0.5  # nonfinite="skip" stops when more than this share of an epoch skips


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
            config = TrainConfig.of_schedule(config)
        config = dataclasses.replace(config or TrainConfig(), **overrides)
        config.validate()
        self.config = config
        self.schedule = config.schedule()
        self.model_spec = model  # what was given: a module, a timm name or a timm ViT
        self.model_kwargs = dict(model_kwargs or {})
        self.model: nn.Module | None = None  # built by fit()
        self.dist = Dist()
        self.device = torch.device("cpu")
        self.batches: PhaseBatches | None = None
        self.evals: list[EvalBatches] = []  # validation: every epoch
        self.tests: list[EvalBatches] = []  # test: once, at the end
        self.meters: Meters | None = None
        self.position = Position()
        self.totals = fresh_totals(self.schedule)
        self.rows: list[dict[str, Any]] = []
        self.steps: dict[str, int] = {}  # first epoch of each phase (for config.json)
        self.epoch_steps: list[int] = []  # optimizer steps of every epoch of the plan
        self.mix: MixSteps | None = None
        self.resolved: dict[str, Any] = {}
        self.stage: str | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr: float | None = None
        self._trainable: list[nn.Parameter] = []
        self._mixed_kwargs: dict[str, Any] = {}
        self._precompute_masks = False
        self._losses: dict[tuple[str, int], LossFn] = {}
        self._net: nn.Module | None = None
        self._net_phase: str | None = None
        self.graphs: StepGraphs | None = None  # whole-step CUDA graphs (cuda_graph)
        self.stops = StopRequests(config.stop_after, config.log_every)

    # ------------------------------------------------------------------ setup

    def fit(
        self,
        ssl_data: Data | None,
        sl_data: Data | Sequence[Data],
        val_data: Data | Sequence[Data] | None = None,
        test_data: Data | Sequence[Data] | None = None,
    ) -> TrainResult:
        """Train the whole plan (or resume it); returns the result also written to result.json.

        val_data (one per task) is evaluated after every epoch that trains a head; test_data
        once, after the last epoch (its top-1 is result.test_top1)."""
        cfg = self.config
        out = Path(cfg.out) if cfg.out else None
        self._check_out(out)
        sl_list = list(sl_data) if isinstance(sl_data, list | tuple) else [sl_data]
        val_list = list(val_data) if isinstance(val_data, list | tuple) else [val_data]
        test_list = list(test_data) if isinstance(test_data, list | tuple) else [test_data]
        if cfg.task_weights is not None and len(cfg.task_weights) != len(sl_list):
            raise ValueError(
                f"task_weights has {len(cfg.task_weights)} entries for {len(sl_list)} tasks"
            )
        if cfg.pipeline == "sl":
            ssl_data = None
        self.dist = init_distributed(cfg.device)
        try:
            self.device = resolve_device(cfg.device, self.dist)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            self._setup(ssl_data, sl_list, val_list, test_list)
            with self.stops.catching_signals():
                return self._run(out)
        finally:
            if out is not None and self.dist.main:
                ckpt.release_run_folder(out)
            self.dist.close()

    def _check_out(self, out: Path | None) -> None:
        if out is not None:
            ckpt.check_run_folder(out, self.config.resume)

    def _setup(
        self, ssl_data: Data | None, sl_list: list[Data], val_list: list, test_list: list
    ) -> None:
        cfg, d = self.config, self.dist
        torch.manual_seed(cfg.seed)
        self.model = self._build_model(sl_list[0]).to(self.device)
        stream = dict(
            batch_size=cfg.batch_size,
            world=d.world,
            rank=d.rank,
            accum=cfg.accum_steps,
            seed=cfg.seed,
            device=self.device,
            num_workers=cfg.num_workers,
        )
        sl_streams = [
            Stream(s, 1 + k, name=f"sl_data[{k}]" if len(sl_list) > 1 else "sl_data", **stream)
            for k, s in enumerate(sl_list)
        ]
        ssl_stream = None if ssl_data is None else Stream(ssl_data, 0, name="ssl_data", **stream)
        check_labels(sl_streams, getattr(self.model, "task_classes", None))
        self.batches = PhaseBatches(ssl_stream, sl_streams, cfg.augment)
        eval_kwargs = dict(batch_size=2 * cfg.batch_size, rank=d.rank, world=d.world)
        self.evals = [
            EvalBatches(v, device=self.device, **eval_kwargs) for v in val_list if v is not None
        ]
        self.tests = [
            EvalBatches(t, device=self.device, **eval_kwargs) for t in test_list if t is not None
        ]
        self.meters = Meters(self.device, d)
        ssl_steps = (ssl_stream or sl_streams[0]).steps
        sl_steps = max(s.steps for s in sl_streams)
        self.steps = {p: self.schedule.steps_per_epoch(p, ssl_steps, sl_steps) for p in PHASES}
        self.epoch_steps = self.schedule.epoch_steps(ssl_steps, sl_steps)
        self.mix = MixSteps(self.schedule, self.steps["mix"], cfg.batch_size, self.device)
        self.resolved = resolve_plan(
            cfg,
            self.schedule,
            steps=self.steps,
            epoch_steps=self.epoch_steps,
            ssl_steps=ssl_steps,
            sl_steps=sl_steps,
            world=d.world,
            device=self.device,
            tasks=len(sl_list),
            two_stream=ssl_stream is not None,
        )
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._mixed_kwargs = mixed_extra_kwargs(self.model, cfg)
        self._precompute_masks = takes_precomputed_masks(self.model)
        self.graphs = make_step_graphs(cfg, self.device, d.world, self._precompute_masks)
        self.resolved.update(cuda_graph=self.graphs is not None, storage=self.batches.storage)

    def _build_model(self, sl_data: Data) -> nn.Module:
        model = self.model_spec
        if isinstance(model, nn.Module) and hasattr(model, "forward_mixed"):
            return model
        from mixfast.model import create_model

        kwargs = dict(self.model_kwargs)
        if "num_classes" not in kwargs and "task_classes" not in kwargs:
            kwargs["num_classes"] = num_classes(sl_data)
        return create_model(model, **kwargs)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: each component's own state (layout in mixfast/checkpoint.py)."""
        aug = getattr(self.config.augment, "generator", None)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "stage": self.stage,
            "position": self.position.state_dict(),
            "streams": {s.name: s.state_dict() for s in self.batches.streams},
            "rng": ckpt.rng_state(),
            "augment_rng": aug.get_state() if isinstance(aug, torch.Generator) else None,
            "epoch_state": self.meters.state_dict() if self.position.step_in_epoch else None,
            "totals": self.totals,
            "rows": self.rows,
            "config": self.config.to_dict(),
            "resolved": self.resolved,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resumable(self.config, self.steps, state)
        ckpt.load_model_state(self.model, state["model"])
        self.position.load_state_dict(state["position"])
        self.totals, self.rows = state["totals"], state["rows"]
        if state["stage"] is not None:
            self._new_stage(state["stage"])
            self.optimizer.load_state_dict(state["optimizer"])
        for s in self.batches.streams:
            s.load_state_dict(state["streams"][s.name])
        ckpt.set_rng_state(state["rng"])
        aug = getattr(self.config.augment, "generator", None)
        if isinstance(aug, torch.Generator) and state["augment_rng"] is not None:
            aug.set_state(state["augment_rng"])
        self.meters.load_state_dict(state["epoch_state"])

    def _save(self, out: Path | None) -> None:
        if out is not None and self.dist.main:
            ckpt.save_checkpoint(self.state_dict(), out / "last.pt")

    # ------------------------------------------------------------------ the loop

    def _run(self, out: Path | None) -> TrainResult:
        if out is not None and self.config.resume:
            self.load_state_dict(ckpt.load_checkpoint(out / "last.pt"))
        if out is not None and self.dist.main:
            ckpt.claim_run_folder(out)
            ckpt.remove_stale_temporaries(out)
            ckpt.write_json(
                out / "config.json", {**self.config.to_dict(), "resolved": self.resolved}
            )
            # from the checkpoint's rows: a crash between a metrics line and its checkpoint
            # never leaves a row the resumed run would write again
            ckpt.write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows))
        specs = self.schedule.epochs()
        while not self.position.finished and self.position.epoch < len(specs):
            spec = specs[self.position.epoch]
            if self._train_epoch(spec, out):
                return self._result(completed=False)
            self._end_epoch(spec, out)
        self.position.finished = True
        if self.tests and self.totals.get("test_top1") is None:
            self.totals["test_top1"] = evaluate(self.model, self.tests, self.dist, self._autocast)
        result = self._result(completed=True)
        if out is not None and self.dist.main:
            self._save(out)
            ckpt.write_json(out / "result.json", result.to_dict())
        return result

    def _train_epoch(self, spec: EpochSpec, out: Path | None) -> bool:
        """Train one epoch from the saved position; True when asked to stop early."""
        cfg, phase, pos = self.config, spec.phase, self.position
        if self.stage != stage_of(phase, cfg.finetune_from):
            self._new_stage(stage_of(phase, cfg.finetune_from))
        net = self._phase_net(phase)
        if pos.step_in_epoch == 0:
            for s in self.batches.of_phase(phase):
                s.new_pass()
        self.meters.start_epoch(pos.global_step)
        loss_fn = self._loss_fn(phase, net)
        step_flops = self.totals.setdefault("step_flops", {})
        if phase not in step_flops:  # once per phase, untimed
            step_flops[phase] = self._count_flops(phase)
        steps = self.epoch_steps[spec.index]
        bar = progress_bar(cfg.progress and self.dist.main, steps, f"{phase} {spec.index + 1}")
        bar.update(pos.step_in_epoch)
        self.model.train()
        clock = time.perf_counter()
        for _ in range(pos.step_in_epoch, steps):
            self._train_step(phase, net, loss_fn)
            pos.step_in_epoch += 1
            pos.global_step += 1
            bar.update(1)
            last = pos.step_in_epoch == steps
            if pos.global_step % cfg.log_every == 0 or last:
                self._check(phase, bar, clock)
            if self.stops.should_stop(pos.global_step, last, self.dist, self.device):
                self.meters.train_s += time.perf_counter() - clock
                bar.close()
                self._stop(out)
                return True
        bar.close()
        self._sync()
        self.meters.train_s += time.perf_counter() - clock
        return False

    def _train_step(self, phase: str, net: nn.Module, loss_fn: LossFn) -> None:
        cfg = self.config
        if self.graphs is not None:
            return self._graphed_step(phase, net, loss_fn)
        for micro in range(cfg.accum_steps):
            batch = self.batches.next(phase, self._ssl_rows(phase))
            mask = self._masks(phase, batch)
            sync = micro == cfg.accum_steps - 1 or not self.dist.enabled
            with contextlib.nullcontext() if sync else net.no_sync(), self._autocast():
                loss, parts = loss_fn(net, batch, self._alpha(phase), mask)
            (loss / cfg.accum_steps).backward()
            self.position.micro_step += 1
            step_done = self.position.micro_step % cfg.accum_steps == 0
            self.meters.add(loss, parts, step_done)
        self._optimizer_step()

    def _graphed_step(self, phase: str, net: nn.Module, loss_fn: LossFn) -> None:
        """One step as a replay of the phase's CUDA graph (batch, masks, a(t), lr copied in);
        a mix phase with two SSL sub-batch sizes (ssl_share) has a graph for each."""
        rows = self._ssl_rows(phase)
        batch = self.batches.next(phase, rows)
        mask = self._masks(phase, batch)
        mask = None if isinstance(mask, int) else mask  # an SL step's unused masking offset
        self._set_lr()
        run = whole_step(
            loss_fn, net, self.optimizer, self._trainable, self.config.clip_grad, self._autocast
        )
        inputs = (batch, self._alpha(phase), mask)
        loss, parts = self.graphs.step((phase, self.stage, rows), run, inputs, self._trainable)
        self.position.micro_step += 1
        self.meters.add(loss, parts, step_done=True)

    def _set_lr(self) -> None:
        cfg, stage = self.config, self.resolved["stages"][self.stage]
        lr = warmup_cosine(
            self._stage_step(), stage["total_steps"], stage["warmup_steps"], stage["lr"], cfg.min_lr
        )
        set_lr(self.optimizer, lr)
        self.lr = lr

    def _optimizer_step(self) -> None:
        cfg = self.config
        self._set_lr()
        params = [p for p in self._trainable if p.grad is not None]
        if cfg.clip_grad or cfg.nonfinite == "skip":
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad or math.inf, foreach=True)
            if cfg.nonfinite == "skip" and not torch.isfinite(norm).item():
                return self._skip_step()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _skip_step(self) -> None:
        pos = self.position
        self.optimizer.zero_grad(set_to_none=True)
        self.totals["skipped_steps"] += 1
        self.meters.skip(pos.global_step, pos.step_in_epoch, pos.epoch, MAX_SKIPPED_SHARE)

    def _stage_step(self) -> int:
        """Optimizer steps already done in the current stage."""
        done = sum(
            self.epoch_steps[spec.index]
            for spec in self.schedule.epochs()[: self.position.epoch]
            if stage_of(spec.phase, self.config.finetune_from) == self.stage
        )
        return done + self.position.step_in_epoch

    def _alpha(self, phase: str) -> torch.Tensor | None:
        return self.mix.alpha(self.position) if phase == "mix" else None

    def _ssl_rows(self, phase: str) -> int | None:
        return self.mix.ssl_rows(self.position) if phase == "mix" else None

    def _count_flops(self, phase: str) -> float:
        """Model FLOPs of one optimizer step of `phase` on all ranks (forward + backward); mix
        steps of two SSL sub-batch sizes count at their mean (FLOPs are linear in the rows)."""
        mean = self.mix.mean_rows() if phase == "mix" else None
        if mean is None or mean == int(mean):
            return self._flops_at(phase, None if mean is None else int(mean))
        low, high = (self._flops_at(phase, int(mean) + i) for i in (0, 1))
        return low + (mean - int(mean)) * (high - low)  # a fraction: the phase's sum is whole

    def _flops_at(self, phase: str, ssl_rows: int | None) -> int:
        fn = make_loss(phase, self.config, len(self.batches.sl_streams), self._mixed_kwargs)
        batch = self.batches.sample(phase, self.config.batch_size, ssl_rows)
        alpha = torch.tensor(0.5, device=self.device) if phase == "mix" else None
        with self._autocast():
            flops = micro_batch_flops(
                self.model, fn, batch, alpha, self._masks(phase, batch), self._trainable
            )
        return flops * self.config.accum_steps * self.dist.world

    def _masks(self, phase: str, batch: dict[str, Any]) -> Any:
        """Masks keyed by the micro-batch's global index: micro-batch m of rank r is global
        micro-batch m * W + r, the one a single process meets there, so DDP masks alike."""
        offset = self.position.micro_step * self.dist.world + self.dist.rank
        if not self._precompute_masks:
            return offset
        return phase_masks(self.model, self.config, phase, batch, offset)

    def _loss_fn(self, phase: str, net: nn.Module) -> LossFn:
        key = (phase, id(net))
        if key not in self._losses:
            fn = make_loss(phase, self.config, len(self.batches.sl_streams), self._mixed_kwargs)
            if self.resolved["compile"]:
                fn = torch.compile(fn, backend=self.config.compile_backend)
            self._losses[key] = fn
        return self._losses[key]

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
        )
        self.stage = stage
        self._net_phase = None
        if self.graphs is not None:  # the previous stage's graphs step its optimizer
            self.graphs.forget(lambda key: key[1] == stage)

    def _phase_net(self, phase: str) -> nn.Module:
        """The model as `phase` calls it: under DDP with the phase's unused parameters frozen."""
        if self._net_phase != phase:
            cast = weight_cast(self.resolved["amp"], self.dist.enabled)  # ops/cast_once.py
            net = Objectives(self.model, cast_dtype=cast)
            if self.dist.enabled:
                fn = make_loss(phase, self.config, len(self.batches.sl_streams), self._mixed_kwargs)
                batch = self.batches.sample(phase)
                alpha = torch.tensor(0.5, device=self.device) if phase == "mix" else None
                probe = lambda: fn(net, batch, alpha, self._masks(phase, batch))[0]  # noqa: E731
                net = wrap_ddp(net, self._trainable, probe, self.device)
            self._net, self._net_phase = net, phase
        return self._net

    # ------------------------------------------------------------------ bookkeeping

    def _check(self, phase: str, bar=None, clock: float = 0.0) -> None:
        """The periodic host sync: non-finite check (stop) and the progress bar."""
        where = f"phase {phase}, epoch {self.position.epoch + 1}"
        if self.config.nonfinite == "stop":
            self.meters.raise_if_nonfinite(where, self.config.out)
        per = self.config.batch_size * self.dist.world  # samples per objective per micro-batch
        objectives = (phase != "sl") + (phase != "ssl") * len(self.batches.sl_streams)
        self.meters.show(bar, clock, images_per_micro=per * objectives)

    def _end_epoch(self, spec: EpochSpec, out: Path | None) -> None:
        meters, phase = self.meters, spec.phase
        self._check(phase)
        start = time.perf_counter()
        top1 = self.evaluate() if phase != "ssl" and self.evals else [None] * len(self.evals)
        eval_s = time.perf_counter() - start
        loss, loss_ssl, loss_sl = meters.epoch_means()
        per, tasks = self.config.batch_size * self.dist.world, len(self.batches.sl_streams)
        rows = self.mix.epoch_ssl_rows(self.position) if phase == "mix" else None
        ssl = None if rows is None else rows * self.dist.world * self.config.accum_steps
        ssl_n, sl_n = meters.add_epoch_to(self.totals, phase, eval_s, per, tasks, ssl)
        row = {
            "phase": phase,
            "epoch": spec.index + 1,
            "phase_epoch": spec.phase_epoch + 1,
            "steps": self.epoch_steps[spec.index],
            "global_step": self.position.global_step,
            "loss": loss,  # mean over the epoch's micro-batches on all ranks
            "loss_ssl": loss_ssl if phase != "sl" else None,
            "loss_sl": loss_sl if phase != "ssl" else None,
            "alpha": self.schedule.alpha_range(spec, self.steps["mix"]),
            "lr": self.lr,
            "val_top1": top1[0] if top1 else None,
            "val_top1_tasks": top1,
            "train_s": meters.train_s,
            "eval_s": eval_s,
            "wall_s": self.totals["wall_s"],
            "images_per_s": (ssl_n + sl_n) / max(meters.train_s, 1e-9),
        }
        self.rows.append(row)
        self.position.epoch += 1
        self.position.step_in_epoch = 0
        if out is not None and self.dist.main:
            with open(out / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
        self._save(out)

    def evaluate(self) -> list[float | None]:
        """Top-1 in [0, 1] on each validation set (task k uses head k), summed over ranks."""
        return evaluate(self.model, self.evals, self.dist, self._autocast)

    # ------------------------------------------------------------------ stopping

    def _stop(self, out: Path | None) -> None:
        self._sync()
        self._check(self.schedule.epochs()[self.position.epoch].phase)
        self._save(out)
        if self.stops.signal is None:
            return
        where = f"; resume with --resume --out {out}" if out else ""
        step = self.position.global_step
        print(f"mixfast: stopped at step {step}, checkpoint saved{where}", file=sys.stderr)
        if self.stops.signal == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(self.stops.exit_code())

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _result(self, completed: bool) -> TrainResult:
        return TrainResult.collect(
            self.totals,
            self.rows,
            self.resolved,
            global_step=self.position.global_step,
            completed=completed,
            tasks=len(self.evals),
            tests=len(self.tests),
        )


def train(
    config: TrainConfig,
    model: nn.Module | str,
    ssl_data: Data | None,
    sl_data: Data | Sequence[Data],
    val_data: Data | Sequence[Data] | None = None,
    test_data: Data | Sequence[Data] | None = None,
    **trainer_kwargs: Any,
) -> TrainResult:
    """Train `model` as `config` says; what `mixfast train` and `mixfast compare` call."""
    trainer = MixTrainer(model, config, **trainer_kwargs)
    return trainer.fit(ssl_data, sl_data, val_data, test_data)


__all__ = ["MixTrainer", "Position", "train"]
