"""Datasets for mixfast: in-memory uint8 images, label-limited subsets and on-device augmentation.

Every source (Fashion-MNIST IDX files, ImageFolder trees, TinyImageNet-200, tensors, a synthetic
set) becomes an `ImageSplits`: uint8 train/test images [N, C, H, W] with int64 labels, kept in
memory. `ImageDataset` serves them as normalised float (image, label) pairs to any DataLoader;
`BatchAugment` does random-resized-crop + flip on a whole batch on the device the batch lives on,
so the CPU never decodes or crops per image.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mixfast.checks import SettingError
from mixfast.data.imagefiles import (
    LeftOut,
    folder_entries,
    is_hidden,
    is_image_name,
    read_image,
    survey,
)

DATASETS = ("fashion-mnist", "imagefolder", "tinyimagenet", "synthetic")
FASHION_MNIST_ENV = "MIXFAST_FASHION_MNIST_DIR"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(SettingError):
    """Data that cannot be used: missing, corrupt, empty or inconsistent."""


@dataclass
class ImageSplits:
    """uint8 images [N, C, H, W] and int64 labels [N] for a train and a held-out test split."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    classes: tuple[str, ...] = ()
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # mean/std, when fixed
    skipped: tuple[str, ...] = ()  # unreadable files left out of an image-file source
    left_out: LeftOut = LeftOut()  # entries the rule of mixfast.data.imagefiles does not read

    def __post_init__(self) -> None:
        self.train_labels = self.train_labels.long()
        self.test_labels = self.test_labels.long()
        validate_images(
            self.train_images, self.train_labels, self.num_classes, f"{self.name} train"
        )
        validate_images(self.test_images, self.test_labels, self.num_classes, f"{self.name} test")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"{self.name}: train images are {tuple(self.train_images.shape[1:])} but test "
                f"images are {tuple(self.test_images.shape[1:])}; both splits need one size"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images, in [0, 1] units."""
        if self.stats is not None:
            return self.stats
        # exact and light: a 256-bin histogram per channel instead of a float copy of the images
        values = torch.arange(256, dtype=torch.float64)
        means, stds = [], []
        for channel in self.train_images.unbind(1):
            counts = torch.bincount(channel.flatten(), minlength=256).double()
            mean = (counts * values).sum() / counts.sum()
            var = (counts * (values - mean) ** 2).sum() / counts.sum()
            means.append(float(mean) / 255.0)
            stds.append(max(float(var.sqrt()), 1.0) / 255.0)
        return tuple(means), tuple(stds)


def validate_images(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, where: str
) -> None:
    """Raise DataError unless images is uint8 [N, C, H, W] with N labels in [0, num_classes)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(
            f"{where}: images must be a uint8 tensor [N, C, H, W], got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{where}: the dataset is empty")
    if images.shape[1] not in (1, 3):
        raise DataError(f"{where}: images have {images.shape[1]} channels; allowed: 1 or 3")
    if labels.shape != (images.shape[0],):
        raise DataError(
            f"{where}: {images.shape[0]} images but labels of shape {tuple(labels.shape)}"
        )
    if num_classes < 2:
        raise DataError(f"{where}: num_classes must be >= 2, got {num_classes}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"{where}: labels must lie in [0, {num_classes}), found values in [{low}, {high}]"
        )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (raw or .gz) of unsigned bytes into a uint8 tensor of its stated shape."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read the IDX file ({exc}); the file is corrupt") from exc
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape)
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: truncated or padded IDX file: header says shape {shape} "
            f"({expected} bytes) but the file holds {len(raw) - header}"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def _has_fashion_mnist(directory: Path) -> bool:
    stems = [s for pair in FASHION_MNIST_FILES.values() for s in pair]
    return all(_idx_file(directory, s) is not None for s in stems)


def _dpkg_fashion_mnist_dirs() -> list[Path]:
    if shutil.which("dpkg") is None:
        return []
    try:
        listing = subprocess.run(
            ["dpkg", "-L", FASHION_MNIST_PACKAGE], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if listing.returncode != 0:
        return []
    files = [Path(line) for line in listing.stdout.splitlines() if "idx" in line]
    return sorted({f.parent for f in files})


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path:
    """Directory holding the four Fashion-MNIST IDX files: data_dir, $MIXFAST_FASHION_MNIST_DIR,
    or where the Debian package dataset-fashion-mnist put them."""
    if data_dir is not None:
        candidates = [Path(data_dir)]
    elif os.environ.get(FASHION_MNIST_ENV):
        candidates = [Path(os.environ[FASHION_MNIST_ENV])]
    else:
        candidates = _dpkg_fashion_mnist_dirs()
    for directory in candidates:
        for sub in (directory, directory / "FashionMNIST" / "raw", directory / "raw"):
            if _has_fashion_mnist(sub):
                return sub
    looked = ", ".join(str(c) for c in candidates) or "nowhere (no {data_dir}, no env, no package)"
    raise DataError(
        "Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz] and the other three) not found; "
        f"looked in: {looked}. Install them with `sudo apt-get install {FASHION_MNIST_PACKAGE}`, "
        f"or point {{data_dir}} or ${FASHION_MNIST_ENV} at a directory holding them"
    )


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> ImageSplits:
    directory = find_fashion_mnist(data_dir)
    splits = {}
    for split, (image_stem, label_stem) in FASHION_MNIST_FILES.items():
        image_path, label_path = _idx_file(directory, image_stem), _idx_file(directory, label_stem)
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{image_path} / {label_path}: images {tuple(images.shape)} and labels "
                f"{tuple(labels.shape)} do not match (want [N, 28, 28] and [N])"
            )
        splits[split] = (images.unsqueeze(1), labels)
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat")
    classes += ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    return ImageSplits("fashion-mnist", *splits["train"], *splits["test"], 10, classes)


