"""Several supervised tasks in one run (`--task SPEC`, repeatable): each task is a label set
over the run's images (all classes, a subset of them, or a class-to-group map) or another
labeled source brought to the run's image shape, with its own labeled fraction.

    SPEC = key=value[,key=value...]   keys: name, classes, groups, fraction, dataset, data_dir
    classes=0-4 or classes=0+2+7      the dataset's classes this task labels (relabeled 0..n-1)
    groups=FILE.json                  class -> group: a list (one group per class) or an object
                                      {class index or name: group}; classes left out are unused
    fraction=F                        labeled fraction of the task's images (default: the run's)
    dataset=NAME[,data_dir=DIR]       another source (default: the run's --dataset)

Every task of one source shares its validation split (carved once from that source's training
images) and never labels it; with the same fraction, tasks over the same images label the same
images. Data-limited: SSL sees the union of the tasks' labeled images; semi-supervised: every
training image outside validation, of every source. Images are normalised with the run
dataset's mean and std.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mixfast.data.files import FileSplits, FileView
from mixfast.data.sources import DATASETS, DataError, ImageSplits, resize_splits, stratified_subset
from mixfast.data.training import (
    ImageDataset,
    TaskData,
    TrainingData,
    class_labels,
    dataset_of,
    prepare_training_data,
    resolve_regime,
)

TASK_KEYS = ("name", "classes", "groups", "fraction", "dataset", "data_dir")


@dataclass(frozen=True)
class TaskSpec:
    """One `--task` as parsed; None: the run's value."""

    text: str
    name: str | None = None
    classes: tuple[int, ...] | None = None
    groups: str | None = None
    fraction: float | None = None
    dataset: str | None = None
    data_dir: str | None = None

    @property
    def source(self) -> tuple[str | None, str | None]:
        return self.dataset, self.data_dir


def _bad(text: str, why: str) -> DataError:
    return DataError(f"{{task}} {text!r}: {why}")


def parse_task_spec(text: str) -> TaskSpec:
    """`key=value,...` -> TaskSpec; a DataError naming the spec and what is allowed."""
    fields: dict[str, object] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise _bad(text, f"{item!r} is not key=value (keys: {', '.join(TASK_KEYS)})")
        if key not in TASK_KEYS:
            raise _bad(text, f"unknown key {key!r}; use {', '.join(TASK_KEYS)}")
        if key in fields:
            raise _bad(text, f"{key} is given twice")
        fields[key] = _parse_value(text, key, value)
    if "classes" in fields and "groups" in fields:
        raise _bad(text, "give classes= or groups=, not both")
    if "data_dir" in fields and "dataset" not in fields:
        raise _bad(text, "data_dir= needs dataset=")
    return TaskSpec(text, **fields)


def _parse_value(text: str, key: str, value: str) -> object:
    if key == "fraction":
        try:
            fraction = float(value)
        except ValueError:
            raise _bad(text, f"fraction must be a number in (0, 1], got {value!r}") from None
        if not 0.0 < fraction <= 1.0:
            raise _bad(text, f"fraction must be in (0, 1], got {value}")
        return fraction
    if key == "classes":
        return _parse_classes(text, value)
    if key == "dataset" and value not in DATASETS:
        raise _bad(text, f"dataset {value!r} is not allowed; use one of {DATASETS}")
    return value


def _parse_classes(text: str, value: str) -> tuple[int, ...]:
    """ "0-4" (a range, both ends included) or "0+2+7" (a list)."""
    try:
        if "-" in value:
            low, high = (int(v) for v in value.split("-"))
            classes = tuple(range(low, high + 1))
        else:
            classes = tuple(int(v) for v in value.split("+"))
    except ValueError:
        raise _bad(text, f"classes must be A-B or A+B+C (class indices), got {value!r}") from None
    if not classes or min(classes) < 0 or len(set(classes)) != len(classes):
        raise _bad(text, f"classes must be distinct indices >= 0, got {value!r}")
    return classes


