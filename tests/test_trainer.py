"""MixTrainer on a tiny ViT (16x16 images, patch 4, depth 2, dim 32) and synthetic tensors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal

import pytest
import torch
from _tiny import CLASSES, tiny_data, tiny_model
from torch.utils.data import DataLoader, TensorDataset

from mixfast import create_model
from mixfast.checkpoint import export_encoder, load_checkpoint, load_model_state
from mixfast.checks import SettingError
from mixfast.cli.args import add_train_arguments, config_from_args
from mixfast.data import ImageDataset
from mixfast.optim import make_adamw, param_groups
from mixfast.train import MixTrainer, NonFiniteLossError, TrainConfig, train
from mixfast.train.step_runner import StepRunner


def tiny_config(tmp_path, name: str = "run", **overrides) -> TrainConfig:
    base = dict(
        pipeline="mix",
        ssl_epochs=2,
        sl_epochs=2,
        mix_ratio=0.5,  # SSL x 1 -> MIX x 1 -> SL x 1
        batch_size=16,
        blr=5e-3,
        ssl_blr=5e-3,
        warmup_epochs=0.5,
        out=str(tmp_path / name),
        progress=False,
        log_every=2,
    )
    return TrainConfig(**{**base, **overrides})


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


# --------------------------------------------------------------------------------------------
# the three pipelines, end to end


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pipeline", "phases"),
    [("sl", ["sl", "sl"]), ("ssl+sl", ["ssl", "ssl", "sl", "sl"]), ("mix", ["ssl", "mix", "sl"])],
)
def test_pipelines_train_end_to_end(tmp_path, pipeline, phases):
    config = tiny_config(
        tmp_path, pipeline=pipeline, sl_view="masked" if pipeline == "mix" else "full"
    )
    model = tiny_model()
    before = weights(model)
    result = train(config, model, None, tiny_data(), tiny_data(40, seed=2))
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir() if p.suffix != ".png") == [  # + pictures
        ".lock",
        ".mixfast-run",
        "config.json",
        "last.pt",
        "metrics.jsonl",
        "result.json",
    ]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == phases
    assert all(r["loss"] == r["loss"] and r["images_per_s"] > 0 for r in rows)  # finite
    saved = json.loads((run / "result.json").read_text())
    assert saved == json.loads(json.dumps(result.to_dict()))
    assert 0.0 <= saved["top1"] <= 1.0 and saved["completed"]
    # the budget the plan promised is what ran: 64 samples / 16 = 4 steps per epoch
    assert result.sample_passes == {
        "ssl": result.budget["total"]["ssl_samples"],
        "sl": result.budget["total"]["sl_samples"],
    }
    expected_ssl = {"sl": 0, "ssl+sl": 2 * 64, "mix": 2 * 64}[pipeline]
    assert result.sample_passes == {"ssl": expected_ssl, "sl": 2 * 64}
    assert set(result.phase_wall_s) == set(phases)
    assert result.wall_s >= sum(result.phase_wall_s.values())
    if pipeline == "mix":
        low, high = rows[1]["alpha"]
        assert 1.0 > low > high > 0.0  # a(t) falls across the mix phase
    config_json = json.loads((run / "config.json").read_text())
    assert config_json["pipeline"] == pipeline
    assert config_json["resolved"]["effective_batch"] == 16
    finetune = config_json["resolved"]["stages"]["finetune"]
    assert finetune["lr"] == pytest.approx(5e-3 * 16 / 256)
    changed = [k for k, v in weights(model).items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.blocks.0") for k in changed)


def test_two_stream_and_multitask(tmp_path):
    """An unlabeled SSL pool beside two labeled tasks; the shorter stream cycles."""
    torch.manual_seed(0)
    model = create_model(
        "vit_tiny_patch16_224",
        img_size=16,
        patch_size=4,
        in_chans=1,
        task_classes=[CLASSES, 3],
        depth=1,
        embed_dim=32,
        num_heads=2,
        decoder_dim=16,
        decoder_depth=1,
        decoder_heads=2,
    )
    task2 = TensorDataset(torch.randn(32, 1, 16, 16), torch.randint(0, 3, (32,)))
    data = (tiny_data(96), [tiny_data(48), task2], [tiny_data(20, seed=3), task2])
    one_epoch = tiny_config(tmp_path, ssl_epochs=1, sl_epochs=1, mix_ratio=1.0)
    with pytest.raises(SettingError, match="leaves no SSL-only epoch for the 3 SSL steps"):
        MixTrainer(model, one_epoch).fit(*data)  # the pool's other 48 SSL passes: nowhere
    config = tiny_config(
        tmp_path, ssl_epochs=2, sl_epochs=1, mix_ratio=1.0, task_weights=[0.7, 0.3]
    )
    result = MixTrainer(model, config).fit(*data)
    assert result.resolved["mode"] == "two-stream"
    # a mix epoch is one pass over the (longest) labeled stream: 48 / 16 = 3 steps, the other
    # task cycles; the SSL epoch makes the 2 x 96 SSL passes the mix epoch does not: 12 - 3
    assert [row["steps"] for row in result.epochs] == [9, 3]
    assert result.sample_passes == {"ssl": 2 * 96, "sl": 2 * 48}
    assert len(result.top1_tasks) == 2 and all(0 <= t <= 1 for t in result.top1_tasks)


def test_dataloader_input_and_no_out(tmp_path):
    loader = DataLoader(tiny_data(), batch_size=16, shuffle=False, drop_last=True)
    config = tiny_config(tmp_path, pipeline="sl", sl_epochs=1, out=None)
    result = MixTrainer(tiny_model(), config).fit(None, loader, tiny_data(20))
    assert result.global_step == 4 and result.top1 is not None
    assert not any(tmp_path.iterdir())  # out=None writes nothing


class ItemDataset(torch.utils.data.Dataset):
    """A plain map-style dataset: goes through a DataLoader, not the in-memory fast path."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.data[index]


