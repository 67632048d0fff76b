"""timm's fine-tune recipe (mixfast/train/recipe.py, ema.py): each flag changes training as
intended, Mixup's even-batch rule, draws that depend on neither the worker count nor the
storage, an exact stop + resume with all six on, refused values, and `compare` from weights."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import CLASSES, tiny_data, tiny_model
from test_cli import TINY
from test_files import write_folder
from timm.data.mixup import mixup_target
from timm.layers import DropPath

from mixfast import cli, create_model, experiment
from mixfast.checkpoint import load_checkpoint
from mixfast.data import BatchAugment, ImageDataset, normalize, open_dataset, prepare_training_data
from mixfast.train import MixTrainer, TrainConfig
from mixfast.train.ema import ModelEma
from mixfast.train.recipe import Recipe
from mixfast.train.settings import ModelConfig

MEAN, STD = (0.5,), (0.25,)
RECIPE = dict(mixup=0.8, cutmix=1.0, aa="rand-m9-mstd0.5-inc1", reprob=0.25, model_ema=True)
RUN = dict(device="cpu", compile=False, progress=False)


def uint8_data(n: int = 64, seed: int = 1) -> ImageDataset:
    """Learnable uint8 16x16 grey images of CLASSES classes."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    noise = torch.randint(0, 60, (n, 1, 16, 16), generator=gen)
    return ImageDataset((noise + 50 * labels.view(-1, 1, 1, 1)).to(torch.uint8), labels, MEAN, STD)


def global_draws() -> tuple:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def same_draws(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


# ------------------------------------------------------------------ Mixup / CutMix


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mix_targets_are_soft_and_an_odd_batch_leaves_its_last_row_unmixed(mixup, cutmix):
    recipe = Recipe(mixup=mixup, cutmix=cutmix, label_smoothing=0.1, task_classes=[4])
    images, labels = torch.randn(7, 1, 16, 16), torch.tensor([0, 1, 2, 3, 0, 2, 3])
    before, draws = images.clone(), global_draws()
    mixed, targets = recipe.mix(images, labels, 0, recipe.mix_key(3))
    assert same_draws(draws, global_draws())  # timm's numpy draws were keyed, then put back
    assert targets.dtype == torch.float32 and targets.shape == (7, 4)
    torch.testing.assert_close(targets.sum(1), torch.ones(7))
    assert (targets[:6] > 0.1 / 4 + 1e-6).sum(1).ge(2).all()  # every even row is soft
    assert torch.equal(targets[6], mixup_target(labels[6:], 4, 1.0, 0.1)[0])
    assert torch.equal(mixed[6], before[6]) and not torch.equal(mixed[:6], before[:6])
    again, _ = recipe.mix(before.clone(), labels, 0, recipe.mix_key(3))
    assert torch.equal(again, mixed)  # one key, one draw
    others = [recipe.mix(before.clone(), labels, 0, recipe.mix_key(k))[0] for k in range(4, 8)]
    assert any(not torch.equal(o, mixed) for o in others)


def test_mixup_mixes_each_row_with_its_mirror_by_the_targets_weight():
    recipe = Recipe(mixup=0.8, task_classes=[4])  # no smoothing: targets are lam, 1 - lam
    images, labels = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    before = images.clone()
    mixed, targets = recipe.mix(images, labels, 0, recipe.mix_key(0))
    lam = targets[0, 0]
    torch.testing.assert_close(mixed, lam * before + (1 - lam) * before.flip(0))
    one, target = recipe.mix(torch.ones(1, 1, 16, 16), labels[:1], 0, 0)  # nothing to pair
    assert torch.equal(one, torch.ones(1, 1, 16, 16)) and torch.equal(target[0], torch.eye(4)[0])


def test_mix_step_keeps_the_ssl_images_clean_and_counts_both_embeddings():
    flops = {}
    for name, recipe in (("plain", {}), ("recipe", RECIPE)):
        config = TrainConfig(ssl_epochs=2, sl_epochs=2, batch_size=8, **RUN, **recipe)
        trainer = MixTrainer(tiny_model(), config)
        trainer.prepare(None, uint8_data(), uint8_data(16, 2))
        flops[name] = trainer.runner.count_flops("mix")
    batch = trainer.batches.next("mix", None, offset=0)
    rows = trainer.batches.sl_streams[0].last_index
    clean = normalize(uint8_data().images[rows], MEAN, STD)
    assert torch.equal(batch["ssl"], clean)  # SSL: the stored images, untouched
    images, targets = batch["sl"][0]
    assert images is not batch["ssl"] and not torch.equal(images, clean)
    assert targets.shape == (8, CLASSES) and targets.is_floating_point()
    assert flops["recipe"] > flops["plain"]  # two image tensors embedded, not one


# ------------------------------------------------------------------ RandAugment, erasing


def test_rand_augment_and_erasing_are_drawn_per_sample_from_its_key():
    recipe = Recipe(aa="rand-m9-mstd0.5-inc1", reprob=1.0)
    raw = uint8_data(6).images
    keys = [11, 12, 13, 14, 15, 16]
    prepare = lambda x: normalize(x, MEAN, STD)  # noqa: E731
    draws = global_draws()
    out = recipe.sl_images(raw, keys, prepare, MEAN)
    assert same_draws(draws, global_draws())
    assert all(not torch.equal(a, b) for a, b in zip(out, prepare(raw)))
    pair = recipe.sl_images(raw[[4, 1]], [keys[4], keys[1]], prepare, MEAN)  # another batch
    assert torch.equal(pair[0], out[4]) and torch.equal(pair[1], out[1])
    erased = Recipe(reprob=1.0).sl_images(raw, keys, prepare, MEAN)
    changed = (erased != prepare(raw)).flatten(1).sum(1)
    assert changed.gt(0).all() and changed.lt(16 * 16).all()  # a box of each image


def test_rand_augment_refuses_float_images_before_any_step():
    config = TrainConfig(ssl_epochs=1, sl_epochs=1, batch_size=8, aa="rand-m9", **RUN)
    with pytest.raises(ValueError, match="aa .RandAugment. needs uint8 images"):
        MixTrainer(tiny_model(), config).prepare(None, tiny_data(), tiny_data(16))


# ------------------------------------------------------------------ EMA, drop path


def test_ema_starts_at_the_first_head_step_and_follows_the_decay():
    model = torch.nn.Linear(3, 2)
    ema = ModelEma(model, 0.75)
    ema.before_step("ssl", model)
    assert ema.module is None  # pre-training is not averaged
    ema.before_step("mix", model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.after_step(model)
    torch.testing.assert_close(ema.module.weight, 0.75 * start + 0.25 * model.weight)
    assert ModelEma(model, None).state_dict() == {"model_ema": None}


def test_ema_run_reports_the_ema_top1_and_the_raw_one_beside_it(tmp_path):
    config = TrainConfig(ssl_epochs=1, sl_epochs=2, batch_size=8, model_ema=True,
                         model_ema_decay=0.9, out=str(tmp_path / "run"), **RUN)  # fmt: skip
    trainer = MixTrainer(tiny_model(), config)
    result = trainer.fit(None, uint8_data(), uint8_data(32, 2), test_data=uint8_data(32, 3))
    assert result.top1_raw is not None and result.test_top1_raw is not None
    assert all(row["val_top1_raw"] is not None for row in result.epochs if row["phase"] != "ssl")
    ema, raw = trainer.runner.ema.module.state_dict(), trainer.model.state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if raw[k].is_floating_point())
    reported, raw = trainer.evaluate()  # the EMA's, then the raw weights'
    assert (result.top1, result.top1_raw) == (reported[0], raw[0])
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["model_ema"]
    assert saved["started"] and all(torch.equal(saved["weights"][k], ema[k]) for k in ema)


def test_drop_path_builds_the_encoder_with_timms_stochastic_depth():
    model = create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1,
                         depth=2, embed_dim=32, num_heads=2, num_classes=4,
                         **ModelConfig(drop_path=0.1).overrides())  # fmt: skip
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.1)
    assert ModelConfig().overrides() == {}


