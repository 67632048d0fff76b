"""The verdict's rule (accuracy from the paired t interval, cost with a stated margin, named
trade-offs), the bootstrap only from 5 seeds up, and which cost decides: FLOPs when every run
has them, wall time only on a CUDA device with the pipeline order rotated, else none."""

from __future__ import annotations

import pytest

from mixfast.report import LEGEND, format_table, summarize
from mixfast.stats import (
    BOOTSTRAP_MIN_SEEDS,
    COST_MARGIN,
    MIN_VERDICT_SEEDS,
    PairedDiff,
    paired_diff,
    verdict,
)

BETTER = PairedDiff(5, 0.64, 0.5, 0.04, 1.24)  # the levers study's semi-supervised 10 % cell
TIE = PairedDiff(5, 0.5, 1.0, -0.5, 1.5)
WORSE = PairedDiff(5, -2.0, 1.0, -3.5, -0.5)


@pytest.mark.parametrize(
    "diff, ratio, word, accuracy, cost",
    [
        (BETTER, 1.000, "win", "better", "equal"),  # semi-supervised: the old rule said "loss"
        (BETTER, 0.999, "win", "better", "equal"),  # data-limited: the embedding's 0.1 %
        (BETTER, 0.98, "win", "better", "lower"),
        (BETTER, 1.02, "better, dearer", "better", "higher"),
        (TIE, 1.000, "tie", "tie", "equal"),
        (TIE, 0.999, "tie", "tie", "equal"),
        (TIE, 0.98, "tie", "tie", "lower"),
        (TIE, 1.02, "tie", "tie", "higher"),
        (WORSE, 1.000, "loss", "worse", "equal"),
        (WORSE, 0.999, "loss", "worse", "equal"),
        (WORSE, 0.98, "loss", "worse", "lower"),
        (WORSE, 1.02, "loss", "worse", "higher"),
    ],
)
def test_verdict_at_flops_ratios(diff, ratio, word, accuracy, cost):
    found = verdict(diff, ratio, "FLOPs")
    assert (found.word, found.accuracy, found.cost) == (word, accuracy, cost)
    assert found.cost_measure == "FLOPs" and found.cost_ratio == ratio
    assert found.margin == COST_MARGIN == 0.01


def test_cost_margin_edges_and_no_cost():
    assert verdict(BETTER, 1 - COST_MARGIN).cost == "equal"  # within the margin, inclusive
    assert verdict(BETTER, 1 + COST_MARGIN).word == "win"
    assert verdict(BETTER, 1 + 1.5 * COST_MARGIN).word == "better, dearer"
    assert verdict(BETTER, 1 - 1.5 * COST_MARGIN).cost == "lower"
    none = verdict(BETTER, None, None)
    assert (none.word, none.cost, none.cost_measure) == (
        "better (cost not measured)",
        "not measured",
        None,
    )
    assert verdict(TIE, None, None).word == "tie" and verdict(WORSE, None, None).word == "loss"


@pytest.mark.parametrize("n", [2, 3, 4])
def test_no_bootstrap_below_five_seeds(n):
    diff = paired_diff([1.0 + 0.3 * i for i in range(n)], [0.0] * n)
    assert diff.boot_low is None and diff.boot_high is None
    stored = diff.to_dict()
    assert stored["method"] == "t" and stored["n"] == n and stored["level"] == 0.95
    assert stored["boot_low"] is None and stored["boot_method"] is None
    assert diff.label == f"95% t, n={n}"


def test_bootstrap_from_five_seeds_labelled():
    diffs = [1.0, 3.0, -0.5, 3.0, 1.5]
    assert len(diffs) == BOOTSTRAP_MIN_SEEDS
    diff = paired_diff(diffs, [0.0] * 5)
    assert diff.boot_low is not None and diff.boot_high is not None
    assert min(diffs) <= diff.boot_low < diff.mean < diff.boot_high <= max(diffs)
    stored = diff.to_dict()
    assert stored["n"] == 5 and stored["method"] == "t"
    assert stored["boot_method"].startswith("percentile bootstrap")


def test_one_seed_is_inconclusive_whatever_the_cost():
    diff = paired_diff([80.0], [70.0])
    found = verdict(diff, 0.5)
    assert diff.boot_low is None and found.word == "inconclusive (1 seed)"
    assert found.accuracy == "inconclusive"