class Uint8Dataset(ImageDataset):
    """An ImageDataset (uint8 images, normalised on the device), and `data`: its float copy."""

    def __init__(self, data: TensorDataset) -> None:
        images, labels = data.tensors
        images = (images.clamp(-4, 4) * 30 + 128).round().to(torch.uint8)
        super().__init__(images, labels, (128 / 255,), (30 / 255,))
        self.data = TensorDataset(images.float().sub(128).div(30), labels)


def test_dataset_kinds_read_the_same_order(tmp_path):
    """A DataLoader over a plain Dataset, the TensorDataset fast path and a uint8 store
    (normalised on the device) train to the same weights: one seeded order for all."""
    config = tiny_config(tmp_path, pipeline="sl", sl_epochs=1, out=None, label_smoothing=0.0)
    results = {}
    uint8 = Uint8Dataset(tiny_data())
    for name, data in {
        "tensor": TensorDataset(*uint8.data.tensors),
        "loader": ItemDataset(uint8.data),
        "uint8": uint8,
    }.items():
        model = tiny_model(drop_path=0.0)
        result = train(config, model, None, data, data)
        results[name] = (weights(model), result.top1)
    assert_same_weights(results["loader"][0], results["tensor"][0], atol=0.0)
    # uint8 -> (x / 255 - mean) / std rounds differently from the float copy
    assert_same_weights(results["uint8"][0], results["tensor"][0], atol=1e-5)
    assert len({top1 for _, top1 in results.values()}) == 1


