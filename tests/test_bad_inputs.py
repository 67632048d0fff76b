"""Bad settings are refused before any work: exit 2 on the command line with a message naming
the flag, ValueError naming the argument in the API, and nothing written or changed on disk."""

from __future__ import annotations

import math
import os

import pytest
import torch

from mixfast import cli, create_model
from mixfast.train import TrainConfig

TINY = (
    "--dataset synthetic --img-size 16 --train-limit 40 --test-limit 20 --depth 1 "
    "--embed-dim 32 --num-heads 2 --decoder-dim 32 --decoder-depth 1 --ssl-epochs 1 "
    "--sl-epochs 1 --batch-size 16 --device cpu --no-compile --no-progress"
).split()

# (extra flags, words the message must hold)
CLI_CASES = [
    (["--patch-size", "0"], "--patch-size must be >= 1"),
    (["--depth", "0"], "--depth must be >= 1"),
    (["--num-heads", "0"], "--num-heads must be >= 1"),
    (["--fsdp", "--model-ema"], "--model-ema does not compose with --fsdp yet"),
    (
        ["--embed-dim", "30", "--num-heads", "4"],
        "--embed-dim 30 must be divisible by --num-heads 4",
    ),
    (["--blr", "inf"], "--blr must be in (0.0, inf)"),
    (["--ssl-blr", "0"], "--ssl-blr must be in (0.0, inf)"),
    (["--weight-decay", "nan"], "--weight-decay must be a number"),
    (["--mask-ratio", "1"], "--mask-ratio must be in (0.0, 1.0)"),
    (["--mix-ratio", "1.5"], "--mix-ratio must be in [0.0, 1.0]"),
    (["--ssl-share", "0"], "--ssl-share must be in (0.0, 1.0]"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--log-every", "0"], "--log-every must be an integer >= 1"),
    (["--fraction", "0"], "--fraction must be in (0, 1]"),
    (["--val-fraction", "0.9"], "--val-fraction must be in [0, 0.5]"),
    (["--device", "tpu"], "--device must be"),
    (["--img-size", "2"], "--img-size must be >= 4"),
    (["--patch-size", "5"], "--patch-size 5 must divide --img-size 16"),
    (["--dataset", "imagefolder"], "--dataset imagefolder needs --data-dir"),
    (["--resume"], "--resume"),
    (["--out", ""], "--out must name a folder"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--augment", "--augment-scale", "0"], "--augment-scale must be in (0, 1], got 0.0"),
    (["--augment-scale", "1.5"], "--augment-scale must be in (0, 1], got 1.5"),
]
if not torch.cuda.is_available():
    CLI_CASES.append((["--device", "cuda"], "CUDA is not available"))


@pytest.mark.parametrize("extra, message", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_train_refuses_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    flags = ["--out", str(out), *extra] if "--out" not in extra else extra
    assert cli.main(["train", *TINY, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert cli.main(["train", *TINY, "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "mine"


def test_backend_variable_is_checked_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MIXFAST_BACKEND", "bogus")
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "run")]) == 2
    assert "MIXFAST_BACKEND='bogus'" in capsys.readouterr().err


def test_default_out_is_a_new_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *TINY, "--pipeline", "sl"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("sl-") and (run / "result.json").is_file()


def test_stale_temporaries_are_removed(tmp_path):
    out = tmp_path / "run"  # the folder of a run killed while writing its checkpoint
    out.mkdir()
    (out / ".mixfast-run").write_text("a mixfast run folder\n")
    stale = out / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert cli.main(["train", *TINY, "--pipeline", "sl", "--out", str(out)]) == 0
    assert not stale.exists()


def test_stop_after_prints_the_result(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out), "--stop-after", "1"]) == 0
    assert "test top-1 -" in capsys.readouterr().out
    assert (out / "last.pt").is_file()


API_CASES = [
    (dict(blr=math.inf), "blr"),
    (dict(batch_size=0), "batch_size"),
    (dict(pipeline="mae"), "pipeline"),
    (dict(sl_view="half"), "sl_view"),
    (dict(nonfinite="ignore"), "nonfinite"),
    (dict(task_weights=[]), "task_weights"),
    (dict(resume=True), "resume"),
    (dict(compile="yes"), "compile"),
]


@pytest.mark.parametrize("kwargs, name", API_CASES, ids=[c[1] for c in API_CASES])
def test_config_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**kwargs).validate()


def test_create_model_refuses_nonsense():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, num_classes=0)
    with pytest.raises(ValueError, match="name_or_vit"):
        create_model("resnet50")


def test_nothing_is_written_by_a_refused_run(tmp_path):
    before = sorted(os.listdir(tmp_path))
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "r"), "--blr", "-1"]) == 2
    assert sorted(os.listdir(tmp_path)) == before


def test_compare_checks_the_augmentation_before_any_work(tmp_path, capsys):
    out = tmp_path / "cmp"
    flags = ["--pipelines", "sl", "--fractions", "0.5", "--augment", "--augment-scale", "2"]
    assert cli.main(["compare", *TINY, *flags, "--out", str(out)]) == 2
    assert "--augment-scale must be in (0, 1], got 2.0" in capsys.readouterr().err
    assert not out.exists()


def test_augment_scale_sets_the_crop_area():
    import argparse

    from mixfast import experiment
    from mixfast.data import prepare_training_data
    from mixfast.data.sources import load_dataset

    data = prepare_training_data(load_dataset("synthetic", None, size=16), fraction=1.0)
    config = TrainConfig(ssl_epochs=0, sl_epochs=1)
    settings = argparse.Namespace(augment=True, augment_scale=0.8)
    assert experiment.with_augment(config, data, settings).augment.scale == (0.8, 1.0)
    settings.augment = False
    assert experiment.with_augment(config, data, settings).augment is None


def test_a_width_the_models_own_heads_do_not_divide_is_refused(tmp_path, capsys):
    """--embed-dim 64 without --num-heads: vit_tiny has 3 heads; exit 2, not timm's assert."""
    flags = [f for f in TINY if f not in ("--num-heads", "2")]
    assert "--decoder-dim" in flags and "--embed-dim" in flags
    out = tmp_path / "run"
    argv = ["train", *flags, "--embed-dim", "64", "--out", str(out)]
    assert cli.main(argv) == 2
    assert "--embed-dim 64 must be divisible by the number of heads" in capsys.readouterr().err
    assert not out.exists()
