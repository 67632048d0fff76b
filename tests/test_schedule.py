"""MixSchedule: the phase plan, a(t) and the sample-pass budget arithmetic."""

from __future__ import annotations

import math

import pytest

from mixfast.checks import SettingError
from mixfast.schedule import MixSchedule


def plan(schedule: MixSchedule) -> list[tuple[str, int]]:
    return [(p.name, p.epochs) for p in schedule.phases]


@pytest.mark.parametrize(
    ("ssl", "sl", "rho", "mix", "expected"),
    [
        (10, 10, 0.5, 5, [("ssl", 5), ("mix", 5), ("sl", 5)]),
        (10, 10, 0.0, 0, [("ssl", 10), ("sl", 10)]),  # rho = 0 is SSL+SL
        (10, 10, 1.0, 10, [("mix", 10)]),  # rho = 1: everything mixed
        (8, 4, 1.0, 4, [("ssl", 4), ("mix", 4)]),
        (0, 6, 0.7, 0, [("sl", 6)]),  # E_ssl = 0 is plain SL
        (5, 3, 0.5, 2, [("ssl", 3), ("mix", 2), ("sl", 1)]),  # 1.5 rounds half up
        (7, 9, 0.3, 2, [("ssl", 5), ("mix", 2), ("sl", 7)]),
    ],
)
def test_phase_plan(ssl, sl, rho, mix, expected):
    schedule = MixSchedule(ssl, sl, rho)
    assert schedule.mix_epochs == mix
    assert plan(schedule) == expected
    assert schedule.total_epochs == ssl + sl - mix
    epochs = schedule.epochs()
    assert [e.index for e in epochs] == list(range(schedule.total_epochs))
    assert [e.phase for e in epochs] == [name for name, n in expected for _ in range(n)]


def test_pipelines_share_the_plan():
    assert plan(MixSchedule.for_pipeline("sl", 10, 6, 0.5)) == [("sl", 6)]
    assert plan(MixSchedule.for_pipeline("ssl+sl", 10, 6, 0.5)) == [("ssl", 10), ("sl", 6)]
    assert plan(MixSchedule.for_pipeline("mix", 10, 6, 0.5)) == [
        ("ssl", 7),
        ("mix", 3),
        ("sl", 3),
    ]


@pytest.mark.parametrize("transition", ["linear", "cosine"])
def test_alpha_goes_from_one_to_zero(transition):
    schedule = MixSchedule(4, 4, 0.5, transition)
    n = 10
    alphas = [schedule.alpha(i, n) for i in range(n)]
    assert all(a > b for a, b in zip(alphas, alphas[1:]))  # strictly decreasing
    assert 0.9 < alphas[0] < 1.0 and 0.0 < alphas[-1] < 0.1
    assert alphas[0] + alphas[-1] == pytest.approx(1.0)  # symmetric about the middle
    if transition == "linear":
        assert alphas[3] == pytest.approx(1 - 3.5 / n)
    else:
        assert alphas[3] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3.5 / n)))


def test_alpha_constant_and_bounds():
    schedule = MixSchedule(4, 4, 0.5, "constant", alpha_constant=0.3)
    assert {schedule.alpha(i, 7) for i in range(7)} == {0.3}
    with pytest.raises(ValueError, match="step"):
        schedule.alpha(7, 7)


def test_budget_arithmetic():
    schedule = MixSchedule(6, 4, 0.5)  # SSL x 4 -> MIX x 2 -> SL x 2
    budget = schedule.budget(ssl_steps=30, sl_steps=10, batch_size=8)
    phases = budget["phases"]
    # a mix epoch is one pass over the labeled data; the SSL passes it does not make (30 - 10
    # steps per mix epoch) go to the SSL phase, so SSL+SL and mix make the same passes
    assert phases["ssl"] == {"epochs": 4, "steps": 160, "ssl_samples": 1280, "sl_samples": 0}
    assert phases["mix"] == {"epochs": 2, "steps": 20, "ssl_samples": 160, "sl_samples": 160}
    assert phases["sl"] == {"epochs": 2, "steps": 20, "ssl_samples": 0, "sl_samples": 160}
    assert budget["total"] == {"epochs": 8, "steps": 200, "ssl_samples": 1440, "sl_samples": 320}
    baseline = MixSchedule(6, 4, 0.0).budget(ssl_steps=30, sl_steps=10, batch_size=8)["total"]
    assert (baseline["ssl_samples"], baseline["sl_samples"]) == (1440, 320)


