"""`MixTrainer`: SL, SSL+SL and MixTraining through one code path, read as the plan of a run.

The plan comes from `MixSchedule` (SSL x (E_ssl - M) -> MIX x M -> SL x (E_sl - M)); each epoch
of it is a loop of optimizer steps of its phase, then an evaluation, a metrics row and a
checkpoint. The jobs around that loop belong to components, each owning its state:

    RunPlan (plan.py)                  what the run derives from its config and data, frozen
    PhaseBatches (objectives.py)       the data streams of each phase and their order
    OptimizerStages (optimizer_stage)  the pre-train / fine-tune AdamW and the learning rate
    StepRunner (step_runner.py)        one step: eager, accumulated, compiled or CUDA-graphed
    ModelEma (ema.py), Recipe          model_ema's weights; mixup, cutmix, aa, reprob (recipe.py)
    Meters, Position (meters.py)       device-side sums of the epoch; where the run is
    RunLog (run_log.py)                rows, totals, config.json, metrics.jsonl, result.json
    Pictures (pictures.py)             recon-*.png grids; RunLog: curves.png, TensorBoard
    Checkpointer (checkpointer.py)     DIR/last.pt from each component's state_dict
    StopRequests (stopping.py)         SIGINT / SIGTERM / stop_after at a step boundary

The run folder is a `RunFolder` (mixfast/checkpoint.py) owned by the caller, or by the trainer
when it is given none. Host syncs: none in the hot path; `nonfinite="stop"` notices a NaN/inf
loss up to `log_every` steps late, names its first step, and keeps DIR/last.pt the last good
checkpoint. Distributed (torchrun): DDP per phase, or FSDP2 (sharding.py); rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mixfast.checkpoint import RunFolder
from mixfast.schedule import EpochSpec, MixSchedule
from mixfast.train.checkpointer import Checkpointer
from mixfast.train.config import TrainConfig
from mixfast.train.distributed import Dist, init_distributed, resolve_device
from mixfast.train.graphs import make_step_graphs
from mixfast.train.meters import Meters, Position, progress_bar
from mixfast.train.mix_steps import MixSteps
from mixfast.train.objectives import PhaseBatches
from mixfast.train.optimizer_stage import OptimizerStages
from mixfast.train.pictures import Pictures
from mixfast.train.plan import RunPlan, resolve_plan
from mixfast.train.recipe import recipe_of
from mixfast.train.run_log import EpochReport, RunLog, TrainResult
from mixfast.train.sharding import place_model
from mixfast.train.step_runner import StepRunner
from mixfast.train.stopping import StopRequests
from mixfast.train.streams import EvalBatches, Stream, check_labels, num_classes

Data = Dataset | DataLoader
MAX_SKIPPED_SHARE = 0.5  # nonfinite="skip" stops when more than this share of an epoch skips


class MixTrainer:
    """Runs the phase plan of a TrainConfig on a model implementing mixfast.model.MixModel.

    `model`: such a module (mixfast.create_model), or a timm ViT name / VisionTransformer
    (built with `create_model(model, **model_kwargs)`, num_classes read from the labels when not
    given). `config`: a TrainConfig, or a MixSchedule (a "mix" config with its epochs); keyword
    overrides replace config fields. `fit` = `prepare` (everything that can refuse the run,
    nothing written) + `run`.
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
        self.model: nn.Module | None = None  # built by prepare()
        self.plan: RunPlan | None = None
        self.dist = Dist()
        self.position = Position()
        self.stops = StopRequests(config.stop_after, config.log_every)
        self.folder: RunFolder | None = None
        self._owns_folder = False

    def fit(
        self,
        ssl_data: Data | None,
        sl_data: Data | Sequence[Data],
        val_data: Data | Sequence[Data] | None = None,
        test_data: Data | Sequence[Data] | None = None,
        *,
        folder: RunFolder | None = None,
    ) -> TrainResult:
        """Train the whole plan (or resume it); returns the result also written to result.json.

        val_data (one per task) is evaluated after every epoch that trains a head; test_data
        once, after the last epoch (its top-1 is result.test_top1). `folder`: the run folder
        when the caller holds it (else the trainer makes, claims and releases config.out's)."""
        self.prepare(ssl_data, sl_data, val_data, test_data, folder=folder)
        return self.run()

    # ------------------------------------------------------------------ setup

    def prepare(self, *data: Any, folder: RunFolder | None = None) -> None:
        """Build the model, streams, plan and components from `data` (fit's ssl_data,
        sl_data, val_data, test_data); load the checkpoint when resuming. Raises
        (SettingError / ValueError) before anything is written."""
        cfg = self.config
        ssl_data, sl_data, val_data, test_data = (*data, None, None)[:4]
        sl_list, val_list, test_list = (_as_list(d) for d in (sl_data, val_data, test_data))
        if cfg.task_weights is not None and len(cfg.task_weights) != len(sl_list):
            raise ValueError(
                f"task_weights has {len(cfg.task_weights)} entries for {len(sl_list)} tasks"
            )
        self._owns_folder = folder is None and cfg.out is not None
        self.folder = RunFolder(cfg.out, cfg.resume) if self._owns_folder else folder
        self.dist = init_distributed(cfg.device, cfg.fsdp)
        try:
            device = resolve_device(cfg.device, self.dist)
            if device.type == "cuda":
                torch.cuda.set_device(device)
            ssl_data = None if cfg.pipeline == "sl" else ssl_data
            self._build(device, ssl_data, sl_list, val_list, test_list)
            self.checkpointer.resume()
        except BaseException:
            self.dist.close()
            raise

    def _build(
        self, device: torch.device, ssl_data: Data | None, sl_list: list, val_list, test_list
    ) -> None:
        cfg, d = self.config, self.dist
        torch.manual_seed(cfg.seed)
        self.model = self._build_model(sl_list[0]).to(device)
        self.batches = self._phase_batches(device, ssl_data, sl_list)
        check_labels(self.batches.sl_streams, getattr(self.model, "task_classes", None))
        evals = dict(batch_size=2 * cfg.batch_size, rank=d.rank, world=d.world, device=device)
        self.evals = [EvalBatches(v, **evals) for v in val_list if v is not None]
        self.tests = [EvalBatches(t, **evals) for t in test_list if t is not None]
        graphs = make_step_graphs(cfg, device, d.world)
        sl_streams = self.batches.sl_streams
        self.plan = resolve_plan(
            cfg,
            self.schedule,
            ssl_steps=(self.batches.ssl_stream or sl_streams[0]).steps,
            sl_steps=max(s.steps for s in sl_streams),
            world=d.world,
            device=device,
            tasks=len(sl_streams),
            two_stream=self.batches.ssl_stream is not None,
            cuda_graph=graphs is not None,
            storage=self.batches.storage,
        )
        self.meters = Meters(device, d)
        self.mix = MixSteps(self.schedule, self.plan.steps_per_epoch["mix"], cfg.batch_size, device)
        place_model(self.model, cfg, self.plan)  # grad checkpointing; FSDP2 (sharding.py)
        self.stages = OptimizerStages(self.model, cfg, self.plan)
        self.runner = StepRunner(
            self.model,
            cfg,
            self.plan,
            self.batches,
            self.stages,
            self.meters,
            self.position,
            self.mix,
            d,
            graphs,
            self._skipped_step,
        )
        writes = self.folder.path if self.folder is not None and d.main else None
        self.log = RunLog(self.schedule, self.plan, writes, cfg.tensorboard)
        self.pictures = Pictures(self.model, cfg, self.log, (*val_list, ssl_data, *sl_list))
        components = [self.stages, self.position, self.batches, self.meters, self.log]
        components.append(self.runner.ema)
        self.checkpointer = Checkpointer(
            self.model, components, cfg, self.plan, self.folder, d.main
        )

    def _phase_batches(
        self, device: torch.device, ssl_data: Data | None, sl_list: list
    ) -> PhaseBatches:
        cfg, d = self.config, self.dist
        stream = dict(batch_size=cfg.batch_size, world=d.world, rank=d.rank, accum=cfg.accum_steps)
        stream |= dict(seed=cfg.seed, device=device, num_workers=cfg.num_workers)
        sl_streams = [
            Stream(s, 1 + k, name=f"sl_data[{k}]" if len(sl_list) > 1 else "sl_data", **stream)
            for k, s in enumerate(sl_list)
        ]
        ssl_stream = None if ssl_data is None else Stream(ssl_data, 0, name="ssl_data", **stream)
        recipe = recipe_of(cfg, self.model.task_classes)  # mixup, cutmix, aa, reprob
        return PhaseBatches(ssl_stream, sl_streams, cfg.augment, recipe)

    def _build_model(self, sl_data: Data) -> nn.Module:
        model = self.model_spec
        if isinstance(model, nn.Module) and hasattr(model, "forward_mixed"):
            return model
        from mixfast.model import create_model

        kwargs = dict(self.model_kwargs)
        if "num_classes" not in kwargs and "task_classes" not in kwargs:
            kwargs["num_classes"] = num_classes(sl_data)
        return create_model(model, **kwargs)

    # ------------------------------------------------------------------ the plan

    def run(self) -> TrainResult:
        """Train the plan from where the run stands; files go to the run folder."""
        try:
            if self._owns_folder and self.dist.main:
                self.folder.claim()
            self.log.start(self.config.to_dict(), self.position.global_step)
            with self.stops.catching_signals():
                return self._run_epochs()
        finally:
            self.log.close()
            if self._owns_folder and self.dist.main:
                self.folder.release()
            self.dist.close()

    def _run_epochs(self) -> TrainResult:
        specs = self.schedule.epochs()
        while not self.position.finished and self.position.epoch < len(specs):
            spec = specs[self.position.epoch]
            if self._train_epoch(spec):
                return self._result(completed=False)
            self._end_epoch(spec)
        self.position.finished = True
        if self.tests and self.log.totals.get("test_top1") is None:
            test, raw = self.evaluate(self.tests)
            self.log.totals.update(test_top1=test, test_top1_raw=raw)
        result = self._result(completed=True)
        self.checkpointer.save()
        self.log.finish(result)
        return result

    def _train_epoch(self, spec: EpochSpec) -> bool:
        """Train one epoch from the saved position; True when asked to stop early."""
        phase, pos = spec.phase, self.position
        if self.stages.enter(phase):
            self.runner.new_stage()
        self.runner.net(phase)  # under DDP: the phase's unused parameters frozen, then counted
        if pos.step_in_epoch == 0:
            for s in self.batches.of_phase(phase):
                s.new_pass()
        self.meters.start_epoch(pos.global_step)
        if self.log.step_flops(phase) is None:  # once per phase, untimed
            self.log.set_step_flops(phase, self.runner.count_flops(phase))
        steps = self.plan.epoch_steps[spec.index]
        stage_start = self.plan.stage_steps_before(spec.index)
        show = self.config.progress and self.dist.main
        bar = progress_bar(show, steps, f"{phase} {spec.index + 1}")
        bar.update(pos.step_in_epoch)
        self.model.train()
        clock = time.perf_counter()
        for _ in range(pos.step_in_epoch, steps):
            self.runner.step(phase, stage_start + pos.step_in_epoch)
            pos.step_in_epoch += 1
            pos.global_step += 1
            bar.update(1)
            last = pos.step_in_epoch == steps
            if pos.global_step % self.config.log_every == 0 or last:
                self._check(spec, bar, clock)
            if self.stops.should_stop(pos.global_step, last, self.dist, self.runner.device):
                self.meters.train_s += time.perf_counter() - clock
                bar.close()
                self._stop(spec)
                return True
            if self._periodic_save_due(last):
                self.meters.train_s += time.perf_counter() - clock
                self._check(spec)  # never a non-finite state in last.pt
                self.checkpointer.save()
                clock = time.perf_counter()
        bar.close()
        self._sync()
        self.meters.train_s += time.perf_counter() - clock
        return False

    def _end_epoch(self, spec: EpochSpec) -> None:
        """Validation, the metrics row and a checkpoint."""
        self._check(spec)
        start = time.perf_counter()
        skip = spec.phase == "ssl" or not self.evals
        top1, raw = ([None] * len(self.evals), None) if skip else self.evaluate(self.evals)
        steps = self.plan.epoch_steps[spec.index]
        report = EpochReport(
            spec=spec,
            steps=steps,
            global_step=self.position.global_step,
            losses=self.meters.epoch_means(),
            alpha=self.schedule.alpha_range(spec, self.plan.steps_per_epoch["mix"]),
            lr=self.stages.lr,
            top1=top1,
            top1_raw=raw,
            train_s=self.meters.train_s,
            eval_s=time.perf_counter() - start,
            passes=self._passes(spec, steps),
        )
        self.log.add_epoch(report)
        self.pictures.after_epoch(spec, self.position.global_step)  # recon-*.png, main rank
        self.meters.end_epoch()
        self.position.epoch += 1
        self.position.step_in_epoch = 0
        self.checkpointer.save()

    def evaluate(self, sets: list[EvalBatches] | None = None) -> tuple[list, list | None]:
        """(top-1 in [0, 1] per set (default: validation; task k uses head k) summed over ranks,
        the raw weights' or None): with model_ema on, the first is the EMA weights' (ema.py)."""
        ema = self.runner.ema
        return ema.evaluate(self.model, sets or self.evals, self.dist, self.runner.autocast)

    # ------------------------------------------------------------------ bookkeeping

    def _passes(self, spec: EpochSpec, steps: int) -> tuple[int, int]:
        """(SSL, SL) sample passes of the epoch's first `steps` steps on all ranks."""
        first, phase_steps = 0, steps
        if spec.phase == "mix":
            first, phase_steps = self.mix.index(self.position, 0), self.mix.total
        copies = self.dist.world * self.config.accum_steps
        return self.schedule.sample_passes(
            spec.phase,
            first,
            first + steps,
            phase_steps,
            self.config.batch_size,
            self.plan.tasks,
            copies,
        )

    def _check(self, spec: EpochSpec, bar=None, clock: float = 0.0) -> None:
        """The periodic host sync: non-finite check (stop) and the progress bar."""
        where = f"phase {spec.phase}, epoch {self.position.epoch + 1}"
        if self.config.nonfinite == "stop":
            self.meters.raise_if_nonfinite(where, self.config.out)
        self.log.add_step(spec.phase, self.position.global_step, self.meters, self.stages)
        if bar is not None and not bar.disable:
            self.meters.show(bar, clock, sum(self._passes(spec, self.position.step_in_epoch)))

    def _periodic_save_due(self, last_in_epoch: bool) -> bool:
        """save_every: a mid-epoch checkpoint every N steps (an epoch's end saves anyway)."""
        every = self.config.save_every
        return bool(every) and not last_in_epoch and self.position.global_step % every == 0

    def _skipped_step(self) -> None:
        pos = self.position
        self.log.add_skipped_step()
        self.meters.skip(pos.global_step, pos.step_in_epoch, pos.epoch, MAX_SKIPPED_SHARE)

    def _stop(self, spec: EpochSpec) -> None:
        self._sync()
        self._check(spec)
        self.checkpointer.save()
        if self.stops.signal is None:
            return
        out = self.config.out
        where = f"; resume with --resume --out {out}" if out else ""
        step = self.position.global_step
        print(f"mixfast: stopped at step {step}, checkpoint saved{where}", file=sys.stderr)
        if self.stops.signal == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(self.stops.exit_code())

    def _sync(self) -> None:
        if self.runner.device.type == "cuda":
            torch.cuda.synchronize(self.runner.device)

    def _result(self, completed: bool) -> TrainResult:
        return self.log.result(
            global_step=self.position.global_step,
            completed=completed,
            tasks=len(self.evals),
            tests=len(self.tests),
        )


def _as_list(data: Any) -> list:
    return list(data) if isinstance(data, list | tuple) else [data]


FIT_KEYWORDS = ("val_data", "test_data", "folder")


def train(config: TrainConfig, model: nn.Module | str, *data: Any, **kwargs: Any) -> TrainResult:
    """Train `model` as `config` says: `MixTrainer(model, config, **kwargs).fit(*data, ...)`,
    where `data` and the keywords val_data, test_data and folder are fit's; what `mixfast
    compare` calls."""
    fit_kwargs = {name: kwargs.pop(name) for name in FIT_KEYWORDS if name in kwargs}
    return MixTrainer(model, config, **kwargs).fit(*data, **fit_kwargs)


__all__ = ["MixTrainer", "Position", "train"]
