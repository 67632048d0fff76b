"""Running sums of an epoch kept on the device (no host sync per step), read at check points.

The hot path only adds tensors: loss sums, a non-finite flag with the first bad step and its
loss, and the optimizer-step counter. `check` is the one host-sync point (every `log_every`
steps and at each epoch end): it raises on a non-finite loss and feeds the progress bar.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mixfast.train.config import NonFiniteLossError
from mixfast.train.distributed import Dist

LOSSES = ("loss", "ssl", "sl")


class Meters:
    """Sums of the epoch in progress; `state_dict` carries them across a mid-epoch resume."""

    def __init__(self, device: torch.device, dist: Dist) -> None:
        self.device, self.dist = device, dist
        self.sums: dict[str, torch.Tensor] = {}
        self.micro, self.train_s = 0, 0.0
        self.skipped = 0  # optimizer steps skipped in this epoch (nonfinite="skip")
        self._pending: dict[str, Any] | None = None

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float64, device=self.device)

    def start_epoch(self, global_step: int) -> None:
        """Zero sums (plus those restored by load_state_dict, once) at optimizer step
        `global_step`."""
        self.sums = {name: self._zero() for name in (*LOSSES, "bad_loss")}
        self.sums["bad"] = torch.zeros((), dtype=torch.bool, device=self.device)
        self.sums["bad_step"] = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.sums["step"] = torch.full((), global_step, dtype=torch.int64, device=self.device)
        self.micro, self.train_s, self.skipped = 0, 0.0, 0
        if self._pending is not None:
            for name in (*LOSSES, "bad_loss"):
                self.sums[name] += self._pending[name].to(self.device)
            self.micro, self.train_s = self._pending["micro"], self._pending["train_s"]
            self._pending = None

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], step_done: bool) -> None:
        """One micro-batch's loss; `step_done` when it was the optimizer step's last one."""
        s = self.sums
        loss = loss.detach()
        s["loss"] += loss
        s["ssl"] += parts.get("ssl", loss.new_zeros(())).detach()
        s["sl"] += parts.get("sl", loss.new_zeros(())).detach()
        self.micro += 1
        bad = ~torch.isfinite(loss)
        first = bad & ~s["bad"]
        s["bad_step"] = torch.where(first, s["step"], s["bad_step"])
        s["bad_loss"] = torch.where(first, loss.double(), s["bad_loss"])
        s["bad"] |= bad
        if step_done:
            s["step"] += 1

    def first_nonfinite(self) -> tuple[int, float] | None:
        """(step, loss) of the first non-finite loss on any rank (step -1: another rank's)."""
        flag = self.dist.all_max(self.sums["bad"].to(torch.int32))
        if not flag.item():
            return None
        return int(self.sums["bad_step"]), float(self.sums["bad_loss"])

    def raise_if_nonfinite(self, where: str, out: str | None) -> None:
        """NonFiniteLossError naming the first bad step and its loss; `where` names the phase
        and epoch; with a run folder, the message says its last.pt is the last good one."""
        bad = self.first_nonfinite()
        if bad is None:
            return
        step, value = bad
        at = f"step {step + 1}" if step >= 0 else "a step on another rank"
        last = Path(out or ".") / "last.pt"
        kept = f"; {last} holds the last good checkpoint" if out and last.is_file() else ""
        raise NonFiniteLossError(
            f"non-finite loss at {at} ({where}): loss={value}; training stopped{kept}"
        )

    def skip(self, global_step: int, step_in_epoch: int, epoch: int, max_share: float) -> None:
        """nonfinite="skip": report the skipped step; stop when more than `max_share` of the
        epoch's steps so far were skipped (the run is diverging)."""
        self.skipped += 1
        print(
            f"mixfast: skipped step {global_step + 1} (non-finite gradient norm; "
            f"{self.skipped} in this epoch)",
            file=sys.stderr,
        )
        done = step_in_epoch + 1
        if done >= 4 and self.skipped > max_share * done:
            raise NonFiniteLossError(
                f"nonfinite='skip' skipped {self.skipped} of {done} steps of epoch {epoch + 1}: "
                "the run is diverging; lower the learning rate or clip gradients"
            )

    def show(self, bar, clock: float, images: int) -> None:
        """Mean losses and images/s (`images`: sample passes of the epoch so far) on the
        progress bar (a host sync; skipped when hidden)."""
        if bar is None or bar.disable:
            return
        means = self.local_means()
        seconds = self.train_s + time.perf_counter() - clock
        bar.set_postfix(
            loss=f"{means['loss']:.4f}",
            ssl=f"{means['ssl']:.4f}",
            sl=f"{means['sl']:.4f}",
            img_s=f"{images / max(seconds, 1e-9):.0f}",
        )

    def local_means(self) -> dict[str, float]:
        """This rank's mean losses so far (a host sync; for the progress bar)."""
        micro = max(self.micro, 1)
        return {name: float(self.sums[name]) / micro for name in LOSSES}

    def epoch_means(self) -> list[float]:
        """Mean loss, SSL loss and SL loss over the epoch's micro-batches on all ranks."""
        losses = self.dist.all_sum(torch.stack([self.sums[name] for name in LOSSES]))
        return (losses / max(self.micro * self.dist.world, 1)).tolist()

    def end_epoch(self) -> None:
        """The epoch is over: nothing is in progress (a checkpoint now holds no epoch_state)."""
        self.sums = {}

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint key "epoch_state": the sums of the epoch in progress (None between
        epochs)."""
        if not self.sums:
            return {"epoch_state": None}
        state = {name: self.sums[name].cpu() for name in (*LOSSES, "bad_loss")}
        if self.dist.sharded:  # every rank saves (collective): the sums of all ranks
            summed = self.dist.all_sum(torch.stack([self.sums[name] for name in LOSSES]))
            state.update(zip(LOSSES, summed.cpu()), ranks=self.dist.world)
        return {"epoch_state": {**state, "micro": self.micro, "train_s": self.train_s}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The sums of a sharded checkpoint are all ranks': rank 0 takes them, the others
        zeros (same micro-batch count: epoch_means divides by micro x world)."""
        pending = state["epoch_state"]
        if pending is not None and "ranks" in pending and self.dist.rank != 0:
            pending = {**pending, **{name: torch.zeros((), dtype=torch.float64) for name in LOSSES}}
        self._pending = pending


def progress_bar(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), leave=False)


@dataclass
class Position:
    """Where the run is: epoch index in the plan, optimizer steps done in it and in total,
    micro-batches done in total (they key the masking offsets)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    micro_step: int = 0
    finished: bool = False

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint key "position"."""
        return {"position": dataclasses.asdict(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state["position"].items():
            setattr(self, name, value)
