"""The reliability cases of the run folder, resume, compare and checkpoints: each refused with
exit 2 (or ValueError) and a message naming the setting, nothing already written changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from mixfast import checkpoint, cli, create_model, experiment
from mixfast.checkpoint import (
    CheckpointError,
    claim_run_folder,
    load_checkpoint,
    release_run_folder,
)
from mixfast.compare import grid
from mixfast.train import TrainConfig, train

TINY = (
    "--dataset synthetic --img-size 16 --train-limit 80 --test-limit 20 --depth 1 "
    "--embed-dim 32 --num-heads 2 --decoder-dim 32 --decoder-depth 1 --ssl-epochs 1 "
    "--sl-epochs 1 --batch-size 16 --device cpu --no-compile --no-progress"
).split()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def stopped_run(tmp_path) -> Path:
    """A run stopped after one step, with its checkpoint."""
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out), "--stop-after", "1"]) == 0
    return out


@pytest.mark.parametrize(
    "change, named",
    [
        (["--train-limit", "60"], "--train-limit"),
        (["--dataset", "fashion-mnist"], "--dataset"),
        (["--regime", "semi-supervised"], "--regime"),
        (["--ssl-pool", "all"], "--regime"),
        (["--fraction", "0.5"], "--fraction"),
        (["--augment"], "--augment"),
        (["--num-heads", "4"], "--num-heads"),
        (["--mix-ratio", "1.0"], "--mix-ratio"),
    ],
)
def test_resume_refuses_other_settings(stopped_run, capsys, change, named):
    before = snapshot(stopped_run)
    capsys.readouterr()
    assert cli.main(["train", *TINY, "--out", str(stopped_run), "--resume", *change]) == 2
    err = capsys.readouterr().err
    assert "made with other settings" in err and named in err
    assert snapshot(stopped_run) == before


def test_resume_with_the_same_settings_finishes(stopped_run):
    assert cli.main(["train", *TINY, "--out", str(stopped_run), "--resume"]) == 0
    assert (stopped_run / "result.json").is_file()


def test_compare_resume_refuses_runs_of_other_settings(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--fractions", "0.5", "--seeds", "0", "--pipelines", "sl"]
    args += ["--out", str(out), "--no-warmup"]
    assert cli.main(args) == 0
    before = snapshot(out / "sl-f0.5-s0")
    assert cli.main([*args, "--resume", "--sl-epochs", "2"]) == 2
    assert "sl_epochs: 1 -> 2" in capsys.readouterr().err
    assert snapshot(out / "sl-f0.5-s0") == before


def test_temporary_names_never_follow_links(tmp_path):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep me")
    out.mkdir()
    (out / ".mixfast-run").write_text("a mixfast run folder\n")
    for name in (".config.json.tmp", ".data.json.tmp", ".metrics.jsonl.tmp"):
        (out / name).symlink_to(elsewhere)
    assert cli.main(["train", *TINY, "--pipeline", "sl", "--out", str(out)]) == 0
    assert elsewhere.read_text() == "keep me"


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("config.json", "metrics.jsonl", "data.json"):
        (out / name).write_text("their own file")
    before = snapshot(out)
    assert cli.main(["train", *TINY, "--out", str(out)]) == 2
    assert "not a mixfast run folder" in capsys.readouterr().err
    assert snapshot(out) == before


def test_two_runs_on_one_folder_are_refused(tmp_path):
    out = tmp_path / "run"
    claim_run_folder(out)  # this process writes there
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mixfast", "train", *TINY, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    finally:
        release_run_folder(out)
    assert proc.returncode == 2, proc.stderr
    assert "another mixfast run is writing to this folder" in proc.stderr
    assert not (out / "config.json").exists()


def test_compare_run_names_never_collide():
    import argparse

    args = argparse.Namespace(
        regimes=["data-limited", "semi-supervised"], fractions=[0.02, 0.020000001, 1.0],
        budgets=[4, 8], seeds=[0, 1], pipelines=["sl", "ssl+sl", "mix"],
    )  # fmt: skip
    names = [cell.name for cell in grid(args)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("task_weights: 0.5\n", "must be a non-empty list"),
        ('augment: "false"\n', "must be true or false"),
        ('batch_size: "8"\n', "must be a int"),
        ("blr: true\n", "must be a float"),
        ("pipeline: mae\n", "must be one of"),
    ],
)
def test_yaml_values_are_checked_like_flags(tmp_path, capsys, yaml_text, message):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *TINY, "--config", str(config), "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_nonsense_in_the_api_is_refused():
    with pytest.raises(ValueError, match="in_chans must be >= 1"):
        create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=0)
    model = create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, num_classes=3, depth=1,
        embed_dim=32, num_heads=2, decoder_dim=16, decoder_depth=1, decoder_heads=2,
    )  # fmt: skip
    images, labels = torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        model.forward_mixed(images, images, labels, alpha=5.0, mask_ratio=0.75, seed=0)
    data = TensorDataset(torch.randn(32, 1, 16, 16), torch.full((32,), 7))
    config = TrainConfig(pipeline="sl", sl_epochs=1, batch_size=16, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        train(config, model, None, data)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "128"], "fewer than one batch"),
        (["--mask-ratio", "0.99"], "--mask-ratio 0.99 keeps no patch"),
    ],
)
def test_found_up_front_not_late(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_compare_seeds_must_be_non_negative(tmp_path, capsys):
    assert cli.main(["compare", *TINY, "--seeds", "-1", "--out", str(tmp_path / "c")]) == 2
    assert "--seeds must be integers >= 0" in capsys.readouterr().err


def test_broken_checkpoints_in_mixfast_words(tmp_path, stopped_run):
    random_bytes, empty, other = tmp_path / "r.pt", tmp_path / "e.pt", tmp_path / "o.pt"
    random_bytes.write_bytes(os.urandom(256))
    empty.write_bytes(b"")
    torch.save(torch.nn.Linear(2, 2).state_dict(), other)
    for path, words in ((random_bytes, "not a mixfast checkpoint"), (empty, "truncated"),
                        (other, "not a mixfast checkpoint")):  # fmt: skip
        with pytest.raises(CheckpointError, match=words) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)
    state = load_checkpoint(stopped_run / "last.pt")
    wider = create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1,
                         num_classes=10, depth=2, embed_dim=32, num_heads=2)  # fmt: skip
    with pytest.raises(CheckpointError, match="made by another model"):
        checkpoint.load_model_state(wider, state["model"])


def test_resume_of_a_broken_checkpoint_exits_2(stopped_run, capsys):
    (stopped_run / "last.pt").write_bytes(b"")
    assert cli.main(["train", *TINY, "--out", str(stopped_run), "--resume"]) == 2
    assert "truncated" in capsys.readouterr().err


def test_ctrl_c_during_start_up(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "load_data", interrupted)
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "run")]) == 130
    assert "interrupted before training started" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "compare"])
def test_semi_supervised_mix_without_an_ssl_epoch_is_refused(tmp_path, capsys, command):
    # every SSL epoch a mix epoch leaves the extra SSL passes of the larger pool nowhere to go
    out = tmp_path / "run"
    semi = ["--mix-ratio", "1.0", "--out", str(out)]
    if command == "train":
        semi += ["--pipeline", "mix", "--regime", "semi-supervised", "--fraction", "0.5"]
    else:
        semi += ["--pipelines", "sl", "mix", "--regimes", "semi-supervised", "--fractions", "0.5"]
    assert cli.main([command, *TINY, *semi]) == 2
    err = capsys.readouterr().err
    assert "--mix-ratio 1.0 makes all 1 SSL epochs mix epochs" in err
    assert "lower --mix-ratio or raise --ssl-epochs" in err
    assert not out.exists()