def label_map(spec: TaskSpec, splits: ImageSplits) -> tuple[torch.Tensor, int, str]:
    """(task label of each dataset class, -1 where the task does not use it; task classes;
    a note saying where the labels come from)."""
    num_classes = splits.num_classes
    mapping = torch.full((num_classes,), -1, dtype=torch.int64)
    if spec.classes is not None:
        if max(spec.classes) >= num_classes:
            raise _bad(spec.text, f"classes must be < {num_classes} ({splits.name}'s classes)")
        mapping[list(spec.classes)] = torch.arange(len(spec.classes))
        return mapping, len(spec.classes), f"classes {'+'.join(map(str, spec.classes))}"
    if spec.groups is not None:
        groups = read_groups(spec, splits)
        for cls, group in groups.items():
            mapping[cls] = group
        return mapping, max(groups.values()) + 1, f"groups of {Path(spec.groups).name}"
    return torch.arange(num_classes), num_classes, ""


def read_groups(spec: TaskSpec, splits: ImageSplits) -> dict[int, int]:
    """The class -> group map of spec.groups, checked: groups 0..G-1, each used."""
    path = Path(spec.groups)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _bad(spec.text, f"cannot read the group map {path}: {exc}") from None
    if isinstance(raw, list):
        if len(raw) != splits.num_classes:
            raise _bad(
                spec.text,
                f"{path} lists {len(raw)} groups; {splits.name} has {splits.num_classes} classes",
            )
        raw = dict(enumerate(raw))
    if not isinstance(raw, dict) or not raw:
        raise _bad(spec.text, f"{path} must hold a list or an object of class -> group")
    names = {name: i for i, name in enumerate(splits.classes)}
    groups = {}
    for key, group in raw.items():
        cls = names.get(key, key)
        try:
            cls = int(cls)
        except (TypeError, ValueError):
            raise _bad(spec.text, f"{path}: {key!r} is not a class index or name") from None
        if not 0 <= cls < splits.num_classes:
            raise _bad(spec.text, f"{path}: class {key!r} is not in [0, {splits.num_classes})")
        if isinstance(group, bool) or not isinstance(group, int) or group < 0:
            raise _bad(spec.text, f"{path}: group of class {key!r} must be an int >= 0")
        groups[cls] = group
    used = sorted(set(groups.values()))
    if used != list(range(len(used))):
        raise _bad(spec.text, f"{path}: groups must be 0..G-1, each used; got {used}")
    return groups


def adapt_splits(splits: ImageSplits, shape: tuple[int, int, int]) -> tuple[ImageSplits, str]:
    """Another source brought to the run's image shape [C, H, W]; a note of what changed."""
    channels, size, _ = shape
    have = splits.image_shape
    notes = []
    if have[1:] != shape[1:]:
        splits = resize_splits(splits, size)
        notes.append(f"resized {have[1]}x{have[2]} -> {size}x{size}")
    if have[0] != channels:
        if {have[0], channels} != {1, 3}:
            raise DataError(f"{splits.name}: cannot turn {have[0]} channels into {channels}")
        convert = _to_gray if channels == 1 else _to_rgb
        splits = ImageSplits(
            splits.name,
            convert(splits.train_images),
            splits.train_labels,
            convert(splits.test_images),
            splits.test_labels,
            splits.num_classes,
            splits.classes,
        )
        notes.append(f"{have[0]} -> {channels} channels")
    return splits, ", ".join(notes)


def _to_gray(images: torch.Tensor) -> torch.Tensor:
    return images.float().mean(dim=1, keepdim=True).round().to(torch.uint8)


def _to_rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1).contiguous()


@dataclass
class _Source:
    """One source's splits as the tasks see them: pool (training images outside validation)."""

    splits: ImageSplits
    data: TrainingData  # fraction 1, semi-supervised: ssl_data is the pool
    note: str
    labeled: list[torch.Tensor]  # pool indices each task labels


