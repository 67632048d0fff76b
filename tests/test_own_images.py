"""Folders as photos come (mixfast.data.imagefiles, the one rule of every image-file source):
hidden entries (.ipynb_checkpoints, .DS_Store, __MACOSX) are never classes or samples, every
still-image format Pillow reads is read whatever the case of its extension, EXIF orientation is
applied, CMYK / palette / grey+alpha / RGBA come out as the run's channels, folders without
images are not classes, and what is left out is counted and named in the summary line and
data.json; a folder and the same folder in a .tar agree. And run-folder files honour the umask
as a plain open() does."""

from __future__ import annotations

import json
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixfast import cli
from mixfast.checkpoint import save_checkpoint, write_atomic
from mixfast.data import (
    DataError,
    FileSplits,
    load_image_folder,
    open_dataset,
    prepare_training_data,
)
from mixfast.data.imagefiles import image_extensions, read_image

CLASSES = ("ant", "bee", "cat")
# file name -> Pillow format: one image of each in every class (extensions in any case)
FORMATS = {
    "img0.webp": "WEBP",
    "img1.bmp": "BMP",
    "img2.tiff": "TIFF",
    "img3.gif": "GIF",
    "img4.ppm": "PPM",
    "img5.pgm": "PPM",  # grey
    "img6.png": "PNG",
    "img7.JPG": "JPEG",
    "img8.Png": "PNG",
    "img9.TIF": "TIFF",
}
IMAGES = len(CLASSES) * len(FORMATS)
HIDDEN = (".DS_Store", ".ipynb_checkpoints", "__MACOSX", "ant/.DS_Store", "ant/.ipynb_checkpoints")
NOT_IMAGES = ("bee/x.csv", "notes.txt")
EMPTY = ("empty",)
SIZE = 12