# --------------------------------------------------------------------------------------------
# Image files: ImageFolder trees and TinyImageNet-200 (which files are images, of which class,
# and how one is decoded: mixfast.data.imagefiles, the rule of every image-file source)


def _load_image(path: Path, mode: str, size: int | None) -> torch.Tensor:
    from PIL import UnidentifiedImageError

    try:
        return read_image(path, mode, size)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot decode the image ({exc}); the file is corrupt") from exc


def load_image_files(
    paths: Sequence[Path], labels: Sequence[int], *, mode: str = "RGB", size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode image files into one uint8 [N, C, H, W] tensor; all must share a size unless
    `size` resizes them."""
    if not paths:
        raise DataError("no image files found")
    first = _load_image(paths[0], mode, size)
    images = torch.empty((len(paths), *first.shape), dtype=torch.uint8)
    images[0] = first
    for i in range(1, len(paths)):
        img = _load_image(paths[i], mode, size)
        if img.shape != first.shape:
            raise DataError(
                f"images of mixed sizes: {paths[0]} is {tuple(first.shape[1:])} but {paths[i]} "
                f"is {tuple(img.shape[1:])}; pass {{img_size}} to resize them all"
            )
        images[i] = img
    return images, torch.tensor(list(labels), dtype=torch.long)


def _folder_samples(root: Path) -> tuple[list[Path], list[int], tuple[str, ...], LeftOut]:
    """(image files, labels, classes, what is left out) of ROOT/<class>/... by the rule of
    mixfast.data.imagefiles (the one timm's readers get in mixfast.data.readers)."""
    if not any(d.is_dir() and not is_hidden(d.name) for d in root.iterdir()):
        raise DataError(f"{root}: no class folders (want ROOT/<class>/<image> files)")
    found = survey(folder_entries(root))
    if not found.images:
        raise DataError(
            f"{root}: the class folders hold no images (image files Pillow reads: .jpg, .png, "
            f".webp, ...); {found.left_out.summary()}"
        )
    index = {name: i for i, name in enumerate(found.classes)}
    paths = [root / rel for rel, _ in found.images]
    labels = [index[label] for _, label in found.images]
    return paths, labels, found.classes, found.left_out


def load_image_folder(
    root: str | os.PathLike,
    *,
    size: int | None = None,
    mode: str = "RGB",
    test_fraction: float = 0.1,
    seed: int = 0,
) -> ImageSplits:
    """ROOT/train/<class>/* with ROOT/val|test/<class>/*, or ROOT/<class>/* split into train and
    a stratified, seeded held-out `test_fraction`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{{data_dir}} {root} is not a directory")
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        paths, labels, classes, left_out = _folder_samples(root / "train")
        test_paths, test_labels, test_classes, test_left = _folder_samples(test_dir)
        if test_classes != classes:
            raise DataError(f"{test_dir}: class folders differ from {root / 'train'}")
        train = load_image_files(paths, labels, mode=mode, size=size)
        test = load_image_files(test_paths, test_labels, mode=mode, size=size)
        left_out = left_out.prefixed("train") + test_left.prefixed(test_dir.name)
        return ImageSplits("imagefolder", *train, *test, len(classes), classes, left_out=left_out)
    paths, labels, classes, left_out = _folder_samples(root)
    images, label_tensor = load_image_files(paths, labels, mode=mode, size=size)
    test_index = stratified_subset(label_tensor, fraction=test_fraction, seed=seed)
    keep = torch.ones(len(label_tensor), dtype=torch.bool)
    keep[test_index] = False
    missing = set(range(len(classes))) - set(label_tensor[keep].tolist())
    if missing:
        names = ", ".join(classes[i] for i in sorted(missing))
        raise DataError(
            f"{root}: class(es) {names} have too few images for a held-out split; add images "
            "or give ROOT/train and ROOT/val folders"
        )
    return ImageSplits(
        "imagefolder",
        images[keep],
        label_tensor[keep],
        images[test_index],
        label_tensor[test_index],
        len(classes),
        classes,
        left_out=left_out,
    )


def load_tinyimagenet(root: str | os.PathLike, *, size: int | None = None) -> ImageSplits:
    """TinyImageNet-200: ROOT/train/<wnid>/images/*.JPEG and ROOT/val/val_annotations.txt."""
    root = Path(root)
    annotations = root / "val" / "val_annotations.txt"
    if not (root / "train").is_dir() or not annotations.is_file():
        raise DataError(
            f"{{data_dir}} {root} is not a TinyImageNet-200 tree: want train/<wnid>/images/*.JPEG "
            "and val/val_annotations.txt"
        )
    wnids_file = root / "wnids.txt"
    if wnids_file.is_file():
        wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    else:
        wnids = sorted(
            d.name for d in (root / "train").iterdir() if d.is_dir() and not is_hidden(d.name)
        )
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    for wnid in wnids:
        image_dir = root / "train" / wnid / "images"
        files = sorted(image_dir.glob("*")) if image_dir.is_dir() else []
        paths += [f for f in files if is_image_name(f.name) and f.is_file()]
        labels += [index[wnid]] * (len(paths) - len(labels))
    test_paths, test_labels = [], []
    for line_no, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{annotations}:{line_no}: unknown or missing class in {line!r}")
        test_paths.append(root / "val" / "images" / fields[0])
        test_labels.append(index[fields[1]])
    train = load_image_files(paths, labels, size=size)
    test = load_image_files(test_paths, test_labels, size=size)
    return ImageSplits("tinyimagenet", *train, *test, len(wnids), tuple(wnids))


# --------------------------------------------------------------------------------------------
# Tensors and the synthetic set


def from_tensors(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    name: str = "tensors",
) -> ImageSplits:
    """In-memory images: uint8 [N, C, H, W] (or [N, H, W], made one-channel)."""
    train_images, test_images = (
        x.unsqueeze(1) if x.dim() == 3 else x for x in (train_images, test_images)
    )
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    return ImageSplits(name, train_images, train_labels, test_images, test_labels, num_classes)


def synthetic_images(
    n: int, *, num_classes: int = 10, size: int = 28, channels: int = 1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable images: each class a fixed smooth random pattern, each sample a randomly shifted,
    noisy copy of its class pattern. Patterns depend only on (num_classes, size, channels)."""
    patterns_gen = torch.Generator().manual_seed(1234)
    coarse = torch.randn(num_classes, channels, 4, 4, generator=patterns_gen)
    patterns = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=gen)]
    shifts = torch.randint(-2, 3, (n, 2), generator=gen)
    images = patterns[labels]
    for i, (dy, dx) in enumerate(shifts.tolist()):
        images[i] = images[i].roll((dy, dx), dims=(1, 2))
    images = images + 0.5 * torch.randn(images.shape, generator=gen)
    return (128 + 50 * images).round().clamp(0, 255).to(torch.uint8), labels


def load_synthetic(
    *,
    train_size: int = 512,
    test_size: int = 256,
    num_classes: int = 10,
    size: int = 28,
    channels: int = 1,
    seed: int = 0,
) -> ImageSplits:
    kwargs = dict(num_classes=num_classes, size=size, channels=channels)
    train = synthetic_images(train_size, seed=seed, **kwargs)
    test = synthetic_images(test_size, seed=seed + 1_000_003, **kwargs)
    return ImageSplits("synthetic", *train, *test, num_classes)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    size: int | None = None,
    seed: int = 0,
) -> ImageSplits:
    """One of DATASETS by name; `size` resizes images (file datasets) or sets the synthetic size."""
    if name not in DATASETS:
        raise DataError(f"{{dataset}} {name!r} is not allowed; use one of {DATASETS}")
    if name == "fashion-mnist":
        splits = load_fashion_mnist(data_dir)
        return resize_splits(splits, size) if size else splits
    if name == "synthetic":
        return load_synthetic(size=size or 28, seed=seed)
    if data_dir is None:
        raise DataError(f"{{dataset}} {name} needs {{data_dir}}")
    if name == "imagefolder":
        return load_image_folder(data_dir, size=size, seed=seed)
    return load_tinyimagenet(data_dir, size=size)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def resize_splits(splits: ImageSplits, size: int) -> ImageSplits:
    return ImageSplits(
        splits.name,
        resize_images(splits.train_images, size),
        splits.train_labels,
        resize_images(splits.test_images, size),
        splits.test_labels,
        splits.num_classes,
        splits.classes,
    )


def stratified_subset(
    labels: torch.Tensor,
    *,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Sorted indices of a seeded, class-stratified subset: `fraction` of each class (at least one
    image) or `per_class` images of each class (all of a smaller class)."""
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction= or per_class=")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        count = per_class if per_class is not None else max(1, round(fraction * len(members)))
        chosen.append(members[:count])
    return torch.cat(chosen).sort().values
