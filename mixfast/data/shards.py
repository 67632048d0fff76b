"""`mixfast data shard SRC DST`: image files (a folder or a .tar of class folders) copied into
tar shards that both WebDataset and timm's tar reader read.

Each sample is two members, `<class>/<key>.<ext>` (the original file's bytes, not re-encoded) and
`<class>/<key>.cls` (the class index as text): WebDataset groups them by key, and timm's
ReaderImageInTar labels the image by its folder, so mixfast reads a folder of shards like any
other image source (`--dataset DST`). Samples are shuffled across shards with a fixed seed.
DST/info.json records the classes and, per shard, its file, sample count and per-class counts
(the label metadata for stratified subsets without opening a shard). A source with train/ and
val|test/ folders gives DST/train/ and DST/val/. Reading a folder of shards checks them against
info.json first (`check_shards`, in mixfast.data.readers with the rest of the reading side).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import torch

from mixfast.checkpoint import write_json
from mixfast.data.files import open_files
from mixfast.data.readers import (
    FileView,
    check_shards,
    open_reader,
    reader_classes,
    reader_labels,
)
from mixfast.data.sources import DataError

SHUFFLE_SEED = 2027


def write_shards(src: str | Path, dst: str | Path, *, shard_size: int = 1000) -> dict:
    """Write the shards of `src` into the new folder `dst`; returns what info.json holds."""
    check_shard_args(src, dst, shard_size)
    src, dst = Path(src), Path(dst)
    if src.is_dir() and (src / "train").is_dir():
        splits = open_files(src, size=1)  # the bytes are copied: the size is not used
        parts, classes = {"train": splits.train_images, "val": splits.test_images}, splits.classes
    else:  # one split: every image; the held-out part is carved when the shards are read
        reader = open_reader(src)
        parts = {"": FileView.whole(reader, size=1, mode="RGB")}
        classes = reader_classes(reader)
    info = {"classes": list(classes), "splits": {}}
    for name, view in parts.items():
        info["splits"][name or "all"] = _write_split(view, classes, dst / name, shard_size)
    write_json(dst / "info.json", info)
    return info


def check_shard_args(src: str | Path, dst: str | Path, shard_size: int) -> None:
    """Before any work: the source exists, the destination is new or empty, shards hold >= 1."""
    if shard_size < 1:
        raise DataError(f"{{shard_size}} must be >= 1, got {shard_size}")
    if not Path(src).exists():
        raise DataError(f"SRC {src} does not exist")
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DataError(f"DST {dst} exists and is not an empty folder; shards go into a new one")


def _write_split(view: FileView, classes, folder: Path, shard_size: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    labels = _labels(view)
    order = torch.randperm(len(view), generator=torch.Generator().manual_seed(SHUFFLE_SEED))
    shards = []
    for start in range(0, len(order), shard_size):
        chunk = order[start : start + shard_size].tolist()
        path = folder / f"shard-{len(shards):06d}.tar"
        counts = [0] * len(classes)
        with tarfile.open(path, "w") as tar:
            for i in chunk:
                label = int(labels[i])
                file, _ = view.reader[int(view.indices[i])]
                with file:
                    data = file.read()
                key = f"{classes[label]}/{int(view.indices[i]):08d}"
                _add(tar, f"{key}{Path(view.filename(i)).suffix.lower()}", data)
                _add(tar, f"{key}.cls", str(label).encode())
                counts[label] += 1
        shards.append({"file": path.name, "count": len(chunk), "labels": counts})
    return {"num_samples": len(order), "shards": shards}


def _labels(view: FileView) -> torch.Tensor:
    return reader_labels(view.reader)[view.indices]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    tar.addfile(member, io.BytesIO(data))


__all__ = ["check_shard_args", "check_shards", "write_shards"]
