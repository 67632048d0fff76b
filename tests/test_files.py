"""Image files read where they lie (mixfast.data.files): a folder and a tar give the same
samples, a source above the memory cap trains without being loaded whole, streamed and
in-memory runs train alike, ranks share a pass without overlap, bad files get errors naming
them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest
import torch
from PIL import Image
from test_cli import mixfast

from mixfast import cli, create_model
from mixfast.checkpoint import load_checkpoint
from mixfast.data import DataError, FileSplits, FileView, open_dataset, prepare_training_data
from mixfast.train import TrainConfig, train
from mixfast.train.streams import Stream

CLASSES = ("ant", "bee", "cat", "dog")


def write_folder(root, per_class: int = 30, size: int = 16) -> None:
    """PNG images whose colour encodes the class (learnable) and the index (distinct)."""
    gen = torch.Generator().manual_seed(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 40, (size, size, 3), generator=gen, dtype=torch.uint8)
            pixels[..., k % 3] += 60 * (1 + k // 3)
            pixels[0, 0] = torch.tensor([i, k, 7], dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / name / f"{i:03d}.png")


def write_tar(folder, path) -> None:
    with tarfile.open(path, "w") as tar:
        for name in CLASSES:
            tar.add(folder / name, arcname=name)


def samples(splits) -> set[tuple]:
    """(pixels, label) of every train and test image."""
    out = set()
    for view, labels in ((splits.train_images, splits.train_labels),
                         (splits.test_images, splits.test_labels)):  # fmt: skip
        for i in range(len(view)):
            out.add((tuple(view.decode(i).flatten().tolist()), int(labels[i])))
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    write_folder(root / "folder")
    write_tar(root / "folder", root / "images.tar")
    return root


def test_folder_and_tar_give_the_same_samples(sources):
    folder = open_dataset(str(sources / "folder"), data_mode="stream")
    tar = open_dataset(str(sources / "images.tar"), data_mode="stream")
    assert isinstance(folder, FileSplits) and isinstance(tar, FileSplits)
    assert folder.classes == tar.classes == CLASSES and folder.image_shape == (3, 16, 16)
    assert len(folder.train_images) == len(tar.train_images) == 108  # 10 % held out
    assert samples(folder) == samples(tar)
    memory = open_dataset(str(sources / "folder"), data_mode="memory")
    assert torch.equal(memory.train_images[5], folder.train_images.decode(5))
    assert memory.mean_std() == folder.mean_std()  # one set of statistics in both modes


def test_auto_mode_streams_above_the_memory_cap(sources, monkeypatch):
    decoded = []
    load = FileView.load
    monkeypatch.setattr(FileView, "load", lambda self: decoded.append(len(self)) or load(self))
    cap = 100 * 16 * 16 * 3 / 2**30  # 100 images' worth: the 120 images exceed it
    splits = open_dataset(str(sources / "folder"), memory_cap_gb=cap)
    assert isinstance(splits, FileSplits)
    data = prepare_training_data(splits, fraction=0.5, regime="semi-supervised")
    assert data.storage == "streamed" and "streamed from files" in data.summary()
    # 2 SSL epochs: the mix epoch takes one, the other makes the larger pool's extra passes
    config = TrainConfig(pipeline="mix", ssl_epochs=2, sl_epochs=1, batch_size=8, device="cpu",
                         compile=False, progress=False, num_workers=2)  # fmt: skip
    result = train(config, tiny_model(), *data.fit_inputs())
    assert result.completed and result.test_top1 is not None
    assert decoded == [108]  # the mean/std sample only, never the whole set
    small = open_dataset(str(sources / "folder"), memory_cap_gb=1.0)
    assert not isinstance(small, FileSplits)


def tiny_model():
    torch.manual_seed(0)
    return create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=3, num_classes=4, depth=1,
        embed_dim=32, num_heads=2, decoder_dim=16, decoder_depth=1, decoder_heads=2,
    )  # fmt: skip


def test_streamed_and_in_memory_runs_train_alike(sources):
    results = {}
    for mode in ("stream", "memory"):
        splits = open_dataset(str(sources / "folder"), data_mode=mode)
        data = prepare_training_data(splits, fraction=1.0, seed=1)
        config = TrainConfig(pipeline="mix", ssl_epochs=2, sl_epochs=2, batch_size=16,
                             device="cpu", compile=False, progress=False)  # fmt: skip
        results[mode] = train(config, tiny_model(), *data.fit_inputs())
    stream, memory = results["stream"], results["memory"]
    assert stream.top1 == memory.top1 and stream.test_top1 == memory.test_top1
    losses = [[row["loss"] for row in r.epochs] for r in (stream, memory)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_ranks_share_a_pass_without_overlap(sources):
    splits = open_dataset(str(sources / "folder"), data_mode="stream")
    data = prepare_training_data(splits)
    seen = []
    for rank in range(2):
        stream = Stream(data.sl_data, 1, batch_size=8, world=2, rank=rank, accum=1, seed=3,
                        device=torch.device("cpu"), num_workers=1)  # fmt: skip
        seen.append(stream.blocks().flatten().tolist())
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == len(data.sl_data) // 16 * 16  # the tail is dropped


def test_bad_files_are_named(sources, tmp_path, capsys):
    folder = tmp_path / "folder"
    write_folder(folder, per_class=10)
    bad = folder / "cat" / "004.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    splits = open_dataset(str(folder), data_mode="stream")
    data = prepare_training_data(splits, val_fraction=0.0)
    config = TrainConfig(pipeline="sl", sl_epochs=1, batch_size=8, device="cpu", compile=False,
                         progress=False)  # fmt: skip
    with pytest.raises(DataError, match="004.png: cannot decode the image"):
        train(config, tiny_model(), *data.fit_inputs())
    out = tmp_path / "run"
    args = ["train", "--dataset", str(folder), "--stream", "--pipeline", "sl", "--sl-epochs", "1",
            "--batch-size", "8", "--val-fraction", "0", "--device", "cpu", "--no-progress",
            "--patch-size", "4", "--depth", "1", "--embed-dim", "32", "--num-heads", "2",
            "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 1
    assert "004.png: cannot decode the image" in capsys.readouterr().err
    if (out / "last.pt").exists():  # the checkpoint of the last good step, whole
        assert load_checkpoint(out / "last.pt")["config"]["pipeline"] == "sl"
    broken = tmp_path / "broken.tar"
    broken.write_bytes((sources / "images.tar").read_bytes()[:3000])
    for missing_or_broken in (tmp_path / "nowhere.tar", broken):
        assert cli.main(["train", "--dataset", str(missing_or_broken), "--device", "cpu"]) == 2
        assert str(missing_or_broken) in capsys.readouterr().err


def test_train_on_a_folder_from_the_command_line(sources, tmp_path):
    out = tmp_path / "run"
    done = mixfast("train", "--dataset", str(sources / "folder"), "--stream", "--num-workers", "2",
                   "--pipeline", "mix", "--ssl-epochs", "1", "--sl-epochs", "1",
                   "--batch-size", "16", "--patch-size", "4", "--depth", "1", "--embed-dim", "32",
                   "--num-heads", "2", "--decoder-dim", "16", "--decoder-depth", "1",
                   "--device", "cpu", "--no-progress", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "streamed from files" in done.stderr
    assert json.loads((out / "data.json").read_text())["storage"] == "streamed"


def test_shards_hold_the_same_samples_and_their_errors_name_the_shard(sources, tmp_path, capsys):
    shards = tmp_path / "shards"
    assert (
        cli.main(["data", "shard", str(sources / "folder"), str(shards), "--shard-size", "50"]) == 0
    )
    info = json.loads((shards / "info.json").read_text())
    assert [s["count"] for s in info["splits"]["all"]["shards"]] == [50, 50, 20]
    assert sum(sum(s["labels"]) for s in info["splits"]["all"]["shards"]) == 120
    with tarfile.open(shards / "shard-000000.tar") as tar:  # WebDataset: key.png + key.cls
        names = tar.getnames()
    assert names[0].endswith(".png") and names[1] == names[0][:-4] + ".cls"
    from_shards = open_dataset(str(shards), data_mode="stream")
    from_folder = open_dataset(str(sources / "folder"), data_mode="stream")
    assert from_shards.classes == CLASSES and samples(from_shards) == samples(from_folder)
    data = prepare_training_data(from_shards, val_fraction=0.0)
    passes = []
    for workers in (0, 2):  # forked workers must not share the parent's open tar handles
        stream = Stream(data.sl_data, 1, batch_size=8, world=1, rank=0, accum=1, seed=0,
                        device=torch.device("cpu"), num_workers=workers)  # fmt: skip
        passes.append(torch.cat([stream.next()[0] for _ in range(stream.micro)]))
    assert torch.equal(passes[0], passes[1])
    assert cli.main(["data", "shard", str(sources / "folder"), str(shards)]) == 2  # not empty
    assert "exists and is not an empty folder" in capsys.readouterr().err
    (shards / "shard-000001.tar").write_bytes(b"not a tar at all" * 10)
    with pytest.raises(DataError, match="shard-000001.tar: the shard is corrupt"):
        open_dataset(str(shards))
    (shards / "shard-000001.tar").unlink()
    with pytest.raises(DataError, match="shard-000001.tar: a shard that .* lists is missing"):
        open_dataset(str(shards))


@pytest.mark.slow
def test_two_processes_on_a_folder_train_as_one(sources, tmp_path):
    """torchrun, 2 ranks x batch 8 over streamed files (1 worker each) == 1 process x batch 8 x
    2 accumulation steps: the ranks' shares cover the pass once, and the training is the same."""
    from test_ddp import free_port

    flags = ["train", "--dataset", str(sources / "folder"), "--stream", "--num-workers", "1",
             "--pipeline", "sl", "--sl-epochs", "2", "--batch-size", "8", "--blr", "5e-3",
             "--patch-size", "4", "--depth", "1", "--embed-dim", "32", "--num-heads", "2",
             "--device", "cpu", "--no-compile", "--no-progress", "--label-smoothing", "0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "mixfast", *flags, "--out", str(tmp_path / "ddp")]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = mixfast(*flags, "--accum-steps", "2", "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    ddp, one = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("ddp", "one"))
    assert ddp["sample_passes"] == one["sample_passes"] and ddp["global_step"] == one["global_step"]
    labeled = json.loads((tmp_path / "one" / "data.json").read_text())["labeled"]
    assert ddp["sample_passes"]["sl"] == 2 * (labeled // 16 * 16)  # 2 epochs, whole batches
    losses = [[row["loss"] for row in r["epochs"]] for r in (ddp, one)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert ddp["test_top1"] == pytest.approx(one["test_top1"])
