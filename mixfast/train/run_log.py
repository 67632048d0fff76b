"""`RunLog`: what a run reports and the files that report it.

It owns the metrics rows (one per epoch: DIR/metrics.jsonl) and the run's totals (wall seconds
per phase, evaluation seconds, sample passes per objective, skipped steps, FLOPs per step), and
writes DIR/config.json at the start and DIR/result.json at the end. Its state (`rows`,
`totals`) goes into the checkpoint, so a resumed run rewrites metrics.jsonl from the
checkpoint: a crash between a metrics line and its checkpoint never leaves a row twice. Only
the main rank writes.

It also redraws DIR/curves.png from the rows at every epoch's end, writes the pictures it is
given (`add_picture`: the reconstruction grids of pictures.py) and, with `tensorboard`, holds a
SummaryWriter on DIR/tensorboard/: per epoch the scalars `epoch/*`, every `log_every` steps the
running means `step/*` (read at the trainer's periodic host sync), the grids as the image
`recon` and config.json's content as the text `config`. Its steps are optimizer steps; a
resumed run purges the events after its checkpoint's step, so none is counted twice.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixfast import checkpoint as ckpt
from mixfast.checks import SettingError
from mixfast.schedule import EpochSpec, MixSchedule
from mixfast.train.pictures import curves_png, png_bytes
from mixfast.train.plan import RunPlan

TENSORBOARD_INSTALL = "pip install tensorboard (or: pip install -e '.[tensorboard]')"


@dataclass
class TrainResult:
    top1: float | None  # validation top-1 of task 0 in [0, 1] after the last epoch
    top1_tasks: list[float | None]
    test_top1: float | None  # test top-1 of task 0, read once after the last epoch
    test_top1_tasks: list[float | None]
    wall_s: float  # total, evaluation included
    train_wall_s: float  # training only (the sum of phase_wall_s)
    phase_wall_s: dict[str, float]  # training seconds per phase
    eval_wall_s: float
    flops: int  # model FLOPs of the run's training steps (forward + backward), all ranks
    step_flops: dict[str, float]  # per optimizer step of each phase (mix: maybe a mean)
    sample_passes: dict[str, int]  # {"ssl": .., "sl": ..}: samples each objective saw
    budget: dict[str, Any]  # MixSchedule.budget of the whole plan
    epochs: list[dict[str, Any]]  # the rows of metrics.jsonl
    global_step: int
    skipped_steps: int
    completed: bool  # False when stopped early (stop_after, a signal)
    resolved: dict[str, Any]  # RunPlan.to_dict()
    top1_raw: float | None = None  # model_ema: the raw weights' (top1 is then the EMA's)
    test_top1_raw: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EpochReport:
    """What the trainer measured in one epoch, for its metrics row."""

    spec: EpochSpec
    steps: int
    global_step: int
    losses: list[float]  # mean loss, SSL loss, SL loss over the epoch's micro-batches
    alpha: list[float] | None  # a(t) of the epoch's first and last mix step
    lr: float | None
    top1: list[float | None]  # validation top-1 per task
    train_s: float
    eval_s: float
    passes: tuple[int, int]  # (SSL, SL) sample passes of the epoch (MixSchedule.sample_passes)
    top1_raw: list[float | None] | None = None  # model_ema: the raw weights' (top1: the EMA's)


def summary_writer_class() -> type:
    """torch's SummaryWriter; SettingError naming --tensorboard when tensorboard is missing."""
    try:
        import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise SettingError(
            f"{{tensorboard}} needs the tensorboard package, which is not installed ({exc}); "
            f"install it with: {TENSORBOARD_INSTALL}"
        ) from exc
    return SummaryWriter