def test_drop_in_from_a_timm_name_and_a_schedule():
    from mixfast.schedule import MixSchedule

    trainer = MixTrainer(
        "vit_tiny_patch16_224",
        MixSchedule(1, 1, mix_ratio=1.0),
        model_kwargs=dict(
            img_size=16,
            patch_size=4,
            in_chans=1,
            depth=1,
            embed_dim=32,
            num_heads=2,
            decoder_dim=16,
            decoder_depth=1,
            decoder_heads=2,
        ),
        batch_size=16,
        progress=False,
    )
    result = trainer.fit(None, tiny_data(32), tiny_data(20))
    assert trainer.model.task_classes == [CLASSES]  # read from the labels
    assert [r["phase"] for r in result.epochs] == ["mix"] and result.completed


# --------------------------------------------------------------------------------------------
# exact resume


def augment():
    """On-device random crop + flip with its own generator: resume must restore it too."""
    from mixfast.data import BatchAugment

    return BatchAugment(16, (0.0,), (1.0,), seed=7)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    model = tiny_model()
    config = tiny_config(tmp, accum_steps=2, augment=augment())
    result = train(config, model, None, tiny_data(), tiny_data(20))
    return weights(model), result


@pytest.mark.slow
def test_resume_is_exact(tmp_path, uninterrupted):
    """Stopped in SSL (step 1), inside MIX (step 3), at the MIX->SL seam (step 4), resumed
    each time: the final weights equal the uninterrupted run's."""
    # 64 samples / (16 x 2 accum) = 2 steps per epoch: SSL = steps 1-2, MIX = 3-4, SL = 5-6
    expected, full = uninterrupted
    for stop_after in (1, 3, 4, 0):
        config = tiny_config(
            tmp_path,
            accum_steps=2,
            stop_after=stop_after,
            resume=stop_after != 1,
            augment=augment(),
        )
        # a resumed run starts from other weights: the checkpoint must overwrite every one
        model = tiny_model(seed=0 if stop_after == 1 else 100 + stop_after)
        result = train(config, model, None, tiny_data(), tiny_data(20))
        if stop_after:
            assert not result.completed and result.global_step == stop_after
            state = load_checkpoint(tmp_path / "run" / "last.pt")
            assert state["position"]["global_step"] == stop_after
    assert result.completed and result.global_step == full.global_step
    assert_same_weights(weights(model), expected, atol=0.0)  # bitwise
    assert [r["loss"] for r in result.epochs] == pytest.approx([r["loss"] for r in full.epochs])
    assert result.sample_passes == full.sample_passes
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_sigterm_saves_a_checkpoint_then_exits(tmp_path):
    model = tiny_model()
    calls = {"n": 0}
    forward_ssl = model.forward_ssl

    def forward_ssl_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward_ssl(*args, **kwargs)

    model.forward_ssl = forward_ssl_then_signal
    with pytest.raises(SystemExit) as exit_info:
        train(tiny_config(tmp_path), model, None, tiny_data(), tiny_data(20))
    assert exit_info.value.code == 128 + signal.SIGTERM
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["position"]["global_step"] == 2  # the step in flight finished first
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


# --------------------------------------------------------------------------------------------
# files are never overwritten, bad settings are refused before any work


def test_refuses_to_overwrite_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "result.json"):
        path = run / name
        path.write_bytes(b"precious")
        with pytest.raises(ValueError, match="resume"):
            train(tiny_config(tmp_path), tiny_model(), None, tiny_data(), tiny_data(20))
        assert path.read_bytes() == b"precious"
        assert sorted(p.name for p in run.iterdir()) == [name]
        path.unlink()


