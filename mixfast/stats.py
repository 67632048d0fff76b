"""Paired comparisons over seeds: the mean difference, its 95 % confidence interval (Student t;
a percentile bootstrap beside it from BOOTSTRAP_MIN_SEEDS seeds up), and a verdict with its two
parts apart: accuracy from the t interval, cost from a ratio with a stated margin."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Two-sided 95 % quantiles t_{0.975, df} for df = 1..30; beyond 30 the normal's 1.96 is within
# 0.04 of the true value, so larger df interpolate towards it (exact at df = 40, 60, 120).
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_T975_LARGE = ((40, 2.0211), (60, 2.0003), (120, 1.9799), (math.inf, 1.9600))
BOOTSTRAP_RESAMPLES = 10_000
# Below this many pairs a percentile bootstrap is not a 95 % interval: with 2 seeds it is the
# range of the two differences, and at a few seeds it stays narrower than the t interval.
BOOTSTRAP_MIN_SEEDS = 5
# Cost ratios (mix / ssl+sl) within this fraction of 1 are "equal": the shared patch embedding
# moves the FLOPs ratio between 0.997 and 1.000, which must not decide a verdict.
COST_MARGIN = 0.01
# Below this many seeds no verdict is given: with 2 seeds the t interval has one degree of
# freedom, so its width is luck, and the last bits of floating point that differ between
# machines flip verdicts (a demo printed "win" on one machine and "tie" on another).
MIN_VERDICT_SEEDS = 3


def t_quantile_975(df: int) -> float:
    """t_{0.975} with `df` degrees of freedom (table; linear in 1/df between its large rows)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    low_df, low_t = len(_T975), _T975[-1]
    for high_df, high_t in _T975_LARGE:
        if df <= high_df:
            w = (1 / low_df - 1 / df) / (1 / low_df - (0 if math.isinf(high_df) else 1 / high_df))
            return low_t + w * (high_t - low_t)
        low_df, low_t = high_df, high_t
    return 1.96


@dataclass
class PairedDiff:
    """mix - baseline over paired seeds, in the units given (e.g. top-1 points). The t interval
    is the one verdicts use; the bootstrap is None below BOOTSTRAP_MIN_SEEDS pairs."""

    n: int
    mean: float
    sd: float
    t_low: float
    t_high: float
    boot_low: float | None = None
    boot_high: float | None = None

    @property
    def label(self) -> str:
        """The t interval's method and size, e.g. "95% t, n=5"."""
        return f"95% t, n={self.n}"

    def to_dict(self) -> dict[str, Any]:
        """The fields, with each interval's method (and n, shared by both)."""
        out: dict[str, Any] = asdict(self)
        out.update(method="t", level=0.95)
        out["boot_method"] = (
            None
            if self.boot_low is None
            else f"percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples"
        )
        return out


def paired_diff(
    treatment: Sequence[float], baseline: Sequence[float], *, seed: int = 0
) -> PairedDiff:
    """Differences treatment[i] - baseline[i] (one pair per seed): mean, t interval and, from
    BOOTSTRAP_MIN_SEEDS pairs up, a percentile bootstrap interval.

    With one pair the t interval is (-inf, inf): one seed says nothing about the spread."""
    if len(treatment) != len(baseline) or not treatment:
        raise ValueError("treatment and baseline need the same, non-zero number of seeds")
    diffs = np.asarray(treatment, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    n, mean = len(diffs), float(diffs.mean())
    if n == 1:
        return PairedDiff(1, mean, 0.0, -math.inf, math.inf)
    sd = float(statistics.stdev(diffs.tolist()))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    if n < BOOTSTRAP_MIN_SEEDS:
        return PairedDiff(n, mean, sd, mean - half, mean + half)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return PairedDiff(n, mean, sd, mean - half, mean + half, float(low), float(high))


@dataclass(frozen=True)
class Verdict:
    """A verdict with its parts: `accuracy` (better / tie / worse, from the 95 % t interval),
    `cost` (lower / equal / higher, or "not measured") by `cost_measure` ("FLOPs", "wall time"
    or None) at `cost_ratio` (mix / baseline) with `margin`, and the `word` they make."""

    word: str
    accuracy: str
    cost: str
    cost_measure: str | None
    cost_ratio: float | None
    margin: float = COST_MARGIN

    def __str__(self) -> str:
        return self.word


def accuracy_of(diff: PairedDiff) -> str:
    """Accuracy from the t interval: "better" above 0, "worse" below 0, "tie" holding 0;
    "inconclusive" from fewer than MIN_VERDICT_SEEDS seeds, whatever the interval."""
    if diff.n < MIN_VERDICT_SEEDS:
        return "inconclusive"
    if diff.t_low > 0:
        return "better"
    if diff.t_high < 0:
        return "worse"
    return "tie"


def cost_of(ratio: float | None, margin: float = COST_MARGIN) -> str:
    """Cost from a ratio mix / baseline: "equal" within `margin` of 1 (inclusive), "lower" or
    "higher" beyond it; "not measured" without a ratio."""
    if ratio is None:
        return "not measured"
    if ratio < 1 - margin:
        return "lower"
    if ratio > 1 + margin:
        return "higher"
    return "equal"


def verdict(
    diff: PairedDiff, cost_ratio: float | None, cost_measure: str | None = "FLOPs"
) -> Verdict:
    """The rule: "win" = better at equal or lower cost; "better, dearer" = better at a cost
    higher than 1 + COST_MARGIN (a trade-off, not a loss); "better (cost not measured)" =
    better with no cost ratio to weigh (None); "tie" = the t interval holds 0; "loss" = worse;
    "inconclusive (n seeds)" below MIN_VERDICT_SEEDS seeds. `cost_measure` names what the
    ratio measures ("FLOPs" or "wall time")."""
    accuracy, cost = accuracy_of(diff), cost_of(cost_ratio)
    if accuracy == "inconclusive":
        word = f"inconclusive ({diff.n} seed{'s' if diff.n != 1 else ''})"
    elif accuracy == "worse":
        word = "loss"
    elif accuracy == "tie":
        word = "tie"
    elif cost == "not measured":
        word = "better (cost not measured)"
    else:
        word = "better, dearer" if cost == "higher" else "win"
    measure = None if cost_ratio is None else cost_measure
    return Verdict(word, accuracy, cost, measure, cost_ratio)
