"""One run from plain settings: load and split the data, size the model, hand the trainer its
augmentation, and describe what was used (DIR/data.json). What `mixfast train` and `mixfast
compare` share; `settings` is any object with the attributes below (the CLI passes its parsed
flags). Errors are `SettingError`s naming settings as {name}."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixfast.checkpoint import load_checkpoint, read_json
from mixfast.checks import SettingError
from mixfast.data import (
    SSL_POOLS,
    TrainingData,
    open_dataset,
    parse_task_spec,
    prepare_task_data,
    prepare_training_data,
)
from mixfast.data.files import MEMORY_CAP_GB
from mixfast.data.training import CROP_SCALE
from mixfast.train.distributed import env_world
from mixfast.train.streams import steps_per_pass

DEFAULT_MODEL = "vit_tiny_patch16_224"
MIN_PATCHES = 16
MODEL_OVERRIDES = ("depth", "embed_dim", "num_heads", "decoder_dim", "decoder_depth")


def default_patch_size(img_size: int) -> int:
    """The largest of 16 (>= 128 px), 8, 7, 4 dividing img_size with >= 16 patches."""
    if img_size >= 128:
        return 16
    for patch in (8, 7, 4):
        if img_size % patch == 0 and (img_size // patch) ** 2 >= MIN_PATCHES:
            return patch
    return 4 if img_size % 4 == 0 else 1


def check_patch_grid(img_size: int, patch_size: int) -> None:
    if patch_size < 1 or img_size % patch_size:
        raise SettingError(f"{{patch_size}} {patch_size} must divide {{img_size}} {img_size}")
    patches = (img_size // patch_size) ** 2
    if patches < MIN_PATCHES:
        warnings.warn(
            f"patch grid too coarse: {img_size}x{img_size} images with patch {patch_size} give "
            f"{patches} patches (< {MIN_PATCHES}); MAE masking 75% leaves too little to see. "
            "Use a smaller patch size.",
            stacklevel=2,
        )


def load_data(settings: Any, *, fraction: float | None = None) -> TrainingData:
    """settings: dataset, data_dir, img_size, seed and what prepare_data reads."""
    check_model_settings(settings)
    if settings.img_size is not None and settings.img_size < 4:
        raise SettingError(f"{{img_size}} must be >= 4, got {settings.img_size}")
    return prepare_data(open_source(settings), settings, fraction=fraction)


def open_source(settings: Any):
    """settings: dataset (a name, a path or a specifier), data_dir, img_size, seed, data_mode,
    memory_cap_gb, skip_bad, num_workers."""
    return open_dataset(
        settings.dataset,
        settings.data_dir,
        size=settings.img_size,
        seed=settings.seed,
        data_mode=getattr(settings, "data_mode", "auto"),
        memory_cap_gb=getattr(settings, "memory_cap_gb", MEMORY_CAP_GB),
        skip_bad=getattr(settings, "skip_bad", False),
        workers=getattr(settings, "num_workers", 0),
    )


def prepare_data(splits, settings: Any, *, fraction: float | None = None) -> TrainingData:
    """settings: fraction, per_class, train_limit, test_limit, regime (or the older ssl_pool),
    val_fraction, val_max, seed, and task (the `--task` specs; None or [] for one task)."""
    fraction = settings.fraction if fraction is None else fraction
    if not 0.0 < fraction <= 1.0:
        raise SettingError(f"{{fraction}} must be in (0, 1], got {fraction}")
    split = dict(
        train_limit=settings.train_limit,
        test_limit=settings.test_limit,
        regime=regime(settings),
        val_fraction=settings.val_fraction,
        val_max=settings.val_max,
        seed=settings.seed,
    )
    specs = task_specs(settings)
    if specs:
        if settings.per_class is not None:
            raise SettingError("{per_class} does not apply with {task}; give fraction= per task")
        return prepare_task_data(splits, specs, fraction=fraction, **split)
    return prepare_training_data(splits, fraction=fraction, per_class=settings.per_class, **split)


def task_specs(settings: Any) -> list:
    """The parsed `--task` specs of settings.task (none: one task, the dataset's classes)."""
    return [parse_task_spec(text) for text in getattr(settings, "task", None) or []]


def regime(settings: Any) -> str:
    """settings.regime, or the regime the older settings.ssl_pool names."""
    pool = getattr(settings, "ssl_pool", None)
    return SSL_POOLS[pool] if pool else settings.regime


def check_model_settings(settings: Any) -> None:
    """The model flags alone, before any data is read: sizes >= 1, width divisible by heads."""
    for name in ("patch_size", *MODEL_OVERRIDES):
        value = getattr(settings, name, None)
        if value is not None and value < 1:
            raise SettingError(f"{{{name}}} must be >= 1, got {value}")
    width, heads = getattr(settings, "embed_dim", None), getattr(settings, "num_heads", None)
    if width is not None and heads is not None and width % heads:
        raise SettingError(f"{{embed_dim}} {width} must be divisible by {{num_heads}} {heads}")


def model_kwargs(settings: Any, data: TrainingData) -> dict[str, Any]:
    """create_model kwargs: the data's shape and classes, patch_size and MODEL_OVERRIDES."""
    channels, img_size, _ = data.image_shape
    patch_size = settings.patch_size
    if patch_size is None:
        patch_size = default_patch_size(img_size)
    check_patch_grid(img_size, patch_size)
    kwargs: dict[str, Any] = dict(img_size=img_size, patch_size=patch_size, in_chans=channels)
    if len(data.tasks) > 1:
        kwargs["task_classes"] = data.task_classes
    else:
        kwargs["num_classes"] = data.num_classes
    for name in MODEL_OVERRIDES:
        if getattr(settings, name, None) is not None:
            kwargs[name] = getattr(settings, name)
    return kwargs


def build_model(settings: Any, data: TrainingData, seed: int) -> nn.Module:
    from mixfast.model import create_model

    torch.manual_seed(seed)  # every pipeline of one seed starts from the same weights
    return create_model(settings.model, **model_kwargs(settings, data))


def with_augment(config, data: TrainingData, settings: Any):
    """Hand the trainer the on-device batch augmentation when settings.augment."""
    scale = getattr(settings, "augment_scale", CROP_SCALE)
    if not 0.0 < scale <= 1.0:
        raise SettingError(f"{{augment_scale}} must be in (0, 1], got {scale}")
    if not settings.augment:
        return config
    return dataclasses.replace(config, augment=data.augment(seed=config.seed, scale=(scale, 1.0)))


def data_settings(settings: Any, data: TrainingData, fraction: float) -> dict[str, Any]:
    """DIR/data.json: the data and model a run used."""
    return {
        "dataset": settings.dataset,
        "data_dir": settings.data_dir,
        "fraction": fraction,
        "per_class": settings.per_class,
        "train_limit": settings.train_limit,
        "test_limit": settings.test_limit,
        "regime": data.regime,
        "storage": data.storage,
        "skipped_bad": len(data.skipped),
        "skipped_files": list(data.skipped[:SKIPPED_LISTED]),
        "val_fraction": settings.val_fraction,
        "val_max": settings.val_max,
        "augment": bool(settings.augment),
        "augment_scale": getattr(settings, "augment_scale", CROP_SCALE),
        "labeled": len(data.sl_data),
        "validation": 0 if data.val_data is None else len(data.val_data),
        "test": len(data.test_data),
        "ssl_images": len(data.sl_data if data.ssl_data is None else data.ssl_data),
        "task": list(getattr(settings, "task", None) or []),
        "tasks": [
            {"name": t.name, "note": t.note, "classes": t.num_classes, "labeled": len(t.sl_data)}
            for t in data.tasks
        ],
        "image_shape": list(data.image_shape),
        "model": settings.model,
        "model_kwargs": model_kwargs(settings, data),
    }


SKIPPED_LISTED = 100  # unreadable files named in data.json (all are counted)

# data.json keys that restate a setting (the rest are counts derived from the data)
DATA_SETTING_KEYS = (
    "dataset", "data_dir", "fraction", "per_class", "train_limit", "test_limit", "regime",
    "val_fraction", "val_max", "augment", "augment_scale", "model", "task",
)  # fmt: skip


def check_resume(settings: Any, config, run_dir: str | Path) -> None:
    """Before any work: the checkpoint in `run_dir` is usable and the run's settings are the
    ones it was made with (TrainConfig, data and model); the message lists what differs.
    Settings safe to change on resume: see mixfast.train.config.RESUMABLE."""
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / "last.pt")
    saved_data = read_json(run_dir / "data.json")
    diffs = setting_differences(settings, config, state["config"], saved_data)
    if diffs:
        listed = "; ".join(f"{{{name}}}: {old!r} -> {new!r}" for name, old, new in diffs)
        raise SettingError(
            f"{{resume}}: {run_dir} was made with other settings ({listed}); resume "
            "with the run's settings or start a new run"
        )


