"""`MixSteps`: what changes from one mix step to the next, read by step index: the SSL weight
a(t) (a device table, so a step reads no Python float) and the SSL sub-batch rows."""

from __future__ import annotations

import torch

from mixfast.schedule import MixSchedule
from mixfast.train.meters import Position


class MixSteps:
    """The mix phase of `schedule`: `steps_per_epoch` steps an epoch, `batch_size` rows a
    micro-batch per device."""

    def __init__(
        self, schedule: MixSchedule, steps_per_epoch: int, batch_size: int, device: torch.device
    ) -> None:
        self.schedule, self.steps_per_epoch, self.batch_size = schedule, steps_per_epoch, batch_size
        self.total = schedule.mix_epochs * steps_per_epoch
        alphas = [schedule.alpha(i, self.total) for i in range(self.total)]
        self.alphas = torch.tensor(alphas, dtype=torch.float32).to(device)
        mix = [p for p in schedule.phases if p.name == "mix"]
        self.first_epoch = mix[0].first_epoch if mix else 0

    def index(self, at: Position, step: int | None = None) -> int:
        """Position in the mix phase of step `step` (default: the current one) of epoch
        `at.epoch` of the plan."""
        step = at.step_in_epoch if step is None else step
        return (at.epoch - self.first_epoch) * self.steps_per_epoch + step

    def alpha(self, at: Position) -> torch.Tensor:
        """a(t) of the current mix step, a 0-dim device tensor (a copy: a graph may hold it)."""
        return self.alphas[self.index(at)].clone()

    def ssl_rows(self, at: Position) -> int | None:
        """SSL rows per device and micro-batch of the current mix step; None while every step
        takes the whole batch (ssl_share 1)."""
        return self._rows(self.index(at), self.index(at) + 1)

    def _rows(self, first: int, stop: int) -> int | None:
        if self.schedule.ssl_share == 1.0:
            return None
        return self.schedule.mix_ssl_rows(first, stop, self.total, self.batch_size)

    def mean_rows(self) -> float | None:
        """SSL rows of the average mix step; None while every step takes the whole batch."""
        if self.schedule.ssl_share == 1.0 or not self.total:
            return None
        return self.schedule.mix_ssl_batches(self.total) * self.batch_size / self.total
