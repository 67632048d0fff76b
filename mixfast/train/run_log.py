"""`RunLog`: what a run reports and the files that report it.

It owns the metrics rows (one per epoch: DIR/metrics.jsonl) and the run's totals (wall seconds
per phase, evaluation seconds, sample passes per objective, skipped steps, FLOPs per step), and
writes DIR/config.json at the start and DIR/result.json at the end. Its state (`rows`,
`totals`) goes into the checkpoint, so a resumed run rewrites metrics.jsonl from the
checkpoint: a crash between a metrics line and its checkpoint never leaves a row twice. Only
the main rank writes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixfast import checkpoint as ckpt
from mixfast.schedule import EpochSpec, MixSchedule
from mixfast.train.plan import RunPlan


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


class RunLog:
    """Rows and totals of a run on `plan`; files in `folder` (None: nothing written)."""

    def __init__(self, schedule: MixSchedule, plan: RunPlan, folder: Path | None) -> None:
        self.plan, self.folder = plan, folder
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

    def start(self, config: dict[str, Any]) -> None:
        """DIR/config.json (the settings and the plan) and DIR/metrics.jsonl from the rows."""
        if self.folder is None:
            return
        ckpt.write_json(self.folder / "config.json", {**config, "resolved": self.plan.to_dict()})
        lines = "".join(json.dumps(row) + "\n" for row in self.rows)
        ckpt.write_text(self.folder / "metrics.jsonl", lines)

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
            "train_s": report.train_s,
            "eval_s": report.eval_s,
            "wall_s": totals["wall_s"],
            "images_per_s": (ssl_n + sl_n) / max(report.train_s, 1e-9),
        }
        self.rows.append(row)
        if self.folder is not None:
            with open(self.folder / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
        return row

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
        )

    def finish(self, result: TrainResult) -> None:
        """DIR/result.json."""
        if self.folder is not None:
            ckpt.write_json(self.folder / "result.json", result.to_dict())
