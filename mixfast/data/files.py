"""Image files read where they lie, through timm's readers: a folder (ROOT/<class>/<image>, or
ROOT/train/<class>/... with ROOT/val|test/<class>/...) or a .tar of class folders. Labels come
from the readers' index (no decoding); images are decoded on access, in DataLoader workers, to
uint8 [C, S, S]; normalisation and augmentation stay on the device, as for in-memory data.

    FileView      the images at some indices of a reader (indexing by a tensor gives a view)
    FileImages    a Dataset over a FileView: (uint8 image, label) per sample, mean/std for the
                  device-side normalisation
    FileSplits    train and test views, the counterpart of ImageSplits (same attributes), which
                  prepare_training_data reads alike; `to_memory()` decodes them into ImageSplits;
                  `drop_unreadable()` leaves out images that do not decode (--skip-bad)
    open_files    a folder or a tar -> FileSplits
    open_dataset  a name, a path or a timm specifier (`wds/`, `hfds/`: open_specified) ->
                  ImageSplits (in memory) or FileSplits (streamed)

Every source is read by index (map-style), shards and saved Hugging Face datasets included:
that is what makes the labeled fractions exactly stratified and seeded, the validation split
fixed, each rank's share of a pass exact under DDP, and resume exact mid-epoch. Iterable
streams (remote WebDataset URLs, `hfids/`) cannot give those, and are refused with that reason.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mixfast.data.sources import (
    DATASETS,
    DataError,
    ImageSplits,
    load_dataset,
    stratified_subset,
)

STATS_SAMPLE = 1024  # images decoded for the per-channel mean / std (seeded, same in both modes)
STATS_SEED = 4099


def open_reader(root: Path) -> Any:
    """timm's reader of a folder of class folders, a .tar of them, or a folder of such tars
    (shards: checked against their info.json first)."""
    from timm.data.readers import create_reader
    from timm.data.readers.reader_image_in_tar import ReaderImageInTar

    from mixfast.data.shards import check_shards

    root = Path(root)
    try:
        if (
            root.is_dir()
            and any(root.glob("*.tar"))
            and not any(p.is_dir() for p in root.iterdir())
        ):
            check_shards(root)
            return ReaderImageInTar(str(root))
        return create_reader("", root=str(root))
    except (RuntimeError, AssertionError, OSError, EOFError, tarfile.TarError) as exc:
        raise DataError(f"{{data_dir}} {root}: cannot read it as an image dataset ({exc})") from exc


def reader_labels(reader: Any) -> torch.Tensor:
    targets = getattr(reader, "targets", None)  # ReaderImageInTar
    if targets is None:
        targets = [target for _, target in reader.samples]  # ReaderImageFolder
    return torch.as_tensor(list(targets), dtype=torch.int64)


def reader_classes(reader: Any) -> tuple[str, ...]:
    mapping = getattr(reader, "class_to_idx", None) or getattr(reader, "class_name_to_idx", {})
    return tuple(name for name, _ in sorted(mapping.items(), key=lambda item: item[1]))


class FileView:
    """The images at `indices` of `reader`, decoded to uint8 [C, size, size] on access."""

    def __init__(self, reader: Any, indices: torch.Tensor, *, size: int, mode: str) -> None:
        self.reader, self.indices, self.size, self.mode = reader, indices, size, mode

    @classmethod
    def whole(cls, reader: Any, *, size: int, mode: str) -> FileView:
        """Every image of `reader`."""
        return cls(reader, torch.arange(len(reader)), size=size, mode=mode)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: torch.Tensor | slice) -> FileView:
        return FileView(self.reader, self.indices[index], size=self.size, mode=self.mode)

    @staticmethod
    def cat(views: list[FileView]) -> FileView:
        """The views one after the other (views of one reader)."""
        if any(v.reader is not views[0].reader for v in views):
            raise DataError("images of several file sources cannot share one pool")
        first = views[0]
        indices = torch.cat([v.indices for v in views])
        return FileView(first.reader, indices, size=first.size, mode=first.mode)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 1 if self.mode == "L" else 3, self.size, self.size)

    def filename(self, i: int) -> str:
        """The file of image i; inside a tar: TAR:MEMBER."""
        index = int(self.indices[i])
        if hasattr(self.reader, "describe"):  # a reader of mixfast's own (hfds/)
            return self.reader.describe(index)
        sample = self.reader.samples[index]
        if isinstance(sample[0], tarfile.TarInfo):  # timm's ReaderImageInTar: (info, tar, child)
            tar = Path(self.reader.root) / sample[1] if sample[1] else Path(self.reader.root)
            return f"{tar}:{sample[0].name}"
        return str(self.reader._filename(index, absolute=True))

    def _own_handles(self) -> None:
        """Forget tar handles opened by another process: forked DataLoader workers would share
        their file offsets (and read each other's bytes)."""
        reader = self.reader
        if getattr(reader, "_mixfast_pid", None) == os.getpid():
            return
        states = getattr(reader, "tar_state", None)
        states = list(states.values()) if isinstance(states, dict) else [states]
        for state in filter(None, states):
            state.reset()
            for child in state.children.values():
                child.reset()
        reader._mixfast_pid = os.getpid()

    def decode(self, i: int) -> torch.Tensor:
        """Image i as uint8 [C, size, size]; a DataError naming the file if it cannot be read."""
        from PIL import Image, UnidentifiedImageError

        self._own_handles()
        try:
            file, _ = self.reader[int(self.indices[i])]
            with file, Image.open(file) as img:
                img = img.convert(self.mode)
                if img.size != (self.size, self.size):
                    img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
                data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except (
            OSError,
            UnidentifiedImageError,
            SyntaxError,
            ValueError,
            EOFError,
            tarfile.TarError,
        ) as exc:
            raise DataError(f"{self.filename(i)}: cannot decode the image ({exc})") from exc
        channels = self.shape[1]
        return data.view(self.size, self.size, channels).permute(2, 0, 1).contiguous()

    def readable(self, workers: int = 0) -> tuple[torch.Tensor, list[str]]:
        """(bool mask of the images that decode, the files of those that do not), decoding
        each image once in `workers` DataLoader workers."""
        from torch.utils.data import DataLoader

        ok = torch.ones(len(self), dtype=torch.bool)
        loader = DataLoader(_Probe(self), batch_size=64, num_workers=workers)
        for index, decoded in loader:
            ok[index] = decoded
        return ok, [self.filename(i) for i in torch.nonzero(~ok).flatten().tolist()]

    def load(self) -> torch.Tensor:
        """Every image, decoded into one uint8 [N, C, S, S] tensor (the in-memory path)."""
        images = torch.empty(self.shape, dtype=torch.uint8)
        for i in range(len(self)):
            images[i] = self.decode(i)
        return images


class _Probe(Dataset):
    """(index, decodes?) of every image of a view."""

    def __init__(self, view: FileView) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, index: int) -> tuple[int, bool]:
        try:
            self.view.decode(index)
        except DataError:
            return index, False
        return index, True


