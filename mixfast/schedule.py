"""The MixTraining phase plan: SSL x (E_ssl - M) -> MIX x M -> SL x (E_sl - M).

`M = round(rho * min(E_ssl, E_sl))` (rounded half up). `rho = 0` is the SSL+SL pipeline and
`E_ssl = 0` is plain supervised training, so the three pipelines share one plan and one trainer.
Inside the mix phase the SSL weight `a(t)` moves from 1 to 0 (linear or cosine) or stays at a
constant; step `i` of `n` mix steps uses `t = (i + 0.5) / n`, so no mix step gives an objective
exactly zero weight (that would waste its sub-batch). `ssl_share` (0, 1] is the SSL sub-batch of
a mix step as a share of the batch (the SSL:SL sub-batch ratio); the SSL passes a smaller
sub-batch does not make also go to the SSL phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mixfast.checks import SettingError, check_int

PHASES = ("ssl", "mix", "sl")
TRANSITIONS = ("linear", "cosine", "constant")
PIPELINES = ("sl", "ssl+sl", "mix")


def half_up(x: float) -> int:
    """x rounded to the nearest int, halves up (Python's round sends 0.5 to 0)."""
    return math.floor(x + 0.5)


@dataclass(frozen=True)
class Phase:
    name: str  # "ssl" | "mix" | "sl"
    epochs: int
    first_epoch: int  # index of its first epoch in the whole plan


@dataclass(frozen=True)
class EpochSpec:
    index: int  # position in the whole plan
    phase: str
    phase_epoch: int  # position inside its phase


class MixSchedule:
    """Which phase each epoch is in, the SSL weight a(t), and the sample-pass budget."""

    def __init__(
        self,
        ssl_epochs: int,
        sl_epochs: int,
        mix_ratio: float = 0.0,
        transition: str = "linear",
        alpha_constant: float = 0.5,
        ssl_share: float = 1.0,
    ) -> None:
        check_int("ssl_epochs", ssl_epochs, 0)
        check_int("sl_epochs", sl_epochs, 0)
        if not 0.0 <= float(mix_ratio) <= 1.0:
            raise ValueError(f"mix_ratio must be in [0, 1], got {mix_ratio!r}")
        if transition not in TRANSITIONS:
            raise ValueError(f"transition must be one of {TRANSITIONS}, got {transition!r}")
        if not 0.0 <= float(alpha_constant) <= 1.0:
            raise ValueError(f"alpha_constant must be in [0, 1], got {alpha_constant!r}")
        if not 0.0 < float(ssl_share) <= 1.0:
            raise ValueError(f"ssl_share must be in (0, 1], got {ssl_share!r}")
        self.ssl_share = float(ssl_share)
        self.ssl_epochs = ssl_epochs
        self.sl_epochs = sl_epochs
        self.mix_ratio = float(mix_ratio)
        self.transition = transition
        self.alpha_constant = float(alpha_constant)
        self.mix_epochs = half_up(self.mix_ratio * min(ssl_epochs, sl_epochs))

    @classmethod
    def for_pipeline(
        cls, pipeline: str, ssl_epochs: int, sl_epochs: int, mix_ratio: float = 0.0, **options
    ) -> MixSchedule:
        """ "sl" drops the SSL epochs, "ssl+sl" drops the mix phase, "mix" keeps mix_ratio;
        `options`: transition, alpha_constant, ssl_share as in MixSchedule()."""
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
        if pipeline == "sl":
            ssl_epochs, mix_ratio = 0, 0.0
        elif pipeline == "ssl+sl":
            mix_ratio = 0.0
        return cls(ssl_epochs, sl_epochs, mix_ratio, **options)

    @property
    def phases(self) -> tuple[Phase, ...]:
        """The non-empty phases in order."""
        lengths = (
            ("ssl", self.ssl_epochs - self.mix_epochs),
            ("mix", self.mix_epochs),
            ("sl", self.sl_epochs - self.mix_epochs),
        )
        phases, first = [], 0
        for name, epochs in lengths:
            if epochs > 0:
                phases.append(Phase(name, epochs, first))
                first += epochs
        return tuple(phases)

    @property
    def total_epochs(self) -> int:
        return self.ssl_epochs + self.sl_epochs - self.mix_epochs

    def epochs(self) -> list[EpochSpec]:
        return [
            EpochSpec(phase.first_epoch + i, phase.name, i)
            for phase in self.phases
            for i in range(phase.epochs)
        ]

    def alpha(self, step: int, num_steps: int) -> float:
        """SSL weight of mix step `step` (0-based) out of `num_steps` in the mix phase."""
        if num_steps < 1 or not 0 <= step < num_steps:
            raise ValueError(f"step must be in [0, {num_steps}), got {step}")
        if self.transition == "constant":
            return self.alpha_constant
        t = (step + 0.5) / num_steps
        if self.transition == "linear":
            return 1.0 - t
        return 0.5 * (1.0 + math.cos(math.pi * t))

    def alpha_range(self, spec: EpochSpec, steps_per_epoch: int) -> list[float] | None:
        """[a(t) of the first step, of the last step] of a mix epoch; None for other phases."""
        if spec.phase != "mix":
            return None
        first = spec.phase_epoch * steps_per_epoch
        total = self.mix_epochs * steps_per_epoch
        return [self.alpha(first, total), self.alpha(first + steps_per_epoch - 1, total)]

    def epoch_steps(self, ssl_steps: int, sl_steps: int) -> list[int]:
        """Optimizer steps of every epoch of the plan, so that every pipeline makes the same
        sample passes per objective: E_ssl x ssl_steps SSL steps and E_sl x sl_steps SL steps.

        `ssl_steps` / `sl_steps`: steps of one pass over the SSL / labeled data. A mix epoch is
        one pass over the labeled data (it sets the number of steps); the SSL passes the mix
        phase does not make go to the SSL phase, spread over its epochs (the first ones take
        the remainder). With the same images for both objectives every SSL epoch is ssl_steps.
        Mix steps with SSL sub-batches of `ssl_share` x the batch make that share of the SSL
        steps (whole SSL steps over the phase: see mix_ssl_rows).
        """
        mix_ssl = self.mix_ssl_batches(self.mix_epochs * sl_steps)
        ssl_epochs = self.ssl_epochs - self.mix_epochs
        ssl_total = max(self.ssl_epochs * ssl_steps - mix_ssl, 0)
        if ssl_total > 0 and ssl_epochs == 0:
            raise SettingError(
                f"{{mix_ratio}} {self.mix_ratio} makes all {self.ssl_epochs} SSL epochs mix "
                f"epochs, which leaves no SSL-only epoch for the {ssl_total} SSL steps the mix "
                "phase does not make (the SSL data is larger than the labeled data, e.g. "
                "semi-supervised, or {ssl_share} < 1); the mix phase may take at most "
                f"{self.ssl_epochs - 1} epochs: lower {{mix_ratio}} or raise {{ssl_epochs}}"
            )
        steps = []
        for spec in self.epochs():
            if spec.phase == "ssl":
                base, extra = divmod(ssl_total, ssl_epochs)
                steps.append(base + (1 if spec.phase_epoch < extra else 0))
            else:
                steps.append(sl_steps)
        return steps

    def mix_ssl_batches(self, mix_steps: int) -> int:
        """The SSL passes of `mix_steps` mix steps, in whole SSL batches (SSL-phase steps)."""
        return half_up(mix_steps * self.ssl_share)

    def mix_ssl_rows(self, start: int, stop: int, num_steps: int, batch_size: int) -> int:
        """SSL rows of mix steps [start, stop) of `num_steps` with batches of `batch_size`:
        about ssl_share x batch_size each, spread so that the phase carries whole SSL batches
        (two sub-batch sizes at most; one when the share divides evenly)."""
        total = self.mix_ssl_batches(num_steps) * batch_size
        return stop * total // num_steps - start * total // num_steps

    def steps_per_epoch(self, phase: str, ssl_steps: int, sl_steps: int) -> int:
        """Optimizer steps in the first epoch of `phase` (see epoch_steps); 0 if none."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        steps = self.epoch_steps(ssl_steps, sl_steps)
        return next((n for spec, n in zip(self.epochs(), steps) if spec.phase == phase), 0)

    def budget(self, *, ssl_steps: int, sl_steps: int, batch_size: int, tasks: int = 1) -> dict:
        """Steps and sample-passes of each objective, per phase and in total.

        `ssl_steps` / `sl_steps`: optimizer steps in one pass over the SSL / labeled data;
        `batch_size`: samples per objective per optimizer step (the effective batch);
        `tasks`: labeled streams, each contributing `batch_size` SL samples per step.
        """
        per_phase = {}
        epoch_steps = self.epoch_steps(ssl_steps, sl_steps)
        for phase in self.phases:
            steps = sum(
                n for spec, n in zip(self.epochs(), epoch_steps) if spec.phase == phase.name
            )
            ssl, sl = self.sample_passes(phase.name, 0, steps, steps, batch_size, tasks)
            per_phase[phase.name] = {
                "epochs": phase.epochs,
                "steps": steps,
                "ssl_samples": ssl,
                "sl_samples": sl,
            }
        total = {
            key: sum(p[key] for p in per_phase.values())
            for key in ("epochs", "steps", "ssl_samples", "sl_samples")
        }
        return {"phases": per_phase, "total": total}

    def sample_passes(
        self,
        phase: str,
        first: int,
        stop: int,
        phase_steps: int,
        batch_size: int,
        tasks: int = 1,
        copies: int = 1,
    ) -> tuple[int, int]:
        """(SSL, SL) sample passes of steps [first, stop) of a phase of `phase_steps` steps:
        the one rule the budget, the run's totals and its images/s all count by.

        `batch_size` samples per objective per step and copy (a copy: a device or an
        accumulated micro-batch of the step; `copies` of them), `tasks` labeled streams. A mix
        step's SSL sub-batch holds `ssl_share` of the batch, spread as mix_ssl_rows says."""
        steps = stop - first
        sl = 0 if phase == "ssl" else steps * batch_size * tasks * copies
        if phase == "sl":
            return 0, sl
        if phase == "mix":
            return self.mix_ssl_rows(first, stop, phase_steps, batch_size) * copies, sl
        return steps * batch_size * copies, sl

    def to_dict(self) -> dict:
        return {
            "ssl_epochs": self.ssl_epochs,
            "sl_epochs": self.sl_epochs,
            "mix_ratio": self.mix_ratio,
            "mix_epochs": self.mix_epochs,
            "transition": self.transition,
            "alpha_constant": self.alpha_constant,
            "ssl_share": self.ssl_share,
            "plan": [(p.name, p.epochs) for p in self.phases],
        }

    def __repr__(self) -> str:
        plan = " -> ".join(f"{p.name.upper()} x {p.epochs}" for p in self.phases) or "empty"
        return f"MixSchedule({plan}, transition={self.transition!r})"
