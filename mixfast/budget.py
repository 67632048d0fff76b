"""The automatic training budget: epochs and batch size sized from the data, so a run on 1,500
images trains as long as one on 30,000 does in optimizer steps, not in epochs. `mixfast train`
and `mixfast compare` use it for every one of --ssl-epochs, --sl-epochs and --batch-size left
at "auto"; the API keeps explicit values and offers `auto_budget`.

The rule (the best of the budgets screened on validation at 1,500 and 5,000 Fashion-MNIST images;
at 15,000 twice the steps gave 2.6 points more, and the training-health line, mixfast/health.py,
says "still rising" there: docs/results.md#budgets-that-fit-the-data):
- batch: the largest power of two <= BATCH_CAP whose epochs keep >= MIN_EPOCH_STEPS optimizer
  steps over the labeled images (64 at 1,350 images, 128 from about 2,050 up), >= MIN_BATCH;
- SL epochs: enough for SL_STEPS optimizer steps, and at least MIN_SL_EPOCHS;
- SSL epochs: enough for SSL_SHARE x SL_STEPS steps over the SSL images, at least
  SSL_SHARE x MIN_SL_EPOCHS (the 1:2 ratio of compare's epochs at 33,000 images).
At 29,700 labeled images (the demo's subset) it gives compare's former defaults, 3 + 6 epochs at
batch 128.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

AUTO = "auto"
AUTO_SETTINGS = ("ssl_epochs", "sl_epochs", "batch_size")
BATCH_CAP = 128
MIN_BATCH = 8
MIN_EPOCH_STEPS = 16
SL_STEPS = 750
MIN_SL_EPOCHS = 6
SSL_SHARE = 0.5


def steps_per_epoch(images: int, group: int) -> int:
    """Optimizer steps in a pass over `images` at `group` samples per step (a partial last
    batch is dropped, as the trainer's streams do); at least 1."""
    return max(1, images // group)


def fitted_batch(labeled: int, devices: int = 1) -> int:
    """The per-device batch of the rule for `labeled` images over `devices` x accumulation."""
    batch = BATCH_CAP
    while batch > MIN_BATCH and labeled // (batch * devices) < MIN_EPOCH_STEPS:
        batch //= 2
    return batch


@dataclass(frozen=True)
class Budget:
    """A run's budget with what it came from: per-device `batch_size`, the epochs of each
    objective, the steps per epoch they were counted in, and which settings the rule set."""

    batch_size: int
    ssl_epochs: int
    sl_epochs: int
    sl_steps_per_epoch: int
    ssl_steps_per_epoch: int
    auto: tuple[str, ...]

    @property
    def sl_steps(self) -> int:
        return self.sl_epochs * self.sl_steps_per_epoch

    def describe(self) -> str:
        """The run summary's line, e.g. "auto budget (sl_epochs, batch_size): 71 SL epochs ..."."""
        return (
            f"auto budget ({', '.join(self.auto)}): batch {self.batch_size}, "
            f"{self.ssl_epochs} SSL + {self.sl_epochs} SL epochs ({self.sl_steps} SL steps of "
            f"{self.sl_steps_per_epoch} per epoch; rule: >= {SL_STEPS} SL steps and "
            f">= {MIN_SL_EPOCHS} SL epochs, SSL {SSL_SHARE:g}x that, mixfast/budget.py)"
        )

    def record(self) -> dict[str, Any]:
        """What DIR/data.json keeps of it."""
        return {**asdict(self), "auto": list(self.auto), "rule_sl_steps": SL_STEPS}


def auto_budget(
    labeled: int,
    ssl_images: int,
    *,
    batch_size: int | None = None,
    ssl_epochs: int | None = None,
    sl_epochs: int | None = None,
    devices: int = 1,
) -> Budget:
    """The rule's budget for `labeled` SL images (the largest task's) and `ssl_images` SSL
    images; a value given (not None) is kept, and the others are sized around it. `devices`:
    processes x gradient-accumulation steps (the samples of one optimizer step per device)."""
    auto = tuple(
        name
        for name, value in zip(AUTO_SETTINGS, (ssl_epochs, sl_epochs, batch_size))
        if value is None
    )
    batch = batch_size or fitted_batch(labeled, devices)
    sl_per_epoch = steps_per_epoch(labeled, batch * devices)
    ssl_per_epoch = steps_per_epoch(ssl_images, batch * devices)
    if sl_epochs is None:
        sl_epochs = max(MIN_SL_EPOCHS, math.ceil(SL_STEPS / sl_per_epoch))
    if ssl_epochs is None:
        least = math.ceil(SSL_SHARE * MIN_SL_EPOCHS)
        ssl_epochs = max(least, math.ceil(SSL_SHARE * SL_STEPS / ssl_per_epoch))
    return Budget(batch, ssl_epochs, sl_epochs, sl_per_epoch, ssl_per_epoch, auto)