def test_budget_same_images_rho_zero_and_multitask():
    # rho = 0: the SSL+SL budget is E_ssl * N SSL passes and E_sl * N SL passes
    base = MixSchedule(5, 3, 0.0).budget(ssl_steps=10, sl_steps=10, batch_size=4)
    assert base["total"]["ssl_samples"] == 5 * 40 and base["total"]["sl_samples"] == 3 * 40
    # rho = 1 with same images: each mix step is one SSL and one SL pass of the same batch
    mixed = MixSchedule(3, 3, 1.0).budget(ssl_steps=10, sl_steps=10, batch_size=4)
    assert mixed["phases"] == {
        "mix": {"epochs": 3, "steps": 30, "ssl_samples": 120, "sl_samples": 120}
    }
    # two tasks: each step takes a batch from each labeled stream
    tasks = MixSchedule(0, 2).budget(ssl_steps=10, sl_steps=5, batch_size=4, tasks=2)
    assert tasks["total"] == {"epochs": 2, "steps": 10, "ssl_samples": 0, "sl_samples": 80}


def test_budget_with_a_half_ssl_sub_batch():
    # same images, SSL x 2 -> MIX x 2 -> SL x 2: the mix phase's 20 steps carry half an SSL
    # batch each (10 SSL steps' worth), so the SSL phase takes those 10 steps on top of its 20
    schedule = MixSchedule(4, 4, 0.5, ssl_share=0.5)
    assert schedule.epoch_steps(ssl_steps=10, sl_steps=10) == [15, 15, 10, 10, 10, 10]
    budget = schedule.budget(ssl_steps=10, sl_steps=10, batch_size=8)
    assert budget["phases"]["mix"] == {
        "epochs": 2, "steps": 20, "ssl_samples": 80, "sl_samples": 160
    }  # fmt: skip
    baseline = MixSchedule(4, 4, 0.0).budget(ssl_steps=10, sl_steps=10, batch_size=8)
    assert budget["total"]["ssl_samples"] == baseline["total"]["ssl_samples"] == 320
    assert budget["total"]["sl_samples"] == baseline["total"]["sl_samples"]
    with pytest.raises(ValueError, match="ssl_share"):  # all SSL epochs mix, passes left over
        MixSchedule(2, 4, 1.0, ssl_share=0.5).epoch_steps(ssl_steps=10, sl_steps=10)


@pytest.mark.parametrize(("steps", "share", "batch"), [(20, 0.5, 8), (7, 0.5, 8), (9, 0.3, 10)])
def test_mix_ssl_rows_make_whole_ssl_batches(steps, share, batch):
    schedule = MixSchedule(4, 4, 0.5, ssl_share=share)
    rows = [schedule.mix_ssl_rows(i, i + 1, steps, batch) for i in range(steps)]
    assert sum(rows) == round(steps * share) * batch  # the SSL phase gives up whole steps
    assert max(rows) - min(rows) <= 1  # at most two sub-batch sizes
    assert schedule.mix_ssl_rows(2, 5, steps, batch) == sum(rows[2:5])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ssl_epochs": -1, "sl_epochs": 2}, "ssl_epochs"),
        ({"ssl_epochs": 2, "sl_epochs": 1.5}, "sl_epochs"),
        ({"ssl_epochs": 2, "sl_epochs": 2, "mix_ratio": 1.5}, "mix_ratio"),
        ({"ssl_epochs": 2, "sl_epochs": 2, "transition": "step"}, "transition"),
        ({"ssl_epochs": 2, "sl_epochs": 2, "alpha_constant": -0.1}, "alpha_constant"),
        ({"ssl_epochs": 2, "sl_epochs": 2, "ssl_share": 0.0}, "ssl_share"),
        ({"ssl_epochs": 2, "sl_epochs": 2, "ssl_share": 1.5}, "ssl_share"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MixSchedule(**kwargs)
    with pytest.raises(ValueError, match="pipeline"):
        MixSchedule.for_pipeline("mae", 1, 1)


def test_a_plan_with_no_ssl_epoch_for_the_leftover_ssl_steps_is_refused():
    # same images (data-limited): rho 1 is a whole mix phase, nothing is left over
    assert MixSchedule(3, 3, 1.0).epoch_steps(ssl_steps=10, sl_steps=10) == [10, 10, 10]
    # a larger SSL pool (semi-supervised): the 3 x 30 - 3 x 10 SSL steps need an SSL-only epoch
    with pytest.raises(SettingError, match="mix_ratio 1.0 makes all 3 SSL epochs mix") as info:
        MixSchedule(3, 3, 1.0).epoch_steps(ssl_steps=30, sl_steps=10)
    assert "at most 2" in str(info.value)
    steps = MixSchedule(3, 3, 0.67).epoch_steps(ssl_steps=30, sl_steps=10)  # 2 mix epochs
    assert steps == [70, 10, 10, 10] and sum(steps[:3]) == 3 * 30