def test_resume_errors(tmp_path):
    with pytest.raises(ValueError, match="nothing to resume"):
        train(tiny_config(tmp_path, resume=True), tiny_model(), None, tiny_data(), None)
    train(tiny_config(tmp_path, stop_after=1), tiny_model(), None, tiny_data(), None)
    with pytest.raises(ValueError, match="mix_ratio: 0.5 -> 0.25"):
        changed = tiny_config(tmp_path, resume=True, mix_ratio=0.25)
        train(changed, tiny_model(), None, tiny_data(), None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pipeline", "mae"),
        ("transition", "step"),
        ("sl_view", "half"),
        ("mix_ratio", 1.5),
        ("mask_ratio", 1.0),
        ("batch_size", 0),
        ("accum_steps", 1.5),
        ("blr", 0.0),
        ("layer_decay", 1.5),
        ("label_smoothing", 1.0),
        ("device", "gpu"),
        ("nonfinite", "ignore"),
        ("compile", "yes"),
        ("sl_epochs", 0),
        ("task_weights", []),
        ("finetune_from", "ssl"),
    ],
)
def test_bad_config_names_the_argument(tmp_path, field, value):
    config = tiny_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=field):
        config.validate()
    with pytest.raises(ValueError, match=field):
        train(config, tiny_model(), None, tiny_data(), None)
    assert not (tmp_path / "run").exists()


def test_data_smaller_than_a_batch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny_config(tmp_path, batch_size=128), tiny_model(), None, tiny_data(), None)


def test_command_line_flags():
    parser = add_train_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        "--pipeline ssl+sl --ssl-epochs 3 --sl-epochs 4 --mix-ratio 0.25 --transition cosine "
        "--sl-view masked --mask-ratio 0.6 --batch-size 8 --accum-steps 2 --blr 0.002 "
        "--warmup-epochs 2 --weight-decay 0.1 --layer-decay 0.65 --label-smoothing 0 "
        "--clip-grad 1.0 --seed 7 --device cpu --no-compile --out runs/x --resume "
        "--nonfinite skip --finetune-from sl".split()
    )
    config = config_from_args(args)
    assert config == TrainConfig(
        pipeline="ssl+sl",
        ssl_epochs=3,
        sl_epochs=4,
        mix_ratio=0.25,
        transition="cosine",
        sl_view="masked",
        mask_ratio=0.6,
        batch_size=8,
        accum_steps=2,
        blr=0.002,
        warmup_epochs=2.0,
        weight_decay=0.1,
        layer_decay=0.65,
        label_smoothing=0.0,
        clip_grad=1.0,
        seed=7,
        device="cpu",
        compile=False,
        out="runs/x",
        resume=True,
        nonfinite="skip",
        finetune_from="sl",
    )
    defaults = config_from_args(parser.parse_args([]))
    assert defaults == TrainConfig()
    assert config_from_args(parser.parse_args(["--compile"])).compile is True
    with pytest.raises(ValueError, match="mix_ratio"):
        config_from_args(parser.parse_args(["--mix-ratio", "2"]))


# --------------------------------------------------------------------------------------------
# optimizer: layer-wise lr decay, weight decay groups


def test_layer_decay_gives_groups_different_lrs():
    model = tiny_model()
    optimizer = make_adamw(
        model, weight_decay=0.05, layer_decay=0.5, betas=(0.9, 0.999), fused=False
    )
    from mixfast.optim import set_lr

    set_lr(optimizer, 1.0)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    # depth 2: embeddings 0.5^3, block 0 0.5^2, block 1 0.5, head / decoder 1
    assert lr_of[id(named["encoder.patch_embed.proj.weight"])] == pytest.approx(0.125)
    assert lr_of[id(named["encoder.cls_token"])] == pytest.approx(0.125)
    assert lr_of[id(named["encoder.blocks.0.attn.qkv.weight"])] == pytest.approx(0.25)
    assert lr_of[id(named["encoder.blocks.1.mlp.fc1.weight"])] == pytest.approx(0.5)
    assert lr_of[id(named["encoder.head.weight"])] == pytest.approx(1.0)
    assert lr_of[id(named["decoder_blocks.0.attn.qkv.weight"])] == pytest.approx(1.0)
    assert len({round(lr, 6) for lr in lr_of.values()}) == 4
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)