def test_two_seeds_give_no_verdict_however_clear():
    """Two seeds, mix 10 points ahead both times (a t interval above 0): still no verdict."""
    diff = paired_diff([80.0, 81.0], [70.0, 70.5])
    assert diff.t_low > 0
    found = verdict(diff, 0.5)
    assert (found.word, found.accuracy) == ("inconclusive (2 seeds)", "inconclusive")
    assert found.cost == "lower"  # the cost part is still stated
    assert MIN_VERDICT_SEEDS == 3
    assert verdict(paired_diff([80.0, 81.0, 80.5], [70.0, 70.5, 70.2]), 0.5).word == "win"


def test_two_seed_table_prints_inconclusive():
    runs = [r for r in runs_without_flops() if r["seed"] < 2]
    row = summarize(runs, CPU)[0]
    assert row["verdict"] == "inconclusive (2 seeds)"
    assert "inconclusive (2 seeds)" in format_table(runs, CPU)


def runs_without_flops(wall_mix: float = 1.0) -> list[dict]:
    """Three seeds where mix beats ssl+sl with confidence (+2, +2.5, +3 points); wall time
    only: mix takes `wall_mix` seconds, ssl+sl 2."""
    runs = []
    for seed, gain in enumerate([0.020, 0.025, 0.030]):
        for pipeline, top1, wall in (("mix", 0.70 + gain, wall_mix), ("ssl+sl", 0.70, 2.0)):
            runs.append(
                {"pipeline": pipeline, "regime": "data-limited", "fraction": 0.1, "budget": None,
                 "seed": seed, "top1": top1, "wall_s": wall}
            )  # fmt: skip
    return runs


CPU = {"device": "cpu (2 cores)", "pipelines": ["sl", "ssl+sl", "mix"]}
CUDA = {"device": "NVIDIA H100 80GB HBM3", "pipelines": ["sl", "ssl+sl", "mix"]}


@pytest.mark.parametrize("settings", [CPU, None, {**CUDA, "device": "cpu"}])
def test_wall_time_not_used_on_cpu(settings):
    row = summarize(runs_without_flops(), settings)[0]
    assert row["wall_ratio"] == pytest.approx(0.5)  # cheaper by the clock, but not evidence
    assert row["accuracy"] == "better"
    assert (row["cost"], row["cost_measure"], row["cost_ratio"]) == ("not measured", None, None)
    assert row["verdict"] == "better (cost not measured)"
    table = format_table(runs_without_flops(), settings)
    assert "better (cost not measured)" in table and "not measured" in table


@pytest.mark.parametrize("device", ["NVIDIA H100 80GB HBM3", "cuda:0"])
def test_wall_time_used_on_cuda(device):
    settings = {**CUDA, "device": device}
    row = summarize(runs_without_flops(1.0), settings)[0]
    assert (row["cost"], row["cost_measure"]) == ("lower", "wall time")
    assert row["cost_ratio"] == pytest.approx(0.5) and row["verdict"] == "win"
    dearer = summarize(runs_without_flops(3.0), settings)[0]
    assert dearer["verdict"] == "better, dearer" and dearer["cost"] == "higher"
    assert "lower (wall time)" in format_table(runs_without_flops(1.0), settings)


def test_wall_time_needs_the_rotated_order():
    only_mix = {**CUDA, "pipelines": ["mix"]}  # ssl+sl from another run: no shared rotation
    unrotated = {**CUDA, "protocol": "Evaluation protocol: top-1 ... same epoch budgets."}
    rotated = {**CUDA, "protocol": "... The pipeline order rotates per seed after a warm-up."}
    for settings in (only_mix, unrotated):
        assert summarize(runs_without_flops(), settings)[0]["cost_measure"] is None
    assert summarize(runs_without_flops(), rotated)[0]["cost_measure"] == "wall time"


def test_flops_decide_when_every_run_has_them():
    runs = runs_without_flops(1.0)  # half the wall time ...
    for run in runs:
        run["flops"] = 1000 if run["pipeline"] == "mix" else 999  # ... 1.001x the FLOPs
    row = summarize(runs, CUDA)[0]
    assert (row["cost_measure"], row["cost"], row["verdict"]) == ("FLOPs", "equal", "win")
    assert row["cost_ratio"] == pytest.approx(1000 / 999)
    assert "1.001" in format_table(runs, CUDA)  # three decimals: the digit that decides shows


def test_legend_states_the_rule():
    for phrase in (
        "win = better at equal or lower cost",
        "better, dearer",
        "tie = interval holds 0",
        "loss = worse",
        f"equal within {COST_MARGIN:.0%} of 1",
        "only on a CUDA device with the pipeline order rotated",
        "95% t interval",
        "bootstrap from 5 seeds up",
        "inconclusive (n seeds) = fewer than 3 seeds",
    ):
        assert phrase in LEGEND, phrase
