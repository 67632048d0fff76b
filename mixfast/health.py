"""How a run trained, read from its validation curve: still rising at the end (under-trained:
raise the budget), peaked early (over-fitting), or settled, each judged against the standard
error of the validation split itself, so a 150-image split does not cry wolf at every wiggle.

The rule (documented in docs/results.md and compare's legend), on the validation top-1 of the
epochs that read one (SSL epochs have no head to read), in [0, 1]:
- se = sqrt(p (1 - p) / n), p the best value, n the validation images;
- "still rising": the mean of the last quarter of the curve exceeds the mean of the quarter
  before it by more than RISE_SE x se;
- "peaked early": the best value came before the last quarter and the final value is more than
  DROP_SE x se below it;
- "settled": neither; "too short to judge": fewer than MIN_POINTS values or no validation split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

RISE_SE = 1.0
DROP_SE = 2.0
MIN_POINTS = 4
ADVICE = {
    "still rising": "under-trained: raise the budget",
    "peaked early": "over-fitting: lower the budget or regularize",
    "settled": "",
    "too short to judge": "",
}


@dataclass(frozen=True)
class Health:
    """The verdict on one validation curve: `word` (a key of ADVICE), the yardstick `se` and
    the two measured moves (None when too short): `rise` (late - previous quarter's mean) and
    `drop` (best - final), all in top-1 units [0, 1]."""

    word: str
    se: float | None
    rise: float | None
    drop: float | None

    @property
    def text(self) -> str:
        """The word with its advice, e.g. "still rising (under-trained: raise the budget)"."""
        advice = ADVICE[self.word]
        return f"{self.word} ({advice})" if advice else self.word

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text}


def curve_health(curve: Sequence[float | None], val_size: int) -> Health:
    """The Health of a validation top-1 curve (None entries, SSL epochs, are left out) read
    on `val_size` validation images."""
    values = [float(v) for v in curve if v is not None]
    if len(values) < MIN_POINTS or val_size < 1:
        return Health("too short to judge", None, None, None)
    best = max(values)
    se = math.sqrt(max(best * (1 - best), 1e-12) / val_size)
    quarter = max(1, len(values) // 4)
    late, before = values[-quarter:], values[-2 * quarter : -quarter]
    rise = sum(late) / len(late) - sum(before) / len(before)
    drop = best - values[-1]
    peaked_before_last_quarter = values.index(best) < len(values) - quarter
    if rise > RISE_SE * se:
        word = "still rising"
    elif drop > DROP_SE * se and peaked_before_last_quarter:
        word = "peaked early"
    else:
        word = "settled"
    return Health(word, se, rise, drop)


def run_health(epochs: Sequence[dict[str, Any]], val_size: int) -> Health:
    """The Health of a run from its metrics rows (metrics.jsonl, result.json's "epochs"):
    the mean over tasks of each epoch's validation top-1."""
    curve = []
    for row in epochs:
        tasks = [v for v in row.get("val_top1_tasks") or [row.get("val_top1")] if v is not None]
        curve.append(sum(tasks) / len(tasks) if tasks else None)
    return curve_health(curve, val_size)


def summarize_health(words: Sequence[str]) -> str:
    """One cell of a table for the runs of a pipeline: the word when every seed agrees, else
    the counts, e.g. "still rising 2/3, settled 1/3"."""
    if not words:
        return "-"
    counts = {word: words.count(word) for word in dict.fromkeys(words)}
    if len(counts) == 1:
        return words[0]
    return ", ".join(f"{word} {n}/{len(words)}" for word, n in counts.items())
