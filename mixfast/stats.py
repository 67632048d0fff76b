"""Paired comparisons over seeds: the mean difference, its 95 % confidence interval (Student t
and a percentile bootstrap), and a verdict that also weighs the cost."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

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
    """mix - baseline over paired seeds, in the units given (e.g. top-1 points)."""

    n: int
    mean: float
    sd: float
    t_low: float
    t_high: float
    boot_low: float
    boot_high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_diff(
    treatment: Sequence[float], baseline: Sequence[float], *, seed: int = 0
) -> PairedDiff:
    """Differences treatment[i] - baseline[i] (one pair per seed): mean, t interval, bootstrap.

    With one pair the intervals are (-inf, inf): one seed says nothing about the spread."""
    if len(treatment) != len(baseline) or not treatment:
        raise ValueError("treatment and baseline need the same, non-zero number of seeds")
    diffs = np.asarray(treatment, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    n, mean = len(diffs), float(diffs.mean())
    if n == 1:
        return PairedDiff(1, mean, 0.0, -math.inf, math.inf, -math.inf, math.inf)
    sd = float(statistics.stdev(diffs.tolist()))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return PairedDiff(n, mean, sd, mean - half, mean + half, float(low), float(high))


def verdict(diff: PairedDiff, cost_ratio: float) -> str:
    """ "win": the t interval is above 0 and mix costs less; "tie": the interval holds 0;
    "loss": otherwise (worse with confidence, or better but not cheaper)."""
    if diff.t_low > 0 and cost_ratio < 1:
        return "win"
    if diff.t_low <= 0 <= diff.t_high:
        return "tie"
    return "loss"
