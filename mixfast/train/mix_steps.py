"""`MixSteps`: what changes from one mix step to the next, read by step index: the SSL weight
a(t) (a device table, so a step reads no Python float) and the SSL sub-batch rows."""

from __future__ import annotations

import torch

from mixfast.schedule import MixSchedule


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

    def index(self, epoch: int, step_in_epoch: int) -> int:
        """Position in the mix phase of step `step_in_epoch` of plan epoch `epoch`."""
        return (epoch - self.first_epoch) * self.steps_per_epoch + step_in_epoch

    def alpha(self, index: int) -> torch.Tensor:
        """a(t) of mix step `index`, a 0-dim device tensor (a copy: a graph may hold it)."""
        return self.alphas[index].clone()

    def ssl_rows(self, start: int, stop: int | None = None) -> int | None:
        """SSL rows per device and micro-batch of mix steps [start, stop) (default: step
        `start` alone); None while every step takes the whole batch (ssl_share 1)."""
        if self.schedule.ssl_share == 1.0:
            return None
        stop = start + 1 if stop is None else stop
        return self.schedule.mix_ssl_rows(start, stop, self.total, self.batch_size)
