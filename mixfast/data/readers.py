"""Image files read where they lie, through timm's readers, and the lazy views over them: the
reading layer under files.py (open_files, open_dataset), shards.py (writing shards) and hf.py
(saved Hugging Face datasets), which all build on it and none of which it imports.

    open_reader    timm's reader of a folder of class folders, a .tar of them, or a folder of
                   tar shards (checked against their info.json first: check_shards), holding
                   the samples of mixfast.data.imagefiles' rule (`open_counted`: and what the
                   rule left out)
    FileView       the images at some indices of a reader (indexing by a tensor gives a view)
    FileImages     a Dataset over a FileView: (uint8 image, label) per sample, mean/std for the
                   device-side normalisation
    FileSplits     train and test views, the counterpart of ImageSplits (same attributes)
    splits_of      a train reader (and a test reader, or a held-out fraction) -> FileSplits
    LabeledImages  what FileImages and the in-memory ImageDataset share: images, int64 labels
                   and the mean/std that normalise them
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mixfast.data.imagefiles import (
    LeftOut,
    is_tar_folder,
    kept,
    oriented_size,
    read_image,
    survey_source,
    timm_extensions,
)
from mixfast.data.sources import DataError, ImageSplits, stratified_subset

STATS_SAMPLE = 1024  # images decoded for the per-channel mean / std (seeded, same in both modes)
STATS_SEED = 4099


def open_reader(root: Path) -> Any:
    """timm's reader of a folder of class folders, a .tar of them, or a folder of such tars
    (shards: checked against their info.json first), holding the rule's samples only."""
    return open_counted(root)[0]


def open_counted(root: Path) -> tuple[Any, LeftOut]:
    """(open_reader(root), what the rule of mixfast.data.imagefiles left out of it). timm's
    reader finds the files of every image extension the rule reads; its samples that the rule
    leaves out (hidden, outside a class folder) are dropped and the classes renumbered."""
    from timm.data.readers import create_reader
    from timm.data.readers.reader_image_in_tar import ReaderImageInTar

    root = Path(root)
    try:
        tars = root.is_dir() and is_tar_folder(root)
        if tars:
            check_shards(root)
        found = survey_source(root)
        if not found.images:
            left = found.left_out.summary() or "it is empty"
            raise DataError(
                f"{{data_dir}} {root}: no image in a class folder (want ROOT/<class>/<image>, "
                f"an image file Pillow reads); {left}"
            )
        with timm_extensions():
            reader = ReaderImageInTar(str(root)) if tars else create_reader("", root=str(root))
    except (RuntimeError, AssertionError, OSError, EOFError, tarfile.TarError) as exc:
        raise DataError(f"{{data_dir}} {root}: cannot read it as an image dataset ({exc})") from exc
    _keep_rule_samples(reader, root)
    return reader, found.left_out


def _keep_rule_samples(reader: Any, root: Path) -> None:
    """Drop the samples of `reader` that the rule leaves out, and renumber its classes (in
    their natural order) to those left."""
    from timm.data.readers.reader_image_in_tar import ReaderImageInTar

    names = reader_classes(reader)
    targets = reader_labels(reader)
    in_tar = isinstance(reader, ReaderImageInTar)
    if in_tar:  # ReaderImageInTar: (member, its tar, the tar inside that tar)
        parts = [
            [*(Path(fn).parts if fn else ()), *(inner.name.split("/") if inner else ()),
             *info.name.split("/")]
            for info, fn, inner in reader.samples
        ]  # fmt: skip
    else:
        parts = [Path(os.path.relpath(path, root)).parts for path, _ in reader.samples]
    mask = torch.tensor(
        [kept(p, names[t]) for p, t in zip(parts, targets.tolist())], dtype=torch.bool
    )
    if not mask.any():
        raise DataError(f"{{data_dir}} {root}: no image in a class folder")
    used = torch.unique(targets[mask]).tolist()  # ascending: timm's natural order
    if mask.all() and used == list(range(len(names))):
        return
    renumber = torch.full((len(names),), -1, dtype=torch.int64)
    renumber[used] = torch.arange(len(used))
    classes = {names[old]: new for new, old in enumerate(used)}
    if in_tar:
        keep = mask.numpy()
        reader.samples = reader.samples[keep]
        reader.targets = renumber[targets[mask]].numpy()
        reader.class_name_to_idx = classes
        reader.class_idx_to_name = {i: name for name, i in classes.items()}
    else:
        new_targets = renumber[targets[mask]].tolist()
        kept_samples = [s for s, k in zip(reader.samples, mask.tolist()) if k]
        reader.samples = [(path, t) for (path, _), t in zip(kept_samples, new_targets)]
        reader.class_to_idx = classes