def test_weight_decay_skips_norms_biases_and_tokens():
    groups = param_groups(tiny_model(), weight_decay=0.05, layer_decay=1.0)
    decay_of = {n: g["weight_decay"] for g in groups for n in g["names"]}
    for name in ("encoder.pos_embed", "encoder.cls_token", "mask_token", "encoder.norm.weight"):
        assert decay_of[name] == 0.0
    assert decay_of["encoder.blocks.0.attn.qkv.bias"] == 0.0
    assert decay_of["encoder.blocks.0.attn.qkv.weight"] == 0.05


def test_finetune_stage_uses_layer_decay_by_default(tmp_path):
    config = tiny_config(tmp_path, ssl_epochs=1, sl_epochs=1, mix_ratio=0.0, out=None)
    trainer = MixTrainer(tiny_model(), config)
    trainer.fit(None, tiny_data(), None)
    scales = {round(g["lr_scale"], 6) for g in trainer.stages.optimizer.param_groups}
    assert trainer.plan.stages["finetune"].layer_decay == 0.75
    assert trainer.plan.stages["pretrain"].layer_decay == 1.0
    assert scales == {round(0.75**k, 6) for k in range(4)}


@pytest.mark.parametrize("finetune_from", ["mix", "sl"])
def test_finetune_from_sets_which_phase_opens_the_finetune_optimizer(tmp_path, finetune_from):
    config = tiny_config(
        tmp_path, ssl_epochs=2, sl_epochs=2, mix_ratio=0.5, finetune_from=finetune_from, out=None
    )
    trainer = MixTrainer(tiny_model(), config)
    betas: dict[str, tuple] = {}
    train_epoch = MixTrainer._train_epoch

    def record(self, spec):  # the optimizer each phase steps with
        stopped = train_epoch(self, spec)
        betas[spec.phase] = tuple(self.stages.optimizer.param_groups[0]["betas"])
        return stopped

    MixTrainer._train_epoch = record
    try:
        trainer.fit(None, tiny_data(), None)
    finally:
        MixTrainer._train_epoch = train_epoch
    stages = trainer.plan.to_dict()["stages"]
    steps = trainer.plan.steps_per_epoch
    pretrain, finetune = (0.9, 0.95), (0.9, 0.999)
    if finetune_from == "mix":
        assert betas == {"ssl": pretrain, "mix": finetune, "sl": finetune}
        assert stages["pretrain"]["total_steps"] == steps["ssl"]
    else:  # the mix phase continues the pre-train optimizer and its lr schedule
        assert betas == {"ssl": pretrain, "mix": pretrain, "sl": finetune}
        assert stages["pretrain"]["total_steps"] == steps["ssl"] + steps["mix"]
        assert stages["finetune"]["total_steps"] == steps["sl"]


# --------------------------------------------------------------------------------------------
# non-finite losses


def nan_after(model, method: str, good_calls: int):
    calls = {"n": 0}
    original = getattr(model, method)

    def forward(*args, **kwargs):
        calls["n"] += model.training  # evaluation calls do not count
        out = original(*args, **kwargs)
        return out * float("nan") if calls["n"] > good_calls else out

    setattr(model, method, forward)
    return model