# ------------------------------------------------------------------ exactness


def recipe_config(out, **extra) -> TrainConfig:
    return TrainConfig(ssl_epochs=2, sl_epochs=3, mix_ratio=0.5, batch_size=7, out=str(out),
                       log_every=1, model_ema_decay=0.9, **RECIPE, **RUN, **extra)  # fmt: skip


def test_stop_and_resume_with_the_whole_recipe_ends_bit_for_bit(tmp_path):
    """Stopped inside the mix phase, then resumed: the weights and the EMA weights of the run
    that was not stopped (odd batches, drop path 0.1, --augment's crops too)."""
    data = uint8_data(), uint8_data(16, 2)  # 64 / 7: 9 steps an epoch; SSL, MIX, SL, SL

    def fit(name: str, **extra) -> dict:
        augment = BatchAugment(16, MEAN, STD, seed=0)
        config = recipe_config(tmp_path / name, augment=augment, **extra)
        MixTrainer(tiny_model(drop_path=0.1), config).fit(None, *data)
        return load_checkpoint(tmp_path / name / "last.pt")

    full = fit("full")
    assert fit("stopped", stop_after=13)["position"]["global_step"] == 13  # mid mix epoch
    resumed = fit("stopped", resume=True)
    assert full["position"]["global_step"] == resumed["position"]["global_step"] == 36
    for key in ("model", "optimizer"):
        assert checkpoint_equal(full[key], resumed[key]), key
    assert checkpoint_equal(full["model_ema"]["weights"], resumed["model_ema"]["weights"])
    assert not checkpoint_equal(full["model"], full["model_ema"]["weights"])