def reader_labels(reader: Any) -> torch.Tensor:
    targets = getattr(reader, "targets", None)  # ReaderImageInTar
    if targets is None:
        targets = [target for _, target in reader.samples]  # ReaderImageFolder
    return torch.as_tensor(list(targets), dtype=torch.int64)


def reader_classes(reader: Any) -> tuple[str, ...]:
    mapping = getattr(reader, "class_to_idx", None) or getattr(reader, "class_name_to_idx", {})
    return tuple(name for name, _ in sorted(mapping.items(), key=lambda item: item[1]))


class LabeledImages(Dataset):
    """Labeled images and the per-channel mean / std that normalise them: `images` (anything
    with len() and indexing: a uint8 tensor [N, C, H, W] or a FileView), `labels` int64 [N],
    `mean` and `std` tuples of C floats. Subclasses say how one sample is served."""

    def __init__(
        self, images: Any, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.images, self.labels = images, labels.long()
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.images)


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
        """Image i as uint8 [C, size, size] (mixfast.data.imagefiles.read_image: first frame,
        EXIF orientation, RGB or L); a DataError naming the file if it cannot be read."""
        from PIL import UnidentifiedImageError

        self._own_handles()
        try:
            file, _ = self.reader[int(self.indices[i])]
            with file:
                return read_image(file, self.mode, self.size)
        except (
            OSError,
            UnidentifiedImageError,
            SyntaxError,
            ValueError,
            EOFError,
            tarfile.TarError,
        ) as exc:
            raise DataError(f"{self.filename(i)}: cannot decode the image ({exc})") from exc

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


class FileImages(LabeledImages):
    """(uint8 image [C, S, S], label) pairs of a FileView; `mean` / `std` for normalising the
    batches on the device (mixfast.train.streams)."""

    def __init__(
        self, images: FileView, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        if len(images) != len(labels):
            raise DataError(f"FileImages: {len(images)} images but {len(labels)} labels")
        super().__init__(images, labels, mean, std)

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
    left_out: LeftOut = LeftOut()  # entries the rule does not read (hidden, not images, ...)

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
            left_out=self.left_out,
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
    left_out: LeftOut | None = None,
) -> FileSplits:
    """FileSplits of a train reader and a test reader; without one, a stratified seeded
    `test_fraction` of the train reader is held out as the test split. `left_out`: what the
    rule left out of the source (said in the run's summary)."""
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
    return FileSplits(
        name,
        train_view,
        train_labels,
        test_view,
        test_labels,
        len(classes),
        classes,
        left_out=left_out or LeftOut(),
    )


def _first_size(reader: Any) -> int:
    """The width of the reader's first image, as its EXIF orientation turns it (the default
    side of every image)."""
    from PIL import Image

    file, _ = reader[0]
    with file, Image.open(file) as img:
        return oriented_size(img)[0]


def check_shards(root: Path) -> None:
    """Every shard of `root` that info.json lists (in root, or in its parent for a train/ or
    val/ folder) is there, opens and holds its samples; a DataError names the first that
    does not."""
    info_path = root / "info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        folders = {split: root if split == "all" else root / split for split in info["splits"]}
    elif (root.parent / "info.json").is_file():
        info_path = root.parent / "info.json"
        info = json.loads(info_path.read_text())
        folders = {root.name: root} if root.name in info["splits"] else {}
    else:
        return
    for split, folder in folders.items():
        for shard in info["splits"][split]["shards"]:
            path = folder / shard["file"]
            if not path.is_file():
                raise DataError(f"{path}: a shard that {info_path} lists is missing")
            try:
                with tarfile.open(path) as tar:
                    count = sum(_check_label(tar, m, info["classes"], path) for m in tar)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DataError(f"{path}: the shard is corrupt ({exc})") from exc
            if count != shard["count"]:
                raise DataError(f"{path}: {count} samples, {info_path} says {shard['count']}")


def _check_label(tar: tarfile.TarFile, member: tarfile.TarInfo, classes: list, path: Path) -> int:
    """1 for a `.cls` member whose label is its folder's class index, 0 for other members;
    a DataError naming SHARD:MEMBER for any other label."""
    if not member.name.endswith(".cls"):
        return 0
    text = tar.extractfile(member).read().decode(errors="replace").strip()
    folder = member.name.split("/")[0]
    want = classes.index(folder) if folder in classes else None
    if not text.isdigit() or int(text) != want:
        allowed = f"{want} (its folder {folder!r})" if want is not None else "none"
        raise DataError(
            f"{path}:{member.name}: label {text!r} is outside the classes of info.json or "
            f"not its folder's; allowed: {allowed}"
        )
    return 1


__all__ = [
    "FileImages",
    "FileSplits",
    "FileView",
    "LabeledImages",
    "check_shards",
    "open_counted",
    "open_reader",
    "reader_classes",
    "reader_labels",
    "splits_of",
]