class RunLog:
    """Rows and totals of a run on `plan`; files in `folder` (None: nothing written);
    `tensorboard`: also event files in folder/tensorboard/ (checked here: the package is
    installed)."""

    def __init__(
        self, schedule: MixSchedule, plan: RunPlan, folder: Path | None, tensorboard: bool = False
    ) -> None:
        self.plan, self.folder = plan, folder
        self._writer_class = summary_writer_class() if tensorboard else None
        self.writer: Any = None  # the SummaryWriter, from start() to close()
        self._step_logged = -1
        self.rows: list[dict[str, Any]] = []
        self.totals: dict[str, Any] = {
            "phase_wall_s": {p.name: 0.0 for p in schedule.phases},
            "eval_wall_s": 0.0,
            "wall_s": 0.0,
            "sample_passes": {"ssl": 0, "sl": 0},
            "skipped_steps": 0,
            "step_flops": {},
        }

    def state_dict(self) -> dict[str, Any]:
        return {"totals": self.totals, "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.totals, self.rows = state["totals"], state["rows"]
        self.totals.setdefault("step_flops", {})

    def start(self, config: dict[str, Any], global_step: int = 0) -> None:
        """DIR/config.json (the settings and the plan) and DIR/metrics.jsonl from the rows;
        the TensorBoard writer of a run at optimizer step `global_step`."""
        if self.folder is None:
            return
        resolved = {**config, "resolved": self.plan.to_dict()}
        ckpt.write_json(self.folder / "config.json", resolved)
        lines = "".join(json.dumps(row) + "\n" for row in self.rows)
        ckpt.write_text(self.folder / "metrics.jsonl", lines)
        if self._writer_class is not None and self.writer is None:
            purge = global_step + 1 if global_step else None  # a resumed run's later events
            self.writer = self._writer_class(str(self.folder / "tensorboard"), purge_step=purge)
            text = json.dumps(resolved, indent=2, default=str)
            code = "".join(f"    {line}\n" for line in text.split("\n"))  # markdown code block
            self.writer.add_text("config", code, global_step)
            self._step_logged = global_step

    def add_epoch(self, report: EpochReport) -> dict[str, Any]:
        """Add an epoch to the totals and write its metrics row; returns the row."""
        phase, (ssl_n, sl_n) = report.spec.phase, report.passes
        totals = self.totals
        totals["phase_wall_s"][phase] += report.train_s
        totals["eval_wall_s"] += report.eval_s
        totals["wall_s"] += report.train_s + report.eval_s
        totals["sample_passes"]["ssl"] += ssl_n
        totals["sample_passes"]["sl"] += sl_n
        loss, loss_ssl, loss_sl = report.losses
        row = {
            "phase": phase,
            "epoch": report.spec.index + 1,
            "phase_epoch": report.spec.phase_epoch + 1,
            "steps": report.steps,
            "global_step": report.global_step,
            "loss": loss,  # mean over the epoch's micro-batches on all ranks
            "loss_ssl": loss_ssl if phase != "sl" else None,
            "loss_sl": loss_sl if phase != "ssl" else None,
            "alpha": report.alpha,
            "lr": report.lr,
            "val_top1": report.top1[0] if report.top1 else None,
            "val_top1_tasks": report.top1,
            "val_top1_raw": report.top1_raw[0] if report.top1_raw else None,
            "train_s": report.train_s,
            "eval_s": report.eval_s,
            "wall_s": totals["wall_s"],
            "images_per_s": (ssl_n + sl_n) / max(report.train_s, 1e-9),
        }
        self.rows.append(row)
        if self.folder is not None:
            with open(self.folder / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
            curves = curves_png(self.rows, self.plan.stage_of)
            ckpt.write_atomic(self.folder / "curves.png", lambda h: h.write(curves), binary=True)
        self._add_epoch_scalars(row)
        return row

    def _add_epoch_scalars(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        scalars = {
            "loss": row["loss"],
            "loss_ssl": row["loss_ssl"],
            "loss_sl": row["loss_sl"],
            "val_top1": row["val_top1"],
            "alpha": row["alpha"][-1] if row["alpha"] else None,  # a(t) at the epoch's end
            "lr": row["lr"],
            "images_per_s": row["images_per_s"],
            "epoch": row["epoch"],
        }
        tasks = row["val_top1_tasks"] or []
        scalars.update(
            {f"val_top1_task{k}": v for k, v in enumerate(tasks) if k and len(tasks) > 1}
        )
        for name, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(f"epoch/{name}", value, row["global_step"])
        self.writer.flush()

    def add_step(self, phase: str, global_step: int, meters: Any, stages: Any) -> None:
        """TensorBoard `step/*`: this rank's running mean losses of the epoch so far
        (`meters.local_means()`, read only with a writer), the lr and the mean gradient norm
        since the last log (`stages.take_mean_norm()`), once per step."""
        if self.writer is None or global_step == self._step_logged:
            return
        self._step_logged = global_step
        means = meters.local_means()
        scalars = {"loss": means["loss"], "lr": stages.lr, "grad_norm": stages.take_mean_norm()}
        scalars["loss_ssl"] = means["ssl"] if phase != "sl" else None
        scalars["loss_sl"] = means["sl"] if phase != "ssl" else None
        for name, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(f"step/{name}", value, global_step)

    def add_picture(
        self, names: list[str], grid: Any, global_step: int, tag: str = "recon"
    ) -> None:
        """A uint8 picture ([H, W] or [H, W, 3]) as DIR/<name> for each name, and as the
        TensorBoard image `tag` at `global_step`."""
        if self.folder is None:
            return
        data = png_bytes(grid)
        for name in names:
            ckpt.write_atomic(self.folder / name, lambda h: h.write(data), binary=True)
        if self.writer is not None:
            formats = "HW" if grid.ndim == 2 else "HWC"
            self.writer.add_image(tag, grid, global_step, dataformats=formats)
            self.writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer (flushing its events); safe to call again."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def step_flops(self, phase: str) -> float | None:
        return self.totals["step_flops"].get(phase)

    def set_step_flops(self, phase: str, flops: float) -> None:
        self.totals["step_flops"][phase] = flops

    def add_skipped_step(self) -> None:
        self.totals["skipped_steps"] += 1

    def result(self, *, global_step: int, completed: bool, tasks: int, tests: int) -> TrainResult:
        """The run's result from its totals and rows (`tasks` validation sets, `tests` test
        sets)."""
        totals, rows = self.totals, self.rows
        last = next((r for r in reversed(rows) if r["val_top1"] is not None), None)
        top1 = last["val_top1_tasks"] if last else [None] * tasks
        test = totals.get("test_top1") or [None] * tests
        step_flops = dict(totals["step_flops"])
        steps = dict.fromkeys(step_flops, 0)
        for row in rows:
            steps[row["phase"]] = steps.get(row["phase"], 0) + row["steps"]
        return TrainResult(
            top1=top1[0] if top1 else None,
            top1_tasks=top1,
            test_top1=test[0] if test else None,
            test_top1_tasks=test,
            wall_s=totals["wall_s"],
            train_wall_s=sum(totals["phase_wall_s"].values()),
            phase_wall_s=dict(totals["phase_wall_s"]),
            eval_wall_s=totals["eval_wall_s"],
            flops=round(sum(step_flops.get(phase, 0) * n for phase, n in steps.items())),
            step_flops=step_flops,
            sample_passes=dict(totals["sample_passes"]),
            budget=self.plan.budget,
            epochs=list(rows),
            global_step=global_step,
            skipped_steps=totals["skipped_steps"],
            completed=completed,
            resolved=self.plan.to_dict(),
            top1_raw=last.get("val_top1_raw") if last else None,
            test_top1_raw=(totals.get("test_top1_raw") or [None])[0],
        )

    def finish(self, result: TrainResult) -> None:
        """DIR/result.json (and the TensorBoard writer closed)."""
        if self.folder is not None:
            ckpt.write_json(self.folder / "result.json", result.to_dict())
        if self.writer is not None and result.test_top1 is not None:
            self.writer.add_scalar("final/test_top1", result.test_top1, result.global_step)
        self.close()