def nan_at(model, method: str, calls: tuple[int, ...]):
    count = {"n": 0}
    original = getattr(model, method)

    def forward(*args, **kwargs):
        count["n"] += model.training
        out = original(*args, **kwargs)
        return out * float("nan") if model.training and count["n"] in calls else out

    setattr(model, method, forward)
    return model


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # "sl" for 2 epochs of 4 steps: epoch 1 ends with a checkpoint, step 6 goes NaN
    model = nan_after(tiny_model(), "forward_sl", good_calls=5)
    config = tiny_config(tmp_path, pipeline="sl", log_every=100)
    with pytest.raises(NonFiniteLossError, match=r"step 6 \(phase sl, epoch 2\): loss=nan"):
        train(config, model, None, tiny_data(), tiny_data(20))
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["position"]["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nonfinite_skip_skips_the_step(tmp_path, capsys):
    model = nan_at(tiny_model(), "forward_sl", calls=(6,))
    config = tiny_config(tmp_path, pipeline="sl", nonfinite="skip", out=None)
    result = train(config, model, None, tiny_data(), None)
    assert result.completed and result.skipped_steps == 1
    assert "skipped step 6" in capsys.readouterr().err  # said as it happens
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_skip_stops_a_diverging_run(tmp_path):
    model = nan_after(tiny_model(), "forward_sl", good_calls=5)  # steps 6, 7, 8 go NaN
    config = tiny_config(tmp_path, pipeline="sl", nonfinite="skip", out=None)
    with pytest.raises(NonFiniteLossError, match="skipped 3 of 4 steps of epoch 2"):
        train(config, model, None, tiny_data(), None)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# checkpoint I/O


def test_checkpoint_loads_weights_only_and_names_bad_keys(tmp_path):
    train(tiny_config(tmp_path, pipeline="sl", sl_epochs=1), tiny_model(), None, tiny_data(), None)
    state = load_checkpoint(tmp_path / "run" / "last.pt")  # weights_only=True inside
    assert {"model", "optimizer", "position", "streams", "rng", "config", "resolved"} <= set(state)
    model = tiny_model(seed=5)
    load_model_state(model, state["model"])
    broken = dict(state["model"])
    broken["surprise.weight"] = broken.pop("encoder.head.weight")
    with pytest.raises(ValueError, match=r"missing keys: encoder\.head\.weight") as info:
        load_model_state(model, broken)
    assert "unexpected keys: surprise.weight" in str(info.value)
    vit = model.export_timm()
    vit.load_state_dict(torch.load(export_encoder(model, tmp_path / "enc.pt"), weights_only=True))
    safetensors = pytest.importorskip("safetensors.torch")
    state = safetensors.load_file(export_encoder(model, tmp_path / "enc.safetensors"))
    assert_same_weights(state, vit.state_dict(), atol=0.0)


# --------------------------------------------------------------------------------------------
# torch.compile: the step compiles and does not recompile between epochs


@pytest.mark.slow
def test_compiled_step_does_not_recompile_between_epochs(tmp_path):
    # SSL x 2 -> MIX x 2 -> SL x 2; aot_eager traces as inductor does, without its codegen
    config = tiny_config(
        tmp_path, ssl_epochs=4, sl_epochs=4, compile=True, compile_backend="aot_eager", out=None
    )
    data = tiny_data(32)
    compiled, eager = tiny_model(drop_path=0.0), tiny_model(drop_path=0.0)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        result = train(config, compiled, None, data, None)
    assert [r["phase"] for r in result.epochs] == ["ssl", "ssl", "mix", "mix", "sl", "sl"]
    train(dataclasses.replace(config, compile=False), eager, None, data, None)
    assert_same_weights(weights(compiled), weights(eager), atol=1e-4)


@pytest.mark.cuda
def test_cuda_amp_compile_train(tmp_path):
    config = tiny_config(tmp_path, device="cuda", compile="auto", amp=True)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        result = train(config, tiny_model(), None, tiny_data(), tiny_data(20))
    assert result.resolved["compile"] and result.resolved["amp"]
    assert result.completed and 0.0 <= result.top1 <= 1.0
    assert result.resolved["device"].startswith("cuda")


@pytest.mark.cuda
def test_cuda_steps_never_sync_with_the_host(tmp_path, monkeypatch):
    """Every step after the first of an epoch runs with CUDA sync debugging set to error."""
    train_step = StepRunner.step

    def strict_step(self, *args):
        if self.position.step_in_epoch == 0:  # lazy set-up (first gather of a pass, workspaces)
            return train_step(self, *args)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return train_step(self, *args)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(StepRunner, "step", strict_step)
    config = tiny_config(tmp_path, device="cuda", compile=False, clip_grad=1.0, log_every=100)
    result = train(config, tiny_model(), None, tiny_data(), tiny_data(20))
    assert result.completed
