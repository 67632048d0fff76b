"""Pretrained weights through the command line and the run's settings: `mixfast train
--pretrained-path` with each kind of file, exit 2 on what does not fit, data.json's record of
what loaded, and the layer-decay default of a run that starts from weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _weight_files import TINY, TINY_MODEL, random_vit, save_mae_checkpoint
from safetensors.torch import save_file

from mixfast import cli, create_model, experiment
from mixfast.checkpoint import export_encoder
from mixfast.checks import SettingError
from mixfast.train.config import TrainConfig
from mixfast.train.plan import resolve_plan
from mixfast.train.settings import DataConfig, ModelConfig, RunSpec

# ------------------------------------------------------------------ settings, CLI, plan


def test_model_settings_name_bad_weight_sources(tmp_path):
    with pytest.raises(SettingError, match="pretrained or pretrained_path, not both"):
        ModelConfig(pretrained=True, pretrained_path=str(tmp_path)).validate()
    with pytest.raises(SettingError, match="nowhere.pth: no such file"):
        ModelConfig(pretrained_path=str(tmp_path / "nowhere.pth")).validate()
    with pytest.raises(SystemExit):
        cli.parse_args(["train", "--pretrained-weights"])  # the run sets it, not a flag


@pytest.fixture(scope="module")
def tiny_last_pt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weights") / "first"
    assert cli.main(["train", *TINY, "--out", str(out), "--stop-after", "1"]) == 0
    return out / "last.pt"


def test_cli_train_from_a_last_pt_records_what_loaded(tiny_last_pt, tmp_path, capsys):
    out = tmp_path / "second"
    args = ["train", *TINY, "--pipeline", "sl", "--out", str(out)]
    assert cli.main([*args, "--pretrained-path", str(tiny_last_pt)]) == 0
    data = json.loads((out / "data.json").read_text())
    assert data["pretrained_path"] == str(tiny_last_pt) and data["pretrained"] is False
    notes = "\n".join(data["pretrained_notes"])
    assert "a mixfast checkpoint after 1 optimizer steps" in notes
    assert "head of task 0 (10 classes) loaded: the same classes (synthetic:0, " in notes
    assert "MAE decoder loaded" in notes


def test_cli_train_from_an_mae_checkpoint_records_the_target(tmp_path):
    torch.manual_seed(0)
    source = create_model("vit_tiny_patch16_224", **TINY_MODEL)
    path = save_mae_checkpoint(source, tmp_path / "checkpoint-399.pth")
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out), "--pretrained-path", str(path)]) == 0
    data = json.loads((out / "data.json").read_text())
    assert data["norm_pix_loss"] is True
    assert any("MAE main_pretrain.py checkpoint" in n for n in data["pretrained_notes"])


def test_cli_train_adapts_an_mae_checkpoint_and_a_timm_safetensors_file(tmp_path):
    """The issue's done-when through the command line: the MAE checkpoint at another image size
    (16 -> 32 px: the position embedding resampled, the decoder loaded) and timm's 224-px RGB
    safetensors with a 1000-class head (grid, patch, channels adapted; the head fresh)."""
    torch.manual_seed(0)
    mae = save_mae_checkpoint(
        create_model("vit_tiny_patch16_224", **TINY_MODEL), tmp_path / "m.pth"
    )
    timm_file = tmp_path / "vit.safetensors"
    save_file(random_vit(depth=1, embed_dim=32, num_heads=2).state_dict(), str(timm_file))
    cases = {
        "mae-32px": (mae, ["--img-size", "32", "--patch-size", "4"], ["pos_embed resampled from a 4x4 to a 8x8 grid", "MAE decoder loaded"]),
        "timm": (timm_file, [], ["from a 14x14 to a 4x4 grid", "from 3 to 1 input channels", "from 16x16 to 4x4 patches", "head of task 0 (10 classes) starts fresh: 1000 classes in the file"]),
    }  # fmt: skip
    for name, (path, flags, said) in cases.items():
        out = tmp_path / name
        args = ["train", *TINY, *flags, "--out", str(out), "--stop-after", "1"]
        assert cli.main([*args, "--pretrained-path", str(path)]) == 0, name
        notes = "\n".join(json.loads((out / "data.json").read_text())["pretrained_notes"])
        for text in said:
            assert text in notes, (name, text)


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--embed-dim", "64"], ["--pretrained-path", "encoder width 32 in the file, 64", "--embed-dim"]),
        (["--decoder-depth", "2"], ["decoder depth 1 in the file, 2", "--decoder-depth"]),
        (["--pretrained"], ["--pretrained or --pretrained-path, not both"]),
    ],
)  # fmt: skip
def test_cli_refuses_weights_that_do_not_fit_with_exit_2(
    tiny_last_pt, tmp_path, capsys, extra, named
):
    out = tmp_path / "refused"
    args = ["train", *TINY, "--out", str(out), "--pretrained-path", str(tiny_last_pt), *extra]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    for text in named:
        assert text in err
    assert not out.exists()


def test_cli_missing_weights_file_exits_2_naming_it(tmp_path, capsys):
    out = tmp_path / "run"
    missing = tmp_path / "nowhere.pth"
    assert cli.main(["train", *TINY, "--out", str(out), "--pretrained-path", str(missing)]) == 2
    assert f"--pretrained-path {missing}: no such file" in capsys.readouterr().err
    assert not out.exists()


def test_data_record_says_what_the_built_model_loaded(tmp_path):
    torch.manual_seed(0)
    path = export_encoder(create_model("vit_tiny_patch16_224", **TINY_MODEL), tmp_path / "e.pt")
    sizes = dict(depth=1, embed_dim=32, num_heads=2, decoder_dim=32, decoder_depth=1)
    spec = RunSpec(
        DataConfig(dataset="synthetic", img_size=16, train_limit=40, test_limit=20),
        ModelConfig(**sizes, pretrained_path=str(path)),
    )
    data = experiment.load_data(spec)
    record = experiment.data_record(spec, data, experiment.build_model(spec, data))
    assert record["pretrained_path"] == str(path)
    assert record["pretrained_head"] == "auto"
    unnamed = "the file does not record what its classes mean (only mixfast checkpoints do)"
    assert f"head of task 0 (10 classes) starts fresh: {unnamed}; " in "\n".join(
        record["pretrained_notes"]
    )
    plain = RunSpec(spec.data, ModelConfig(**sizes))
    assert experiment.data_record(plain, data)["pretrained_notes"] == []


def stage_layer_decay(config: TrainConfig) -> dict[str, float]:
    plan = resolve_plan(
        config,
        config.schedule(),
        ssl_steps=4,
        sl_steps=4,
        world=1,
        device=torch.device("cpu"),
        tasks=1,
        two_stream=False,
        cuda_graph=False,
        storage="in-memory",
    )
    return {name: stage.layer_decay for name, stage in plan.stages.items()}


def test_weights_count_as_pretrained_for_the_layer_decay_default(tmp_path):
    sl = TrainConfig(pipeline="sl", ssl_epochs=0, sl_epochs=2)
    assert stage_layer_decay(sl) == {"finetune": 1.0}
    path = tmp_path / "w.pt"
    path.write_bytes(b"")
    weighted = experiment.with_weights(sl, ModelConfig(pretrained_path=str(path)))
    assert weighted.pretrained_weights is True and sl.pretrained_weights is False
    assert stage_layer_decay(weighted) == {"finetune": 0.75}
    assert experiment.with_weights(sl, ModelConfig(pretrained=True)).pretrained_weights is True
    assert experiment.with_weights(sl, ModelConfig()) is sl
    explicit = TrainConfig(pipeline="sl", ssl_epochs=0, layer_decay=0.9, pretrained_weights=True)
    assert stage_layer_decay(explicit) == {"finetune": 0.9}
    mix = TrainConfig(pipeline="mix", ssl_epochs=2, sl_epochs=2)
    assert stage_layer_decay(mix)["finetune"] == 0.75
    # part of the resume check: a run from weights does not continue as one without
    assert weighted.changed_on_resume(sl.to_dict()) == ["pretrained_weights"]