def save(path: Path, pixels: np.ndarray, fmt: str, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if path.suffix.lower() == ".pgm":
        image = image.convert("L")
    image.save(path, format=fmt, **kwargs)


def write_messy_folder(root: Path) -> None:
    """CLASSES x FORMATS images, whose colour says the class, among what a photo folder holds
    besides: notebook checkpoints (with images), Finder and Mac zip leftovers, notes, an empty
    class folder."""
    gen = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        for file, fmt in FORMATS.items():
            pixels = gen.integers(0, 40, (SIZE, SIZE, 3), dtype=np.uint8)
            pixels[..., k] += 150
            save(root / name / file, pixels, fmt)
    noise = gen.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    save(root / ".ipynb_checkpoints" / "img0-checkpoint.png", noise, "PNG")
    save(root / "ant" / ".ipynb_checkpoints" / "img6-checkpoint.png", noise, "PNG")
    (root / "__MACOSX" / "ant").mkdir(parents=True)
    (root / "__MACOSX" / "ant" / "._img6.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "ant" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "notes.txt").write_text("where these photos come from\n")
    (root / "bee" / "x.csv").write_text("a,b\n1,2\n")
    (root / "empty").mkdir()


def write_tar(folder: Path, path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for entry in sorted(folder.iterdir()):
            tar.add(entry, arcname=entry.name)


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own")
    write_messy_folder(root / "photos")
    write_tar(root / "photos", root / "photos.tar")
    return root


def test_the_rule_reads_the_formats_the_issue_names():
    for extension in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"):
        assert extension in image_extensions()
    assert {".ppm", ".pgm"} <= image_extensions()
    assert not {".txt", ".csv", ".pdf", ".eps", ".h5"} & image_extensions()


def check_left_out(splits) -> None:
    left = splits.left_out
    assert (left.hidden, left.not_images, left.empty_folders) == (HIDDEN, NOT_IMAGES, EMPTY)
    assert left.outside_classes == () and len(left) == 8


@pytest.mark.parametrize("source", ["photos", "photos.tar"])
def test_a_photo_folder_trains_on_its_real_classes_and_images(messy, source):
    splits = open_dataset(str(messy / source), data_mode="stream")
    assert isinstance(splits, FileSplits)
    assert splits.classes == CLASSES and splits.num_classes == 3
    labels = torch.cat([splits.train_labels, splits.test_labels])
    assert labels.bincount().tolist() == [len(FORMATS)] * 3
    views = (splits.train_images, splits.test_images)
    files = {Path(v.filename(i).split(":")[-1]).name for v in views for i in range(len(v))}
    assert files == set(FORMATS)  # every format, no checkpoint copy, no AppleDouble file
    for view, view_labels in zip(views, (splits.train_labels, splits.test_labels)):
        for i in range(len(view)):
            image = view.decode(i)
            assert image.shape == (3, SIZE, SIZE)
            k = int(view_labels[i])  # the class colour survives every format
            assert image[k].float().mean() > image.float().mean(dim=(1, 2)).max() - 1
    check_left_out(splits)
    data = prepare_training_data(splits, val_fraction=0.0)
    assert data.num_classes == 3 and len(data.sl_data) + len(data.test_data) == IMAGES
    summary = data.summary()
    assert "left out 8 entries: 5 hidden (.DS_Store, .ipynb_checkpoints, __MACOSX, ...)" in summary
    assert "2 non-image file(s) (bee/x.csv, notes.txt)" in summary
    assert "1 folder(s) without images (empty)" in summary


def test_folder_tar_and_in_memory_loader_agree(messy):
    folder = open_dataset(str(messy / "photos"), data_mode="memory")
    tar = open_dataset(str(messy / "photos.tar"), data_mode="memory")
    loaded = load_image_folder(messy / "photos")  # sources.py's own loader: the same rule
    assert folder.classes == tar.classes == loaded.classes == CLASSES
    assert folder.left_out == tar.left_out == loaded.left_out
    for other in (tar, loaded):
        assert torch.equal(folder.train_labels, other.train_labels)
        assert torch.equal(folder.test_labels, other.test_labels)
        assert torch.equal(folder.train_images, other.train_images)


def test_a_tar_written_from_dot_and_shards_of_the_folder_agree(messy, tmp_path):
    """`tar -cf photos.tar -C photos .` names members ./ant/...; `mixfast data shard` writes
    <class>/<key>.<ext> with a <key>.cls beside it and an info.json: neither is left out."""
    folder = open_dataset(str(messy / "photos"), data_mode="memory")
    with tarfile.open(tmp_path / "dot.tar", "w") as tar:
        tar.add(messy / "photos", arcname=".")
    dot = open_dataset(str(tmp_path / "dot.tar"), data_mode="memory")
    assert dot.classes == CLASSES and dot.left_out == folder.left_out
    assert torch.equal(dot.train_images, folder.train_images)
    shards = tmp_path / "shards"
    assert cli.main(["data", "shard", str(messy / "photos"), str(shards), "--shard-size", "7"]) == 0
    sharded = open_dataset(str(shards), data_mode="stream")
    assert sharded.classes == CLASSES and len(sharded.left_out) == 0
    assert len(sharded.train_labels) + len(sharded.test_labels) == IMAGES


def test_train_val_layout_names_what_each_split_left_out(tmp_path):
    for split in ("train", "val"):
        write_messy_folder(tmp_path / split)
    splits = open_dataset(str(tmp_path), data_mode="stream")
    assert splits.classes == CLASSES
    assert len(splits.train_labels) == len(splits.test_labels) == IMAGES
    assert "train/.ipynb_checkpoints" in splits.left_out.hidden
    assert "val/bee/x.csv" in splits.left_out.not_images and len(splits.left_out) == 16


def test_images_outside_class_folders_and_sources_without_images(tmp_path):
    write_messy_folder(tmp_path / "photos")
    save(tmp_path / "photos" / "loose.jpg", np.zeros((SIZE, SIZE, 3), np.uint8), "JPEG")
    splits = open_dataset(str(tmp_path / "photos"), data_mode="stream")
    assert splits.classes == CLASSES and splits.left_out.outside_classes == ("loose.jpg",)
    only_junk = tmp_path / "junk"
    (only_junk / ".ipynb_checkpoints").mkdir(parents=True)
    save(only_junk / ".ipynb_checkpoints" / "a.png", np.zeros((4, 4, 3), np.uint8), "PNG")
    (only_junk / "cats").mkdir()
    (only_junk / "cats" / "notes.txt").write_text("no photo yet")
    with pytest.raises(DataError, match=r"no image in a class folder.*1 hidden.*cats/notes.txt"):
        open_dataset(str(only_junk))


def test_train_from_the_command_line_names_what_it_left_out(messy, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", str(messy / "photos"), "--out", str(out), "--img-size", "16",
            "--patch-size", "4", "--depth", "1", "--embed-dim", "32", "--num-heads", "2",
            "--decoder-dim", "16", "--decoder-depth", "1", "--ssl-epochs", "1", "--sl-epochs",
            "1", "--batch-size", "8", "--device", "cpu", "--no-compile", "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("mixfast train:"))
    assert "3 classes" in line and "left out 8 entries: 5 hidden" in line
    recorded = json.loads((out / "data.json").read_text())
    assert recorded["labeled"] + recorded["validation"] + recorded["test"] == IMAGES
    assert recorded["tasks"][0]["classes"] == 3
    entries = recorded["skipped_entries"]
    assert entries["total"] == 8
    assert entries["hidden"] == {"count": 5, "names": list(HIDDEN)}
    assert entries["not_images"] == {"count": 2, "names": list(NOT_IMAGES)}
    assert entries["empty_folders"] == {"count": 1, "names": ["empty"]}


# ------------------------------------------------------------------- orientation and modes


def exif_with(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6: the stored pixels are shown turned 90 degrees clockwise, so the stored
    left column is the top row."""
    stored = np.zeros((16, 16, 3), np.uint8)
    stored[:, :4] = 255  # the left quarter white
    for name in ("a", "b"):
        for i in range(3):
            save(tmp_path / name / f"{i}.jpg", stored, "JPEG", quality=95, exif=exif_with(6))
    turned = read_image(tmp_path / "a" / "0.jpg", "L", None)[0].float()
    assert turned[:4].mean() > 240 and turned[4:].mean() < 15  # the top rows are white
    for mode in ("stream", "memory"):
        splits = open_dataset(str(tmp_path), data_mode=mode)
        images = splits.train_images
        image = images.decode(0) if mode == "stream" else images[0]
        assert image[:, :4].float().mean() > 240 and image[:, 4:].float().mean() < 15
    wide = tmp_path / "wide"  # stored 8 wide, 4 high: shown 4 wide, the default side
    for name in ("a", "b"):
        for i in range(2):
            save(wide / name / f"{i}.png", np.zeros((4, 8, 3), np.uint8), "PNG", exif=exif_with(6))
    assert open_dataset(str(wide), data_mode="stream").image_shape == (3, 4, 4)


def test_cmyk_palette_grey_alpha_and_rgba_give_the_run_channels(tmp_path):
    red = Image.new("RGB", (SIZE, SIZE), (255, 0, 0))
    made = {
        "cmyk.jpg": Image.new("CMYK", (SIZE, SIZE), (0, 255, 255, 0)),
        "palette.png": red.convert("P"),
        "palette.gif": red.convert("P"),
        "rgba.png": Image.new("RGBA", (SIZE, SIZE), (255, 0, 0, 0)),  # transparent: alpha dropped
        "rgba.webp": Image.new("RGBA", (SIZE, SIZE), (255, 0, 0, 128)),
    }
    options = {"cmyk.jpg": {"quality": 100}, "rgba.webp": {"lossless": True}}
    (tmp_path / "red").mkdir()
    for name, image in made.items():
        image.save(tmp_path / "red" / name, **options.get(name, {}))
    transparent = red.convert("P")  # a palette with a transparent colour
    transparent.save(tmp_path / "red" / "transparent.png", transparency=0)
    (tmp_path / "grey").mkdir()
    Image.new("LA", (SIZE, SIZE), (90, 10)).save(tmp_path / "grey" / "la.png")
    Image.fromarray(np.full((SIZE, SIZE), 90 * 256 + 7, np.uint16)).save(
        tmp_path / "grey" / "grey16.png"
    )
    for path in sorted((tmp_path / "grey").iterdir()):
        for copy in range(2):
            (tmp_path / "grey" / f"{copy}{path.name}").write_bytes(path.read_bytes())
    assert Image.open(tmp_path / "red" / "cmyk.jpg").mode == "CMYK"
    assert Image.open(tmp_path / "grey" / "la.png").mode == "LA"
    for path in sorted(tmp_path.rglob("*.*")):
        rgb = read_image(path, "RGB", None)
        grey_only = read_image(path, "L", None)
        assert rgb.shape == (3, SIZE, SIZE) and grey_only.shape == (1, SIZE, SIZE)
        want = [90, 90, 90] if path.parent.name == "grey" else [255, 0, 0]
        assert rgb[:, 5, 5].tolist() == pytest.approx(want, abs=3), path.name
    splits = open_dataset(str(tmp_path), data_mode="memory")
    assert splits.classes == ("grey", "red") and splits.image_shape == (3, SIZE, SIZE)
    frames = [Image.new("RGB", (SIZE, SIZE), colour) for colour in ("red", "blue")]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    assert Image.open(tmp_path / "animated.gif").n_frames == 2
    assert read_image(tmp_path / "animated.gif", "RGB", None)[:, 5, 5].tolist() == [255, 0, 0]
    grey_splits = load_image_folder(tmp_path, mode="L", test_fraction=0.3)
    assert grey_splits.image_shape == (1, SIZE, SIZE)


# ---------------------------------------------------------------------------------- umask


@pytest.fixture
def umask():
    """os.umask, to set the process umask in a test; the old one comes back after it."""
    before = os.umask(0o022)
    yield os.umask
    os.umask(before)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_folder_files_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    text = write_atomic(tmp_path / "run" / "config.json", lambda handle: handle.write("{}"))
    checkpoint = tmp_path / "run" / "last.pt"
    save_checkpoint({"step": 1}, checkpoint)
    with open(tmp_path / "plain.txt", "w") as handle:  # what a plain open gives
        handle.write("x")
    for path in (text, checkpoint, tmp_path / "plain.txt"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_a_run_folder_is_readable_by_the_group(tmp_path, umask):
    umask(0o022)
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "synthetic", "--img-size", "16", "--train-limit",
                     "40", "--test-limit", "20", "--depth", "1", "--embed-dim", "32",
                     "--num-heads", "2", "--decoder-dim", "16", "--decoder-depth", "1",
                     "--ssl-epochs", "1", "--sl-epochs", "1", "--batch-size", "16", "--device",
                     "cpu", "--no-compile", "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    files = [p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert files and all(p.stat().st_mode & 0o044 == 0o044 for p in files), [
        (p.name, oct(p.stat().st_mode)) for p in files
    ]
