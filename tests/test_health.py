"""The training-health line: a validation curve still rising, peaked early or settled, judged
against the validation split's own standard error; in compare.json and its table."""

from __future__ import annotations

import math

import pytest

from mixfast.health import curve_health, run_health, summarize_health
from mixfast.report import format_table, summarize

RISING = [0.50, 0.60, 0.66, 0.70, 0.74, 0.77, 0.80, 0.83]
PEAKED = [0.60, 0.75, 0.82, 0.84, 0.80, 0.76, 0.74, 0.72]
SETTLED = [0.50, 0.70, 0.78, 0.80, 0.81, 0.80, 0.81, 0.81]


@pytest.mark.parametrize(
    "curve, word",
    [(RISING, "still rising"), (PEAKED, "peaked early"), (SETTLED, "settled")],
)
def test_curve_words(curve, word):
    health = curve_health(curve, val_size=1000)
    assert health.word == word
    assert health.se == pytest.approx(math.sqrt(max(curve) * (1 - max(curve)) / 1000))


def test_the_yardstick_is_the_validation_split():
    """A 3-point late rise is noise on 30 validation images and a trend on 30,000."""
    curve = [0.70, 0.75, 0.78, 0.79, 0.80, 0.80, 0.83, 0.83]
    assert curve_health(curve, val_size=30).word == "settled"
    assert curve_health(curve, val_size=30_000).word == "still rising"


def test_advice_and_short_curves():
    assert curve_health(RISING, 1000).text == "still rising (under-trained: raise the budget)"
    assert curve_health(PEAKED, 1000).text.startswith("peaked early (over-fitting")
    assert curve_health([0.5, 0.6, 0.7], 1000).word == "too short to judge"
    assert curve_health(RISING, 0).word == "too short to judge"  # no validation split


def test_run_health_skips_ssl_epochs_and_averages_tasks():
    ssl_rows = [{"val_top1": None, "val_top1_tasks": [None, None]}] * 5
    rows = [{"val_top1": v, "val_top1_tasks": [v - 0.1, v + 0.1]} for v in RISING]
    assert run_health(ssl_rows + rows, 1000).word == "still rising"
    assert run_health(ssl_rows, 1000).word == "too short to judge"


def test_summarize_health():
    assert summarize_health(["settled"] * 3) == "settled"
    assert summarize_health(["still rising", "settled", "still rising"]) == (
        "still rising 2/3, settled 1/3"
    )


def test_health_in_summary_and_table():
    runs = []
    for seed in range(3):
        for pipeline, curve in (("mix", SETTLED), ("ssl+sl", RISING)):
            health = curve_health(curve, 1000).to_dict()
            runs.append(
                {"pipeline": pipeline, "regime": "data-limited", "fraction": 1.0, "budget": None,
                 "seed": seed, "top1": 0.8, "val_top1": 0.8, "wall_s": 1.0, "flops": 10,
                 "passes": {"ssl": 1, "sl": 1}, "health": health}
            )  # fmt: skip
    row = summarize(runs)[0]
    assert (row["mix"]["health"], row["ssl+sl"]["health"]) == ("settled", "still rising")
    assert "ssl+sl still rising" in format_table(runs)
