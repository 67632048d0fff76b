"""The comparison protocol: validation split, equal sample passes in both regimes, the paired
confidence interval, the verdict, order rotation."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from mixfast import create_model
from mixfast.compare import grid
from mixfast.data import load_synthetic, prepare_training_data
from mixfast.report import format_table, summarize
from mixfast.stats import PairedDiff, paired_diff, t_quantile_975, verdict
from mixfast.train import TrainConfig, train


def splits():
    return load_synthetic(train_size=400, test_size=50, size=16, seed=0)


def test_validation_is_stratified_and_disjoint_from_training():
    data = prepare_training_data(splits(), fraction=0.25, regime="semi-supervised", seed=3)
    val, labeled, pool = data.val_data, data.sl_data, data.ssl_data
    assert len(val) == 40  # 10 % of 400
    assert torch.bincount(val.labels, minlength=10).tolist() == [4] * 10
    rows = lambda d: {tuple(x.flatten().tolist()) for x in d.images}  # noqa: E731
    assert not rows(val) & rows(labeled) and not rows(val) & rows(pool)
    assert rows(labeled) <= rows(pool) and len(pool) == 360
    again = prepare_training_data(splits(), fraction=0.5, regime="data-limited", seed=9)
    assert torch.equal(again.val_data.images, val.images)  # one validation set for every run
    assert again.ssl_data is None


def test_validation_cap_and_off():
    capped = prepare_training_data(splits(), val_fraction=0.5, val_max=20)
    assert len(capped.val_data) == 20
    assert prepare_training_data(splits(), val_fraction=0.0).val_data is None


@pytest.mark.parametrize("ssl_share", [1.0, 0.5, 0.7])
@pytest.mark.parametrize("regime", ["data-limited", "semi-supervised"])
def test_equal_sample_passes_per_objective(regime, ssl_share):
    data = prepare_training_data(splits(), fraction=0.25, regime=regime, seed=0)
    passes, flops = {}, {}
    for pipeline in ("ssl+sl", "mix"):
        config = TrainConfig(
            pipeline=pipeline, ssl_epochs=3, sl_epochs=2, mix_ratio=0.5, batch_size=16,
            ssl_share=ssl_share, device="cpu", compile=False, progress=False,
        )  # fmt: skip
        torch.manual_seed(0)
        model = create_model(
            "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, num_classes=10,
            depth=1, embed_dim=32, num_heads=2, decoder_dim=16, decoder_depth=1, decoder_heads=2,
        )  # fmt: skip
        seen = count_rows(model)
        result = train(config, model, data.ssl_data, data.sl_data, data.val_data)
        passes[pipeline], flops[pipeline] = result.sample_passes, result.flops
        assert result.flops > 0 and result.step_flops
        assert seen == result.sample_passes  # what the model was given is what is reported
    assert passes["mix"] == passes["ssl+sl"]
    if ssl_share < 1:  # no patch embedding shared between the objectives: the same FLOPs
        assert flops["mix"] == flops["ssl+sl"]
    if regime == "semi-supervised":  # SSL on the whole pool, labels on the quarter
        assert passes["mix"]["ssl"] > passes["mix"]["sl"]


def count_rows(model) -> dict[str, int]:
    """Wrap the model's training forwards to count the SSL and SL images they are given."""
    seen = {"ssl": 0, "sl": 0}
    forward_ssl, forward_sl, forward_mixed = (
        model.forward_ssl,
        model.forward_sl,
        model.forward_mixed,
    )

    def ssl(images, **kwargs):
        seen["ssl"] += len(images) if model.training else 0
        return forward_ssl(images, **kwargs)

    def sl(images, **kwargs):
        seen["sl"] += len(images) if model.training else 0
        return forward_sl(images, **kwargs)

    def mixed(ssl_images, sl_images, labels, **kwargs):
        seen["ssl"] += len(ssl_images)
        seen["sl"] += len(sl_images)
        return forward_mixed(ssl_images, sl_images, labels, **kwargs)

    model.forward_ssl, model.forward_sl, model.forward_mixed = ssl, sl, mixed
    return seen


def test_confidence_interval_by_hand():
    mix, base = [71.0, 74.0, 70.0, 75.0, 72.0], [70.0, 71.0, 70.5, 72.0, 70.5]
    diffs = [1.0, 3.0, -0.5, 3.0, 1.5]
    mean = sum(diffs) / 5  # 1.6
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4)
    half = 2.7764 * sd / math.sqrt(5)  # t_{0.975, 4}
    diff = paired_diff(mix, base)
    assert diff.mean == pytest.approx(1.6)
    assert (diff.t_low, diff.t_high) == pytest.approx((mean - half, mean + half))
    assert min(diffs) <= diff.boot_low <= mean <= diff.boot_high <= max(diffs)
    assert t_quantile_975(1) == pytest.approx(12.7062)
    assert t_quantile_975(1000) == pytest.approx(1.962, abs=2e-3)


def test_verdict():
    above = PairedDiff(5, 2.0, 1.0, 0.5, 3.5, 0.6, 3.4)
    holds = PairedDiff(5, 0.5, 1.0, -0.5, 1.5, -0.4, 1.4)
    below = PairedDiff(5, -2.0, 1.0, -3.5, -0.5, -3.4, -0.6)
    assert verdict(above, 0.8).word == "win"
    assert verdict(above, 1.0).word == "win"  # equal FLOPs: better is a win (it was "loss")
    assert verdict(above, 1.1).word == "better, dearer"  # a trade-off, not a loss
    assert verdict(holds, 0.5).word == "tie"
    assert verdict(below, 0.5).word == "loss"
    assert str(verdict(above, 1.1)) == "better, dearer"  # f-strings of older scripts read the word


def test_pipeline_order_rotates_per_seed():
    args = argparse.Namespace(
        regimes=["data-limited"], fractions=[0.1], budgets=None, seeds=[0, 1, 2],
        pipelines=["sl", "ssl+sl", "mix"],
    )  # fmt: skip
    cells = grid(args)
    firsts = [cells[i].pipeline for i in range(0, 9, 3)]
    assert firsts == ["sl", "ssl+sl", "mix"]
    assert len({c.name for c in cells}) == 9


def test_summary_and_table():
    runs = []
    for seed, (m, b) in enumerate([(0.72, 0.70), (0.74, 0.71), (0.745, 0.72)]):
        for pipeline, top1, flops in (("mix", m, 90), ("ssl+sl", b, 100)):
            runs.append(
                {"pipeline": pipeline, "regime": "data-limited", "fraction": 0.1, "budget": None,
                 "seed": seed, "top1": top1, "val_top1": top1, "wall_s": 2.0, "flops": flops,
                 "passes": {"ssl": 10, "sl": 10}}
            )  # fmt: skip
    row = summarize(runs)[0]
    assert row["diff"]["mean"] == pytest.approx(2.5)
    assert row["flops_ratio"] == pytest.approx(0.9) and row["passes_equal"]
    assert row["verdict"] == "win" and row["accuracy"] == "better"
    assert (row["cost"], row["cost_measure"]) == ("lower", "FLOPs")
    assert row["diff"]["method"] == "t" and row["diff"]["n"] == 3
    assert row["diff"]["boot_low"] is None  # 3 seeds: no bootstrap
    table = format_table(runs)
    assert "win" in table and "+2.50" in table and "10/10" in table
    assert "95% t, n=3" in table and "0.900" in table and "lower (FLOPs)" in table
