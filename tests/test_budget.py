"""The automatic budget (mixfast/budget.py): the rule, the "auto" flags of train and compare,
what a run records of it; and compare's FRACTION:N seeds, whose cells below 3 seeds give no
verdict."""

from __future__ import annotations

import json

import pytest

from mixfast import budget as budget_module
from mixfast import cli, experiment
from mixfast.budget import (
    BATCH_CAP,
    MIN_EPOCH_STEPS,
    MIN_SL_EPOCHS,
    SL_STEPS,
    auto_budget,
    fitted_batch,
)
from mixfast.cli.args import UsageError, spec_from_args
from mixfast.cli.compare import check_compare_args
from mixfast.compare import grid
from tests.test_cli import TINY, mixfast


def without(args: list[str], *flags: str) -> list[str]:
    """`args` less each of `flags` and the value after it."""
    kept, skip = [], False
    for item in args:
        if not skip and item in flags:
            skip = True
            continue
        if not skip:
            kept.append(item)
        skip = False
    return kept


TINY_AUTO = without(TINY, "--ssl-epochs", "--sl-epochs")


def test_fitted_batch_keeps_enough_steps_per_epoch():
    assert fitted_batch(29_700) == BATCH_CAP
    assert fitted_batch(1_350) == 64  # 21 steps per epoch; 128 would give 10
    assert fitted_batch(1_350, devices=2) == 32
    assert fitted_batch(40) == 8  # the floor: 5 steps
    for labeled in (200, 1_350, 5_000, 100_000):
        batch = fitted_batch(labeled)
        assert labeled // batch >= MIN_EPOCH_STEPS or batch == 8
        assert batch == BATCH_CAP or labeled // (2 * batch) < MIN_EPOCH_STEPS


def test_the_rule_at_the_demo_size_gives_the_former_defaults():
    """29,700 labeled images (the demo's 33,000 less validation): 3 + 6 epochs at batch 128,
    the budget compare used before it was automatic."""
    budget = auto_budget(29_700, 29_700)
    assert (budget.batch_size, budget.ssl_epochs, budget.sl_epochs) == (128, 3, 6)


def test_small_data_gets_steps_not_epochs():
    budget = auto_budget(1_350, 1_350)
    assert budget.batch_size == 64 and budget.sl_steps_per_epoch == 21
    assert budget.sl_steps >= SL_STEPS and budget.sl_epochs > MIN_SL_EPOCHS
    assert budget.ssl_epochs == pytest.approx(budget.sl_epochs / 2, abs=1)
    assert "auto budget" in budget.describe() and f"{budget.sl_steps} SL steps" in budget.describe()


def test_given_values_are_kept_and_the_rest_sized_around_them():
    budget = auto_budget(1_350, 1_350, batch_size=16, sl_epochs=4)
    assert (budget.batch_size, budget.sl_epochs) == (16, 4)
    assert budget.auto == ("ssl_epochs",)
    assert budget.ssl_epochs == max(3, -(-SL_STEPS // 2 // (1_350 // 16)))


def test_flags_default_to_auto_and_take_integers():
    spec = spec_from_args(cli.parse_args(["train", *TINY_AUTO]))
    assert spec.auto == ("ssl_epochs", "sl_epochs")
    spec = spec_from_args(cli.parse_args(["train", *TINY_AUTO, "--sl-epochs", "3"]))
    assert spec.auto == ("ssl_epochs",) and spec.train.sl_epochs == 3
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["train", "--sl-epochs", "many"])
    assert exit_info.value.code == 2


def test_with_budget_sizes_from_the_data():
    spec = spec_from_args(cli.parse_args(["train", *TINY_AUTO, "--batch-size", "auto"]))
    data = experiment.load_data(spec)
    sized, budget = experiment.with_budget(spec, data)
    assert sized.auto == () and budget is not None
    labeled = len(data.sl_data)
    assert sized.train.batch_size == fitted_batch(labeled) == budget.batch_size
    assert sized.train.sl_epochs == budget.sl_epochs >= MIN_SL_EPOCHS
    explicit = spec_from_args(cli.parse_args(["train", *TINY]))
    assert experiment.with_budget(explicit, data) == (explicit, None)


def test_train_prints_and_records_the_budget(tmp_path, monkeypatch, capsys):
    """In-process, with the rule's step target lowered: the tiny data would otherwise train
    hundreds of 2-step epochs."""
    monkeypatch.setattr(budget_module, "SL_STEPS", 12)
    out = tmp_path / "run"
    args = ["train", *TINY_AUTO, "--pipeline", "sl", "--no-progress", "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr()
    assert "auto budget (ssl_epochs, sl_epochs)" in printed.err
    assert "validation curve:" in printed.out
    record = json.loads((out / "data.json").read_text())["budget"]
    config = json.loads((out / "config.json").read_text())
    steps = record["sl_steps_per_epoch"]
    assert steps == json.loads((out / "data.json").read_text())["labeled"] // 16
    assert record["sl_epochs"] == max(MIN_SL_EPOCHS, -(-12 // steps))
    assert config["sl_epochs"] == record["sl_epochs"]
    assert cli.main([*args, "--resume"]) == 0  # the same command resumes: the same budget


def test_fraction_seed_counts():
    args = cli.parse_args(["compare", "--fractions", "0.1", "1.0:2", "--seeds", "0", "1", "2"])
    check_compare_args(args)
    assert args.fractions == [0.1, 1.0] and args.seed_counts == {1.0: 2}
    cells = grid(args)
    assert sorted({c.seed for c in cells if c.fraction == 0.1}) == [0, 1, 2]
    assert sorted({c.seed for c in cells if c.fraction == 1.0}) == [0, 1]
    bad = cli.parse_args(["compare", "--fractions", "1.0:4", "--seeds", "0", "1"])
    with pytest.raises(UsageError, match="1:4: N must be 1 to the 2 --seeds"):
        check_compare_args(bad)
    with pytest.raises(SystemExit):
        cli.parse_args(["compare", "--fractions", "1.0:x"])


def test_compare_with_two_seeds_says_inconclusive(tmp_path):
    out = tmp_path / "cmp"
    args = [*TINY, "--pipelines", "ssl+sl", "mix", "--fractions", "1.0", "--seeds", "0", "1"]
    proc = mixfast("compare", *args, "--no-warmup", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "compare.json").read_text())
    row = report["summary"][0]
    assert row["verdict"] == "inconclusive (2 seeds)" and row["accuracy"] == "inconclusive"
    assert "inconclusive (2 seeds)" in proc.stdout
    for run in report["runs"]:
        assert run["health"]["word"] in (
            "still rising",
            "peaked early",
            "settled",
            "too short to judge",
        )
    assert "health" in row["mix"]


def test_only_the_budget_settings_are_sized():
    """Other settings whose value is the word "auto" (--resume auto) keep it."""
    args = cli.parse_args(["train", *TINY_AUTO, "--resume", "auto", "--out", "x"])
    spec = spec_from_args(args)
    assert spec.train.resume == "auto"
    assert spec.auto == ("ssl_epochs", "sl_epochs")
