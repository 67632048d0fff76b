"""What the trainer reads: seeded stratified subsets, the uint8 in-memory `ImageDataset`, the
on-device `BatchAugment`, and `prepare_training_data`, which turns splits into training data."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mixfast.data.sources import DataError, ImageSplits, stratified_subset

# --------------------------------------------------------------------------------------------
# Datasets and augmentation


class ImageDataset(Dataset):
    """uint8 images in memory served as normalised float (image [C, H, W], label) pairs.

    Keeps `images` (uint8), `labels`, `mean` and `std` public so a trainer can move whole
    batches to the device and run `BatchAugment` there instead.
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
        self.images, self.labels = images, labels.long()
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.images)

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
        scale: tuple[float, float] = (0.5, 1.0),
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
class TrainingData:
    """What the trainer gets: ssl_data (None = same images as sl_data), sl_data, val_data."""

    ssl_data: ImageDataset | None
    sl_data: ImageDataset
    val_data: ImageDataset
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def augment(self, *, seed: int | None = None, **kwargs) -> BatchAugment:
        return BatchAugment(self.image_shape[-1], self.mean, self.std, seed=seed, **kwargs)

    def summary(self) -> str:
        ssl = "same images" if self.ssl_data is None else f"{len(self.ssl_data)} unlabeled"
        c, h, w = self.image_shape
        return (
            f"{len(self.sl_data)} labeled train, {len(self.val_data)} test, SSL: {ssl}; "
            f"{self.num_classes} classes, images {c}x{h}x{w}"
        )


SSL_POOLS = ("same", "all")


def prepare_training_data(
    splits: ImageSplits,
    *,
    fraction: float = 1.0,
    per_class: int | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    ssl_pool: str = "same",
    seed: int = 0,
) -> TrainingData:
    """Label-limited datasets: `train_limit` (stratified) caps the training images, then
    `fraction` or `per_class` of them keep labels. ssl_pool "same" trains SSL on the labeled
    images (same-images mode), "all" on every (limited) training image (two-stream mode)."""
    if ssl_pool not in SSL_POOLS:
        raise ValueError(f"ssl_pool {ssl_pool!r} is not allowed; use one of {SSL_POOLS}")
    for name, value in (("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None and value < splits.num_classes:
            raise ValueError(f"{name} must be >= the number of classes ({splits.num_classes})")
    images, labels = splits.train_images, splits.train_labels
    if train_limit is not None and train_limit < len(labels):
        pool = _limit(labels, train_limit, splits.num_classes)
        images, labels = images[pool], labels[pool]
    if per_class is not None:
        labeled = stratified_subset(labels, per_class=per_class, seed=seed)
    else:
        labeled = stratified_subset(labels, fraction=fraction, seed=seed)
    test_images, test_labels = splits.test_images, splits.test_labels
    if test_limit is not None and test_limit < len(test_labels):
        keep = _limit(test_labels, test_limit, splits.num_classes)
        test_images, test_labels = test_images[keep], test_labels[keep]
    mean, std = splits.mean_std()
    sl_data = ImageDataset(images[labeled], labels[labeled], mean, std)
    ssl_data = ImageDataset(images, labels, mean, std) if ssl_pool == "all" else None
    val_data = ImageDataset(test_images, test_labels, mean, std)
    return TrainingData(
        ssl_data, sl_data, val_data, splits.num_classes, splits.image_shape, mean, std
    )


def _limit(labels: torch.Tensor, total: int, num_classes: int) -> torch.Tensor:
    # a fixed seed: every run seed and fraction draws its labels from the same capped pool
    return stratified_subset(labels, per_class=max(1, total // num_classes), seed=7919)