def prepare_task_data(
    splits: ImageSplits | FileSplits,
    specs: list[TaskSpec],
    *,
    fraction: float = 1.0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    regime: str = "data-limited",
    val_fraction: float = 0.1,
    val_max: int = 5000,
    seed: int = 0,
    load: Callable[..., ImageSplits] | None = None,
) -> TrainingData:
    """TrainingData with one TaskData per spec (see the module docstring); `load(dataset,
    data_dir, size=)` reads the other sources (default: mixfast.data.load_dataset)."""
    regime = resolve_regime(regime)
    if not specs:
        raise DataError("{task}: give at least one task")
    names = [spec.name or f"task{k}" for k, spec in enumerate(specs)]
    if len(set(names)) != len(names):
        raise DataError(f"{{task}} names must differ, got {names}")
    limits = dict(train_limit=train_limit, test_limit=test_limit, seed=seed)
    limits.update(val_fraction=val_fraction, val_max=val_max)

    def source_of(spec: TaskSpec) -> _Source:
        if spec.source not in sources:
            other, note = _load_source(spec, splits, load)
            data = prepare_training_data(other, regime="semi-supervised", **limits)
            sources[spec.source] = _Source(other, data, note, [])
        return sources[spec.source]

    sources: dict[tuple, _Source] = {}
    base = source_of(TaskSpec("", None))
    mean, std = base.data.mean, base.data.std
    tasks = []
    for spec, name in zip(specs, names):
        source = source_of(spec)
        mapping, classes, note = label_map(spec, source.splits)
        pool = source.data.ssl_data
        members = torch.nonzero(mapping[pool.labels] >= 0).flatten()
        if members.numel() == 0:
            raise _bad(spec.text, "no training image has a class of this task")
        share = fraction if spec.fraction is None else spec.fraction
        chosen = members[stratified_subset(pool.labels[members], fraction=share, seed=seed)]
        source.labeled.append(chosen)
        sl_data = _relabeled(pool, chosen, mapping, mean, std)
        val, test = source.data.val_data, source.data.test_data
        val_data = None if val is None else _relabeled(val, None, mapping, mean, std)
        test_data = _relabeled(test, None, mapping, mean, std)
        note = ", ".join(n for n in (source.note, note) if n)
        labels = class_labels(source.splits, mapping, classes)
        tasks.append(TaskData(name, sl_data, val_data, test_data, classes, note, labels))
    ssl_data = _ssl_pool(list(sources.values()), regime, mean, std)
    shape, storage = base.data.image_shape, base.data.storage
    skipped, left_out = base.data.skipped, base.data.left_out
    return TrainingData(ssl_data, tasks, shape, mean, std, regime, storage, skipped, left_out)


def _load_source(spec: TaskSpec, splits: ImageSplits, load) -> tuple[ImageSplits, str]:
    if spec.dataset is None:
        return splits, ""
    if load is None:
        from mixfast.data.sources import load_dataset as load
    try:
        other = load(spec.dataset, spec.data_dir, size=splits.image_shape[1])
        other, note = adapt_splits(other, splits.image_shape)
    except DataError as exc:
        raise _bad(spec.text, str(exc)) from None
    return other, f"{spec.dataset}{', ' + note if note else ''}"


def _relabeled(
    data: ImageDataset, index: torch.Tensor | None, mapping: torch.Tensor, mean, std
) -> ImageDataset:
    """The images of `data` (at `index`, else those the task uses) with the task's labels."""
    if index is None:
        index = torch.nonzero(mapping[data.labels] >= 0).flatten()
    return dataset_of(data.images[index], mapping[data.labels[index]], mean, std)


def _ssl_pool(sources: list[_Source], regime: str, mean, std) -> ImageDataset | None:
    """Semi-supervised: every source's pool. Data-limited: the images some task labels; None
    when that is exactly task 0's labeled set (the trainer then embeds them once per step)."""
    if regime == "semi-supervised":
        picks = [torch.arange(len(s.data.ssl_data)) for s in sources]
    else:
        picks = [torch.unique(torch.cat(s.labeled)) if s.labeled else None for s in sources]
        first = sources[0].labeled[0] if sources[0].labeled else None
        if first is not None and all(p is None for p in picks[1:]):
            if torch.equal(picks[0], first.sort().values):
                return None
    used = [(s, p) for s, p in zip(sources, picks) if p is not None and p.numel()]
    images = [s.data.ssl_data.images[p] for s, p in used]
    images = torch.cat(images) if isinstance(images[0], torch.Tensor) else FileView.cat(images)
    labels = torch.cat([s.data.ssl_data.labels[p] for s, p in used])
    return dataset_of(images, labels, mean, std)


__all__ = [
    "TASK_KEYS",
    "TaskSpec",
    "adapt_splits",
    "label_map",
    "parse_task_spec",
    "prepare_task_data",
    "read_groups",
]
