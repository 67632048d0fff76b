"""Image files read where they lie, through timm's readers: a folder (ROOT/<class>/<image>, or
ROOT/train/<class>/... with ROOT/val|test/<class>/...) or a .tar of class folders. Labels come
from the readers' index (no decoding); images are decoded on access, in DataLoader workers, to
uint8 [C, S, S]; normalisation and augmentation stay on the device, as for in-memory data.

    open_files    a folder or a tar -> FileSplits
    open_dataset  a name, a path or a timm specifier (`wds/`, `hfds/`: open_specified) ->
                  ImageSplits (in memory) or FileSplits (streamed)
    FileView      the images at some indices of a reader (indexing by a tensor gives a view)
    FileImages    a Dataset over a FileView: (uint8 image, label) per sample, mean/std for the
                  device-side normalisation
    FileSplits    train and test views, the counterpart of ImageSplits (same attributes), which
                  prepare_training_data reads alike; `to_memory()` decodes them into ImageSplits;
                  `drop_unreadable()` leaves out images that do not decode (--skip-bad)
The last three, and timm's readers, live in mixfast.data.readers (re-exported here): the layer
that shards.py and hf.py build on, so that none of them imports this module back.

Every source is read by index (map-style), shards and saved Hugging Face datasets included:
that is what makes the labeled fractions exactly stratified and seeded, the validation split
fixed, each rank's share of a pass exact under DDP, and resume exact mid-epoch. Iterable
streams (remote WebDataset URLs, `hfids/`) cannot give those, and are refused with that reason.
"""

from __future__ import annotations

import os
from pathlib import Path

from mixfast.data.readers import (
    FileImages,
    FileSplits,
    FileView,
    open_counted,
    reader_classes,
    splits_of,
)
from mixfast.data.sources import DATASETS, DataError, ImageSplits, load_dataset


def open_files(
    root: str | os.PathLike,
    *,
    size: int | None,
    mode: str = "RGB",
    test_fraction: float = 0.1,
    seed: int = 0,
) -> FileSplits:
    """A folder (ROOT/train + ROOT/val|test, or ROOT/<class>/ split into train and a held-out
    stratified `test_fraction`) or a .tar of class folders (split the same way). `size`: the
    images' side after resizing (default: the first image's width). Which files are read, and
    what is left out (in `.left_out`): mixfast.data.imagefiles."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{{data_dir}} {root} does not exist")
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if root.is_dir() and (root / "train").is_dir() and test_dir is not None:
        (train, train_left), (test, test_left) = (
            open_counted(root / "train"),
            open_counted(test_dir),
        )
        if reader_classes(train) != reader_classes(test):
            raise DataError(f"{test_dir}: class folders differ from {root / 'train'}")
        left_out = train_left.prefixed("train") + test_left.prefixed(test_dir.name)
    else:
        (train, left_out), test = open_counted(root), None
    return splits_of(
        root.name,
        train,
        test,
        size=size,
        mode=mode,
        test_fraction=test_fraction,
        seed=seed,
        left_out=left_out,
    )


SPECIFIERS = ("wds", "hfds", "hfids", "tfds", "tfds-", "wds-")  # timm's reader prefixes
READ_HERE = {"wds": "a local folder of tar shards", "hfds": "a dataset saved with save_to_disk"}


def open_specified(
    spec: str, data_dir: str | os.PathLike | None, *, size: int | None, seed: int
) -> FileSplits:
    """timm's dataset specifiers that name local data: `wds/FOLDER` (tar shards in the
    WebDataset layout, e.g. from `mixfast data shard`, read map-style: exact, seeded, resumable
    order) and `hfds/FOLDER` (a saved Hugging Face dataset). As in timm, `data_dir` may hold the
    folder (`wds/NAME` + data_dir); otherwise the folder is what follows the prefix."""
    kind, path = spec.split("/", 1)
    path = str(data_dir) if data_dir is not None else path
    allowed = "; ".join(f"{k}/PATH: {what}" for k, what in READ_HERE.items())
    if kind not in READ_HERE or "://" in path or path.startswith("pipe:"):
        raise DataError(
            f"{{dataset}} {spec!r}: mixfast reads local data: {allowed} (remote or "
            "iterable sources: copy or convert them to one of these)"
        )
    if not Path(path).exists():
        raise DataError(f"{{dataset}} {spec!r}: {path} does not exist")
    if kind == "hfds":
        from mixfast.data.hf import open_hf

        return open_hf(path, size=size, seed=seed)
    folder = Path(path) / "train" if (Path(path) / "train").is_dir() else Path(path)
    if not folder.is_dir() or not any(folder.glob("*.tar")):
        raise DataError(f"{{dataset}} {spec!r}: {folder} holds no .tar shards")
    return open_files(path, size=size, seed=seed)


DATA_MODES = ("auto", "memory", "stream")
MEMORY_CAP_GB = 4.0


def open_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    size: int | None = None,
    seed: int = 0,
    data_mode: str = "auto",
    memory_cap_gb: float = MEMORY_CAP_GB,
    skip_bad: bool = False,
    workers: int = 0,
) -> ImageSplits | FileSplits:
    """A dataset by name (mixfast.data.DATASETS), a path (a folder or a .tar of images) or a
    specifier (`wds/`, `hfds/`: see open_specified).

    Image files are decoded into memory when `data_mode` is "memory", or "auto" and their
    decoded size is at most `memory_cap_gb`; otherwise they are streamed (FileSplits). The
    named in-memory datasets (fashion-mnist, tinyimagenet, synthetic) are always in memory.
    `skip_bad`: decode every image file once first (in `workers` processes) and leave out
    those that do not decode (listed in `.skipped`); otherwise such a file stops the run with
    a DataError naming it when it is read."""
    if data_mode not in DATA_MODES:
        raise DataError(f"{{data_mode}} must be one of {DATA_MODES}, got {data_mode!r}")
    if name in DATASETS and name != "imagefolder":
        if data_mode == "stream":
            raise DataError(
                f"{{stream}} reads image files (a folder or a .tar), not {{dataset}} {name}"
            )
        return load_dataset(name, data_dir, size=size, seed=seed)
    if "/" in name and name.split("/", 1)[0] in SPECIFIERS:
        files = open_specified(name, data_dir, size=size, seed=seed)
    else:
        root = data_dir if name == "imagefolder" else name
        if root is None:
            raise DataError("{dataset} imagefolder needs {data_dir}")
        if name not in DATASETS and not Path(root).exists():
            raise DataError(
                f"{{dataset}} {name!r} is neither one of {DATASETS} nor an existing folder or .tar"
            )
        files = open_files(root, size=size, seed=seed)
    if skip_bad:
        files.drop_unreadable(workers)
    if data_mode == "stream" or (data_mode == "auto" and files.nbytes > memory_cap_gb * 2**30):
        return files
    return files.to_memory()


__all__ = ["DATA_MODES", "FileImages", "FileSplits", "FileView", "open_dataset", "open_files"]
