"""Meters: device-side sums, the first non-finite loss, mid-epoch state."""

from __future__ import annotations

import math

import torch

from mixfast.train.distributed import Dist
from mixfast.train.meters import Meters


def meters(step: int = 0) -> Meters:
    m = Meters(torch.device("cpu"), Dist())
    m.start_epoch(step)
    return m


def add(m: Meters, loss: float, ssl: float | None = None, step_done: bool = True) -> None:
    parts = {} if ssl is None else {"ssl": torch.tensor(ssl)}
    m.add(torch.tensor(loss), parts, step_done)


def test_means_over_micro_batches():
    m = meters()
    add(m, 1.0, ssl=0.5)
    add(m, 3.0, ssl=1.5)
    assert m.micro == 2
    assert m.epoch_means() == [2.0, 1.0, 0.0]
    assert m.local_means() == {"loss": 2.0, "ssl": 1.0, "sl": 0.0}


def test_first_nonfinite_names_its_step_and_loss():
    m = meters(step=10)
    add(m, 1.0)
    add(m, math.inf)
    add(m, math.nan)
    assert m.first_nonfinite() == (11, math.inf)


def test_all_finite_reports_none():
    m = meters()
    add(m, 1.0)
    assert m.first_nonfinite() is None


def test_step_counts_only_completed_optimizer_steps():
    m = meters(step=0)
    add(m, math.nan, step_done=False)  # micro-batch 1 of 2
    assert m.first_nonfinite()[0] == 0
    add(m, 1.0, step_done=True)
    add(m, math.nan)
    assert int(m.sums["step"]) == 2


def test_state_dict_carries_an_epoch_in_progress():
    m = meters()
    add(m, 2.0, ssl=1.0)
    m.train_s = 3.5
    state = m.state_dict()
    resumed = Meters(torch.device("cpu"), Dist())
    resumed.load_state_dict(state)
    resumed.start_epoch(1)
    add(resumed, 4.0, ssl=3.0)
    assert resumed.micro == 2 and resumed.train_s == 3.5
    assert resumed.epoch_means() == [3.0, 2.0, 0.0]
    resumed.start_epoch(2)  # restored sums apply once
    assert resumed.micro == 0