def checkpoint_equal(a, b) -> bool:
    """Nested dicts / lists of tensors and numbers, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(checkpoint_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(checkpoint_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe") / "folder"
    write_folder(root, per_class=12)
    return root


def folder_trainer(folder, mode: str, workers: int) -> MixTrainer:
    data = prepare_training_data(open_dataset(str(folder), data_mode=mode), val_fraction=0.0)
    config = TrainConfig(ssl_epochs=1, sl_epochs=2, batch_size=8, num_workers=workers,
                         **RECIPE, **RUN)  # fmt: skip
    model = create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1,
                         embed_dim=32, num_heads=2, decoder_dim=16, decoder_depth=1,
                         num_classes=4, drop_path_rate=0.1)  # fmt: skip
    trainer = MixTrainer(model, config)
    trainer.prepare(*data.fit_inputs()[:2])
    return trainer


def test_draws_depend_on_neither_the_worker_count_nor_the_storage(image_folder):
    runs = {}
    for mode, workers in (("stream", 0), ("stream", 2), ("memory", 0)):
        trainer = folder_trainer(image_folder, mode, workers)
        batches = [trainer.batches.next(phase, None, offset=i) for i, phase in
                   enumerate(("ssl", "mix", "mix", "sl", "sl"))]  # fmt: skip
        runs[mode, workers] = [b["sl"] for b in batches if "sl" in b]
    assert runs["stream", 0][0][0][1].shape == (8, 4)  # soft targets
    for other in (runs["stream", 2], runs["memory", 0]):
        for mine, theirs in zip(runs["stream", 0], other):
            assert all(torch.equal(a, b) for a, b in zip(mine[0], theirs[0]))
    weights = []
    for workers in (0, 2):
        trainer = folder_trainer(image_folder, "stream", workers)
        trainer.run()
        weights.append((trainer.model.state_dict(), trainer.runner.ema.module.state_dict()))
    for ours, theirs in zip(*weights):
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


# ------------------------------------------------------------------ settings and the CLI


def test_the_recipe_may_not_change_on_resume():
    saved = TrainConfig().to_dict()
    changed = TrainConfig(**RECIPE)
    assert changed.changed_on_resume(saved) == ["aa", "cutmix", "mixup", "model_ema", "reprob"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mixup", "-1"], "--mixup must be in [0.0, inf), got -1.0"),
        (["--cutmix", "nan"], "--cutmix must be a number, got nan"),
        (["--aa", "auto-m9"], "--aa must be a RandAugment spec such as 'rand-m9-mstd0.5-inc1'"),
        (["--aa", "rand-m9-x3"], "--aa must be a RandAugment spec"),
        (["--reprob", "1.5"], "--reprob must be in [0.0, 1.0], got 1.5"),
        (["--model-ema-decay", "1"], "--model-ema-decay must be in (0.0, 1.0), got 1.0"),
        (["--drop-path", "1"], "--drop-path must be in [0.0, 1.0), got 1.0"),
    ],
)
def test_bad_recipe_values_exit_2_naming_the_flag_and_write_nothing(tmp_path, capsys, extra,
                                                                   message):  # fmt: skip
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_trains_with_the_recipe_and_records_it(tmp_path):
    out = tmp_path / "run"
    flags = ["--mixup", "0.8", "--cutmix", "1.0", "--aa", "rand-m9-mstd0.5-inc1", "--reprob",
             "0.25", "--drop-path", "0.1", "--model-ema", "--model-ema-decay", "0.9"]  # fmt: skip
    assert cli.main(["train", *TINY, "--batch-size", "9", "--out", str(out), *flags]) == 0
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in RECIPE} == RECIPE and config["model_ema_decay"] == 0.9
    assert json.loads((out / "data.json").read_text())["model_kwargs"]["drop_path_rate"] == 0.1
    result = json.loads((out / "result.json").read_text())
    assert result["test_top1_raw"] is not None and result["epochs"][-1]["val_top1_raw"] is not None


def test_compare_starts_every_pipeline_from_the_weights(tmp_path):
    first = tmp_path / "first"
    assert cli.main(["train", *TINY, "--out", str(first), "--stop-after", "1"]) == 0
    weights = first / "last.pt"
    out = tmp_path / "cmp"
    args = [
        "compare",
        *TINY,
        "--fractions",
        "1.0",
        "--seeds",
        "0",
        "--no-warmup",
        "--out",
        str(out),
    ]
    assert cli.main([*args, "--pretrained-path", str(weights)]) == 0
    runs = json.loads((out / "compare.json").read_text())["runs"]
    assert sorted(r["pipeline"] for r in runs) == ["mix", "sl", "ssl+sl"]
    for run in runs:
        folder = Path(run["run_dir"])
        data = json.loads((folder / "data.json").read_text())
        assert data["pretrained_path"] == str(weights)
        assert any("a mixfast checkpoint" in note for note in data["pretrained_notes"])
        config = json.loads((folder / "config.json").read_text())
        assert config["pretrained_weights"] is True and config["resolved"]["stages"]["finetune"][
            "layer_decay"] == 0.75  # fmt: skip
    assert experiment.from_weights(ModelConfig(pretrained_path=str(weights)))
