"""What the trainer reads: seeded stratified subsets, the uint8 in-memory `ImageDataset`, the
on-device `BatchAugment`, and `prepare_training_data`, which turns splits into training data."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mixfast.data.imagefiles import LeftOut
from mixfast.data.readers import FileImages, FileSplits, LabeledImages
from mixfast.data.sources import DataError, ImageSplits, stratified_subset

# --------------------------------------------------------------------------------------------
# Datasets and augmentation


class ImageDataset(LabeledImages):
    """uint8 images in memory served as normalised float (image [C, H, W], label) pairs.

    Keeps `images` (uint8 [N, C, H, W]), `labels`, `mean` and `std` public so a trainer can
    move whole batches to the device and run `BatchAugment` there instead.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise DataError("ImageDataset needs uint8 images [N, C, H, W] and N labels")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise DataError(f"mean/std need {images.shape[1]} values, got {len(mean)}/{len(std)}")
        super().__init__(images, labels, mean, std)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize(self.images[index], self.mean, self.std), self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        index = torch.as_tensor(indices)
        images = normalize(self.images[index], self.mean, self.std)
        return list(zip(images.unbind(0), self.labels[index].unbind(0)))


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., C, H, W] -> float32 (x / 255 - mean) / std per channel."""
    shape = (-1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(shape)
    return (images.float() / 255.0 - mean_t) / std_t


CROP_SCALE = 0.5  # the smallest crop area of BatchAugment, a fraction of the image


class BatchAugment:
    """Random resized crop + horizontal flip of a whole batch on its own device.

    Takes uint8 [B, C, H, W] (normalised on the way) or already-normalised float batches;
    normalising commutes with the bilinear crop, so both give the same result. One affine grid
    per image and one `grid_sample` for the batch: no per-image Python work, no host copies.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        scale: tuple[float, float] = (CROP_SCALE, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        seed: int | None = None,
    ) -> None:
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self.scale, self.ratio, self.hflip = scale, ratio, hflip
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)

    def sample_theta(self, batch: int) -> torch.Tensor:
        """Affine matrices [B, 2, 3] mapping output coords to crop boxes in the input."""
        u = torch.rand(batch, 4, generator=self.generator, dtype=torch.float64)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
        width = (area * aspect).sqrt().clamp(max=1.0)
        height = (area / aspect).sqrt().clamp(max=1.0)
        center_x = (1 - width) * (2 * u[:, 2] - 1)
        center_y = (1 - height) * (2 * u[:, 3] - 1)
        flip = torch.rand(batch, generator=self.generator, dtype=torch.float64) < self.hflip
        theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = torch.where(flip, -width, width)
        theta[:, 0, 2] = center_x
        theta[:, 1, 1] = height
        theta[:, 1, 2] = center_y
        return theta

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
        x = normalize(images, self.mean, self.std) if images.dtype == torch.uint8 else images
        theta = self.sample_theta(len(x)).to(x.dtype)
        if x.is_cuda:  # pinned + non_blocking: no host sync per batch
            theta = theta.pin_memory().to(x.device, non_blocking=True)
        grid = F.affine_grid(theta, [len(x), x.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------------------------
# Putting it together for training


@dataclass
class TaskData:
    """One supervised task: its labeled images, validation and test splits, and classes."""

    name: str
    sl_data: ImageDataset
    val_data: ImageDataset | None
    test_data: ImageDataset
    num_classes: int
    note: str = ""  # where its labels come from, when not the dataset's own classes
    labels: tuple[str, ...] = ()  # what each class means (class_labels), recorded with the head

    @property
    def val_size(self) -> int:
        """Validation images (0 without a validation split)."""
        return 0 if self.val_data is None else len(self.val_data)

    def summary(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return (
            f"{self.name}{note}: {len(self.sl_data)} labeled, {self.val_size} validation, "
            f"{len(self.test_data)} test, {self.num_classes} classes"
        )


@dataclass
class TrainingData:
    """What the trainer gets. ssl_data: the unlabeled pool (None: the labeled images of task 0
    serve both objectives); tasks: one or more supervised tasks (task k trains head k), each
    with its labeled images, the validation split carved from the training images (every epoch
    metric and every choice) and the held-out test split (read once, at the end of a run)."""

    ssl_data: ImageDataset | None
    tasks: list[TaskData]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    regime: str = "data-limited"
    storage: str = "in-memory"  # or "streamed": image files decoded in DataLoader workers
    skipped: tuple[str, ...] = ()  # unreadable image files left out (skip_bad)
    left_out: LeftOut = LeftOut()  # entries of an image-file source that are not samples

    @property
    def sl_data(self) -> ImageDataset:
        return self.tasks[0].sl_data

    @property
    def val_data(self) -> ImageDataset | None:
        return self.tasks[0].val_data

    @property
    def val_size(self) -> int:
        return self.tasks[0].val_size

    @property
    def sl_size(self) -> int:
        """Labeled images of the largest task (the SL streams' longest pass)."""
        return max(len(task.sl_data) for task in self.tasks)

    @property
    def ssl_size(self) -> int:
        """Images the SSL objective passes over (task 0's labeled ones when no pool)."""
        return len(self.sl_data if self.ssl_data is None else self.ssl_data)

    @property
    def test_data(self) -> ImageDataset:
        return self.tasks[0].test_data

    @property
    def num_classes(self) -> int:
        return self.tasks[0].num_classes

    @property
    def task_classes(self) -> list[int]:
        return [task.num_classes for task in self.tasks]

    @property
    def task_labels(self) -> list[tuple[str, ...]]:
        """What each head's classes mean, per task (TaskData.labels)."""
        return [task.labels for task in self.tasks]

    def fit_inputs(self) -> tuple[ImageDataset | None, list, list, list]:
        """(ssl_data, sl_data, val_data, test_data) as MixTrainer.fit takes them, per task."""
        tasks = self.tasks
        return (
            self.ssl_data,
            [t.sl_data for t in tasks],
            [t.val_data for t in tasks],
            [t.test_data for t in tasks],
        )

    def augment(self, *, seed: int | None = None, **kwargs) -> BatchAugment:
        return BatchAugment(self.image_shape[-1], self.mean, self.std, seed=seed, **kwargs)

    def summary(self) -> str:
        ssl = "the labeled images" if self.ssl_data is None else f"{len(self.ssl_data)} images"
        c, h, w = self.image_shape
        streamed = ", streamed from files" if self.storage == "streamed" else ""
        if self.skipped:
            streamed += f"; skipped {len(self.skipped)} unreadable image(s), e.g. {self.skipped[0]}"
        if len(self.left_out):
            streamed += f"; {self.left_out.summary()}"
        if len(self.tasks) > 1:
            tasks = "; ".join(t.summary() for t in self.tasks)
            return (
                f"{self.regime}: SSL on {ssl}; {len(self.tasks)} tasks: {tasks}; "
                f"images {c}x{h}x{w}{streamed}"
            )
        return (
            f"{self.regime}: {len(self.sl_data)} labeled, SSL on {ssl}, {self.val_size} validation, "
            f"{len(self.test_data)} test; {self.num_classes} classes, images {c}x{h}x{w}{streamed}"
        )


REGIMES = ("data-limited", "semi-supervised")
SSL_POOLS = {"same": "data-limited", "all": "semi-supervised"}  # the older names of the regimes
VAL_SEED = 104729  # one validation split for every run seed and fraction


def resolve_regime(regime: str) -> str:
    """One of REGIMES, from its name or its older SSL_POOLS name; a DataError otherwise."""
    regime = SSL_POOLS.get(regime, regime)
    if regime not in REGIMES:
        raise DataError(f"{{regime}} {regime!r} is not allowed; use one of {REGIMES}")
    return regime


def validation_split(
    labels: torch.Tensor, num_classes: int, fraction: float, max_images: int
) -> torch.Tensor:
    """Sorted indices of a stratified validation split: `fraction` of each class, at most
    `max_images` in all (at least one per class); a fixed seed."""
    per_class_cap = max(1, max_images // num_classes)
    chosen = []
    gen = torch.Generator().manual_seed(VAL_SEED)
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        count = min(max(1, round(fraction * len(members))), per_class_cap, len(members) - 1)
        chosen.append(members[:count])
    return torch.cat(chosen).sort().values


def dataset_of(images, labels: torch.Tensor, mean, std) -> ImageDataset | FileImages:
    """uint8 images in memory -> ImageDataset; a FileView (files read lazily) -> FileImages."""
    if isinstance(images, torch.Tensor):
        return ImageDataset(images, labels, mean, std)
    return FileImages(images, labels, mean, std)


def prepare_training_data(
    splits: ImageSplits | FileSplits,
    *,
    fraction: float = 1.0,
    per_class: int | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    regime: str = "data-limited",
    val_fraction: float = 0.1,
    val_max: int = 5000,
    seed: int = 0,
) -> TrainingData:
    """Label-limited data in one of two regimes.

    `train_limit` (stratified, fixed seed) caps the training images; the validation split
    (`val_fraction` of each class, at most `val_max` images; 0 for none) is carved from them;
    `fraction` or `per_class` of the rest keep labels (seeded by `seed`). "data-limited": SSL
    sees the labeled images only (same images for both objectives); "semi-supervised": SSL sees
    every training image outside validation. Validation is never labeled training data and
    never in the SSL pool."""
    regime = resolve_regime(regime)
    if not 0.0 <= val_fraction <= 0.5:
        raise DataError(f"{{val_fraction}} must be in [0, 0.5], got {val_fraction}")
    for name, value in (("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None and value < splits.num_classes:
            raise DataError(
                f"{{{name}}} must be >= the number of classes ({splits.num_classes}), got {value}"
            )
    images, labels = splits.train_images, splits.train_labels
    if train_limit is not None and train_limit < len(labels):
        pool = _limit(labels, train_limit, splits.num_classes)
        images, labels = images[pool], labels[pool]
    mean, std = splits.mean_std()
    val_data = None
    if val_fraction > 0:
        val = validation_split(labels, splits.num_classes, val_fraction, val_max)
        val_data = dataset_of(images[val], labels[val], mean, std)
        rest = torch.ones(len(labels), dtype=torch.bool)
        rest[val] = False
        images, labels = images[rest], labels[rest]
    if per_class is not None:
        labeled = stratified_subset(labels, per_class=per_class, seed=seed)
    else:
        labeled = stratified_subset(labels, fraction=fraction, seed=seed)
    test_images, test_labels = splits.test_images, splits.test_labels
    if test_limit is not None and test_limit < len(test_labels):
        keep = _limit(test_labels, test_limit, splits.num_classes)
        test_images, test_labels = test_images[keep], test_labels[keep]
    sl_data = dataset_of(images[labeled], labels[labeled], mean, std)
    ssl_data = dataset_of(images, labels, mean, std) if regime == "semi-supervised" else None
    test_data = dataset_of(test_images, test_labels, mean, std)
    labels = class_labels(splits, torch.arange(splits.num_classes), splits.num_classes)
    task = TaskData(splits.name, sl_data, val_data, test_data, splits.num_classes, "", labels)
    storage = "streamed" if isinstance(splits, FileSplits) else "in-memory"
    skipped = tuple(getattr(splits, "skipped", ()))
    left_out = getattr(splits, "left_out", LeftOut())
    return TrainingData(
        ssl_data, [task], splits.image_shape, mean, std, regime, storage, skipped, left_out
    )


def class_labels(
    splits: ImageSplits | FileSplits, mapping: torch.Tensor, num_classes: int
) -> tuple[str, ...]:
    """What each of a task's `num_classes` classes means, from `mapping` (the task label of each
    dataset class, -1: unused): the dataset's class names ("Sandal"), "name:index" when the source
    has none ("synthetic:3"), members joined by "+" for a group. A weights file records them with
    its heads, so a head loads only into a run whose classes mean the same (model/weights.py)."""
    names = splits.classes or tuple(f"{splits.name}:{i}" for i in range(splits.num_classes))
    members: list[list[str]] = [[] for _ in range(num_classes)]
    for cls, label in enumerate(mapping.tolist()):
        if label >= 0:
            members[label].append(names[cls])
    return tuple("+".join(group) for group in members)


def _limit(labels: torch.Tensor, total: int, num_classes: int) -> torch.Tensor:
    # a fixed seed: every run seed and fraction draws its labels from the same capped pool
    return stratified_subset(labels, per_class=max(1, total // num_classes), seed=7919)