def setting_differences(
    settings: Any, config, saved_config: dict, saved_data: dict | None
) -> list[tuple[str, Any, Any]]:
    """(name, recorded, now) of every setting that differs from a run's record: its
    TrainConfig (config.json or the checkpoint's) and its data.json (data and model)."""
    diffs = [
        (k, saved_config[k], getattr(config, k)) for k in config.changed_on_resume(saved_config)
    ]
    if saved_data is None:
        return diffs
    for key in DATA_SETTING_KEYS:
        now = regime(settings) if key == "regime" else getattr(settings, key, None)
        if key == "task":
            now = list(now or [])
        if key in saved_data and saved_data[key] != now:
            diffs.append((key, saved_data[key], now))
    kwargs = saved_data.get("model_kwargs", {})
    for name in ("patch_size", *MODEL_OVERRIDES):
        value = getattr(settings, name, None)
        if value is not None and kwargs.get(name) != value:
            diffs.append((name, kwargs.get(name), value))
    return diffs


def check_data_fits(settings: Any, config, data: TrainingData, mask_ratio: float) -> None:
    """Before any work: one batch of training images, and a mask that keeps a patch."""
    from mixfast.ops.reference import num_kept

    batch = config.batch_size * config.accum_steps * env_world()
    for task in data.tasks:
        if len(task.sl_data) < batch:
            of = f" of task {task.name}" if len(data.tasks) > 1 else ""
            raise SettingError(
                f"{{batch_size}} {config.batch_size}: only {len(task.sl_data)} labeled training "
                f"images{of}, fewer than one batch ({batch} with accumulation and devices)"
            )
    weights = config.task_weights
    if weights is not None and len(weights) != len(data.tasks):
        raise SettingError(
            f"{{task_weights}} has {len(weights)} weights for {len(data.tasks)} task(s)"
        )
    ssl_size = len(data.ssl_data if data.ssl_data is not None else data.tasks[0].sl_data)
    sl_size = max(len(task.sl_data) for task in data.tasks)
    # the plan can be made (each objective's steps per pass as the trainer's streams count them)
    config.schedule().epoch_steps(steps_per_pass(ssl_size, batch), steps_per_pass(sl_size, batch))
    kwargs = model_kwargs(settings, data)
    patches = (kwargs["img_size"] // kwargs["patch_size"]) ** 2
    if config.pipeline != "sl" and num_kept(patches, mask_ratio) < 1:
        raise SettingError(f"{{mask_ratio}} {mask_ratio} keeps no patch of {patches}; lower it")