class FileImages(Dataset):
    """(uint8 image [C, S, S], label) pairs of a FileView; `mean` / `std` for normalising the
    batches on the device (mixfast.train.streams)."""

    def __init__(self, images: FileView, labels: torch.Tensor, mean, std) -> None:
        if len(images) != len(labels):
            raise DataError(f"FileImages: {len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images.decode(index), self.labels[index]


@dataclass
class FileSplits:
    """Train and test images of a file source, read lazily: ImageSplits' attributes."""

    name: str
    train_images: FileView
    train_labels: torch.Tensor
    test_images: FileView
    test_labels: torch.Tensor
    num_classes: int
    classes: tuple[str, ...] = ()
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # mean_std, once computed
    skipped: tuple[str, ...] = ()  # unreadable files left out (skip_bad)

    def drop_unreadable(self, workers: int = 0) -> None:
        """Leave out every image that does not decode (each is decoded once here); their
        files go to `skipped`."""
        train_ok, train_bad = self.train_images.readable(workers)
        test_ok, test_bad = self.test_images.readable(workers)
        self.train_images, self.train_labels = (
            self.train_images[train_ok],
            self.train_labels[train_ok],
        )
        self.test_images, self.test_labels = self.test_images[test_ok], self.test_labels[test_ok]
        self.skipped = (*self.skipped, *train_bad, *test_bad)
        if not len(self.train_images) or not len(self.test_images):
            raise DataError(
                f"{self.name}: no readable image left in a split ({len(self.skipped)} skipped)"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def nbytes(self) -> int:
        """Bytes of both splits decoded as uint8."""
        per_image = int(torch.tensor(self.image_shape).prod())
        return per_image * (len(self.train_images) + len(self.test_images))

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of a seeded sample of the training images, in [0, 1] units
        (the same in-memory or streamed, so both train alike); decoded once, then kept."""
        if self.stats is not None:
            return self.stats
        count = min(STATS_SAMPLE, len(self.train_images))
        gen = torch.Generator().manual_seed(STATS_SEED)
        pick = torch.randperm(len(self.train_images), generator=gen)[:count].sort().values
        pixels = self.train_images[pick].load().double() / 255.0
        mean = pixels.mean(dim=(0, 2, 3))
        std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)
        self.stats = tuple(mean.tolist()), tuple(std.tolist())
        return self.stats

    def to_memory(self) -> ImageSplits:
        """Decode both splits (ImageSplits: the in-memory path); keeps the sampled mean / std."""
        return ImageSplits(
            self.name,
            self.train_images.load(),
            self.train_labels,
            self.test_images.load(),
            self.test_labels,
            self.num_classes,
            self.classes,
            stats=self.mean_std(),
            skipped=self.skipped,
        )


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
    images' side after resizing (default: the first image's width)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{{data_dir}} {root} does not exist")
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if root.is_dir() and (root / "train").is_dir() and test_dir is not None:
        train, test = open_reader(root / "train"), open_reader(test_dir)
        if reader_classes(train) != reader_classes(test):
            raise DataError(f"{test_dir}: class folders differ from {root / 'train'}")
    else:
        train, test = open_reader(root), None
    return splits_of(
        root.name, train, test, size=size, mode=mode, test_fraction=test_fraction, seed=seed
    )


def splits_of(
    name: str,
    train: Any,
    test: Any | None,
    *,
    size: int | None,
    mode: str,
    test_fraction: float,
    seed: int,
) -> FileSplits:
    """FileSplits of a train reader and a test reader; without one, a stratified seeded
    `test_fraction` of the train reader is held out as the test split."""
    size = size or _first_size(train)
    classes = reader_classes(train)
    if test is not None:
        train_view = FileView.whole(train, size=size, mode=mode)
        test_view = FileView.whole(test, size=size, mode=mode)
        train_labels, test_labels = reader_labels(train), reader_labels(test)
    else:
        labels = reader_labels(train)
        test_index = stratified_subset(labels, fraction=test_fraction, seed=seed)
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[test_index] = False
        everything = FileView.whole(train, size=size, mode=mode)
        train_view, test_view = everything[keep], everything[test_index]
        train_labels, test_labels = labels[keep], labels[test_index]
    return FileSplits(name, train_view, train_labels, test_view, test_labels, len(classes), classes)


def _first_size(reader: Any) -> int:
    """The width of the reader's first image (the default side of every image)."""
    from PIL import Image

    file, _ = reader[0]
    with file, Image.open(file) as img:
        return img.size[0]


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
