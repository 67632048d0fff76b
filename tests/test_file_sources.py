"""The other ways to name image files (mixfast.data.files.open_specified: `wds/` shards,
`hfds/` saved Hugging Face datasets), `--skip-bad`, label checks of shards, and an exact resume
of a run streamed from files."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from test_cli import mixfast
from test_files import CLASSES, samples, tiny_model, write_folder

from mixfast import cli
from mixfast.checkpoint import load_checkpoint
from mixfast.data import DataError, open_dataset, prepare_training_data
from mixfast.train import TrainConfig, train

RUN = ["--pipeline", "mix", "--ssl-epochs", "2", "--sl-epochs", "2", "--mix-ratio", "0.5",
       "--batch-size", "8", "--val-fraction", "0", "--patch-size", "4", "--depth", "1",
       "--embed-dim", "32", "--num-heads", "2", "--decoder-dim", "16", "--decoder-depth", "1",
       "--device", "cpu", "--no-progress", "--no-compile"]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources") / "folder"
    write_folder(root, per_class=12)
    return root


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "shards"
    assert cli.main(["data", "shard", str(folder), str(out), "--shard-size", "20"]) == 0
    return out


def test_wds_names_a_folder_of_shards(folder, shards):
    expected = samples(open_dataset(str(folder), data_mode="stream"))
    from_wds = open_dataset(f"wds/{shards}", data_mode="stream")
    assert from_wds.classes == CLASSES and samples(from_wds) == expected
    as_in_timm = open_dataset("wds/mine", str(shards), data_mode="stream")  # the folder in data_dir
    assert samples(as_in_timm) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("wds/https://example.com/shard-{000..009}.tar", "mixfast reads local data"),
        ("hfids/somewhere", "mixfast reads local data"),
        ("tfds/mnist", "mixfast reads local data"),
        ("wds/no/such/folder", "no/such/folder does not exist"),
    ],
)
def test_specifiers_it_cannot_read_are_refused(tmp_path, capsys, spec, message):
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", spec, "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--dataset {spec!r}" in err and message in err
    assert not out.exists()


def test_wds_without_shards_is_refused(folder):
    with pytest.raises(DataError, match="holds no .tar shards"):
        open_dataset(f"wds/{folder}")


def test_a_shard_label_outside_the_classes_names_the_member(shards, tmp_path):
    copy = tmp_path / "shards"
    copy.mkdir()
    (copy / "info.json").write_bytes((shards / "info.json").read_bytes())
    for shard in shards.glob("*.tar"):
        (copy / shard.name).write_bytes(shard.read_bytes())
    with (
        tarfile.open(shards / "shard-000001.tar") as src,
        tarfile.open(copy / "shard-000001.tar", "w") as dst,
    ):
        for member in src:
            data = src.extractfile(member).read()
            if member.name.endswith(".cls") and "bad" not in locals():
                bad, data = member.name, b"9"
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(DataError, match=f"shard-000001.tar:{bad}: label '9' is outside"):
        open_dataset(str(copy))


def test_skip_bad_leaves_out_what_does_not_decode(folder, tmp_path, capsys):
    broken = tmp_path / "broken"
    write_folder(broken, per_class=12)
    truncated, not_an_image = broken / "cat" / "004.png", broken / "dog" / "010.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    not_an_image.write_text("not a png")
    for mode in ("stream", "memory"):
        splits = open_dataset(
            str(broken), data_mode=mode, skip_bad=True, workers=2 * (mode == "stream")
        )
        assert sorted(splits.skipped) == sorted([str(truncated), str(not_an_image)])
        assert len(splits.train_labels) + len(splits.test_labels) == 4 * 12 - 2
        data = prepare_training_data(splits, val_fraction=0.0)
        assert data.skipped == splits.skipped and "skipped 2 unreadable" in data.summary()
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", str(broken), "--stream", "--skip-bad", *RUN,
                     "--out", str(out)]) == 0  # fmt: skip
    assert "skipped 2 unreadable image(s)" in capsys.readouterr().err
    recorded = json.loads((out / "data.json").read_text())
    assert recorded["skipped_bad"] == 2 and str(truncated) in recorded["skipped_files"]
    without = tmp_path / "without"  # the mean/std sample decodes it: refused before any work
    assert cli.main(["train", "--dataset", str(broken), "--stream", *RUN,
                     "--out", str(without)]) == 2  # fmt: skip
    assert f"{truncated}: cannot decode the image" in capsys.readouterr().err
    assert not without.exists()


def test_a_streamed_run_resumes_exactly(folder, tmp_path):
    """Stopped inside the mix phase, then resumed: the same weights and losses as a run that
    was not stopped (a map-style file source's order is the seed's, not the reader's)."""
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    streamed = ["--dataset", str(folder), "--stream", "--num-workers", "2", *RUN]
    # 44 labeled images / batch 8 = 5 steps an epoch: SSL = steps 1-5, MIX 6-10, SL 11-15
    for extra, out in (([], full), (["--stop-after", "7"], stopped), (["--resume"], stopped)):
        done = mixfast("train", *streamed, *extra, "--out", str(out))  # a process each
        assert done.returncode == 0, done.stderr
        if extra == ["--stop-after", "7"]:
            assert load_checkpoint(out / "last.pt")["position"]["global_step"] == 7
    ends = [load_checkpoint(run / "last.pt")["model"] for run in (full, stopped)]
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
    losses = [
        [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (full, stopped)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 3
    assert json.loads((full / "config.json").read_text())["resolved"]["storage"] == "streamed"


def test_hfds_names_a_saved_hugging_face_dataset(folder, tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))}
    )
    files = sorted(folder.glob("*/*.png"))
    rows = {
        "image": [str(f) for f in files],
        "label": [CLASSES.index(f.parent.name) for f in files],
    }
    whole = datasets.Dataset.from_dict(rows, features=features)
    parts = whole.train_test_split(test_size=0.25, seed=0, stratify_by_column="label")
    parts.save_to_disk(str(tmp_path / "hf"))
    splits = open_dataset(f"hfds/{tmp_path / 'hf'}", data_mode="stream")
    assert splits.classes == CLASSES
    assert (len(splits.train_labels), len(splits.test_labels)) == (36, 12)
    assert samples(splits) == samples(open_dataset(str(folder), data_mode="stream"))
    whole.save_to_disk(str(tmp_path / "one"))  # one split: a held-out test part is carved
    one = open_dataset(f"hfds/{tmp_path / 'one'}", data_mode="memory")
    assert (
        len(one.train_labels) + len(one.test_labels) == 48 and one.train_images.dtype == torch.uint8
    )
    config = TrainConfig(pipeline="sl", sl_epochs=1, batch_size=8, device="cpu", compile=False,
                         progress=False)  # fmt: skip
    data = prepare_training_data(splits, val_fraction=0.0)
    assert train(config, tiny_model(), *data.fit_inputs()).completed
    unlabeled = datasets.Dataset.from_dict(
        {"image": rows["image"][:2], "label": [0, -1]}, features=features
    )  # -1: ClassLabel's "no label"
    unlabeled.save_to_disk(str(tmp_path / "unlabeled"))
    with pytest.raises(DataError, match=r"unlabeled\[1\]: label -1 is outside the 4 classes"):
        open_dataset(f"hfds/{tmp_path / 'unlabeled'}")
    with pytest.raises(DataError, match="want an Image column and a ClassLabel column"):
        datasets.Dataset.from_dict({"x": [1, 2]}).save_to_disk(str(tmp_path / "plain"))
        open_dataset(f"hfds/{tmp_path / 'plain'}")
